"""An EstimateSource backed by trained estimators: estimates computed once per (query, answered set).

The simulator asks for estimates of the same states over and over (every rollout of a lambda search
revisits them), and the policies' memos require a source that is a deterministic function of
``(rows, answered)`` (``routing.EstimateSource``). This source computes a state's estimates the first
time it is asked, row by row so that batching cannot change them, and answers later requests from a
cache by vectorised lookup, so a trained source costs about what a precomputed table costs once warm.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

import numpy as np
from numpy.typing import NDArray

from estimators.table import QueryModelTable
from routing import Estimates

if TYPE_CHECKING:
    from estimators.trained_quality import PreparedQueries, TrainedQualityEstimator

__all__ = ["TrainedEstimates"]

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]
IntArray = NDArray[np.intp]


class _StateCache:
    """Estimates per state, keyed by ``row << n_models | answered bitmask``.

    Values live in append-only buffers; a sorted copy of the keys with their buffer positions gives
    vectorised lookups by binary search. Covariances depend on the answered subset only: each is stored
    once (``covs``, stacked in ``cov_stack``) and states refer to it by id.
    """

    def __init__(self, n_models: int) -> None:
        self.n_models = n_models
        self.cov_ids: dict[int, int] = {}
        self.cov_stack = np.empty((0, n_models, n_models))
        self.sorted_keys = np.empty(0, dtype=np.int64)
        self.sorted_pos = np.empty(0, dtype=np.intp)
        self.q: FloatArray = np.empty((0, n_models))
        self.var: FloatArray = np.empty((0, n_models))
        self.cov_id: IntArray = np.empty(0, dtype=np.intp)
        self.size = 0

    def lookup(self, keys: NDArray[np.int64]) -> tuple[IntArray, BoolArray]:
        """Buffer position of each key and whether it is cached (position meaningless where not)."""
        if self.size == 0:
            return np.zeros(keys.shape[0], dtype=np.intp), np.zeros(keys.shape[0], dtype=bool)
        at = np.minimum(np.searchsorted(self.sorted_keys, keys), self.size - 1)
        found: BoolArray = self.sorted_keys[at] == keys
        pos: IntArray = self.sorted_pos[at]
        return pos, found

    def insert(self, keys: NDArray[np.int64], q: FloatArray, var: FloatArray, cov_id: IntArray) -> None:
        """Add states that are not cached yet (``keys`` unique)."""
        m = keys.shape[0]
        if self.size + m > self.q.shape[0]:
            capacity = max(2 * self.q.shape[0], self.size + m, 1024)
            self.q = _grow(self.q, capacity)
            self.var = _grow(self.var, capacity)
            self.cov_id = _grow(self.cov_id, capacity)
        new = slice(self.size, self.size + m)
        self.q[new], self.var[new], self.cov_id[new] = q, var, cov_id
        all_keys = np.concatenate([self.sorted_keys, keys])
        all_pos = np.concatenate([self.sorted_pos, np.arange(self.size, self.size + m, dtype=np.intp)])
        order = np.argsort(all_keys, kind="stable")
        self.sorted_keys, self.sorted_pos = all_keys[order], all_pos[order]
        self.size += m


class TrainedEstimates:
    """Estimates of a fitted :class:`~estimators.trained_quality.TrainedQualityEstimator` for a set of queries.

    For a query in a given state: ``q_mean`` is P(correct) of every model given the answers so far
    (post-hoc for models that answered, ex-ante given the others' answers otherwise); the uncertainty is
    the fitted covariance of that answered subset (its diagonal as ``q_var``, or the full ``q_cov``
    when the estimator has ``uncertainty="correlated"``); ``cost`` is the measured cost for models that
    ran and the ex-ante cost regression otherwise.

    Build with :meth:`from_estimator`; :meth:`subset` gives a source over some of the rows (a
    validation or test split) that shares this one's cache.

    Parameters
    ----------
    estimator : TrainedQualityEstimator
        Fitted.
    prepared : PreparedQueries
        ``estimator.prepare(table)`` for the queries.
    cost_ante, cost_post : ndarray of shape (n_queries, n_models)
        Ex-ante cost estimates and measured costs (USD).
    rows : ndarray of int of shape (n_rows,), optional
        The queries this source covers, as indices into ``prepared`` (default: all).
    """

    def __init__(
        self,
        estimator: TrainedQualityEstimator,
        prepared: PreparedQueries,
        cost_ante: FloatArray,
        cost_post: FloatArray,
        rows: IntArray | None = None,
        *,
        _cache: _StateCache | None = None,
    ) -> None:
        n, k = prepared.z_ante.shape
        for name, arr in (("cost_ante", cost_ante), ("cost_post", cost_post)):
            if arr.shape != (n, k):
                raise ValueError(f"{name} has shape {arr.shape}, expected {(n, k)} (n_queries, n_models)")
            if not np.all(np.isfinite(arr)) or np.any(arr < 0):
                raise ValueError(f"{name} must be finite and non-negative")
        self.estimator = estimator
        self.prepared = prepared
        self.cost_ante = cost_ante
        self.cost_post = cost_post
        self.rows = np.arange(n, dtype=np.intp) if rows is None else np.asarray(rows, dtype=np.intp)
        if self.rows.ndim != 1 or (self.rows.size and (self.rows.min() < 0 or self.rows.max() >= n)):
            raise ValueError(f"rows must be a 1-D array of indices in 0..{n - 1}")
        self.correlated = estimator.uncertainty == "correlated"
        # A zero factor means no uncertainty: policies then take a supermodel's best mean (Sigma = None).
        self.no_uncertainty = estimator.uncertainty_scale_ == 0.0
        self._cache = _StateCache(k) if _cache is None else _cache

    @classmethod
    def from_estimator(cls, estimator: TrainedQualityEstimator, table: QueryModelTable) -> TrainedEstimates:
        """The source over every query of ``table`` (whose ``cost`` are the measured costs)."""
        prepared = estimator.prepare(table)
        return cls(estimator, prepared, estimator.ante_cost(table), np.asarray(table.cost, dtype=np.float64))

    @property
    def n_queries(self) -> int:
        return int(self.rows.shape[0])

    @property
    def n_models(self) -> int:
        return int(self.prepared.z_ante.shape[1])

    def subset(self, rows: IntArray) -> TrainedEstimates:
        """The source restricted to ``rows`` (indices into this source), sharing the cache."""
        rows = np.asarray(rows, dtype=np.intp)
        if rows.ndim != 1 or (rows.size and (rows.min() < 0 or rows.max() >= self.n_queries)):
            raise ValueError(f"rows must be a 1-D array of indices in 0..{self.n_queries - 1}")
        return TrainedEstimates(
            self.estimator, self.prepared, self.cost_ante, self.cost_post, self.rows[rows],
            _cache=self._cache,
        )

    def estimate(self, rows: IntArray, answered: BoolArray) -> Estimates:
        """Estimates for ``rows`` (shape (n,)) in states ``answered`` (shape (n, n_models))."""
        k = self.n_models
        rows = np.asarray(rows, dtype=np.intp)
        answered = np.asarray(answered, dtype=bool)
        if answered.shape != (rows.shape[0], k):
            raise ValueError(f"answered has shape {answered.shape}, expected {(rows.shape[0], k)}")
        base = self.rows[rows]
        masks = (answered.astype(np.int64) << np.arange(k, dtype=np.int64)).sum(axis=1)
        keys = (base.astype(np.int64) << k) | masks
        pos, found = self._cache.lookup(keys)
        if not found.all():
            self._compute(np.unique(keys[~found]))
            pos, found = self._cache.lookup(keys)
            assert found.all()
        # Built without re-validation (as TableEstimates does): every state was checked when cached.
        est = object.__new__(Estimates)
        object.__setattr__(est, "q_mean", self._cache.q[pos])
        object.__setattr__(est, "cost", np.where(answered, self.cost_post[base], self.cost_ante[base]))
        if self.no_uncertainty:
            object.__setattr__(est, "q_var", None)
            object.__setattr__(est, "q_cov", None)
        elif self.correlated:
            object.__setattr__(est, "q_var", None)
            object.__setattr__(est, "q_cov", self._cache.cov_stack[self._cache.cov_id[pos]])
        else:
            object.__setattr__(est, "q_var", self._cache.var[pos])
            object.__setattr__(est, "q_cov", None)
        return est

    def _compute(self, keys: NDArray[np.int64]) -> None:
        k = self.n_models
        base = (keys >> k).astype(np.intp)
        masks = keys & ((1 << k) - 1)
        answered = ((masks[:, None] >> np.arange(k, dtype=np.int64)) & 1).astype(bool)
        q = self.estimator.predict_quality(self.prepared, base, answered)
        cache = self._cache
        cov_id = np.empty(keys.shape[0], dtype=np.intp)
        fresh: list[FloatArray] = []
        for mask in np.unique(masks).tolist():
            idx = cache.cov_ids.get(mask)
            if idx is None:
                idx = cache.cov_ids[mask] = cache.cov_stack.shape[0] + len(fresh)
                fresh.append(self.estimator.subset_covariance(((mask >> np.arange(k)) & 1).astype(bool)))
            cov_id[masks == mask] = idx
        if fresh:
            cache.cov_stack = np.concatenate([cache.cov_stack, np.stack(fresh)])
        var = np.diagonal(cache.cov_stack, axis1=1, axis2=2)[cov_id]
        if not (np.all(np.isfinite(q)) and np.all(np.isfinite(var)) and np.all(var >= 0)):
            raise ValueError("the trained estimators produced non-finite quality estimates or negative variances")
        cache.insert(keys, q, var, cov_id)


_A = TypeVar("_A", bound=np.generic)


def _grow(arr: NDArray[_A], capacity: int) -> NDArray[_A]:
    out: NDArray[_A] = np.empty((capacity, *arr.shape[1:]), dtype=arr.dtype)
    out[: arr.shape[0]] = arr
    return out
