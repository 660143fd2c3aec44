"""``cascade demo``: its options, how replies are scored, and the one-screen summary (no Ray here;
the real-stack run is ``test_value_demo_e2e.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console

from cascade_serve import value_demo as vd
from cascade_serve.main import main


@pytest.mark.parametrize(("argv", "match"), [
    (["demo", "--questions", "0"], "--questions must be between 1 and 200"),
    (["demo", "--questions", "201"], "--questions must be between 1 and 200"),
    (["demo", "--budget", "lots"], "--budget must be GPU-seconds per query"),
    (["demo", "--budget=-5%"], "--budget must be positive"),
    (["demo", "--concurrency", "0"], "--concurrency must be at least 1"),
    (["demo", "--tiny", "--toy"], "two different demos"),
])
def test_bad_options_are_one_line_and_exit_2_before_anything_starts(
        argv: list[str], match: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1 and err.startswith("cascade: error: ")


def _cascade_reply(text: str, stages: list[tuple[str, str, float, float]]) -> dict[str, Any]:
    return {"choices": [{"message": {"content": text}}], "cascade": {
        "total_gpu_ms": sum(s[2] for s in stages),
        "stages": [{"model": m, "decision": d, "gpu_ms": g, "quality_estimate": 0.5, "quality_post_hoc": q}
                   for m, d, g, q in stages]}}


def _direct_reply(text: str, ttft_ms: float, gen_ms: float) -> dict[str, Any]:
    return {"choices": [{"message": {"content": text}}],
            "metrics": {"time_to_first_token_ms": ttft_ms, "generation_time_ms": gen_ms}}


def test_replies_are_checked_and_billed_as_the_controller_bills_them() -> None:
    rows = [{"answer": "1953", "messages": [{"role": "user", "content": "When was A born?"}]},
            {"answer": "1807", "messages": [{"role": "user", "content": "When was B born?"}]}]
    replies = {
        vd.STRONGEST: [_direct_reply("A was born in the year 1953.", 20.0, 180.0), _direct_reply("1806", 20.0, 80.0)],
        vd.CASCADE: [_cascade_reply("1953", [("s", "accept", 30.0, 0.9)]),
                     _cascade_reply("Born in 1807.", [("s", "escalate", 30.0, 0.1), ("m", "accept", 70.0, 0.8)])],
    }
    quality, gpu_s = vd._score(rows, replies)
    np.testing.assert_array_equal(quality[vd.STRONGEST], [1.0, 0.0])
    np.testing.assert_array_equal(quality[vd.CASCADE], [1.0, 1.0])
    np.testing.assert_allclose(gpu_s[vd.STRONGEST], [0.2, 0.1])
    np.testing.assert_allclose(gpu_s[vd.CASCADE], [0.03, 0.1])


def _measured(cascade_right: list[float], routing_right: list[float]) -> vd._Measured:
    n = len(cascade_right)
    rows = [{"answer": "1900", "messages": [{"role": "user", "content": f"When was Person {i} born?"}]}
            for i in range(n)]
    cascade = [_cascade_reply("1900", [("recall-s", "accept", 30.0, 0.95)]) if i % 2 else
               _cascade_reply("1900", [("recall-s", "escalate", 30.0, 0.05), ("recall-l", "accept", 200.0, 0.9)])
               for i in range(n)]
    replies = {vd.STRONGEST: [_direct_reply("1900", 10.0, 190.0)] * n, vd.ROUTING: [{}] * n, vd.CASCADE: cascade}
    quality = {vd.STRONGEST: np.ones(n), vd.ROUTING: np.array(routing_right), vd.CASCADE: np.array(cascade_right)}
    gpu_s = {vd.STRONGEST: np.full(n, 0.2), vd.ROUTING: np.full(n, 0.06), vd.CASCADE: np.full(n, 0.1)}
    calibration = {"budget": {"policy": "cascade_routing", "candidates": ["routing", "cascade_routing"]},
                   "per_model": {"recall-s": {"accuracy": 0.7, "gpu_s_per_query": 0.03},
                                 "recall-l": {"accuracy": 0.98, "gpu_s_per_query": 0.1}},
                   "prompts": {}, "uncertainty_scale": 0.0}
    return vd._Measured(calibration, "recall-l", 0.05, {vd.ROUTING: 6.7, vd.CASCADE: 4.1}, rows, replies, quality,
                        gpu_s, {"build": 0.0})


def _screen(m: vd._Measured, tmp_path: Path) -> tuple[dict[str, Any], str]:
    summary = vd._summarise(m, vd.DemoOptions(fleet_file=Path("models.recall.yaml")))
    console = Console(record=True, width=80)
    vd._print(console, summary, m)
    vd._plot(summary, m, tmp_path / "value.png")
    assert (tmp_path / "value.png").stat().st_size > 0
    return summary, console.export_text()


def test_the_summary_fits_80_columns_and_says_what_the_paired_ci_supports(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    routing = (rng.random(200) < 0.75).astype(float)
    summary, text = _screen(_measured(list(np.maximum(routing, rng.random(200) < 0.6)), list(routing)), tmp_path)
    assert "…" not in text  # nothing cut
    assert all(len(line) <= 80 for line in text.splitlines())
    assert "recall-l alone" in text and "cascade routing" in text
    assert "above routing at the same budget (paired 95% CI excludes 0)" in text
    assert "served" not in text or "cascade_routing" in text
    # the examples show one answer accepted from the first model and an escalation
    assert "recall-s: accept" in text and "recall-s: escalate" in text and "recall-l: accept" in text
    assert summary["arms"][vd.CASCADE]["cost_vs_reference"] == pytest.approx(0.5)


def test_a_difference_within_noise_is_called_so(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    same = list((rng.random(40) < 0.8).astype(float))
    flipped = same.copy()
    flipped[0] = 1.0 - flipped[0]
    _, text = _screen(_measured(flipped, same), tmp_path)
    assert "(within noise)" in text and "excludes 0" not in text
