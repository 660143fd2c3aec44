"""Smoke tests of the scripts on tiny inputs (each script's entry point, end to end)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from scripts import bench_cost_floor, bench_routing, eval_routerbench_all

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "routerbench_tiny"


def test_bench_routing_writes_the_documented_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    assert bench_routing.main(["--models", "3,5", "--queries", "200", "--states", "12", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["decision_us"]) == {"3", "5"}
    for k in ("3", "5"):
        d = result["decision_us"][k]
        assert 0 < d["median"] <= d["p99"]
        assert d["n"] >= 12
        assert result["fit_s_per_budget"][k] > 0
        # The fitted policy keeps roughly to its budget on held-out queries.
        assert d["test_cost_over_budget"] < 1.5


def test_eval_routerbench_all_writes_summary(tmp_path: Path) -> None:
    """Per-run JSON and PNG under test<size>/, seed means with paired CIs, and a rerun reads runs back."""
    argv = ["--data", str(FIXTURE), "--models", "3", "--noise", "low", "--seeds", "0-1", "--test-sizes", "0.5",
            "--bootstrap", "20", "--per-segment", "2", "--jobs", "1", "--out", str(tmp_path)]
    assert eval_routerbench_all.main(argv) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary) == {"0.5"} and set(summary["0.5"]) == {"3_low"}
    s = summary["0.5"]["3_low"]
    assert s["seeds"] == [0, 1] and len(s["uncertainty_scales"]) == 2
    ci = s["cr_minus_routing_ci"]
    assert ci["low"] <= ci["high"]
    assert "cascade routing" in (tmp_path / "summary.md").read_text()
    assert (tmp_path / "test0.5" / "3_low_s1.png").exists()
    # Runs on disk are read back, not recomputed.
    (tmp_path / "test0.5" / "3_low_s1.png").unlink()
    assert eval_routerbench_all.main(argv) == 0
    assert not (tmp_path / "test0.5" / "3_low_s1.png").exists()


def test_eval_routerbench_all_passes_the_calibration_shrinkage_on(tmp_path: Path) -> None:
    argv = ["--data", str(FIXTURE), "--models", "3", "--noise", "high", "--seeds", "0", "--test-sizes", "0.5",
            "--bootstrap", "20", "--per-segment", "2", "--jobs", "1"]
    runs = {}
    for shrinkage in ("pooled", "none"):
        out = tmp_path / shrinkage
        assert eval_routerbench_all.main([*argv, "--out", str(out), "--calibration-shrinkage", shrinkage]) == 0
        runs[shrinkage] = json.loads((out / "test0.5" / "3_high_s0.json").read_text())
        assert runs[shrinkage]["settings"]["calibration_shrinkage"] == shrinkage
    assert runs["pooled"]["points"]["cascade_routing"] != runs["none"]["points"]["cascade_routing"]


def test_seed_mean_ci_averages_each_resample_over_seeds() -> None:
    def run(seed: int, cr: list[float], rout: list[float]) -> dict[str, object]:
        auc = {"linear": 80.0, "routing": float(np.mean(rout)), "cascade_routing": float(np.mean(cr))}
        diff = {"low": min(rout) - max(cr), "high": max(rout) - min(cr), "mean": 0.0}
        return {"auc": auc, "settings": {"seed": seed, "uncertainty_scale": 0.1, "total_s": 1.0},
                "ci": {"diff_vs_cascade_routing": {"routing": diff},
                       "samples": {"routing": rout, "cascade_routing": cr}}}

    s = eval_routerbench_all.seed_mean_summary([run(0, [91.0, 92.0, 93.0], [90.0, 90.0, 90.0]),
                                                run(1, [89.0, 90.0, 91.0], [90.0, 90.0, 90.0])])
    assert s["cr_minus_routing"] == pytest.approx(1.0)
    # Resample b's seed-mean difference is mean(cr_b) - mean(rout_b): 0, 1, 2.
    assert s["cr_minus_routing_ci"]["low"] == pytest.approx(0.05)
    assert s["cr_minus_routing_ci"]["high"] == pytest.approx(1.95)
    assert s["cascade_routing_first"]


def _result(diff_low: float, diff_high: float) -> dict[str, object]:
    auc = {"cascade_routing": 90.0, "routing": 89.0, "optimal_cascade": 90.0 + (diff_low + diff_high) / 2}
    diff = {"mean": (diff_low + diff_high) / 2, "low": diff_low, "high": diff_high}
    return {
        "auc": auc,
        "ci": {"diff_vs_cascade_routing": {"routing": {"mean": -1, "low": -2, "high": -0.5}, "optimal_cascade": diff}},
    }


def test_at_least_ties_follows_the_paired_ci() -> None:
    assert eval_routerbench_all.at_least_ties(_result(-0.5, -0.1))  # significantly below CR
    assert eval_routerbench_all.at_least_ties(_result(-0.1, 0.3))  # CI spans 0: a tie
    assert not eval_routerbench_all.at_least_ties(_result(0.1, 0.4))  # significantly above CR


def _curve(points: list[tuple[float, float]]) -> list[dict[str, float]]:
    return [{"lambda": float(i), "cost": c, "quality": q} for i, (c, q) in enumerate(points)]


def test_eval_toy_fleet_summary_ranks_policies_and_checks_single_models() -> None:
    from scripts.eval_toy_fleet import summarize

    single = {m: {"cost": c, "quality": q} for m, c, q in [("a", 1.0, 0.2), ("b", 2.0, 0.6), ("c", 4.0, 0.9)]}
    curves = {
        "routing": _curve([(1.0, 0.2), (2.0, 0.6), (4.0, 0.9)]),
        "threshold_cascade": _curve([(1.0, 0.2), (3.0, 0.5), (4.5, 0.9)]),
        "optimal_cascade": _curve([(1.0, 0.2), (2.0, 0.7), (4.0, 0.9)]),
        "cascade_routing": _curve([(1.0, 0.2), (1.8, 0.7), (3.0, 0.92)]),
    }
    auc, checks, points, bounds = summarize(single, curves)
    assert bounds["x_min"] == 1.0 and bounds["x_max"] == 4.0
    assert auc["cascade_routing"] > auc["optimal_cascade"] > auc["routing"] > auc["threshold_cascade"]
    assert all(checks.values())
    assert points["single_models"]["model"] == ["a", "b", "c"] and points["routing"]["cost"] == [1.0, 2.0, 4.0]

    # A model well above the cascade routing curve at its cost fails the check.
    above = {**single, "b": {"cost": 2.0, "quality": 0.85}}
    _, checks, _, _ = summarize(above, curves)
    assert not checks["single_models_on_or_below_cascade_routing"]
    # So does cascade routing below routing.
    worse = {**curves, "cascade_routing": _curve([(1.0, 0.2), (3.0, 0.5), (4.0, 0.9)])}
    _, checks, _, _ = summarize(single, worse)
    assert not checks["cascade_routing_above_routing"]


def test_eval_toy_fleet_picks_the_best_lambda_within_each_budget() -> None:
    from scripts.eval_toy_fleet import _pick_lambdas

    curve = [{"lambda": lam, "cost": c, "quality": q}
             for lam, c, q in [(0.0, 5.0, 0.9), (0.1, 5.0, 0.9), (0.2, 4.0, 0.9), (0.5, 3.0, 0.7), (1.0, 1.0, 0.2)]]
    # 4.5 and 6 both buy the 0.9 at cost 4 (lambda 0.2, run once); 0.5 is below every point: the cheapest.
    assert _pick_lambdas(curve, [0.5, 1.0, 3.5, 4.5, 6.0]) == [1.0, 0.5, 0.2]
    assert _pick_lambdas(curve, [2.0]) == [1.0]


def test_cost_floor_is_the_leave_one_out_error_of_the_median() -> None:
    stats = bench_cost_floor.floor_stats([0.1, 0.1, 0.1, 0.2])
    # Each 0.1 is predicted by the median of the others (0.1): no error; the 0.2 by 0.1: 50 %.
    assert stats["floor_mape_pct"] == pytest.approx(12.5)
    assert stats["p50_ms"] == pytest.approx(100.0)
    assert bench_cost_floor.floor_stats([0.05] * 5)["floor_mape_pct"] == 0.0
    with pytest.raises(ValueError, match="at least 3"):
        bench_cost_floor.floor_stats([0.1, 0.2])


def test_engine_time_is_prefill_plus_decode_and_refuses_responses_without_metrics() -> None:
    response = {"metrics": {"time_to_first_token_ms": 12.0, "generation_time_ms": 30.0, "queue_time_ms": 500.0}}
    assert bench_cost_floor.engine_s(response) == pytest.approx(0.042)
    with pytest.raises(ValueError, match="no engine metrics"):
        bench_cost_floor.engine_s({"choices": []})


def test_bench_load_level_counts_accepted_shed_and_other_answers() -> None:
    """One load level against a stdlib endpoint that serves one request in three, sheds one (503
    ``overloaded``) and fails one: the counts, rates and latencies the benchmark reports."""
    import asyncio
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from itertools import count

    from scripts import bench_load

    turn = count()

    class Endpoint(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            kind = next(turn) % 3
            status, body = [(200, {"choices": []}), (503, {"error": {"code": "overloaded"}}),
                             (500, {"error": {"code": 500}})][kind]
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            if status == 503:
                self.send_header("Retry-After", "1")
            self.end_headers()
            self.wfile.write(payload)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Endpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        level = asyncio.run(bench_load._level(f"http://127.0.0.1:{server.server_address[1]}", 2, 0.5, 4))
    finally:
        server.shutdown()
        server.server_close()
    assert level["requests"] == level["accepted"] + level["shed"] + sum(level["other"].values()) > 3
    assert level["accepted"] > 0 and level["shed"] > 0 and set(level["other"]) == {"500"}
    assert level["retry_after"] == ["1"] and 0 < level["shed_rate"] < 1
    assert level["accepted_p50_ms"] <= level["accepted_p99_ms"]


def test_eval_routerbench_all_offers_exactly_the_protocols_calibration_choices(
        capsys: pytest.CaptureFixture[str]) -> None:
    """Its choices are listed literally (the module imports the protocol lazily); the refusal names them all."""
    from evaluation.simulated import SHRINKAGE

    with pytest.raises(SystemExit):
        eval_routerbench_all.main(["--calibration-shrinkage", "ridge"])
    listed = capsys.readouterr().err.split("choose from", 1)[1]
    assert sorted(c.strip(" '\n)") for c in listed.split(",")) == sorted(SHRINKAGE)
