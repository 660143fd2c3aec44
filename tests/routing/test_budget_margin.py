"""The budget margin: a lambda fit keeps the validation mean cost plus its sampling error within the budget."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from routing import (
    CascadeRouter,
    OptimalCascade,
    Router,
    ThresholdCascade,
    cost_margin,
    cost_standard_error,
    rollout,
)
from routing._lambda_search import BUDGET_RTOL

POLICIES = [Router, ThresholdCascade, OptimalCascade, CascadeRouter]


def test_standard_error_is_the_sample_std_over_root_n() -> None:
    cost = np.array([1.0, 2.0, 3.0, 6.0])
    assert cost_standard_error(cost) == pytest.approx(np.std(cost, ddof=1) / 2.0)
    assert cost_margin(cost, 2.0) == pytest.approx(2.0 * cost_standard_error(cost))
    assert cost_margin(cost, 0.0) == 0.0


def test_one_query_or_equal_costs_give_no_margin() -> None:
    assert cost_standard_error(np.array([5.0])) == 0.0
    assert cost_margin(np.full(30, 2.5), 1.645) == 0.0


def test_the_margin_shrinks_as_one_over_root_n() -> None:
    """The same cost distribution, four times the rows: half the margin; it vanishes as validation grows."""
    rng = np.random.default_rng(0)
    draws = rng.exponential(1.0, 400_000)
    margins = [cost_margin(draws[:n], 1.645) for n in (25, 100, 400, 1600, 400_000)]
    assert all(a > b for a, b in zip(margins, margins[1:], strict=False))
    for n, m in zip((100, 400, 1600), margins[1:4], strict=True):
        assert m == pytest.approx(1.645 / math.sqrt(n), rel=0.35)  # std of Exp(1) is 1
    assert margins[-1] < 0.01


@pytest.mark.parametrize("policy_class", POLICIES)
def test_a_fitted_budget_keeps_validation_cost_plus_margin_within_it(policy_class: type, make_table: Any) -> None:
    table, quality, cost = make_table(np.random.default_rng(3), 40, 4)
    budget = float(np.mean(cost.mean(axis=0)[1:3]))
    params: dict[str, Any] = {"max_expected_cost": budget, "budget_margin_se": 1.645}
    if policy_class is not Router:
        params["n_search"] = 6
    policy = policy_class(**params).fit(table, quality, cost)
    assert policy.fit_cost_margin_ > 0
    assert policy.fit_cost_ + policy.fit_cost_margin_ <= budget * (1 + BUDGET_RTOL)
    # The recorded margin is the one of the policy's own validation costs at the fitted lambdas.
    at_fit = rollout(policy, table, quality, cost, expensive_tie=False)
    assert policy.fit_cost_ == pytest.approx(at_fit.mean_cost)
    assert policy.fit_cost_margin_ == pytest.approx(cost_margin(at_fit.cost, 1.645))


@pytest.mark.parametrize("policy_class", [Router, CascadeRouter])
def test_a_margin_spends_less_on_validation_and_zero_is_the_papers_fit(policy_class: type, make_table: Any) -> None:
    table, quality, cost = make_table(np.random.default_rng(5), 40, 4)
    budget = float(np.mean(cost.mean(axis=0)[1:3]))
    plain = policy_class(max_expected_cost=budget).fit(table, quality, cost)
    zero = policy_class(max_expected_cost=budget, budget_margin_se=0.0).fit(table, quality, cost)
    kept = policy_class(max_expected_cost=budget, budget_margin_se=2.0).fit(table, quality, cost)
    np.testing.assert_array_equal(plain.lambdas_, zero.lambdas_)
    assert plain.fit_cost_margin_ == 0.0
    assert kept.fit_cost_ < plain.fit_cost_
    assert np.all(kept.lambdas_ >= plain.lambdas_.min())


def test_the_margin_vanishes_from_the_fit_as_validation_grows(make_table: Any) -> None:
    """Relative to the budget, the margin a fit keeps falls with the validation rows."""
    shares = []
    for n in (25, 400, 6400):
        table, quality, cost = make_table(np.random.default_rng(11), n, 3)
        budget = float(np.mean(cost.mean(axis=0)[1:3]))
        router = Router(max_expected_cost=budget, budget_margin_se=1.645).fit(table, quality, cost)
        shares.append(router.fit_cost_margin_ / budget)
    assert shares[0] > shares[1] > shares[2]
    assert shares[2] < 0.02


@pytest.mark.parametrize("bad", [-0.1, float("inf"), float("nan"), "1", True])
def test_a_bad_margin_is_refused_at_fit(bad: object, make_table: Any) -> None:
    table, quality, cost = make_table(np.random.default_rng(0), 10, 2)
    with pytest.raises(ValueError, match="budget_margin_se"):
        Router(max_expected_cost=float(cost.mean()), budget_margin_se=bad).fit(table, quality, cost)  # type: ignore[arg-type]
