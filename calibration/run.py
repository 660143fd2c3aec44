"""``cascade calibrate FILE --prompts data.jsonl``: measure the live fleet on the user's prompts and fit.

Steps (progress shown with rich): replay every prompt through every model of the running fleet
(``calibration.replay``: resumable, cached in ``OUT/replay.jsonl``), grade and build the table, split it
(seeded) into estimator-training and held-out prompts, fit the quality estimators and the GPU-time
cost model on the training prompts, measure the cost model's error on the held-out ones, compute every
policy's lambda curve on the held-out validation half, pick the lambda for ``--budget``, run the
Pareto report on the held-out test half (``evaluation.protocol``), and write the artifacts
(``estimators.artifacts``) and ``OUT/pareto.png``. The fleet file can then say
``cascade: {artifacts: OUT, budget_gpu_s: B}`` and the controller serves with them.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cluster.config import FleetConfig
from cluster.fingerprint import fleet_fingerprints
from routing import BudgetUnreachableError, core_policy_name

__all__ = ["QUALITY_PARAMS", "CalibrateOptions", "parse_budget", "run_calibrate"]

# Users' prompts often carry numbers, and how hard a question is follows how many digits they have,
# not their values (most of which training never saw): the ex-ante features add the prompt with its
# digits masked. On the toy fleet's replays that raised routing's held-out AUC by 4-7.5 points and
# cascade routing's by 4-5.4 (3 splits each of 2 replays); on RouterBench's text it moves AUC by 0.1.
QUALITY_PARAMS: dict[str, Any] = {"n_shape_features": 2**12}


@dataclass(frozen=True)
class CalibrateOptions:
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
    quiet: bool = False


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


def run_calibrate(opts: CalibrateOptions) -> dict[str, Any]:
    """Run the whole calibration; returns the summary written to ``OUT/calibration.json``.

    A ``--budget`` below the cheapest setting raises ``BudgetUnreachableError`` after the artifacts are
    written (their budget has ``lambda: null`` and the ``cheapest_gpu_s`` to ask for instead).
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
    from sklearn.model_selection import train_test_split

    from calibration.fit import build_table, lambda_curves, split_rows
    from calibration.prompt_set import load_prompt_set
    from calibration.replay import load_cache, permanent_failures, replay
    from cascade_serve.progress import LoggedProgress
    from estimators.artifacts import lambda_for_budget, save_artifacts
    from estimators.calibrated_cost import CostSample, GpuTimeCostModel
    from estimators.trained_quality import TrainedQualityEstimator
    from evaluation.plots import plot_quality_cost
    from evaluation.protocol import ProtocolSettings, run_protocol

    console = Console(stderr=True, quiet=opts.quiet)
    started = time.perf_counter()
    if opts.budget is not None:
        parse_budget(opts.budget, 1.0)  # a malformed --budget fails now, not after the replay
    fleet = FleetConfig.from_file(opts.fleet_file)
    rows = load_prompt_set(opts.prompts, default_grader=opts.grader, default_max_tokens=opts.max_tokens)
    fingerprints = fleet_fingerprints(fleet)
    models = fleet.model_ids
    depth = opts.max_depth or fleet.cascade.max_depth or len(models)
    if not 1 <= depth <= len(models):
        raise ValueError(f"--max-depth must be in [1, {len(models)}], got {depth}")
    errors: list[str] = []  # transient: retried by the next run
    rejected: list[str] = []  # the model refused the request: the prompt is left out
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with LoggedProgress(*columns, console=console, transient=False, disable=opts.quiet) as bar:
        task = bar.add_task(f"replay {len(rows)} prompts x {len(models)} models", total=len(rows) * len(models))
        cache = opts.out / "replay.jsonl"
        already = len([k for k in load_cache(cache).keys() | permanent_failures(cache).keys()
                       if k[2] == fingerprints.get(k[1])])
        bar.update(task, completed=min(already, len(rows) * len(models)))

        def on_done(record: Any) -> None:
            if record.error is not None:
                (rejected if record.permanent else errors).append(
                    f"{record.prompt_id} on {record.model}: {record.error}")
            bar.advance(task)

        # Replicas that share the machine's processor are timed one model at a time (calibration.replay).
        shared_processor = any(spec.on_cpu for spec in fleet.models)
        records = replay(opts.url, rows, fingerprints, cache, concurrency=opts.concurrency,
                         models_at_once=1 if shared_processor else None, api_key=opts.api_key, on_done=on_done)
        replay_s = time.perf_counter() - started
        grading = bar.add_task("grade answers", total=len(rows) * len(models))
        graded = build_table(rows, models, records,
                             progress=lambda _stage, done, total: bar.update(grading, completed=done, total=total))
    if rejected:
        console.print(f"[yellow]{len(rejected)} request(s) rejected by a model (not asked again; their prompts are "
                      f"left out), e.g. {rejected[0]}")
    if errors:
        console.print(f"[yellow]{len(errors)} replay call(s) failed (kept in the cache, retried next run), "
                      f"e.g. {errors[0]}")
    table = graded.table
    train_rows, held_rows = split_rows(table.n_queries, held_out=opts.held_out, seed=opts.seed)
    train, held = table.take(train_rows), table.take(held_rows)

    console.print("fitting the quality estimators and the cost model ...")
    t0 = time.perf_counter()
    quality = TrainedQualityEstimator(random_state=opts.seed).set_params(**QUALITY_PARAMS).fit(train)
    by_id = {r.id: r for r in rows}

    def samples(sub: Any) -> list[Any]:
        out = []
        for pid in sub.sample_ids:
            for model in sub.models:
                rec = records[(pid, model)]
                if rec.prefill_s + rec.decode_s <= 0:
                    continue
                out.append(CostSample(
                    model=model, prompt_text=by_id[pid].text, prompt_tokens=rec.prompt_tokens,
                    completion_tokens=rec.completion_tokens, max_tokens=by_id[pid].max_tokens,
                    prefill_s=rec.prefill_s, decode_s=rec.decode_s,
                    finish_reason="length" if rec.finish_reason == "length" else "stop",
                ))
        return out

    gpus = {spec.model_id: max(1, spec.gpus_per_replica) for spec in fleet.models}
    cost = GpuTimeCostModel(concurrency=opts.concurrency, gpus_per_replica=gpus).fit(samples(train))
    mape = cost.mape(samples(held))
    fit_s = time.perf_counter() - t0

    # The protocol's validation/test split of the held-out rows, reproduced for the lambda curves.
    settings = ProtocolSettings(models=tuple(table.models), estimators="trained", noise=None, seed=opts.seed,
                                test_size=0.5, max_depth=depth, n_bootstrap=opts.bootstrap)
    val, _test = train_test_split(np.arange(held.n_queries), test_size=settings.test_size,
                                  random_state=settings.split_seed)
    val_table = held.take(val)
    console.print("lambda curves on the validation prompts ...")
    curves = lambda_curves(quality.estimate_source(val_table), np.asarray(val_table.quality),
                           np.asarray(val_table.cost), max_depth=depth)
    console.print("Pareto report on the held-out test prompts ...")
    report = run_protocol(held, settings, estimator_table=train, estimator_params=QUALITY_PARAMS)
    report["settings"]["cost_unit"] = "GPU-seconds per query"

    model_gpu_s = np.asarray(table.cost).mean(axis=0)
    per_model = {
        m: {"accuracy": float(np.asarray(table.quality)[:, j].mean()), "gpu_s_per_query": float(model_gpu_s[j]),
            "cost_mape_ex_ante": mape[m]["ex_ante"], "cost_mape_given_tokens": mape[m]["given_tokens"]}
        for j, m in enumerate(table.models)
    }
    budget: dict[str, Any] | None = None
    unreachable: BudgetUnreachableError | None = None
    if opts.budget is not None:
        b = parse_budget(opts.budget, float(model_gpu_s.max()))
        policy = core_policy_name(fleet.cascade.policy)
        try:
            point: dict[str, Any] = lambda_for_budget(curves[policy], b)
        except BudgetUnreachableError as exc:
            # The fit is kept (saved below, the budget marked out of reach): a reachable
            # cascade.budget_gpu_s is then served from these curves without calibrating again.
            unreachable = exc
            point = {"lambda": None, "cheapest_gpu_s": exc.cheapest_cost}
        budget = {"budget_gpu_s": b, "policy": policy, **point}
    kinds = Counter(table.answer_kinds or ())
    summary: dict[str, Any] = {
        "fleet_file": str(opts.fleet_file),
        "fingerprints": fingerprints,
        "models": list(table.models),
        "answer_kind": kinds.most_common(1)[0][0] if kinds else "final",
        "max_depth": depth,
        "concurrency": opts.concurrency,
        "prompts": {"file": str(opts.prompts), "total": len(rows), "used": table.n_queries,
                    "missing_answers": graded.missing, "grade_problems": graded.grade_problems,
                    "training": len(train_rows), "held_out": len(held_rows), "seed": opts.seed},
        "per_model": per_model,
        "cost_coefficients": cost.coefficients(),
        "lambda_curves": curves,
        "budget": budget,
        "report": {"auc": report["auc"], "ci": report["ci"], "points": report["points"],
                   "settings": report["settings"]},
        "timing_s": {"replay": replay_s, "fit": fit_s, "total": time.perf_counter() - started},
    }
    save_artifacts(opts.out, summary, quality, cost)
    plot_quality_cost(report, opts.out / "pareto.png", title=f"{opts.prompts.name}: held-out test prompts")
    if unreachable is not None:
        cheapest = unreachable.cheapest_cost
        at_least = _round_up(cheapest)  # the figure the user copies must itself be reachable
        percent = math.ceil(100 * cheapest / float(model_gpu_s.max()))
        raise BudgetUnreachableError(
            f"--budget {opts.budget}: {unreachable}. The estimators and lambda curves are saved in {opts.out}: "
            f"serve them with cascade.budget_gpu_s >= {at_least:g} in the fleet file, or run again with "
            f"--budget {at_least:g} or more ({percent}% of the costliest model; the replay is cached, only "
            "the fit runs again)",
            cheapest_cost=cheapest,
        )
    return summary


def _round_up(value: float, digits: int = 4) -> float:
    """``value`` rounded up to ``digits`` significant digits."""
    scale = 10.0 ** (digits - 1 - math.floor(math.log10(value)))
    return math.ceil(value * scale) / scale


def print_summary(summary: dict[str, Any], out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    models = Table(title="models (all calibration prompts; cost error on held-out prompts)")
    for col in ("model", "accuracy", "GPU-s / query", "cost MAPE ex ante", "given tokens"):
        models.add_column(col, justify="right" if col != "model" else "left")
    for m, v in summary["per_model"].items():
        models.add_row(m, f"{v['accuracy']:.3f}", f"{v['gpu_s_per_query']:.4g}", f"{100 * v['cost_mape_ex_ante']:.1f}%",
                       f"{100 * v['cost_mape_given_tokens']:.1f}%")
    console.print(models)
    auc = Table(title="held-out Pareto report: AUC x100 (mean quality over the models' cost range)")
    auc.add_column("policy")
    auc.add_column("AUC", justify="right")
    for k, v in summary["report"]["auc"].items():
        auc.add_row(k, f"{v:.2f}")
    console.print(auc)
    if summary["budget"] is not None:
        b = summary["budget"]
        console.print(f"budget {b['budget_gpu_s']:.4g} GPU-s/query → {b['policy']} lambda {b['lambda']:.4g} "
                      f"(validation: {b['cost']:.4g} GPU-s, quality {b['quality']:.3f})")
    console.print(f"artifacts: {out}/calibration.json, {out}/estimators.pkl; plot: {out}/pareto.png")
    console.print(f"serve with them: cascade: {{artifacts: {out}, budget_gpu_s: ...}} in the fleet file")
