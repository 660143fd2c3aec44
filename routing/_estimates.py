"""Quality and cost estimates as the policies consume them (algorithm-spec §1.1).

An *estimate source* answers, for a batch of queries and the set of models that have answered each
of them, the current quality means, their uncertainty and the costs. Policies and the simulator only
talk to this interface, so simulated, trained and live estimators are interchangeable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

__all__ = ["EstimateSource", "Estimates", "TableEstimates"]

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]
IntArray = NDArray[np.intp]


@dataclass(frozen=True, slots=True)
class Estimates:
    """Estimates for a batch of queries at their current state.

    Attributes
    ----------
    q_mean : ndarray of shape (n_queries, n_models)
        Current quality estimate of every model (post-hoc for models that answered, ex-ante otherwise).
    cost : ndarray of shape (n_queries, n_models)
        Current cost estimate of every model (measured for models that ran).
    q_var : ndarray of shape (n_queries, n_models) or None
        Independent uncertainty: the variance of each estimate. Exclusive with ``q_cov``.
    q_cov : ndarray of shape (n_queries, n_models, n_models) or None
        Correlated uncertainty: the covariance of the estimates. Exclusive with ``q_var``.
        Both None means no uncertainty: a supermodel's quality is the max of its means.
    """

    q_mean: FloatArray
    cost: FloatArray
    q_var: FloatArray | None = None
    q_cov: FloatArray | None = None

    def __post_init__(self) -> None:
        validate_estimates(self.q_mean, self.cost, self.q_var, self.q_cov)

    @property
    def n_queries(self) -> int:
        return int(self.q_mean.shape[0])

    @property
    def n_models(self) -> int:
        return int(self.q_mean.shape[1])


def validate_estimates(
    q_mean: FloatArray, cost: FloatArray, q_var: FloatArray | None, q_cov: FloatArray | None
) -> None:
    """Raise ``ValueError`` naming the array at fault; estimates feed every decision, so no NaN may pass."""
    if q_mean.ndim != 2:
        raise ValueError(f"q_mean must have shape (n_queries, n_models), got shape {q_mean.shape}")
    if cost.shape != q_mean.shape:
        raise ValueError(f"cost has shape {cost.shape}, expected {q_mean.shape} like q_mean")
    if q_var is not None and q_cov is not None:
        raise ValueError("give q_var (independent) or q_cov (correlated), not both")
    if not np.all(np.isfinite(q_mean)):
        raise ValueError("q_mean contains non-finite values")
    if not np.all(np.isfinite(cost)):
        raise ValueError("cost contains non-finite values")
    if np.any(cost < 0):
        raise ValueError(f"cost must be non-negative, got minimum {float(cost.min())!r}")
    if q_var is not None:
        if q_var.shape != q_mean.shape:
            raise ValueError(f"q_var has shape {q_var.shape}, expected {q_mean.shape} like q_mean")
        if not np.all(np.isfinite(q_var)) or np.any(q_var < 0):
            raise ValueError("q_var must be finite and non-negative")
    if q_cov is not None:
        n, k = q_mean.shape
        if q_cov.shape != (n, k, k):
            raise ValueError(f"q_cov has shape {q_cov.shape}, expected {(n, k, k)}")
        if not np.all(np.isfinite(q_cov)):
            raise ValueError("q_cov contains non-finite values")


@runtime_checkable
class EstimateSource(Protocol):
    """Anything that gives estimates for (queries, answered models).

    Implementations must be deterministic functions of ``(rows, answered)``: the simulator caches
    expected maxima per state, which is what makes fitting fast.
    """

    @property
    def n_queries(self) -> int: ...

    @property
    def n_models(self) -> int: ...

    def estimate(self, rows: IntArray, answered: BoolArray) -> Estimates:
        """Estimates for ``rows`` (shape (n,)) given ``answered`` (shape (n, n_models))."""
        ...


@dataclass(frozen=True, slots=True)
class TableEstimates:
    """Precomputed ex-ante and post-hoc estimates per (query, model), independent across models.

    A model's estimate depends only on whether *it* has answered, not on the other answers: the
    RouterBench protocol's ground-truth-plus-noise estimators (algorithm-spec §5.1) have this form.

    Attributes
    ----------
    q_ante, q_post : ndarray of shape (n_queries, n_models)
        Quality estimates before and after the model ran.
    var_ante, var_post : ndarray of shape (n_queries, n_models)
        Their variances (the spec uses 1e-6 for post-hoc: the answer is known).
    cost_ante, cost_post : ndarray of shape (n_queries, n_models)
        Cost estimates before and after the model ran.
    """

    q_ante: FloatArray
    q_post: FloatArray
    var_ante: FloatArray
    var_post: FloatArray
    cost_ante: FloatArray
    cost_post: FloatArray

    def __post_init__(self) -> None:
        shape = self.q_ante.shape
        for name in ("q_post", "var_ante", "var_post", "cost_ante", "cost_post"):
            arr = getattr(self, name)
            if arr.shape != shape:
                raise ValueError(f"{name} has shape {arr.shape}, expected {shape} like q_ante")
        validate_estimates(self.q_ante, self.cost_ante, self.var_ante, None)
        validate_estimates(self.q_post, self.cost_post, self.var_post, None)

    @property
    def n_queries(self) -> int:
        return int(self.q_ante.shape[0])

    @property
    def n_models(self) -> int:
        return int(self.q_ante.shape[1])

    def subset(self, rows: IntArray) -> TableEstimates:
        """The table restricted to ``rows`` (e.g. a validation or test split)."""
        return TableEstimates(
            *(getattr(self, f)[rows] for f in ("q_ante", "q_post", "var_ante", "var_post",
                                                "cost_ante", "cost_post"))
        )

    def estimate(self, rows: IntArray, answered: BoolArray) -> Estimates:
        # Estimates constructed here skip re-validation: the table was validated once at construction.
        est = object.__new__(Estimates)
        object.__setattr__(est, "q_mean", np.where(answered, self.q_post[rows], self.q_ante[rows]))
        object.__setattr__(est, "cost", np.where(answered, self.cost_post[rows], self.cost_ante[rows]))
        object.__setattr__(est, "q_var", np.where(answered, self.var_post[rows], self.var_ante[rows]))
        object.__setattr__(est, "q_cov", None)
        return est
