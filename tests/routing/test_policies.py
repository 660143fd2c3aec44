"""Decision policies (algorithm-spec §2-§4): the supermodel search against full enumeration and a
brute-force reference, the special cases (routing = depth-1 cascade routing, optimal cascade =
prefix-restricted cascade routing), relabelling, determinism, budgets and input validation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from conftest import one_query as _one

from routing import (
    BudgetUnreachableError,
    CascadeRouter,
    Decision,
    Estimates,
    NotFittedError,
    OptimalCascade,
    Router,
    TableEstimates,
    ThresholdCascade,
    rollout,
    search_supermodel,
)
from routing._lambda_search import BUDGET_RTOL
from routing._supermodel_search import search_supermodel_numpy

POLICIES = [Router, ThresholdCascade, OptimalCascade, CascadeRouter]
# Brute-force and search score E[max] by different quadrature grids (error ~1e-6): near-ties closer
# than this are not compared.
AMBIGUOUS = 1e-5
QMC_TOL = 3e-3  # error of the 1024-point QMC expected max (test_expected_max.py)




def _search_instances(
    make_state: Callable[..., dict[str, Any]], make_lambda: Callable[..., float], uncertainty: str, n: int, seed: int
) -> list[tuple[dict[str, Any], float, dict[str, Any]]]:
    """Random states with steps 0..3, depths 2..5, greedy on/off, any/forward order, lambda small to large."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        k = int(rng.integers(3, 7))
        step = int(rng.integers(0, min(3, k - 1) + 1))
        state = make_state(rng, k, step, uncertainty=uncertainty)
        lam = make_lambda(rng, state["cost"]) * float(rng.choice([0.01, 0.1, 1.0, 10.0]))
        options = {
            "var": state["var"],
            "cov": state["cov"],
            "max_depth": int(rng.integers(2, 6)),
            "order": "forward" if rng.integers(2) else "any",
            "greedy": bool(rng.integers(2)),
        }
        out.append((state, lam, options))
    return out


# ---------------------------------------------------------------------------------------------------
# the supermodel search


# The live search (compiled for independent or no uncertainty) and the numpy search it replaced.
SEARCHES = {"compiled": search_supermodel, "numpy": search_supermodel_numpy}


@pytest.mark.parametrize("search", list(SEARCHES))
@pytest.mark.parametrize("uncertainty", ["var", "cov", "none"])
def test_pruned_search_equals_full_enumeration(uncertainty: str, search: str, make_state, make_lambda, brute) -> None:
    """Lemma-1 pruning and branch and bound are exact: same Decision as prune=False, on random states.

    Correlated sets of three or more are scored by QMC, which is submodular only up to its error
    (spec §4.4), so there a difference is allowed when the best supermodel wins by less than that.
    """
    search_supermodel = SEARCHES[search]
    mismatches = []
    for state, lam, options in _search_instances(make_state, make_lambda, uncertainty, 400, seed=1):
        args = (state["mu"], state["cost"], state["answered"], lam)
        pruned = search_supermodel(*args, prune=True, **options)
        full = search_supermodel(*args, prune=False, **options)
        if pruned != full:
            if uncertainty == "cov" and brute(*args, **options).margin < QMC_TOL:
                continue
            mismatches.append((pruned, full, state, lam, options))
    assert not mismatches, f"{len(mismatches)} of 400 differ; first: {mismatches[0]}"


@pytest.mark.parametrize("search", list(SEARCHES))
@pytest.mark.parametrize("uncertainty", ["var", "cov", "none"])
@pytest.mark.parametrize("prune", [False, True])
def test_search_equals_brute_force(uncertainty: str, prune: bool, search: str, make_state, make_lambda, brute) -> None:
    """Against the naive enumeration of spec §4.1 (with pruning, correlated states must win by more
    than the QMC error: pruning is exact only for a submodular E[max])."""
    search_supermodel = SEARCHES[search]
    ambiguous = QMC_TOL if (prune and uncertainty == "cov") else AMBIGUOUS
    compared = 0
    for state, lam, options in _search_instances(make_state, make_lambda, uncertainty, 300, seed=2):
        expected = brute(state["mu"], state["cost"], state["answered"], lam, **options)
        if expected.margin < ambiguous:
            continue
        got = search_supermodel(state["mu"], state["cost"], state["answered"], lam, prune=prune, **options)
        assert got == expected.decision, (state, lam, options, expected)
        compared += 1
    assert compared >= (200 if ambiguous == QMC_TOL else 280)


BOUND_CASES = {
    # K=4, nothing run, S* = all four: {0,1,3} is cut by the bound, {0,1,2,3} must still be reached.
    "four-models": (
        [0.10818282992662742, 0.0767560368803013, 0.682970811202149, 0.22051257545686287],
        [0.36594034099454653, 0.4558208318175755, 0.6721367923172319, 0.7749652275819382],
        [0.04, 0.09, 0.04, 0.04],
        0.0011522732700404105,
        4,
        frozenset({0, 1, 2, 3}),
    ),
    # K=6, nothing run, depth 4, S* = {0, 2, 4, 5}; the pruned search returned S = {1, ...}.
    "six-models": (
        [0.91433495, 0.91935216, 0.91776832, 0.15433101, 0.89516265, 0.64540138],
        [0.05503431, 0.36569616, 0.42261448, 0.5512662, 0.66395822, 0.80326054],
        [0.0, 0.0, 0.0025, 0.09, 0.09, 0.09],
        0.0047434654418960845,
        4,
        frozenset({0, 2, 4, 5}),
    ),
}


@pytest.mark.parametrize("case", list(BOUND_CASES), ids=list(BOUND_CASES))
@pytest.mark.parametrize("search", list(SEARCHES))
def test_pruned_search_keeps_extensions_skipped_by_the_bound(case: str, search: str, brute) -> None:
    """Regression: a child P ∪ {x} cut by branch and bound must stay usable as an extension of its
    earlier siblings (P ∪ {y} -> P ∪ {y, x}); dropping it loses the optimum, so a wrong model runs."""
    search_supermodel = SEARCHES[search]
    mu, cost, var, lam, depth, best = (np.asarray(v) if isinstance(v, list) else v for v in BOUND_CASES[case])
    answered = np.zeros(mu.shape[0], dtype=bool)
    expected = brute(mu, cost, answered, lam, var=var, max_depth=depth)
    assert expected.best == best and expected.margin > 1e-4
    assert expected.decision == Decision(0, None)
    for order in ("any", "forward"):
        for prune in (False, True):
            got = search_supermodel(mu, cost, answered, lam, var=var, max_depth=depth, order=order, prune=prune)
            assert got == expected.decision, (order, prune)


def test_search_never_adds_when_every_model_ran() -> None:
    mu = np.array([0.2, 0.9, 0.5])
    answered = np.ones(3, dtype=bool)
    for prune in (False, True):
        got = search_supermodel(mu, np.ones(3), answered, 0.0, var=np.full(3, 0.09), prune=prune)
        assert got == Decision(None, 1)


def test_search_respects_max_depth_and_forward_order() -> None:
    """At depth 1 with one model run, always stop; forward order never adds a model below the last run."""
    rng = np.random.default_rng(3)
    for _ in range(50):
        mu = rng.uniform(0, 1, 5)
        var = np.full(5, 0.09)
        answered = np.zeros(5, dtype=bool)
        answered[rng.integers(5)] = True
        last = int(np.flatnonzero(answered)[0])
        assert search_supermodel(mu, np.full(5, 1e-3), answered, 0.0, var=var, max_depth=1).stop
        got = search_supermodel(mu, np.full(5, 1e-3), answered, 1e-3, var=var, order="forward")
        assert got.stop or got.run_next > last


# ---------------------------------------------------------------------------------------------------
# relabelling and determinism


def test_router_decisions_permute_with_the_models() -> None:
    rng = np.random.default_rng(4)
    for _ in range(50):
        k = int(rng.integers(2, 7))
        mu, cost = rng.uniform(0, 1, k), rng.uniform(0.01, 1, k)
        perm = rng.permutation(k)  # new model i is old model perm[i]
        policy = Router.from_lambdas([float(rng.uniform(0, 2))])
        old = policy.decide(_one(mu, cost), np.zeros(k, dtype=bool))
        new = policy.decide(_one(mu[perm], cost[perm]), np.zeros(k, dtype=bool))
        assert perm[new.run_next] == old.run_next


@pytest.mark.parametrize("greedy", [False, True])
def test_cascade_router_decisions_permute_with_the_models(greedy: bool, make_state, make_lambda, brute) -> None:
    """Relabelling models (in mu, var, cost and answered) relabels the chosen supermodel S*; the model
    run next is the lowest *new* index of S* \\ R, so it is compared through the brute-force S*."""
    rng = np.random.default_rng(5)
    compared = 0
    for _ in range(150):
        k = int(rng.integers(3, 7))
        state = make_state(rng, k, int(rng.integers(0, 3)), uncertainty=str(rng.choice(["var", "none"])))
        lam = make_lambda(rng, state["cost"])
        depth = int(rng.integers(2, k + 1))
        perm = rng.permutation(k)  # new model i is old model perm[i]
        inverse = np.argsort(perm)
        mu, cost, var, answered = state["mu"], state["cost"], state["var"], state["answered"]
        expected = brute(mu, cost, answered, lam, var=var, max_depth=depth, greedy=greedy)
        if expected.margin < AMBIGUOUS:
            continue
        policy = CascadeRouter.from_lambdas([lam] * depth, greedy=greedy)
        old = policy.decide(_one(mu, cost, var), answered)
        new = policy.decide(_one(mu[perm], cost[perm], None if var is None else var[perm]), answered[perm])
        assert old == expected.decision
        if old.stop:
            assert new.stop and perm[new.answer_from] == old.answer_from
        else:
            added = sorted(int(inverse[m]) for m in expected.best - set(np.flatnonzero(answered).tolist()))
            assert new.run_next == added[0]
            if greedy:
                assert perm[new.run_next] == old.run_next
        compared += 1
    assert compared >= 140


def test_same_seed_gives_the_same_decisions(make_state) -> None:
    """QMC scrambling and the gamma tie-break are seeded: two policies with one seed agree, call after call."""
    rng = np.random.default_rng(6)
    states = [make_state(rng, 5, int(rng.integers(0, 3)), uncertainty="cov") for _ in range(30)]
    decisions = []
    for _ in range(2):
        policy = CascadeRouter.from_lambdas([0.05, 0.05, 0.05, 0.05], gamma=0.5, seed=7)
        decisions.append([policy.decide(_one(s["mu"], s["cost"], cov=s["cov"]), s["answered"]) for s in states])
        decisions.append([policy.decide(_one(s["mu"], s["cost"], cov=s["cov"]), s["answered"]) for s in states])
    assert all(d == decisions[0] for d in decisions)


def test_seeded_tie_breaks_are_reproducible_and_mix_as_gamma() -> None:
    """All models tie: with gamma = 0.3 the expensive one is drawn ~30% of the time, reproducibly."""
    n, k = 2000, 3
    table = TableEstimates(
        q_ante=np.full((n, k), 0.5),
        q_post=np.full((n, k), 0.5),
        var_ante=np.zeros((n, k)),
        var_post=np.zeros((n, k)),
        cost_ante=np.tile([1.0, 2.0, 3.0], (n, 1)),
        cost_post=np.tile([1.0, 2.0, 3.0], (n, 1)),
    )
    quality, cost = np.full((n, k), 0.5), np.tile([1.0, 2.0, 3.0], (n, 1))
    for policy in (Router.from_lambdas([0.0], gamma=0.3), CascadeRouter.from_lambdas([0.0], gamma=0.3)):
        runs = [rollout(policy, table, quality, cost, rng=np.random.default_rng(11)) for _ in range(2)]
        np.testing.assert_array_equal(runs[0].answer_from, runs[1].answer_from)
        assert set(np.unique(runs[0].answer_from)) == {0, 2}
        share = float(np.mean(runs[0].answer_from == 2))
        assert abs(share - 0.3) < 4 * np.sqrt(0.3 * 0.7 / n)
        other = rollout(policy, table, quality, cost, rng=np.random.default_rng(12))
        assert not np.array_equal(other.answer_from, runs[0].answer_from)


# ---------------------------------------------------------------------------------------------------
# special cases: routing and the optimal cascade


def test_router_equals_depth_one_cascade_router(make_table) -> None:
    rng = np.random.default_rng(8)
    table, quality, cost = make_table(rng, 80, 5)
    for lam in [0.0, 0.05, 0.2, 1.0, 5.0]:
        router = Router.from_lambdas([lam])
        cascade = CascadeRouter.from_lambdas([lam], max_depth=1)
        for i in range(table.n_queries):
            none = np.zeros(5, dtype=bool)
            est = table.estimate(np.array([i]), none[None, :])
            assert router.decide(est, none) == cascade.decide(est, none)
        for tie in (False, True):
            a = rollout(router, table, quality, cost, expensive_tie=tie)
            b = rollout(cascade, table, quality, cost, expensive_tie=tie)
            np.testing.assert_array_equal(a.answer_from, b.answer_from)
            np.testing.assert_array_equal(a.cost, b.cost)
            np.testing.assert_array_equal(a.quality, b.quality)
            assert np.all(b.n_models_run == 1)


@pytest.mark.parametrize("fraction", [0.2, 0.5, 0.8])
def test_fitted_router_equals_fitted_depth_one_cascade_router(fraction: float, make_table) -> None:
    rng = np.random.default_rng(9)
    table, quality, cost = make_table(rng, 60, 4)
    means = cost.mean(axis=0)
    budget = float(means.min() + fraction * (means.max() - means.min()))
    router = Router(max_expected_cost=budget).fit(table, quality, cost)
    cascade = CascadeRouter(max_expected_cost=budget, max_depth=1).fit(table, quality, cost)
    assert router.fit_cost_ == cascade.fit_cost_
    assert router.fit_quality_ == cascade.fit_quality_
    assert router.gamma_ == pytest.approx(cascade.gamma_)
    a = rollout(router, table, quality, cost, expensive_tie=False)
    b = rollout(cascade, table, quality, cost, expensive_tie=False)
    assert (a.mean_cost, a.mean_quality) == (b.mean_cost, b.mean_quality)


@pytest.mark.parametrize("uncertainty", ["var", "cov", "none"])
def test_optimal_cascade_equals_prefix_restricted_brute_force(uncertainty: str, make_state, make_lambda, brute) -> None:
    rng = np.random.default_rng(10)
    compared = 0
    for _ in range(150):
        k = int(rng.integers(2, 7))
        depth = int(rng.integers(1, k + 1))
        step = int(rng.integers(0, depth + 1))
        state = make_state(rng, k, step, uncertainty=uncertainty, prefix=True)
        lambdas = [make_lambda(rng, state["cost"]) * float(rng.choice([0.1, 1.0, 10.0])) for _ in range(depth)]
        lam = lambdas[min(step, depth - 1)]
        expected = brute(
            state["mu"],
            state["cost"],
            state["answered"],
            lam,
            var=state["var"],
            cov=state["cov"],
            max_depth=depth,
            order="prefix",
        )
        if expected.margin < AMBIGUOUS:
            continue
        policy = OptimalCascade.from_lambdas(lambdas)
        got = policy.decide(_one(state["mu"], state["cost"], state["var"], state["cov"]), state["answered"])
        assert got == expected.decision, (state, lambdas, expected)
        if step == 0:
            assert got == Decision(0, None)  # a cascade always starts with the cheapest model
        compared += 1
    assert compared >= 140


def test_threshold_cascade_escalates_below_the_threshold_and_answers_with_the_last_model() -> None:
    policy = ThresholdCascade.from_lambdas([0.3, 0.1, 0.0])
    cost = np.array([1.0, 2.0, 3.0])
    mu = np.array([0.65, 0.95, 0.2])
    assert policy.decide(_one(mu, cost), np.array([False, False, False])) == Decision(0, None)
    # after model 0: 0.65 < 1 - 0.3 -> run model 1; after model 1: 0.95 >= 1 - 0.1 -> stop with model 1
    assert policy.decide(_one(mu, cost), np.array([True, False, False])) == Decision(1, None)
    assert policy.decide(_one(mu, cost), np.array([True, True, False])) == Decision(None, 1)
    # the last model answers even when an earlier one looks better
    mu2 = np.array([0.65, 0.5, 0.2])
    assert policy.decide(_one(mu2, cost), np.array([True, True, True])) == Decision(None, 2)


# ---------------------------------------------------------------------------------------------------
# budgets


def _budgets(cost: np.ndarray) -> list[float]:
    means = cost.mean(axis=0)
    return [float(b) for b in np.linspace(means.min(), means.max(), 4)]


@pytest.mark.parametrize("budget_index", [0, 1, 2, 3])
@pytest.mark.parametrize("policy_class", POLICIES, ids=lambda c: c.__name__)
def test_fitted_cost_is_within_budget(policy_class: type, budget_index: int, make_table) -> None:
    """Budgets from the cheapest to the most expensive model's mean cost, on the validation set."""
    rng = np.random.default_rng(11)
    table, quality, cost = make_table(rng, 60, 4)
    budget = _budgets(cost)[budget_index]
    params: dict[str, Any] = {"max_expected_cost": budget}
    if policy_class is not Router:
        params.update(max_depth=3, n_search=8)
    policy = policy_class(**params).fit(table, quality, cost)
    cheap = rollout(policy, table, quality, cost, expensive_tie=False)
    dear = rollout(policy, table, quality, cost, expensive_tie=True)
    g = policy.gamma_
    assert 0.0 <= g <= 1.0
    # Within budget up to one ulp of summation order (BUDGET_RTOL), the documented contract.
    limit = budget * (1 + BUDGET_RTOL)
    assert cheap.mean_cost <= limit
    assert policy.fit_cost_ <= limit
    assert (1 - g) * cheap.mean_cost + g * dear.mean_cost <= limit + 1e-12
    assert cheap.n_models_run.max() <= (1 if policy_class is Router else 3)


@pytest.mark.parametrize("policy_class", [ThresholdCascade, OptimalCascade, CascadeRouter], ids=lambda c: c.__name__)
def test_from_lambdas_respects_max_depth(policy_class: type, make_table) -> None:
    """max_depth caps the models per query even when more multipliers are given (spec §4.1)."""
    rng = np.random.default_rng(12)
    table, quality, cost = make_table(rng, 40, 5)
    policy = policy_class.from_lambdas([0.0] * 5, max_depth=2)
    assert rollout(policy, table, quality, cost, expensive_tie=False).n_models_run.max() <= 2


# ---------------------------------------------------------------------------------------------------
# input validation


def test_estimates_reject_non_finite_values() -> None:
    good = np.array([[0.5, 0.6]])
    with pytest.raises(ValueError, match="q_mean contains non-finite"):
        Estimates(q_mean=np.array([[0.5, np.nan]]), cost=good)
    with pytest.raises(ValueError, match="cost contains non-finite"):
        Estimates(q_mean=good, cost=np.array([[0.5, np.inf]]))
    with pytest.raises(ValueError, match="q_var"):
        Estimates(q_mean=good, cost=good, q_var=np.array([[0.1, np.nan]]))
    with pytest.raises(ValueError, match="q_cov contains non-finite"):
        Estimates(q_mean=good, cost=good, q_cov=np.full((1, 2, 2), np.nan))


def test_estimates_reject_negative_costs_and_variances() -> None:
    good = np.array([[0.5, 0.6]])
    with pytest.raises(ValueError, match="cost must be non-negative"):
        Estimates(q_mean=good, cost=np.array([[0.5, -0.1]]))
    with pytest.raises(ValueError, match="q_var must be finite and non-negative"):
        Estimates(q_mean=good, cost=good, q_var=np.array([[0.1, -0.1]]))


def test_estimates_reject_shape_mismatches() -> None:
    good = np.array([[0.5, 0.6]])
    with pytest.raises(ValueError, match="cost has shape"):
        Estimates(q_mean=good, cost=np.array([[0.5, 0.6, 0.7]]))
    with pytest.raises(ValueError, match="q_var has shape"):
        Estimates(q_mean=good, cost=good, q_var=np.array([0.1, 0.1]))
    with pytest.raises(ValueError, match="q_cov has shape"):
        Estimates(q_mean=good, cost=good, q_cov=np.eye(2))
    with pytest.raises(ValueError, match="not both"):
        Estimates(q_mean=good, cost=good, q_var=good, q_cov=np.ones((1, 2, 2)))
    with pytest.raises(ValueError, match="q_mean must have shape"):
        Estimates(q_mean=np.array([0.5, 0.6]), cost=np.array([0.5, 0.6]))


def test_table_estimates_reject_bad_arrays() -> None:
    ok = np.full((3, 2), 0.5)
    fields = dict(q_ante=ok, q_post=ok, var_ante=ok, var_post=ok, cost_ante=ok, cost_post=ok)
    with pytest.raises(ValueError, match="cost_post has shape"):
        TableEstimates(**{**fields, "cost_post": np.full((3, 3), 0.5)})
    with pytest.raises(ValueError, match="cost must be non-negative"):
        TableEstimates(**{**fields, "cost_ante": -ok})
    with pytest.raises(ValueError, match="q_mean contains non-finite"):
        TableEstimates(**{**fields, "q_post": np.full((3, 2), np.nan)})


@pytest.mark.parametrize("policy_class", POLICIES, ids=lambda c: c.__name__)
def test_fit_rejects_bad_ground_truth_and_budgets(policy_class: type, make_table) -> None:
    rng = np.random.default_rng(13)
    table, quality, cost = make_table(rng, 20, 3)
    ok_budget = float(cost.mean(axis=0).max())
    policy = policy_class(max_expected_cost=ok_budget)
    with pytest.raises(ValueError, match="quality has shape"):
        policy.fit(table, quality[:, :2], cost)
    with pytest.raises(ValueError, match="cost has shape"):
        policy.fit(table, quality, cost[:10])
    with pytest.raises(ValueError, match="quality contains non-finite"):
        policy.fit(table, np.where(quality > 0, np.nan, quality), cost)
    with pytest.raises(ValueError, match="cost must be non-negative"):
        policy.fit(table, quality, -cost)
    cheapest = float(cost.mean(axis=0).min())
    with pytest.raises(ValueError, match="below the cheapest model"):
        policy_class(max_expected_cost=0.5 * cheapest).fit(table, quality, cost)
    with pytest.raises(ValueError, match="max_expected_cost"):
        policy_class().fit(table, quality, cost)
    empty = table.subset(np.array([], dtype=np.intp))
    with pytest.raises(ValueError, match="empty"):
        policy.fit(empty, quality[:0], cost[:0])
    with pytest.raises(ValueError, match="empty"):
        rollout(policy_class.from_lambdas([0.0]), empty, quality[:0], cost[:0])


@pytest.mark.parametrize("policy_class", POLICIES, ids=lambda c: c.__name__)
def test_from_lambdas_rejects_bad_multipliers(policy_class: type) -> None:
    with pytest.raises(ValueError, match="lambdas must be a non-empty list of finite non-negative numbers"):
        policy_class.from_lambdas([0.1, -1.0])
    with pytest.raises(ValueError, match="lambdas must be a non-empty list of finite non-negative numbers"):
        policy_class.from_lambdas([np.nan])
    with pytest.raises(ValueError, match="gamma"):
        policy_class.from_lambdas([0.1], gamma=1.5)


@pytest.mark.parametrize("policy_class", POLICIES, ids=lambda c: c.__name__)
def test_from_lambdas_rejects_an_empty_multiplier_list(policy_class: type) -> None:
    """No multiplier means depth 0: no policy can answer, so refuse it up front (decide would crash)."""
    with pytest.raises(ValueError, match="lambdas"):
        policy_class.from_lambdas([])


@pytest.mark.parametrize("policy_class", POLICIES, ids=lambda c: c.__name__)
def test_unfitted_policy_raises_not_fitted(policy_class: type, make_table) -> None:
    rng = np.random.default_rng(14)
    table, quality, cost = make_table(rng, 5, 3)
    policy = policy_class(max_expected_cost=1.0)
    est = table.estimate(np.array([0]), np.zeros((1, 3), dtype=bool))
    with pytest.raises(NotFittedError, match="not fitted yet"):
        policy.decide(est, np.zeros(3, dtype=bool))
    with pytest.raises(NotFittedError):
        rollout(policy, table, quality, cost)
    assert issubclass(NotFittedError, ValueError) and issubclass(NotFittedError, AttributeError)


def test_decide_rejects_mismatched_state() -> None:
    policy = CascadeRouter.from_lambdas([0.1, 0.1])
    est = _one(np.array([0.5, 0.6, 0.7]), np.ones(3))
    with pytest.raises(ValueError, match="answered has shape"):
        policy.decide(est, np.zeros(2, dtype=bool))
    two = Estimates(q_mean=np.full((2, 3), 0.5), cost=np.ones((2, 3)))
    with pytest.raises(ValueError, match="one query"):
        policy.decide(two, np.zeros(3, dtype=bool))


@pytest.mark.parametrize("seed", range(4))
def test_simulator_tables_decide_exactly_as_the_search(seed: int) -> None:
    """Rollouts with per-state candidate tables (memos) equal the per-row live search, gamma draws
    included: the tables are an optimisation, never a different policy."""
    rng = np.random.default_rng(seed)
    n, k = 60, int(rng.integers(2, 7))
    q_ante = rng.uniform(0, 1, (n, k))
    tied = seed == 0  # all estimates equal: every decision is a tie, gamma decides
    if tied:
        q_ante[:] = 0.5
    table = TableEstimates(
        q_ante=q_ante,
        q_post=q_ante if tied else np.clip(q_ante + rng.normal(0, 0.2, (n, k)), 0, 1),
        var_ante=np.zeros((n, k)) if tied else rng.uniform(0.01, 0.1, (n, k)),
        var_post=np.zeros((n, k)) if tied else np.full((n, k), 1e-6),
        cost_ante=(c := np.sort(rng.lognormal(0, 1, (n, k)), axis=1)),
        cost_post=c,
    )
    quality = (rng.random((n, k)) < q_ante).astype(float)
    policies = [
        CascadeRouter.from_lambdas(list(rng.uniform(0, 0.3, k)), gamma=0.4, max_depth=int(rng.integers(1, k + 1))),
        CascadeRouter.from_lambdas([0.05] * k, gamma=0.5, force_order=True),
        CascadeRouter.from_lambdas([0.05] * k, gamma=0.5, greedy=True),
        OptimalCascade.from_lambdas(list(rng.uniform(0, 0.3, k)), gamma=0.3),
        # lambda = 0: with equal estimates every candidate ties, so only gamma's draws decide.
        CascadeRouter.from_lambdas([0.0] * k, gamma=0.5, max_depth=min(3, k)),
        OptimalCascade.from_lambdas([0.0] * k, gamma=0.5),
    ]
    for policy in policies:
        search = rollout(policy, table, quality, c, rng=np.random.default_rng(7))
        tables = rollout(policy, table, quality, c, rng=np.random.default_rng(7), memos={})
        np.testing.assert_array_equal(tables.answer_from, search.answer_from)
        np.testing.assert_array_equal(tables.cost, search.cost)


@pytest.mark.parametrize("policy_class", [Router, CascadeRouter], ids=lambda c: c.__name__)
def test_a_budget_the_estimates_cannot_reach_says_what_they_reach(policy_class: type) -> None:
    """Estimates that rank two near-equal models the wrong way on some queries keep even lambda -> inf
    above the cheapest model's average; the error carries the cheapest cost the policy does reach.
    (Cascades always start with the cheapest model, so they always reach it.)"""
    n = 10
    wrong = np.arange(n) < 2  # on these two queries the cheaper model is estimated dearer
    cost_ante = np.where(wrong[:, None], [2.0, 1.0], [1.0, 1.1])
    table = TableEstimates(
        q_ante=np.tile([0.5, 0.6], (n, 1)), q_post=np.tile([0.5, 0.6], (n, 1)),
        var_ante=np.zeros((n, 2)), var_post=np.zeros((n, 2)), cost_ante=cost_ante, cost_post=cost_ante,
    )
    quality, cost = np.tile([0.5, 0.6], (n, 1)), np.tile([1.0, 1.1], (n, 1))
    with pytest.raises(BudgetUnreachableError, match="below the cheapest average cost this policy reaches") as err:
        policy_class(max_expected_cost=1.0).fit(table, quality, cost)
    assert err.value.cheapest_cost == pytest.approx(1.02)
    fitted = policy_class(max_expected_cost=err.value.cheapest_cost).fit(table, quality, cost)
    assert fitted.fit_cost_ == pytest.approx(1.02)


@pytest.mark.parametrize("cls", [CascadeRouter, OptimalCascade, ThresholdCascade])
@pytest.mark.parametrize("depth", [0, -1, 1.5, True, "3"])
def test_invalid_max_depth_is_refused_by_name(cls: type, depth: object) -> None:
    """A depth below 1 would let a policy stop before any answer; the constructor and set_params say so."""
    with pytest.raises(ValueError, match="max_depth must be None"):
        cls(max_depth=depth)
    with pytest.raises(ValueError, match="max_depth must be None"):
        cls().set_params(max_depth=depth)


@pytest.mark.parametrize("cls", [CascadeRouter, OptimalCascade, ThresholdCascade])
def test_max_depth_none_means_no_limit(cls: type) -> None:
    assert cls(max_depth=None).n_steps(7) == 7
    assert cls(max_depth=np.int64(2)).n_steps(7) == 2


def _two_paths(cascade_cost: float) -> Callable[[np.ndarray, bool], tuple[float, float]]:
    """A validation set where the cheap model first, escalating on a small later lambda, is best, but one
    constant lambda cannot say it: below 1 every query goes to the dear model (cost 10, quality 0.9), from 1
    on to the cheap one alone (cost 1, quality 0.5). lambda_0 above 100 starts with the cheap model, and
    then lambda_1 below 1 escalates (``cascade_cost``, quality 1)."""

    def evaluate(lambdas: np.ndarray, expensive: bool) -> tuple[float, float]:
        if lambdas[0] > 100.0:
            return (cascade_cost, 1.0) if lambdas[1] < 1.0 else (1.0, 0.5)
        return (10.0, 0.9) if lambdas[0] < 1.0 else (1.0, 0.5)

    return evaluate


def test_the_lambda_search_can_start_from_the_cascade() -> None:
    """With the cascade start the fit finds the cheap-first vector; without it (or with a constant
    lambda, or where step 0 is not free) it stays with the constant fit's routing."""
    from routing import fit_lambdas

    def fit(evaluate: Callable[[np.ndarray, bool], tuple[float, float]], **kw: Any) -> Any:
        params: dict[str, Any] = dict(n_steps=2, budget=6.0, lambda_scale=0.1, n_search=0,
                                      rng=np.random.default_rng(0))
        params.update(kw)
        return fit_lambdas(evaluate, **params)

    started = fit(_two_paths(6.0), cascade_start=True)
    assert (started.quality, started.cost) == (1.0, 6.0)
    assert started.lambdas[0] > 100.0 and started.lambdas[1] < 1.0
    for kw in ({"cascade_start": False}, {"cascade_start": True, "strategy": "constant"},
               {"cascade_start": True, "first_free_step": 1}, {"cascade_start": True, "n_steps": 1}):
        plain = fit(_two_paths(6.0), **kw)
        assert (plain.quality, plain.cost) == (0.5, 1.0), kw
    # A cascade start that cannot keep the budget at any lambda leaves the constant fit in place.
    unreachable = fit(_two_paths(7.0), cascade_start=True)
    assert (unreachable.quality, unreachable.cost) == (0.5, 1.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_with_two_models_the_cascade_start_is_the_optimal_cascade(seed: int, make_table) -> None:
    """lambda_0 -> infinity and the later lambda bisected *is* the optimal cascade with two models, so
    cascade routing's fit with the cascade start (no random search) is at least as good on validation as
    the optimal cascade's and as its own fit without that start, at every budget between the models."""
    rng = np.random.default_rng(seed)
    table, quality, cost = make_table(rng, 80, 2)
    for budget in np.linspace(cost.mean(axis=0)[0], cost.mean(axis=0)[1], 6)[1:-1]:
        optimal = OptimalCascade(max_expected_cost=float(budget)).fit(table, quality, cost)
        plain = CascadeRouter(max_expected_cost=float(budget), n_search=0, cascade_start=False).fit(
            table, quality, cost)
        started = CascadeRouter(max_expected_cost=float(budget), n_search=0).fit(table, quality, cost)
        assert started.fit_quality_ == pytest.approx(max(plain.fit_quality_, optimal.fit_quality_), abs=1e-12)
        assert started.fit_cost_ <= budget * (1 + BUDGET_RTOL)


def test_with_more_than_two_models_the_cascade_start_is_not_tried(make_table) -> None:
    """Cheapest-first is the optimal cascade only with two models; with three the fit is the paper's."""
    table, quality, cost = make_table(np.random.default_rng(3), 80, 3)
    budget = float(cost.mean(axis=0)[1])
    fits = [CascadeRouter(max_expected_cost=budget, n_search=8, cascade_start=flag).fit(table, quality, cost)
            for flag in (True, False)]
    assert fits[0].n_fit_evaluations_ == fits[1].n_fit_evaluations_
    np.testing.assert_array_equal(fits[0].lambdas_, fits[1].lambdas_)
