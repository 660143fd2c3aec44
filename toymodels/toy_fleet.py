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
which suits arithmetic and still encodes any text a server may receive.

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
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from toymodels.qwen2 import SPECIAL_TOKENS, chatml_tokenizer, check_cpu_shape, qwen2_config, save_model

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


def write_prompts_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Write prompt rows as JSON lines (one row a line, UTF-8) and return ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def render_prompt(user: str) -> str:
    """The text vLLM feeds the model for one user message: ``CHATML_TEMPLATE`` with ``add_generation_prompt``.

    Training uses this string as the prefix of every example; a test checks that it equals the
    tokenizer's ``apply_chat_template(..., add_generation_prompt=True)`` byte for byte.
    """
    return f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"


# ----------------------------------------------------------------------------- tokenizer and model


def _make_tokenizer() -> Any:
    """Character-level tokenizer: the 256 byte symbols, no merges, the ChatML special tokens first."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {t: i for i, t in enumerate([*SPECIAL_TOKENS, *alphabet])}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIAL_TOKENS)
    return chatml_tokenizer(tok)


def _batch(
    tokenizer: Any, triples: Sequence[tuple[int, int, int]], pad_id: int, *, scratchpad: bool = False
) -> tuple[Any, Any]:
    """Token ids (right-padded) and labels (-100 except the answer and ``<|im_end|>``) of training examples."""
    import torch

    prefixes = [render_prompt(_PHRASINGS[k].format(a=a, b=b)) for a, b, k in triples]
    answers = [toy_answer(a, b, scratchpad=scratchpad) + "<|im_end|>" for a, b, _ in triples]
    p_ids = tokenizer(prefixes, add_special_tokens=False)["input_ids"]
    a_ids = tokenizer(answers, add_special_tokens=False)["input_ids"]
    width = max(len(p) + len(q) for p, q in zip(p_ids, a_ids, strict=True))
    ids = torch.full((len(triples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(triples), width), -100, dtype=torch.long)
    for i, (p, q) in enumerate(zip(p_ids, a_ids, strict=True)):
        ids[i, : len(p) + len(q)] = torch.tensor(p + q)
        labels[i, len(p) : len(p) + len(q)] = torch.tensor(q)
    return ids, labels


def _train(model: Any, tokenizer: Any, spec: ToySpec, on_step: Callable[[int, float], None]) -> float:
    """Train ``model`` in place, calling ``on_step(steps done, loss)``; returns the mean loss of the last 50 steps."""
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, _TRAIN_STREAM]))
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, betas=(0.9, 0.98), weight_decay=spec.weight_decay)

    def lr_at(step: int) -> float:
        if step < spec.warmup:
            return spec.lr * (step + 1) / spec.warmup
        t = (step - spec.warmup) / max(1, spec.steps - spec.warmup)
        return spec.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * t)))

    pad_id = tokenizer.pad_token_id
    losses: list[float] = []
    model.train()
    for step in range(spec.steps):
        # A curriculum: harder buckets join once the easier ones are under way.
        mix = [w if step >= s * spec.steps else 0.0 for w, s in zip(spec.digit_weights, spec.digit_starts, strict=True)]
        ids, labels = _batch(tokenizer, _draw(rng, spec.batch, mix, evaluation=False), pad_id,
                             scratchpad=spec.scratchpad)
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        # Only the answer positions are scored, so only they go through the LM head.
        hidden = model.model(input_ids=ids).last_hidden_state[:, :-1]
        target = labels[:, 1:]
        scored = target != -100
        loss = F.cross_entropy(model.lm_head(hidden[scored]), target[scored])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        on_step(step + 1, losses[-1])
    return float(np.mean(losses[-50:]))


def toy_build_info(out: Path) -> dict[str, Any]:
    """The marker of a built toy model: fingerprint, spec, training seconds, final loss, torch version."""
    info: dict[str, Any] = json.loads((out / _MARKER).read_text())
    return info


def _is_built(out: Path, spec: ToySpec) -> bool:
    marker = out / _MARKER
    return marker.exists() and json.loads(marker.read_text()).get("fingerprint") == spec.fingerprint


def _build(out: Path, spec: ToySpec, on_step: Callable[[int, float], None]) -> Path:
    import torch
    from transformers import Qwen2ForCausalLM

    tokenizer = _make_tokenizer()
    config = qwen2_config(tokenizer, hidden=spec.hidden, layers=spec.layers, heads=spec.heads, kv_heads=spec.kv_heads,
                          ffn=spec.ffn, max_positions=spec.max_positions)
    (out / _MARKER).unlink(missing_ok=True)  # a half-rebuilt folder must not pass for the old build
    threads = torch.get_num_threads()
    torch.set_num_threads(spec.threads)  # restored below: the caller's setting is not ours to keep
    try:
        with torch.random.fork_rng(devices=[]):  # seeds the initialisation without touching the caller's RNG
            torch.manual_seed(spec.seed)
            model = Qwen2ForCausalLM(config)
        start = time.perf_counter()
        final_loss = _train(model, tokenizer, spec, on_step)
        train_s = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    marker = {
        "fingerprint": spec.fingerprint,
        "spec": asdict(spec),
        "train_s": round(train_s, 1),
        "final_loss": round(final_loss, 4),
        "torch": torch.__version__,
    }
    return save_model(out, model, tokenizer, _MARKER, marker)


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
    if _is_built(out, spec):
        return out
    if progress is None:
        return _build(out, spec, lambda done, loss: None)
    task = progress.add_task(name or out.name, total=spec.steps)
    return _build(out, spec, lambda done, loss: progress.update(task, completed=done))


_QUEUE: Any = None  # a worker process's progress queue (set by the pool's initializer)


def _init_worker(queue: Any) -> None:
    global _QUEUE
    _QUEUE = queue


def _build_in_worker(out: Path, spec: ToySpec, name: str) -> None:
    def report(done: int, loss: float) -> None:
        if done % 20 == 0 or done == spec.steps:
            _QUEUE.put((name, done))

    _build(out, spec, report)


def build_toy_fleet(root: Path, progress: Progress | None = None, *, jobs: int = 2) -> dict[str, Path]:
    """Build (or reuse) every model of :data:`TOY_FLEET` under ``root``; model id -> folder.

    Models train in ``jobs`` processes at once, one thread each (a model's weights do not depend on
    ``jobs``): on 2 cores the largest model trains alone while the others train one after another.
    """
    paths = {name: root / name for name in TOY_FLEET}
    todo = [name for name, spec in TOY_FLEET.items() if not _is_built(paths[name], spec)]
    if jobs <= 1 or len(todo) <= 1:
        for name in todo:
            build_toy_model(paths[name], TOY_FLEET[name], progress=progress, name=name)
        return paths
    import multiprocessing
    import queue as queue_lib
    from concurrent.futures import ProcessPoolExecutor

    tasks = {name: progress.add_task(name, total=TOY_FLEET[name].steps) for name in todo} if progress else {}
    ctx = multiprocessing.get_context("spawn")  # fork after torch's thread pools start is unsafe
    updates = ctx.Queue()
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_init_worker, initargs=(updates,)) as pool:
        # Largest first: it takes about as long as the others together.
        futures = [pool.submit(_build_in_worker, paths[n], TOY_FLEET[n], n) for n in reversed(todo)]
        while not all(f.done() for f in futures):
            try:
                name, done = updates.get(timeout=0.2)
            except queue_lib.Empty:
                continue
            if progress is not None:
                progress.update(tasks[name], completed=done)
        for f in futures:
            f.result()  # a worker's exception surfaces here
    if progress is not None:
        for name, task in tasks.items():
            progress.update(task, completed=TOY_FLEET[name].steps)
    return paths


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
    import torch
    from transformers import AutoTokenizer, Qwen2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = Qwen2ForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()
    return _greedy(model, tokenizer, rows, max_new_tokens, grade)


def _greedy(model: Any, tokenizer: Any, rows: Sequence[dict[str, Any]], max_new_tokens: int,
            grade: Callable[[str, str], float]) -> list[dict[str, Any]]:
    import torch

    eos = tokenizer.eos_token_id
    encoded = [
        tokenizer.apply_chat_template(r["messages"], tokenize=True, add_generation_prompt=True, return_dict=False)
        for r in rows
    ]
    # Prompts of equal length decode together: no padding, so the batch computes exactly what one would.
    by_len: dict[int, list[int]] = {}
    for i, ids in enumerate(encoded):
        by_len.setdefault(len(ids), []).append(i)
    results: list[dict[str, Any]] = [{} for _ in rows]
    with torch.no_grad():
        for idx in by_len.values():
            seq = torch.tensor([encoded[i] for i in idx])
            gen = torch.empty((len(idx), 0), dtype=torch.long)
            lps = torch.empty((len(idx), 0))
            for _ in range(max_new_tokens):
                logits = model(input_ids=torch.cat([seq, gen], dim=1)).logits[:, -1].float()
                logp = torch.log_softmax(logits, dim=-1)
                nxt = logp.argmax(dim=-1)
                gen = torch.cat([gen, nxt[:, None]], dim=1)
                lps = torch.cat([lps, logp.gather(1, nxt[:, None])], dim=1)
                if bool((gen == eos).any(dim=1).all()):
                    break
            for j, i in enumerate(idx):
                toks = gen[j].tolist()
                n = toks.index(eos) + 1 if eos in toks else len(toks)
                text = tokenizer.decode(toks[:n], skip_special_tokens=True)
                results[i] = {
                    "id": rows[i]["id"],
                    "task": rows[i].get("task"),
                    "text": text,
                    "correct": grade(text, rows[i]["answer"]) == 1.0,
                    "token_logprobs": lps[j, :n].tolist(),
                }
    return results
