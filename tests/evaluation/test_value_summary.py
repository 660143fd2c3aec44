"""The value summary: each arm's accuracy, cost against the reference arm, and paired differences."""

from __future__ import annotations

import numpy as np
import pytest

from evaluation.value_summary import value_summary


def _arms(n: int = 400, seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    strong = (rng.random(n) < 0.95).astype(float)
    # "cheap" is right on a random 70 % of the questions; "mixed" is strong's answer where cheap is wrong.
    cheap = (rng.random(n) < 0.7).astype(float)
    mixed = np.where(cheap == 1.0, 1.0, strong)
    quality = {"strong": strong, "cheap": cheap, "mixed": mixed}
    gpu_s = {"strong": np.full(n, 0.2), "cheap": np.full(n, 0.05), "mixed": np.where(cheap == 1.0, 0.05, 0.25)}
    return quality, gpu_s


def test_accuracy_cost_ratio_and_paired_differences() -> None:
    quality, gpu_s = _arms()
    s = value_summary(quality, gpu_s, reference="strong", n_resamples=500)
    assert s["n_questions"] == 400 and s["reference"] == "strong"
    mixed = s["arms"]["mixed"]
    assert mixed["accuracy"] == pytest.approx(quality["mixed"].mean())
    assert mixed["cost_vs_reference"] == pytest.approx(gpu_s["mixed"].mean() / 0.2)
    assert s["arms"]["strong"]["cost_vs_reference"] == pytest.approx(1.0)
    low, high = mixed["accuracy_ci"]
    assert low <= mixed["accuracy"] <= high
    # mixed is never below cheap on any question: the paired interval sits above 0 ...
    d = mixed["minus"]["cheap"]
    assert d["mean"] == pytest.approx(quality["mixed"].mean() - quality["cheap"].mean())
    assert d["low"] > 0
    # ... and antisymmetric
    back = s["arms"]["cheap"]["minus"]["mixed"]
    assert back["mean"] == pytest.approx(-d["mean"])
    assert back["high"] == pytest.approx(-d["low"])
    assert "mixed" not in mixed["minus"]


def test_pairing_makes_a_small_constant_gain_significant() -> None:
    # Two arms that differ on 3 % of 1000 questions, always in the same direction: unpaired intervals
    # would overlap; the paired difference excludes 0.
    rng = np.random.default_rng(1)
    base = (rng.random(1000) < 0.5).astype(float)
    better = base.copy()
    flip = np.flatnonzero(base == 0)[:30]
    better[flip] = 1.0
    s = value_summary({"a": base, "b": better}, {"a": np.ones(1000), "b": np.ones(1000)}, reference="a",
                      n_resamples=500)
    a, b = s["arms"]["a"], s["arms"]["b"]
    assert a["accuracy_ci"][1] > b["accuracy_ci"][0]  # the marginal CIs overlap
    assert b["minus"]["a"]["low"] > 0


def test_seeded() -> None:
    quality, gpu_s = _arms()
    assert value_summary(quality, gpu_s, reference="strong", seed=3) == value_summary(
        quality, gpu_s, reference="strong", seed=3)


@pytest.mark.parametrize(("quality", "gpu_s", "reference", "match"), [
    ({}, {}, "a", "no arms"),
    ({"a": [1.0]}, {"b": [1.0]}, "a", "gpu_s has"),
    ({"a": [1.0]}, {"a": [1.0]}, "b", "not one of the arms"),
    ({"a": [1.0, 0.0]}, {"a": [1.0]}, "a", "shape"),
    ({"a": [1.0, float("nan")]}, {"a": [1.0, 1.0]}, "a", "finite"),
])
def test_bad_input_is_a_clear_error(quality: dict, gpu_s: dict, reference: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        value_summary(quality, gpu_s, reference=reference)
