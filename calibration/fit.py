"""Fitting a fleet's estimators and lambdas from a replay of the user's labelled prompts.

Input: the prompt set (``calibration.prompt_set``) and, per (prompt, model), what the model answered and
what its engine measured (``calibration.replay``). Steps:

1. **Grade** every answer with the row's grader (``calibration.graders.grade``: a grader that raises or
   hangs marks that answer 0 with its status; the row is kept and counted). Scores are thresholded at
   0.5 for the classifiers, which are binary.
2. **Table**: models sorted by mean measured GPU-seconds; cost = measured GPU-seconds; answers, token
   log-probability statistics and finish reasons as post-hoc signals; answers compared as the row's
   grader compares them (``final``/``choice``/``code``). Prompts that some model did not answer are
   left out (counted).
3. **Split** (seeded): estimator training rows, and held-out rows that the estimators never see.
4. **Fit** :class:`~estimators.trained_quality.TrainedQualityEstimator` and the GPU-time cost model on
   the training rows; measure the cost model's error on the held-out rows.
5. **Lambdas**: on the held-out rows' first half (validation), each policy's mean cost and quality
   for a grid of constant lambdas, with the trained estimates: the curve from which a budget picks
   its lambda (the largest quality within the budget), as the controller runs it.
6. **Pareto report**: the RouterBench protocol (``evaluation.protocol``) on the held-out rows with
   the estimators trained on the training rows: lambdas fitted on the validation half, quality and
   GPU-seconds of every single model, routing, both cascades and cascade routing on the test half,
   AUC and bootstrap intervals.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from calibration.graders import grade, load_grader
from calibration.prompt_set import PromptRow
from calibration.replay import ReplayRecord
from estimators.answer_signals import answer_stats
from estimators.calibrated_quality import SERVING_TASK
from estimators.table import ANSWER_STATS, QueryModelTable
from routing import CONSTANT_LAMBDA_POLICIES, constant_lambda_policy, cost_standard_error, rollout

__all__ = ["GRADER_KINDS", "GradedTable", "build_table", "lambda_curves", "split_rows"]

FloatArray = NDArray[np.float64]
Progress = Callable[[str, int, int], None]

# How answers of a grader's rows are compared with each other (agreement, a post-hoc signal).
GRADER_KINDS = {"numeric": "final", "exact_match": "final", "choice": "choice", "code_tests": "code"}


@dataclass
class GradedTable:
    """The calibration table and what did not make it in."""

    table: QueryModelTable
    tasks: tuple[str, ...]  # the prompt file's task labels (for reports; the estimators see one task)
    grade_problems: list[dict[str, Any]] = field(default_factory=list)  # rows whose grader failed
    missing: list[str] = field(default_factory=list)  # prompt ids some model did not answer


def build_table(
    rows: Sequence[PromptRow],
    models: Sequence[str],
    records: Mapping[tuple[str, str], ReplayRecord],
    *,
    grade_timeout_s: float = 10.0,
    progress: Progress | None = None,
) -> GradedTable:
    """Grade every answer and assemble the table (module docstring, steps 1-2).

    ``records``: (prompt id, model) → the replay's record; a failed one counts as no answer.
    """
    graders = {name: load_grader(name) for name in sorted({r.grader for r in rows})}
    stages = {key: record.stage for key, record in records.items() if record.stage is not None}
    kept = [r for r in rows if all((r.id, m) in stages for m in models)]
    missing = [r.id for r in rows if any((r.id, m) not in stages for m in models)]
    if len(kept) < 10:
        raise ValueError(f"only {len(kept)} prompts have an answer from every model; calibration needs at least 10")
    k = len(models)
    quality = np.zeros((len(kept), k))
    cost = np.zeros((len(kept), k))
    stats = np.zeros((len(kept), k, len(ANSWER_STATS)))
    responses = []
    problems: list[dict[str, Any]] = []
    total = len(kept) * k
    for r, row in enumerate(kept):
        texts = []
        for j, model in enumerate(models):
            stage = stages[(row.id, model)]
            g = grade(graders[row.grader], stage.text, row.answer, timeout_s=grade_timeout_s)
            if g.status != "ok":
                problems.append({"id": row.id, "model": model, "status": g.status, "detail": g.detail})
            quality[r, j] = 1.0 if g.score >= 0.5 else 0.0
            cost[r, j] = stage.gpu_s
            stats[r, j] = answer_stats(stage.token_logprobs, stage.finish_reason)
            texts.append(stage.text)
            if progress is not None:
                progress("grade", r * k + j + 1, total)
        responses.append(tuple(texts))
    table = QueryModelTable(
        sample_ids=tuple(r.id for r in kept), prompts=tuple(r.text for r in kept),
        eval_names=(SERVING_TASK,) * len(kept), models=tuple(models), quality=quality, cost=cost,
        responses=tuple(responses), answer_stats=stats,
        answer_kinds=tuple(GRADER_KINDS.get(r.grader, "final") for r in kept), cost_unit="GPU-s",
    ).sorted_by_cost()
    return GradedTable(table=table, tasks=tuple(r.task for r in kept), grade_problems=problems, missing=missing)


def split_rows(n: int, *, held_out: float, seed: int) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """Seeded (training rows, held-out rows); each side keeps at least 10 rows."""
    if not 0.0 < held_out < 1.0:
        raise ValueError(f"held_out must be a fraction in (0, 1), got {held_out!r}")
    order = np.random.default_rng(seed).permutation(n)
    n_held = min(max(10, round(n * held_out)), n - 10)
    if n_held < 10:
        raise ValueError(f"{n} prompts cannot be split into >= 10 training and >= 10 held-out rows")
    return np.sort(order[n_held:]), np.sort(order[:n_held])


def lambda_grid(policy: str, mean_cost: float, n: int = 25) -> list[float]:
    """Constant lambdas spanning 'always the best' to 'always the cheapest' for a policy."""
    if policy == "threshold_cascade":  # lambda = 1 - quality threshold
        return [float(x) for x in np.linspace(0.0, 1.0, n)]
    scale = 1.0 / max(mean_cost, 1e-12)  # quality per unit cost where cost starts to dominate
    return [0.0] + [float(x) for x in scale * np.logspace(-3, 2, n - 1)]


def lambda_curves(
    source: Any, quality: FloatArray, cost: FloatArray, *, max_depth: int,
    policies: Sequence[str] = CONSTANT_LAMBDA_POLICIES,
) -> dict[str, list[dict[str, float]]]:
    """Per policy: mean cost, its standard error and mean quality of each constant lambda (module docstring,
    step 5)."""
    out: dict[str, list[dict[str, float]]] = {}
    for name in policies:
        points = []
        for lam in lambda_grid(name, float(cost.mean())):
            result = rollout(constant_lambda_policy(name, lam, max_depth), source, quality, cost)
            # cost_se: the standard error of the mean cost, from which a budget keeps its margin
            # (estimators.artifacts.lambda_for_budget, routing._budget_margin).
            points.append({"lambda": lam, "cost": float(result.cost.mean()),
                           "cost_se": cost_standard_error(result.cost), "quality": float(result.quality.mean())})
        out[name] = points
    return out
