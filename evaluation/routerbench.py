"""Load RouterBench per-query, per-model results (wide CSV or pickle) into arrays for routing experiments.

RouterBench (Hu et al., 2024) stores one row per query and, per model, a 0/1 score column named by the
model, ``<model>|model_response`` and ``<model>|total_cost`` (USD). The paper's RouterBench protocol
(algorithm-spec §5.1) reads quality from the score column and cost from the cost column; this module
turns those files into a validated :class:`~estimators.table.QueryModelTable` (cost unit USD) without
needing pandas for CSV.

Data quirk handled here: in the republished zero-shot files 14 ARC-Challenge ``sample_id`` values occur
twice. One row holds the scores of every model except ``gpt-3.5-turbo-1106``; its twin has the prompt
duplicated (a two-element prompt list), roughly doubled costs, identical responses and *only* the
``gpt-3.5-turbo-1106`` score. The loader keeps the complete-most row and fills a missing score from a
twin row with the same ``sample_id`` **only when both rows hold the same response text for that model**
(a score grades a response, so it carries over). This keeps all 3,164 queries with all 11 scores.
"""

from __future__ import annotations

import ast
import csv
import logging
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from estimators.table import QueryModelTable, column_indices

__all__ = ["MODEL_SETS", "ROUTERBENCH_MODELS", "load_routerbench", "split_by_file"]

logger = logging.getLogger(__name__)

FloatArray = NDArray[np.float64]


# Score-column order of the RouterBench wide files (columns 4..14 after the leading pandas index,
# sample_id, prompt and eval_name); algorithm-spec §5.1 indexes models in this order.
ROUTERBENCH_MODELS: tuple[str, ...] = (
    "WizardLM/WizardLM-13B-V1.2",
    "claude-instant-v1",
    "claude-v1",
    "claude-v2",
    "gpt-3.5-turbo-1106",
    "gpt-4-1106-preview",
    "meta/code-llama-instruct-34b-chat",
    "meta/llama-2-70b-chat",
    "mistralai/mistral-7b-chat",
    "mistralai/mixtral-8x7b-chat",
    "zero-one-ai/Yi-34B-Chat",
)

# The paper's model sets (algorithm-spec §5.1: indices {9,4,5}, {0,9,4,3,5} and all 11).
MODEL_SETS: dict[int, tuple[str, ...]] = {
    3: ("mistralai/mixtral-8x7b-chat", "gpt-3.5-turbo-1106", "gpt-4-1106-preview"),
    5: (
        "WizardLM/WizardLM-13B-V1.2",
        "mistralai/mixtral-8x7b-chat",
        "gpt-3.5-turbo-1106",
        "claude-v2",
        "gpt-4-1106-preview",
    ),
    11: ROUTERBENCH_MODELS,
}

_RESPONSE_SUFFIX = "|model_response"
_COST_SUFFIX = "|total_cost"
_REQUIRED_COLUMNS = ("sample_id", "prompt", "eval_name")
# Python's csv default (128 KiB per field) is too small for few-shot prompts; stay within a C long
# on every platform rather than using sys.maxsize.
_CSV_FIELD_LIMIT = 2**31 - 1


def load_routerbench(path: str | Path, *, models: Iterable[str] | None = None) -> QueryModelTable:
    """Load RouterBench results from a directory of wide CSVs, one CSV, or an original pickle.

    Parameters
    ----------
    path : str or Path
        - a directory: every ``*.csv`` in it (e.g. ``arc_challenge_train.csv``), read in filename order
          and concatenated;
        - a ``.csv`` file in RouterBench's wide layout (leading pandas index, ``sample_id``, ``prompt``,
          ``eval_name``, one score column per model, ``<model>|model_response``, ``<model>|total_cost``);
        - a ``.pkl`` file as published by withmartian/routerbench: a pandas DataFrame with the same
          columns. Needs pandas. **Unpickling runs arbitrary code: only load files you trust.**
    models : iterable of str, optional
        Models to load, in this column order. Default: every model of the (first) file, in its
        score-column order (for the real data, :data:`ROUTERBENCH_MODELS`).

    Returns
    -------
    QueryModelTable
        One row per unique ``sample_id`` that has a score for every selected model, in order of first
        appearance. Rows missing a selected score are dropped (after the twin-row repair described in
        the module docstring); of repeated ``sample_id`` values the first complete row is kept.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If a file is malformed (the message names the file and, for a bad cell, the row and column), a
        requested model is unknown, a cost is negative or non-finite, or no row survives.
    ImportError
        If ``path`` is a pickle and pandas is not installed.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"RouterBench data not found: {path}")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix == ".csv" and p.is_file())
        if not files:
            raise ValueError(f"{path}: directory contains no .csv files")
    elif path.suffix == ".csv":
        files = [path]
    elif path.suffix in (".pkl", ".pickle"):
        files = [path]
    else:
        raise ValueError(f"{path}: expected a directory, a .csv file or a .pkl file")

    selected = None if models is None else tuple(models)
    if selected is not None and not selected:
        raise ValueError("models must name at least one model")
    records: list[_Record] = []
    with_responses = True
    for file in files:
        opener = _open_pickle if file.suffix in (".pkl", ".pickle") else _open_csv
        with opener(file) as (header, rows):
            if len(set(header)) != len(header):
                dup = sorted({c for c in header if header.count(c) > 1})
                raise ValueError(f"{file}: duplicate column name(s) {dup}")
            if selected is None:
                selected = _score_columns(header)
                if not selected:
                    raise ValueError(
                        f"{file}: no model columns found (a score column '<model>' needs a "
                        f"'<model>{_COST_SUFFIX}' column)"
                    )
            _check_columns(file, header, selected)
            has_responses = all(m + _RESPONSE_SUFFIX in header for m in selected)
            with_responses = with_responses and has_responses
            records.extend(_parse_row(where, row, selected, has_responses) for where, row in rows)
    assert selected is not None  # set from the first file at the latest

    kept = _repair_and_deduplicate(records, len(selected), with_responses)
    if not kept:
        raise ValueError(f"{path}: no row has a score for every selected model {list(selected)}")
    logger.info("loaded %d unique queries from %d rows of %s", len(kept), len(records), path)
    return QueryModelTable(
        sample_ids=tuple(r.sample_id for r in kept),
        prompts=tuple(r.prompt for r in kept),
        eval_names=tuple(r.eval_name for r in kept),
        models=selected,
        quality=np.array([r.quality for r in kept], dtype=np.float64).reshape(len(kept), len(selected)),
        cost=np.array([r.cost for r in kept], dtype=np.float64).reshape(len(kept), len(selected)),
        responses=tuple(tuple(r.responses or ()) for r in kept) if with_responses else None,
    )


def split_by_file(table: QueryModelTable, path: str | Path) -> tuple[QueryModelTable, QueryModelTable]:
    """Split a loaded table into the rows of the folder's ``*_train.csv`` and ``*_test.csv`` files.

    The republished RouterBench files come as train/test pairs per task. A ``sample_id`` that occurs in
    any test file counts as **test**, even if a train file repeats it (6 ids in the real data): the train
    side must never hold a query that is scored. Rows of ``table`` in neither kind of file are left out.

    Parameters
    ----------
    table : QueryModelTable
        Loaded from ``path`` (``load_routerbench(path)``), any model selection.
    path : str or Path
        The folder ``table`` came from.

    Returns
    -------
    (train, test) : tuple of QueryModelTable
        Disjoint in ``sample_id``, rows in ``table`` order.

    Raises
    ------
    ValueError
        If ``path`` is not a folder with at least one ``*_train.csv`` and one ``*_test.csv``, or a side
        ends up empty.
    """
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"{path}: a train/test split needs a folder of *_train.csv and *_test.csv files")
    ids: dict[str, set[str]] = {}
    for kind in ("train", "test"):
        files = sorted(p for p in path.glob(f"*_{kind}.csv") if p.is_file())
        if not files:
            raise ValueError(f"{path}: no *_{kind}.csv file; a train/test split needs both kinds")
        ids[kind] = set()
        for file in files:
            with _open_csv(file) as (header, rows):
                if "sample_id" not in header:
                    raise ValueError(f"{file}: missing column(s) ['sample_id']")
                ids[kind].update(str(row["sample_id"]) for _, row in rows)
    train_rows = [r for r, s in enumerate(table.sample_ids) if s in ids["train"] and s not in ids["test"]]
    test_rows = [r for r, s in enumerate(table.sample_ids) if s in ids["test"]]
    if not train_rows or not test_rows:
        raise ValueError(
            f"{path}: the split left {len(train_rows)} train and {len(test_rows)} test rows of the table; "
            "was the table loaded from this folder?"
        )
    return table.take(train_rows), table.take(test_rows)


# --------------------------------------------------------------------------------------------------
# Internals


@dataclass
class _Record:
    """One parsed source row; missing scores are NaN until the twin-row repair."""

    where: str
    sample_id: str
    prompt: str
    eval_name: str
    quality: list[float]
    cost: list[float]
    responses: list[str] | None


def _score_columns(header: Sequence[str]) -> tuple[str, ...]:
    names = set(header)
    return tuple(c for c in header if c and "|" not in c and c + _COST_SUFFIX in names)


def _check_columns(file: Path, header: Sequence[str], models: Sequence[str]) -> None:
    missing = [c for c in _REQUIRED_COLUMNS if c not in header]
    if missing:
        raise ValueError(f"{file}: missing column(s) {missing}")
    # A model is known to a file when it has both its score and its cost column.
    column_indices(models, _score_columns(header), where=str(file))


@contextmanager
def _open_csv(file: Path) -> Iterator[tuple[list[str], Iterator[tuple[str, Mapping[str, Any]]]]]:
    """Yield the header and an iterator of ``(where, row)``; ``where`` names the file, row and line."""
    old_limit = csv.field_size_limit(_CSV_FIELD_LIMIT)
    try:
        with open(file, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            try:
                header = next(reader)
            except StopIteration:
                raise ValueError(f"{file}: empty file (no header)") from None
            except csv.Error as exc:
                raise ValueError(f"{file}: line {reader.line_num}: {exc}") from exc

            def rows() -> Iterator[tuple[str, Mapping[str, Any]]]:
                row_number = 0
                while True:
                    # Fields may span lines, so remember where the record starts for the message.
                    start = reader.line_num + 1
                    try:
                        values = next(reader)
                    except StopIteration:
                        return
                    except csv.Error as exc:
                        raise ValueError(f"{file}: row {row_number + 1} (line {start}): {exc}") from exc
                    row_number += 1
                    if not values:  # a blank line, as csv.reader reports it
                        continue
                    where = f"{file}: row {row_number} (line {start})"
                    if len(values) != len(header):
                        raise ValueError(f"{where}: has {len(values)} fields, the header has {len(header)}")
                    yield where, dict(zip(header, values, strict=True))

            yield header, rows()
    finally:
        csv.field_size_limit(old_limit)


@contextmanager
def _open_pickle(file: Path) -> Iterator[tuple[list[str], Iterator[tuple[str, Mapping[str, Any]]]]]:
    """Like :func:`_open_csv` for a pickled DataFrame (original withmartian/routerbench layout)."""
    try:
        import pandas as pd
    except ImportError as exc:
        raise ImportError(
            f"{file}: loading a RouterBench pickle needs pandas (pip install pandas); "
            "the CSV files load without it"
        ) from exc
    # Unpickling executes code from the file: the public docstring tells callers to load trusted files only.
    df = pd.read_pickle(file)
    if not isinstance(df, pd.DataFrame):
        raise ValueError(f"{file}: expected a pickled pandas DataFrame, got {type(df).__name__}")
    header = [str(c) for c in df.columns]
    columns = {name: df[col].tolist() for name, col in zip(header, df.columns, strict=True)}
    labels = df.index.tolist()

    def rows() -> Iterator[tuple[str, Mapping[str, Any]]]:
        for i, label in enumerate(labels):
            yield f"{file}: row {i + 1} (index {label!r})", {c: v[i] for c, v in columns.items()}

    yield header, rows()


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return value.strip() == "" or value.strip().lower() == "nan"
    try:
        return math.isnan(float(value))
    except (TypeError, ValueError):
        return False


def _number(value: Any, where: str, column: str, what: str) -> float:
    try:
        out = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}, column {column!r}: {what} {value!r} is not a number") from None
    return out


def _as_text(value: Any) -> str:
    """RouterBench stores prompts and responses as (stringified) lists of strings: join them."""
    if isinstance(value, (list, tuple)) and all(isinstance(s, str) for s in value):
        return "\n".join(value)
    if _is_missing(value):
        return ""
    text = str(value)
    if text.startswith("[") and text.endswith("]"):
        try:
            parsed = ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return text
        if isinstance(parsed, list) and all(isinstance(s, str) for s in parsed):
            return "\n".join(parsed)
    return text


def _parse_row(where: str, row: Mapping[str, Any], models: Sequence[str], with_responses: bool) -> _Record:
    quality: list[float] = []
    cost: list[float] = []
    for m in models:
        raw_q = row[m]
        if _is_missing(raw_q):
            q = math.nan
        else:
            q = _number(raw_q, where, m, "score")
            if not (0.0 <= q <= 1.0):
                raise ValueError(f"{where}, column {m!r}: score {q!r} is outside [0, 1]")
        col = m + _COST_SUFFIX
        raw_c = row[col]
        if _is_missing(raw_c):
            # A model that was not scored on this row may lack a cost too; the row is then dropped.
            if not math.isnan(q):
                raise ValueError(f"{where}, column {col!r}: cost is missing")
            c = math.nan
        else:
            c = _number(raw_c, where, col, "cost")
            if not math.isfinite(c) or c < 0:
                raise ValueError(f"{where}, column {col!r}: cost {c!r} must be finite and non-negative")
        quality.append(q)
        cost.append(c)
    sample_id = row["sample_id"]
    if _is_missing(sample_id):
        raise ValueError(f"{where}, column 'sample_id': empty sample_id")
    return _Record(
        where=where,
        sample_id=str(sample_id),
        prompt=_as_text(row["prompt"]),
        eval_name="" if _is_missing(row["eval_name"]) else str(row["eval_name"]),
        quality=quality,
        cost=cost,
        responses=[_as_text(row[m + _RESPONSE_SUFFIX]) for m in models] if with_responses else None,
    )


def _repair_and_deduplicate(records: list[_Record], n_models: int, with_responses: bool) -> list[_Record]:
    """One complete record per sample_id, in order of first appearance (see the module docstring)."""
    groups: dict[str, list[_Record]] = {}
    for r in records:
        groups.setdefault(r.sample_id, []).append(r)
    kept: list[_Record] = []
    n_filled = n_incomplete = 0
    for group in groups.values():
        # max() returns the first of equally complete rows: "keep the first" among complete duplicates.
        base = max(group, key=lambda r: sum(not math.isnan(q) for q in r.quality))
        if len(group) > 1 and with_responses:
            for j in range(n_models):
                if not math.isnan(base.quality[j]) or math.isnan(base.cost[j]):
                    continue
                for twin in group:
                    if (
                        twin is not base
                        and not math.isnan(twin.quality[j])
                        and twin.responses is not None
                        and base.responses is not None
                        and twin.responses[j] == base.responses[j]
                    ):
                        base.quality[j] = twin.quality[j]
                        n_filled += 1
                        logger.debug("%s: score of model %d taken from %s (same response)",
                                     base.where, j, twin.where)
                        break
        if any(math.isnan(q) for q in base.quality):
            n_incomplete += 1
            continue
        kept.append(base)
    if n_filled or n_incomplete or len(groups) != len(records):
        logger.info(
            "%d rows, %d unique sample_ids: %d scores filled from twin rows, %d sample_ids dropped "
            "for a missing score", len(records), len(groups), n_filled, n_incomplete,
        )
    return kept
