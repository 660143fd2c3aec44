"""``cascade calibrate FILE --prompts data.jsonl``: measure the live fleet on the user's prompts and fit.

Steps, one function each, called in order by :func:`run_calibrate`:

1. **Inputs**: the fleet file, the prompt file, the models' fingerprints, the cascade's depth (a
   malformed ``--budget`` fails here, before the replay).
2. **Replay** every prompt through every model of the running fleet (``calibration.replay``:
   resumable, cached in ``OUT/replay.jsonl``).
3. **Grade** the answers and build the table (``calibration.fit``).
4. **Split** the table (seeded) into estimator-training and held-out prompts.
5. **Fit** the quality estimators and the GPU-time cost model on the training prompts; measure the cost
   model's error on the held-out ones.
6. **Lambda curves** of every policy on the held-out validation half.
7. **Report**: the Pareto report on the held-out test half (``evaluation.protocol``).
8. **Served policy per budget** (``calibration.served_policy``): at ``--budget`` and a few budgets
   across the reachable range, the candidates (the fleet file's policy and the simpler ones) chosen
   between on the validation half, every policy's evidence on the test half, the promise checked.
9. **Budget**: the lambda for ``--budget`` on the chosen policy's curve.
10. **Summary and save**: the artifacts (``estimators.artifacts``) and ``OUT/pareto.png``.
11. **Unreachable budget**: a budget below the cheapest setting is an error, raised after step 10.

The fleet file can then say ``cascade: {artifacts: OUT}`` and the controller serves the policy chosen
for ``--budget`` at its lambda; with ``budget_gpu_s: B`` it serves the fleet file's policy at B. The
run prints nothing: it tells a :class:`~calibration.reporter.Reporter` what it does (the command's
terminal UI is ``cascade_serve.calibrate``).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sklearn.model_selection import train_test_split

from calibration.fit import GradedTable, build_table, lambda_curves, split_rows
from calibration.prompt_set import PromptRow, load_prompt_set
from calibration.replay import ReplayRecord, load_cache, permanent_failures, replay
from calibration.reporter import Reporter, SilentReporter
from calibration.served_policy import HeldOutHalves, report_budgets, served_policy_report
from cluster.config import FleetConfig
from cluster.fingerprint import fleet_fingerprints
from estimators.artifacts import lambda_for_budget, point_cost_bound, save_artifacts
from estimators.calibrated_cost import CostSample, GpuTimeCostModel
from estimators.stage import QueryInfo
from estimators.table import QueryModelTable
from estimators.trained_quality import TrainedQualityEstimator
from evaluation.plots import plot_quality_cost
from evaluation.policy_choice import candidate_policies
from evaluation.protocol import ProtocolSettings, run_protocol
from routing import (
    DEFAULT_BUDGET_MARGIN_SE,
    BudgetUnreachableError,
    ScaledUncertainty,
    core_policy_name,
    fit_uncertainty_scale,
)

__all__ = ["QUALITY_PARAMS", "CalibrateOptions", "parse_budget", "run_calibrate"]

# Users' prompts often carry numbers, and how hard a question is follows how many digits they have,
# not their values (most of which training never saw): the ex-ante features add the prompt with its
# digits masked. On the toy fleet's replays that raised routing's held-out AUC by 4-7.5 points and
# cascade routing's by 4-5.4 (3 splits each of 2 replays); on RouterBench's text it moves AUC by 0.1.
QUALITY_PARAMS: dict[str, Any] = {"n_shape_features": 2**12}

Records = Mapping[tuple[str, str], ReplayRecord]


@dataclass(frozen=True)
class CalibrateOptions:
    """What ``cascade calibrate`` was asked to do (its command-line options, resolved)."""

    fleet_file: Path
    prompts: Path
    out: Path
    url: str = "http://127.0.0.1:8000"
    budget: str | None = None  # "0.05" GPU-s per query, or "40%" of the strongest model's cost
    held_out: float = 0.4
    concurrency: int = 4
    seed: int = 0
    grader: str = "exact_match"
    max_tokens: int = 64
    max_depth: int | None = None
    api_key: str | None = None
    bootstrap: int = 200
    # A budget's lambda keeps the validation mean cost plus this many standard errors within the budget
    # (routing._budget_margin); recorded in calibration.json, where the controller reads it.
    budget_margin_se: float = DEFAULT_BUDGET_MARGIN_SE


def parse_budget(text: str, strongest_gpu_s: float) -> float:
    """``"0.05"`` → 0.05 GPU-s per query; ``"40%"`` → 0.4 × the strongest (costliest) model's mean cost."""
    try:
        if text.endswith("%"):
            value = float(text[:-1]) / 100.0 * strongest_gpu_s
        else:
            value = float(text)
    except ValueError:
        raise ValueError(f"--budget must be GPU-seconds per query (0.05) or a percentage (40%), got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"--budget must be positive, got {text!r}")
    return value


def run_calibrate(opts: CalibrateOptions, *, reporter: Reporter | None = None) -> dict[str, Any]:
    """Run the whole calibration (module docstring, steps 1-11).

    Parameters
    ----------
    opts : CalibrateOptions
        The command's options.
    reporter : Reporter, optional
        Told each step's progress, notes and warnings; by default nothing is reported.

    Returns
    -------
    dict
        The summary written to ``OUT/calibration.json``.

    Raises
    ------
    BudgetUnreachableError
        ``--budget`` is below the cheapest setting. The artifacts are written first: their budget has
        ``lambda: null`` and the ``cheapest_gpu_s`` to ask for instead.
    """
    reporter = reporter if reporter is not None else SilentReporter()
    started_s = time.perf_counter()
    inputs = _load_inputs(opts)
    records = _replay(opts, inputs, reporter)
    replay_s = time.perf_counter() - started_s
    graded = _grade(inputs, records, reporter)
    split = _split(graded.table, opts)
    fitted = _fit(opts, inputs, split, records, reporter)
    settings = _protocol_settings(graded.table, opts, inputs.max_depth)
    curves, halves = _lambda_curves(split.held, settings, fitted.quality, reporter)
    report = _pareto_report(split, settings, reporter)
    budget_gpu_s = None if opts.budget is None else parse_budget(opts.budget, _strongest_gpu_s(graded.table))
    choice = _served_policy(opts, inputs, graded.table, curves, halves, budget_gpu_s, reporter)
    budget, unreachable = _budget(budget_gpu_s, inputs.fleet, curves, choice, opts.budget_margin_se)
    timing_s = {"replay": replay_s, "fit": fitted.fit_s, "total": time.perf_counter() - started_s}
    summary = _summary(opts, inputs, graded, split, fitted, curves, report, budget, timing_s)
    summary["policy_choice"] = choice
    summary["budget_margin_se"] = opts.budget_margin_se  # Artifacts.lambda_for serves budgets with it
    summary["uncertainty_scale"] = fitted.quality.uncertainty_scale_  # served: fitted with the lambda curves
    _save(opts, summary, fitted, report)
    if unreachable is not None:
        fleet_policy = core_policy_name(inputs.fleet.cascade.policy)
        fleet_floor_gpu_s = min(point_cost_bound(p, opts.budget_margin_se) for p in curves[fleet_policy])
        raise _unreachable_error(opts, unreachable, _strongest_gpu_s(graded.table), fleet_floor_gpu_s)
    return summary


@dataclass(frozen=True)
class _Inputs:
    fleet: FleetConfig
    rows: list[PromptRow]
    fingerprints: dict[str, str]  # model id → fingerprint, in the fleet file's order
    max_depth: int


def _load_inputs(opts: CalibrateOptions) -> _Inputs:
    """Step 1: the fleet, the prompts, the fingerprints and the depth; bad options fail here."""
    if opts.budget is not None:
        parse_budget(opts.budget, 1.0)  # a malformed --budget fails now, not after the replay
    fleet = FleetConfig.from_file(opts.fleet_file)
    rows = load_prompt_set(opts.prompts, default_grader=opts.grader, default_max_tokens=opts.max_tokens)
    models = fleet.model_ids
    depth = opts.max_depth or fleet.cascade.max_depth or len(models)
    if not 1 <= depth <= len(models):
        raise ValueError(f"--max-depth must be in [1, {len(models)}], got {depth}")
    return _Inputs(fleet=fleet, rows=rows, fingerprints=fleet_fingerprints(fleet), max_depth=depth)


def _replay(opts: CalibrateOptions, inputs: _Inputs, reporter: Reporter) -> dict[tuple[str, str], ReplayRecord]:
    """Step 2: every (prompt, model) pair the cache lacks, through the fleet; failures become warnings."""
    rows, fingerprints = inputs.rows, inputs.fingerprints
    step = f"replay {len(rows)} prompts x {len(fingerprints)} models"
    total = len(rows) * len(fingerprints)
    cache = opts.out / "replay.jsonl"
    cached = [key for key in load_cache(cache).keys() | permanent_failures(cache).keys()
              if key[2] == fingerprints.get(key[1])]
    done = min(len(cached), total)
    reporter.progress(step, done, total)
    errors: list[str] = []  # transient: retried by the next run
    rejected: list[str] = []  # the model refused the request: the prompt is left out

    def on_done(record: ReplayRecord) -> None:
        nonlocal done
        if record.error is not None:
            (rejected if record.permanent else errors).append(f"{record.prompt_id} on {record.model}: {record.error}")
        done += 1
        reporter.progress(step, done, total)

    # Replicas that share the machine's processor are timed one model at a time (calibration.replay).
    shared_processor = any(spec.on_cpu for spec in inputs.fleet.models)
    records = replay(opts.url, rows, fingerprints, cache, concurrency=opts.concurrency,
                     models_at_once=1 if shared_processor else None, api_key=opts.api_key, on_done=on_done)
    if rejected:
        reporter.warning(f"{len(rejected)} request(s) rejected by a model (not asked again; their prompts are "
                         f"left out), e.g. {rejected[0]}")
    if errors:
        reporter.warning(f"{len(errors)} replay call(s) failed (kept in the cache, retried next run), "
                         f"e.g. {errors[0]}")
    return records


def _grade(inputs: _Inputs, records: Records, reporter: Reporter) -> GradedTable:
    """Step 3: every answer graded, the table built."""
    models = inputs.fleet.model_ids
    step = "grade answers"
    reporter.progress(step, 0, len(inputs.rows) * len(models))
    return build_table(inputs.rows, models, records,
                       progress=lambda _stage, done, total: reporter.progress(step, done, total))


@dataclass(frozen=True)
class _Split:
    train_rows: NDArray[np.intp]
    held_rows: NDArray[np.intp]
    train: QueryModelTable
    held: QueryModelTable


def _split(table: QueryModelTable, opts: CalibrateOptions) -> _Split:
    """Step 4: seeded estimator-training and held-out rows."""
    train_rows, held_rows = split_rows(table.n_queries, held_out=opts.held_out, seed=opts.seed)
    return _Split(train_rows=train_rows, held_rows=held_rows, train=table.take(train_rows), held=table.take(held_rows))


@dataclass(frozen=True)
class _Fitted:
    quality: TrainedQualityEstimator
    cost: GpuTimeCostModel
    mape: dict[str, dict[str, float]]  # model → the cost model's held-out error, ex ante and given tokens
    fit_s: float


def _fit(opts: CalibrateOptions, inputs: _Inputs, split: _Split, records: Records, reporter: Reporter) -> _Fitted:
    """Step 5: quality estimators and cost model on the training rows; the cost model's held-out error."""
    reporter.note("fitting the quality estimators and the cost model ...")
    started_s = time.perf_counter()
    quality = TrainedQualityEstimator(random_state=opts.seed).set_params(**QUALITY_PARAMS).fit(split.train)
    by_id = {row.id: row for row in inputs.rows}
    gpus = {spec.model_id: max(1, spec.gpus_per_replica) for spec in inputs.fleet.models}
    cost = GpuTimeCostModel(concurrency=opts.concurrency, gpus_per_replica=gpus).fit(
        _cost_samples(split.train, by_id, records))
    mape = cost.mape(_cost_samples(split.held, by_id, records))
    return _Fitted(quality=quality, cost=cost, mape=mape, fit_s=time.perf_counter() - started_s)


def _cost_samples(table: QueryModelTable, rows: Mapping[str, PromptRow], records: Records) -> list[CostSample]:
    """The cost model's rows: every answer of the table's prompts that took engine time."""
    out = []
    for pid in table.sample_ids:
        row = rows[pid]
        for model in table.models:
            stage = records[(pid, model)].stage
            if stage is None or stage.prefill_s + stage.decode_s <= 0:
                continue
            query = QueryInfo(text=row.text, prompt_tokens=stage.prompt_tokens, max_tokens=row.max_tokens)
            out.append(CostSample.from_stage(query, stage,
                                             finish_reason="length" if stage.finish_reason == "length" else "stop"))
    return out


def _protocol_settings(table: QueryModelTable, opts: CalibrateOptions, max_depth: int) -> ProtocolSettings:
    """The Pareto report's settings; the lambda curves reproduce its validation/test split."""
    return ProtocolSettings(models=tuple(table.models), estimators="trained", noise=None, seed=opts.seed,
                            test_size=0.5, max_depth=max_depth, n_bootstrap=opts.bootstrap,
                            budget_margin_se=opts.budget_margin_se)


def _lambda_curves(
    held: QueryModelTable, settings: ProtocolSettings, quality: TrainedQualityEstimator, reporter: Reporter
) -> tuple[dict[str, list[dict[str, float]]], HeldOutHalves]:
    """Step 6: every policy's lambda curve on the held-out validation half, with the trained estimates;
    and both halves as the policies see them (step 8 runs the policies on them)."""
    val, test = train_test_split(np.arange(held.n_queries), test_size=settings.test_size,
                                 random_state=settings.split_seed)
    val_table, test_table = held.take(val), held.take(test)
    # The uncertainty the policies plan with is fitted here, on the prompts lambda is fitted on (never
    # the test half), from what answer selection gets on them; the served estimator keeps that factor.
    quality.set_uncertainty_scale(1.0)
    raw, raw_test = quality.estimate_source(val_table), quality.estimate_source(test_table)
    fit = fit_uncertainty_scale(raw, np.asarray(val_table.quality))
    quality.set_uncertainty_scale(fit.scale)
    reporter.note(f"uncertainty scale {fit.scale:g}, fitted on {len(val)} validation prompts; lambda curves ...")
    depth = settings.max_depth if settings.max_depth is not None else len(held.models)
    halves = HeldOutHalves(
        val_source=ScaledUncertainty(raw, fit.scale), val_quality=np.asarray(val_table.quality),
        val_cost=np.asarray(val_table.cost), test_source=ScaledUncertainty(raw_test, fit.scale),
        test_quality=np.asarray(test_table.quality), test_cost=np.asarray(test_table.cost))
    curves = lambda_curves(halves.val_source, halves.val_quality, halves.val_cost, max_depth=depth)
    return curves, halves


def _pareto_report(split: _Split, settings: ProtocolSettings, reporter: Reporter) -> dict[str, Any]:
    """Step 7: the protocol on the held-out rows, estimators trained on the training rows."""
    reporter.note("Pareto report on the held-out test prompts ...")
    report = run_protocol(split.held, settings, estimator_table=split.train, estimator_params=QUALITY_PARAMS)
    report["settings"]["cost_unit"] = "GPU-seconds per query"
    return report


def _served_policy(
    opts: CalibrateOptions, inputs: _Inputs, table: QueryModelTable, curves: dict[str, list[dict[str, float]]],
    halves: HeldOutHalves, budget_gpu_s: float | None, reporter: Reporter,
) -> dict[str, Any]:
    """Step 8: the policy chosen on the validation half at each budget, and its evidence on the test half."""
    reporter.note("choosing the served policy per budget on the validation prompts ...")
    candidates = candidate_policies(core_policy_name(inputs.fleet.cascade.policy))
    budgets = report_budgets(curves, candidates, budget_gpu_s, margin_se=opts.budget_margin_se)
    return served_policy_report(curves, budgets, halves, max_depth=inputs.max_depth, models=table.models,
                                margin_se=opts.budget_margin_se,
                                candidates=candidates, seed=opts.seed)


def _budget(
    budget_gpu_s: float | None, fleet: FleetConfig, curves: dict[str, list[dict[str, float]]],
    choice: dict[str, Any], margin_se: float = 0.0,
) -> tuple[dict[str, Any] | None, BudgetUnreachableError | None]:
    """Step 9: the summary's budget entry (None without ``--budget``), and the error of one out of reach.

    ``chosen_under`` names the fleet file's policy the choice was made under: the controller serves the
    chosen policy while the fleet file still names that one.
    """
    if budget_gpu_s is None:
        return None, None
    [entry] = [e for e in choice["budgets"] if e["budget"] == budget_gpu_s]
    candidates = choice["candidates"]
    policy = entry["chosen"]
    unreachable = None
    if policy is not None:
        point: dict[str, Any] = lambda_for_budget(curves[policy], budget_gpu_s, margin_se=margin_se)
    else:
        # No candidate keeps the budget. The fit is kept (saved, the budget marked out of reach): a
        # reachable cascade.budget_gpu_s is then served from these curves without calibrating again.
        policy = candidates[0]
        cheapest = min(point_cost_bound(p, margin_se) for c in candidates for p in curves[c])
        unreachable = BudgetUnreachableError(
            f"budget {budget_gpu_s:.6g} GPU-s per query is below the cheapest setting ({cheapest:.6g} GPU-s per "
            "query on the calibration prompts)", cheapest_cost=cheapest)
        point = {"lambda": None, "cheapest_gpu_s": cheapest}
    return {"budget_gpu_s": budget_gpu_s, "policy": policy, **point, "chosen_under": fleet.cascade.policy,
            "candidates": list(candidates)}, unreachable


def _strongest_gpu_s(table: QueryModelTable) -> float:
    """The costliest model's mean GPU-seconds per query."""
    return float(np.asarray(table.cost).mean(axis=0).max())


def _summary(
    opts: CalibrateOptions, inputs: _Inputs, graded: GradedTable, split: _Split, fitted: _Fitted,
    curves: dict[str, list[dict[str, float]]], report: dict[str, Any], budget: dict[str, Any] | None,
    timing_s: dict[str, float],
) -> dict[str, Any]:
    """Step 10, first half: what ``OUT/calibration.json`` says."""
    table = graded.table
    model_gpu_s = np.asarray(table.cost).mean(axis=0)
    per_model = {
        m: {"accuracy": float(np.asarray(table.quality)[:, j].mean()), "gpu_s_per_query": float(model_gpu_s[j]),
            "cost_mape_ex_ante": fitted.mape[m]["ex_ante"], "cost_mape_given_tokens": fitted.mape[m]["given_tokens"]}
        for j, m in enumerate(table.models)
    }
    kinds = Counter(table.answer_kinds or ())
    return {
        "fleet_file": str(opts.fleet_file),
        "fingerprints": inputs.fingerprints,
        "models": list(table.models),
        "answer_kind": kinds.most_common(1)[0][0] if kinds else "final",
        "max_depth": inputs.max_depth,
        "concurrency": opts.concurrency,
        "prompts": {"file": str(opts.prompts), "total": len(inputs.rows), "used": table.n_queries,
                    "missing_answers": graded.missing, "grade_problems": graded.grade_problems,
                    "training": len(split.train_rows), "held_out": len(split.held_rows), "seed": opts.seed},
        "per_model": per_model,
        "cost_coefficients": fitted.cost.coefficients(),
        "lambda_curves": curves,
        "budget": budget,
        "report": {"auc": report["auc"], "ci": report["ci"], "points": report["points"],
                   "settings": report["settings"]},
        "timing_s": timing_s,
    }


def _save(opts: CalibrateOptions, summary: dict[str, Any], fitted: _Fitted, report: dict[str, Any]) -> None:
    """Step 10, second half: the artifacts and the Pareto plot."""
    save_artifacts(opts.out, summary, fitted.quality, fitted.cost)
    plot_quality_cost(report, opts.out / "pareto.png", title=f"{opts.prompts.name}: held-out test prompts")


def _unreachable_error(
    opts: CalibrateOptions, unreachable: BudgetUnreachableError, strongest_gpu_s: float, fleet_floor_gpu_s: float
) -> BudgetUnreachableError:
    """Step 11: the error of a budget out of reach, naming the budget to ask for instead: for ``--budget``
    the cheapest candidate's floor; for the fleet file's ``budget_gpu_s``, which serves the fleet file's
    policy, that policy's floor."""
    cheapest = unreachable.cheapest_cost
    at_least = _round_up(cheapest)  # the figures the user copies must themselves be reachable
    fleet_at_least = _round_up(fleet_floor_gpu_s)
    percent = math.ceil(100 * cheapest / strongest_gpu_s)
    return BudgetUnreachableError(
        f"--budget {opts.budget}: {unreachable}. The estimators and lambda curves are saved in {opts.out}: "
        f"serve them with cascade.budget_gpu_s >= {fleet_at_least:g} in the fleet file, or run again with "
        f"--budget {at_least:g} or more ({percent}% of the costliest model; the replay is cached, only "
        "the fit runs again)",
        cheapest_cost=cheapest,
    )


def _round_up(value: float, digits: int = 4) -> float:
    """``value`` rounded up to ``digits`` significant digits."""
    scale = 10.0 ** (digits - 1 - math.floor(math.log10(value)))
    return math.ceil(value * scale) / scale
