"""The RouterBench protocol: determinism, process-independence, validation, and the real-data ordering."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from evaluation.protocol import ProtocolSettings, run_protocol
from evaluation.routerbench import load_routerbench

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "routerbench_tiny"
SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "routerbench"
FAST = {"per_segment": 3, "n_bootstrap": 30, "n_search": 4}


def test_results_do_not_depend_on_the_number_of_processes() -> None:
    """Fits run per method and the test split in fixed seeded halves, so n_jobs changes nothing."""
    table = load_routerbench(FIXTURE)
    settings = ProtocolSettings(models=5, noise="medium", **FAST)
    one = run_protocol(table, settings, n_jobs=1)
    two = run_protocol(table, settings, n_jobs=2)
    assert one["auc"] == two["auc"]
    assert one["points"] == two["points"]
    assert one["ci"] == two["ci"]
    assert one["policy_choice"] == two["policy_choice"]


def test_progress_reports_every_fit_and_test_budget() -> None:
    table = load_routerbench(FIXTURE)
    seen: dict[str, tuple[int, int]] = {}
    result = run_protocol(
        table, ProtocolSettings(models=3, **FAST), progress=lambda s, d, t: seen.__setitem__(s, (d, t))
    )
    n = result["settings"]["n_budgets"]
    for method in ("routing", "threshold_cascade", "optimal_cascade", "cascade_routing"):
        assert seen[f"fit {method}"] == (n, n)
        assert seen[f"test {method}"][0] == seen[f"test {method}"][1]


def test_curves_are_within_the_budget_grid_and_models_sorted_by_cost() -> None:
    result = run_protocol(load_routerbench(FIXTURE), ProtocolSettings(models=5, **FAST))
    single = result["points"]["single_models"]
    assert single["cost"] == sorted(single["cost"])
    budgets = np.asarray(result["points"]["cascade_routing"]["budget"])
    assert np.all(np.diff(budgets) > 0)
    assert budgets[0] == pytest.approx(min(single["cost"]))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"models": 7}, "models must be one of"),
        ({"test_size": 1.0}, "test_size must be in"),
        ({"strategy": "hyperopt"}, "strategy must be"),
    ],
)
def test_bad_settings_raise(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ProtocolSettings(**kwargs)  # type: ignore[arg-type]


def test_bad_noise_level_and_jobs_raise() -> None:
    table = load_routerbench(FIXTURE)
    with pytest.raises(ValueError, match="noise"):
        run_protocol(table, ProtocolSettings(models=3, noise="extreme", **FAST))
    with pytest.raises(ValueError, match="n_jobs"):
        run_protocol(table, ProtocolSettings(models=3, **FAST), n_jobs=0)


@pytest.mark.data
@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data/routerbench is absent")
def test_real_data_cascade_routing_beats_routing_with_three_models() -> None:
    """The paper's ordering on real RouterBench rows (3 models, low noise, a coarse grid)."""
    result = run_protocol(load_routerbench(SHARED), ProtocolSettings(models=3, noise="low", **FAST), n_jobs=2)
    assert result["settings"]["n_test"] == 3006
    auc = result["auc"]
    assert auc["cascade_routing"] > auc["routing"] > auc["linear"]
    assert auc["cascade_routing"] >= max(auc["threshold_cascade"], auc["optimal_cascade"]) - 0.5


def test_a_grid_budget_below_what_a_policy_reaches_is_fitted_at_its_cheapest() -> None:
    """The grid's lowest budget is the cheapest model's cost; a router whose cost estimates rank two
    near-equal models the wrong way on some queries cannot get there, and is fitted at what it reaches."""
    from evaluation.protocol import _fit_method
    from routing import TableEstimates

    n = 10
    wrong = np.arange(n) < 2
    cost_ante = np.where(wrong[:, None], [2.0, 1.0], [1.0, 1.1])
    q = np.tile([0.5, 0.6], (n, 1))
    table = TableEstimates(q_ante=q, q_post=q, var_ante=np.zeros((n, 2)), var_post=np.zeros((n, 2)),
                           cost_ante=cost_ante, cost_post=cost_ante)
    # The paper's fit (no budget margin): its floor is the mean cost itself.
    settings = ProtocolSettings(models=("a", "b"), budget_margin_se=0.0, **FAST)
    _, policies, _ = _fit_method("routing", np.array([1.0, 1.1]), settings, table, q, np.tile([1.0, 1.1], (n, 1)))
    assert [p.max_expected_cost for p in policies] == [pytest.approx(1.02), 1.1]
    assert policies[0].fit_cost_ == pytest.approx(1.02)
