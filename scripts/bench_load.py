"""Benchmark: the endpoint under rising load past its capacity, or beside an attacker, on the CPU fleet.

    .venv/bin/python -m scripts.bench_load --capacity 3 --json runs/bench_load.json --plot runs/bench_load.png
    .venv/bin/python -m scripts.bench_load --attack-rate 20 --json runs/bench_attack.json --plot runs/bench_attack.png

Brings up the embedded CPU fleet (tiny models, real vLLM engines, Ray Serve) on a private Ray started in
this process, keyed with a fresh API key, then measures over HTTP from this process.

Load levels (the default): the controller's ``cascade.max_in_flight`` is ``--max-in-flight``; cascade
requests come from closed-loop clients at each concurrency of ``--concurrency`` (each sends its next
request when the last one is answered, or once the Retry-After of a shed one has passed, as the OpenAI
SDKs do; ``--ignore-retry-after`` retries after 50 ms), ``--seconds`` per level. ``--capacity N`` says
what the fleet's capacity is (find it first: the largest concurrency whose accepted p99 stays within
about twice the one-client p99, with nothing shed) and runs ``max_in_flight`` N at 1, N and 4N clients.
Per level: accepted throughput, the accepted requests' p50/p99 latency, the shed rate (503
``overloaded``) and how fast a shed request is answered, any other status, the controller's resident
memory after the level, and the cores other programs kept busy meanwhile (on a shared machine). JSON:
top-level ``unloaded_p99_ms`` (concurrency 1), ``overload_concurrency`` (the highest level),
``accepted_p99_ratio`` (its accepted p99 over the unloaded p99), and ``levels``.

Attack (``--attack-rate R``): the controller keeps the fleet file's ``max_in_flight`` unless
``--max-in-flight`` is given. A victim (one closed-loop client, valid cascade requests) runs alone for
``--seconds``, then again while an attacker with the same API key sends ``R`` invalid requests a second,
open loop (each at its time, whether or not the last was answered), cycling through ``HOSTILE`` on every
model of the fleet and on ``cascade``. ``/health`` is polled every 0.25 s in both phases. JSON ``attack``:
the victim's success rate and p50/p99 in each phase, the attacker's statuses (all must be 4xx) per
input, every non-4xx answer, and whether every model stayed ready throughout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import time
from collections import Counter
from itertools import cycle
from pathlib import Path
from typing import Any

import numpy as np

CHAT = [{"role": "user", "content": "What is 17 * 23?"}]
CHAT_PATH, COMPLETIONS_PATH = "/v1/chat/completions", "/v1/completions"
DEFAULT_MAX_IN_FLIGHT = 8  # about the CPU fleet's engine batch: the top default level overloads it
DEFAULT_CONCURRENCY = [1, 4, 8, 32]
HEALTH_PERIOD_S = 0.25


def _chat(extra: bytes = b"", *, content: bytes = b"hi", max_tokens: bytes = b"4") -> bytes:
    return (b'{"model": "@MODEL@", "messages": [{"role": "user", "content": "' + content + b'"}], "max_tokens": '
            + max_tokens + extra + b"}")


def _completion(extra: bytes = b"", *, prompt: bytes = b"hi", max_tokens: bytes = b"4") -> bytes:
    return b'{"model": "@MODEL@", "prompt": "' + prompt + b'", "max_tokens": ' + max_tokens + extra + b"}"


# Invalid requests, one client's mistake or malice (reliability issue): vLLM, its chat template or the
# tokenizer used to raise on several, which took the replica out of the cascade for every client. Each
# must be a 4xx for its sender alone. Raw bytes, because a lone surrogate and NaN do not survive
# json.dumps; "@MODEL@" becomes each model of the fleet and "cascade" in turn.
HOSTILE: dict[str, tuple[str, bytes]] = {
    "tool_choice 5": (CHAT_PATH, _chat(b', "tool_choice": 5')),
    "tool_choice 5, tools given": (CHAT_PATH, _chat(b', "tool_choice": 5, "tools": [{"type": "function", '
                                                    b'"function": {"name": "f", "parameters": {"type": "object"}}}]')),
    "tool_choice without tools": (CHAT_PATH, _chat(b', "tool_choice": "required"')),
    "lone surrogate": (CHAT_PATH, _chat(content=b"\\ud800x")),
    "top_logprobs without logprobs": (CHAT_PATH, _chat(b', "top_logprobs": 2')),
    "stream_options without stream": (CHAT_PATH, _chat(b', "stream_options": {"include_usage": true}')),
    "max_tokens NaN": (CHAT_PATH, _chat(max_tokens=b"NaN")),
    "max_tokens -1": (CHAT_PATH, _chat(max_tokens=b"-1")),
    'max_tokens "abc"': (CHAT_PATH, _chat(max_tokens=b'"abc"')),
    "unknown field": (CHAT_PATH, _chat(b', "frobnicate": true')),
    "nested 5000 deep": (CHAT_PATH, _chat(b', "user": ' + b"[" * 5000 + b"]" * 5000)),
    "completions: lone surrogate": (COMPLETIONS_PATH, _completion(prompt=b"\\ud800x")),
    "completions: max_tokens NaN": (COMPLETIONS_PATH, _completion(max_tokens=b"NaN")),
    "completions: stream_options without stream": (COMPLETIONS_PATH,
                                                   _completion(b', "stream_options": {"include_usage": true}')),
    "completions: unknown field": (COMPLETIONS_PATH, _completion(b', "frobnicate": true')),
    "completions: a stream with no prompt": (COMPLETIONS_PATH,
                                             b'{"model": "@MODEL@", "stream": true, "prompt": null, "n": 2}'),
}


def _controller_rss_mb() -> float:
    import psutil  # type: ignore[import-untyped]

    rss = [p.memory_info().rss for p in psutil.process_iter(["cmdline"])
           if "CascadeController" in " ".join(p.info["cmdline"] or [])]
    return float(sum(rss) / 2**20)


def _cpu_s() -> tuple[float, float]:
    """CPU seconds so far: the whole machine's busy time, and this process's and its descendants' (the Ray
    it started: engines, controller, proxy). The difference is what other programs took from the run."""
    import psutil

    t = psutil.cpu_times()
    busy = t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)
    mine = 0.0
    me = psutil.Process()
    for proc in [me, *me.children(recursive=True)]:
        try:
            times = proc.cpu_times()
        except psutil.Error:  # ended since it was listed
            continue
        mine += times.user + times.system
    return busy, mine


def _pct(values_s: list[float], q: float) -> float | None:
    return float(np.percentile(np.array(values_s) * 1e3, q)) if values_s else None


async def _level(url: str, concurrency: int, seconds: float, max_tokens: int, *,
                 honour_retry_after: bool = True, api_key: str | None = None) -> dict[str, Any]:
    """``concurrency`` closed-loop clients for ``seconds``: what each answer was and how long it took."""
    import httpx

    body = {"model": "cascade", "messages": CHAT, "max_tokens": max_tokens, "temperature": 0.0}
    ok_s: list[float] = []
    shed_s: list[float] = []
    other: dict[str, int] = {}
    retry_after: set[str] = set()
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency + 8)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits, headers=headers) as client:

        async def worker() -> None:
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                try:
                    r = await client.post(CHAT_PATH, json=body)
                except httpx.HTTPError as exc:  # a failure of this request, counted as such
                    other[type(exc).__name__] = other.get(type(exc).__name__, 0) + 1
                    continue
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

        t0, (busy0, mine0) = time.perf_counter(), _cpu_s()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall_s, (busy1, mine1) = time.perf_counter() - t0, _cpu_s()
    total = len(ok_s) + len(shed_s) + sum(other.values())
    return {
        "concurrency": concurrency, "requests": total, "accepted": len(ok_s), "shed": len(shed_s), "other": other,
        "accepted_rps": len(ok_s) / wall_s, "accepted_p50_ms": _pct(ok_s, 50), "accepted_p99_ms": _pct(ok_s, 99),
        "shed_rate": len(shed_s) / total if total else 0.0, "shed_p99_ms": _pct(shed_s, 99),
        "retry_after": sorted(retry_after), "controller_rss_mb": _controller_rss_mb(),
        # Cores other programs kept busy meanwhile (on a shared machine, the run's latencies include them).
        "other_load_cores": max(0.0, (busy1 - busy0) - (mine1 - mine0)) / wall_s,
    }


async def _attacker(url: str, api_key: str, targets: list[str], rate_per_s: float, seconds: float) -> dict[str, Any]:
    """``HOSTILE`` x ``targets`` in turn, one request every ``1 / rate_per_s`` s for ``seconds`` (open loop)."""
    import httpx

    statuses: Counter[str] = Counter()
    by_input: dict[str, Counter[str]] = {name: Counter() for name in HOSTILE}
    not_4xx: list[dict[str, Any]] = []
    said: dict[str, str] = {}  # per input, the first error message: what it was refused for
    latencies_s: list[float] = []
    headers = {"Authorization": f"Bearer {api_key}", "content-type": "application/json"}
    plan = cycle([(name, target, path, raw.replace(b"@MODEL@", target.encode()))
                  for name, (path, raw) in HOSTILE.items() for target in targets])
    async with httpx.AsyncClient(base_url=url, timeout=60, headers=headers,
                                 limits=httpx.Limits(max_connections=64)) as client:

        async def send(name: str, target: str, path: str, raw: bytes) -> None:
            t0 = time.perf_counter()
            try:
                r = await client.post(path, content=raw)
                status, text, retry = str(r.status_code), r.text[:300], r.headers.get("retry-after")
            except httpx.HTTPError as exc:
                r, status, text, retry = None, type(exc).__name__, str(exc)[:300], None
            latencies_s.append(time.perf_counter() - t0)
            statuses[status] += 1
            by_input[name][status] += 1
            if name not in said and r is not None:
                said[name] = _error_message(r)
            if not (status.isdigit() and 400 <= int(status) < 500):
                not_4xx.append({"input": name, "model": target, "status": status, "retry_after": retry, "body": text})

        start = time.perf_counter()
        sent: list[asyncio.Task[None]] = []
        for name, target, path, raw in plan:
            at = start + len(sent) / rate_per_s
            if at >= start + seconds:
                break
            await asyncio.sleep(max(0.0, at - time.perf_counter()))
            sent.append(asyncio.create_task(send(name, target, path, raw)))
        send_s = time.perf_counter() - start
        await asyncio.gather(*sent)
    return {"sent": len(sent), "sent_per_s": len(sent) / send_s, "statuses": dict(statuses),
            "by_input": {name: dict(c) for name, c in by_input.items()}, "messages": said, "all_4xx": not not_4xx,
            "not_4xx": not_4xx, "p50_ms": _pct(latencies_s, 50), "p99_ms": _pct(latencies_s, 99)}


def _error_message(r: Any) -> str:
    try:
        return str(r.json()["error"]["message"])[:200]
    except (ValueError, KeyError, TypeError):
        return str(r.text[:200])


async def _watch_health(url: str, stop: asyncio.Event) -> dict[str, Any]:
    """``GET /health`` every ``HEALTH_PERIOD_S`` until ``stop``: each poll where a model was not ready."""
    import httpx

    polls = 0
    lapses: list[dict[str, Any]] = []
    start = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        while not stop.is_set():
            try:
                r = await client.get("/health")
                code, models = r.status_code, r.json().get("models") or {}
            except (httpx.HTTPError, ValueError) as exc:
                code, models = 0, {"error": type(exc).__name__}
            polls += 1
            if code != 200 or not models or set(models.values()) != {"ready"}:
                lapses.append({"at_s": round(time.perf_counter() - start, 2), "status": code, "models": models})
            try:
                await asyncio.wait_for(stop.wait(), HEALTH_PERIOD_S)
            except TimeoutError:
                pass
    return {"polls": polls, "always_ready": not lapses, "not_ready_polls": len(lapses), "lapses": lapses[:20]}


async def attack_phase(url: str, *, api_key: str, rate_per_s: float, seconds: float,
                       max_tokens: int = 16) -> dict[str, Any]:
    """A victim (one closed-loop client of ``cascade``) for ``seconds``, beside an attacker with the same key
    sending ``HOSTILE`` at ``rate_per_s`` (none when 0), while ``/health`` is polled.

    Returns ``victim`` (as a load level, concurrency 1, plus ``success_rate``), ``attacker`` (None without
    one) and ``health``.
    """
    import httpx

    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        targets = [*(await client.get("/health")).json()["models"], "cascade"]
    stop = asyncio.Event()
    health = asyncio.create_task(_watch_health(url, stop))
    attacker = (asyncio.create_task(_attacker(url, api_key, targets, rate_per_s, seconds))
                if rate_per_s > 0 else None)
    victim = await _level(url, 1, seconds, max_tokens, api_key=api_key)
    attack = await attacker if attacker is not None else None
    stop.set()
    victim["success_rate"] = victim["accepted"] / victim["requests"] if victim["requests"] else 0.0
    return {"victim": victim, "attacker": attack, "health": await health}


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _nan(value: float | None) -> float:
    return float("nan") if value is None else value  # not drawn: no such request at that level


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def _plot_levels(result: dict[str, Any], path: Path) -> None:
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


def _plot_attack(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    attack = result["attack"]
    phases = {"alone": attack["alone"]["victim"], "attacked": attack["attacked"]["victim"]}
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    x = np.arange(len(phases))
    left.bar(x - 0.2, [_nan(v["accepted_p50_ms"]) for v in phases.values()], 0.4, label="p50")
    left.bar(x + 0.2, [_nan(v["accepted_p99_ms"]) for v in phases.values()], 0.4, label="p99")
    left.set(xticks=x, xticklabels=[f"{k}\n{100 * v['success_rate']:.0f} % ok" for k, v in phases.items()],
             ylabel="ms", title="victim (1 client, cascade)")
    left.legend()
    statuses = attack["attacked"]["attacker"]["statuses"]
    right.bar(range(len(statuses)), list(statuses.values()))
    right.set(xticks=range(len(statuses)), xticklabels=list(statuses), xlabel="status", ylabel="requests",
              title=f"attacker, {attack['rate_per_s']:g}/s, same key")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _report_levels(levels: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    from rich.console import Console
    from rich.table import Table

    unloaded = levels[0]["accepted_p99_ms"]
    top = levels[-1]
    result = {"levels": levels, "unloaded_p99_ms": unloaded, "overload_concurrency": top["concurrency"],
              "accepted_p99_ratio": _ratio(top["accepted_p99_ms"], unloaded)}
    table = Table(title=f"load on the cascade (max_in_flight {args.max_in_flight}, {args.seconds:g} s per level)")
    for col in ("clients", "requests", "accepted/s", "p50 ms", "p99 ms", "shed %", "shed p99 ms", "other",
                "controller MB", "others' cores"):
        table.add_column(col, justify="right")
    for lv in levels:
        other = json.dumps(lv["other"]) if lv["other"] else ""
        table.add_row(str(lv["concurrency"]), str(lv["requests"]), f"{lv['accepted_rps']:.1f}",
                      _ms(lv["accepted_p50_ms"]), _ms(lv["accepted_p99_ms"]), f"{100 * lv['shed_rate']:.0f}",
                      _ms(lv["shed_p99_ms"]), other, f"{lv['controller_rss_mb']:.0f}",
                      f"{lv['other_load_cores']:.2f}")
    Console().print(table)
    ratio = result["accepted_p99_ratio"]
    Console().print(f"accepted p99 at {top['concurrency']} clients: "
                    f"{'n/a' if ratio is None else f'{ratio:.2f}x'} the unloaded p99")
    return result


def _report_attack(alone: dict[str, Any], attacked: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    from rich.console import Console
    from rich.table import Table

    attacker = attacked["attacker"]
    result = {"attack": {
        "rate_per_s": args.attack_rate, "seconds": args.seconds, "alone": alone, "attacked": attacked,
        "victim_success_rate": attacked["victim"]["success_rate"],
        "victim_p99_ratio": _ratio(attacked["victim"]["accepted_p99_ms"], alone["victim"]["accepted_p99_ms"]),
        "attacker_all_4xx": attacker["all_4xx"],
        "always_ready": alone["health"]["always_ready"] and attacked["health"]["always_ready"],
    }}
    table = Table(title=f"victim: 1 client of cascade, {args.seconds:g} s per phase")
    for col in ("phase", "requests", "success %", "p50 ms", "p99 ms", "other", "/health polls", "not ready",
                "others' cores"):
        table.add_column(col, justify="right")
    for phase, run in (("alone", alone), (f"attacker {args.attack_rate:g}/s", attacked)):
        v, h = run["victim"], run["health"]
        table.add_row(phase, str(v["requests"]), f"{100 * v['success_rate']:.1f}", _ms(v["accepted_p50_ms"]),
                      _ms(v["accepted_p99_ms"]), json.dumps(v["other"]) if v["other"] else "", str(h["polls"]),
                      str(h["not_ready_polls"]), f"{v['other_load_cores']:.2f}")
    Console().print(table)
    table = Table(title=f"attacker: {attacker['sent']} invalid requests at {attacker['sent_per_s']:.1f}/s, "
                        f"same key, p99 {_ms(attacker['p99_ms'])} ms")
    table.add_column("input")
    table.add_column("statuses (every model and cascade)", justify="right")
    for name, counts in [*attacker["by_input"].items(), ("all", attacker["statuses"])]:
        table.add_row(name, ", ".join(f"{s}: {n}" for s, n in sorted(counts.items())))
    Console().print(table)
    for bad in attacker["not_4xx"][:10]:
        Console().print(f"[red]not a 4xx[/red]: {bad}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # The fleet
    parser.add_argument("--fleet", type=Path, default=Path("models.cpu.yaml"),
                        help="fleet file (default models.cpu.yaml)")
    parser.add_argument("--max-in-flight", type=int, default=None,
                        help=f"the controller's cascade.max_in_flight for the run (default {DEFAULT_MAX_IN_FLIGHT} "
                        "for load levels, the fleet file's with --attack-rate)")
    # Load levels
    parser.add_argument("--capacity", type=int, default=None,
                        help="the fleet's measured capacity in concurrent requests: max_in_flight is set to it and "
                        "the levels are 1, capacity and 4x capacity clients")
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=None,
                        help="concurrent clients per level (default 1,4,8,32: the last is 4x the default "
                        "max-in-flight)")
    parser.add_argument("--ignore-retry-after", action="store_true",
                        help="shed clients retry after 50 ms instead of the Retry-After they were given")
    # Attack
    parser.add_argument("--attack-rate", type=float, default=0.0,
                        help="invalid requests per second from an attacker with the victim's key: measure the "
                        "victim alone, then beside it (no load levels)")
    # Both
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds per level or phase (default 20)")
    parser.add_argument("--max-tokens", type=int, default=16, help="tokens per answer (default 16)")
    parser.add_argument("--json", type=Path, default=None, help="write results here")
    parser.add_argument("--plot", type=Path, default=None, help="draw the results to this PNG")
    args = parser.parse_args(argv)
    attack = args.attack_rate > 0
    if args.capacity is not None:
        if args.max_in_flight is not None or args.concurrency is not None or attack:
            parser.error("--capacity sets --max-in-flight and --concurrency; give neither, nor --attack-rate")
        args.max_in_flight, args.concurrency = args.capacity, sorted({1, args.capacity, 4 * args.capacity})
    if attack and args.concurrency is not None:
        parser.error("--attack-rate runs no load levels: --concurrency does not apply")
    if not attack:
        args.max_in_flight = args.max_in_flight or DEFAULT_MAX_IN_FLIGHT
        args.concurrency = args.concurrency or DEFAULT_CONCURRENCY

    import ray
    from ray import serve
    from rich.console import Console

    from cascade_serve.progress import LoggedProgress
    from cascade_serve.report import write_results
    from cluster.config import FleetConfig
    from serve.deploy import ENGINE_ENV, deploy, init_single_machine, wait_ready
    from toymodels.tiny import TINY_FLEET, build_tiny_model

    fleet = FleetConfig.from_file(args.fleet)
    if args.max_in_flight is not None:
        limits = {"max_in_flight": args.max_in_flight}
        fleet = fleet.model_copy(update={"cascade": fleet.cascade.model_copy(update=limits)})
    args.max_in_flight = fleet.cascade.max_in_flight  # as run, for the record
    for name, spec in TINY_FLEET.items():
        build_tiny_model(args.fleet.resolve().parent / ".cache" / "tiny" / name, spec)
    api_key = secrets.token_urlsafe(16)  # the victim's and the attacker's; never written out
    for key, value in ENGINE_ENV.items():
        os.environ.setdefault(key, value)
    # A private Ray, even where one already runs (a developer's fleet, another session's tests): the run
    # must neither deploy onto it nor shut its Serve down afterwards.
    init_single_machine(address="local", num_cpus=os.cpu_count(), include_dashboard=False, logging_level="warning",
                        log_to_driver=False)
    levels: list[dict[str, Any]] = []
    phases: list[dict[str, Any]] = []
    try:
        with LoggedProgress(console=Console(stderr=True)) as bar:
            task = bar.add_task("fleet start", total=None)
            port = 8000 + os.getpid() % 1000
            deploy(fleet, host="127.0.0.1", port=port, api_keys=[api_key])
            url = f"http://127.0.0.1:{port}"
            wait_ready(url, 900)
            if attack:
                bar.update(task, description="victim alone, then attacked", total=2, completed=0)
                for rate in (0.0, args.attack_rate):
                    phases.append(asyncio.run(attack_phase(url, api_key=api_key, rate_per_s=rate,
                                                           seconds=args.seconds, max_tokens=args.max_tokens)))
                    bar.advance(task)
            else:
                bar.update(task, description="load levels", total=len(args.concurrency), completed=0)
                for c in args.concurrency:
                    levels.append(asyncio.run(_level(url, c, args.seconds, args.max_tokens, api_key=api_key,
                                                     honour_retry_after=not args.ignore_retry_after)))
                    bar.advance(task)
    finally:
        serve.shutdown()
        ray.shutdown()

    result = _report_attack(phases[0], phases[1], args) if attack else _report_levels(levels, args)
    result["settings"] = {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                          "cpus": os.cpu_count()}
    write_results(result, json_path=args.json, plot_path=args.plot, plot=_plot_attack if attack else _plot_levels)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
