"""Vectorised simulation of a policy over a table of queries (algorithm-spec §1.4, §5.4).

All active queries advance one step at a time: the estimate source is asked once per step for the
whole batch, each policy decides for the batch (routing and threshold cascades fully vectorised,
the supermodel searches per query with a shared memo of expected maxima), and the chosen models'
ground-truth costs are charged. The returned answer's ground-truth quality is the score.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from routing._estimates import EstimateSource
from routing._state_quality import StateMemos

if TYPE_CHECKING:
    from routing._base import Policy

__all__ = ["Rollout", "rollout"]

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.intp]


@dataclass(frozen=True, slots=True)
class Rollout:
    """Per-query outcome of running a policy over a table.

    Attributes
    ----------
    quality, cost : ndarray of shape (n_queries,)
        Ground-truth quality of the returned answer; ground-truth cost summed over the models run.
    answer_from : ndarray of shape (n_queries,)
        Model whose answer was returned.
    n_models_run : ndarray of shape (n_queries,)
    """

    quality: FloatArray
    cost: FloatArray
    answer_from: IntArray
    n_models_run: IntArray

    @property
    def mean_quality(self) -> float:
        return float(self.quality.mean())

    @property
    def mean_cost(self) -> float:
        return float(self.cost.mean())


def validate_ground_truth(source: EstimateSource, quality: FloatArray, cost: FloatArray) -> None:
    """Ground truth must match the source's shape and be finite, costs non-negative."""
    expected = (source.n_queries, source.n_models)
    for name, arr in (("quality", quality), ("cost", cost)):
        if arr.shape != expected:
            raise ValueError(f"{name} has shape {arr.shape}, expected {expected} (n_queries, n_models)")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} contains non-finite values")
    if np.any(cost < 0):
        raise ValueError("cost must be non-negative")
    if expected[0] == 0:
        raise ValueError("the query set is empty")


def rollout(
    policy: Policy,
    source: EstimateSource,
    quality: FloatArray,
    cost: FloatArray,
    *,
    lambdas: FloatArray | None = None,
    expensive_tie: bool | float | None = None,
    rng: np.random.Generator | None = None,
    memos: StateMemos | None = None,
) -> Rollout:
    """Run ``policy`` on every query of ``source``; score with ground-truth ``quality`` and ``cost``.

    Parameters
    ----------
    policy : Policy
    source : EstimateSource
        Estimates for the same queries, row for row.
    quality, cost : ndarray of shape (n_queries, n_models)
        Ground truth.
    lambdas : ndarray, optional
        Multipliers to use instead of the fitted ones (the fitting loop passes its candidates).
    expensive_tie : bool or float, optional
        Tie-break: False cheapest, True most expensive, a float the probability of the expensive one
        (needs ``rng``). Default: the fitted gamma.
    memos : dict, optional
        Per-state memos of expected maxima shared across rollouts on the same source (valid because
        sources are deterministic in (row, answered)); the fitting loop passes one per fit.
    """
    validate_ground_truth(source, quality, cost)
    lam = policy._resolve_lambdas(lambdas)
    tie: bool | float = policy._resolve_gamma() if expensive_tie is None else expensive_tie
    n, n_models = quality.shape
    answered = np.zeros((n, n_models), dtype=bool)
    spent = np.zeros(n)
    answer = np.full(n, -1, dtype=np.intp)
    active = np.arange(n, dtype=np.intp)
    for step in range(n_models + 1):
        if active.shape[0] == 0:
            break
        est = source.estimate(active, answered[active])
        run_next, answer_from = policy._decide_batch(
            est, answered[active], active, step, lam, tie, rng, memos
        )
        stopping = run_next < 0
        answer[active[stopping]] = answer_from[stopping]
        going = active[~stopping]
        chosen = run_next[~stopping]
        answered[going, chosen] = True
        spent[going] += cost[going, chosen]
        active = going
    # A policy never stops before its first model (spec §8 item 1 handles the empty case upstream).
    assert np.all(answer >= 0), "policy stopped without an answer"
    return Rollout(
        quality=quality[np.arange(n), answer],
        cost=spent,
        answer_from=answer,
        n_models_run=answered.sum(axis=1).astype(np.intp),
    )
