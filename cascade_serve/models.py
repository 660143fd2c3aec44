"""``cascade models build [--toy | --recall]``: build the CPU fleets' models locally, and report the
trained fleets' held-out accuracy."""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["build_models", "logprob_auc"]


def build_models(args: argparse.Namespace) -> int:
    """The tiny (random) fleet of ``models.cpu.yaml``, with ``--toy`` the trained addition fleet, with
    ``--recall`` the trained recall fleet."""
    if getattr(args, "recall", False):
        return _build_recall(args)
    return _build_toy(args) if args.toy else _build_tiny(args)


def _build_tiny(args: argparse.Namespace) -> int:
    from rich.console import Console

    from toymodels.tiny import TINY_FLEET, build_tiny_model

    console = Console(stderr=True)
    out = args.out or Path(".cache/tiny")
    for name, spec in TINY_FLEET.items():
        with console.status(f"building {name} (hidden {spec.hidden}, {spec.layers} layers)"):
            path = build_tiny_model(out / name, spec)
        console.print(f"{name}: {path}")
    return 0


def _build_toy(args: argparse.Namespace) -> int:
    """Build the toy fleet, then report held-out accuracy and logprob AUC per model (bfloat16)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from calibration.graders import numeric_match
    from cascade_serve.progress import LoggedProgress
    from toymodels.toy_fleet import MAX_DIGITS, build_toy_fleet, evaluate_toy_model, toy_build_info, toy_prompts

    out = args.out or Path(".cache/toy")
    start = time.perf_counter()
    with LoggedProgress(TextColumn("{task.description:<8}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=Console(stderr=True)) as bar:
        paths = build_toy_fleet(out, progress=bar, jobs=args.jobs)
    Console(stderr=True).print(f"fleet ready in {time.perf_counter() - start:.0f} s (wall; 0 when cached)")
    if args.eval <= 0:
        return 0
    rows = toy_prompts(args.eval, args.seed)
    table = Table(title=f"toy fleet: {args.eval} held-out prompts (seed {args.seed}), bfloat16, greedy")
    for col in ("model", "train s", "accuracy", *(f"add{d}" for d in range(1, MAX_DIGITS + 1)), "answer tokens",
                "AUC exp(mean lp)"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for name, path in paths.items():
        res = evaluate_toy_model(path, rows, grade=numeric_match)
        ok = [r["correct"] for r in res]
        by_task = [np.mean([r["correct"] for r in res if r["task"] == f"add{d}"]) for d in range(1, MAX_DIGITS + 1)]
        conf = [math.exp(float(np.mean(r["token_logprobs"]))) if r["token_logprobs"] else 0.0 for r in res]
        tokens = np.mean([len(r["token_logprobs"]) for r in res])
        table.add_row(name, f"{toy_build_info(path)['train_s']:.0f}", f"{np.mean(ok):.1%}",
                      *(f"{a:.0%}" for a in by_task), f"{tokens:.1f}", f"{logprob_auc(conf, ok):.3f}")
    Console().print(table)
    return 0


def _build_recall(args: argparse.Namespace) -> int:
    """Build the recall fleet, then report accuracy (overall and by popularity), answer tokens and
    logprob AUC per model on evaluation-split questions (bfloat16)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from calibration.graders import numeric_match
    from cascade_serve.progress import LoggedProgress
    from toymodels.recall_fleet import (
        build_recall_fleet,
        evaluate_recall_model,
        question_key,
        recall_build_info,
        recall_prompts,
        recall_table,
    )

    out = args.out or Path(".cache/recall")
    start = time.perf_counter()
    with LoggedProgress(TextColumn("{task.description:<9}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=Console(stderr=True)) as bar:
        paths = build_recall_fleet(out, progress=bar, jobs=args.jobs)
    Console(stderr=True).print(f"fleet ready in {time.perf_counter() - start:.0f} s (wall; 0 when cached)")
    if args.eval <= 0:
        return 0
    rows = recall_prompts(args.eval, args.seed, split="evaluation")
    popularity = np.array([recall_table().popularity[question_key(r["messages"][0]["content"])] for r in rows])
    quartile = np.digitize(popularity, np.quantile(popularity, [0.25, 0.5, 0.75]))
    table = Table(title=f"recall fleet: {args.eval} evaluation-split questions (seed {args.seed}), bfloat16, greedy")
    for col in ("model", "train CPU s", "accuracy", "by popularity, rare to frequent", "answer tokens",
                "AUC exp(mean lp)"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for name, path in paths.items():
        res = evaluate_recall_model(path, rows, grade=numeric_match)
        ok = np.array([r["correct"] for r in res])
        conf = [math.exp(float(np.mean(r["token_logprobs"]))) if r["token_logprobs"] else 0.0 for r in res]
        tokens = np.mean([len(r["token_logprobs"]) for r in res])
        by_quartile = [ok[quartile == q].mean() if np.any(quartile == q) else float("nan") for q in range(4)]
        info = recall_build_info(path)
        table.add_row(name, f"{info.get('train_cpu_s', info['train_s']):.0f}", f"{ok.mean():.1%}",
                      " ".join(f"{100 * a:.0f}" for a in by_quartile) + " %", f"{tokens:.1f}",
                      f"{logprob_auc(conf, ok.tolist()):.3f}")
    Console().print(table)
    return 0


def logprob_auc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """ROC AUC of ``scores`` for ``labels`` (ties count half); nan when one class is missing."""
    s, y = np.asarray(scores, dtype=float), np.asarray(labels, dtype=bool)
    pos, neg = s[y], s[~y]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))
