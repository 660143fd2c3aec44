"""A toy fleet with real skill differences: tiny Qwen2 models trained on CPU to add integers.

The tiny fleet (:mod:`toymodels.tiny`) is randomly initialised, so its answers carry no quality
signal. These four models are *trained* (torch, float32, CPU, 8.6 CPU-minutes for all four) on a task
with checkable answers, so accuracy rises with size and the answers' token logprobs say something
about correctness: what cascade routing needs to show its worth on a small machine with real vLLM
engines.

The task is integer addition asked in plain words through the ChatML template that vLLM applies
(``{"role": "user", "content": "What is 47+385?"}`` -> ``"432"``), with operands of 1 to 3 digits:
difficulty bucket ``add1`` .. ``add3`` is the larger operand's digit count. Answers are the plain
number (most significant digit first), graded by :func:`calibration.graders.numeric_match`. That order
makes the model line the digits up from the right without seeing the answer's length first, the hard
part for a small transformer. The two direct-answer models train on ``add1`` and ``add2`` only; the
two scratchpad models (:func:`toy_answer`) on all three. Held-out accuracy (450 prompts, seed 0,
bfloat16, greedy), training seconds on one core of the 2-core development machine:

    model   train s  accuracy  add1  add2  add3  answer tokens  AUC of exp(mean token logprob) for correctness
    toy-xs       50     16.0%   41%    2%    0%            3.2  0.95
    toy-s       201     65.8%  100%   99%    0%            2.9  0.86
    toy-m        67     69.8%  100%   77%   31%           24.9  0.87
    toy-l       200     99.6%  100%  100%   99%           24.8  1.00

What this means for routing: the question shows its bucket, and within a bucket a model is nearly
always right or nearly always wrong, so a router that reads the question is close to the oracle and
a cascade has little to add (``README.md``, "The toy fleet").

Eight and a half minutes of CPU in all, about four and a half on two cores (``jobs=2``).

The tokenizer is character level (a byte-level BPE with no merges, plus the ChatML special tokens),
which suits arithmetic and still encodes any text a server may receive. What every trained fleet
shares (tokenizer, training loop, cached build, worker processes, greedy evaluation) lives in
:mod:`toymodels.training`.

Held out by construction: every ordered operand pair is either a *training* pair or an *evaluation*
pair (a fixed integer hash puts one pair in eight in evaluation). :func:`toy_prompts` draws evaluation
pairs only and training draws training pairs only, so no prompt of any seed is ever a training
example, whatever ``n``. The small bucket has few evaluation pairs (``add1``: 12 of 100), so large
prompt sets repeat ``add1`` questions (in three phrasings).

    build_toy_fleet(Path(".cache/toy"))                       # then cached by fingerprint
    cascade models build --toy --out .cache/toy --eval 600    # build, then held-out accuracy in bf16

Weights are trained in float32 and saved as bfloat16 safetensors (vLLM on CPU runs bfloat16). Each
model trains in one process on one thread from fixed seeds, so the build is a pure function of the
:class:`ToySpec` on a given machine and torch version. Needs the ``cpu`` extra (torch, transformers,
tokenizers); imports them lazily.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from toymodels.qwen2 import check_cpu_shape
from toymodels.training import (
    build_fleet,
    build_model,
    build_one,
    char_tokenizer,
    evaluate_model,
    example_batch,
    is_built,
    read_marker,
    render_prompt,
    write_prompts_jsonl,
)

if TYPE_CHECKING:
    from rich.progress import Progress

__all__ = [
    "MAX_ANSWER_TOKENS",
    "MAX_DIGITS",
    "TOY_FLEET",
    "ToySpec",
    "build_toy_fleet",
    "build_toy_model",
    "evaluate_toy_model",
    "render_prompt",
    "toy_answer",
    "toy_build_info",
    "toy_prompts",
    "write_prompts_jsonl",
]

_MARKER = "cascade_toy_model.json"
_RECIPE = 2  # bump when the task, tokenizer or training loop changes: it is part of every fingerprint
_PHRASINGS = ("What is {a}+{b}?", "Compute {a} + {b}.", "{a}+{b}=?")
MAX_DIGITS = 3
_CHUNK = 256  # candidate pairs drawn at a time
MAX_ANSWER_TOKENS = 48  # a 3-digit scratchpad answer and <|im_end|> take 37 tokens
_EVAL_ONE_IN = 8  # one ordered operand pair in 8 is an evaluation pair, never trained on
_PROMPT_STREAM, _TRAIN_STREAM = 0, 1  # SeedSequence keys: prompts and training draw from different streams


@dataclass(frozen=True)
class ToySpec:
    """Architecture and training recipe of one toy model; the build is a pure function of it."""

    hidden: int = 64
    layers: int = 2
    heads: int = 2
    kv_heads: int = 1
    ffn: int = 256
    steps: int = 1000  # optimizer steps
    batch: int = 16  # examples per step: small batches, many steps learn fastest per CPU-second
    lr: float = 1e-3  # peak AdamW learning rate: linear warm-up, cosine decay to lr / 10
    warmup: int = 100  # warm-up steps
    weight_decay: float = 0.01
    digit_weights: tuple[float, ...] = (1.0, 1.0, 1.0)  # training mix of add1..add3
    digit_starts: tuple[float, ...] = (0.0, 0.0, 0.0)  # share of the steps after which each bucket joins the mix
    scratchpad: bool = False  # answer with the column sums first (see toy_answer): longer, and far easier
    max_positions: int = 128  # longest sequence the model accepts (vLLM's max_model_len)
    threads: int = 1  # torch CPU threads while training: the result depends on the reduction order
    seed: int = 0

    def __post_init__(self) -> None:
        check_cpu_shape(self.hidden, self.heads, self.kv_heads)
        if len(self.digit_weights) != MAX_DIGITS or min(self.digit_weights) < 0:
            raise ValueError(f"digit_weights must be {MAX_DIGITS} non-negative weights, got {self.digit_weights}")
        if len(self.digit_starts) != MAX_DIGITS or not all(0 <= s <= 1 for s in self.digit_starts):
            raise ValueError(f"digit_starts must be {MAX_DIGITS} shares in [0, 1], got {self.digit_starts}")
        if sum(w for w, s in zip(self.digit_weights, self.digit_starts, strict=True) if s == 0) <= 0:
            raise ValueError(f"some bucket must have weight > 0 from the start, got {self.digit_weights}, "
                             f"{self.digit_starts}")
        if self.steps < 1 or self.batch < 1 or self.threads < 1:
            raise ValueError(f"steps, batch and threads must be >= 1, got {self.steps}, {self.batch}, {self.threads}")

    @property
    def fingerprint(self) -> str:
        """Identifies the build: the spec plus the recipe version."""
        payload = json.dumps({**asdict(self), "recipe": _RECIPE}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


# Accuracy and cost rise with index: two models answer directly (a small and a larger network), two
# write the scratchpad first (likewise). On CPU a tiny model's engine step costs about the same
# whatever its width (framework overhead dominates), so the cost differences are the answer lengths.
TOY_FLEET: dict[str, ToySpec] = {
    "toy-xs": ToySpec(hidden=64, layers=2, heads=2, kv_heads=1, ffn=128, steps=1200, lr=2e-3,
                      digit_weights=(1, 2, 0), seed=1),
    "toy-s": ToySpec(hidden=128, layers=2, heads=4, kv_heads=2, ffn=256, steps=2400, lr=1e-3, warmup=30,
                     digit_weights=(1, 2, 0), seed=3),
    "toy-m": ToySpec(hidden=64, layers=2, heads=2, kv_heads=1, ffn=128, steps=800, lr=2e-3, warmup=30,
                     digit_weights=(1, 2, 2), scratchpad=True, seed=2),
    "toy-l": ToySpec(hidden=128, layers=2, heads=4, kv_heads=2, ffn=256, steps=1200, lr=1e-3, warmup=30,
                     digit_weights=(1, 2, 2), scratchpad=True, seed=4),
}


# ----------------------------------------------------------------------------- the task


def _is_eval_pair(a: Any, b: Any) -> Any:
    """Whether the ordered pair ``(a, b)`` is an evaluation pair; works on ints and int64 arrays alike."""
    h = (a * 0x9E3779B1 + b * 0x85EBCA77 + 0x165667B1) & 0xFFFFFFFF
    h = ((h ^ (h >> 15)) * 0x2C1B3C6D) & 0xFFFFFFFF
    return (h ^ (h >> 12)) % _EVAL_ONE_IN == 0


def _smallest(digits: Any) -> Any:
    """The smallest number with ``digits`` digits (0 for one digit), elementwise."""
    return np.where(digits == 1, 0, 10 ** (digits - 1))


def _draw(
    rng: np.random.Generator, n: int, weights: Sequence[float], *, evaluation: bool
) -> list[tuple[int, int, int]]:
    """``n`` (a, b, phrasing) triples: the larger operand has d digits (d drawn by ``weights``), the other 1..d.

    Draws come in fixed chunks, so the first k of ``n`` triples are the k triples drawn for ``n = k``.
    """
    p = np.asarray(weights, dtype=float) / sum(weights)
    out: list[tuple[int, int, int]] = []
    while len(out) < n:
        d = rng.choice(MAX_DIGITS, size=_CHUNK, p=p) + 1
        d_other = (rng.random(_CHUNK) * d).astype(np.int64) + 1  # uniform in 1..d
        big, small = rng.integers(_smallest(d), 10**d), rng.integers(_smallest(d_other), 10**d_other)
        swap = rng.random(_CHUNK) < 0.5
        a, b = np.where(swap, small, big), np.where(swap, big, small)
        phrasing = rng.integers(0, len(_PHRASINGS), size=_CHUNK)
        keep = _is_eval_pair(a, b) == evaluation
        out.extend(zip(a[keep].tolist(), b[keep].tolist(), phrasing[keep].tolist(), strict=True))
    return out[:n]


def toy_prompts(n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` held-out addition questions in the calibration prompt-file format, deterministic in ``seed``.

    Each row is ``{"id": "add-000123", "messages": [{"role": "user", "content": "What is 47+385?"}],
    "answer": "432", "grader": "numeric", "task": "add3"}``; ``task`` is the larger operand's digit
    count. Difficulties are equally likely. No row is ever a training example (see the module docstring).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, _PROMPT_STREAM]))
    rows = []
    for i, (a, b, k) in enumerate(_draw(rng, n, [1.0] * MAX_DIGITS, evaluation=True)):
        rows.append({
            "id": f"add-{i:06d}",
            "messages": [{"role": "user", "content": _PHRASINGS[k].format(a=a, b=b)}],
            "answer": str(a + b),
            "grader": "numeric",
            "task": f"add{len(str(max(a, b)))}",
            "max_tokens": MAX_ANSWER_TOKENS,
        })
    return rows


def toy_answer(a: int, b: int, *, scratchpad: bool) -> str:
    """The answer a toy model is trained to write to ``a + b``.

    Direct: the sum (``"432"``). Scratchpad: the column sums from the right, each as ``x+y+carry=sum``
    (missing digits are 0), then the sum after ``####``: ``"7+5+0=12,4+8+1=13,0+3+1=4 #### 432"``.
    Writing the carries out turns the task into local steps a tiny model learns in a few hundred
    updates, at the price of about eight times the tokens: the toy fleet's stand-in for a larger model
    that reasons before it answers.
    """
    if not scratchpad:
        return str(a + b)
    xs, ys = str(a)[::-1], str(b)[::-1]
    carry, columns = 0, []
    for i in range(max(len(xs), len(ys))):
        x, y = int(xs[i]) if i < len(xs) else 0, int(ys[i]) if i < len(ys) else 0
        columns.append(f"{x}+{y}+{carry}={x + y + carry}")
        carry = (x + y + carry) // 10
    return ",".join(columns) + f" #### {a + b}"


# ----------------------------------------------------------------------------- tokenizer and model


def _make_tokenizer() -> Any:
    """Character-level tokenizer: the 256 byte symbols, no merges, the ChatML special tokens first."""
    return char_tokenizer()


def _batch(
    tokenizer: Any, triples: Sequence[tuple[int, int, int]], pad_id: int, *, scratchpad: bool = False
) -> tuple[Any, Any]:
    """Token ids (right-padded) and labels (-100 except the answer and ``<|im_end|>``) of training examples."""
    users = [_PHRASINGS[k].format(a=a, b=b) for a, b, k in triples]
    answers = [toy_answer(a, b, scratchpad=scratchpad) for a, b, _ in triples]
    return example_batch(tokenizer, users, answers, pad_id)


def toy_build_info(out: Path) -> dict[str, Any]:
    """The marker of a built toy model: fingerprint, spec, training seconds, final loss, torch version."""
    return read_marker(out, _MARKER)


def _is_built(out: Path, spec: ToySpec) -> bool:
    return is_built(out, _MARKER, spec.fingerprint)


def _build(out: Path, spec: ToySpec, on_step: Callable[[int, float], None]) -> Path:
    tokenizer = _make_tokenizer()
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, _TRAIN_STREAM]))

    def batches(step: int) -> tuple[Any, Any]:
        # A curriculum: harder buckets join once the easier ones are under way.
        mix = [w if step >= s * spec.steps else 0.0 for w, s in zip(spec.digit_weights, spec.digit_starts, strict=True)]
        return _batch(tokenizer, _draw(rng, spec.batch, mix, evaluation=False), tokenizer.pad_token_id,
                      scratchpad=spec.scratchpad)

    return build_model(out, spec, tokenizer, batches, on_step, marker_name=_MARKER)


def build_toy_model(out: Path, spec: ToySpec, *, progress: Progress | None = None, name: str | None = None) -> Path:
    """Train (or reuse, if the folder holds the same fingerprint) one toy model in ``out``.

    Parameters
    ----------
    out : Path
        Model folder: bfloat16 safetensors, tokenizer with the chat template, generation config and a
        marker file (fingerprint, spec, training seconds, final loss).
    spec : ToySpec
        Architecture and training recipe.
    progress : rich.progress.Progress or None
        Shows the training steps as one task named ``name`` (default: the folder's name).
    """
    return build_one(out, spec, _build, _is_built, progress, name)


def build_toy_fleet(root: Path, progress: Progress | None = None, *, jobs: int = 2) -> dict[str, Path]:
    """Build (or reuse) every model of :data:`TOY_FLEET` under ``root``; model id -> folder.

    Models train in ``jobs`` processes at once, one thread each (a model's weights do not depend on
    ``jobs``): on 2 cores the largest model trains alone while the others train one after another.
    """
    return build_fleet(TOY_FLEET, root, _build, _is_built, progress, jobs=jobs)


# ----------------------------------------------------------------------------- evaluation


def evaluate_toy_model(
    path: Path, rows: Sequence[dict[str, Any]], *, grade: Callable[[str, str], float],
    max_new_tokens: int = MAX_ANSWER_TOKENS,
) -> list[dict[str, Any]]:
    """Greedy answers of a saved model (in bfloat16, as vLLM on CPU runs it) to prompt rows.

    Returns, per row, ``{"id", "task", "text", "correct", "token_logprobs"}``: the decoded answer,
    whether ``grade(answer, reference)`` gives it 1.0 (the fleet's answers are graded by
    ``calibration.graders.numeric_match``), and the logprob of each generated
    token (``<|im_end|>`` included when generated).
    """
    return evaluate_model(path, rows, grade=grade, max_new_tokens=max_new_tokens)
