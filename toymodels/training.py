"""What the trained toy fleets share: the character tokenizer, chat-rendered training examples, the
training loop, the cached build, the fleet's worker processes and greedy evaluation.

A trained fleet (:mod:`toymodels.toy_fleet`, :mod:`toymodels.recall_fleet`) is a task (questions,
reference answers, the answer each model is taught to write) and one recipe per model; everything
else is here, so every trained fleet trains, caches and evaluates the same way.

A recipe is any frozen object with the fields of :class:`Recipe` (architecture, optimiser schedule,
threads, seed) and a ``fingerprint``. A build is a pure function of its recipe on a given machine and
torch version: one process, one thread (``threads``), fixed seeds, float32 training, bfloat16
safetensors (vLLM on CPU runs bfloat16), and a marker file written last that names the fingerprint.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from toymodels.qwen2 import SPECIAL_TOKENS, chatml_tokenizer, qwen2_config, save_model

if TYPE_CHECKING:
    from rich.progress import Progress

__all__ = [
    "Recipe",
    "build_fleet",
    "build_model",
    "char_tokenizer",
    "evaluate_model",
    "example_batch",
    "greedy_answers",
    "is_built",
    "read_marker",
    "render_prompt",
    "train",
    "write_prompts_jsonl",
]

# (steps done, loss of that step); called after every optimizer step.
OnStep = Callable[[int, float], None]
# step -> (token ids, labels) of that step's batch, as example_batch returns them.
Batches = Callable[[int], tuple[Any, Any]]


class Recipe(Protocol):
    """The fields a model recipe needs here (``ToySpec``, ``RecallSpec``); read-only, as frozen dataclasses give them.

    Architecture (``hidden``, ``layers``, ``heads``, ``kv_heads``, ``ffn``, ``max_positions``: the longest
    sequence, vLLM's ``max_model_len``), optimiser (``steps``; ``lr``, the peak AdamW learning rate after
    ``warmup`` linear steps, with cosine decay to lr / 10; ``weight_decay``), ``threads`` (torch CPU
    threads while training: the result depends on the reduction order) and ``seed``.
    """

    @property
    def hidden(self) -> int: ...
    @property
    def layers(self) -> int: ...
    @property
    def heads(self) -> int: ...
    @property
    def kv_heads(self) -> int: ...
    @property
    def ffn(self) -> int: ...
    @property
    def max_positions(self) -> int: ...
    @property
    def steps(self) -> int: ...
    @property
    def lr(self) -> float: ...
    @property
    def warmup(self) -> int: ...
    @property
    def weight_decay(self) -> float: ...
    @property
    def threads(self) -> int: ...
    @property
    def seed(self) -> int: ...
    @property
    def fingerprint(self) -> str: ...


# ----------------------------------------------------------------------------- text


def char_tokenizer(extra_tokens: Sequence[str] = ()) -> Any:
    """Character-level tokenizer: the ChatML special tokens, the 256 byte symbols (no merges), then
    ``extra_tokens`` as whole tokens.

    Any text encodes (one token a byte); an extra token is matched verbatim wherever it occurs, before
    the bytes are split, so a word that is one token costs one position and one embedding.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {t: i for i, t in enumerate([*SPECIAL_TOKENS, *alphabet])}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIAL_TOKENS)
    if extra_tokens:
        tok.add_tokens([AddedToken(t, single_word=False, normalized=False) for t in extra_tokens])
    return chatml_tokenizer(tok)


def render_prompt(user: str) -> str:
    """The text vLLM feeds a model for one user message: ``CHATML_TEMPLATE`` with ``add_generation_prompt``.

    Training uses this string as the prefix of every example; tests check that it equals the
    tokenizer's ``apply_chat_template(..., add_generation_prompt=True)`` byte for byte.
    """
    return f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"


def write_prompts_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Write prompt rows as JSON lines (one row a line, UTF-8) and return ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def example_batch(
    tokenizer: Any, users: Sequence[str], answers: Sequence[str], pad_id: int | None = None
) -> tuple[Any, Any]:
    """Token ids (right-padded with ``pad_id``, default the tokenizer's) and labels of training examples:
    each user message rendered as vLLM renders it, then its answer and ``<|im_end|>``; labels are -100
    except on the answer and ``<|im_end|>``.
    """
    import torch

    pad_id = tokenizer.pad_token_id if pad_id is None else pad_id
    prefixes = [render_prompt(u) for u in users]
    p_ids = tokenizer(prefixes, add_special_tokens=False)["input_ids"]
    a_ids = tokenizer([a + "<|im_end|>" for a in answers], add_special_tokens=False)["input_ids"]
    width = max(len(p) + len(q) for p, q in zip(p_ids, a_ids, strict=True))
    ids = torch.full((len(users), width), pad_id, dtype=torch.long)
    labels = torch.full((len(users), width), -100, dtype=torch.long)
    for i, (p, q) in enumerate(zip(p_ids, a_ids, strict=True)):
        ids[i, : len(p) + len(q)] = torch.tensor(p + q)
        labels[i, len(p) : len(p) + len(q)] = torch.tensor(q)
    return ids, labels


# ----------------------------------------------------------------------------- training and build


def train(model: Any, recipe: Recipe, batches: Batches, on_step: OnStep) -> float:
    """Train ``model`` in place on ``batches(step)``; returns the mean loss of the last 50 steps."""
    import torch
    import torch.nn.functional as F

    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, betas=(0.9, 0.98), weight_decay=recipe.weight_decay)

    def lr_at(step: int) -> float:
        if step < recipe.warmup:
            return recipe.lr * (step + 1) / recipe.warmup
        t = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
        return recipe.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * t)))

    losses: list[float] = []
    model.train()
    for step in range(recipe.steps):
        ids, labels = batches(step)
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


def read_marker(out: Path, marker_name: str) -> dict[str, Any]:
    """The marker of a built model: fingerprint, recipe, training seconds (wall and CPU), final loss, torch version."""
    info: dict[str, Any] = json.loads((out / marker_name).read_text())
    return info


def is_built(out: Path, marker_name: str, fingerprint: str) -> bool:
    """Whether ``out`` holds a finished build whose marker names ``fingerprint``."""
    marker = out / marker_name
    return marker.exists() and json.loads(marker.read_text()).get("fingerprint") == fingerprint


def build_model(
    out: Path, recipe: Recipe, tokenizer: Any, batches: Batches, on_step: OnStep, *, marker_name: str,
    extra_marker: dict[str, Any] | None = None,
) -> Path:
    """Initialise a Qwen2 model from ``recipe.seed``, train it on ``batches``, save it with its marker.

    Torch runs ``recipe.threads`` threads meanwhile (the caller's setting is restored) and the
    initialisation does not touch the caller's RNG. ``extra_marker`` adds fields to the marker.
    """
    import torch
    from transformers import Qwen2ForCausalLM

    config = qwen2_config(tokenizer, hidden=recipe.hidden, layers=recipe.layers, heads=recipe.heads,
                          kv_heads=recipe.kv_heads, ffn=recipe.ffn, max_positions=recipe.max_positions)
    (out / marker_name).unlink(missing_ok=True)  # a half-rebuilt folder must not pass for the old build
    threads = torch.get_num_threads()
    torch.set_num_threads(recipe.threads)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(recipe.seed)
            model = Qwen2ForCausalLM(config)
        start, start_cpu = time.perf_counter(), time.process_time()
        final_loss = train(model, recipe, batches, on_step)
        train_s, train_cpu_s = time.perf_counter() - start, time.process_time() - start_cpu
    finally:
        torch.set_num_threads(threads)
    marker = {
        "fingerprint": recipe.fingerprint,
        "spec": asdict(recipe),  # type: ignore[call-overload]
        "train_s": round(train_s, 1),
        # CPU seconds of this process: on a shared machine wall seconds also count the neighbours' load.
        "train_cpu_s": round(train_cpu_s, 1),
        "final_loss": round(final_loss, 4),
        "torch": torch.__version__,
        **(extra_marker or {}),
    }
    return save_model(out, model, tokenizer, marker_name, marker)


# ----------------------------------------------------------------------------- a fleet in worker processes

# build(out, recipe, on_step) -> out: a module-level function, so spawned workers can unpickle it.
BuildFn = Callable[[Path, Any, OnStep], Path]

_QUEUE: Any = None  # a worker process's progress queue (set by the pool's initializer)


def _init_worker(queue: Any) -> None:
    global _QUEUE
    _QUEUE = queue


def _build_in_worker(build: BuildFn, out: Path, recipe: Any, name: str) -> None:
    def report(done: int, loss: float) -> None:
        if done % 20 == 0 or done == recipe.steps:
            _QUEUE.put((name, done))

    build(out, recipe, report)


def build_fleet(
    fleet: dict[str, Any], root: Path, build: BuildFn, built: Callable[[Path, Any], bool],
    progress: Progress | None = None, *, jobs: int = 2,
) -> dict[str, Path]:
    """Build (or reuse) every model of ``fleet`` (id -> recipe, cheapest first) under ``root``; id -> folder.

    ``built(folder, recipe)`` says whether a folder already holds that recipe's build. Models train in
    ``jobs`` spawned processes at once, one thread each (a model's weights do not depend on ``jobs``),
    dearest first: on 2 cores it trains alone while the others train one after another. ``progress``
    shows one task per model, counting optimizer steps.
    """
    paths = {name: root / name for name in fleet}
    todo = [name for name, recipe in fleet.items() if not built(paths[name], recipe)]
    tasks = {name: progress.add_task(name, total=fleet[name].steps) for name in todo} if progress else {}
    if jobs <= 1 or len(todo) <= 1:
        for name in todo:
            build(paths[name], fleet[name], _reporter(progress, tasks.get(name)))
        return paths
    import multiprocessing
    import queue as queue_lib
    from concurrent.futures import ProcessPoolExecutor

    ctx = multiprocessing.get_context("spawn")  # fork after torch's thread pools start is unsafe
    updates = ctx.Queue()
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_init_worker, initargs=(updates,)) as pool:
        futures = [pool.submit(_build_in_worker, build, paths[n], fleet[n], n) for n in reversed(todo)]
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
            progress.update(task, completed=fleet[name].steps)
    return paths


def build_one(out: Path, recipe: Any, build: BuildFn, built: Callable[[Path, Any], bool],
              progress: Progress | None = None, name: str | None = None) -> Path:
    """Build (or reuse, when ``built`` says the folder holds it) one model in ``out``; ``progress`` shows
    its steps as one task named ``name`` (default: the folder's name)."""
    if built(out, recipe):
        return out
    task = progress.add_task(name or out.name, total=recipe.steps) if progress is not None else None
    return build(out, recipe, _reporter(progress, task))


def _reporter(progress: Progress | None, task: Any) -> OnStep:
    def report(done: int, loss: float) -> None:
        if progress is not None:
            progress.update(task, completed=done)

    return report


# ----------------------------------------------------------------------------- evaluation


def evaluate_model(
    path: Path, rows: Sequence[dict[str, Any]], *, grade: Callable[[str, str], float], max_new_tokens: int,
) -> list[dict[str, Any]]:
    """Greedy answers of a saved model (in bfloat16, as vLLM on CPU runs it) to prompt rows.

    Returns, per row, ``{"id", "task", "text", "correct", "token_logprobs", "prompt_tokens",
    "finish_reason"}``: the decoded answer, whether ``grade(answer, reference)`` gives it 1.0, the
    logprob of each generated token (``<|im_end|>`` included when generated), the prompt's length in
    tokens, and ``"stop"`` when the model ended its answer (``"length"`` when ``max_new_tokens`` did).
    """
    import torch
    from transformers import AutoTokenizer, Qwen2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = Qwen2ForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()
    return greedy_answers(model, tokenizer, rows, max_new_tokens, grade)


def greedy_answers(model: Any, tokenizer: Any, rows: Sequence[dict[str, Any]], max_new_tokens: int,
                   grade: Callable[[str, str], float]) -> list[dict[str, Any]]:
    """:func:`evaluate_model` on a loaded model and tokenizer."""
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
                    "prompt_tokens": len(encoded[i]),
                    "finish_reason": "stop" if eos in toks else "length",
                }
    return results
