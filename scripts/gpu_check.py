"""GPU check: issue 15's serving targets, measured on a two-model GPU fleet in one command.

    .venv/bin/python -m scripts.gpu_check --dry-run               # the plan (fleet, steps, targets); starts nothing
    .venv/bin/python -m scripts.gpu_check                         # models.gpucheck.yaml, weights from the HF cache
    .venv/bin/python -m scripts.gpu_check --models-dir /models    # local copies: /models/Qwen2.5-0.5B-Instruct, ...
    .venv/bin/python -m scripts.gpu_check --tiny                  # tiny models built here: no download at all
    .venv/bin/python -m scripts.gpu_check --fleet my.yaml --json runs/gpu_check.json

Needs the engine stack (the ``gpu`` extra: ``ray[llm]`` with vLLM), an NVIDIA GPU (``nvidia-smi``), and
the fleet's weights as local folders (``--models-dir``), in the Hugging Face cache, or from the hub with
``HF_HUB_OFFLINE=0``. What is missing is named before anything starts.

Steps, one function each:

1. **Fleet**: the fleet file, its sources pointed at ``--models-dir`` or at the tiny models
   (``toymodels.tiny``), validated.
2. **Preflight**: engine stack, GPU, weights; then ``--tiny`` builds its models, and the fleet is
   written to ``OUT/fleet.yaml`` (what is deployed and calibrated).
3. **Up**: connect to Ray, check placement on the live nodes (``serve.deploy.check_placement``),
   deploy, wait until every model is ready.
4. **Serving overhead**: ``cascade_serve.serving_bench``'s measurement, as ``scripts.bench_serving``
   runs it (the same requests to the cheapest model's replica directly, through the controller and
   through Ray Serve LLM's own ingress, side by side): the controller's overhead per
   stage (p50, lowest concurrency) and its throughput over direct calls' (highest concurrency).
5. **Cost model**: a short ``cascade calibrate`` (``calibration.run``) on generated arithmetic prompts;
   the cost model's error is the held-out MAPE of predicted vs measured GPU-seconds per request, given
   the answer's token count, of the worst model (the ex-ante error is reported beside it).
6. **Verdict**: each target of :data:`TARGETS` with its measured value, PASS or FAIL, as a table and as
   JSON (``--json``).

Exit status: 0 when the check ran, whatever the verdicts; 1 when a step failed (the JSON names it and
keeps what was measured before); 2 on bad input or a machine that lacks what the check needs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cascade_serve.serving_bench import concurrency_levels
from cluster.config import ConfigError, FleetConfig

REPO = Path(__file__).resolve().parents[1]
DEFAULT_FLEET = REPO / "models.gpucheck.yaml"
TINY_DIR = REPO / ".cache" / "tiny"
TINY_MAX_MODEL_LEN = 1024  # toymodels.tiny.TinySpec.max_positions
MIN_CAL_PROMPTS = 20  # calibrate splits them three ways (training, validation, test): each needs a few


@dataclass(frozen=True)
class Target:
    """One of issue 15's targets: ``measured <op> threshold`` passes."""

    key: str  # the measured value's name in the JSON
    label: str
    op: str  # "<=" or ">="
    threshold: float
    unit: str

    def verdict(self, value: float | None) -> str:
        if value is None or not math.isfinite(value):
            return "NO DATA"
        ok = value <= self.threshold if self.op == "<=" else value >= self.threshold
        return "PASS" if ok else "FAIL"


TARGETS = (
    Target("controller_overhead_ms_p50", "controller overhead per stage (p50, lowest concurrency)", "<=", 5.0, "ms"),
    Target("throughput_ratio", "throughput through the controller / direct (highest concurrency)", ">=", 0.90, ""),
    Target("cost_mape_pct", "cost model error (held-out MAPE given tokens, worst model)", "<=", 10.0, "%"),
)


class BadInput(ValueError):
    """Input the check cannot run with; ``main`` prints it as one line and exits 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse would print the usage too: one line is the contract
        raise BadInput(message)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The options, checked against each other; ``BadInput`` otherwise (the fleet is checked later)."""
    parser = _Parser(prog="python -m scripts.gpu_check", description=(__doc__ or "").splitlines()[0])
    # Fleet
    parser.add_argument("--fleet", type=Path, default=None, help=f"fleet file (default {DEFAULT_FLEET.name})")
    parser.add_argument("--models-dir", type=Path, default=None,
                        help="folder of local weights: hub id Org/Name is read from DIR/Name or DIR/Org/Name")
    parser.add_argument("--tiny", action="store_true",
                        help=f"{DEFAULT_FLEET.name}'s GPU settings with tiny models built here (no download)")
    # Run
    parser.add_argument("--dry-run", action="store_true", help="print the plan and exit; starts nothing")
    parser.add_argument("--address", default=None, help="a running Ray cluster (default: Ray in this process)")
    parser.add_argument("--port", type=int, default=8000, help="HTTP port of the fleet (default 8000)")
    parser.add_argument("--ready-timeout-s", type=float, default=1200.0,
                        help="seconds to wait for the fleet to deploy and be ready (default 1200)")
    parser.add_argument("--nodes", default="1x1xH100",
                        help="nodes of the dry run's placement plan, as `cascade plan --nodes` (default 1x1xH100)")
    # Serving overhead (cascade_serve.serving_bench)
    parser.add_argument("--model", default=None, help="model of the direct and pinned arms (default: the first)")
    parser.add_argument("--concurrency", type=concurrency_levels, default=[1, 8, 32],
                        help="concurrency levels (default 1,8,32)")
    parser.add_argument("--requests", type=int, default=192, help="requests per arm above concurrency 1 (default 192)")
    parser.add_argument("--requests-c1", type=int, default=60, help="requests per arm at concurrency 1 (default 60)")
    parser.add_argument("--blocks", type=int, default=3, help="alternating blocks per arm above concurrency 1")
    parser.add_argument("--max-tokens", type=int, default=16, help="tokens per benchmark answer (default 16)")
    # Cost model (calibration.run)
    parser.add_argument("--cal-prompts", type=int, default=120, help="calibration prompts (default 120)")
    parser.add_argument("--cal-max-tokens", type=int, default=64, help="answer limit of a calibration prompt")
    parser.add_argument("--cal-concurrency", type=int, default=None,
                        help="calibration requests per model at once (default: cascade calibrate's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the prompts and of calibrate's split")
    # Output
    parser.add_argument("--out", type=Path, default=Path("runs/gpu_check"),
                        help="folder for the fleet file, prompts and calibration (default runs/gpu_check)")
    parser.add_argument("--json", type=Path, default=Path("runs/gpu_check.json"),
                        help="write the report here (default runs/gpu_check.json)")
    args = parser.parse_args(argv)

    if args.tiny and (args.fleet is not None or args.models_dir is not None):
        raise BadInput("--tiny builds its own fleet: it takes neither --fleet nor --models-dir")
    if args.models_dir is not None and not args.models_dir.is_dir():
        raise BadInput(f"--models-dir: {args.models_dir} is not a folder")
    for name in ("requests", "requests_c1", "blocks", "max_tokens", "cal_max_tokens"):
        if getattr(args, name) < 1:
            raise BadInput(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.requests < args.blocks:
        raise BadInput(f"--requests ({args.requests}) must be at least --blocks ({args.blocks})")
    if args.cal_prompts < MIN_CAL_PROMPTS:
        raise BadInput(f"--cal-prompts must be at least {MIN_CAL_PROMPTS}, got {args.cal_prompts}")
    if args.cal_concurrency is not None and args.cal_concurrency < 1:
        raise BadInput(f"--cal-concurrency must be at least 1, got {args.cal_concurrency}")
    if not 0 < args.port < 65536:
        raise BadInput(f"--port must be in 1-65535, got {args.port}")
    if not args.ready_timeout_s > 0:
        raise BadInput(f"--ready-timeout-s must be positive, got {args.ready_timeout_s:g}")
    return args


# -- step 1: the fleet ----------------------------------------------------------------------------------


def local_source(source: str, models_dir: Path) -> str:
    """Where ``--models-dir`` holds hub id ``source`` (``DIR/Name``, else ``DIR/Org/Name``); the first
    candidate when neither exists, so the preflight names the folder it expected."""
    candidates = [models_dir / source.rsplit("/", 1)[-1], models_dir / source]
    found = next((c for c in candidates if c.is_dir()), candidates[0])
    return str(found.resolve())


def _is_local(source: str) -> bool:
    return Path(source).is_absolute() or source.startswith(".")


def resolve_fleet(fleet_file: Path | None, *, models_dir: Path | None, tiny: bool) -> FleetConfig:
    """Step 1: the fleet to check, validated (``BadInput`` naming the problem otherwise).

    ``models_dir`` points hub-id sources at local folders; ``tiny`` swaps the default fleet's models for
    the tiny ones (ids and sources; their context is capped to what the tiny models hold).
    """
    try:
        fleet = FleetConfig.from_file(fleet_file or DEFAULT_FLEET)
    except ConfigError as exc:
        raise BadInput(str(exc)) from None
    data = fleet.model_dump(mode="json", by_alias=True, exclude_none=True)
    if tiny:
        from toymodels.tiny import TINY_FLEET  # names only: torch is imported when they are built

        if len(data["models"]) != len(TINY_FLEET):
            raise BadInput(f"--tiny needs a fleet of {len(TINY_FLEET)} models, got {len(data['models'])}")
        for entry, name in zip(data["models"], TINY_FLEET, strict=True):
            entry["model_loading_config"] = {"model_id": name, "model_source": str(TINY_DIR / name)}
            kwargs = entry.setdefault("engine_kwargs", {})
            kwargs["max_model_len"] = min(int(kwargs.get("max_model_len", TINY_MAX_MODEL_LEN)), TINY_MAX_MODEL_LEN)
    if models_dir is not None:
        for entry in data["models"]:
            loading = entry["model_loading_config"]
            source = loading.get("model_source") or loading["model_id"]
            if not _is_local(source):
                loading["model_source"] = local_source(source, models_dir)
    try:
        fleet = FleetConfig.from_mapping(data, source=str(fleet_file or DEFAULT_FLEET))
    except ConfigError as exc:
        raise BadInput(str(exc)) from None
    if len(fleet.models) < 2:
        raise BadInput(f"{fleet_file or DEFAULT_FLEET}: a cascade needs at least 2 models, the fleet has "
                       f"{len(fleet.models)}")
    return fleet


# -- step 2: preflight ----------------------------------------------------------------------------------


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _gpu_names() -> list[str]:
    """The machine's NVIDIA GPUs by name (``nvidia-smi``); none without the tool or a driver."""
    tool = shutil.which("nvidia-smi")
    if tool is None:
        return []
    try:
        done = subprocess.run([tool, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True,
                              timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in done.stdout.splitlines() if line.strip()] if done.returncode == 0 else []


def _in_hf_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def weights_status(source: str, *, environ: Mapping[str, str], in_hf_cache: Callable[[str], bool]) -> str:
    """How the engine would get ``source`` here: ``local`` (a folder with a ``config.json``), ``hf-cache``,
    ``hub`` (downloaded at start: ``HF_HUB_OFFLINE=0``) or ``missing``."""
    if _is_local(source):
        return "local" if (Path(source) / "config.json").is_file() else "missing"
    if in_hf_cache(source):
        return "hf-cache"
    # serve.deploy.connect turns the hub off unless the environment says otherwise.
    return "hub" if environ.get("HF_HUB_OFFLINE") == "0" else "missing"


def preflight(fleet: FleetConfig, *, environ: Mapping[str, str], has_module: Callable[[str], bool],
              gpu_names: list[str], in_hf_cache: Callable[[str], bool], check_weights: bool = True) -> list[str]:
    """Step 2: what this machine lacks to run the check on ``fleet``, one line each (none: ready).
    ``check_weights=False`` for weights the run builds itself (``--tiny``)."""
    problems = []
    missing = [m for m in ("ray", "vllm") if not has_module(m)]
    if missing:
        problems.append(f"the engine stack is missing ({', '.join(missing)}): install the gpu extra, "
                        "pip install -e '.[gpu]'")
    if not gpu_names and any(not spec.on_cpu for spec in fleet.models):
        problems.append("no NVIDIA GPU found (nvidia-smi lists none)")
    for spec in fleet.models if check_weights else ():
        source = spec.model_loading_config.model_source or spec.model_id
        if weights_status(source, environ=environ, in_hf_cache=in_hf_cache) != "missing":
            continue
        if _is_local(source):
            problems.append(f"{spec.model_id}: no model at {source} (no config.json)")
        else:
            problems.append(f"{spec.model_id}: {source} is not in the Hugging Face cache: pass --models-dir DIR "
                            f"holding {source.rsplit('/', 1)[-1]}/, download it first, set HF_HUB_OFFLINE=0 where "
                            "the hub is reachable, or use --tiny")
    return problems


# -- step 5's prompts and the verdict: pure ------------------------------------------------------------


def calibration_prompts(n: int, *, seed: int, max_tokens: int) -> list[dict[str, Any]]:
    """``n`` labelled arithmetic questions (numeric grader), seeded. Operand sizes and answer styles vary,
    so the cost model is fitted on a spread of prompt and answer lengths, not on one request shape."""
    rng = random.Random(seed)
    styles = ("Answer with the number only.", "", "Work it out step by step, then give the final answer.")
    rows = []
    for i in range(n):
        digits = rng.randint(1, 4)
        a, b = (rng.randrange(10 ** (digits - 1), 10**digits) for _ in range(2))
        op = rng.choice("+*")
        answer = a + b if op == "+" else a * b
        text = f"What is {a} {op} {b}? {rng.choice(styles)}".strip()
        rows.append({"id": f"gpucheck-{i}", "messages": [{"role": "user", "content": text}], "answer": str(answer),
                     "grader": "numeric", "task": "arithmetic", "max_tokens": max_tokens})
    return rows


def cost_error(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The cost model's held-out error from ``cascade calibrate``'s summary, in percent: per model, and the
    worst model's error given tokens (the target's value)."""
    per_model = {
        m: {"mape_given_tokens_pct": 100.0 * v["cost_mape_given_tokens"],
            "mape_ex_ante_pct": 100.0 * v["cost_mape_ex_ante"], "gpu_s_per_query": v["gpu_s_per_query"]}
        for m, v in summary["per_model"].items()
    }
    if not per_model:
        raise ValueError("the calibration summary has no model")
    worst = max(per_model, key=lambda m: per_model[m]["mape_given_tokens_pct"])
    return {"cost_mape_pct": per_model[worst]["mape_given_tokens_pct"], "worst_model": worst, "per_model": per_model}


def evaluate(measured: Mapping[str, float | None], *, error: str | None = None) -> dict[str, Any]:
    """Step 6: each target's verdict, and the check's: ERROR when a step failed, PASS when every target
    passed, FAIL otherwise (a target without data does not pass)."""
    rows = []
    for t in TARGETS:
        value = measured.get(t.key)
        rows.append({"key": t.key, "label": t.label, "op": t.op, "threshold": t.threshold, "unit": t.unit,
                     "measured": value if value is not None and math.isfinite(value) else None,
                     "verdict": t.verdict(value)})
    verdict = "ERROR" if error is not None else "PASS" if all(r["verdict"] == "PASS" for r in rows) else "FAIL"
    return {"verdict": verdict, "targets": rows}


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float as None: strict JSON has no NaN."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def write_report(report: Mapping[str, Any], path: Path) -> None:
    """``report`` as strict, indented JSON at ``path`` (parent folders created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_finite(dict(report)), indent=2, allow_nan=False) + "\n")


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if not unit else f"{value:.2f} {unit}"


def print_verdicts(report: Mapping[str, Any], console: Any, *, measured: bool = True) -> None:
    """The targets as a table: with what was measured and the verdicts, or (``measured=False``) alone."""
    from rich.table import Table

    table = Table(title=f"GPU check: {report['verdict']}" if measured else "targets")
    for col in ("target", "measured", "needs", "verdict") if measured else ("target", "needs"):
        table.add_column(col, justify="left" if col == "target" else "right")
    colour = {"PASS": "green", "FAIL": "red", "NO DATA": "yellow"}
    for r in report["targets"]:
        needs = f"{r['op']} {r['threshold']:g}{(' ' + r['unit']) if r['unit'] else ''}"
        if measured:
            table.add_row(r["label"], _fmt(r["measured"], r["unit"]), needs,
                          f"[{colour[r['verdict']]}]{r['verdict']}[/]")
        else:
            table.add_row(r["label"], needs)
    console.print(table)


# -- the plan (--dry-run) ---------------------------------------------------------------------------------


def print_plan(args: argparse.Namespace, fleet: FleetConfig, console: Any, problems: list[str]) -> None:
    """What the check would do, where, and what it would need: no Ray, no engine."""
    from rich.table import Table

    from cluster.nodes import NodeSpecError, parse_nodes
    from cluster.plan import PlanError, plan_fleet

    try:
        nodes = parse_nodes(args.nodes)
    except NodeSpecError as exc:
        raise BadInput(str(exc)) from None
    models = Table(title="fleet")
    for col in ("model", "source", "weights", "GPU", "memory", "max len"):
        models.add_column(col, overflow="fold")
    for spec in fleet.models:
        source = spec.model_loading_config.model_source or spec.model_id
        how = "built at start" if args.tiny else weights_status(source, environ=os.environ, in_hf_cache=_in_hf_cache)
        models.add_row(spec.model_id, source, how, f"{spec.gpu_share:g}",
                       str(spec.engine_kwargs.get("gpu_memory_utilization", "-")),
                       str(spec.engine_kwargs.get("max_model_len", "-")))
    console.print(models)
    try:
        plan = plan_fleet(fleet, nodes)
    except PlanError as exc:
        console.print(f"placement on {args.nodes}: [red]refused[/]: " + "; ".join(exc.problems))
    else:
        where = ", ".join(f"{p.deployment} on {p.node} GPU {','.join(map(str, p.gpus))} ({p.share:g})"
                          for p in plan.placements if p.gpus)
        console.print(f"placement on {args.nodes} (offline; the run checks the live nodes): {where}")
    steps = [
        f"preflight: engine stack (ray, vllm), GPU, weights; write {args.out / 'fleet.yaml'}",
        "connect to Ray" + (f" at {args.address}" if args.address else " (in this process)")
        + f", check placement on the live nodes, deploy, wait up to {args.ready_timeout_s:g} s",
        f"serving overhead (cascade_serve.serving_bench, Ray's ingress beside) on {args.model}: concurrency "
        f"{','.join(map(str, args.concurrency))}, {args.requests_c1} requests per arm at 1, {args.requests} above, "
        f"{args.max_tokens} tokens per answer",
        f"cost model: cascade calibrate on {args.cal_prompts} arithmetic prompts (seed {args.seed}, up to "
        f"{args.cal_max_tokens} tokens), held-out MAPE",
        f"verdicts; JSON at {args.json}",
    ]
    console.print("steps:\n" + "\n".join(f"  {i}. {s}" for i, s in enumerate(steps, 1)))
    print_verdicts(evaluate({}), console, measured=False)
    if problems:
        console.print("[yellow]this machine cannot run it yet:[/]\n" + "\n".join(f"  - {p}" for p in problems))


# -- steps 3-5: the live run ------------------------------------------------------------------------------


def _build_tiny(fleet: FleetConfig) -> None:
    from toymodels.tiny import TINY_FLEET, build_tiny_model

    for spec in fleet.models:
        build_tiny_model(TINY_DIR / spec.model_id, TINY_FLEET[spec.model_id])  # where resolve_fleet points them


def _up(args: argparse.Namespace, fleet: FleetConfig, report: dict[str, Any]) -> None:
    """Step 3: Ray connected (how: ``report["ray"]``, set first, so the caller knows what to take down),
    placement checked, the fleet deployed and ready."""
    from ray import serve

    from serve.deploy import APP_NAME, check_placement, check_reachable, connect, deploy, wait_ready

    check_reachable(args.address)
    started_s = time.perf_counter()
    report["ray"] = "connecting"
    how = connect(args.address, start_local=False, num_cpus=os.cpu_count())
    report["ray"] = how
    if how == "existing" and APP_NAME in serve.status().applications:
        raise RuntimeError(f"a {APP_NAME!r} app already runs on this Ray cluster and the check would replace it: "
                           "`cascade down` first, or run the check where none runs")
    placed = check_placement(fleet)
    report["placement"] = {s.model_id: {"gpus_per_replica": s.gpus_per_replica,
                                        "gpu_memory_utilization": s.engine_kwargs.get("gpu_memory_utilization")}
                           for s in placed.models}
    url = f"http://127.0.0.1:{args.port}"
    deploy(fleet, host="127.0.0.1", port=args.port, api_keys=[], timeout_s=args.ready_timeout_s)
    wait_ready(url, args.ready_timeout_s)
    report["timing_s"]["fleet_start"] = time.perf_counter() - started_s


def serving_settings(args: argparse.Namespace, fleet: FleetConfig) -> Any:
    """The serving benchmark's settings from the check's options: every arm of ``cascade_serve.serving_bench``,
    Ray Serve LLM's ingress included, on the fleet's first two models."""
    from cascade_serve.serving_bench import BenchSettings

    models = list(fleet.model_ids)
    second = next((m for m in models if m != args.model), None)
    return BenchSettings(model=args.model, second_model=second, default_lambda=float(fleet.cascade.lambda_ or 0.0),
                         concurrency=tuple(args.concurrency), requests=args.requests, requests_c1=args.requests_c1,
                         blocks=args.blocks, max_tokens=args.max_tokens, base_url=f"http://127.0.0.1:{args.port}",
                         ray_ingress_prefixes=(("ray_ingress", RAY_INGRESS_PREFIX),))


RAY_INGRESS_APP, RAY_INGRESS_PREFIX = "ray-openai", "/ray"


def _serving_overhead(args: argparse.Namespace, fleet: FleetConfig, console: Any) -> dict[str, Any]:
    """Step 4: the serving benchmark's arms on the live fleet (Ray Serve LLM's ingress deployed in front of
    the same replicas first), with its headline numbers."""
    from ray import serve

    from cascade_serve.progress import LoggedProgress
    from cascade_serve.serving_bench import ProcessCpu, bench, headline
    from serve.app import CONTROLLER_DEPLOYMENT, model_deployment_names
    from serve.deploy import APP_NAME, deploy_ray_ingress

    settings = serving_settings(args, fleet)
    deploy_ray_ingress(fleet, app_name=RAY_INGRESS_APP, route_prefix=RAY_INGRESS_PREFIX)
    try:
        cpu = ProcessCpu(APP_NAME, {"ray_ingress": RAY_INGRESS_APP})
        handles = {"replica": serve.get_deployment_handle(model_deployment_names(fleet)[args.model], APP_NAME),
                   "controller": serve.get_deployment_handle(CONTROLLER_DEPLOYMENT, APP_NAME)}
        with LoggedProgress(console=console) as bar:
            task = bar.add_task("serving overhead", total=len(args.concurrency) + 1)
            result = asyncio.run(bench(settings, handles, cpu=cpu, on_level=lambda: bar.advance(task)))
    finally:
        serve.delete(RAY_INGRESS_APP)
    result.update(headline(result["levels"]))
    return result


def _cost_model(args: argparse.Namespace, fleet_file: Path) -> dict[str, Any]:
    """Step 5: ``cascade calibrate`` on fresh timings; its summary."""
    from calibration.run import CalibrateOptions, run_calibrate
    from cascade_serve.calibrate import ConsoleReporter

    prompts = args.out / "prompts.jsonl"
    rows = calibration_prompts(args.cal_prompts, seed=args.seed, max_tokens=args.cal_max_tokens)
    prompts.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = args.out / "calibration"
    # The cache is keyed by model and settings, not by machine: timings from another GPU or run must not
    # stand in for this one's.
    (out / "replay.jsonl").unlink(missing_ok=True)
    extra = {} if args.cal_concurrency is None else {"concurrency": args.cal_concurrency}
    opts = CalibrateOptions(fleet_file=fleet_file, prompts=prompts, out=out, url=f"http://127.0.0.1:{args.port}",
                            seed=args.seed, max_tokens=args.cal_max_tokens, bootstrap=50, **extra)
    with ConsoleReporter() as reporter:
        return run_calibrate(opts, reporter=reporter)


def _run(args: argparse.Namespace, fleet: FleetConfig, fleet_file: Path, report: dict[str, Any],
         measured: dict[str, float | None], console: Any) -> None:
    """Steps 3-5, filling ``report`` and ``measured`` as they go; the fleet is taken down however they end."""
    try:
        _up(args, fleet, report)
        started_s = time.perf_counter()
        bench = _serving_overhead(args, fleet, console)
        report["serving"] = bench
        report["timing_s"]["serving"] = time.perf_counter() - started_s
        for key in ("controller_overhead_ms_p50", "throughput_ratio"):
            measured[key] = bench[key]
        started_s = time.perf_counter()
        summary = _cost_model(args, fleet_file)
        report["cost_model"] = {**cost_error(summary), "calibration_dir": str(args.out / "calibration"),
                                "prompts": summary["prompts"]}
        report["timing_s"]["cost_model"] = time.perf_counter() - started_s
        measured["cost_mape_pct"] = report["cost_model"]["cost_mape_pct"]
    finally:
        if "ray" in report:
            _take_down(report["ray"])


def _take_down(how: str) -> None:
    """Leave Ray as found: an in-process Ray goes whole; on a cluster that was there before, only the check's
    app goes; when connecting failed half-way, this driver only disconnects."""
    import ray

    if not ray.is_initialized():
        return
    if how == "in-process":
        from ray import serve

        serve.shutdown()
    elif how == "existing":
        from serve.deploy import shutdown_app

        shutdown_app()
    ray.shutdown()


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console

    console = Console()
    try:
        args = parse_args(argv)
        fleet = resolve_fleet(args.fleet, models_dir=args.models_dir, tiny=args.tiny)
        args.model = args.model or fleet.model_ids[0]  # models are ordered by cost: the first is the cheapest
        if args.model not in fleet.model_ids:
            raise BadInput(f"--model {args.model!r} is not in the fleet ({', '.join(fleet.model_ids)})")
        gpus = _gpu_names()
        if args.dry_run:
            problems = preflight(fleet, environ=os.environ, has_module=_has_module, gpu_names=gpus,
                                 in_hf_cache=_in_hf_cache, check_weights=not args.tiny)
            print_plan(args, fleet, console, problems)
            return 0
        problems = preflight(fleet, environ=os.environ, has_module=_has_module, gpu_names=gpus,
                             in_hf_cache=_in_hf_cache, check_weights=not args.tiny)
        if problems:
            raise BadInput("this machine cannot run the check: " + "; ".join(problems))
        if args.tiny:
            try:
                _build_tiny(fleet)
            except ImportError as exc:
                raise BadInput(f"--tiny builds its models with torch, transformers and tokenizers: {exc}") from None
    except BadInput as exc:
        print(f"gpu_check: error: {exc}", file=sys.stderr)
        return 2

    from cascade_serve.plan import fleet_yaml

    args.out.mkdir(parents=True, exist_ok=True)
    fleet_file = args.out / "fleet.yaml"
    fleet_file.write_text(fleet_yaml(fleet))
    fleet = FleetConfig.from_file(fleet_file)  # what calibrate reads is what is deployed
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    report: dict[str, Any] = {"settings": settings, "fleet_file": str(fleet_file), "models": fleet.model_ids,
                              "gpus": gpus, "timing_s": {}}
    measured: dict[str, float | None] = {}
    error = None
    started_s = time.perf_counter()
    try:
        _run(args, fleet, fleet_file, report, measured, console)
    except Exception as exc:  # any step's failure: recorded with what was measured before it, exit 1
        traceback.print_exc()
        error = f"{type(exc).__name__}: {exc}"
    report["timing_s"]["total"] = time.perf_counter() - started_s
    report = {**evaluate(measured, error=error), "error": error, **report}
    write_report(report, args.json)
    print_verdicts(report, console)
    serving = report.get("serving")
    if serving is not None:
        console.print(f"context: {serving['controller_non_engine_overhead_ms_p50']:.2f} ms of the overhead is "
                      f"outside the engine; pass-through overhead {serving['passthrough_overhead_ms_p50']:.2f} ms")
    cost = report.get("cost_model")
    if cost is not None:
        console.print("cost model error per model (given tokens / ex ante): " + "; ".join(
            f"{m} {v['mape_given_tokens_pct']:.1f} % / {v['mape_ex_ante_pct']:.1f} %"
            for m, v in cost["per_model"].items()))
    if error is not None:
        console.print(f"the check stopped: {error}", style="red", markup=False)
    console.print(f"report: {args.json}")
    return 1 if error is not None else 0


if __name__ == "__main__":
    raise SystemExit(main())
