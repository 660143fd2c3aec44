"""The budget margin in `cascade calibrate`: curves carry the cost's standard error, budgets keep a margin."""

from __future__ import annotations

import numpy as np
import pytest

from calibration.fit import lambda_curves
from calibration.served_policy import report_budgets
from estimators.artifacts import Artifacts, lambda_for_budget, point_cost_bound
from routing import BudgetUnreachableError, TableEstimates, constant_lambda_policy, cost_standard_error, rollout

CURVE = [
    {"lambda": 0.0, "cost": 2.0, "cost_se": 0.5, "quality": 0.9},
    {"lambda": 1.0, "cost": 1.0, "cost_se": 0.3, "quality": 0.8},
    {"lambda": 3.0, "cost": 0.5, "cost_se": 0.05, "quality": 0.6},
]


def _source(n: int = 60, seed: int = 0) -> tuple[TableEstimates, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    accuracy = np.array([0.4, 0.6, 0.85])
    quality = (rng.random((n, 3)) < accuracy).astype(float)
    cost = np.tile([0.1, 0.4, 1.6], (n, 1)) * rng.uniform(0.8, 1.2, size=(n, 3))
    q_post = np.clip(0.8 * quality + 0.1 + rng.normal(0, 0.05, size=(n, 3)), 0.01, 0.99)
    source = TableEstimates(q_ante=np.tile(accuracy, (n, 1)) + rng.normal(0, 0.1, (n, 3)), q_post=q_post,
                            var_ante=np.full((n, 3), 0.04), var_post=np.full((n, 3), 1e-4), cost_ante=cost,
                            cost_post=cost)
    return source, quality, cost


def test_curve_points_carry_the_standard_error_of_their_mean_cost() -> None:
    source, quality, cost = _source()
    curves = lambda_curves(source, quality, cost, max_depth=3, policies=["routing"])
    for point in curves["routing"]:
        result = rollout(constant_lambda_policy("routing", point["lambda"], 3), source, quality, cost)
        assert point["cost_se"] == pytest.approx(cost_standard_error(result.cost))


@pytest.mark.parametrize(("margin_se", "expected"), [(0.0, 1.0), (1.0, 1.0), (2.0, 3.0)])
def test_a_budget_keeps_the_points_cost_plus_its_margin_within_it(margin_se: float, expected: float) -> None:
    """Budget 1.5: lambda 1 costs 1.0 + 0.3 per standard error, within it at 1 SE and not at 2."""
    point = lambda_for_budget(CURVE, 1.5, margin_se=margin_se)
    assert point["lambda"] == expected
    assert point_cost_bound(point, margin_se) <= 1.5


def test_curves_without_a_standard_error_count_as_exact() -> None:
    """Artifacts written before cost_se existed serve as they did."""
    old = [{k: v for k, v in p.items() if k != "cost_se"} for p in CURVE]
    assert lambda_for_budget(old, 1.5, margin_se=2.0)["lambda"] == 1.0


def test_an_unreachable_budget_names_the_cheapest_bound() -> None:
    with pytest.raises(BudgetUnreachableError, match="margin of 2 standard errors") as err:
        lambda_for_budget(CURVE, 0.55, margin_se=2.0)
    assert err.value.cheapest_cost == pytest.approx(0.6)  # 0.5 + 2 x 0.05: a budget that is reachable


def test_the_controller_serves_a_budget_with_the_calibrations_margin() -> None:
    art = Artifacts(summary={"lambda_curves": {"routing": CURVE}, "budget_margin_se": 2.0}, quality=None, cost=None)
    assert art.lambda_for("routing", 1.5) == 3.0
    old = Artifacts(summary={"lambda_curves": {"routing": CURVE}}, quality=None, cost=None)
    assert old.lambda_for("routing", 1.5) == 1.0


def test_report_budgets_start_where_every_candidate_keeps_its_margin() -> None:
    curves = {"routing": CURVE, "cascade_routing": CURVE}
    low = report_budgets(curves, ["routing", "cascade_routing"], None, margin_se=2.0)[0]
    assert low == pytest.approx(0.6)
    for c in curves:
        lambda_for_budget(curves[c], low, margin_se=2.0)  # reachable
