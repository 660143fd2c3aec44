"""Benchmark: what the controller costs over calling a model replica directly, on the CPU fleet.

    .venv/bin/python -m scripts.bench_serving --json runs/bench_serving.json --plot runs/bench_serving.png

Brings up the embedded CPU fleet (tiny models, real vLLM engines, Ray Serve) in this process, then in
one run, side by side, for concurrency 1, 8 and 32:

- **direct**: ``run("chat", body)`` on the replica deployment's handle (``model:tiny-small``);
- **controller**: the same body sent to the controller's handle as ``model: "cascade"`` pinned to
  that one model (``"cascade": {"models": ["tiny-small"]}``): the whole cascade path (estimates,
  policy decision, the stage call, the decision to stop, trace and accounting) for one stage;
- **passthrough** (context): the same body naming ``tiny-small`` through the controller.

Both arms use Serve handles from this driver, so the difference is the controller's hop and logic,
not the HTTP proxy (which fronts any deployment alike). At concurrency 1 the arms alternate request by
request; above it they alternate in blocks; the arms' order rotates, so none always goes first.
Every answer has exactly ``--max-tokens`` tokens
(``ignore_eos``), so the engine does the same work in every arm. A mixed cascade workload (lambdas 0,
the fleet file's and huge, at concurrency 8) follows. Prints a table; writes JSON with top-level
``controller_overhead_ms_p50`` (per stage, concurrency 1: median controller latency minus median
direct latency; ``controller_non_engine_overhead_ms_p50`` is the same with each request's engine time,
from vLLM's own metrics, taken out) and ``throughput_ratio`` (controller / direct requests per second
at concurrency 32).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

PROMPTS = [
    "What is 17 * 23?",
    "Write a Python function that reverses a string.",
    "Name the capital of France.",
    "Explain recursion in one sentence.",
]


def _cpu_seconds() -> dict[str, float]:
    """CPU time so far of the processes on the request path, by role: the controller replica, the
    HTTP proxy, the model replicas with their engine processes, and this driver."""
    import psutil  # type: ignore[import-untyped]

    totals = dict.fromkeys(("controller", "proxy", "replicas", "driver"), 0.0)
    for proc in psutil.process_iter(["cmdline"]):
        try:
            title = " ".join(proc.info["cmdline"] or [])
            role = ("controller" if "CascadeController" in title else "proxy" if "ProxyActor" in title
                    else "replicas" if "ServeReplica:cascade:model:" in title
                    else "driver" if proc.pid == os.getpid() else None)
            if role is None:
                continue
            family = [proc, *proc.children(recursive=True)] if role == "replicas" else [proc]
            for p in family:
                t = p.cpu_times()
                totals[role] += t.user + t.system
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return totals


def _stats(latencies_s: list[float], wall_s: float) -> dict[str, float]:
    ms = np.array(latencies_s) * 1e3
    return {
        "n": int(ms.shape[0]),
        "p50_ms": float(np.median(ms)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
        "throughput_rps": float(ms.shape[0] / wall_s),
    }


async def _timed(fn: Any, body: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    t0 = time.perf_counter()
    out: dict[str, Any] = await fn(body)
    elapsed = time.perf_counter() - t0
    if "error" in out:
        raise RuntimeError(f"benchmark request failed: {out['error']}")
    return elapsed, out


async def _run_block(fn: Any, bodies: list[dict[str, Any]], concurrency: int) -> tuple[list[float], float,
                                                                                      list[dict[str, Any]]]:
    queue = list(bodies)
    latencies: list[float] = []
    outputs: list[dict[str, Any]] = []

    async def worker() -> None:
        while queue:
            body = queue.pop()
            elapsed, out = await _timed(fn, body)
            latencies.append(elapsed)
            outputs.append(out)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, time.perf_counter() - t0, outputs


async def bench(args: argparse.Namespace, default_lambda: float, bar: Any, task: Any) -> dict[str, Any]:
    from ray import serve

    from serve.deploy import APP_NAME

    replica = serve.get_deployment_handle(f"model:{args.model}", app_name=APP_NAME)
    controller = serve.get_deployment_handle("CascadeController", app_name=APP_NAME)

    def body(i: int, **extra: Any) -> dict[str, Any]:
        return {"model": args.model, "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                "max_tokens": args.max_tokens, "ignore_eos": True, "temperature": 0.0, **extra}

    arms = {
        "direct": lambda b: replica.run.remote("chat", b),
        "controller": lambda b: controller.call.remote(
            "chat", {**b, "model": "cascade", "cascade": {"models": [args.model], "lambda": default_lambda}}),
        "passthrough": lambda b: controller.call.remote("chat", b),
    }
    # Warm every path (first requests pay imports and allocations).
    for fn in arms.values():
        for i in range(3):
            await _timed(fn, body(i))

    levels: dict[str, dict[str, Any]] = {}
    for c in args.concurrency:
        n = args.requests if c > 1 else args.requests_c1
        cpu: dict[str, dict[str, float]] = {a: dict.fromkeys(("controller", "proxy", "replicas", "driver"), 0.0)
                                            for a in arms}
        lat: dict[str, list[float]] = {a: [] for a in arms}
        wall: dict[str, float] = dict.fromkeys(arms, 0.0)
        outs: dict[str, list[dict[str, Any]]] = {a: [] for a in arms}
        names = list(arms)
        if c == 1:
            for i in range(n):  # request by request, arms interleaved, the order rotating
                for arm in names[i % 3:] + names[: i % 3]:
                    fn = arms[arm]
                    elapsed, out = await _timed(fn, body(i))
                    lat[arm].append(elapsed)
                    wall[arm] += elapsed
                    outs[arm].append(out)
        else:
            for block in range(args.blocks):
                for arm in names[block % 3:] + names[: block % 3]:  # no arm always goes first
                    fn = arms[arm]
                    bodies = [body(block * n + i) for i in range(n // args.blocks)]
                    before = _cpu_seconds()
                    latencies, w, o = await _run_block(fn, bodies, c)
                    after = _cpu_seconds()
                    for role in after:
                        cpu[arm][role] += after[role] - before[role]
                    lat[arm] += latencies
                    wall[arm] += w
                    outs[arm] += o
        levels[str(c)] = {arm: _stats(lat[arm], wall[arm]) for arm in arms}
        if c > 1:  # CPU per request by process role: where the 2 cores go (sampled per block)
            levels[str(c)]["cpu_ms_per_request"] = {
                arm: {role: 1e3 * v / len(lat[arm]) for role, v in cpu[arm].items()} for arm in arms
            }
        # Engine time of the same requests (vLLM's own stats): the arms must do the same work.
        engine_ms = {
            "direct": [_gpu_ms(o) for o in outs["direct"]],
            "passthrough": [_gpu_ms(o) for o in outs["passthrough"]],
            "controller": [o["cascade"]["total_gpu_ms"] + o["cascade"]["stages"][0]["queue_time_ms"]
                           for o in outs["controller"]],
        }
        levels[str(c)]["engine_gpu_ms_p50"] = {a: float(np.median(v)) for a, v in engine_ms.items()}
        # Latency outside the engine (queue, prefill and decode removed): the arms' plumbing alone.
        levels[str(c)]["non_engine_ms_p50"] = {
            a: float(np.median(np.array(lat[a]) * 1e3 - np.array(engine_ms[a]))) for a in engine_ms
        }
        bar.advance(task)

    # Mixed cascade workload: the real thing, several lambdas, escalations included.
    lambdas = [0.0, default_lambda, 1e6]
    mixed_bodies = [
        {"model": "cascade", "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
         "max_tokens": args.max_tokens, "temperature": 0.0, "cascade": {"lambda": lambdas[i % 3]}}
        for i in range(args.requests)
    ]
    latencies, w, outs_mixed = await _run_block(lambda b: controller.call.remote("chat", b), mixed_bodies, 8)
    mixed: dict[str, Any] = {**_stats(latencies, w)}
    stages = [len([s for s in o["cascade"]["stages"] if s["decision"] != "error"]) for o in outs_mixed]
    mixed.update({
        "concurrency": 8,
        "lambdas": lambdas,
        "mean_stages": float(np.mean(stages)),
        "escalation_rate": float(np.mean([s > 1 for s in stages])),
        "mean_gpu_ms": float(np.mean([o["cascade"]["total_gpu_ms"] for o in outs_mixed])),
        "served_by": {m: int(sum(o["model"] == m for o in outs_mixed)) for m in {o["model"] for o in outs_mixed}},
    })
    bar.advance(task)
    return {"levels": levels, "mixed": mixed}


def headline(levels: dict[str, Any]) -> dict[str, float]:
    """The run's top-level numbers from its levels: overheads at the lowest concurrency (per stage, the
    pinned cascade has one), the controller/direct throughput ratio at the highest."""
    c1 = levels["1"] if "1" in levels else levels[str(min(int(c) for c in levels))]
    top = levels[str(max(int(c) for c in levels))]
    return {
        "controller_overhead_ms_p50": c1["controller"]["p50_ms"] - c1["direct"]["p50_ms"],
        "passthrough_overhead_ms_p50": c1["passthrough"]["p50_ms"] - c1["direct"]["p50_ms"],
        "controller_non_engine_overhead_ms_p50": (
            c1["non_engine_ms_p50"]["controller"] - c1["non_engine_ms_p50"]["direct"]),
        "throughput_ratio": top["controller"]["throughput_rps"] / top["direct"]["throughput_rps"],
    }


def _gpu_ms(response: dict[str, Any]) -> float:
    """Engine time of a direct answer: queue, prefill and decode (vLLM's per-request metrics)."""
    m = response.get("metrics") or {}
    return float(sum(m.get(k) or 0.0 for k in ("queue_time_ms", "time_to_first_token_ms", "generation_time_ms")))


def _plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = result["levels"]
    cs = sorted(int(c) for c in levels)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for arm, style in (("direct", "o-"), ("controller", "s-"), ("passthrough", "^--")):
        ax1.plot(cs, [levels[str(c)][arm]["p50_ms"] for c in cs], style, label=arm)
        ax2.plot(cs, [levels[str(c)][arm]["throughput_rps"] for c in cs], style, label=arm)
    ax1.set(xscale="log", xlabel="concurrency", ylabel="latency p50 (ms)", title="latency")
    ax2.set(xscale="log", xlabel="concurrency", ylabel="requests / s", title="throughput")
    for ax in (ax1, ax2):
        ax.set_xticks(cs, [str(c) for c in cs])
        ax.legend()
    fig.suptitle(f"controller vs direct replica calls ({result['settings']['model']}, "
                 f"{result['settings']['max_tokens']} tokens per answer)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fleet", type=Path, default=Path("models.cpu.yaml"),
                        help="fleet file (default models.cpu.yaml)")
    parser.add_argument("--model", default="tiny-small", help="the model of the direct and pinned arms")
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 32],
                        help="concurrency levels (default 1,8,32)")
    parser.add_argument("--requests", type=int, default=192, help="requests per arm above concurrency 1 (default 192)")
    parser.add_argument("--requests-c1", type=int, default=60, help="requests per arm at concurrency 1 (default 60)")
    parser.add_argument("--blocks", type=int, default=3, help="alternating blocks per arm above concurrency 1")
    parser.add_argument("--max-tokens", type=int, default=16, help="tokens per answer (default 16)")
    parser.add_argument("--json", type=Path, default=None, help="write results here")
    parser.add_argument("--plot", type=Path, default=None, help="draw latency and throughput to this PNG")
    args = parser.parse_args(argv)

    import ray
    from ray import serve
    from rich.console import Console
    from rich.table import Table

    from cascade_serve.progress import LoggedProgress
    from cascade_serve.report import write_results
    from cluster.config import FleetConfig
    from serve.deploy import connect, deploy, wait_ready
    from toymodels.tiny import TINY_FLEET, build_tiny_model

    fleet = FleetConfig.from_file(args.fleet)
    if args.model not in fleet.model_ids:
        parser.error(f"--model {args.model!r} is not in {args.fleet} ({', '.join(fleet.model_ids)})")
    for name, spec in TINY_FLEET.items():
        build_tiny_model(args.fleet.resolve().parent / ".cache" / "tiny" / name, spec)
    console = Console(stderr=True)
    t0 = time.perf_counter()
    connect(None, start_local=False, num_cpus=os.cpu_count())
    try:
        with LoggedProgress(console=console) as bar:
            task = bar.add_task("fleet start", total=None)
            port = 8000 + os.getpid() % 1000
            deploy(fleet, host="127.0.0.1", port=port, api_keys=[])
            wait_ready(f"http://127.0.0.1:{port}", 900)
            start_s = time.perf_counter() - t0
            bar.update(task, description="benchmark", total=len(args.concurrency) + 1, completed=0)
            result = asyncio.run(bench(args, float(fleet.cascade.lambda_ or 0.0), bar, task))
    finally:
        serve.shutdown()
        ray.shutdown()

    levels = result["levels"]
    result.update(headline(levels))
    result["fleet_start_s"] = start_s
    result["settings"] = {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                          "cpus": os.cpu_count()}

    table = Table(title=f"controller vs direct ({args.model}, {args.max_tokens} tokens/answer, fleet up in "
                  f"{start_s:.0f} s)")
    for col in ("concurrency", "arm", "p50 ms", "p99 ms", "req/s", "engine ms p50", "outside engine ms p50"):
        table.add_column(col, justify="right")
    for c, level in levels.items():
        for arm in ("direct", "controller", "passthrough"):
            s = level[arm]
            table.add_row(c, arm, f"{s['p50_ms']:.1f}", f"{s['p99_ms']:.1f}", f"{s['throughput_rps']:.1f}",
                          f"{level['engine_gpu_ms_p50'][arm]:.1f}", f"{level['non_engine_ms_p50'][arm]:.1f}")
    m = result["mixed"]
    table.add_row("8", "mixed cascade", f"{m['p50_ms']:.1f}", f"{m['p99_ms']:.1f}", f"{m['throughput_rps']:.1f}",
                  f"{m['mean_gpu_ms']:.1f} (mean)", "-")
    out = Console()
    out.print(table)
    for c, level in levels.items():
        if "cpu_ms_per_request" in level:
            out.print(f"CPU ms per request at concurrency {c}: " + "; ".join(
                f"{arm}: " + ", ".join(f"{role} {v:.1f}" for role, v in roles.items())
                for arm, roles in level["cpu_ms_per_request"].items()))
    out.print(f"controller overhead per stage (p50, concurrency 1): {result['controller_overhead_ms_p50']:.2f} ms "
              f"({result['controller_non_engine_overhead_ms_p50']:.2f} ms outside the engine); "
              f"throughput ratio at concurrency {max(int(c) for c in levels)}: {result['throughput_ratio']:.3f}; "
              f"mixed: {m['mean_stages']:.2f} stages/request, escalation rate {m['escalation_rate']:.2f}")
    write_results(result, json_path=args.json, plot_path=args.plot, plot=_plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
