"""The toy fleet's task, tokenizer and build (tiny specs, a few training steps; no vLLM)."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest

from calibration.graders import numeric_match
from cluster.config import FleetConfig
from toymodels import toy_fleet
from toymodels.toy_fleet import (
    TOY_FLEET,
    ToySpec,
    build_toy_fleet,
    build_toy_model,
    evaluate_toy_model,
    render_prompt,
    toy_answer,
    toy_prompts,
    write_prompts_jsonl,
)

REPO = Path(__file__).resolve().parents[2]
# A model small enough to train in well under a second; head_dim 32 as vLLM's CPU backend needs.
TINY = ToySpec(hidden=32, layers=1, heads=1, kv_heads=1, ffn=32, steps=3, batch=4, warmup=1, seed=7)
_QUESTION = re.compile(r"^(?:What is (\d+)\+(\d+)\?|Compute (\d+) \+ (\d+)\.|(\d+)\+(\d+)=\?)$")


def _operands(row: dict[str, object]) -> tuple[int, int]:
    content = row["messages"][0]["content"]  # type: ignore[index]
    match = _QUESTION.match(content)
    assert match, content
    a, b = (int(g) for g in match.groups() if g is not None)
    return a, b


@pytest.fixture(scope="module")
def tokenizer() -> object:
    return toy_fleet._make_tokenizer()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_toy_model(tmp_path_factory.mktemp("toy") / "tiny", TINY)


def test_prompts_are_deterministic_in_the_seed() -> None:
    assert toy_prompts(50, 3) == toy_prompts(50, 3)
    assert toy_prompts(50, 3) != toy_prompts(50, 4)
    assert toy_prompts(20, 3) == toy_prompts(50, 3)[:20]
    assert toy_prompts(0, 3) == []


def test_prompt_rows_have_the_calibration_format_and_correct_answers() -> None:
    rows = toy_prompts(400, 0)
    assert [r["id"] for r in rows] == [f"add-{i:06d}" for i in range(400)]
    for row in rows:
        assert set(row) == {"id", "messages", "answer", "grader", "task", "max_tokens"}
        assert row["max_tokens"] == toy_fleet.MAX_ANSWER_TOKENS
        assert row["grader"] == "numeric"
        assert row["messages"][0]["role"] == "user" and len(row["messages"]) == 1
        a, b = _operands(row)
        assert row["answer"] == str(a + b)
        assert row["task"] == f"add{len(str(max(a, b)))}"
        assert numeric_match(row["answer"], row["answer"]) == 1.0
    tasks = {r["task"] for r in rows}
    assert tasks == {f"add{d}" for d in range(1, toy_fleet.MAX_DIGITS + 1)}


def test_prompts_never_are_training_examples() -> None:
    """Prompts draw evaluation pairs only and training draws none, for any seed and size."""
    prompt_pairs = {_operands(r) for seed in range(3) for r in toy_prompts(300, seed)}
    assert all(toy_fleet._is_eval_pair(a, b) for a, b in prompt_pairs)
    rng = np.random.default_rng(0)
    train = toy_fleet._draw(rng, 5000, [1.0] * toy_fleet.MAX_DIGITS, evaluation=False)
    assert not any(toy_fleet._is_eval_pair(a, b) for a, b, _ in train)
    assert not prompt_pairs & {(a, b) for a, b, _ in train}


def test_write_prompts_jsonl_round_trips(tmp_path: Path) -> None:
    rows = toy_prompts(5, 1)
    path = write_prompts_jsonl(tmp_path / "sub" / "prompts.jsonl", rows)
    assert [json.loads(line) for line in path.read_text().splitlines()] == rows


@pytest.mark.parametrize("text", ["What is 47+385?", "héllo wörld ✓ 🚀", "tabs\tand\nnewlines\r\n", "\x00\x7f", "  "])
def test_tokenizer_round_trips_arbitrary_text(tokenizer: object, text: str) -> None:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]  # type: ignore[operator]
    assert len(ids) == len(text.encode("utf-8"))  # character level: one token a byte
    assert tokenizer.decode(ids) == text  # type: ignore[attr-defined]


def test_tokenizer_special_tokens(tokenizer: object) -> None:
    ids = tokenizer("<|im_start|>user\n1<|im_end|>", add_special_tokens=False)["input_ids"]  # type: ignore[operator]
    assert len(ids) == 1 + 5 + 1 + 1
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"  # type: ignore[attr-defined]
    assert ids[-1] == tokenizer.eos_token_id  # type: ignore[attr-defined]


def test_prompt_rows_render_to_the_training_prefix(tokenizer: object) -> None:
    """Training renders prompts itself; they must be what vLLM renders with add_generation_prompt=True."""
    for row in toy_prompts(30, 2):
        rendered = tokenizer.apply_chat_template(  # type: ignore[attr-defined]
            row["messages"], tokenize=False, add_generation_prompt=True
        )
        assert rendered == render_prompt(row["messages"][0]["content"])


@pytest.mark.parametrize("phrasing", range(len(toy_fleet._PHRASINGS)))
def test_training_example_is_template_tokens_then_answer(tokenizer: object, phrasing: int) -> None:
    """Token for token: the chat template's prompt, then the answer and <|im_end|>, the only scored tokens."""
    messages = [{"role": "user", "content": toy_fleet._PHRASINGS[phrasing].format(a=47, b=385)}]
    prompt = tokenizer.apply_chat_template(  # type: ignore[attr-defined]
        messages, tokenize=True, add_generation_prompt=True, return_dict=False
    )
    ids, labels = toy_fleet._batch(tokenizer, [(47, 385, phrasing), (1, 2, 0)], pad_id=0)
    n = len(prompt)
    assert ids[0, :n].tolist() == prompt
    answer = ids[0, n : n + 4].tolist()
    assert tokenizer.decode(answer) == "432<|im_end|>"  # type: ignore[attr-defined]
    assert labels[0, n : n + 4].tolist() == answer
    assert (labels[0, :n] == -100).all() and (labels[0, n + 4 :] == -100).all()  # padding is not scored


@pytest.mark.parametrize(("a", "b", "direct", "scratchpad"), [
    (47, 385, "432", "7+5+0=12,4+8+1=13,0+3+1=4 #### 432"),
    (0, 0, "0", "0+0+0=0 #### 0"),
    (999, 1, "1000", "9+1+0=10,9+0+1=10,9+0+1=10 #### 1000"),
    (5, 70, "75", "5+0+0=5,0+7+0=7 #### 75"),
])
def test_answers_direct_and_with_scratchpad(a: int, b: int, direct: str, scratchpad: str) -> None:
    assert toy_answer(a, b, scratchpad=False) == direct
    assert toy_answer(a, b, scratchpad=True) == scratchpad
    # The grader reads the scratchpad's final answer, not its column sums.
    assert numeric_match(scratchpad, str(a + b)) == 1.0
    assert numeric_match(scratchpad.split(" #### ")[0], str(a + b)) == (1.0 if a + b < 10 else 0.0)


def test_longest_scratchpad_answer_fits_the_token_budget(tokenizer: object) -> None:
    longest = toy_answer(999, 999, scratchpad=True) + "<|im_end|>"
    n = len(tokenizer(longest, add_special_tokens=False)["input_ids"])  # type: ignore[operator]
    assert n <= toy_fleet.MAX_ANSWER_TOKENS
    prompt = render_prompt(toy_fleet._PHRASINGS[1].format(a=999, b=999))
    assert len(tokenizer(prompt, add_special_tokens=False)["input_ids"]) + n <= ToySpec().max_positions  # type: ignore[operator]


def test_scratchpad_training_examples_score_the_whole_scratchpad(tokenizer: object) -> None:
    ids, labels = toy_fleet._batch(tokenizer, [(47, 385, 0)], pad_id=0, scratchpad=True)
    scored = labels[0][labels[0] != -100].tolist()
    assert tokenizer.decode(scored) == toy_answer(47, 385, scratchpad=True) + "<|im_end|>"  # type: ignore[attr-defined]


def test_spec_validation() -> None:
    with pytest.raises(ValueError, match="head_dim"):
        ToySpec(hidden=48, heads=1)
    with pytest.raises(ValueError, match="kv_heads"):
        ToySpec(hidden=128, heads=4, kv_heads=3)
    with pytest.raises(ValueError, match="digit_weights"):
        ToySpec(digit_weights=(1.0,))
    assert ToySpec(seed=1).fingerprint != ToySpec(seed=2).fingerprint
    assert ToySpec().fingerprint != ToySpec(scratchpad=True).fingerprint
    assert list(TOY_FLEET) == ["toy-xs", "toy-s", "toy-m", "toy-l"]


def test_build_writes_a_loadable_bf16_model(tiny_model: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert (tiny_model / "model.safetensors").exists()
    assert model.dtype == torch.bfloat16
    assert model.config.max_position_embeddings == TINY.max_positions
    assert tok.eos_token_id == model.config.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.chat_template
    marker = json.loads((tiny_model / toy_fleet._MARKER).read_text())
    assert marker["fingerprint"] == TINY.fingerprint and marker["train_s"] >= 0


def test_build_is_reused_for_the_same_spec_and_redone_for_another(tmp_path: Path) -> None:
    out = build_toy_model(tmp_path / "m", TINY)
    weights = out / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert build_toy_model(out, TINY) == out
    assert weights.stat().st_mtime_ns == before
    other = ToySpec(**{**TINY.__dict__, "seed": TINY.seed + 1})
    build_toy_model(out, other)
    assert json.loads((out / toy_fleet._MARKER).read_text())["fingerprint"] == other.fingerprint
    assert weights.stat().st_mtime_ns != before


def test_build_is_deterministic(tmp_path: Path, tiny_model: Path) -> None:
    again = build_toy_model(tmp_path / "again", TINY)
    assert (again / "model.safetensors").read_bytes() == (tiny_model / "model.safetensors").read_bytes()


def test_evaluate_returns_graded_answers_with_logprobs(tiny_model: Path) -> None:
    rows = toy_prompts(6, 0)
    results = evaluate_toy_model(tiny_model, rows, grade=numeric_match, max_new_tokens=3)
    assert [r["id"] for r in results] == [r["id"] for r in rows]
    for r in results:
        assert isinstance(r["correct"], bool) and isinstance(r["text"], str)
        assert 1 <= len(r["token_logprobs"]) <= 3 and all(lp <= 0.0 for lp in r["token_logprobs"])


@pytest.mark.slow  # two spawned processes import torch and transformers: 10-30 s
def test_fleet_build_in_worker_processes_with_progress(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_model: Path
) -> None:
    """Two models train in two spawned processes, with the weights an in-process build gives; the
    progress bar ends complete; a second build is free."""
    from rich.console import Console
    from rich.progress import Progress

    fleet = {"a": TINY, "b": ToySpec(**{**TINY.__dict__, "seed": 8})}
    monkeypatch.setattr(toy_fleet, "TOY_FLEET", fleet)
    with Progress(console=Console(file=io.StringIO())) as bar:
        paths = build_toy_fleet(tmp_path, progress=bar, jobs=2)
        assert all(t.completed == t.total for t in bar.tasks) and len(bar.tasks) == 2
    assert paths == {"a": tmp_path / "a", "b": tmp_path / "b"}
    assert all(toy_fleet._is_built(paths[n], fleet[n]) for n in fleet)
    assert (paths["a"] / "model.safetensors").read_bytes() == (tiny_model / "model.safetensors").read_bytes()
    assert build_toy_fleet(tmp_path, jobs=2) == paths


def test_models_toy_yaml_matches_the_fleet() -> None:
    fleet = FleetConfig.from_file(REPO / "models.toy.yaml")
    assert fleet.model_ids == list(TOY_FLEET)
    for model in fleet.models:
        spec = TOY_FLEET[model.model_id]
        assert str(model.model_loading_config.model_source).endswith(f".cache/toy/{model.model_id}")
        assert model.engine_kwargs["max_model_len"] <= spec.max_positions
