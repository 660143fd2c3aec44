"""The whole loop on CPU: toy fleet → calibration → every policy evaluated live through the controller.

    .venv/bin/python -m scripts.eval_toy_fleet --json runs/toy_fleet.json --plot runs/toy_fleet.png

1. Builds (or reuses, cached) the toy fleet (:mod:`toymodels.toy_fleet`: four tiny Qwen2 models trained
   to add integers, accuracy rising with size) and writes two disjoint-seed prompt sets: calibration
   prompts (seed 0) and evaluation prompts (seed 1).
2. Starts Ray in this process and deploys ``models.toy.yaml`` (real vLLM engines, Ray Serve).
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
   the paper's measure), checks of the issue's targets, JSON and the Pareto plot.

Measured results and their caveats (timing noise on 2 shared cores): README, "The toy fleet".
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from routing import API_POLICY_NAMES

# Each policy (routing's name) -> the name the controller's request knob takes.
POLICIES = {core: api for api, core in API_POLICY_NAMES.items()}


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

    The AUC is taken over the single models' cost range (``routing.auc_range``, the paper's measure).
    A single model is on or below a curve when its quality is at most the curve's, linearly
    interpolated at its cost, plus 0.01 (one query in a hundred: the same answers timed twice differ);
    one cheaper than the whole curve is compared with the curve's cheapest point.
    """
    from evaluation.metrics import area_under_curve, auc_range

    models = list(single)
    single_cost = np.array([single[m]["cost"] for m in models])
    single_quality = np.array([single[m]["quality"] for m in models])
    area = auc_range(single_cost, single_quality)
    bounds = {"x_min": area.x_min, "x_max": area.x_max, "y_base": area.y_base}
    points: dict[str, Any] = {"single_models": {"model": models, "cost": single_cost.tolist(),
                                                "quality": single_quality.tolist()}}
    auc: dict[str, float] = {}
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, required=True, help="write the results here")
    parser.add_argument("--plot", type=Path, default=None, help="Pareto PNG (default: next to --json)")
    parser.add_argument("--fleet", type=Path, default=Path("models.toy.yaml"))
    parser.add_argument("--calibration-prompts", type=int, default=500)
    parser.add_argument("--eval-prompts", type=int, default=200)
    parser.add_argument("--lambdas", type=int, default=8,
                        help="budgets per policy, evenly spaced over the single models' cost range (default 8)")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--out", type=Path, default=Path("runs/toy_calibration"), help="calibration artifacts")
    parser.add_argument("--reuse-replay", action="store_true",
                        help="keep OUT/replay.jsonl from an earlier run (its timings were taken then, under that "
                             "run's load; by default the calibration prompts are replayed afresh)")
    args = parser.parse_args(argv)

    import ray
    from ray import serve
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from calibration.graders import numeric_match
    from calibration.run import CalibrateOptions, run_calibrate
    from cascade_serve.calibrate import ConsoleReporter
    from cascade_serve.progress import LoggedProgress
    from cluster.config import FleetConfig
    from estimators.artifacts import load_artifacts
    from evaluation.plots import plot_quality_cost
    from serve.deploy import connect, deploy, wait_ready
    from toymodels.toy_fleet import MAX_ANSWER_TOKENS, build_toy_fleet, toy_prompts, write_prompts_jsonl

    console = Console()
    started = time.perf_counter()
    root = args.fleet.resolve().parent
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with LoggedProgress(*columns, console=console) as bar:
        build_toy_fleet(root / ".cache" / "toy", progress=bar)
    build_s = time.perf_counter() - started
    cal_file = write_prompts_jsonl(args.out / "calibration_prompts.jsonl", toy_prompts(args.calibration_prompts, 0))
    eval_rows = toy_prompts(args.eval_prompts, 1)
    fleet = FleetConfig.from_file(args.fleet)
    url = f"http://127.0.0.1:{args.port}"
    connect(None, start_local=False, num_cpus=os.cpu_count())
    try:
        with console.status("deploying the toy fleet (vLLM engines start in about a minute each on 2 cores)"):
            deploy(fleet, host="127.0.0.1", port=args.port)
            wait_ready(url, 1800)
        up_s = time.perf_counter() - started - build_s
        console.print(f"fleet ready in {up_s:.0f} s")
        if not args.reuse_replay:
            # The cost model must be fitted on timings taken beside the live run: the same model's engine
            # seconds differ by 2x between sessions on 2 shared cores.
            (args.out / "replay.jsonl").unlink(missing_ok=True)
        with ConsoleReporter() as reporter:
            summary = run_calibrate(CalibrateOptions(
                fleet_file=args.fleet, prompts=cal_file, out=args.out, url=url, concurrency=args.concurrency,
                max_tokens=MAX_ANSWER_TOKENS, budget=None,
            ), reporter=reporter)
        artifacts = load_artifacts(args.out)
        calibrated = fleet.model_copy(update={"cascade": fleet.cascade.model_copy(
            update={"artifacts": args.out.resolve()})})
        with console.status("redeploying the controller with the calibration artifacts"):
            deploy(calibrated, host="127.0.0.1", port=args.port)
            time.sleep(5)
            wait_ready(url, 600)

        messages = [r["messages"] for r in eval_rows]
        answers = [r["answer"] for r in eval_rows]
        models = list(summary["models"])  # cost order
        plan: list[tuple[str, str, float | None]] = [("single", m, None) for m in models]
        model_gpu_s = [summary["per_model"][m]["gpu_s_per_query"] for m in models]
        budgets = np.linspace(min(model_gpu_s), max(model_gpu_s), args.lambdas).tolist()
        for key in POLICIES:
            plan += [(key, "cascade", lam) for lam in _pick_lambdas(summary["lambda_curves"][key], budgets)]
        results: dict[tuple[str, str, float | None], dict[str, float]] = {}
        cost_model = artifacts.cost
        mape: dict[str, float] = {}
        with LoggedProgress(*columns, console=console) as bar:
            task = bar.add_task("live evaluation", total=len(plan) * len(eval_rows))
            for kind, model, lam in plan:
                bodies = []
                for msgs in messages:
                    body: dict[str, Any] = {"model": model, "messages": msgs, "max_tokens": MAX_ANSWER_TOKENS,
                                            "temperature": 0.0}
                    if lam is not None:
                        body["cascade"] = {"policy": POLICIES[kind], "lambda": lam, "max_depth": summary["max_depth"]}
                    bodies.append(body)
                replies = asyncio.run(_ask_all(url, bodies, args.concurrency, lambda: bar.advance(task)))
                texts = [(r["choices"][0]["message"]["content"] or "") for r in replies]
                quality = np.array([numeric_match(t, a) for t, a in zip(texts, answers, strict=True)])
                if kind == "single":
                    gpu = np.array([(r["metrics"]["time_to_first_token_ms"] + r["metrics"]["generation_time_ms"])
                                    / 1e3 for r in replies])
                    predicted = np.array([
                        float(cost_model.predict_gpu_s(model, [m[-1]["content"]], [r["usage"]["prompt_tokens"]],
                                                       [MAX_ANSWER_TOKENS])[0])
                        for m, r in zip(messages, replies, strict=True)
                    ])
                    mape[model] = float(np.mean(np.abs(predicted - gpu) / gpu))
                else:
                    gpu = np.array([r["cascade"]["total_gpu_ms"] / 1e3 for r in replies])
                results[(kind, model, lam)] = {"quality": float(quality.mean()), "cost": float(gpu.mean())}
    finally:
        serve.shutdown()
        ray.shutdown()

    single = {m: results[("single", m, None)] for m in models}
    curves = {key: [{"lambda": lam, **v} for (k, _, lam), v in results.items() if k == key] for key in POLICIES}
    auc, checks, points, bounds = summarize(single, curves)
    single_quality = np.array(points["single_models"]["quality"])
    single_cost = np.array(points["single_models"]["cost"])
    result: dict[str, Any] = {
        "models": {m: {"accuracy": float(single_quality[j]), "gpu_s_per_query": float(single_cost[j]),
                       "cost_mape": mape[m],
                       "calibration_cost_mape": summary["per_model"][m]["cost_mape_ex_ante"]}
                   for j, m in enumerate(models)},
        "auc": auc,
        "checks": checks,
        "points": points,
        "calibration": {"auc_offline_held_out": summary["report"]["auc"], "prompts": summary["prompts"]["used"],
                        "timing_s": summary["timing_s"]},
        "settings": {"cost_unit": "GPU-seconds per query (engine seconds on CPU)", "eval_prompts": len(eval_rows),
                     "concurrency": args.concurrency, "max_depth": summary["max_depth"], "fleet": str(args.fleet),
                     "auc_range": bounds, "build_s": build_s, "total_s": time.perf_counter() - started},
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    plot = args.plot or args.json.with_suffix(".png")
    plot_quality_cost(result, plot, title=f"toy fleet, live through the controller ({len(eval_rows)} prompts)")

    table = Table(title="toy fleet, live (evaluation prompts)")
    for col in ("model", "accuracy", "GPU-s / query", "cost MAPE (live)"):
        table.add_column(col)
    for m, v in result["models"].items():
        table.add_row(m, f"{v['accuracy']:.3f}", f"{v['gpu_s_per_query']:.4g}", f"{100 * v['cost_mape']:.1f}%")
    console.print(table)
    aucs = Table(title="AUC x100 over the single models' cost range")
    aucs.add_column("policy")
    aucs.add_column("AUC")
    for k, v in auc.items():
        aucs.add_row(k, f"{v:.2f}")
    console.print(aucs)
    console.print(checks)
    console.print(f"wrote {args.json} and {plot} in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
