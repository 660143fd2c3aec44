"""The evidence behind the served policy, budget by budget: what was chosen on validation, and how it and
every other policy did on held-out queries against routing and against every single model.

The product's promise is checked here, not asserted: :data:`PROMISE` holds when, at every budget, the
chosen policy's paired CI against routing on the held-out queries does not lie entirely below 0.

Inputs are per-query outcomes (:class:`Outcomes`), so ``cascade calibrate`` (constant-lambda policies as
the controller serves them) and ``cascade eval`` (the paper's protocol) build the same report.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from evaluation.metrics import bootstrap_indices, bootstrap_means
from evaluation.policy_choice import choose_policy

__all__ = ["PROMISE", "Outcomes", "policy_report"]

FloatArray = NDArray[np.float64]

PROMISE = "on held-out prompts, never below routing (paired CI)"


@dataclass(frozen=True)
class Outcomes:
    """Per-query quality and cost of one policy at every budget of a grid.

    Attributes
    ----------
    quality, cost : ndarray of shape (n_budgets, n_queries)
        A row of NaN: the policy cannot keep that budget (its cheapest setting costs more).
    """

    quality: FloatArray
    cost: FloatArray

    def __post_init__(self) -> None:
        q, c = np.asarray(self.quality, dtype=np.float64), np.asarray(self.cost, dtype=np.float64)
        if q.ndim != 2 or q.shape != c.shape:
            raise ValueError(f"quality and cost must share a (n_budgets, n_queries) shape, got {q.shape} and {c.shape}")
        object.__setattr__(self, "quality", q)
        object.__setattr__(self, "cost", c)

    def reachable(self, b: int) -> bool:
        return bool(np.all(np.isfinite(self.quality[b])))


def policy_report(
    budgets: ArrayLike,
    validation: Mapping[str, Outcomes],
    test: Mapping[str, Outcomes],
    model_quality: ArrayLike,
    model_cost: ArrayLike,
    models: Sequence[str],
    candidates: Sequence[str],
    *,
    level: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Per budget, the policy chosen on validation (:func:`~evaluation.policy_choice.choose_policy`) and
    the held-out evidence; then the promise checked over every budget.

    Parameters
    ----------
    budgets : array-like of shape (n_budgets,)
        Average cost per query each policy was fitted to.
    validation, test : mapping of policy name to Outcomes
        The same policies on the validation queries (the choice) and the held-out test queries (the
        evidence), fitted once on validation.
    model_quality, model_cost : array-like of shape (n_test_queries, n_models)
        Every single model on the test queries.
    models : sequence of str
        Their names.
    candidates : sequence of str
        The policies a budget may serve, simplest first (``policy_choice.candidate_policies``); the
        other policies are reported, never chosen.
    level, n_resamples, seed
        Of every CI: the rule's on validation, and the paired ones on test, where all series share the
        same resamples.

    Returns
    -------
    dict
        JSON-ready: ``budgets`` (one entry per budget: ``chosen``, the validation ``comparisons``, and per
        policy its validation and test quality and cost with paired test CIs ``vs_routing`` and
        ``vs_models``), ``models`` (test means), and ``never_below_routing`` (``claim``, ``pass``,
        ``failed_budgets``).
    """
    grid = np.asarray(budgets, dtype=np.float64).reshape(-1)
    mq, mc = np.asarray(model_quality, dtype=np.float64), np.asarray(model_cost, dtype=np.float64)
    if mq.ndim != 2 or mq.shape != mc.shape or mq.shape[1] != len(models):
        raise ValueError(f"model_quality and model_cost must be (n_test_queries, {len(models)}), "
                         f"got {mq.shape} and {mc.shape}")
    policies = list(validation)
    if set(test) != set(policies):
        raise ValueError(f"validation has policies {sorted(validation)} but test has {sorted(test)}")
    for name in policies:
        for side, outcomes, n in (("validation", validation[name], None), ("test", test[name], mq.shape[0])):
            if outcomes.quality.shape[0] != grid.size or (n is not None and outcomes.quality.shape[1] != n):
                raise ValueError(f"{side} outcomes of {name!r} have shape {outcomes.quality.shape}; expected "
                                 f"({grid.size}, {'n_validation' if n is None else n})")
    means = _test_means(test, mq, policies, grid.size, n_resamples, seed)
    tail = 50.0 * (1.0 - level)
    entries = []
    for b, budget in enumerate(grid):
        entries.append(_budget_entry(b, float(budget), validation, test, mq, models, candidates, means,
                                     tail, level=level, n_resamples=n_resamples, seed=seed))
    failed = [e["budget"] for e in entries if e["below_routing"]]
    return {
        "rule": (f"the simplest candidate unless a richer one's paired {100 * level:g}% bootstrap CI of its "
                 "mean quality gain on validation lies above 0"),
        "level": level,
        "n_resamples": n_resamples,
        "seed": seed,
        "candidates": list(candidates),
        "policies": policies,
        "models": {m: {"quality": float(mq[:, j].mean()), "cost": float(mc[:, j].mean())}
                   for j, m in enumerate(models)},
        "budgets": entries,
        "never_below_routing": {"claim": PROMISE, "pass": not failed, "failed_budgets": failed,
                                "n_budgets": sum(e["chosen_vs_routing"] is not None for e in entries)},
    }


@dataclass(frozen=True)
class _Means:
    """Bootstrap means of every (policy, budget) series and every single model, on shared resamples."""

    policy: dict[str, FloatArray]  # name -> (n_resamples, n_budgets)
    model: FloatArray  # (n_resamples, n_models)


def _test_means(
    test: Mapping[str, Outcomes], mq: FloatArray, policies: list[str], n_budgets: int, n_resamples: int, seed: int
) -> _Means:
    # One product for all series: thousands of paired CIs (policies x budgets x models) on the same
    # resamples, which scipy.stats.bootstrap would redraw one comparison at a time.
    series = np.concatenate([test[p].quality.T for p in policies] + [mq], axis=1)
    idx = bootstrap_indices(mq.shape[0], n_resamples=n_resamples, seed=seed)
    means = bootstrap_means(series, idx)
    per_policy = {p: means[:, i * n_budgets:(i + 1) * n_budgets] for i, p in enumerate(policies)}
    return _Means(policy=per_policy, model=means[:, len(policies) * n_budgets:])


def _ci(observed: float, samples: FloatArray, tail: float) -> dict[str, float]:
    low, high = np.percentile(samples, [tail, 100.0 - tail])
    return {"mean": observed, "low": float(low), "high": float(high)}


def _budget_entry(
    b: int, budget: float, validation: Mapping[str, Outcomes], test: Mapping[str, Outcomes], mq: FloatArray,
    models: Sequence[str], candidates: Sequence[str], means: _Means, tail: float, *, level: float,
    n_resamples: int, seed: int,
) -> dict[str, Any]:
    """One budget: the choice among the candidates that keep it, and every policy's held-out evidence."""
    reachable = [p for p in validation if validation[p].reachable(b) and test[p].reachable(b)]
    order = [p for p in candidates if p in reachable]
    choice = (choose_policy({p: validation[p].quality[b] for p in order}, order, level=level,
                            n_resamples=n_resamples, seed=seed) if order else None)
    routing_ok = "routing" in reachable
    per_policy: dict[str, Any] = {}
    for p in validation:
        if p not in reachable:
            per_policy[p] = None
            continue
        q_test = test[p].quality[b]
        entry: dict[str, Any] = {
            "validation": {"quality": float(validation[p].quality[b].mean()),
                           "cost": float(validation[p].cost[b].mean())},
            "test": {"quality": float(q_test.mean()), "cost": float(test[p].cost[b].mean())},
            "vs_routing": None,
            "vs_models": {m: _ci(float((q_test - mq[:, j]).mean()), means.policy[p][:, b] - means.model[:, j], tail)
                          for j, m in enumerate(models)},
        }
        if routing_ok and p != "routing":
            q_routing = test["routing"].quality[b]
            entry["vs_routing"] = _ci(float((q_test - q_routing).mean()),
                                      means.policy[p][:, b] - means.policy["routing"][:, b], tail)
        per_policy[p] = entry
    chosen = choice.chosen if choice is not None else None
    vs_routing = None
    if chosen is not None and routing_ok:
        vs_routing = (per_policy[chosen]["vs_routing"] if chosen != "routing"
                      else {"mean": 0.0, "low": 0.0, "high": 0.0})
    return {
        "budget": budget,
        "chosen": chosen,
        "comparisons": [c.as_dict() for c in choice.comparisons] if choice is not None else [],
        "policies": per_policy,
        "chosen_vs_routing": vs_routing,
        # The promise fails where the whole interval is below 0; an interval that straddles 0 is a tie.
        "below_routing": vs_routing is not None and vs_routing["high"] < 0.0,
    }
