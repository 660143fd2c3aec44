"""The query x model table: per query, every model's quality and cost, and what its answer showed.

The estimators' own input type: a benchmark's rows (``evaluation.routerbench``) and a calibration
replay of the user's prompts (``calibration.fit``) both become one. Cost is unit-neutral: a
benchmark's dollars or measured GPU-seconds, named by ``cost_unit``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

__all__ = ["ANSWER_KINDS", "ANSWER_STATS", "QueryModelTable", "column_indices"]

FloatArray = NDArray[np.float64]

# Columns of ``QueryModelTable.answer_stats``: the answer's own post-hoc signals (algorithm-spec §5.2).
ANSWER_STATS: tuple[str, ...] = ("mean_logprob", "min_logprob", "q10_logprob", "stopped_at_max_tokens")
ANSWER_KINDS: tuple[str, ...] = ("choice", "code", "final")


@dataclass(frozen=True, eq=False)
class QueryModelTable:
    """Per-query ground truth of a set of models, one row per unique ``sample_id``.

    Arrays are stored as read-only float64 copies so a table can be shared between experiments
    without one of them mutating another's ground truth.

    Attributes
    ----------
    sample_ids : tuple of str, length n_queries
        Query ids, unique.
    prompts : tuple of str, length n_queries
        Prompt text.
    eval_names : tuple of str, length n_queries
        Task of each query, e.g. ``"arc-challenge"``, ``"mbpp"``, ``"winogrande"``.
    models : tuple of str, length n_models
        Model names; column ``j`` of every array belongs to ``models[j]``.
    quality : ndarray of shape (n_queries, n_models)
        Score of each model's answer, in [0, 1] (0/1 correctness for these tasks).
    cost : ndarray of shape (n_queries, n_models)
        Realised cost of each model's answer, finite and non-negative, in :attr:`cost_unit`.
    responses : tuple of tuple of str, or None
        ``responses[i][j]`` is model ``j``'s answer text to query ``i``; None when the source has no
        response columns.
    answer_stats : ndarray of shape (n_queries, n_models, N_ANSWER_STATS), or None
        The answer's own signals where the engine reported them (a calibration replay; RouterBench has
        none): columns :data:`ANSWER_STATS` (token log-probability mean, minimum and 10th percentile,
        and 1.0 when the answer stopped at ``max_tokens``).
    answer_kinds : tuple of str, or None
        Per query, how answers are compared (:data:`ANSWER_KINDS`): ``"choice"`` (option letters),
        ``"code"`` (token overlap of programs) or ``"final"`` (the final answer, numeric or text, as the
        graders extract it). None: detected from the prompt, as for RouterBench.
    cost_unit : str
        What ``cost`` counts: ``"USD"`` for a benchmark's prices, ``"GPU-s"`` for measured GPU time.
    """

    sample_ids: tuple[str, ...]
    prompts: tuple[str, ...]
    eval_names: tuple[str, ...]
    models: tuple[str, ...]
    quality: FloatArray
    cost: FloatArray
    responses: tuple[tuple[str, ...], ...] | None = None
    answer_stats: FloatArray | None = None
    answer_kinds: tuple[str, ...] | None = None
    cost_unit: str = "USD"

    def __post_init__(self) -> None:
        for name in ("sample_ids", "prompts", "eval_names", "models"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        n, k = len(self.sample_ids), len(self.models)
        if len(set(self.models)) != k:
            raise ValueError(f"models must be unique, got {list(self.models)}")
        if len(set(self.sample_ids)) != n:
            raise ValueError("sample_ids must be unique")
        for name in ("prompts", "eval_names"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} has length {len(getattr(self, name))}, expected {n} (n_queries)")
        for name in ("quality", "cost"):
            arr = np.array(getattr(self, name), dtype=np.float64, copy=True)
            if arr.shape != (n, k):
                raise ValueError(f"{name} has shape {arr.shape}, expected {(n, k)} (n_queries, n_models)")
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"{name} contains non-finite values")
            arr.flags.writeable = False
            object.__setattr__(self, name, arr)
        if np.any((self.quality < 0) | (self.quality > 1)):
            raise ValueError("quality must lie in [0, 1]")
        if np.any(self.cost < 0):
            raise ValueError(f"cost must be non-negative, got minimum {float(self.cost.min())!r}")
        if self.responses is not None:
            responses = tuple(tuple(r) for r in self.responses)
            if len(responses) != n or any(len(r) != k for r in responses):
                raise ValueError(f"responses must be {n} rows of {k} strings (n_queries, n_models)")
            object.__setattr__(self, "responses", responses)
        if self.answer_stats is not None:
            stats = np.array(self.answer_stats, dtype=np.float64, copy=True)
            if stats.shape != (n, k, len(ANSWER_STATS)):
                raise ValueError(f"answer_stats has shape {stats.shape}, expected {(n, k, len(ANSWER_STATS))}")
            if not np.all(np.isfinite(stats)):
                raise ValueError("answer_stats contains non-finite values")
            stats.flags.writeable = False
            object.__setattr__(self, "answer_stats", stats)
        if self.answer_kinds is not None:
            kinds = tuple(self.answer_kinds)
            bad = sorted(set(kinds) - set(ANSWER_KINDS))
            if len(kinds) != n or bad:
                raise ValueError(f"answer_kinds must be {n} values among {list(ANSWER_KINDS)}, got {bad or len(kinds)}")
            object.__setattr__(self, "answer_kinds", kinds)

    @property
    def n_queries(self) -> int:
        return len(self.sample_ids)

    @property
    def n_models(self) -> int:
        return len(self.models)

    def select_models(self, names: Iterable[str]) -> QueryModelTable:
        """The table restricted to ``names``, with columns in that order.

        Rows are not re-filtered: every row already has a score for every loaded model. Loading with
        ``load_routerbench(..., models=names)`` instead may keep more rows, since only the selected
        models' scores must then be present.

        Raises
        ------
        ValueError
            If a name is not one of ``self.models`` or a name repeats.
        """
        names = tuple(names)
        cols = column_indices(names, self.models, where="this table")
        responses = None
        if self.responses is not None:
            responses = tuple(tuple(r[j] for j in cols) for r in self.responses)
        return QueryModelTable(
            sample_ids=self.sample_ids,
            prompts=self.prompts,
            eval_names=self.eval_names,
            models=names,
            quality=self.quality[:, cols],
            cost=self.cost[:, cols],
            responses=responses,
            answer_stats=None if self.answer_stats is None else self.answer_stats[:, cols],
            answer_kinds=self.answer_kinds,
            cost_unit=self.cost_unit,
        )

    def sorted_by_cost(self) -> QueryModelTable:
        """The same table with models ordered by increasing mean cost (algorithm-spec §1.1).

        The sort is stable, so models with equal mean cost keep their current order.
        """
        order = np.argsort(self.cost.mean(axis=0), kind="stable")
        return self.select_models(self.models[j] for j in order)

    def take(self, rows: Sequence[int] | NDArray[np.intp]) -> QueryModelTable:
        """The table restricted to ``rows`` (integer positions, e.g. a train or test split)."""
        idx = np.asarray(rows, dtype=np.intp).reshape(-1)
        return QueryModelTable(
            sample_ids=tuple(self.sample_ids[i] for i in idx),
            prompts=tuple(self.prompts[i] for i in idx),
            eval_names=tuple(self.eval_names[i] for i in idx),
            models=self.models,
            quality=self.quality[idx],
            cost=self.cost[idx],
            responses=None if self.responses is None else tuple(self.responses[i] for i in idx),
            answer_stats=None if self.answer_stats is None else self.answer_stats[idx],
            answer_kinds=None if self.answer_kinds is None else tuple(self.answer_kinds[i] for i in idx),
            cost_unit=self.cost_unit,
        )


def column_indices(names: Sequence[str], known: Sequence[str], *, where: str) -> list[int]:
    """Positions of ``names`` in ``known``; unknown or repeated names are an error naming ``where``."""
    unknown = [m for m in names if m not in known]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown} in {where}; known models: {list(known)}")
    if len(set(names)) != len(names):
        raise ValueError(f"models must be unique, got {list(names)}")
    return [list(known).index(m) for m in names]
