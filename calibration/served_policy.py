"""Which policy the fleet serves at each budget, and the held-out evidence for it (``cascade calibrate``).

The policies are the controller's (one constant lambda each, from its validation curve), run on the
held-out rows' two halves: on the validation half, where the lambdas were fitted, the rule of
``evaluation.policy_choice`` picks the simplest candidate no richer one beats by more than its noise; on
the test half, which chose nothing, ``evaluation.policy_report`` measures every policy against routing
and every single model and checks the promise that the chosen one is never below routing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from estimators.artifacts import lambda_for_budget, point_cost_bound
from evaluation.policy_report import Outcomes, policy_report
from routing import BudgetUnreachableError, EstimateSource, StateMemos, constant_lambda_policy, rollout

__all__ = ["REPORT_BUDGETS", "HeldOutHalves", "report_budgets", "served_policy_report"]

FloatArray = NDArray[np.float64]
Curves = Mapping[str, Sequence[dict[str, float]]]

# Budgets of the report, evenly spaced over the range every candidate can keep (plus --budget): enough
# to show where the choice changes, few enough to read as one table.
REPORT_BUDGETS = 6


@dataclass(frozen=True)
class HeldOutHalves:
    """The held-out rows' validation and test halves, as the policies see them and as they scored."""

    val_source: EstimateSource
    val_quality: FloatArray  # (n_validation, n_models)
    val_cost: FloatArray
    test_source: EstimateSource
    test_quality: FloatArray  # (n_test, n_models)
    test_cost: FloatArray


def report_budgets(curves: Curves, candidates: Sequence[str], budget_gpu_s: float | None,
                   n: int = REPORT_BUDGETS, *, margin_se: float = 0.0) -> list[float]:
    """``n`` budgets from the dearest candidate's cheapest setting to the dearest setting of any candidate
    (where more budget buys nothing), and ``budget_gpu_s``. With a budget margin, a setting's cost is its
    bound (``estimators.artifacts.point_cost_bound``), so every candidate can keep the lowest budget."""
    low = max(min(point_cost_bound(p, margin_se) for p in curves[c]) for c in candidates)
    high = max(max(p["cost"] for p in curves[c]) for c in candidates)
    grid = [low] if high <= low else [float(x) for x in np.linspace(low, high, n)]
    if budget_gpu_s is not None:
        grid.append(float(budget_gpu_s))
    return sorted(set(grid))


def served_policy_report(
    curves: Curves, budgets: Sequence[float], halves: HeldOutHalves, *, max_depth: int, models: Sequence[str],
    candidates: Sequence[str], seed: int, margin_se: float = 0.0,
) -> dict[str, Any]:
    """Every curve's policy at each budget's lambda on both halves, then the choice and its evidence
    (``evaluation.policy_report.policy_report``; a policy that cannot keep a budget sits it out)."""
    val_memos: StateMemos = {}
    test_memos: StateMemos = {}
    validation, test = {}, {}
    for name, curve in curves.items():
        validation[name] = _outcomes(name, curve, budgets, max_depth, halves.val_source, halves.val_quality,
                                     halves.val_cost, val_memos, margin_se)
        test[name] = _outcomes(name, curve, budgets, max_depth, halves.test_source, halves.test_quality,
                               halves.test_cost, test_memos, margin_se)
    return policy_report(budgets, validation, test, halves.test_quality, halves.test_cost, models, candidates,
                         seed=seed)


def _outcomes(
    name: str, curve: Sequence[dict[str, float]], budgets: Sequence[float], max_depth: int, source: EstimateSource,
    quality: FloatArray, cost: FloatArray, memos: StateMemos, margin_se: float = 0.0,
) -> Outcomes:
    """Per-query quality and cost of ``name`` at the lambda its curve gives each budget (NaN: out of reach)."""
    q = np.full((len(budgets), quality.shape[0]), np.nan)
    c = np.full_like(q, np.nan)
    for b, budget in enumerate(budgets):
        try:
            lam = float(lambda_for_budget(curve, budget, margin_se=margin_se)["lambda"])
        except BudgetUnreachableError:
            continue
        # gamma is 0 for a constant-lambda policy, so the rollout draws nothing: the controller's decisions.
        result = rollout(constant_lambda_policy(name, lam, max_depth), source, quality, cost, memos=memos)
        q[b], c[b] = result.quality, result.cost
    return Outcomes(quality=q, cost=c)
