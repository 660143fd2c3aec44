"""Evaluation: budget grid, area under the cost-quality curve and bootstrap CIs (algorithm-spec §5.4).

A method is run once per budget of a grid; averaging its per-query realised cost and quality over the
test set gives one (cost, quality) point per budget. The AUC summarises these points as the *mean
quality over the cost range of the individual models*: ``[x_min, x_max]`` spans the cheapest and the
most expensive model's average test cost, and ``y_base`` is the worst model's average test quality.

Two choices here differ from the reference code (``selection/utils.py``) on purpose:

- §8 item 17: points that share a cost but differ in quality are merged into one point with the
  *highest* quality, so the interpolation never sees duplicate costs. The reference kept both, and
  ``interp1d`` then depended on their order.
- The boundary points at ``x_min`` and ``x_max`` are interpolated on the *extended* curve (flat after
  the last point, joined to ``(x_min, y_base)`` before the first), so a curve that lies entirely left
  of ``x_min`` is carried flat instead of linearly extrapolated.

Both the grid and the AUC range come from *test-set* averages of the single models (§8 item 14), and
the grid moves the AUC by whole points, so a reported AUC must state its grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "AucRange",
    "ConfidenceInterval",
    "area_under_curve",
    "auc_range",
    "bootstrap_auc",
    "bootstrap_indices",
    "bootstrap_means",
    "budget_grid",
    "hull_models",
    "linear_interpolation_curve",
    "paired_difference",
    "single_model_points",
]

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.intp]


# ---------------------------------------------------------------------------------------------------
# Validation helpers


def _as_vector(x: ArrayLike, name: str) -> FloatArray:
    """``x`` as a non-empty, finite, 1-D float array, or a ``ValueError`` naming ``name``."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} must not be empty")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains non-finite values")
    return arr


def _as_matrix(x: ArrayLike, name: str) -> FloatArray:
    """``x`` as a non-empty, finite, 2-D float array, or a ``ValueError`` naming ``name``."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains non-finite values")
    return arr


def _as_model_points(model_cost: ArrayLike, model_quality: ArrayLike) -> tuple[FloatArray, FloatArray]:
    cost = _as_vector(model_cost, "model_cost")
    quality = _as_vector(model_quality, "model_quality")
    if cost.shape != quality.shape:
        raise ValueError(f"model_cost has shape {cost.shape} but model_quality has shape {quality.shape}")
    return cost, quality


def _as_finite_float(x: float, name: str) -> float:
    value = float(x)
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite, got {x!r}")
    return value


# ---------------------------------------------------------------------------------------------------
# Single models, their hull and the budget grid


def single_model_points(quality: ArrayLike, cost: ArrayLike) -> tuple[FloatArray, FloatArray]:
    """Average cost and quality of every individual model.

    Parameters
    ----------
    quality : array-like of shape (n_queries, n_models)
        Ground-truth quality of each model's answer to each query.
    cost : array-like of shape (n_queries, n_models)
        Realised cost of each model on each query.

    Returns
    -------
    model_cost : ndarray of shape (n_models,)
        Mean cost of each model over the queries.
    model_quality : ndarray of shape (n_models,)
        Mean quality of each model over the queries.
    """
    q = _as_matrix(quality, "quality")
    c = _as_matrix(cost, "cost")
    if q.shape != c.shape:
        raise ValueError(f"quality has shape {q.shape} but cost has shape {c.shape}")
    return c.mean(axis=0), q.mean(axis=0)


def hull_models(model_cost: ArrayLike, model_quality: ArrayLike) -> IntArray:
    """Indices of the models on the upper-left convex hull of (cost, quality), by increasing cost.

    This is the reference's ``remove_redundant_models``: a model is dropped if a cheaper (or equally
    expensive) model is at least as good, or if it lies strictly below the segment joining two other
    models. Models exactly on a hull segment are kept, as in the reference. Of several models with
    the same (cost, quality) the lowest index is kept. Unlike the reference, a model that only *ties*
    a cheaper model's quality is dropped (it is weakly dominated), so hull models have strictly
    increasing cost and strictly increasing quality.

    Parameters
    ----------
    model_cost : array-like of shape (n_models,)
        Mean cost of each model.
    model_quality : array-like of shape (n_models,)
        Mean quality of each model.

    Returns
    -------
    ndarray of int of shape (n_hull,)
        Indices into the model arrays, sorted by increasing cost; ``n_hull >= 1``.
    """
    cost, quality = _as_model_points(model_cost, model_quality)
    # By cost, then best quality first, then lowest index: the first model of each cost group is its
    # representative, and ties between identical points resolve to the lowest index.
    order = np.lexsort((np.arange(cost.size), -quality, cost))

    # Pareto front: each kept model is strictly better than every cheaper one.
    front: list[int] = []
    for i in order:
        if not front or quality[i] > quality[front[-1]]:
            front.append(int(i))

    # Upper hull (monotone chain) of the front: pop the middle point b of (a, b, c) when it lies
    # strictly below the segment a-c, i.e. when the cross product (b - a) x (c - a) is positive.
    hull: list[int] = []
    for c in front:
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            cross = (cost[b] - cost[a]) * (quality[c] - quality[a]) - (quality[b] - quality[a]) * (
                cost[c] - cost[a]
            )
            if cross > 0:
                hull.pop()
            else:
                break
        hull.append(c)
    return np.asarray(hull, dtype=np.intp)


def budget_grid(model_cost: ArrayLike, model_quality: ArrayLike, *, per_segment: int = 10) -> FloatArray:
    """The paper's budget grid: evenly spaced budgets along every segment of the model hull.

    For each consecutive pair of hull models (see :func:`hull_models`) with mean costs ``c_a < c_b``,
    ``np.linspace(c_a, c_b, per_segment)`` (endpoints included); the segments are concatenated and the
    shared endpoints counted once. With ``h`` hull models the grid has ``(per_segment - 1) * (h - 1) + 1``
    budgets; a single hull model gives just its cost.

    The grid is part of the result: the AUC of a method is computed from its points at these budgets,
    and a different grid (e.g. the ``10 * K`` budgets up to the sum of costs used for SWE-Bench) moves
    the AUC by whole points. Results must state the grid they used. Per algorithm-spec §8 item 14, the
    paper builds the grid from *test-set* model averages.

    Parameters
    ----------
    model_cost : array-like of shape (n_models,)
        Mean cost of each model.
    model_quality : array-like of shape (n_models,)
        Mean quality of each model.
    per_segment : int, default=10
        Budgets per hull segment, endpoints included; at least 2.

    Returns
    -------
    ndarray of shape (n_budgets,)
        Sorted, distinct budgets from the cheapest to the most expensive hull model's cost.
    """
    if isinstance(per_segment, bool) or not isinstance(per_segment, int | np.integer) or per_segment < 2:
        raise ValueError(f"per_segment must be an integer >= 2, got {per_segment!r}")
    cost, quality = _as_model_points(model_cost, model_quality)
    hull_cost = cost[hull_models(cost, quality)]
    if hull_cost.size == 1:
        return hull_cost.copy()
    segments = [
        np.linspace(lo, hi, int(per_segment)) for lo, hi in zip(hull_cost[:-1], hull_cost[1:], strict=True)
    ]
    # linspace returns both endpoints exactly, so adjacent segments' shared endpoints are equal floats.
    return np.unique(np.concatenate(segments))


def linear_interpolation_curve(
    model_cost: ArrayLike, model_quality: ArrayLike
) -> tuple[FloatArray, FloatArray]:
    """The "linear" baseline: the hull of the individual models.

    Mixing two neighbouring hull models at random reaches every point of the segment between them, so
    :func:`area_under_curve` on these points gives the baseline's AUC.

    Parameters
    ----------
    model_cost : array-like of shape (n_models,)
        Mean cost of each model.
    model_quality : array-like of shape (n_models,)
        Mean quality of each model.

    Returns
    -------
    cost : ndarray of shape (n_hull,)
        Costs of the hull models, increasing.
    quality : ndarray of shape (n_hull,)
        Their qualities.
    """
    cost, quality = _as_model_points(model_cost, model_quality)
    hull = hull_models(cost, quality)
    return cost[hull], quality[hull]


# ---------------------------------------------------------------------------------------------------
# Area under the curve


@dataclass(frozen=True, slots=True)
class AucRange:
    """The range over which the AUC averages quality (algorithm-spec §5.4).

    Attributes
    ----------
    x_min : float
        Mean cost of the cheapest individual model.
    x_max : float
        Mean cost of the most expensive individual model.
    y_base : float
        Mean quality of the worst individual model: the curve's value at ``x_min`` when the method has
        no point that cheap.
    """

    x_min: float
    x_max: float
    y_base: float


def auc_range(model_cost: ArrayLike, model_quality: ArrayLike) -> AucRange:
    """The AUC range from the individual models' averages.

    Per algorithm-spec §5.4 and §8 item 14, the paper uses *test-set* averages of the single models.

    Parameters
    ----------
    model_cost : array-like of shape (n_models,)
        Mean cost of each model.
    model_quality : array-like of shape (n_models,)
        Mean quality of each model.

    Returns
    -------
    AucRange
        ``x_min = min(model_cost)``, ``x_max = max(model_cost)``, ``y_base = min(model_quality)``.
    """
    cost, quality = _as_model_points(model_cost, model_quality)
    return AucRange(x_min=float(cost.min()), x_max=float(cost.max()), y_base=float(quality.min()))


def area_under_curve(
    cost: ArrayLike, quality: ArrayLike, *, x_min: float, x_max: float, y_base: float
) -> float:
    """Mean quality of a cost-quality curve over ``[x_min, x_max]`` (algorithm-spec §5.4).

    1. Clean: points that share a cost are merged into one with the highest quality (the fix of §8
       item 17), then the points are sorted by cost. Nothing else is dropped: the curve need not be
       monotone.
    2. Extend: if the curve ends before ``x_max``, its last quality is carried flat to ``x_max``; if it
       starts after ``x_min``, the point ``(x_min, y_base)`` is added.
    3. Clip: the (extended) curve is linearly interpolated at ``x_min`` and ``x_max`` and cut there.

    The result is the trapezoid area over ``[x_min, x_max]`` divided by ``x_max - x_min``: a mean
    quality, which the paper reports multiplied by 100.

    Parameters
    ----------
    cost : array-like of shape (n_points,)
        Mean cost of the method at each budget.
    quality : array-like of shape (n_points,)
        Mean quality of the method at each budget.
    x_min, x_max : float
        The cost range, ``x_max > x_min``; see :func:`auc_range`.
    y_base : float
        Quality at ``x_min`` for a curve that starts after ``x_min``.

    Returns
    -------
    float
        The mean quality over the range.

    Raises
    ------
    ValueError
        If ``cost`` or ``quality`` is empty, not 1-D, of different lengths or non-finite, if a range
        bound is non-finite, or if ``x_max <= x_min``.
    """
    x = _as_vector(cost, "cost")
    y = _as_vector(quality, "quality")
    if x.shape != y.shape:
        raise ValueError(f"cost has shape {x.shape} but quality has shape {y.shape}")
    lo = _as_finite_float(x_min, "x_min")
    hi = _as_finite_float(x_max, "x_max")
    base = _as_finite_float(y_base, "y_base")
    if not hi > lo:
        raise ValueError(f"x_max must be greater than x_min, got x_min={lo!r}, x_max={hi!r}")

    # §8.17: one point per cost, the best one; np.unique also sorts by cost.
    unique_x, inverse = np.unique(x, return_inverse=True)
    xs: FloatArray = np.asarray(unique_x, dtype=np.float64)
    ys: FloatArray = np.full(xs.shape, -np.inf)
    np.maximum.at(ys, inverse, y)

    if xs[-1] < hi:
        xs, ys = np.append(xs, hi), np.append(ys, ys[-1])
    if xs[0] > lo:
        xs, ys = np.insert(xs, 0, lo), np.insert(ys, 0, base)

    # The extended curve now covers [lo, hi], so np.interp interpolates (never extrapolates) there.
    inside = (xs > lo) & (xs < hi)
    grid = np.concatenate(([lo], xs[inside], [hi]))
    values = np.interp(grid, xs, ys)
    return float(np.trapezoid(values, grid) / (hi - lo))


# ---------------------------------------------------------------------------------------------------
# Bootstrap


def bootstrap_indices(n_queries: int, *, n_resamples: int = 500, seed: int = 0) -> IntArray:
    """Resamples of the test queries, with replacement (the paper: 500 resamples, seed 0).

    Parameters
    ----------
    n_queries : int
        Number of test queries; at least 1.
    n_resamples : int, default=500
        Number of bootstrap resamples; at least 1.
    seed : int, default=0
        Seed of ``np.random.default_rng``.

    Returns
    -------
    ndarray of int of shape (n_resamples, n_queries)
        Row ``r`` holds the query indices of resample ``r``. Use the same indices for every method so
        that differences between methods are paired.
    """
    if n_queries < 1:
        raise ValueError(f"n_queries must be >= 1, got {n_queries!r}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples!r}")
    rng = np.random.default_rng(seed)
    return rng.integers(0, n_queries, size=(n_resamples, n_queries), dtype=np.intp)


def _resample_counts(indices: IntArray, n_queries: int) -> FloatArray:
    """How often each query appears in each resample, shape (n_resamples, n_queries).

    Means over a resample are then one matrix product, instead of materialising the resampled arrays
    (n_points x n_resamples x n_queries values).
    """
    n_resamples = indices.shape[0]
    offsets = (np.arange(n_resamples, dtype=np.intp) * n_queries)[:, None]
    flat = np.bincount((indices + offsets).ravel(), minlength=n_resamples * n_queries)
    return flat.reshape(n_resamples, n_queries).astype(np.float64)


def bootstrap_auc(
    point_quality: ArrayLike,
    point_cost: ArrayLike,
    model_quality: ArrayLike,
    model_cost: ArrayLike,
    indices: ArrayLike,
) -> FloatArray:
    """AUC of one method on every bootstrap resample of the test queries (paper Tables 4 and 6).

    On each resample, every budget point's mean cost and quality are recomputed, and so are the single
    models' means, hence the AUC range (``x_min``, ``x_max``, ``y_base``); then the AUC.

    Parameters
    ----------
    point_quality : array-like of shape (n_points, n_queries)
        Realised quality of the method on each query, at each budget point.
    point_cost : array-like of shape (n_points, n_queries)
        Realised cost of the method on each query, at each budget point.
    model_quality : array-like of shape (n_queries, n_models)
        Quality of each individual model on each query.
    model_cost : array-like of shape (n_queries, n_models)
        Cost of each individual model on each query.
    indices : array-like of int of shape (n_resamples, n_queries_resampled)
        Query indices of each resample, usually from :func:`bootstrap_indices`.

    Returns
    -------
    ndarray of shape (n_resamples,)
        The AUC (mean quality, not x100) on each resample. Summarise with
        :meth:`ConfidenceInterval.from_samples`; for two methods evaluated with the same ``indices``,
        :func:`paired_difference` gives the CI of their difference.
    """
    pq = _as_matrix(point_quality, "point_quality")
    pc = _as_matrix(point_cost, "point_cost")
    mq = _as_matrix(model_quality, "model_quality")
    mc = _as_matrix(model_cost, "model_cost")
    if pc.shape != pq.shape:
        raise ValueError(f"point_cost has shape {pc.shape}, expected {pq.shape} like point_quality")
    if mc.shape != mq.shape:
        raise ValueError(f"model_cost has shape {mc.shape}, expected {mq.shape} like model_quality")
    n_queries = pq.shape[1]
    if mq.shape[0] != n_queries:
        raise ValueError(
            f"model_quality has {mq.shape[0]} queries (rows) but point_quality has {n_queries} (columns)"
        )
    idx = np.asarray(indices)
    if idx.ndim != 2 or idx.size == 0:
        raise ValueError(f"indices must be a non-empty 2-D array, got shape {idx.shape}")
    if not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"indices must be integers, got dtype {idx.dtype}")
    if idx.min() < 0 or idx.max() >= n_queries:
        raise ValueError(f"indices must lie in [0, {n_queries}), got range [{idx.min()}, {idx.max()}]")

    counts = _resample_counts(idx.astype(np.intp, copy=False), n_queries)
    per_resample = float(idx.shape[1])
    point_q = counts @ pq.T / per_resample  # (n_resamples, n_points)
    point_c = counts @ pc.T / per_resample
    model_q = counts @ mq / per_resample  # (n_resamples, n_models)
    model_c = counts @ mc / per_resample

    out = np.empty(idx.shape[0])
    for r in range(idx.shape[0]):
        rng_r = auc_range(model_c[r], model_q[r])
        out[r] = area_under_curve(
            point_c[r], point_q[r], x_min=rng_r.x_min, x_max=rng_r.x_max, y_base=rng_r.y_base
        )
    return out


def bootstrap_means(values: ArrayLike, indices: ArrayLike, *, chunk_resamples: int = 100) -> FloatArray:
    """Mean of every series on every bootstrap resample of the queries, all series on the same resamples.

    Many paired comparisons over the same queries (every policy at every budget against routing and
    against every single model) then cost one matrix product, and the CI of ``a - b`` is the percentile
    interval of ``means[:, a] - means[:, b]``.

    Parameters
    ----------
    values : array-like of shape (n_queries, n_series)
        Per-query values of each series (a series of NaN gives NaN means and leaves the others alone).
    indices : array-like of int of shape (n_resamples, n_queries)
        Query indices of each resample, from :func:`bootstrap_indices`.
    chunk_resamples : int, default=100
        Resamples counted at once: memory is ``chunk_resamples x n_queries`` floats, whatever the total.

    Returns
    -------
    ndarray of shape (n_resamples, n_series)
    """
    vals = np.asarray(values, dtype=np.float64)
    if vals.ndim != 2 or vals.size == 0:
        raise ValueError(f"values must be a non-empty 2-D array (n_queries, n_series), got shape {vals.shape}")
    idx = np.asarray(indices)
    n_queries = vals.shape[0]
    if idx.ndim != 2 or idx.shape[1] != n_queries or not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"indices must be integers of shape (n_resamples, {n_queries}), got {idx.dtype} {idx.shape}")
    if idx.min() < 0 or idx.max() >= n_queries:
        raise ValueError(f"indices must lie in [0, {n_queries}), got range [{idx.min()}, {idx.max()}]")
    if chunk_resamples < 1:
        raise ValueError(f"chunk_resamples must be >= 1, got {chunk_resamples!r}")
    out = np.empty((idx.shape[0], vals.shape[1]))
    for start in range(0, idx.shape[0], chunk_resamples):
        rows = idx[start : start + chunk_resamples].astype(np.intp, copy=False)
        out[start : start + rows.shape[0]] = _resample_counts(rows, n_queries) @ vals / n_queries
    return out


@dataclass(frozen=True, slots=True)
class ConfidenceInterval:
    """A bootstrap summary: the mean and a percentile interval.

    Attributes
    ----------
    mean : float
        Mean of the bootstrap samples.
    low, high : float
        The 2.5 and 97.5 percentiles of the samples (for the default 95% level).
    """

    mean: float
    low: float
    high: float

    @classmethod
    def from_samples(cls, samples: ArrayLike, *, level: float = 0.95) -> ConfidenceInterval:
        """Summarise bootstrap samples.

        Parameters
        ----------
        samples : array-like of shape (n_resamples,)
            E.g. the output of :func:`bootstrap_auc`.
        level : float, default=0.95
            Coverage of the percentile interval, in (0, 1).

        Returns
        -------
        ConfidenceInterval
        """
        s = _as_vector(samples, "samples")
        if not 0.0 < level < 1.0:
            raise ValueError(f"level must be in (0, 1), got {level!r}")
        tail = 50.0 * (1.0 - level)
        low, high = np.percentile(s, [tail, 100.0 - tail])
        return cls(mean=float(s.mean()), low=float(low), high=float(high))

    @property
    def plus(self) -> float:
        """Upper offset ``high - mean``, as the paper prints it (``+7.49``)."""
        return self.high - self.mean

    @property
    def minus(self) -> float:
        """Lower offset ``mean - low``, as the paper prints it (``-7.17``)."""
        return self.mean - self.low


def paired_difference(samples_a: ArrayLike, samples_b: ArrayLike) -> ConfidenceInterval:
    """CI of ``a - b`` from two methods' bootstrap samples computed on the SAME resamples.

    The paper reports every method as (method - cascade routing) this way (algorithm-spec §5.4).

    Parameters
    ----------
    samples_a, samples_b : array-like of shape (n_resamples,)
        Outputs of :func:`bootstrap_auc` with identical ``indices``.

    Returns
    -------
    ConfidenceInterval
        Of the per-resample differences.
    """
    a = _as_vector(samples_a, "samples_a")
    b = _as_vector(samples_b, "samples_b")
    if a.shape != b.shape:
        raise ValueError(f"samples_a has shape {a.shape} but samples_b has shape {b.shape}")
    return ConfidenceInterval.from_samples(a - b)
