"""The protocol's uncertainty scale: fitted on validation rows only, recorded, fixed on request."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from sklearn.model_selection import train_test_split

from evaluation.protocol import ProtocolSettings, run_protocol
from evaluation.routerbench import load_routerbench

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "routerbench_tiny"
FAST = {"per_segment": 2, "n_bootstrap": 0, "n_search": 2, "test_size": 0.5}


def _poisoned(rows_of: str) -> tuple[dict[str, object], dict[str, object]]:
    """The scale record of a clean run and of one whose ``rows_of`` split has every score flipped."""
    table = load_routerbench(FIXTURE).select_models(("mistralai/mixtral-8x7b-chat", "gpt-3.5-turbo-1106",
                                                      "gpt-4-1106-preview")).sorted_by_cost()
    settings = ProtocolSettings(models=table.models, noise="low", **FAST)
    val, test = train_test_split(np.arange(table.n_queries), test_size=settings.test_size,
                                 random_state=settings.split_seed)
    rows = test if rows_of == "test" else val
    quality = np.array(table.quality)
    quality[rows] = 1.0 - quality[rows]
    poisoned = dataclasses.replace(table, quality=quality)
    clean = run_protocol(table, settings, methods=("cascade_routing",))["settings"]
    dirty = run_protocol(poisoned, settings, methods=("cascade_routing",))["settings"]
    return clean, dirty


def test_the_scale_never_reads_test_rows() -> None:
    """Flipping every test score leaves the fit (factor and losses) exactly as it was."""
    clean, dirty = _poisoned("test")
    assert clean["uncertainty_scale_fit"] == dirty["uncertainty_scale_fit"]
    assert clean["uncertainty_scale"] == dirty["uncertainty_scale"]


def test_the_scale_reads_validation_rows() -> None:
    """The check above has teeth: flipping the validation scores does move the fit."""
    clean, dirty = _poisoned("validation")
    assert clean["uncertainty_scale_fit"]["loss"] != dirty["uncertainty_scale_fit"]["loss"]


def test_the_record_holds_the_fitted_scale_or_the_fixed_one() -> None:
    table = load_routerbench(FIXTURE)
    fitted = run_protocol(table, ProtocolSettings(models=3, **FAST), methods=("routing", "cascade_routing"))
    s = fitted["settings"]
    assert s["uncertainty_scale"] == s["uncertainty_scale_fit"]["scale"]
    assert s["uncertainty_scale_fit"]["n_rows"] == s["n_validation"]
    fixed = run_protocol(table, ProtocolSettings(models=3, uncertainty_scale=1.0, **FAST),
                         methods=("routing", "cascade_routing"))
    assert fixed["settings"]["uncertainty_scale"] == 1.0 and fixed["settings"]["uncertainty_scale_fit"] is None
    # Routing never reads the uncertainty: the factor cannot change it.
    assert fitted["auc"]["routing"] == fixed["auc"]["routing"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"uncertainty_scale": -1.0}, "uncertainty_scale must be None"),
        ({"uncertainty_scale": float("inf")}, "uncertainty_scale must be None"),
        ({"max_depth": 0}, "max_depth must be an int >= 1 or None"),
        ({"max_depth": -2}, "max_depth must be an int >= 1 or None"),
        ({"max_depth": 2.5}, "max_depth must be an int >= 1 or None"),
    ],
)
def test_bad_scale_and_depth_settings_raise(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ProtocolSettings(**kwargs)  # type: ignore[arg-type]


def test_no_depth_limit_runs() -> None:
    result = run_protocol(load_routerbench(FIXTURE), ProtocolSettings(models=5, max_depth=None, **FAST),
                          methods=("cascade_routing",))
    assert result["settings"]["max_depth"] is None


def test_bootstrap_samples_on_request() -> None:
    table = load_routerbench(FIXTURE)
    settings = ProtocolSettings(models=3, **{**FAST, "n_bootstrap": 20})
    plain = run_protocol(table, settings, methods=("routing", "cascade_routing"))
    assert "samples" not in plain["ci"]
    full = run_protocol(table, settings, methods=("routing", "cascade_routing"), bootstrap_samples=True)
    assert {m: len(v) for m, v in full["ci"]["samples"].items()} == {"routing": 20, "cascade_routing": 20}
