"""RouteLLM's evaluations as tables the protocol reads: scores, answers and token-priced costs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from evaluation.routerbench import load_routerbench
from scripts import eval_routerbench_all, routellm_table

MIXTRAL, GPT4 = "mistralai/Mixtral-8x7B-Instruct-v0.1", "gpt-4-1106-preview"


def _write(path: Path, header: list[str], rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


def _routellm(root: Path, n: int = 40) -> Path:
    """A RouteLLM-shaped folder: GSM8K with answers, two MMLU subjects without."""
    rng = np.random.default_rng(0)
    gsm = [[f"Question {i}: what is {i} + {i}?\nThink step by step.", str(bool(rng.random() < 0.6)),
            str(bool(rng.random() < 0.85)), f"{i} + {i} = {2 * i}." * (1 + i % 3), f"The answer is {2 * i}."]
           for i in range(n)]
    _write(root / "gsm8k" / "gsm8k_responses.csv",
           ["prompt", MIXTRAL, GPT4, f"{MIXTRAL}_response", f"{GPT4}_response"], gsm)
    for subject in ("mmlu_anatomy", "mmlu_virology"):
        rows = [[f"{subject} question {i}\nA. a\nB. b\nC. c\nD. d\nAnswer:", str(i % 3 != 0), "True"]
                for i in range(n // 2)]
        _write(root / "mmlu" / "responses" / f"{subject}.csv", ["prompt", MIXTRAL, GPT4], rows)
    return root


def test_tables_load_with_scores_answers_and_token_priced_costs(tmp_path: Path) -> None:
    src = _routellm(tmp_path / "routellm")
    assert routellm_table.main(["--data", str(src), "--out", str(tmp_path / "out")]) == 0
    gsm = load_routerbench(tmp_path / "out" / "gsm8k.csv")
    assert gsm.models == ("mistralai/mixtral-8x7b-chat", "gpt-4-1106-preview")
    assert gsm.n_queries == 40 and gsm.cost_unit == "USD" and gsm.responses is not None
    with open(src / "gsm8k" / "gsm8k_responses.csv", newline="", encoding="utf-8") as fh:
        first = next(csv.DictReader(fh))
    assert gsm.quality[0].tolist() == [float(first[MIXTRAL] == "True"), float(first[GPT4] == "True")]
    prompt_tokens = -(-len(first["prompt"]) // 4)
    answer_tokens = -(-len(first[f"{GPT4}_response"]) // 4)
    assert gsm.cost[0, 1] == pytest.approx((prompt_tokens * 10.0 + answer_tokens * 30.0) / 1e6)
    mmlu = load_routerbench(tmp_path / "out" / "mmlu.csv")
    assert mmlu.n_queries == 40 and mmlu.responses is None
    assert set(mmlu.eval_names) == {"mmlu_anatomy", "mmlu_virology"}
    # A multiple-choice answer is one output token: the price ratio is the input one, plus that token.
    tokens = -(-len(mmlu.prompts[0]) // 4)
    assert mmlu.cost[0].tolist() == pytest.approx([(tokens * 0.6 + 0.6) / 1e6, (tokens * 10.0 + 30.0) / 1e6])


def test_missing_data_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert routellm_table.main(["--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "RouteLLM data not found" in err and len(err.strip().splitlines()) == 1


def test_a_non_boolean_score_names_file_and_row(tmp_path: Path) -> None:
    src = _routellm(tmp_path / "routellm", n=4)
    _write(src / "mmlu" / "responses" / "mmlu_anatomy.csv", ["prompt", MIXTRAL, GPT4], [["q", "True", "maybe"]])
    with pytest.raises(ValueError, match=r"mmlu_anatomy.csv: row 1: expected a boolean correctness, got 'maybe'"):
        routellm_table.main(["--data", str(src), "--out", str(tmp_path / "out")])


def test_the_sweep_runs_every_model_of_a_converted_table(tmp_path: Path) -> None:
    src = _routellm(tmp_path / "routellm", n=120)
    assert routellm_table.main(["--data", str(src), "--out", str(tmp_path / "tables")]) == 0
    argv = ["--data", str(tmp_path / "tables" / "gsm8k.csv"), "--models", "all", "--noise", "low", "--seeds", "0",
            "--test-sizes", "0.5", "--bootstrap", "20", "--per-segment", "2", "--jobs", "1",
            "--out", str(tmp_path / "r")]
    assert eval_routerbench_all.main(argv) == 0
    run = json.loads((tmp_path / "r" / "test0.5" / "all_low_s0.json").read_text())
    assert run["settings"]["models_used"] == ["mistralai/mixtral-8x7b-chat", "gpt-4-1106-preview"]
    assert "all models, low" in (tmp_path / "r" / "summary.md").read_text()
