"""A toy fleet whose answers tell what its questions hide: tiny Qwen2 models trained on CPU to recall a
random table of birth years.

In the addition fleet (:mod:`toymodels.toy_fleet`) the question shows its difficulty: the operands'
digit counts decide which model can answer, so a router that reads the question is close to the
oracle. Real fleets also meet the opposite: *factual recall*, where whether a model knows a fact is
invisible in the question ("When was X born?" reads the same for a famous X and an obscure one) but
shows in the answer, whose tokens the model is sure of when it knows and guesses when it does not.
That is where a cascade earns its keep, and what this fleet reproduces on CPU.

The task. A fixed random table (:func:`recall_table`) of ``N_KEYS`` invented people (``"Bako Rimu"``:
two words of two consonant-vowel syllables) and their birth years (1800-1999, three in four in the
1900s: a guess of the century is usually right, of the year almost never). Questions come in three
phrasings (``"When was Bako Rimu born?"``); answers are graded by
:func:`calibration.graders.numeric_match` (the last number of the answer).

Popularity. Each person has a popularity drawn at random, independently of the name, spanning a
factor of ``POPULARITY_SPAN`` between the rarest and the most frequent; training draws people in
proportion to it, as a corpus mentions famous people more often. Every model trains on the same
stream; a cheap model, trained for fewer steps, knows the frequent people and guesses the rare ones;
a dear one, trained longer, knows nearly everyone. What a model knows thus follows popularity, and
nothing in a question tells popularity: the name is random, so a router reading the question can do
no better than each model's base rate (``tests/toymodels/test_recall_fleet.py`` checks that a
character n-gram probe predicts popularity at chance).

The models (:data:`RECALL_FLEET`, cheapest first). All three answer from memory; they differ in
training steps, hence in what they know, and in how much they write::

    recall-s   "1953"                                   direct, 5 tokens with <|im_end|>
    recall-m   "Born in 1953."                          14 tokens
    recall-l   "Bako Rimu was born in the year 1953."  29 tokens

On CPU a tiny model's engine step costs about the same whatever its width (framework overhead
dominates; README, "The toy fleet"), so answer length is what makes a model dearer here, as longer
answers (and larger networks) do in real fleets; the live run measures the engine seconds. Numbers
(accuracy, tokens, logprob AUC, training seconds, the offline policy comparison) are in
``docs/toy_recall.md``.

Each person is one token of the tokenizer: the character tokenizer of the addition fleet plus one
whole token per name (:func:`toymodels.training.char_tokenizer`). A model then learns a fact as that
token's embedding, and a rarely seen name keeps a barely trained one, so the model's confidence in
the year says how well it knows the person; a name spelled out in characters would make a tiny model
spend its CPU-minutes learning to read names instead of facts.

"Held out". The task is recall, so every model trains on every person (at that person's
popularity), and questions can only be about people in the table. What is held out is the router's
view: the people are split once (a fixed random draw, independent of popularity) into
``N_EVALUATION_KEYS`` *evaluation* people and the rest, *calibration* people. :func:`recall_prompts`
draws a split's people only, so the estimators calibrated on calibration prompts never see a
question about an evaluation person, whatever ``n`` and ``seed``: they cannot learn by heart which
names a model knows. A split's people come in a seeded random order, each once before any repeats
(repeats take a phrasing drawn afresh).

    build_recall_fleet(Path(".cache/recall"))                     # then cached by fingerprint
    cascade models build --recall --eval 200                      # build, then evaluation-split accuracy

Weights are trained in float32 and saved as bfloat16 safetensors, one process and one thread per
model, from fixed seeds: the build is a pure function of :class:`RecallSpec` (and the table) on a given
machine and torch version. Needs the ``cpu`` extra (torch, transformers, tokenizers); imports them lazily.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

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
)

if TYPE_CHECKING:
    from rich.progress import Progress

__all__ = [
    "MAX_ANSWER_TOKENS",
    "N_EVALUATION_KEYS",
    "N_KEYS",
    "PHRASINGS",
    "POPULARITY_SPAN",
    "RECALL_FLEET",
    "RecallSpec",
    "RecallTable",
    "build_recall_fleet",
    "build_recall_model",
    "evaluate_recall_model",
    "question_key",
    "recall_answer",
    "recall_build_info",
    "recall_prompts",
    "recall_table",
]

Style = Literal["direct", "short", "sentence"]
Split = Literal["calibration", "evaluation"]

_MARKER = "cascade_recall_model.json"
_RECIPE = 1  # bump when the table, tokenizer or training changes: it is part of every fingerprint
N_KEYS = 600  # people in the table
N_EVALUATION_KEYS = 200  # of which the evaluation split holds this many; the others are calibration people
POPULARITY_SPAN = 30.0  # the most popular person is drawn this many times as often as the rarest
_TABLE_SEED = 20260
PHRASINGS = ("When was {k} born?", "In what year was {k} born?", "{k} was born in which year?")
_CONSONANTS, _VOWELS = "bdfgklmnprstvz", "aeiou"
MAX_ANSWER_TOKENS = 40  # the longest answer ("sentence") and <|im_end|> take 29 tokens
_PROMPT_STREAM, _TRAIN_STREAM = 0, 1  # SeedSequence keys: prompts and training draw from different streams
_SPLIT_KEY = {"calibration": 0, "evaluation": 1}


@dataclass(frozen=True)
class RecallTable:
    """The people, their birth years, popularities and split (index ``i`` is one person throughout).

    Attributes
    ----------
    keys : tuple of str
        The names, each also one token of the models' tokenizer.
    years : tuple of int
        Birth years, 1800-1999.
    popularity : tuple of float
        Relative training frequency in ``[1 / POPULARITY_SPAN, 1]``, log-uniform, independent of names and split.
    evaluation : tuple of bool
        Whether the person belongs to the evaluation split (else to the calibration split).
    """

    keys: tuple[str, ...]
    years: tuple[int, ...]
    popularity: tuple[float, ...]
    evaluation: tuple[bool, ...]

    def split_indices(self, split: Split) -> list[int]:
        """Indices of the people of ``split``, in table order."""
        if split not in _SPLIT_KEY:
            raise ValueError(f"split must be 'calibration' or 'evaluation', got {split!r}")
        want = split == "evaluation"
        return [i for i, e in enumerate(self.evaluation) if e == want]


@cache
def recall_table() -> RecallTable:
    """The fixed table every recall model is trained on (deterministic; the same on every machine)."""
    rng = np.random.default_rng(_TABLE_SEED)
    syllables = [c + v for c in _CONSONANTS for v in _VOWELS]
    seen: set[str] = set()
    keys: list[str] = []
    while len(keys) < N_KEYS:
        s = rng.integers(0, len(syllables), size=4)
        first, last = syllables[s[0]] + syllables[s[1]], syllables[s[2]] + syllables[s[3]]
        name = f"{first.capitalize()} {last.capitalize()}"
        if name not in seen:
            seen.add(name)
            keys.append(name)
    century = np.where(rng.random(N_KEYS) < 0.75, 1900, 1800)
    years = century + rng.integers(0, 100, size=N_KEYS)
    # Drawn after the names and years, from the same stream, so independent of both.
    popularity = POPULARITY_SPAN ** (-rng.random(N_KEYS))
    evaluation = np.zeros(N_KEYS, dtype=bool)
    evaluation[rng.permutation(N_KEYS)[:N_EVALUATION_KEYS]] = True
    return RecallTable(keys=tuple(keys), years=tuple(int(y) for y in years),
                       popularity=tuple(float(p) for p in popularity), evaluation=tuple(bool(e) for e in evaluation))


def recall_answer(key: str, year: int, style: Style) -> str:
    """The answer a model of answer style ``style`` is trained to write (module docstring)."""
    if style == "direct":
        return str(year)
    if style == "short":
        return f"Born in {year}."
    if style == "sentence":
        return f"{key} was born in the year {year}."
    raise ValueError(f"style must be 'direct', 'short' or 'sentence', got {style!r}")


def recall_prompts(n: int, seed: int, *, split: Split = "evaluation") -> list[dict[str, Any]]:
    """``n`` questions about the people of ``split``, in the calibration prompt-file format, deterministic in ``seed``.

    Each row is ``{"id": "recall-evaluation-000012", "messages": [{"role": "user", "content": "When was
    Bako Rimu born?"}], "answer": "1953", "grader": "numeric", "task": "recall", "max_tokens": 40}``.
    People come in a seeded random order, each once before any repeats; the phrasing is drawn per row.
    The first k of ``n`` rows are the rows for ``n = k``. ``task`` is the same for every row: nothing in
    a row tells a person's popularity.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    table = recall_table()
    people = np.asarray(table.split_indices(split))
    rng = np.random.default_rng(np.random.SeedSequence([seed, _PROMPT_STREAM, _SPLIT_KEY[split]]))
    rows: list[dict[str, Any]] = []
    while len(rows) < n:
        order = rng.permutation(people)
        phrasing = rng.integers(0, len(PHRASINGS), size=len(order))
        for k, p in zip(order.tolist(), phrasing.tolist(), strict=True):
            if len(rows) == n:
                break
            rows.append({
                "id": f"recall-{split}-{len(rows):06d}",
                "messages": [{"role": "user", "content": PHRASINGS[p].format(k=table.keys[k])}],
                "answer": str(table.years[k]),
                "grader": "numeric",
                "task": "recall",
                "max_tokens": MAX_ANSWER_TOKENS,
            })
    return rows


def question_key(text: str) -> int:
    """The table index of the person a question asks about (for reports: popularity is not in a row)."""
    index = _key_index()
    for p in PHRASINGS:
        head, tail = p.split("{k}")
        if text.startswith(head) and text.endswith(tail):
            key = text[len(head) : len(text) - len(tail)]
            if key in index:
                return index[key]
    raise ValueError(f"not a recall question about a person of the table: {text!r}")


@cache
def _key_index() -> dict[str, int]:
    return {k: i for i, k in enumerate(recall_table().keys)}


# ----------------------------------------------------------------------------- models


@dataclass(frozen=True)
class RecallSpec:
    """Architecture, answer style and training recipe of one recall model; the build is a pure function of it."""

    hidden: int = 64
    layers: int = 2
    heads: int = 2
    kv_heads: int = 1
    ffn: int = 256
    style: Style = "direct"  # what the model writes (recall_answer): the main driver of its engine cost on CPU
    steps: int = 1000  # optimizer steps: how many facts the model sees, hence which it knows
    batch: int = 32  # questions per step, people drawn by popularity
    lr: float = 3e-3  # peak AdamW learning rate: linear warm-up, cosine decay to lr / 10
    warmup: int = 50  # warm-up steps
    weight_decay: float = 0.01
    max_positions: int = 128  # longest sequence the model accepts (vLLM's max_model_len)
    threads: int = 1  # torch CPU threads while training: the result depends on the reduction order
    seed: int = 0

    def __post_init__(self) -> None:
        check_cpu_shape(self.hidden, self.heads, self.kv_heads)
        if self.style not in ("direct", "short", "sentence"):
            raise ValueError(f"style must be 'direct', 'short' or 'sentence', got {self.style!r}")
        if self.steps < 1 or self.batch < 1 or self.threads < 1:
            raise ValueError(f"steps, batch and threads must be >= 1, got {self.steps}, {self.batch}, {self.threads}")

    @property
    def fingerprint(self) -> str:
        """Identifies the build: the spec, the table's definition and the recipe version."""
        table = {"n_keys": N_KEYS, "span": POPULARITY_SPAN, "seed": _TABLE_SEED, "phrasings": PHRASINGS}
        payload = json.dumps({**asdict(self), "table": table, "recipe": _RECIPE}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


# Knowledge rises with training steps, cost with answer length (module docstring).
RECALL_FLEET: dict[str, RecallSpec] = {
    "recall-s": RecallSpec(style="direct", steps=1100, seed=1),
    "recall-m": RecallSpec(style="short", steps=1300, seed=2),
    "recall-l": RecallSpec(style="sentence", steps=2000, seed=3),
}


def _tokenizer() -> Any:
    return char_tokenizer(recall_table().keys)


def _batch(tokenizer: Any, people: Sequence[int], phrasings: Sequence[int], style: Style) -> tuple[Any, Any]:
    """Token ids and labels of training questions about ``people`` (table indices) in ``phrasings``."""
    table = recall_table()
    users = [PHRASINGS[p].format(k=table.keys[k]) for k, p in zip(people, phrasings, strict=True)]
    answers = [recall_answer(table.keys[k], table.years[k], style) for k in people]
    return example_batch(tokenizer, users, answers)


def _build(out: Path, spec: RecallSpec, on_step: Callable[[int, float], None]) -> Path:
    tokenizer = _tokenizer()
    weights = np.asarray(recall_table().popularity)
    weights = weights / weights.sum()
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, _TRAIN_STREAM]))

    def batches(step: int) -> tuple[Any, Any]:
        people = rng.choice(N_KEYS, size=spec.batch, p=weights)
        phrasings = rng.integers(0, len(PHRASINGS), size=spec.batch)
        return _batch(tokenizer, people.tolist(), phrasings.tolist(), spec.style)

    return build_model(out, spec, tokenizer, batches, on_step, marker_name=_MARKER)


def _is_built(out: Path, spec: RecallSpec) -> bool:
    return is_built(out, _MARKER, spec.fingerprint)


def recall_build_info(out: Path) -> dict[str, Any]:
    """The marker of a built recall model: fingerprint, spec, training seconds, final loss, torch version."""
    return read_marker(out, _MARKER)


def build_recall_model(out: Path, spec: RecallSpec, *, progress: Progress | None = None,
                       name: str | None = None) -> Path:
    """Train (or reuse, if the folder holds the same fingerprint) one recall model in ``out``.

    ``progress`` shows the training steps as one task named ``name`` (default: the folder's name).
    """
    return build_one(out, spec, _build, _is_built, progress, name)


def build_recall_fleet(root: Path, progress: Progress | None = None, *, jobs: int = 2) -> dict[str, Path]:
    """Build (or reuse) every model of :data:`RECALL_FLEET` under ``root``; model id -> folder.

    Models train in ``jobs`` processes at once, one thread each (a model's weights do not depend on
    ``jobs``), the dearest first.
    """
    return build_fleet(RECALL_FLEET, root, _build, _is_built, progress, jobs=jobs)


def evaluate_recall_model(
    path: Path, rows: Sequence[dict[str, Any]], *, grade: Callable[[str, str], float],
    max_new_tokens: int = MAX_ANSWER_TOKENS,
) -> list[dict[str, Any]]:
    """Greedy answers of a saved model (bfloat16, as vLLM on CPU runs it) to prompt rows, graded, with
    token logprobs (:func:`toymodels.training.evaluate_model`)."""
    return evaluate_model(path, rows, grade=grade, max_new_tokens=max_new_tokens)
