"""Which policy serves a budget: the simplest one, unless a richer one wins on validation by more than its noise.

The policies a fleet may serve form a chain, simplest first: routing (one model, chosen from the query) <
the optimal cascade (a fixed order and a stopping rule) < cascade routing (the paper's method). Each is
fitted to the budget on the same validation queries, so their per-query qualities are paired. Walking
the chain from the simplest, the current choice gives way to a richer policy only when the paired
bootstrap CI of the richer one's mean gain over it lies above 0 (:func:`choose_policy`). A richer policy
costs more to run and to trust (more estimates, more moving parts), so a gain the same queries could have
shown by chance does not buy it.

The rule reads nothing but per-query arrays, so it applies to any data; ``tests/evaluation/
test_policy_choice.py`` pins ties, clear and noise-sized wins, and determinism.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.stats
from numpy.typing import ArrayLike, NDArray

__all__ = ["CANDIDATES", "Comparison", "Gain", "PolicyChoice", "candidate_policies", "choose_policy", "paired_gain"]

FloatArray = NDArray[np.float64]

# The policies a budget may serve, simplest first, for each policy the fleet file names (the richest
# it allows). The threshold cascade is the paper's baseline: on the same order the optimal cascade's
# stopping rule is the better one, so the threshold cascade is a candidate only where the fleet names it.
CANDIDATES: dict[str, tuple[str, ...]] = {
    "routing": ("routing",),
    "threshold_cascade": ("routing", "threshold_cascade"),
    "optimal_cascade": ("routing", "optimal_cascade"),
    "cascade_routing": ("routing", "optimal_cascade", "cascade_routing"),
}


def candidate_policies(richest: str) -> tuple[str, ...]:
    """The policies a fleet whose file names ``richest`` (a core policy name) may serve, simplest first."""
    try:
        return CANDIDATES[richest]
    except KeyError:
        raise ValueError(f"unknown policy {richest!r}; choose from {list(CANDIDATES)}") from None


@dataclass(frozen=True, slots=True)
class Gain:
    """A paired mean difference of per-query quality and its bootstrap interval."""

    mean: float  # observed: the mean over the queries of (a - b)
    low: float
    high: float

    def as_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "low": self.low, "high": self.high}


@dataclass(frozen=True, slots=True)
class Comparison:
    """One step of the walk: a richer policy against the choice so far."""

    richer: str
    simpler: str
    gain: Gain  # of richer - simpler
    wins: bool  # gain.low > 0: the richer policy becomes the choice

    def as_dict(self) -> dict[str, Any]:
        return {"richer": self.richer, "simpler": self.simpler, "gain": self.gain.as_dict(), "wins": self.wins}


@dataclass(frozen=True, slots=True)
class PolicyChoice:
    """The chosen policy and the comparisons that led to it, in the order they were made."""

    chosen: str
    comparisons: tuple[Comparison, ...]
    level: float

    def as_dict(self) -> dict[str, Any]:
        return {"chosen": self.chosen, "level": self.level, "comparisons": [c.as_dict() for c in self.comparisons]}


def paired_gain(
    quality_a: ArrayLike, quality_b: ArrayLike, *, level: float = 0.95, n_resamples: int = 2000, seed: int = 0
) -> Gain:
    """Mean of ``a - b`` over the same queries, with its percentile bootstrap CI at ``level``.

    Resampling the per-query differences resamples the queries with both policies' answers together:
    the paired bootstrap. Percentile, as the paper's Tables 4 and 6: on 0/1 qualities the differences are
    few-valued and skewed, where BCa's jackknife correction calls a handful of one-sided wins significant
    that a sign test would not.

    Parameters
    ----------
    quality_a, quality_b : array-like of shape (n_queries,)
        Per-query quality of two policies on the same queries.
    level : float, default=0.95
        Two-sided coverage; the lower bound is the ``(1 - level) / 2`` quantile.
    n_resamples : int, default=2000
    seed : int, default=0
        Every call with the same seed and number of queries draws the same resamples, so the comparisons
        of one choice are paired with each other too.
    """
    a, b = _per_query(quality_a, "quality_a"), _per_query(quality_b, "quality_b")
    if a.shape != b.shape:
        raise ValueError(f"quality_a has shape {a.shape} but quality_b has shape {b.shape}: pair the same queries")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    diff = a - b
    mean = float(diff.mean())
    if np.all(diff == diff[0]):
        # Every resample has this mean; the bootstrap would only warn that the data are degenerate.
        return Gain(mean=mean, low=mean, high=mean)
    # random_state, not rng: scipy names it rng from 1.15 on, and pyproject allows 1.11.
    result = scipy.stats.bootstrap((diff,), np.mean, n_resamples=n_resamples, confidence_level=level,
                                   method="percentile", random_state=np.random.default_rng(seed))
    ci = result.confidence_interval
    return Gain(mean=mean, low=float(ci.low), high=float(ci.high))


def choose_policy(
    quality: Mapping[str, ArrayLike],
    order: Sequence[str],
    *,
    level: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> PolicyChoice:
    """The simplest policy of ``order`` that no richer one beats by more than its noise.

    Start with ``order[0]``; for each richer policy in turn, compare it with the current choice
    (:func:`paired_gain`) and make it the choice when the CI's lower bound is above 0. A richer policy
    that only ties, or wins by less than the queries' noise, leaves the simpler one in place.

    Parameters
    ----------
    quality : mapping of str to array-like of shape (n_queries,)
        Per-query quality of every policy of ``order`` on the same (validation) queries, each fitted to
        the same budget.
    order : sequence of str
        Policy names, simplest first; at least one.
    level, n_resamples, seed
        Of every comparison's bootstrap (:func:`paired_gain`).

    Returns
    -------
    PolicyChoice
    """
    if len(order) == 0:
        raise ValueError("order must name at least one policy")
    missing = [name for name in order if name not in quality]
    if missing:
        raise ValueError(f"no per-query quality for {missing} (given: {sorted(quality)})")
    chosen = order[0]
    comparisons = []
    for richer in order[1:]:
        gain = paired_gain(quality[richer], quality[chosen], level=level, n_resamples=n_resamples, seed=seed)
        wins = gain.low > 0.0
        comparisons.append(Comparison(richer=richer, simpler=chosen, gain=gain, wins=wins))
        if wins:
            chosen = richer
    return PolicyChoice(chosen=chosen, comparisons=tuple(comparisons), level=level)


def _per_query(x: ArrayLike, name: str) -> FloatArray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array of per-query qualities, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains non-finite values")
    return arr
