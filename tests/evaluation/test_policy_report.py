"""The served policy's evidence: the choice per budget on validation, paired held-out CIs against routing and
every single model, and the promise "never below routing" computed, not asserted."""

from __future__ import annotations

import json

import numpy as np
import pytest

from evaluation.policy_report import PROMISE, Outcomes, policy_report

CANDIDATES = ("routing", "optimal_cascade", "cascade_routing")
MODELS = ("small", "large")


def _world(seed: int = 0, n_val: int = 300, n_test: int = 400) -> dict[str, np.ndarray]:
    """Two single models and the answers each policy returns: routing copies the small model's grade, the
    cascade ties routing, cascade routing fixes 30 % of routing's misses (at budget 1 only)."""
    rng = np.random.default_rng(seed)
    out = {}
    for side, n in (("val", n_val), ("test", n_test)):
        small = (rng.random(n) < 0.5).astype(float)
        large = np.maximum(small, (rng.random(n) < 0.5).astype(float))
        fixed = np.where(rng.random(n) < 0.3, 1.0, small)
        out[f"{side}_models"] = np.stack([small, large], axis=1)
        out[f"{side}_routing"] = small
        out[f"{side}_better"] = fixed
    return out


def _outcomes(rows: list[np.ndarray]) -> Outcomes:
    q = np.stack(rows)
    return Outcomes(quality=q, cost=np.where(np.isnan(q), np.nan, 0.01))


def _report(world: dict[str, np.ndarray], test_cr: list[np.ndarray] | None = None) -> dict:
    validation, test = {}, {}
    for side, store in (("val", validation), ("test", test)):
        routing, better = world[f"{side}_routing"], world[f"{side}_better"]
        nan = np.full_like(routing, np.nan)
        store["routing"] = _outcomes([routing, routing])
        store["threshold_cascade"] = _outcomes([better, better])  # reported, never a candidate
        store["optimal_cascade"] = _outcomes([nan, routing])  # cannot keep the first budget
        store["cascade_routing"] = _outcomes([routing, better])
    if test_cr is not None:
        test["cascade_routing"] = _outcomes(test_cr)
    model_q = world["test_models"]
    return policy_report([0.01, 0.02], validation, test, model_q, np.full_like(model_q, 0.01), MODELS, CANDIDATES)


def test_the_choice_per_budget_and_its_held_out_evidence() -> None:
    report = _report(_world())
    first, second = report["budgets"]
    # A tie keeps routing; a clear win serves cascade routing. The threshold cascade wins too, but the
    # fleet never serves it here.
    assert (first["chosen"], second["chosen"]) == ("routing", "cascade_routing")
    assert first["policies"]["optimal_cascade"] is None  # out of reach: sits the budget out
    assert [c["richer"] for c in first["comparisons"]] == ["cascade_routing"]
    assert [(c["richer"], c["simpler"], c["wins"]) for c in second["comparisons"]] == [
        ("optimal_cascade", "routing", False), ("cascade_routing", "routing", True)]
    served = second["policies"]["cascade_routing"]
    assert served["vs_routing"]["low"] > 0 and second["chosen_vs_routing"] == served["vs_routing"]
    assert first["chosen_vs_routing"] == {"mean": 0.0, "low": 0.0, "high": 0.0}
    assert second["policies"]["routing"]["vs_routing"] is None
    # Against every single model, paired: routing is the small model, so that difference is exactly 0.
    assert set(served["vs_models"]) == set(MODELS)
    assert first["policies"]["routing"]["vs_models"]["small"] == {"mean": 0.0, "low": 0.0, "high": 0.0}
    large = report["budgets"][0]["policies"]["routing"]["vs_models"]["large"]
    assert large["high"] < 0  # the large model is better than always-small routing
    assert report["never_below_routing"] == {"claim": PROMISE, "pass": True, "failed_budgets": [], "n_budgets": 2}
    assert report["models"]["small"]["quality"] == pytest.approx(_world()["test_routing"].mean())
    json.dumps(report)  # JSON-ready, as calibration.json stores it


def test_the_promise_fails_where_the_chosen_policy_is_below_routing_on_held_out_prompts() -> None:
    """Validation chose cascade routing at budget 2, but on the test queries it lost to routing: FAIL,
    naming that budget."""
    world = _world()
    routing = world["test_routing"]
    worse = np.where(np.random.default_rng(9).random(routing.size) < 0.4, 0.0, routing)
    report = _report(world, test_cr=[routing, worse])
    check = report["never_below_routing"]
    assert check["pass"] is False and check["failed_budgets"] == [0.02]
    assert report["budgets"][1]["below_routing"] and not report["budgets"][0]["below_routing"]


def test_the_report_is_deterministic_and_validates_its_inputs() -> None:
    world = _world()
    assert _report(world) == _report(world)
    with pytest.raises(ValueError, match="validation has policies"):
        policy_report([0.01], {"routing": _outcomes([world["val_routing"]])}, {}, world["test_models"],
                      world["test_models"], MODELS, CANDIDATES)
    with pytest.raises(ValueError, match=r"test outcomes of 'routing' have shape \(1, 300\); expected \(1, 400\)"):
        policy_report([0.01], {"routing": _outcomes([world["val_routing"]])},
                      {"routing": _outcomes([world["val_routing"]])}, world["test_models"], world["test_models"],
                      MODELS, CANDIDATES)
