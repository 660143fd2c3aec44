"""Smoke test of scripts.bench_small_validation on the tiny RouterBench fixture."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scripts import bench_small_validation

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "routerbench_tiny"


def test_test_size_leaves_exactly_the_asked_validation_rows() -> None:
    from sklearn.model_selection import train_test_split

    for n, n_val in ((3164, 20), (3164, 48), (120, 10)):
        val, _ = train_test_split(list(range(n)), test_size=bench_small_validation.test_size_for(n, n_val),
                                  random_state=42)
        assert len(val) == n_val
    assert bench_small_validation.test_size_for(3164, 0) == 0.95
    with pytest.raises(ValueError, match="n_validation"):
        bench_small_validation.test_size_for(100, 1)


def test_writes_runs_and_a_summary_per_variant(tmp_path: Path) -> None:
    out, cache = tmp_path / "sv.json", tmp_path / "sv.jsonl"
    argv = ["--data", str(FIXTURE), "--models", "3", "--n-validation", "20", "--seeds", "0",
            "--variants", "current:0:none,fix:1.645:empirical_bayes", "--per-segment", "3",
            "--json", str(out), "--cache", str(cache)]
    assert bench_small_validation.main(argv) == 0
    result = json.loads(out.read_text())
    assert {(r["variant"], r["method"]) for r in result["summary"]} == {
        (v, m) for v in ("current", "fix") for m in ("routing", "cascade_routing")}
    for row in result["summary"]:
        assert row["n_validation"] == 20 and row["cost_over_budget_max"] > 0
    assert [r["auc_diff_vs_first"] for r in result["summary"] if r["variant"] == "current"] == [0.0, 0.0]
    # A rerun reads the cached runs back.
    assert bench_small_validation.main([*argv, "--cached-only"]) == 0
    assert len(cache.read_text().splitlines()) == 2
