"""Benchmark: the endpoint under rising load, past its capacity, on the CPU fleet.

    .venv/bin/python -m scripts.bench_load --json runs/bench_load.json --plot runs/bench_load.png

Brings up the embedded CPU fleet (tiny models, real vLLM engines, Ray Serve) in this process with the
controller's ``cascade.max_in_flight`` set to ``--max-in-flight``, then sends cascade requests over
HTTP from this process at each concurrency of ``--concurrency`` (closed loop: each client sends its
next request when the last one is answered, or once the Retry-After of a shed one has passed, as the
OpenAI SDKs do; ``--ignore-retry-after`` retries after 50 ms; ``--seconds`` per level). Per level: accepted
throughput, the accepted requests' p50/p99 latency, the shed rate (503 ``overloaded``) and how fast a
shed request is answered, any other status, and the controller's resident memory after the level.
Writes JSON with top-level ``unloaded_p99_ms`` (concurrency 1), ``overload_concurrency`` (the highest
level), ``accepted_p99_ratio`` (its accepted p99 over the unloaded p99), ``shed_p99_ms`` and
``controller_rss_mb`` per level; prints a table.
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

CHAT = [{"role": "user", "content": "What is 17 * 23?"}]


def _controller_rss_mb() -> float:
    import psutil  # type: ignore[import-untyped]

    rss = [p.memory_info().rss for p in psutil.process_iter(["cmdline"])
           if "CascadeController" in " ".join(p.info["cmdline"] or [])]
    return float(sum(rss) / 2**20)


async def _level(url: str, concurrency: int, seconds: float, max_tokens: int, *,
                 honour_retry_after: bool = True) -> dict[str, Any]:
    """``concurrency`` closed-loop clients for ``seconds``: what each answer was and how long it took."""
    import httpx

    body = {"model": "cascade", "messages": CHAT, "max_tokens": max_tokens, "temperature": 0.0}
    ok_s: list[float] = []
    shed_s: list[float] = []
    other: dict[str, int] = {}
    retry_after: set[str] = set()
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency + 8)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def worker() -> None:
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                r = await client.post("/v1/chat/completions", json=body)
                elapsed = time.perf_counter() - t0
                if r.status_code == 200:
                    ok_s.append(elapsed)
                elif r.status_code == 503 and (r.json().get("error") or {}).get("code") == "overloaded":
                    shed_s.append(elapsed)
                    retry_after.add(r.headers.get("retry-after", ""))
                    # An SDK waits as told; a client that does not still must not spin (the pause bounds the
                    # level's request rate, and every shed request costs the machine CPU).
                    told = r.headers.get("retry-after", "")
                    await asyncio.sleep(float(told) if honour_retry_after and told.isdigit() else 0.05)
                else:
                    other[str(r.status_code)] = other.get(str(r.status_code), 0) + 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall_s = time.perf_counter() - t0
    total = len(ok_s) + len(shed_s) + sum(other.values())

    def pct(values: list[float], q: float) -> float | None:
        return float(np.percentile(np.array(values) * 1e3, q)) if values else None

    return {
        "concurrency": concurrency, "requests": total, "accepted": len(ok_s), "shed": len(shed_s), "other": other,
        "accepted_rps": len(ok_s) / wall_s, "accepted_p50_ms": pct(ok_s, 50), "accepted_p99_ms": pct(ok_s, 99),
        "shed_rate": len(shed_s) / total if total else 0.0, "shed_p99_ms": pct(shed_s, 99),
        "retry_after": sorted(retry_after), "controller_rss_mb": _controller_rss_mb(),
    }


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _nan(value: float | None) -> float:
    return float("nan") if value is None else value  # not drawn: no such request at that level


def _plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = result["levels"]
    x = [lv["concurrency"] for lv in levels]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(x, [_nan(lv["accepted_p99_ms"]) for lv in levels], "o-", label="accepted p99")
    left.plot(x, [_nan(lv["accepted_p50_ms"]) for lv in levels], "o--", label="accepted p50")
    left.plot(x, [_nan(lv["shed_p99_ms"]) for lv in levels], "s:", label="shed p99")
    left.set(xscale="log", xlabel="concurrent clients", ylabel="ms", title="latency")
    left.legend()
    right.plot(x, [lv["accepted_rps"] for lv in levels], "o-", label="accepted req/s")
    right.plot(x, [lv["shed_rate"] * 100 for lv in levels], "s:", label="shed %")
    right.set(xscale="log", xlabel="concurrent clients",
              title=f"max_in_flight {result['settings']['max_in_flight']}")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)  # its folder: made by write_results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fleet", type=Path, default=Path("models.cpu.yaml"),
                        help="fleet file (default models.cpu.yaml)")
    parser.add_argument("--max-in-flight", type=int, default=8,
                        help="the controller's cascade.max_in_flight for the run (default 8: about the CPU fleet's "
                        "capacity, so the top levels overload it)")
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4, 8, 32],
                        help="concurrent clients per level (default 1,4,8,32: the last is 4x max-in-flight)")
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds per level (default 20)")
    parser.add_argument("--max-tokens", type=int, default=16, help="tokens per answer (default 16)")
    parser.add_argument("--ignore-retry-after", action="store_true",
                        help="shed clients retry after 50 ms instead of the Retry-After they were given")
    parser.add_argument("--json", type=Path, default=None, help="write results here")
    parser.add_argument("--plot", type=Path, default=None, help="draw latency, throughput and shed rate to this PNG")
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
    limits = {"max_in_flight": args.max_in_flight}
    fleet = fleet.model_copy(update={"cascade": fleet.cascade.model_copy(update=limits)})
    for name, spec in TINY_FLEET.items():
        build_tiny_model(args.fleet.resolve().parent / ".cache" / "tiny" / name, spec)
    connect(None, start_local=False, num_cpus=os.cpu_count())
    levels = []
    try:
        with LoggedProgress(console=Console(stderr=True)) as bar:
            task = bar.add_task("fleet start", total=None)
            port = 8000 + os.getpid() % 1000
            deploy(fleet, host="127.0.0.1", port=port, api_keys=[])
            url = f"http://127.0.0.1:{port}"
            wait_ready(url, 900)
            bar.update(task, description="load levels", total=len(args.concurrency), completed=0)
            for c in args.concurrency:
                levels.append(asyncio.run(_level(url, c, args.seconds, args.max_tokens,
                                                 honour_retry_after=not args.ignore_retry_after)))
                bar.advance(task)
    finally:
        serve.shutdown()
        ray.shutdown()

    unloaded = levels[0]["accepted_p99_ms"]
    top = levels[-1]
    result = {
        "levels": levels,
        "unloaded_p99_ms": unloaded,
        "overload_concurrency": top["concurrency"],
        "accepted_p99_ratio": (top["accepted_p99_ms"] / unloaded) if unloaded and top["accepted_p99_ms"] else None,
        "settings": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                     "cpus": os.cpu_count()},
    }
    table = Table(title=f"load on the cascade (max_in_flight {args.max_in_flight}, {args.seconds:g} s per level)")
    for col in ("clients", "requests", "accepted/s", "p50 ms", "p99 ms", "shed %", "shed p99 ms", "other",
                "controller MB"):
        table.add_column(col, justify="right")
    for lv in levels:
        other = json.dumps(lv["other"]) if lv["other"] else ""
        table.add_row(str(lv["concurrency"]), str(lv["requests"]), f"{lv['accepted_rps']:.1f}",
                      _ms(lv["accepted_p50_ms"]), _ms(lv["accepted_p99_ms"]), f"{100 * lv['shed_rate']:.0f}",
                      _ms(lv["shed_p99_ms"]), other, f"{lv['controller_rss_mb']:.0f}")
    Console().print(table)
    ratio = result["accepted_p99_ratio"]
    Console().print(f"accepted p99 at {top['concurrency']} clients: "
                    f"{'n/a' if ratio is None else f'{ratio:.2f}x'} the unloaded p99")
    write_results(result, json_path=args.json, plot_path=args.plot, plot=_plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
