"""Ground-truth-plus-noise quality and cost estimators of the paper's RouterBench protocol (spec §5.1).

The paper simulates estimators of known quality by adding Gaussian noise to the ground truth and
calibrating the noisy signal per model with a one-variable linear regression. Two deliberate departures
from the reference code (algorithm-spec §8 item 9):

- the noise is drawn **once** per (dataset, noise level, seed) from ``np.random.default_rng(seed)``
  and shared by every method and budget, instead of afresh, unseeded, per worker and per budget;
- the calibration is fitted on the rows the caller names (the validation split), not on train and
  test ground truth together.

Typical use::

    signals = draw_noise(table.quality, table.cost, "low", seed=0)
    est = simulated_estimates(signals, table.quality, table.cost, fit_rows=val_rows)
    est_val, est_test = est.subset(val_rows), est.subset(test_rows)
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import check_is_fitted, validate_data as _validate_data

from routing import TableEstimates

__all__ = [
    "NOISE_LEVELS",
    "NoiseLevel",
    "NoisySignals",
    "PerModelLinearCalibrator",
    "SHRINKAGE",
    "draw_noise",
    "measurement_slopes",
    "shrink_toward_pooled",
    "simulated_estimates",
]

FloatArray = NDArray[np.float64]

# How the per-model calibration lines share strength (PerModelLinearCalibrator's ``shrinkage``).
SHRINKAGE = ("none", "empirical_bayes", "pooled", "measurement")


@dataclass(frozen=True, slots=True)
class NoiseLevel:
    """Standard deviations of the additive Gaussian noise (quality in score units, cost in USD).

    Attributes
    ----------
    q_ante_sd, q_post_sd : float
        Noise on quality before and after the model ran.
    cost_ante_sd, cost_post_sd : float
        Noise on cost before and after the model ran.
    """

    q_ante_sd: float
    q_post_sd: float
    cost_ante_sd: float
    cost_post_sd: float

    def __post_init__(self) -> None:
        for name in ("q_ante_sd", "q_post_sd", "cost_ante_sd", "cost_post_sd"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite non-negative number, got {value!r}")


# Algorithm-spec §5.1. Under "high" the cost noise (100 USD) swamps every cost, so calibrated costs
# collapse to each model's mean cost even after the model has run.
NOISE_LEVELS: dict[str, NoiseLevel] = {
    "low": NoiseLevel(q_ante_sd=0.6, q_post_sd=0.3, cost_ante_sd=2e-4, cost_post_sd=5e-5),
    "medium": NoiseLevel(q_ante_sd=1.6, q_post_sd=0.8, cost_ante_sd=4e-4, cost_post_sd=1e-4),
    "high": NoiseLevel(q_ante_sd=2.4, q_post_sd=1.2, cost_ante_sd=100.0, cost_post_sd=100.0),
}


@dataclass(frozen=True, eq=False)
class NoisySignals:
    """Noisy, uncalibrated observations of quality and cost.

    Attributes
    ----------
    q_ante, q_post : ndarray of shape (n_queries, n_models)
        Quality plus ex-ante and post-hoc noise.
    cost_ante, cost_post : ndarray of shape (n_queries, n_models)
        Cost (USD) plus ex-ante and post-hoc noise; may be negative.
    """

    q_ante: FloatArray
    q_post: FloatArray
    cost_ante: FloatArray
    cost_post: FloatArray

    def __post_init__(self) -> None:
        shape = np.shape(self.q_ante)
        if len(shape) != 2:
            raise ValueError(f"q_ante must have shape (n_queries, n_models), got shape {shape}")
        for name in ("q_ante", "q_post", "cost_ante", "cost_post"):
            arr = np.asarray(getattr(self, name), dtype=np.float64)
            if arr.shape != shape:
                raise ValueError(f"{name} has shape {arr.shape}, expected {shape} like q_ante")
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"{name} contains non-finite values")
            object.__setattr__(self, name, arr)


def draw_noise(
    quality: ArrayLike, cost: ArrayLike, level: str | NoiseLevel, *, seed: int
) -> NoisySignals:
    """Draw the noisy signals ``a = q + N(0, sd²)`` of the RouterBench protocol, reproducibly.

    Draw order (fixed, so a seed always gives the same draw): one call
    ``np.random.default_rng(seed).standard_normal((4, n_queries, n_models))``, whose slices 0..3 are
    the standard normals of ``q_ante``, ``q_post``, ``cost_ante`` and ``cost_post``, scaled by the
    level's standard deviations. Since the normals do not depend on the level, the same seed gives
    common random numbers across noise levels.

    Parameters
    ----------
    quality : array-like of shape (n_queries, n_models)
        Ground-truth quality, in [0, 1].
    cost : array-like of shape (n_queries, n_models)
        Ground-truth cost (USD), non-negative.
    level : str or NoiseLevel
        A key of :data:`NOISE_LEVELS` (``"low"``, ``"medium"``, ``"high"``) or explicit deviations.
    seed : int
        Seed of ``np.random.default_rng``. Required: unseeded noise is the bug this module fixes.

    Returns
    -------
    NoisySignals
        Arrays of shape (n_queries, n_models).
    """
    q, c = _check_ground_truth(quality, cost)
    sd = _resolve_level(level)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    z = np.random.default_rng(int(seed)).standard_normal((4, *q.shape))
    return NoisySignals(
        q_ante=q + sd.q_ante_sd * z[0],
        q_post=q + sd.q_post_sd * z[1],
        cost_ante=c + sd.cost_ante_sd * z[2],
        cost_post=c + sd.cost_post_sd * z[3],
    )


class PerModelLinearCalibrator(RegressorMixin, BaseEstimator):  # type: ignore[misc]
    """One-variable least squares per column: column ``j`` of ``y`` is regressed on column ``j`` of ``X``.

    This is the per-model calibration of the RouterBench protocol: ``X[:, j]`` is model ``j``'s noisy
    signal and ``y[:, j]`` its ground truth; the fitted line shrinks the signal toward the mean.

    Parameters
    ----------
    fit_intercept : bool, default=True
        Whether each line has an intercept. Without one, lines go through the origin.
    shrinkage : {"none", "empirical_bayes", "pooled", "measurement"}, default="none"
        ``"measurement"`` derives every column's slope from one measurement model of the signals shared by
        all columns (:func:`measurement_slopes`). ``"pooled"`` gives every column the pooled slope (one slope
        for every column, each keeping its own intercept). ``"empirical_bayes"`` pulls each column's slope
        toward the pooled slope by how noisy its own slope is: weight
        ``tau² / (tau² + v_j)`` on the column's least-squares slope, where ``v_j`` is that slope's sampling
        variance and ``tau²`` the spread of the true slopes across columns, estimated by the method of
        moments. Few rows (large ``v_j``) give the pooled slope, many rows each column's own (see
        :func:`shrink_toward_pooled`). Why: with a few dozen rows per model, each model's slope fits its
        noise (``docs/small_validation.md``).

    Attributes
    ----------
    coef_ : ndarray of shape (n_features,)
        Slope per column. A column of ``X`` with zero variance gets slope 0 (with an intercept) so
        that it predicts the mean of ``y`` instead of NaN.
    intercept_ : ndarray of shape (n_features,)
        Intercept per column (zeros when ``fit_intercept=False``).
    n_features_in_ : int
        Number of columns seen in ``fit``.
    shrink_weight_ : ndarray of shape (n_features,)
        Weight of each column's own slope (1 without shrinkage); the rest goes to the pooled slope.

    Notes
    -----
    ``y`` must have as many columns as ``X``. A 1-D ``y`` is a single target and needs a single
    column of ``X``; ``predict`` then returns shape (n_samples,).
    """

    def __init__(self, *, fit_intercept: bool = True, shrinkage: str = "none") -> None:
        self.fit_intercept = fit_intercept
        self.shrinkage = shrinkage

    def fit(self, X: ArrayLike, y: ArrayLike) -> PerModelLinearCalibrator:
        """Fit one line per column.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Signals, one column per model.
        y : array-like of shape (n_samples, n_features) or (n_samples,)
            Targets, one column per column of ``X``; 1-D only when ``X`` has one column.

        Returns
        -------
        self : PerModelLinearCalibrator
        """
        if not isinstance(self.fit_intercept, (bool, np.bool_)):
            raise ValueError(f"fit_intercept must be a bool, got {self.fit_intercept!r}")
        x_arr, y_arr = _validate_data(self, X, y, multi_output=True, y_numeric=True, dtype=np.float64)
        x_arr, y_1d = np.asarray(x_arr, dtype=np.float64), np.ndim(y_arr) == 1
        y2 = np.asarray(y_arr, dtype=np.float64).reshape(len(x_arr), -1)
        if y2.shape[1] != x_arr.shape[1]:
            raise ValueError(
                f"y has {y2.shape[1]} column(s) but X has {x_arr.shape[1]}: PerModelLinearCalibrator "
                "regresses column j of y on column j of X"
            )
        k = x_arr.shape[1]
        if self.fit_intercept:
            x_mean, y_mean = x_arr.mean(axis=0), y2.mean(axis=0)
            xc = x_arr - x_mean
            sxx = np.einsum("ij,ij->j", xc, xc)
            sxy = np.einsum("ij,ij->j", xc, y2 - y_mean)
            # Exactly constant columns carry no signal; testing the range, not sxx, avoids dividing by
            # round-off when the column's mean is not exactly representable.
            ok = (np.ptp(x_arr, axis=0) > 0) & (sxx > 0)
        else:
            x_mean = y_mean = np.zeros(k)
            sxx = np.einsum("ij,ij->j", x_arr, x_arr)
            sxy = np.einsum("ij,ij->j", x_arr, y2)
            ok = sxx > 0  # a constant non-zero column still fits a line through the origin
        coef = np.zeros(k)
        coef[ok] = sxy[ok] / sxx[ok]
        weight = np.ones(k)
        if self.shrinkage == "empirical_bayes":
            xs = x_arr - x_mean if self.fit_intercept else x_arr
            residual = (y2 - y_mean) - coef * xs
            dof = len(x_arr) - (2 if self.fit_intercept else 1)
            coef, weight = shrink_toward_pooled(coef, sxx, sxy, np.einsum("ij,ij->j", residual, residual), dof, ok)
        elif self.shrinkage == "pooled":
            if ok.any():
                coef[ok] = _pooled_slope(sxx, sxy, ok)
                weight[ok] = 0.0
        elif self.shrinkage == "measurement":
            coef = measurement_slopes(x_arr, y2, fit_intercept=bool(self.fit_intercept))
            weight = np.zeros(k)
        elif self.shrinkage != "none":
            raise ValueError(f"shrinkage must be one of {list(SHRINKAGE)}, got {self.shrinkage!r}")
        self.coef_ = coef
        self.shrink_weight_ = weight
        self.intercept_ = y_mean - coef * x_mean
        self._ravel_output = y_1d
        return self

    def predict(self, X: ArrayLike) -> FloatArray:
        """Calibrated values.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        ndarray of shape (n_samples, n_features), or (n_samples,) if ``fit`` saw a 1-D ``y``
        """
        check_is_fitted(self)
        x_arr = np.asarray(_validate_data(self, X, reset=False, dtype=np.float64), dtype=np.float64)
        out: FloatArray = x_arr * self.coef_ + self.intercept_
        return out.ravel() if self._ravel_output else out


def shrink_toward_pooled(
    coef: FloatArray, sxx: FloatArray, sxy: FloatArray, rss: FloatArray, dof: int, ok: NDArray[np.bool_]
) -> tuple[FloatArray, FloatArray]:
    """Empirical-Bayes slopes: each column's least-squares slope pulled toward the pooled one.

    Model: the true slopes ``b_j`` scatter around a common ``b`` with variance ``tau²``; column ``j``'s
    least-squares slope ``coef[j]`` estimates ``b_j`` with variance ``v_j = (rss[j] / dof) / sxx[j]``.
    The posterior mean is ``w_j coef[j] + (1 - w_j) b`` with ``w_j = tau² / (tau² + v_j)``. ``b`` is the
    pooled within-column slope ``sum(sxy) / sum(sxx)``; ``tau²`` is the method-of-moments estimate
    ``max(0, mean((coef - b)²) - mean(v))``. As rows grow ``v_j`` vanishes and ``w_j`` tends to 1 (each
    column's own fit); with few rows ``tau²`` is swamped and ``w_j`` tends to 0 (the pooled fit).

    Parameters
    ----------
    coef, sxx, sxy, rss : ndarray of shape (n_columns,)
        Least-squares slopes, the (centred) sums of squares and cross-products, residual sums of squares.
    dof : int
        Residual degrees of freedom per column; below 1 the slopes' variance is unknown and every column
        takes the pooled slope.
    ok : ndarray of bool, shape (n_columns,)
        Columns with a signal; the others keep slope 0 and weight 1.

    Returns
    -------
    (slopes, weights) : ndarrays of shape (n_columns,)
    """
    slopes, weights = coef.copy(), np.ones_like(coef)
    if not ok.any():
        return slopes, weights
    pooled = _pooled_slope(sxx, sxy, ok)
    if dof < 1:
        var = np.full(int(ok.sum()), np.inf)
    else:
        var = (rss[ok] / dof) / sxx[ok]
    tau2 = max(0.0, float(np.mean((coef[ok] - pooled) ** 2) - np.mean(var))) if np.all(np.isfinite(var)) else 0.0
    # tau2 = 0 and var = 0 (exact fits, all slopes equal): nothing to shrink, keep the column's own slope.
    denom = tau2 + var
    w = np.where(denom > 0, tau2 / np.where(denom > 0, denom, 1.0), 1.0)
    weights[ok] = w
    slopes[ok] = w * coef[ok] + (1.0 - w) * pooled
    return slopes, weights


def measurement_slopes(x: FloatArray, y: FloatArray, *, fit_intercept: bool = True) -> FloatArray:
    """Calibration slopes from one measurement model shared by every column.

    Model: column ``j``'s signal is ``x_j = a_j + beta * y_j + e`` with noise ``e`` of variance ``sigma²``
    independent of ``y_j``, the same ``beta`` and ``sigma²`` for every column (one estimator, one noise
    scale, whatever the model), while the targets' variances ``v_j`` differ (a 0/1 quality's variance is
    p(1 - p), so models of different accuracy need different slopes). The least-squares slope of ``y_j``
    on ``x_j`` then tends to ``beta v_j / (beta² v_j + sigma²)`` (the attenuation, or reliability, of a
    signal measured with error). ``beta`` and ``sigma²`` come from the pooled regression of the signals
    on the targets (within columns), ``v_j`` from column ``j``'s targets alone: with a few dozen rows a
    column's own slope fits its noise's chance correlation with the target (it can even come out
    negative), where these three moments stay close to their values.

    Parameters
    ----------
    x, y : ndarray of shape (n_samples, n_columns)
        Signals and targets.
    fit_intercept : bool
        Centre each column first (each keeps its own intercept); otherwise raw second moments.

    Returns
    -------
    ndarray of shape (n_columns,)
        0 for a column whose targets do not vary (it predicts their mean) and everywhere when the pooled
        targets do not vary or no residual degree of freedom is left.
    """
    n, k = x.shape
    xc = x - x.mean(axis=0) if fit_intercept else x
    yc = y - y.mean(axis=0) if fit_intercept else y
    syy = np.einsum("ij,ij->j", yc, yc)
    total = float(syy.sum())
    dof = n * k - (k if fit_intercept else 0) - 1
    slopes = np.zeros(k)
    if total <= 0.0 or dof < 1:
        return slopes
    beta = float(np.einsum("ij,ij->", xc, yc)) / total
    sigma2 = float(np.sum((xc - beta * yc) ** 2)) / dof
    v = syy / n
    denom = beta**2 * v + sigma2
    np.divide(beta * v, denom, out=slopes, where=denom > 0)
    return slopes


def _pooled_slope(sxx: FloatArray, sxy: FloatArray, ok: NDArray[np.bool_]) -> float:
    """One least-squares slope for every column with a signal (within-column sums, so each keeps its mean)."""
    return float(sxy[ok].sum() / sxx[ok].sum())


def simulated_estimates(
    signals: NoisySignals,
    quality: ArrayLike,
    cost: ArrayLike,
    *,
    fit_rows: ArrayLike,
    post_var: float = 1e-6,
    shrinkage: str = "none",
) -> TableEstimates:
    """Calibrate noisy signals into ex-ante/post-hoc estimates for every row (algorithm-spec §5.1).

    Four :class:`PerModelLinearCalibrator` are fitted on ``fit_rows`` only: quality ante and post
    (targets ``quality``) and cost ante and post (targets ``cost``). Then, per model ``i``,
    ``s_i = std over fit_rows of (calibrated q_ante − calibrated q_post)``.

    Parameters
    ----------
    signals : NoisySignals
        From :func:`draw_noise`, arrays of shape (n_queries, n_models).
    quality : array-like of shape (n_queries, n_models)
        Ground-truth quality in [0, 1]; only ``fit_rows`` are read.
    cost : array-like of shape (n_queries, n_models)
        Ground-truth cost (USD), non-negative; only ``fit_rows`` are read.
    fit_rows : array-like of int of shape (n_fit,), or bool of shape (n_queries,)
        Rows to fit the calibration on (the validation split). Never include test rows: that is the
        leak of algorithm-spec §8 item 9.
    post_var : float, default=1e-6
        Variance of every post-hoc quality estimate (the answer is known).
    shrinkage : {"none", "empirical_bayes", "pooled", "measurement"}, default="none"
        How the per-model slopes share strength (:class:`PerModelLinearCalibrator`).

    Returns
    -------
    TableEstimates
        For **all** n_queries rows; split with ``TableEstimates.subset``. ``var_ante[:, i] = s_i²``,
        ``var_post = post_var``, and calibrated costs are clipped at 0 (a negative cost estimate is
        invalid input for routing).
    """
    q, c = _check_ground_truth(quality, cost)
    if signals.q_ante.shape != q.shape:
        raise ValueError(f"signals have shape {signals.q_ante.shape}, quality has shape {q.shape}")
    rows = _check_rows(fit_rows, q.shape[0])
    if not isinstance(post_var, numbers.Real) or not math.isfinite(post_var) or post_var < 0:
        raise ValueError(f"post_var must be a finite non-negative number, got {post_var!r}")

    def calibrate(signal: FloatArray, target: FloatArray) -> FloatArray:
        return PerModelLinearCalibrator(shrinkage=shrinkage).fit(signal[rows], target[rows]).predict(signal)

    q_ante = calibrate(signals.q_ante, q)
    q_post = calibrate(signals.q_post, q)
    cost_ante = np.clip(calibrate(signals.cost_ante, c), 0.0, None)
    cost_post = np.clip(calibrate(signals.cost_post, c), 0.0, None)
    s = np.std(q_ante[rows] - q_post[rows], axis=0)
    return TableEstimates(
        q_ante=q_ante,
        q_post=q_post,
        var_ante=np.broadcast_to(s**2, q.shape).copy(),
        var_post=np.full(q.shape, float(post_var)),
        cost_ante=cost_ante,
        cost_post=cost_post,
    )


def _resolve_level(level: str | NoiseLevel) -> NoiseLevel:
    if isinstance(level, NoiseLevel):
        return level
    try:
        return NOISE_LEVELS[level]
    except (KeyError, TypeError):
        raise ValueError(f"unknown noise level {level!r}; valid levels: {sorted(NOISE_LEVELS)}") from None


def _check_ground_truth(quality: ArrayLike, cost: ArrayLike) -> tuple[FloatArray, FloatArray]:
    q = np.asarray(quality, dtype=np.float64)
    c = np.asarray(cost, dtype=np.float64)
    if q.ndim != 2:
        raise ValueError(f"quality must have shape (n_queries, n_models), got shape {q.shape}")
    if c.shape != q.shape:
        raise ValueError(f"cost has shape {c.shape}, expected {q.shape} like quality")
    if not np.all(np.isfinite(q)):
        raise ValueError("quality contains non-finite values")
    if not np.all(np.isfinite(c)):
        raise ValueError("cost contains non-finite values")
    if np.any((q < 0) | (q > 1)):
        raise ValueError(f"quality must lie in [0, 1], got range [{q.min()!r}, {q.max()!r}]")
    if np.any(c < 0):
        raise ValueError(f"cost must be non-negative, got minimum {float(c.min())!r}")
    return q, c


def _check_rows(fit_rows: ArrayLike, n: int) -> NDArray[np.intp]:
    rows = np.asarray(fit_rows)
    if rows.dtype == np.bool_:
        if rows.shape != (n,):
            raise ValueError(f"boolean fit_rows must have shape ({n},), got {rows.shape}")
        rows = np.flatnonzero(rows)
    elif rows.ndim != 1 or (rows.size and not np.issubdtype(rows.dtype, np.integer)):
        raise ValueError(f"fit_rows must be a 1-D array of row indices or a boolean mask, got {fit_rows!r}")
    if rows.size == 0:
        raise ValueError("fit_rows is empty: the calibration needs at least one row")
    if rows.min() < 0 or rows.max() >= n:
        raise ValueError(f"fit_rows must index rows 0..{n - 1}, got range [{rows.min()}, {rows.max()}]")
    return rows.astype(np.intp, copy=False)
