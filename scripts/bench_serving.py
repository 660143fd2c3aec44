"""Benchmark: what the controller costs, against calling a model replica directly and against Ray Serve
LLM's own OpenAI ingress in front of the same replicas, on the CPU fleet.

    .venv/bin/python -m scripts.bench_serving --json runs/bench_serving.json --plot runs/bench_serving.png \
        [--profile runs/bench_serving_profile]

Brings up the embedded CPU fleet (tiny models, real vLLM engines, Ray Serve) in this process, deploys Ray
Serve LLM's ``OpenAiIngress`` (the ingress ``build_openai_app`` deploys) as a second application at
``/ray`` bound to the fleet's own model replicas, then in one run, interleaved, for concurrency 1, 8 and
32, sends the same requests through every arm of ``cascade_serve.serving_bench``: over Serve handles
(direct, the controller's pinned one-stage cascade, its pass-through) and over HTTP through Serve's proxy
(Ray's ingress as users deploy it; Ray's ingress with the controller's process settings; our
pass-through; our one-stage and two-stage cascades). A mixed cascade workload (lambdas 0, the fleet
file's and huge, at concurrency 8) follows.

Prints a table; writes JSON with ``controller_overhead_ms_p50`` (per stage, concurrency 1: median
controller latency minus median direct latency over handles; ``controller_non_engine_overhead_ms_p50``
takes each request's engine time, from vLLM's own metrics, out), ``throughput_ratio`` (controller /
direct requests per second at the highest concurrency), and ``cpu_ratio_passthrough_vs_ray_ingress`` /
``cpu_ratio_cascade_vs_ray_ingress``: CPU per request outside the engine (the HTTP proxy, the ingress
process, the model replicas' own processes; not vLLM's engine cores, not the client) of our
pass-through and one-stage cascade over Ray's ingress, at the highest concurrency. ``--profile`` then
samples each ingress with py-spy under the same load and writes the hottest functions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from cascade_serve.serving_bench import concurrency_levels

RAY_INGRESS_APPS = {"ray_ingress": ("ray-openai", "/ray"), "ray_ingress_env": ("ray-openai-env", "/ray-env")}
ARM_ORDER = ("direct", "controller", "passthrough", "ray_ingress", "ray_ingress_env", "http_passthrough",
             "http_cascade_1", "http_cascade_2")


def _plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = result["levels"]
    cs = sorted(int(c) for c in levels)
    present = [a for a in ARM_ORDER if a in levels[str(cs[0])]]
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(16, 4.5))
    for arm in present:
        style = "--" if arm in ("direct", "controller", "passthrough") else "-"
        ax1.plot(cs, [levels[str(c)]["non_engine_ms_p50"][arm] for c in cs], style, marker="o", label=arm)
        ax2.plot(cs, [levels[str(c)][arm]["throughput_rps"] for c in cs], style, marker="o", label=arm)
    ax1.set(xscale="log", xlabel="concurrency", ylabel="ms", title="latency outside the engine, p50")
    ax2.set(xscale="log", xlabel="concurrency", ylabel="requests / s", title="throughput")
    for ax in (ax1, ax2):
        ax.set_xticks(cs, [str(c) for c in cs])
    ax1.legend(fontsize=7)
    top = levels[str(cs[-1])]
    if "cpu_ms_per_request" in top:
        http = [a for a in present if a not in ("direct", "controller", "passthrough")]
        bottom = [0.0] * len(http)
        for role in ("proxy", "ingress", "replicas"):
            vals = [(top["cpu_ms_per_request"][a]["proxy"] if role == "proxy" else
                     top["cpu_ms_per_request_path"][a]["ingress"] - top["cpu_ms_per_request"][a]["proxy"]
                     if role == "ingress" else top["cpu_ms_per_request"][a]["replicas"]) for a in http]
            ax3.bar(http, vals, bottom=bottom, label=role)
            bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
        ax3.set(ylabel="CPU ms per request", title=f"CPU outside the engine, concurrency {cs[-1]}")
        ax3.tick_params(axis="x", labelrotation=30, labelsize=7)
        ax3.legend(fontsize=7)
    fig.suptitle(f"cascade controller vs Ray Serve LLM's ingress vs direct calls ({result['settings']['model']}, "
                 f"{result['settings']['max_tokens']} tokens per answer, same replicas)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fleet", type=Path, default=Path("models.cpu.yaml"),
                        help="fleet file (default models.cpu.yaml)")
    parser.add_argument("--model", default="tiny-small", help="the model of the one-model arms (default tiny-small)")
    parser.add_argument("--second-model", default=None,
                        help="the two-stage arm's second model (default: the fleet's next model after --model)")
    parser.add_argument("--concurrency", type=concurrency_levels, default=[1, 8, 32],
                        help="concurrency levels (default 1,8,32)")
    parser.add_argument("--requests", type=int, default=192, help="requests per arm above concurrency 1 (default 192)")
    parser.add_argument("--requests-c1", type=int, default=60, help="requests per arm at concurrency 1 (default 60)")
    parser.add_argument("--blocks", type=int, default=3, help="alternating blocks per arm and level (default 3)")
    parser.add_argument("--max-tokens", type=int, default=16, help="tokens per answer (default 16)")
    parser.add_argument("--replica-transport", choices=["grpc", "actor"], default=None,
                        help="the controller's transport to the replicas (default: the fleet file's)")
    parser.add_argument("--no-http", action="store_true",
                        help="handle arms only (no HTTP arms, no Ray ingress): the earlier benchmark")
    parser.add_argument("--profile", type=Path, default=None,
                        help="after the measurement, sample each ingress with py-spy under load; write here")
    parser.add_argument("--profile-requests", type=int, default=400,
                        help="requests per profiled arm (default 400, at the highest concurrency)")
    parser.add_argument("--json", type=Path, default=None, help="write results here")
    parser.add_argument("--plot", type=Path, default=None, help="draw latency, throughput and CPU to this PNG")
    args = parser.parse_args(argv)
    for name in ("requests", "requests_c1", "blocks", "max_tokens", "profile_requests"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.profile is not None and not (shutil.which("py-spy") or Path(sys.executable).with_name("py-spy").exists()):
        parser.error("--profile needs py-spy (the dev extra: uv pip install py-spy)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    import ray
    from ray import serve
    from rich.console import Console

    from cascade_serve.progress import LoggedProgress
    from cascade_serve.report import write_results
    from cascade_serve.serving_bench import BenchSettings, ProcessCpu, bench, headline
    from cluster.config import FleetConfig
    from serve.app import CONTROLLER_DEPLOYMENT, CONTROLLER_ENV, model_deployment_names
    from serve.deploy import APP_NAME, connect, deploy, deploy_ray_ingress, wait_ready
    from toymodels.tiny import TINY_FLEET, build_tiny_model

    fleet = FleetConfig.from_file(args.fleet)
    if args.replica_transport is not None:
        fleet = fleet.model_copy(update={"cascade": fleet.cascade.model_copy(
            update={"replica_transport": args.replica_transport})})
    models = list(fleet.model_ids)
    if args.model not in models:
        raise SystemExit(f"bench_serving: --model {args.model!r} is not in {args.fleet} ({', '.join(models)})")
    second = args.second_model or next((m for m in models[models.index(args.model) + 1:] + models if m != args.model),
                                       None)
    if second is not None and second not in models:
        raise SystemExit(f"bench_serving: --second-model {second!r} is not in {args.fleet} ({', '.join(models)})")
    for name, spec in TINY_FLEET.items():
        build_tiny_model(args.fleet.resolve().parent / ".cache" / "tiny" / name, spec)
    console = Console(stderr=True)
    t0 = time.perf_counter()
    connect(None, start_local=False, num_cpus=os.cpu_count())
    port = 8000 + os.getpid() % 1000
    base_url = f"http://127.0.0.1:{port}"
    settings = BenchSettings(
        model=args.model, second_model=second, default_lambda=float(fleet.cascade.lambda_ or 0.0),
        concurrency=tuple(args.concurrency), requests=args.requests, requests_c1=args.requests_c1,
        blocks=args.blocks, max_tokens=args.max_tokens, base_url=None if args.no_http else base_url,
        ray_ingress_prefixes=() if args.no_http else tuple((arm, prefix) for arm, (_, prefix) in
                                                           RAY_INGRESS_APPS.items()))
    try:
        with LoggedProgress(console=console) as bar:
            task = bar.add_task("fleet start", total=None)
            deploy(fleet, host="127.0.0.1", port=port, api_keys=[])
            wait_ready(base_url, 900)
            if not args.no_http:
                bar.update(task, description="Ray Serve LLM's ingress")
                for arm, (app, prefix) in RAY_INGRESS_APPS.items():
                    deploy_ray_ingress(fleet, app_name=app, route_prefix=prefix,
                                       env_vars=dict(CONTROLLER_ENV) if arm == "ray_ingress_env" else None)
            start_s = time.perf_counter() - t0
            cpu = ProcessCpu(APP_NAME, {arm: app for arm, (app, _) in RAY_INGRESS_APPS.items()})
            handles = {"replica": serve.get_deployment_handle(model_deployment_names(fleet)[args.model], APP_NAME),
                       "controller": serve.get_deployment_handle(CONTROLLER_DEPLOYMENT, APP_NAME)}
            bar.update(task, description="benchmark", total=len(args.concurrency) + 1, completed=0)
            result = asyncio.run(bench(settings, handles, cpu=cpu, on_level=lambda: bar.advance(task),
                                       profile_dir=args.profile, profile_requests=args.profile_requests))
            result["processes"] = {role: cpu.pids(role) for role in cpu.processes}
    finally:
        serve.shutdown()
        ray.shutdown()

    result.update(headline(result["levels"]))
    result["fleet_start_s"] = start_s
    result["settings"] = {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                          "second_model": second, "replica_transport": fleet.cascade.replica_transport,
                          "cpus": os.cpu_count()}
    _print(result, args, start_s)
    write_results(result, json_path=args.json, plot_path=args.plot, plot=_plot)
    if args.profile is not None and "profile" in result:
        (args.profile / "summary.json").write_text(json.dumps(result["profile"], indent=1))
    return 0


def _print(result: dict[str, Any], args: argparse.Namespace, start_s: float) -> None:
    from rich.console import Console
    from rich.table import Table

    levels = result["levels"]
    table = Table(title=f"serving arms ({args.model}, {args.max_tokens} tokens/answer, same replicas, controller to "
                  f"replicas over {result['settings']['replica_transport']}; fleet up in {start_s:.0f} s)")
    for col in ("conc.", "arm", "p50 ms", "p99 ms", "req/s", "engine ms p50", "outside engine ms p50",
                "CPU ms/req outside engine", "of which router"):
        table.add_column(col, justify="right")
    for c, level in levels.items():
        for arm in ARM_ORDER:
            if arm not in level:
                continue
            s = level[arm]
            path = level.get("cpu_ms_per_request_path", {}).get(arm)
            table.add_row(c, arm, f"{s['p50_ms']:.1f}", f"{s['p99_ms']:.1f}", f"{s['throughput_rps']:.1f}",
                          f"{level['engine_gpu_ms_p50'][arm]:.1f}", f"{level['non_engine_ms_p50'][arm]:.1f}",
                          f"{path['outside_engine']:.2f}" if path else "-", f"{path['ingress']:.2f}" if path else "-")
    m = result["mixed"]
    table.add_row("8", "mixed cascade", f"{m['p50_ms']:.1f}", f"{m['p99_ms']:.1f}", f"{m['throughput_rps']:.1f}",
                  f"{m['mean_gpu_ms']:.1f} (mean)", "-", "-", "-")
    out = Console(width=150)
    out.print(table)
    top = max(int(c) for c in levels)
    line = (f"controller overhead per stage (p50, concurrency {min(int(c) for c in levels)}, handles): "
            f"{result['controller_overhead_ms_p50']:.2f} ms ({result['controller_non_engine_overhead_ms_p50']:.2f} ms "
            f"outside the engine); throughput ratio at concurrency {top}: {result['throughput_ratio']:.3f}; "
            f"mixed: {m['mean_stages']:.2f} stages/request, escalation rate {m['escalation_rate']:.2f}")
    out.print(line)
    if "cpu_ratio_passthrough_vs_ray_ingress" in result:
        out.print(f"CPU per request outside the engine at concurrency {top}, over Ray Serve LLM's ingress: "
                  f"pass-through {result['cpu_ratio_passthrough_vs_ray_ingress']:.2f}x, one-stage cascade "
                  f"{result['cpu_ratio_cascade_vs_ray_ingress']:.2f}x"
                  + (f", two-stage cascade {result['cpu_ratio_cascade_2_vs_ray_ingress']:.2f}x"
                     if "cpu_ratio_cascade_2_vs_ray_ingress" in result else ""))
    for arm, prof in (result.get("profile") or {}).items():
        for pid, summary in prof["processes"].items():
            where = ", ".join(f"{o} {share:.0%}" for o, share in summary["self_by_origin"].items())
            hot = ", ".join(f"{f.split(' (')[0]} {share:.0%}" for f, share in summary["self"][:5])
            out.print(f"profile {arm} (pid {pid}, {summary['samples']} samples): by origin {where}; cascade-serve "
                      f"code on {summary['ours_inclusive']:.0%} of the stacks; hottest: {hot}")


if __name__ == "__main__":
    raise SystemExit(main())
