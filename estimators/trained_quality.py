"""Trained ex-ante and post-hoc quality estimators, with their uncertainty, for RouterBench-like tables.

Real estimators in place of the noise-simulated ones (algorithm-spec §1.1, §5.2), fitted on rows that
the evaluation never scores:

- **Ex-ante, from the query alone**: hashed word and character n-grams of the prompt plus a task
  one-hot (:class:`~estimators.text_features.PromptFeatures`), one logistic regression per model
  (:class:`~estimators.per_model_classifier.PerModelClassifier`). Its logit ``z_i`` feeds the next stage.
- **Given the answers so far**: one logistic regression per (model i, whether i has answered, number
  of other models answered: 0, 1, 2, 3 or more by default). The paper fits one per (model, answered
  subset); 2^11 subsets and ~2,200 training queries cannot support that, so subsets of one size share
  a model and tell themselves apart through the features:
  ``z_i`` and ``z_i`` × task; which other models answered; how much the answered others agree among
  themselves (mean pairwise agreement from -1 to +1, overall and per task) and the share of them with
  an extractable answer; and, once i itself answered (post-hoc), its own signals (an answer was
  extracted, log response length, and where the table has them its token log-probability mean, minimum
  and 10th percentile and whether it hit ``max_tokens``), its agreement with each answered model coded +1 agrees / -1
  disagrees / 0 not answered (one weight per other model), their sum (overall and per task) and mean.
  Answer extraction and agreement: :mod:`estimators.answer_signals`. A model not yet run thus gets an
  ex-ante estimate that sharpens as others answer, as in spec §1.1. Per-size models matter: one model
  for all sizes under-weights the query's own evidence when few others have answered, which made the
  post-hoc estimate of a lone answer worse than the ex-ante one.
- **Uncertainty** (spec §1.1, §5.2): for an answered subset A, the covariance over training queries of
  (estimate given A − estimate given all models), both from **cross-fitted** models (each training
  query predicted by models that never saw it), so the spread is that of unseen queries. One K×K
  matrix per subset, computed when a subset is first asked for and cached. **Departure from the
  paper:** the policies use it as the spread of a Gaussian whose expected maximum values a supermodel,
  and as fitted it overstates that value: on RouterBench (5 models, cross-fitted training queries)
  E[max] of small supermodels beat the quality ``select_answer`` then realised by about 12 points: one
  multiple-choice letter says little and the moves of two agreeing answers go together. So the
  covariance is multiplied by a factor (``uncertainty_scale``). ``"auto"`` (the default) fits it on the
  cross-fitted training queries with ``routing.fit_uncertainty_scale``, the criterion that evaluation
  (``evaluation.protocol``) and calibration apply on their validation rows; those fit it on the unscaled
  covariance (``uncertainty_scale=1.0``, the paper's) and their factor replaces this one, so "auto" is the
  prior for an estimator used without validation rows.
- **Cost**: ex-ante, a per-model linear regression of cost (USD) on prompt length and task, clipped
  at the model's cheapest training cost; post-hoc, the measured cost (as the simulated estimators do).

Training states of the answer-dependent models: each (model, ran or not, size) model sees every
training query ``n_subsets_per_query`` times, each time with a uniformly drawn set of answered others
of that size (in the last size bucket, of a size drawn uniformly from the bucket), seeded by
``random_state``.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray
from sklearn.base import BaseEstimator
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from estimators.answer_signals import AnswerSignals, answer_signals
from estimators.per_model_classifier import PerModelClassifier
from estimators.table import QueryModelTable
from estimators.text_features import PromptFeatures
from routing import Estimates, fit_uncertainty_scale

__all__ = ["PreparedQueries", "TrainedQualityEstimator"]

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]
IntArray = NDArray[np.intp]

_UNCERTAINTY = ("independent", "correlated")


@dataclass(frozen=True, eq=False)
class PreparedQueries:
    """What the answer-dependent models read about a set of queries, computed once per table.

    Attributes
    ----------
    z_ante : ndarray of shape (n_queries, n_models)
        Ex-ante logits (query only). For training queries these are cross-fitted.
    task : ndarray of shape (n_queries, n_tasks)
        Task one-hot over the training tasks (all zero for a task unseen in training).
    signals : AnswerSignals
        Answer extraction and agreement of every model's response.
    """

    z_ante: FloatArray
    task: FloatArray
    signals: AnswerSignals

    @property
    def n_queries(self) -> int:
        return int(self.z_ante.shape[0])


class TrainedQualityEstimator(BaseEstimator):  # type: ignore[misc]
    """Ex-ante, answer-dependent and post-hoc quality estimates with fitted uncertainty (module docstring).

    Parameters
    ----------
    ante_C : float, default=0.3
        Inverse regularisation of the ex-ante (text) logistic regressions (liblinear: sparse input).
    post_C : float, default=1.0
        Inverse regularisation of the answer-dependent logistic regressions.
    n_text_features : int, default=2**15
        Hash buckets per n-gram family (word and character) of the prompt features.
    n_shape_features : int, default=0
        Hash buckets of the prompt's character n-grams with every digit masked (``PromptFeatures``): how
        many digits the numbers have, whatever their values. 0 leaves the block out.
    cv : int, default=5
        Folds of the cross-fitting (stacked ex-ante logits and held-out uncertainty).
    n_subsets_per_query : int, default=2
        Random answered subsets per (training query, answer-dependent model).
    n_size_buckets : int, default=5
        Answer-dependent models per (model, ran or not): one for each number of other models answered
        below ``n_size_buckets - 1``, and one shared by all larger numbers.
    uncertainty : {"independent", "correlated"}, default="independent"
        Give policies the diagonal of each subset's covariance (``q_var``, fast exact expected maxima)
        or the full matrix (``q_cov``, the paper's classification setting; QMC, slow for many models).
    uncertainty_scale : float or "auto", default="auto"
        Factor on the fitted covariance. ``1.0`` is the paper's choice; ``0.0`` means no uncertainty (a
        supermodel is worth its best current estimate). ``"auto"`` picks it from
        ``routing.DEFAULT_SCALE_GRID`` with ``routing.fit_uncertainty_scale`` on the cross-fitted training
        queries (the option value of running a second model, predicted against what ``select_answer``
        then realises). Where validation rows exist, fit with ``1.0`` and scale by the factor
        ``fit_uncertainty_scale`` picks on them (module docstring).
    random_state : int, RandomState instance or None, default=None
        Seeds the folds and the subset draw; an int makes ``fit`` reproducible.

    Attributes
    ----------
    models_ : tuple of str
        Model names, in the column order of every output.
    tasks_ : tuple of str
        Training tasks (``eval_name``), the task one-hot's columns.
    features_ : PromptFeatures
    ante_ : PerModelClassifier
        Ex-ante classifier fitted on all training queries.
    post_coef_ : ndarray of shape (n_models, 2, n_buckets, n_post_features)
        Coefficients of the answer-dependent models: ``[i, 0, b]`` for model i not yet run, ``[i, 1, b]``
        after it ran, with ``b`` = min(number of other models answered, n_buckets - 1);
        ``post_intercept_`` of shape (n_models, 2, n_buckets). ``n_buckets = min(n_size_buckets, n_models)``.
    fold_coef_ : ndarray of shape (cv, n_models, 2, n_buckets, n_post_features)
        The same per cross-fitting fold (trained without that fold); ``fold_intercept_`` likewise.
    fold_of_ : ndarray of shape (n_train,)
        Fold of each training query.
    train_ : PreparedQueries
        Training queries with cross-fitted ex-ante logits (for the held-out uncertainty).
    uncertainty_scale_ : float
        The factor in use (``uncertainty_scale``, or the one ``"auto"`` picked).
    cost_model_ : LinearRegression
        Ex-ante cost (USD) from prompt length and task; ``cost_floor_`` (n_models,) its lower clip.
    n_train_ : int
    n_answer_stats_ : int
        Columns of ``answer_stats`` the post-hoc models read (0 for tables without them, e.g. RouterBench).
    """

    def __init__(
        self,
        *,
        ante_C: float = 0.3,
        post_C: float = 1.0,
        n_text_features: int = 2**15,
        n_shape_features: int = 0,
        cv: int = 5,
        n_subsets_per_query: int = 2,
        n_size_buckets: int = 5,
        uncertainty: str = "independent",
        uncertainty_scale: float | str = "auto",
        random_state: int | np.random.RandomState | None = None,
    ) -> None:
        self.ante_C = ante_C
        self.post_C = post_C
        self.n_text_features = n_text_features
        self.n_shape_features = n_shape_features
        self.cv = cv
        self.n_subsets_per_query = n_subsets_per_query
        self.n_size_buckets = n_size_buckets
        self.uncertainty = uncertainty
        self.uncertainty_scale = uncertainty_scale
        self.random_state = random_state

    # -- fitting ------------------------------------------------------------------------------------
    def fit(self, X: QueryModelTable, y: None = None) -> TrainedQualityEstimator:
        """Fit every estimator on the training queries ``X``.

        Parameters
        ----------
        X : QueryModelTable
            Training queries with responses (``load_routerbench`` keeps them), 0/1 quality and cost of
            every model. Never pass rows that will be scored.
        y : None
            Ignored: quality and cost are columns of ``X``.

        Returns
        -------
        self : TrainedQualityEstimator
        """
        self._validate_params()
        table = _check_table(X, min_rows=self.cv)
        n, k = table.n_queries, table.n_models
        rng = check_random_state(self.random_state)
        quality = np.asarray(table.quality)
        if np.any((quality != 0) & (quality != 1)):
            raise ValueError("quality must be 0/1 correctness for the trained estimators (the classifiers are binary)")

        self.models_ = tuple(table.models)
        self.tasks_ = tuple(sorted(set(table.eval_names)))
        self.features_ = PromptFeatures(n_word_features=self.n_text_features, n_char_features=self.n_text_features,
                                        n_shape_features=self.n_shape_features)
        self._solver_seed = int(rng.randint(2**31 - 1))
        self.features_.fit(table.prompts)
        task = self._task_onehot(table.eval_names)
        x_ante = self._ante_features(table.prompts, task)
        fold_of = rng.permutation(np.arange(n) % self.cv)

        # Stage 1, cross-fitted: the answer-dependent models learn how far to trust an unseen query's logit.
        z_oof = np.empty((n, k))
        for f in range(self.cv):
            held = fold_of == f
            z_oof[held] = self._new_ante().fit(x_ante[~held], quality[~held]).decision_function(x_ante[held])
        self.ante_ = self._new_ante().fit(x_ante, quality)

        self.n_answer_stats_ = _n_stats(table)
        train = PreparedQueries(z_ante=z_oof, task=task, signals=_signals(table))
        n_buckets = min(self.n_size_buckets, k)
        n_post = _post_features(0, train, np.zeros(1, dtype=np.intp), np.zeros((1, k), dtype=bool)).shape[1]
        self.post_coef_ = np.zeros((k, 2, n_buckets, n_post))
        self.post_intercept_ = np.zeros((k, 2, n_buckets))
        self.fold_coef_ = np.zeros((self.cv, k, 2, n_buckets, n_post))
        self.fold_intercept_ = np.zeros((self.cv, k, 2, n_buckets))
        for i in range(k):
            for own in (0, 1):
                for b in range(n_buckets):
                    rows, answered = self._draw_states(i, bool(own), b, n_buckets, n, k, rng)
                    x, y_i, folds = _post_features(i, train, rows, answered), quality[rows, i], fold_of[rows]
                    self.post_coef_[i, own, b], self.post_intercept_[i, own, b] = _fit_logistic(x, y_i, self.post_C)
                    for f in range(self.cv):
                        keep = folds != f
                        self.fold_coef_[f, i, own, b], self.fold_intercept_[f, i, own, b] = _fit_logistic(
                            x[keep], y_i[keep], self.post_C
                        )

        cost = np.asarray(table.cost)
        self.cost_model_ = LinearRegression().fit(self._cost_features(table.prompts, task), cost)
        self.cost_floor_ = cost.min(axis=0)
        self.train_ = train
        self.fold_of_ = fold_of
        self.n_train_ = n
        self._cov_cache: dict[int, FloatArray] = {}
        self._full_held_out: FloatArray | None = None
        if self.uncertainty_scale == "auto":
            self.uncertainty_scale_ = self._calibrate_scale(quality)
        else:
            self.uncertainty_scale_ = float(self.uncertainty_scale)
        return self

    # -- prediction -------------------------------------------------------------------------------
    def prepare(self, X: QueryModelTable) -> PreparedQueries:
        """Ex-ante logits, task one-hot and answer signals of new queries (their models must match)."""
        check_is_fitted(self)
        table = _check_table(X, min_rows=1)
        if tuple(table.models) != self.models_:
            raise ValueError(f"the table's models {list(table.models)} differ from the fitted {list(self.models_)}")
        if _n_stats(table) != self.n_answer_stats_:
            raise ValueError(f"the table has {_n_stats(table)} answer statistics per answer, the estimator was "
                             f"fitted with {self.n_answer_stats_} (answer_stats must be given in both or neither)")
        task = self._task_onehot(table.eval_names)
        z = np.asarray(self.ante_.decision_function(self._ante_features(table.prompts, task)), dtype=np.float64)
        return PreparedQueries(z_ante=z.reshape(table.n_queries, -1), task=task, signals=_signals(table))

    def predict_quality(self, prepared: PreparedQueries, rows: IntArray, answered: BoolArray) -> FloatArray:
        """P(correct) of every model for queries ``rows`` given the models that answered each.

        Parameters
        ----------
        prepared : PreparedQueries
            From :meth:`prepare`.
        rows : ndarray of int of shape (n,)
        answered : ndarray of bool of shape (n, n_models)

        Returns
        -------
        ndarray of shape (n, n_models)
            Post-hoc for answered models, ex-ante (given the others' answers) otherwise. Each row is
            computed from that row alone, so results do not depend on how queries are batched.
        """
        check_is_fitted(self)
        rows, answered = _check_state(rows, answered, prepared.n_queries, len(self.models_))
        return _predict(self.post_coef_[None], self.post_intercept_[None], prepared, rows, answered)

    def ante_cost(self, X: QueryModelTable) -> FloatArray:
        """Ex-ante cost estimate (USD) of every model, shape (n_queries, n_models)."""
        check_is_fitted(self)
        table = _check_table(X, min_rows=1, need_responses=False)
        pred = self.cost_model_.predict(self._cost_features(table.prompts, self._task_onehot(table.eval_names)))
        out: FloatArray = np.maximum(np.asarray(pred, dtype=np.float64).reshape(table.n_queries, -1), self.cost_floor_)
        return out

    def subset_covariance(self, answered: BoolArray) -> FloatArray:
        """Uncertainty of the estimates in state ``answered``: ``uncertainty_scale_`` times the covariance
        of (estimate given ``answered`` − estimate given all models) over training queries.

        Parameters
        ----------
        answered : ndarray of bool of shape (n_models,)

        Returns
        -------
        ndarray of shape (n_models, n_models)
            Symmetric positive semi-definite; computed from cross-fitted predictions (each training query
            by the fold models that did not train on it), cached per subset.
        """
        check_is_fitted(self)
        out: FloatArray = self.uncertainty_scale_ * self._raw_covariance(answered)
        return out

    def set_uncertainty_scale(self, factor: float) -> TrainedQualityEstimator:
        """Serve ``factor`` times the unscaled covariance from now on; returns self.

        For a factor fitted on validation rows: fit with ``uncertainty_scale=1.0``, call
        ``routing.fit_uncertainty_scale(self.estimate_source(validation_table), validation_quality)`` and pass
        its ``scale`` here, so the live estimator (``CalibratedQuality``) serves what the fit chose. Estimate
        sources built before keep the factor they were built with (they cache scaled covariances).
        """
        check_is_fitted(self)
        if isinstance(factor, bool) or not isinstance(factor, numbers.Real) or not 0 <= float(factor) < np.inf:
            raise ValueError(f"factor must be a finite number >= 0, got {factor!r}")
        self.uncertainty_scale_ = float(factor)
        return self

    def _raw_covariance(self, answered: BoolArray) -> FloatArray:
        k = len(self.models_)
        mask_bool = np.asarray(answered, dtype=bool).reshape(-1)
        if mask_bool.shape != (k,):
            raise ValueError(f"answered must have shape ({k},), got {np.shape(answered)}")
        key = int(_pack(mask_bool[None, :])[0])
        cov = self._cov_cache.get(key)
        if cov is None:
            if self._full_held_out is None:
                self._full_held_out = self._held_out(np.ones(k, dtype=bool))
            diff = self._held_out(mask_bool) - self._full_held_out
            cov = np.atleast_2d(np.cov(diff, rowvar=False, bias=True))
            cov = 0.5 * (cov + cov.T)
            self._cov_cache[key] = cov
        return cov

    def _calibrate_scale(self, quality: FloatArray) -> float:
        """The factor ``routing.fit_uncertainty_scale`` picks on the cross-fitted training queries: the
        same criterion as the validation fit that evaluation and calibration apply, on other rows."""
        return fit_uncertainty_scale(_CrossFittedSource(self), quality).scale

    def estimate_source(self, X: QueryModelTable) -> Any:
        """An :class:`~routing.EstimateSource` over the queries of ``X`` (see ``TrainedEstimates``).

        Post-hoc costs are ``X.cost`` (what a model that ran cost); ex-ante costs come from
        :meth:`ante_cost`.
        """
        from estimators.trained_estimates import TrainedEstimates

        return TrainedEstimates.from_estimator(self, X)

    # -- internals ----------------------------------------------------------------------------------
    def _held_out(self, mask_bool: BoolArray) -> FloatArray:
        """Cross-fitted predictions for every training query in state ``mask_bool``, shape (n_train, K)."""
        n = self.n_train_
        answered = np.ascontiguousarray(np.broadcast_to(mask_bool, (n, mask_bool.shape[0])))
        rows = np.arange(n, dtype=np.intp)
        return _predict(self.fold_coef_, self.fold_intercept_, self.train_, rows, answered, self.fold_of_)

    def _validate_params(self) -> None:
        for name in ("ante_C", "post_C"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < float(value) < np.inf:
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")
        for name, low in (
            ("n_text_features", 1), ("n_shape_features", 0), ("cv", 2), ("n_subsets_per_query", 1),
            ("n_size_buckets", 1),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        scale = self.uncertainty_scale
        if scale != "auto" and (isinstance(scale, bool) or not isinstance(scale, numbers.Real)
                                or not 0 <= float(scale) < np.inf):
            raise ValueError(f"uncertainty_scale must be 'auto' or a finite number >= 0, got {scale!r}")
        if self.uncertainty not in _UNCERTAINTY:
            raise ValueError(f"uncertainty must be one of {list(_UNCERTAINTY)}, got {self.uncertainty!r}")

    def _new_ante(self) -> PerModelClassifier:
        return PerModelClassifier(
            estimator=LogisticRegression(C=self.ante_C, solver="liblinear", random_state=self._solver_seed)
        )

    def _task_onehot(self, eval_names: tuple[str, ...]) -> FloatArray:
        index = {t: j for j, t in enumerate(self.tasks_)}
        out = np.zeros((len(eval_names), len(self.tasks_)))
        for r, name in enumerate(eval_names):
            j = index.get(name)
            if j is not None:
                out[r, j] = 1.0
        return out

    def _ante_features(self, prompts: tuple[str, ...], task: FloatArray) -> sp.csr_matrix:
        out: sp.csr_matrix = sp.hstack([self.features_.transform(prompts), sp.csr_matrix(task)], format="csr")
        return out

    @staticmethod
    def _cost_features(prompts: tuple[str, ...], task: FloatArray) -> FloatArray:
        chars_k = np.array([len(p) for p in prompts], dtype=np.float64)[:, None] / 1000.0
        return np.hstack([chars_k, task])

    def _draw_states(
        self, i: int, own: bool, bucket: int, n_buckets: int, n: int, k: int, rng: np.random.RandomState
    ) -> tuple[IntArray, BoolArray]:
        """Training states of model ``i``'s model for (ran = ``own``, size bucket ``bucket``).

        Every training query appears ``n_subsets_per_query`` times, each with a uniformly drawn set of
        answered others: of exactly ``bucket`` models, or, in the last bucket, of a size drawn
        uniformly from ``n_buckets - 1`` to ``k - 1``.
        """
        m = n * self.n_subsets_per_query
        rows = np.repeat(np.arange(n, dtype=np.intp), self.n_subsets_per_query)
        if bucket < n_buckets - 1:
            sizes = np.full(m, bucket)
        else:
            sizes = rng.randint(n_buckets - 1, k, size=m)
        others = np.array([j for j in range(k) if j != i], dtype=np.intp)
        # The `size` others with the smallest random keys answered: a uniform subset of that size.
        ranks = np.argsort(np.argsort(rng.random_sample((m, k - 1)), axis=1), axis=1)
        answered = np.zeros((m, k), dtype=bool)
        answered[:, others] = ranks < sizes[:, None]
        answered[:, i] = own
        return rows, answered

class _CrossFittedSource:
    """The fitted estimator's cross-fitted training predictions as an ``routing.EstimateSource`` (cost 0), with
    the unscaled covariance: what ``"auto"`` fits its factor on. Every call asks for one answered set for
    all its rows, as ``fit_uncertainty_scale`` does."""

    def __init__(self, estimator: TrainedQualityEstimator) -> None:
        self.estimator = estimator
        self.n_queries = int(estimator.n_train_)
        self.n_models = len(estimator.models_)

    def estimate(self, rows: IntArray, answered: BoolArray) -> Estimates:
        mask = np.asarray(answered[0], dtype=bool)
        if not np.all(answered == mask):
            raise ValueError("the cross-fitted source answers one answered set for all rows at a time")
        est = self.estimator
        n, k = len(rows), self.n_models
        q = est._held_out(mask)[rows]
        cov = est._raw_covariance(mask)
        if est.uncertainty == "correlated":
            return Estimates(q_mean=q, cost=np.zeros((n, k)), q_cov=np.broadcast_to(cov, (n, k, k)))
        return Estimates(q_mean=q, cost=np.zeros((n, k)), q_var=np.broadcast_to(np.diag(cov), (n, k)))


def _check_table(X: Any, *, min_rows: int, need_responses: bool = True) -> QueryModelTable:
    if not isinstance(X, QueryModelTable):
        raise ValueError(f"X must be a QueryModelTable (load_routerbench), got {type(X).__name__}")
    if need_responses and X.responses is None:
        raise ValueError("the table has no responses: the trained estimators read the models' answers")
    if X.n_queries < min_rows:
        raise ValueError(f"need at least {min_rows} queries, got {X.n_queries}")
    return X


def _responses(table: QueryModelTable) -> tuple[tuple[str, ...], ...]:
    assert table.responses is not None  # _check_table guarantees it
    return table.responses


def _n_stats(table: QueryModelTable) -> int:
    return 0 if table.answer_stats is None else int(table.answer_stats.shape[2])


def _signals(table: QueryModelTable) -> AnswerSignals:
    return answer_signals(table.prompts, _responses(table), kinds=table.answer_kinds, stats=table.answer_stats)


def _check_state(rows: Any, answered: Any, n_queries: int, k: int) -> tuple[IntArray, BoolArray]:
    rows = np.asarray(rows)
    answered = np.asarray(answered)
    if rows.ndim != 1 or (rows.size and not np.issubdtype(rows.dtype, np.integer)):
        raise ValueError(f"rows must be a 1-D array of row indices, got shape {rows.shape} dtype {rows.dtype}")
    if rows.size and (rows.min() < 0 or rows.max() >= n_queries):
        raise ValueError(f"rows must index 0..{n_queries - 1}, got range [{rows.min()}, {rows.max()}]")
    if answered.dtype != np.bool_ or answered.shape != (rows.shape[0], k):
        raise ValueError(f"answered must be a bool array of shape ({rows.shape[0]}, {k}), got {answered.dtype} "
                         f"{answered.shape}")
    return rows.astype(np.intp, copy=False), answered


def _pack(answered: BoolArray) -> NDArray[np.int64]:
    """Bitmask of each row of a (n, K) bool array: bit i set when model i answered."""
    weights = np.int64(1) << np.arange(answered.shape[1], dtype=np.int64)
    out: NDArray[np.int64] = (answered.astype(np.int64) * weights).sum(axis=1)
    return out


def _post_features(i: int, q: PreparedQueries, rows: IntArray, answered: BoolArray) -> FloatArray:
    """Features of target model ``i`` for queries ``rows`` in states ``answered`` (module docstring).

    Shape (n, 9 + 4 * n_tasks + 2 * n_models + n_stats); the post-hoc block (with i's own answer
    statistics, ``AnswerSignals.stats``) is zero where i has not answered.
    Every operation is row-wise, so a row's features do not depend on the other rows of the batch.
    """
    n, k = answered.shape
    z = q.z_ante[rows, i][:, None]
    task = q.task[rows]
    agree = q.signals.agreement[rows]
    others = answered.copy()
    others[:, i] = False
    oth = others.astype(np.float64)
    n_oth = oth.sum(axis=1, keepdims=True)
    # Mean pairwise agreement among the answered others, from -1 (all differ) to +1 (all agree), 0 when
    # fewer than two answered: how easy the question looked to them.
    # The double sum counts each pair twice and adds the diagonal (agreement 0 there, so -1 per model).
    pair_sum = 0.5 * (np.einsum("nj,njk,nk->n", oth, 2.0 * agree - 1.0, oth)[:, None] + n_oth)
    n_pairs = n_oth * (n_oth - 1) / 2
    has_pairs = (n_pairs > 0).astype(np.float64)
    consensus = np.divide(pair_sum, n_pairs, out=np.zeros_like(pair_sum), where=n_pairs > 0)
    extracted_others = np.divide((q.signals.extracted[rows] * oth).sum(axis=1, keepdims=True), n_oth,
                                 out=np.zeros_like(n_oth), where=n_oth > 0)
    own = answered[:, i : i + 1].astype(np.float64)
    # +1 agrees, -1 disagrees, 0 has not answered: "no evidence" must not look like "disagreement".
    signed = (2.0 * agree[:, i, :] - 1.0) * oth
    net = signed.sum(axis=1, keepdims=True)
    mean_signed = np.divide(net, n_oth, out=np.zeros_like(n_oth), where=n_oth > 0)
    post = own * np.hstack([
        q.signals.extracted[rows, i : i + 1].astype(np.float64),
        q.signals.log_length[rows, i : i + 1],
        signed,
        net,
        net * task,
        mean_signed,
        q.signals.stats[rows, i],
    ])
    out: FloatArray = np.hstack([
        z, task, z * task, oth, n_oth / max(k - 1, 1), consensus, has_pairs, consensus * task, extracted_others, post,
    ])
    return out


def _predict(
    coef: FloatArray, intercept: FloatArray, q: PreparedQueries, rows: IntArray, answered: BoolArray,
    model_of: IntArray | None = None,
) -> FloatArray:
    """P(correct) of every model, shape (n, K).

    ``coef`` has shape (n_fits, K, 2, n_buckets, n_features) and ``intercept`` (n_fits, K, 2, n_buckets);
    row r uses fit ``model_of[r]`` (default 0). The row-wise product keeps rows batch-independent.
    """
    n, k = answered.shape
    n_buckets = coef.shape[3]
    fit = np.zeros(n, dtype=np.intp) if model_of is None else model_of
    out = np.empty((n, k))
    n_answered = answered.sum(axis=1)
    for i in range(k):
        own = answered[:, i].astype(np.intp)
        bucket = np.minimum(n_answered - own, n_buckets - 1)
        w = coef[fit, i, own, bucket]
        logit = (_post_features(i, q, rows, answered) * w).sum(axis=1) + intercept[fit, i, own, bucket]
        out[:, i] = 0.5 * (1.0 + np.tanh(0.5 * logit))
    return out


def _fit_logistic(x: FloatArray, y: FloatArray, c: float) -> tuple[FloatArray, float]:
    """Coefficients and intercept, on the raw features, of a logistic regression fitted on standardised ones.

    Standardising makes lbfgs converge in a few dozen iterations and the penalty treat features alike;
    the coefficients are mapped back so prediction is one row-wise product. A one-label (or empty)
    sample gets the Laplace-smoothed rate as a constant, so every prediction stays finite.
    """
    if y.shape[0] == 0 or np.unique(y).shape[0] < 2:
        rate = (float(y.sum()) + 1.0) / (y.shape[0] + 2.0)
        return np.zeros(x.shape[1]), float(np.log(rate) - np.log1p(-rate))
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-12] = 1.0  # constant columns (e.g. the post-hoc block of a model not run) stay 0
    model = LogisticRegression(C=c, max_iter=1000).fit((x - mean) / scale, y)
    coef = np.asarray(model.coef_[0], dtype=np.float64) / scale
    return coef, float(model.intercept_[0] - coef @ mean)
