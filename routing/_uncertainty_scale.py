"""How much of an estimator's uncertainty to believe: one factor on its variances, fitted on validation rows.

A supermodel's quality is E[max] of Gaussian estimates (algorithm-spec §3.1), and the covariance an
estimator reports is meant to say how far its estimates may still move. Taken as the spread of a
Gaussian it overstates what running more models yields: E[max] of the *estimates* is not the quality
of the answer ``select_answer`` picks (the winner of several noisy post-hoc estimates is optimistically
estimated), 0/1 outcomes are not Gaussian, and a multiple-choice letter says less than its fitted
variance suggests. An overstated E[max] makes escalating look worth more than it is, and cascade routing
then spends budget on second opinions that a router would spend on a better first model.

So every estimate source gets one factor on its q_var / q_cov, chosen from a grid by what answer
selection actually gets on validation rows (the rows the multipliers are fitted on, never test rows).
The factor is responsible for one thing only, the *option value* of running another model: E[max] of a
pair minus the better of the two current means (0 with no uncertainty). So for every pair of models
{s, t} and the states before running them (nothing answered, s answered, t answered), the predicted
option value under each factor (Clark's exact E[max]) is compared with the realised one: the quality of
the answer ``select_answer`` returns once both ran (the higher post-hoc estimate) minus the quality of
the model that looked better before (the better current mean). Scoring the option value rather than
E[max] itself leaves the means' own calibration out (it is the same for every factor) and with it most of
the noise of 0/1 outcomes: the realised option value is 0 whenever the two answers are equally right.
The factor with the least mean squared error wins, except that a smaller factor whose excess error over
the best is within one standard error (paired over rows, the one-standard-error rule) is preferred: with
few rows the data cannot tell the factors apart, and 0 (a supermodel is worth its best mean; cascade
routing then contains routing) claims least.

``fit_uncertainty_scale`` does the fit; ``ScaledUncertainty`` applies a factor to any source.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from routing._estimates import Estimates, EstimateSource
from routing._expected_max import clark_expected_max

__all__ = ["DEFAULT_SCALE_GRID", "ScaledUncertainty", "UncertaintyScaleFit", "fit_uncertainty_scale"]

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]
IntArray = NDArray[np.intp]

# 0: no uncertainty; 1: the variance as the estimator states it (the textbook Gaussian reading).
# Log-spaced in between because the useful factors seen so far span two decades (docs/uncertainty_scale.md).
DEFAULT_SCALE_GRID: tuple[float, ...] = (0.0, 0.01, 0.03, 0.1, 0.3, 1.0)


@dataclass(frozen=True, slots=True)
class UncertaintyScaleFit:
    """The fitted factor and the evidence for it.

    Attributes
    ----------
    scale : float
        The chosen factor (an entry of ``grid``).
    grid : tuple of float
        Candidate factors, ascending.
    loss : tuple of float
        Mean squared error of each candidate's predicted option value against the realised one (per row,
        averaged over pairs and states, then over rows).
    excess_se : tuple of float
        Standard error over rows of each candidate's loss minus the lowest loss (0 for the best).
    n_rows : int
        Validation rows the fit read.
    n_pairs : int
        Model pairs per row.
    """

    scale: float
    grid: tuple[float, ...]
    loss: tuple[float, ...]
    excess_se: tuple[float, ...]
    n_rows: int
    n_pairs: int

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready record (what the protocol stores next to its results)."""
        return {"scale": self.scale, "grid": list(self.grid), "loss": list(self.loss),
                "excess_se": list(self.excess_se), "n_rows": self.n_rows, "n_pairs": self.n_pairs,
                "criterion": "pairwise option value (E[max] - best mean) vs realised (selected - favourite quality), "
                              "MSE, one-SE rule toward the smaller factor"}


def fit_uncertainty_scale(
    source: EstimateSource, quality: Any, *, grid: Sequence[float] = DEFAULT_SCALE_GRID
) -> UncertaintyScaleFit:
    """Fit the factor on ``source``'s uncertainty from validation rows (module docstring).

    Parameters
    ----------
    source : EstimateSource
        Estimates over the validation rows only, with the uncertainty as the estimator states it
        (factor 1). A source without uncertainty gives equal losses everywhere, hence factor 0.
    quality : array-like of shape (n_queries, n_models)
        Ground-truth quality of those rows, models in the source's column order.
    grid : sequence of float
        Candidate factors, finite and non-negative; sorted here. Include 0.

    Returns
    -------
    UncertaintyScaleFit

    Notes
    -----
    Cost: 3 * K * (K - 1) / 2 + 1 vectorised ``estimate`` calls over all rows, and K(K-1)/2 * 3 * len(grid)
    Clark evaluations per row.
    """
    q = np.asarray(quality, dtype=np.float64)
    n, k = source.n_queries, source.n_models
    if q.shape != (n, k):
        raise ValueError(f"quality has shape {q.shape}, expected {(n, k)} (the source's n_queries, n_models)")
    if n < 2:
        raise ValueError(f"need at least 2 validation rows to fit an uncertainty scale, got {n}")
    if k < 2:
        raise ValueError(f"need at least 2 models to fit an uncertainty scale, got {k}")
    if not np.all(np.isfinite(q)):
        raise ValueError("quality contains non-finite values")
    scales = _check_grid(grid)
    losses = _pair_losses(source, q, scales)
    mean, _, se = _excess_stats(losses)
    return UncertaintyScaleFit(
        scale=float(scales[_one_se_choice(losses)]), grid=tuple(float(s) for s in scales),
        loss=tuple(float(v) for v in mean), excess_se=tuple(float(v) for v in se), n_rows=n,
        n_pairs=k * (k - 1) // 2,
    )


def _one_se_choice(losses: Any) -> int:
    """Index of the smallest candidate whose mean loss is within one standard error of the lowest.

    Parameters
    ----------
    losses : array-like of shape (n_rows, n_candidates)
        Per-row losses; candidates ordered from the most conservative (index 0) up. Rows are the
        independent units, so the standard error is that of the per-row excess over the best candidate.

    Returns
    -------
    int
    """
    arr = np.asarray(losses, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"losses must have shape (n_rows, n_candidates), got {arr.shape}")
    _, excess, se = _excess_stats(arr)
    # Exact ties (e.g. a source without uncertainty) have excess 0 and se 0: the smallest wins.
    return int(np.flatnonzero(excess <= se + 1e-15)[0])


def _excess_stats(losses: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Mean loss per candidate, its excess over the lowest, and that excess's standard error over rows."""
    mean = losses.mean(axis=0)
    diff = losses - losses[:, [int(np.argmin(mean))]]
    n = losses.shape[0]
    se = diff.std(axis=0, ddof=1) / math.sqrt(n) if n > 1 else np.zeros(losses.shape[1])
    return mean, diff.mean(axis=0), se


class ScaledUncertainty:
    """An estimate source whose q_var / q_cov are ``scale`` times those of ``source``.

    Means and costs pass through. ``scale=0`` removes the uncertainty (q_var = q_cov = None, the exact
    max-of-means path); ``scale=1`` returns the source's estimates unchanged. Deterministic whenever
    ``source`` is, so the policies' per-state memos stay valid. ``subset`` works when ``source`` has one.

    Parameters
    ----------
    source : EstimateSource
    scale : float
        Finite, non-negative.
    """

    source: EstimateSource
    scale: float

    def __init__(self, source: EstimateSource, scale: float) -> None:
        if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not 0.0 <= float(scale) < math.inf:
            raise ValueError(f"scale must be a finite number >= 0, got {scale!r}")
        self.source = source
        self.scale = float(scale)

    @property
    def n_queries(self) -> int:
        return int(self.source.n_queries)

    @property
    def n_models(self) -> int:
        return int(self.source.n_models)

    def subset(self, rows: IntArray) -> ScaledUncertainty:
        """The same factor on ``source.subset(rows)``."""
        subset = getattr(self.source, "subset", None)
        if subset is None:
            raise TypeError(f"{type(self.source).__name__} has no subset(rows)")
        inner: EstimateSource = subset(rows)
        return ScaledUncertainty(inner, self.scale)

    def estimate(self, rows: IntArray, answered: BoolArray) -> Estimates:
        est = self.source.estimate(rows, answered)
        if self.scale == 1.0:
            return est
        # Built without re-validation: the source's estimates were valid and the factor is finite, >= 0.
        out = object.__new__(Estimates)
        object.__setattr__(out, "q_mean", est.q_mean)
        object.__setattr__(out, "cost", est.cost)
        none = self.scale == 0.0
        object.__setattr__(out, "q_var", None if none or est.q_var is None else self.scale * est.q_var)
        object.__setattr__(out, "q_cov", None if none or est.q_cov is None else self.scale * est.q_cov)
        return out


def _check_grid(grid: Sequence[float]) -> FloatArray:
    scales = np.asarray(list(grid), dtype=np.float64)
    if scales.ndim != 1 or scales.shape[0] == 0:
        raise ValueError(f"grid must be a non-empty sequence of factors, got {grid!r}")
    if not np.all(np.isfinite(scales)) or np.any(scales < 0):
        raise ValueError(f"grid factors must be finite and >= 0, got {list(grid)!r}")
    if np.unique(scales).shape[0] != scales.shape[0]:
        raise ValueError(f"grid factors must be distinct, got {list(grid)!r}")
    return np.sort(scales)


def _pair_losses(source: EstimateSource, quality: FloatArray, scales: FloatArray) -> FloatArray:
    """Per-row squared error of each factor's option value, averaged over pairs and pre-run states: shape
    (n, len(scales))."""
    n, k = quality.shape
    rows = np.arange(n, dtype=np.intp)
    states: dict[tuple[int, ...], Estimates] = {}

    def at(members: tuple[int, ...]) -> Estimates:
        est = states.get(members)
        if est is None:
            answered = np.zeros((n, k), dtype=bool)
            answered[:, list(members)] = True
            est = states[members] = source.estimate(rows, answered)
        return est

    total = np.zeros((n, scales.shape[0]))
    count = 0
    for s, t in itertools.combinations(range(k), 2):
        after = at((s, t)).q_mean
        # select_answer: the higher post-hoc estimate, the first (cheaper) model on a tie.
        selected = np.where(after[:, s] >= after[:, t], quality[:, s], quality[:, t])
        for members in ((), (s,), (t,)):
            est = at(members)
            mu_s, mu_t = est.q_mean[:, s], est.q_mean[:, t]
            var_s, var_t, cov_st = _pair_uncertainty(est, s, t, n)
            e_max = clark_expected_max(mu_s[:, None], mu_t[:, None], scales * var_s[:, None],
                                       scales * var_t[:, None], scales * cov_st[:, None])
            predicted = e_max - np.maximum(mu_s, mu_t)[:, None]
            realised = selected - np.where(mu_s >= mu_t, quality[:, s], quality[:, t])
            total += (predicted - realised[:, None]) ** 2
            count += 1
    out: FloatArray = total / count
    return out


def _pair_uncertainty(est: Estimates, s: int, t: int, n: int) -> tuple[FloatArray, FloatArray, FloatArray]:
    if est.q_cov is not None:
        return est.q_cov[:, s, s], est.q_cov[:, t, t], est.q_cov[:, s, t]
    if est.q_var is not None:
        return est.q_var[:, s], est.q_var[:, t], np.zeros(n)
    zero = np.zeros(n)
    return zero, zero, zero
