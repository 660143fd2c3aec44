"""``scripts/eval_toy_fleet.py`` beyond its live part: tasks, paired CIs, the offline run end to end
(fake in-process answers; no Ray, no vLLM, no training)."""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from scripts import eval_toy_fleet
from scripts.eval_toy_fleet import OFFLINE_GPU_S_PER_REQUEST, OFFLINE_GPU_S_PER_TOKEN, Task

_FLEET = """\
models:
{models}
cascade:
  policy: cascade_routing
  max_depth: 3
"""
_MODEL = """\
  - model_loading_config: {{model_id: {name}, model_source: .cache/fake/{name}}}
    accelerator_config: {{kind: cpu}}
    engine_kwargs: {{max_model_len: 128}}
"""
# Fake models: (answer tokens, share of people known); a model knows a person when a hash of the
# question falls under its share, and is sure of its answer exactly then.
_FAKE = {"fake-s": (5, 0.5), "fake-m": (14, 0.8), "fake-l": (29, 0.97)}


def _fake_evaluate(path: Path, rows: list[dict[str, Any]], *, grade: Any, max_new_tokens: int) -> list[dict[str, Any]]:
    tokens, known = _FAKE[path.name]
    out = []
    for row in rows:
        u = zlib.crc32(row["messages"][0]["content"].encode()) / 2**32
        right = u < known
        text = row["answer"] if right else str(int(row["answer"]) + 1)
        lp = -0.02 if right else -0.9 - 0.5 * u
        out.append({"id": row["id"], "task": row["task"], "text": text, "correct": grade(text, row["answer"]) == 1.0,
                    "token_logprobs": [lp] * tokens, "prompt_tokens": 40, "finish_reason": "stop"})
    return out


def test_tasks_name_their_fleet_files_and_disjoint_prompt_sets() -> None:
    tasks = eval_toy_fleet._tasks()
    assert set(tasks) == set(eval_toy_fleet.TASK_NAMES)
    assert tasks["recall"].fleet == Path("models.recall.yaml") and tasks["toy"].fleet == Path("models.toy.yaml")
    recall = tasks["recall"]
    cal = {r["messages"][0]["content"] for r in recall.calibration_prompts(400)}
    ev = {r["messages"][0]["content"] for r in recall.evaluation_prompts(200)}
    assert len(cal) == 400 and len(ev) == 200 and not cal & ev


def test_paired_cis_follow_a_uniform_gain_and_a_tie() -> None:
    rng = np.random.default_rng(0)
    n = 120
    single_q = (rng.random((n, 2)) < [0.5, 0.9]).astype(float)
    single_c = np.column_stack([np.full(n, 1.0), np.full(n, 4.0)])
    routing = {"quality": single_q.T.copy(), "cost": single_c.T.copy()}
    better = {"quality": np.vstack([single_q[:, 0], np.maximum(single_q[:, 0], single_q[:, 1]), single_q[:, 1]]),
              "cost": np.vstack([single_c[:, 0], np.full(n, 2.0), single_c[:, 1]])}
    ci = eval_toy_fleet.paired_cis({"routing": routing, "cascade_routing": better}, single_q, single_c, n_resamples=50)
    diff = ci["cascade_routing_minus"]["routing"]
    assert diff["low"] > 0 and diff["low"] <= diff["mean"] <= diff["high"]
    assert ci["n_resamples"] == 50
    tie = eval_toy_fleet.paired_cis({"routing": routing, "cascade_routing": routing}, single_q, single_c,
                                    n_resamples=20)
    assert tie["cascade_routing_minus"]["routing"] == {"mean": 0.0, "low": 0.0, "high": 0.0}


def test_offline_records_follow_the_cost_law_and_round_trip() -> None:
    from calibration.replay import ReplayRecord

    rows = [{"id": "q1", "answer": "1953"}, {"id": "q2", "answer": "1907"}]
    answers = {"m": [{"text": "1953", "token_logprobs": [-0.1] * 5, "prompt_tokens": 40, "finish_reason": "stop"},
                     {"text": "x", "token_logprobs": [-1.0] * 40, "prompt_tokens": 41, "finish_reason": "length"}]}
    records = eval_toy_fleet.offline_records(rows, answers, {"m": "fp"}, np.random.default_rng(0), noise=0.0)
    assert [r.prompt_id for r in records] == ["q1", "q2"]
    first = records[0].stage
    assert first is not None and first.completion_tokens == 5 and first.prompt_tokens == 40
    assert first.gpu_s == pytest.approx(OFFLINE_GPU_S_PER_REQUEST + 5 * OFFLINE_GPU_S_PER_TOKEN)
    assert records[1].stage is not None and records[1].stage.finish_reason == "length"
    assert ReplayRecord.from_json(records[0].to_json()) == records[0]
    noisy = eval_toy_fleet.offline_records(rows, answers, {"m": "fp"}, np.random.default_rng(0), noise=0.3)
    assert noisy[0].stage is not None and noisy[0].stage.gpu_s != first.gpu_s


def test_offline_run_writes_the_live_record_shape(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole offline protocol on three fake models: calibration from the written replay cache (no
    request sent), every policy scored, paired CIs, the estimators' AUCs, checks, JSON and plot."""
    import toymodels.training
    from toymodels.recall_fleet import recall_prompts

    fleet = tmp_path / "models.fake.yaml"
    fleet.write_text(_FLEET.format(models="".join(_MODEL.format(name=n) for n in _FAKE)))
    task = Task("recall", fleet, ".cache/fake", tmp_path / "cal", 40,
                lambda root, progress=None: {n: root / n for n in _FAKE},
                lambda n: recall_prompts(n, 0, split="calibration"), lambda n: recall_prompts(n, 1, split="evaluation"))
    monkeypatch.setattr(eval_toy_fleet, "_tasks", lambda: {"recall": task})
    monkeypatch.setattr(toymodels.training, "evaluate_model", _fake_evaluate)
    out = tmp_path / "offline.json"
    argv = ["--task", "recall", "--offline", "--json", str(out), "--calibration-prompts", "120", "--eval-prompts",
            "60", "--lambdas", "4", "--bootstrap", "30", "--offline-noise", "0.1"]
    assert eval_toy_fleet.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["task"] == "recall" and result["mode"] == "offline"
    assert list(result["models"]) == list(_FAKE)
    assert set(result["auc"]) == {"linear", *eval_toy_fleet.POLICIES}
    assert set(result["ci"]["cascade_routing_minus"]) == {"routing", "threshold_cascade", "optimal_cascade"}
    assert "cascade_routing_above_routing_ci_excludes_0" in result["checks"]
    # The fake questions hide who knows (a hash), the fake answers tell (their logprobs).
    s = result["estimators"]["fake-s"]
    assert s["post_hoc_auc"] > 0.9 and abs(s["ex_ante_auc"] - 0.5) < 0.25
    assert result["settings"]["offline"]["gpu_s_per_token"] == OFFLINE_GPU_S_PER_TOKEN
    assert (tmp_path / "offline.png").exists()
    assert (tmp_path / "cal" / "calibration.json").exists()


def test_offline_refuses_reuse_replay(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        eval_toy_fleet.main(["--task", "recall", "--offline", "--reuse-replay", "--json", str(tmp_path / "x.json")])


@pytest.mark.parametrize("flag", ["--eval-prompts", "--calibration-prompts"])
def test_recall_prompt_sets_cannot_exceed_their_people(tmp_path: Path, flag: str) -> None:
    """More recall questions than people would repeat people: refused before anything is built."""
    with pytest.raises(SystemExit):
        eval_toy_fleet.main(["--task", "recall", "--offline", flag, "401", "--json", str(tmp_path / "x.json")])
