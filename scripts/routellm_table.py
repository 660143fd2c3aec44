"""Turn RouteLLM's published evaluations (MMLU, GSM8K; two models) into tables ``cascade eval`` reads.

    .venv/bin/python -m scripts.routellm_table --out runs/routellm
    .venv/bin/python -m scripts.eval_routerbench_all --data runs/routellm/gsm8k.csv --models all \
        --out runs/routellm_gsm8k --seeds 0-4 --test-sizes 0.95,0.99

RouteLLM (lm-sys/RouteLLM, ``routellm/evals``) publishes per-question correctness of Mixtral-8x7B-Instruct
and GPT-4-1106-preview, with both answers for GSM8K and none for MMLU, and no costs. This script writes
each benchmark as one CSV in RouterBench's wide layout (``sample_id``, ``prompt``, ``eval_name``, per model
a 0/1 score, ``|model_response`` where the answer is known, ``|total_cost`` in USD), so the protocol runs
on data the project was not developed on.

Cost is priced the way RouterBench priced the same two models: about 4 characters a token and USD 0.6
per million tokens for Mixtral in and out, USD 10 in and 30 out for GPT-4-1106-preview. Least squares on
RouterBench's own rows gives those rates to within 1 % (docs/routellm_results.md). MMLU answers are one
letter, priced as one output token.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# RouteLLM's column names, and the names RouterBench gives the same models (so model sets read alike).
MODELS: tuple[tuple[str, str], ...] = (
    ("mistralai/Mixtral-8x7B-Instruct-v0.1", "mistralai/mixtral-8x7b-chat"),
    ("gpt-4-1106-preview", "gpt-4-1106-preview"),
)
# USD per million tokens (input, output), RouterBench's prices for these two models.
USD_PER_MTOKEN: dict[str, tuple[float, float]] = {
    "mistralai/mixtral-8x7b-chat": (0.6, 0.6),
    "gpt-4-1106-preview": (10.0, 30.0),
}
CHARS_PER_TOKEN = 4.0
_DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "routellm"


@dataclass(frozen=True, slots=True)
class Row:
    """One question: its prompt, each model's 0/1 score, and each model's answer where published."""

    sample_id: str
    eval_name: str
    prompt: str
    scores: tuple[float, ...]
    responses: tuple[str, ...] | None


def tokens(text: str) -> int:
    """Approximate token count, at least 1 (RouterBench's rate of about 4 characters a token)."""
    return max(1, math.ceil(len(text) / CHARS_PER_TOKEN))


def cost_usd(model: str, prompt: str, response: str | None) -> float:
    """Price of one answer; a missing response is one token (a multiple-choice letter)."""
    usd_in, usd_out = USD_PER_MTOKEN[model]
    out_tokens = 1 if response is None else tokens(response)
    return (tokens(prompt) * usd_in + out_tokens * usd_out) / 1e6


def _score(value: str, where: str) -> float:
    text = value.strip().lower()
    if text in ("true", "1", "1.0"):
        return 1.0
    if text in ("false", "0", "0.0"):
        return 0.0
    raise ValueError(f"{where}: expected a boolean correctness, got {value!r}")


def read_benchmark(files: list[Path], eval_name: str | None = None) -> Iterator[Row]:
    """Rows of RouteLLM response CSVs (``prompt``, one correctness column per model, optional
    ``<model>_response``); ``eval_name`` defaults to each file's stem."""
    # GSM8K answers can exceed csv's default field limit; restored when the rows are read.
    old_limit = csv.field_size_limit(2**31 - 1)
    try:
        yield from _read_files(files, eval_name)
    finally:
        csv.field_size_limit(old_limit)


def _read_files(files: list[Path], eval_name: str | None) -> Iterator[Row]:
    for file in files:
        with open(file, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            header = reader.fieldnames or []
            missing = [c for c in ("prompt", *(src for src, _ in MODELS)) if c not in header]
            if missing:
                raise ValueError(f"{file}: missing column(s) {missing}")
            with_responses = all(f"{src}_response" in header for src, _ in MODELS)
            name = eval_name or file.stem
            for i, rec in enumerate(reader):
                where = f"{file}: row {i + 1}"
                yield Row(
                    sample_id=f"{name}.{i}", eval_name=name, prompt=rec["prompt"],
                    scores=tuple(_score(rec[src], where) for src, _ in MODELS),
                    responses=tuple(rec[f"{src}_response"] or "" for src, _ in MODELS) if with_responses else None,
                )


def write_table(rows: Iterator[Row], out: Path) -> int:
    """Write rows in RouterBench's wide CSV layout; return how many."""
    names = [dst for _, dst in MODELS]
    out.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(out, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        first = next(rows, None)
        if first is None:
            raise ValueError(f"no rows to write to {out}")
        header = ["", "sample_id", "prompt", "eval_name", *names]
        if first.responses is not None:
            header += [f"{m}|model_response" for m in names]
        header += [f"{m}|total_cost" for m in names]
        writer.writerow(header)
        for row in (first, *rows):
            responses = row.responses or (None,) * len(names)
            cells: list[object] = [n, row.sample_id, row.prompt, row.eval_name, *row.scores]
            if first.responses is not None:
                cells += list(responses)
            cells += [cost_usd(m, row.prompt, r) for m, r in zip(names, responses, strict=True)]
            writer.writerow(cells)
            n += 1
    return n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=_DEFAULT_DATA, help="RouteLLM evals folder "
                        "(gsm8k/gsm8k_responses.csv, mmlu/responses/*.csv; default ../shared/data/routellm)")
    parser.add_argument("--out", type=Path, default=Path("runs/routellm"), help="folder for gsm8k.csv and mmlu.csv")
    args = parser.parse_args(argv)
    gsm8k = args.data / "gsm8k" / "gsm8k_responses.csv"
    mmlu = sorted((args.data / "mmlu" / "responses").glob("*.csv"))
    if not gsm8k.is_file() or not mmlu:
        print(f"RouteLLM data not found under {args.data} (need {gsm8k} and mmlu/responses/*.csv)", file=sys.stderr)
        return 2
    for name, rows in (("gsm8k", read_benchmark([gsm8k], "gsm8k")), ("mmlu", read_benchmark(mmlu))):
        path = args.out / f"{name}.csv"
        print(f"{path}: {write_table(rows, path)} questions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
