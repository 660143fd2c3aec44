"""The served policy's rule: the simplest policy unless a richer one wins on validation by more than its noise,
at the budget or averaged over the budgets."""

from __future__ import annotations

import numpy as np
import pytest

from evaluation.policy_choice import (
    PolicyChoice,
    candidate_policies,
    choose_policy,
    choose_policy_pooled,
    paired_gain,
    serve_budget,
)

ORDER = ("routing", "optimal_cascade", "cascade_routing")


def _correct(rng: np.random.Generator, p: float, n: int) -> np.ndarray:
    return (rng.random(n) < p).astype(float)


def test_ties_keep_the_simplest_policy() -> None:
    """Identical answers on every query: nothing to gain, so routing serves."""
    q = _correct(np.random.default_rng(0), 0.6, 300)
    choice = choose_policy({name: q for name in ORDER}, ORDER)
    assert choice.chosen == "routing"
    assert [c.wins for c in choice.comparisons] == [False, False]
    assert all(c.gain.mean == c.gain.low == c.gain.high == 0.0 for c in choice.comparisons)


def test_a_clear_win_serves_the_richer_policy() -> None:
    """Cascade routing right on 20 % more of the queries, never worse: it serves, compared with routing
    (the cascade tied routing, so routing was still the choice)."""
    rng = np.random.default_rng(1)
    routing = _correct(rng, 0.5, 400)
    better = np.where(rng.random(400) < 0.4, 1.0, routing)
    choice = choose_policy({"routing": routing, "optimal_cascade": routing, "cascade_routing": better}, ORDER)
    assert choice.chosen == "cascade_routing"
    last = choice.comparisons[-1]
    assert (last.richer, last.simpler, last.wins) == ("cascade_routing", "routing", True)
    assert last.gain.low > 0 and last.gain.mean == pytest.approx(float((better - routing).mean()))


def test_a_noise_sized_win_keeps_the_simpler_policy() -> None:
    """The richer policy is right where routing was wrong on 11 queries and wrong where routing was right
    on 9: ahead by 2 of 200, as two policies of equal skill often are, and its interval straddles 0."""
    routing = np.tile([1.0, 0.0], 100)
    richer = routing.copy()
    richer[1:23:2] = 1.0  # 11 of routing's misses answered
    richer[100:118:2] = 0.0  # 9 of its right answers lost
    choice = choose_policy({"routing": routing, "cascade_routing": richer}, ("routing", "cascade_routing"))
    assert choice.chosen == "routing"
    [comparison] = choice.comparisons
    assert comparison.gain.mean == pytest.approx(0.01)
    assert comparison.gain.low < 0 < comparison.gain.high


def test_a_richer_policy_is_compared_with_the_choice_so_far() -> None:
    """The cascade beats routing clearly; cascade routing beats routing too but only ties the cascade:
    the cascade serves."""
    rng = np.random.default_rng(4)
    routing = _correct(rng, 0.4, 500)
    cascade = np.where(rng.random(500) < 0.3, 1.0, routing)
    choice = choose_policy({"routing": routing, "optimal_cascade": cascade, "cascade_routing": cascade}, ORDER)
    assert choice.chosen == "optimal_cascade"
    assert [(c.richer, c.simpler, c.wins) for c in choice.comparisons] == [
        ("optimal_cascade", "routing", True), ("cascade_routing", "optimal_cascade", False)]


def test_the_choice_is_deterministic_given_the_seed() -> None:
    rng = np.random.default_rng(5)
    quality = {name: _correct(rng, 0.55 + 0.02 * i, 150) for i, name in enumerate(ORDER)}
    first, again = choose_policy(quality, ORDER, seed=7), choose_policy(quality, ORDER, seed=7)
    assert first == again
    other = paired_gain(quality["cascade_routing"], quality["routing"], seed=8)
    assert other != paired_gain(quality["cascade_routing"], quality["routing"], seed=7)


def test_a_wider_level_asks_for_more_evidence() -> None:
    """A gain that clears a 80 % interval but not a 99.9 % one."""
    rng = np.random.default_rng(6)
    routing = _correct(rng, 0.5, 300)
    richer = np.where(rng.random(300) < 0.04, 1.0, routing)
    quality = {"routing": routing, "cascade_routing": richer}
    order = ("routing", "cascade_routing")
    assert choose_policy(quality, order, level=0.8).chosen == "cascade_routing"
    assert choose_policy(quality, order, level=0.999).chosen == "routing"


def test_unpaired_or_missing_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="pair the same queries"):
        paired_gain(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match=r"no per-query quality for \['cascade_routing'\]"):
        choose_policy({"routing": np.ones(3)}, ("routing", "cascade_routing"))
    with pytest.raises(ValueError, match="at least one policy"):
        choose_policy({"routing": np.ones(3)}, ())
    with pytest.raises(ValueError, match="level"):
        paired_gain(np.ones(3), np.zeros(3), level=1.0)


def test_candidates_are_the_chain_up_to_the_fleet_files_policy() -> None:
    assert candidate_policies("cascade_routing") == ORDER
    assert candidate_policies("optimal_cascade") == ("routing", "optimal_cascade")
    assert candidate_policies("routing") == ("routing",)
    with pytest.raises(ValueError, match="unknown policy"):
        candidate_policies("cascade")  # the API's name: callers map it with routing.core_policy_name


def _budgets(rng: np.random.Generator, n_budgets: int, n: int, gain: float) -> tuple[np.ndarray, np.ndarray]:
    """Routing and a richer policy over a grid: the richer one fixes ``gain`` of routing's misses at each
    budget, on draws independent across budgets."""
    routing = (rng.random((n_budgets, n)) < 0.5).astype(float)
    richer = np.where(rng.random((n_budgets, n)) < gain, 1.0, routing)
    return routing, richer


def test_a_gain_too_small_for_any_one_budget_wins_over_the_grid() -> None:
    """60 queries, 10 budgets, the richer policy fixes 8 % of routing's misses everywhere: no budget alone
    shows it beyond its noise, their average over the grid does."""
    routing, richer = _budgets(np.random.default_rng(11), 10, 60, 0.08)
    order = ("routing", "cascade_routing")
    own = [choose_policy({"routing": routing[b], "cascade_routing": richer[b]}, order).chosen for b in range(10)]
    assert own.count("routing") >= 8
    pooled = choose_policy_pooled({"routing": routing, "cascade_routing": richer}, order)
    assert pooled.chosen == "cascade_routing"
    [comparison] = pooled.comparisons
    assert comparison.gain.mean == pytest.approx(float((richer - routing).mean()))


def test_the_pooled_walk_keeps_the_simpler_policy_on_ties_and_skips_budgets_out_of_reach() -> None:
    """The cascade keeps only the last two budgets (rows of NaN before) and equals routing there: a tie.
    Cascade routing loses clearly: routing stays."""
    rng = np.random.default_rng(12)
    routing = (rng.random((4, 200)) < 0.5).astype(float)
    cascade = routing.copy()
    cascade[:2] = np.nan
    worse = np.where(rng.random((4, 200)) < 0.3, 0.0, routing)
    pooled = choose_policy_pooled({"routing": routing, "optimal_cascade": cascade, "cascade_routing": worse}, ORDER)
    assert pooled.chosen == "routing"
    assert [(c.richer, c.wins) for c in pooled.comparisons] == [("optimal_cascade", False), ("cascade_routing", False)]
    assert pooled.comparisons[0].gain.mean == 0.0
    # A policy that keeps no budget the current choice keeps is not compared at all.
    never = np.full((4, 200), np.nan)
    assert choose_policy_pooled({"routing": routing, "cascade_routing": never}, ("routing", "cascade_routing")
                                ).comparisons == ()


def test_the_pooled_walk_refuses_ragged_or_partly_missing_grids() -> None:
    with pytest.raises(ValueError, match="same"):
        choose_policy_pooled({"routing": np.ones((2, 3)), "cascade_routing": np.ones((3, 3))},
                             ("routing", "cascade_routing"))
    half = np.ones((2, 3))
    half[0, 1] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        choose_policy_pooled({"routing": half}, ("routing",))
    with pytest.raises(ValueError, match=r"\(n_budgets, n_queries\)"):
        choose_policy_pooled({"routing": np.ones(3)}, ("routing",))
    with pytest.raises(ValueError, match="at least one policy"):
        choose_policy_pooled({"routing": np.ones((1, 3))}, ())


def test_a_budget_serves_the_pooled_choice_unless_its_own_queries_favour_the_simpler() -> None:
    own = PolicyChoice(chosen="routing", comparisons=(), level=0.95)
    pooled = PolicyChoice(chosen="cascade_routing", comparisons=(), level=0.95)
    routing = np.array([1.0, 0.0, 1.0, 0.0])
    assert serve_budget(own, pooled, {"routing": routing, "cascade_routing": routing}, ORDER) == (
        "cascade_routing", "pooled")  # a tie does not contradict the grid's evidence
    lower = np.array([1.0, 0.0, 0.0, 0.0])
    assert serve_budget(own, pooled, {"routing": routing, "cascade_routing": lower}, ORDER) == ("routing", "budget")
    # The pooled choice out of this budget's reach, no pooled choice, or a simpler pooled choice: its own.
    assert serve_budget(own, pooled, {"routing": routing}, ("routing",)) == ("routing", "budget")
    assert serve_budget(own, None, {"routing": routing}, ORDER) == ("routing", "budget")
    richer_own = PolicyChoice(chosen="cascade_routing", comparisons=(), level=0.95)
    simpler = PolicyChoice(chosen="optimal_cascade", comparisons=(), level=0.95)
    assert serve_budget(richer_own, simpler, {"cascade_routing": lower, "optimal_cascade": routing}, ORDER) == (
        "cascade_routing", "budget")
    with pytest.raises(ValueError, match="not among"):
        serve_budget(richer_own, None, {"routing": routing}, ("routing",))
