"""The recall fleet's table, prompts, tokenizer and build (tiny specs, a few training steps; no vLLM)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from calibration.graders import numeric_match
from cluster.config import FleetConfig
from toymodels import recall_fleet
from toymodels.recall_fleet import (
    MAX_ANSWER_TOKENS,
    N_EVALUATION_KEYS,
    N_KEYS,
    PHRASINGS,
    POPULARITY_SPAN,
    RECALL_FLEET,
    RecallSpec,
    build_recall_fleet,
    build_recall_model,
    evaluate_recall_model,
    question_key,
    recall_answer,
    recall_prompts,
    recall_table,
)
from toymodels.training import render_prompt

REPO = Path(__file__).resolve().parents[2]
# A model small enough to train in well under a second; head_dim 32 as vLLM's CPU backend needs.
TINY = RecallSpec(hidden=32, layers=1, heads=1, kv_heads=1, ffn=32, steps=3, batch=4, warmup=1, seed=7)


@pytest.fixture(scope="module")
def tokenizer() -> object:
    return recall_fleet._tokenizer()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_recall_model(tmp_path_factory.mktemp("recall") / "tiny", TINY)


def _question(row: dict[str, object]) -> str:
    return row["messages"][0]["content"]  # type: ignore[index, no-any-return]


# ----------------------------------------------------------------------------- the table


def test_table_is_fixed_and_well_formed() -> None:
    table = recall_table()
    assert table == recall_fleet.recall_table.__wrapped__()  # recomputed from scratch: the same table
    assert len(table.keys) == len(set(table.keys)) == N_KEYS
    assert all(1800 <= y <= 1999 for y in table.years)
    assert 0.6 < np.mean([y >= 1900 for y in table.years]) < 0.9  # three in four in the 1900s
    assert min(table.popularity) >= 1 / POPULARITY_SPAN and max(table.popularity) <= 1.0
    assert sum(table.evaluation) == N_EVALUATION_KEYS
    assert table.keys[:3] == ("Kugi Teke", "Voti Rume", "Bosi Tera")  # pinned: the models are trained on it


def test_names_are_whole_words_of_letters() -> None:
    """Two capitalised words of two consonant-vowel syllables: no digit for the numeric grader to read,
    no name inside another (each is one token, matched verbatim), none inside a phrasing."""
    table = recall_table()
    for key in table.keys:
        first, last = key.split(" ")
        assert len(first) == len(last) == 4 and first.istitle() and last.istitle() and key.isascii()
        assert not any(ch.isdigit() for ch in key)
    assert not any(key in p for key in table.keys for p in PHRASINGS)


def test_splits_partition_the_table_and_share_its_popularity() -> None:
    table = recall_table()
    cal, ev = table.split_indices("calibration"), table.split_indices("evaluation")
    assert sorted(cal + ev) == list(range(N_KEYS)) and not set(cal) & set(ev)
    pop = np.asarray(table.popularity)
    # Drawn independently: the splits' mean popularities agree within sampling error (sd about 0.02).
    assert abs(pop[cal].mean() - pop[ev].mean()) < 0.06
    with pytest.raises(ValueError, match="split"):
        table.split_indices("test")  # type: ignore[arg-type]


def test_question_features_do_not_tell_popularity() -> None:
    """A character n-gram probe fitted on calibration questions predicts, on evaluation questions,
    whether a person is more popular than the median no better than chance; the same probe does
    find a property that the name shows (its first letter), so it has the power to see a leak.

    The table is fixed, so the AUCs are too (0.51 and 0.80); the bands are three standard errors of an
    AUC on 200 questions (about 0.04) either side of chance.
    """
    from sklearn.feature_extraction.text import HashingVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    table = recall_table()
    pop = np.asarray(table.popularity)
    cal = recall_prompts(400, 0, split="calibration")
    ev = recall_prompts(N_EVALUATION_KEYS, 1, split="evaluation")
    vec = HashingVectorizer(analyzer="char_wb", ngram_range=(2, 5), n_features=2**16, alternate_sign=False)

    def probe_auc(label: object) -> float:
        yc = np.array([label(question_key(_question(r))) for r in cal])  # type: ignore[operator]
        ye = np.array([label(question_key(_question(r))) for r in ev])  # type: ignore[operator]
        clf = LogisticRegression(max_iter=2000).fit(vec.transform([_question(r) for r in cal]), yc)
        return float(roc_auc_score(ye, clf.predict_proba(vec.transform([_question(r) for r in ev]))[:, 1]))

    assert abs(probe_auc(lambda k: pop[k] > np.median(pop)) - 0.5) < 0.12
    assert probe_auc(lambda k: table.keys[k][0] < "M") > 0.7


# ----------------------------------------------------------------------------- prompts


def test_prompts_are_deterministic_in_the_seed_and_prefix_stable() -> None:
    assert recall_prompts(50, 3) == recall_prompts(50, 3)
    assert recall_prompts(50, 3) != recall_prompts(50, 4)
    assert recall_prompts(20, 3) == recall_prompts(450, 3)[:20]
    assert recall_prompts(0, 3) == []
    with pytest.raises(ValueError, match="n must be"):
        recall_prompts(-1, 0)


def test_prompt_rows_have_the_calibration_format_and_the_table_answer() -> None:
    table = recall_table()
    rows = recall_prompts(300, 0, split="calibration")
    assert [r["id"] for r in rows] == [f"recall-calibration-{i:06d}" for i in range(300)]
    for row in rows:
        assert set(row) == {"id", "messages", "answer", "grader", "task", "max_tokens"}
        assert row["grader"] == "numeric" and row["task"] == "recall" and row["max_tokens"] == MAX_ANSWER_TOKENS
        assert len(row["messages"]) == 1 and row["messages"][0]["role"] == "user"
        k = question_key(_question(row))
        assert row["answer"] == str(table.years[k])
    assert {_question(r).replace(table.keys[question_key(_question(r))], "{k}") for r in rows} == set(PHRASINGS)


def test_calibration_and_evaluation_prompts_ask_about_disjoint_people() -> None:
    """Whatever the seeds and sizes (repeats included), no person is asked about in both sets."""
    table = recall_table()
    for seed in range(3):
        cal = {question_key(_question(r)) for r in recall_prompts(900, seed, split="calibration")}
        ev = {question_key(_question(r)) for r in recall_prompts(500, seed + 1, split="evaluation")}
        assert cal == set(table.split_indices("calibration"))
        assert ev == set(table.split_indices("evaluation"))
        assert not cal & ev


def test_each_person_once_before_any_repeat() -> None:
    rows = recall_prompts(N_EVALUATION_KEYS + 10, 2, split="evaluation")
    people = [question_key(_question(r)) for r in rows]
    assert len(set(people[:N_EVALUATION_KEYS])) == N_EVALUATION_KEYS
    assert set(people[N_EVALUATION_KEYS:]) <= set(people[:N_EVALUATION_KEYS])


def test_question_key_reads_every_phrasing_and_refuses_strangers() -> None:
    table = recall_table()
    for i in (0, 17, N_KEYS - 1):
        for p in PHRASINGS:
            assert question_key(p.format(k=table.keys[i])) == i
    with pytest.raises(ValueError, match="not a recall question"):
        question_key("When was Nobody Atall born?")
    with pytest.raises(ValueError, match="not a recall question"):
        question_key("What is 2+2?")


@pytest.mark.parametrize(("style", "text"), [
    ("direct", "1953"), ("short", "Born in 1953."), ("sentence", "Bako Rimu was born in the year 1953."),
])
def test_answer_styles_and_the_grader_reads_the_year(style: str, text: str) -> None:
    assert recall_answer("Bako Rimu", 1953, style) == text  # type: ignore[arg-type]
    assert numeric_match(text, "1953") == 1.0
    assert numeric_match(text, "1954") == 0.0


def test_unknown_style_is_refused() -> None:
    with pytest.raises(ValueError, match="style"):
        recall_answer("Bako Rimu", 1953, "essay")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="style"):
        RecallSpec(style="essay")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- tokenizer


def test_every_name_is_one_token_and_text_round_trips(tokenizer: object) -> None:
    table = recall_table()
    for key in table.keys[:50]:
        assert len(tokenizer(key, add_special_tokens=False)["input_ids"]) == 1  # type: ignore[operator]
    text = recall_answer(table.keys[3], table.years[3], "sentence") + " héllo ✓"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]  # type: ignore[operator]
    assert tokenizer.decode(ids) == text  # type: ignore[attr-defined]


def test_prompt_rows_render_to_the_training_prefix(tokenizer: object) -> None:
    """Training renders prompts itself; they must be what vLLM renders with add_generation_prompt=True."""
    for row in recall_prompts(30, 2):
        rendered = tokenizer.apply_chat_template(  # type: ignore[attr-defined]
            row["messages"], tokenize=False, add_generation_prompt=True
        )
        assert rendered == render_prompt(_question(row))


@pytest.mark.parametrize("style", ["direct", "short", "sentence"])
def test_training_example_scores_the_answer_and_end_of_turn_only(tokenizer: object, style: str) -> None:
    table = recall_table()
    ids, labels = recall_fleet._batch(tokenizer, [5, 9], [0, 2], style)  # type: ignore[arg-type]
    messages = [{"role": "user", "content": PHRASINGS[0].format(k=table.keys[5])}]
    prompt = tokenizer.apply_chat_template(  # type: ignore[attr-defined]
        messages, tokenize=True, add_generation_prompt=True, return_dict=False
    )
    assert ids[0, : len(prompt)].tolist() == prompt
    scored = labels[0][labels[0] != -100].tolist()
    answer = recall_answer(table.keys[5], table.years[5], style)  # type: ignore[arg-type]
    assert tokenizer.decode(scored) == answer + "<|im_end|>"  # type: ignore[attr-defined]


def test_longest_answer_fits_the_token_budget_and_the_context(tokenizer: object) -> None:
    table = recall_table()
    longest = max(len(tokenizer(recall_answer(k, 1999, "sentence") + "<|im_end|>",  # type: ignore[operator]
                                add_special_tokens=False)["input_ids"]) for k in table.keys[:20])
    assert longest == 29 <= MAX_ANSWER_TOKENS
    prompt = render_prompt(PHRASINGS[1].format(k=table.keys[0]))
    prompt_tokens = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])  # type: ignore[operator]
    assert prompt_tokens + MAX_ANSWER_TOKENS <= RecallSpec().max_positions


# ----------------------------------------------------------------------------- specs and builds


def test_spec_validation_and_fingerprints() -> None:
    with pytest.raises(ValueError, match="head_dim"):
        RecallSpec(hidden=48, heads=1)
    with pytest.raises(ValueError, match="steps"):
        RecallSpec(steps=0)
    assert RecallSpec(seed=1).fingerprint != RecallSpec(seed=2).fingerprint
    assert RecallSpec().fingerprint != RecallSpec(style="sentence").fingerprint
    assert RecallSpec().fingerprint == RecallSpec().fingerprint


def test_fleet_is_ordered_by_knowledge_and_answer_length() -> None:
    assert list(RECALL_FLEET) == ["recall-s", "recall-m", "recall-l"]
    specs = list(RECALL_FLEET.values())
    assert [s.style for s in specs] == ["direct", "short", "sentence"]
    assert [s.steps for s in specs] == sorted(s.steps for s in specs)


def test_build_writes_a_loadable_bf16_model(tiny_model: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert model.dtype == torch.bfloat16
    assert model.config.vocab_size == len(tok) == 3 + 256 + N_KEYS
    assert tok.eos_token_id == model.config.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    key = recall_table().keys[0]
    assert tok.convert_ids_to_tokens(tok(key, add_special_tokens=False)["input_ids"]) == [key]
    marker = json.loads((tiny_model / recall_fleet._MARKER).read_text())
    assert marker["fingerprint"] == TINY.fingerprint and marker["train_s"] >= 0


def test_build_is_reused_for_the_same_spec_and_redone_for_another(tmp_path: Path) -> None:
    out = build_recall_model(tmp_path / "m", TINY)
    weights = out / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert build_recall_model(out, TINY) == out
    assert weights.stat().st_mtime_ns == before
    other = RecallSpec(**{**TINY.__dict__, "style": "sentence"})
    build_recall_model(out, other)
    assert json.loads((out / recall_fleet._MARKER).read_text())["fingerprint"] == other.fingerprint
    assert weights.stat().st_mtime_ns != before


def test_build_is_deterministic(tmp_path: Path, tiny_model: Path) -> None:
    again = build_recall_model(tmp_path / "again", TINY)
    assert (again / "model.safetensors").read_bytes() == (tiny_model / "model.safetensors").read_bytes()


def test_fleet_build_in_process_with_progress_then_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rich.console import Console
    from rich.progress import Progress

    fleet = {"a": TINY, "b": RecallSpec(**{**TINY.__dict__, "seed": 8, "style": "short"})}
    monkeypatch.setattr(recall_fleet, "RECALL_FLEET", fleet)
    with Progress(console=Console(file=io.StringIO())) as bar:
        paths = build_recall_fleet(tmp_path, progress=bar, jobs=1)
        assert [t.completed for t in bar.tasks] == [3, 3]
    assert paths == {"a": tmp_path / "a", "b": tmp_path / "b"}
    assert all(recall_fleet._is_built(paths[n], fleet[n]) for n in fleet)
    with Progress(console=Console(file=io.StringIO())) as bar:
        assert build_recall_fleet(tmp_path, progress=bar, jobs=2) == paths
        assert not bar.tasks  # nothing left to train


def test_evaluate_returns_graded_answers_with_logprobs(tiny_model: Path) -> None:
    rows = recall_prompts(6, 0)
    results = evaluate_recall_model(tiny_model, rows, grade=numeric_match, max_new_tokens=3)
    assert [r["id"] for r in results] == [r["id"] for r in rows]
    for r in results:
        assert isinstance(r["correct"], bool) and isinstance(r["text"], str)
        assert 1 <= len(r["token_logprobs"]) <= 3 and all(lp <= 0.0 for lp in r["token_logprobs"])
        assert r["finish_reason"] in ("stop", "length") and r["prompt_tokens"] > 10


def test_models_build_recall_command_builds_and_reports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from cascade_serve.main import main

    monkeypatch.setattr(recall_fleet, "RECALL_FLEET", {"a": TINY})
    assert main(["models", "build", "--recall", "--out", str(tmp_path), "--eval", "8", "--jobs", "1"]) == 0
    out = capsys.readouterr().out
    assert "recall fleet: 8 evaluation-split questions" in out and "│ a " in out
    assert recall_fleet._is_built(tmp_path / "a", TINY)
    with pytest.raises(SystemExit):
        main(["models", "build", "--recall", "--toy"])  # one fleet at a time


def test_models_recall_yaml_matches_the_fleet() -> None:
    fleet = FleetConfig.from_file(REPO / "models.recall.yaml")
    assert fleet.model_ids == list(RECALL_FLEET)
    cpus = 0.0
    for model in fleet.models:
        spec = RECALL_FLEET[model.model_id]
        assert str(model.model_loading_config.model_source).endswith(f".cache/recall/{model.model_id}")
        assert model.engine_kwargs["max_model_len"] <= spec.max_positions
        assert model.placement_group_config is not None
        cpus += sum(b["CPU"] for b in model.placement_group_config["bundles"])
    assert cpus + 1 <= 2  # the engines' bundles and the 1-CPU ingress fit Ray's 2 logical CPUs
