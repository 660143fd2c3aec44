"""The serving benchmark's measurement: the same requests sent through several arms over one live fleet,
interleaved in one run, with each arm's latency outside the engine and CPU per request by process.

The arms (:func:`arms`):

- over Serve handles from this driver (no HTTP proxy): ``direct`` (the replica's ``run``), ``controller``
  (the controller's ``call`` with ``model: "cascade"`` pinned to the one model: one cascade stage) and
  ``passthrough`` (the controller's ``call`` naming the model);
- over HTTP through Serve's proxy, as clients see the endpoint: ``ray_ingress`` (Ray Serve LLM's own
  OpenAI ingress in front of the same replicas, ``serve.app.ray_ingress_app``), optionally
  ``ray_ingress_env`` (the same with the controller's process settings), ``http_passthrough``,
  ``http_cascade_1`` (one stage, pinned) and ``http_cascade_2`` (two stages: a threshold cascade that
  never accepts the first answer).

Every answer has exactly ``max_tokens`` tokens (``ignore_eos``), so the engines do the same work in the
arms that call one model. Arms run in blocks, the arms' order rotating from block to block, so none
always goes first; CPU time is read per process between blocks (:class:`ProcessCpu`).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "HANDLE_ARMS", "HTTP_ARMS", "PROMPTS", "ROLES", "BenchSettings", "ProcessCpu", "arm_cpu_ms", "arms",
    "bench", "concurrency_levels", "engine_ms", "headline", "profile_arm", "summarize_profile",
]

PROMPTS = [
    "What is 17 * 23?",
    "Write a Python function that reverses a string.",
    "Name the capital of France.",
    "Explain recursion in one sentence.",
]

HANDLE_ARMS = ("direct", "controller", "passthrough")
HTTP_ARMS = ("ray_ingress", "ray_ingress_env", "http_passthrough", "http_cascade_1", "http_cascade_2")
# Processes on the request path, by role. "replicas" are the model replicas' own processes (Ray Serve
# LLM's server: tokenizing, detokenizing, the OpenAI layer); "engines" their children, vLLM's engine
# cores, whose work is the model's, whichever router sent the request.
ROLES = ("proxy", "controller", "ray_ingress", "ray_ingress_env", "replicas", "engines", "driver")
# The ingress process each arm goes through (None: the driver calls the replica itself).
_INGRESS = {"direct": None, "controller": "controller", "passthrough": "controller",
            "ray_ingress": "ray_ingress", "ray_ingress_env": "ray_ingress_env", "http_passthrough": "controller",
            "http_cascade_1": "controller", "http_cascade_2": "controller"}

Call = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class BenchSettings:
    """What one benchmark run sends."""

    model: str  # the model of the one-model arms
    second_model: str | None = None  # the two-stage arm's second model; None: no two-stage arm
    default_lambda: float = 0.0  # the pinned cascade's lambda
    concurrency: tuple[int, ...] = (1, 8, 32)
    requests: int = 192  # per arm and level above concurrency 1
    requests_c1: int = 60  # per arm at concurrency 1
    blocks: int = 3  # alternating blocks per arm and level
    max_tokens: int = 16
    base_url: str | None = None  # the proxy's; None: handle arms only
    ray_ingress_prefixes: tuple[tuple[str, str], ...] = ()  # (arm, route prefix) of Ray's ingress apps
    api_key: str | None = None  # the fleet's, for the HTTP arms (Ray's ingress ignores it)

    def __post_init__(self) -> None:
        for name in ("requests", "requests_c1", "blocks", "max_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.concurrency or min(self.concurrency) < 1:
            raise ValueError(f"concurrency levels must be >= 1, got {self.concurrency}")
        for arm, _ in self.ray_ingress_prefixes:
            if arm not in ("ray_ingress", "ray_ingress_env"):
                raise ValueError(f"unknown Ray ingress arm {arm!r}")

    def body(self, i: int) -> dict[str, Any]:
        """Request ``i`` of an arm, naming the one model; every arm's i-th request has the same prompt."""
        return {"model": self.model, "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                "max_tokens": self.max_tokens, "ignore_eos": True, "temperature": 0.0}

    def pinned(self, body: dict[str, Any]) -> dict[str, Any]:
        """``body`` as a one-stage cascade: the virtual model, pinned to the one model."""
        return {**body, "model": "cascade", "cascade": {"models": [self.model], "lambda": self.default_lambda}}

    def two_stage(self, body: dict[str, Any]) -> dict[str, Any]:
        """``body`` as a two-stage cascade: a threshold cascade whose threshold no answer reaches (lambda 0 =
        threshold 1), so the first model's answer is always escalated to the second."""
        assert self.second_model is not None
        return {**body, "model": "cascade", "cascade": {"models": [self.model, self.second_model],
                                                         "policy": "threshold_cascade", "lambda": 0.0,
                                                         "max_depth": 2}}


def concurrency_levels(text: str) -> list[int]:
    """``--concurrency``'s argparse type: comma-separated positive integers."""
    import argparse

    try:
        values = [int(x) for x in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return values


def arms(settings: BenchSettings, handles: dict[str, Any], http: Any | None) -> dict[str, Call]:
    """The arms' request functions: ``handles`` holds the replica's (``replica``) and the controller's
    (``controller``) Serve handles; ``http`` an ``httpx.AsyncClient`` on the proxy (None: no HTTP arms)."""
    replica, controller = handles["replica"], handles["controller"]
    out: dict[str, Call] = {
        "direct": lambda b: replica.run.remote("chat", b),
        "controller": lambda b: controller.call.remote("chat", settings.pinned(b)),
        "passthrough": lambda b: controller.call.remote("chat", b),
    }
    if http is None:
        return out

    def post(prefix: str, shape: Callable[[dict[str, Any]], dict[str, Any]] = lambda b: b) -> Call:
        async def call(body: dict[str, Any]) -> dict[str, Any]:
            response = await http.post(f"{prefix}/v1/chat/completions", json=shape(body))
            answer: dict[str, Any] = response.json()
            if response.status_code != 200:
                raise RuntimeError(f"benchmark request failed with {response.status_code}: {answer}")
            return answer
        return call

    for arm, prefix in settings.ray_ingress_prefixes:
        out[arm] = post(prefix.rstrip("/"))
    out["http_passthrough"] = post("")
    out["http_cascade_1"] = post("", settings.pinned)
    if settings.second_model is not None:
        out["http_cascade_2"] = post("", settings.two_stage)
    return out


class ProcessCpu:
    """CPU seconds so far of the processes on the request path, by role (``ROLES``), from their Ray process
    titles. The processes are found once (after the fleet is up), so a read costs microseconds per process."""

    def __init__(self, app_name: str, ray_ingress_apps: dict[str, str] | None = None) -> None:
        import psutil  # type: ignore[import-untyped]

        self._psutil = psutil
        titles = {"controller": f"ServeReplica:{app_name}:CascadeController", "proxy": "ProxyActor",
                  "replicas": f"ServeReplica:{app_name}:model:"}
        for role, app in (ray_ingress_apps or {}).items():
            titles[role] = f"ServeReplica:{app}:"
        self.processes: dict[str, list[Any]] = {role: [] for role in ROLES}
        for proc in psutil.process_iter(["cmdline"]):
            try:
                title = " ".join(proc.info["cmdline"] or [])
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            if proc.pid == os.getpid():
                self.processes["driver"].append(proc)
                continue
            found = next((r for r, t in titles.items() if t in title), None)
            if found is None:
                continue
            self.processes[found].append(proc)
            if found == "replicas":
                self.processes["engines"] += proc.children(recursive=True)

    def pids(self, role: str) -> list[int]:
        return [p.pid for p in self.processes[role]]

    def read(self) -> dict[str, float]:
        totals = dict.fromkeys(ROLES, 0.0)
        for role, procs in self.processes.items():
            for p in procs:
                try:
                    t = p.cpu_times()
                except (self._psutil.NoSuchProcess, self._psutil.AccessDenied):
                    continue
                totals[role] += t.user + t.system
        return totals


def engine_ms(response: dict[str, Any]) -> float:
    """The engine's own time for an answer (vLLM's per-request metrics: queue, prefill and decode), over
    every stage of a cascade answer."""
    cascade = response.get("cascade")
    if isinstance(cascade, dict):
        return float(sum(s.get("queue_time_ms", 0.0) + s.get("time_to_first_token_ms", 0.0)
                         + s.get("generation_time_ms", 0.0)
                         for s in cascade.get("stages", []) if s.get("decision") != "error"))
    m = response.get("metrics") or {}
    return float(sum(m.get(k) or 0.0 for k in ("queue_time_ms", "time_to_first_token_ms", "generation_time_ms")))


def arm_cpu_ms(arm: str, per_role_ms: dict[str, float]) -> dict[str, float]:
    """One arm's CPU ms per request: ``outside_engine`` (the HTTP proxy for HTTP arms, the arm's ingress and
    the model replicas' own processes: everything on the request path but the model's computation and the
    client) and ``ingress`` (the router alone: proxy and ingress)."""
    ingress_role = _INGRESS[arm]
    router = (per_role_ms["proxy"] if arm in HTTP_ARMS else 0.0) + (
        per_role_ms[ingress_role] if ingress_role is not None else 0.0)
    return {"outside_engine": router + per_role_ms["replicas"], "ingress": router}


def _stats(latencies_s: list[float], wall_s: float) -> dict[str, float]:
    ms = np.array(latencies_s) * 1e3
    return {"n": int(ms.shape[0]), "p50_ms": float(np.median(ms)), "p99_ms": float(np.percentile(ms, 99)),
            "mean_ms": float(ms.mean()), "throughput_rps": float(ms.shape[0] / wall_s)}


async def _timed(fn: Call, body: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    t0 = time.perf_counter()
    out = await fn(body)
    elapsed = time.perf_counter() - t0
    if "error" in out:
        raise RuntimeError(f"benchmark request failed: {out['error']}")
    return elapsed, out


async def run_block(fn: Call, bodies: Sequence[dict[str, Any]], concurrency: int) -> tuple[
        list[float], float, list[dict[str, Any]]]:
    """``bodies`` through ``fn`` by ``concurrency`` workers: latencies, wall time, answers."""
    queue = list(reversed(bodies))
    latencies: list[float] = []
    outputs: list[dict[str, Any]] = []

    async def worker() -> None:
        while queue:
            elapsed, out = await _timed(fn, queue.pop())
            latencies.append(elapsed)
            outputs.append(out)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, time.perf_counter() - t0, outputs


async def warm(calls: dict[str, Call], settings: BenchSettings, n: int = 3) -> None:
    """First requests pay imports, allocations and connection setup: keep them out of the numbers."""
    for fn in calls.values():
        for i in range(n):
            await _timed(fn, settings.body(i))


async def bench_level(calls: dict[str, Call], settings: BenchSettings, concurrency: int,
                      cpu: ProcessCpu | None) -> dict[str, Any]:
    """One concurrency level: every arm's blocks, interleaved, the arms' order rotating."""
    n = settings.requests if concurrency > 1 else settings.requests_c1
    names = list(calls)
    used = {a: dict.fromkeys(ROLES, 0.0) for a in names}
    lat: dict[str, list[float]] = {a: [] for a in names}
    wall = dict.fromkeys(names, 0.0)
    outs: dict[str, list[dict[str, Any]]] = {a: [] for a in names}
    per_block = max(n // settings.blocks, 1)
    for block in range(settings.blocks):
        shift = block % len(names)
        for arm in names[shift:] + names[:shift]:
            bodies = [settings.body(block * per_block + i) for i in range(per_block)]
            before = cpu.read() if cpu is not None else None
            latencies, w, o = await run_block(calls[arm], bodies, concurrency)
            if cpu is not None and before is not None:
                after = cpu.read()
                for role in ROLES:
                    used[arm][role] += after[role] - before[role]
            lat[arm] += latencies
            wall[arm] += w
            outs[arm] += o
    level: dict[str, Any] = {arm: _stats(lat[arm], wall[arm]) for arm in names}
    engine = {arm: [engine_ms(o) for o in outs[arm]] for arm in names}
    level["engine_gpu_ms_p50"] = {a: float(np.median(v)) for a, v in engine.items()}
    # Latency outside the engine (queue, prefill and decode removed): the arms' plumbing alone.
    level["non_engine_ms_p50"] = {a: float(np.median(np.array(lat[a]) * 1e3 - np.array(engine[a]))) for a in names}
    if "http_cascade_2" in outs:
        level["http_cascade_2_stages"] = float(np.mean([len(o["cascade"]["stages"]) for o in outs["http_cascade_2"]]))
    if cpu is not None:
        level["cpu_ms_per_request"] = {a: {r: 1e3 * v / len(lat[a]) for r, v in used[a].items()} for a in names}
        level["cpu_ms_per_request_path"] = {a: arm_cpu_ms(a, level["cpu_ms_per_request"][a]) for a in names}
    return level


async def mixed(controller: Any, settings: BenchSettings, concurrency: int = 8) -> dict[str, Any]:
    """The cascade as served: several lambdas through the controller's handle, escalations included."""
    lambdas = [0.0, settings.default_lambda, 1e6]
    bodies = [{"model": "cascade", "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
               "max_tokens": settings.max_tokens, "temperature": 0.0, "cascade": {"lambda": lambdas[i % 3]}}
              for i in range(settings.requests)]
    latencies, w, outs = await run_block(lambda b: controller.call.remote("chat", b), bodies, concurrency)
    stages = [len([s for s in o["cascade"]["stages"] if s["decision"] != "error"]) for o in outs]
    return {**_stats(latencies, w), "concurrency": concurrency, "lambdas": lambdas,
            "mean_stages": float(np.mean(stages)), "escalation_rate": float(np.mean([s > 1 for s in stages])),
            "mean_gpu_ms": float(np.mean([o["cascade"]["total_gpu_ms"] for o in outs])),
            "served_by": {m: int(sum(o["model"] == m for o in outs)) for m in {o["model"] for o in outs}}}


async def bench(settings: BenchSettings, handles: dict[str, Any], *, cpu: ProcessCpu | None = None,
                on_level: Callable[[], None] | None = None, profile_dir: Any = None,
                profile_requests: int = 400) -> dict[str, Any]:
    """Every level's interleaved arms, then the mixed cascade workload: ``{"levels": ..., "mixed": ...}``.

    With ``profile_dir`` (and ``cpu``), each one-stage HTTP arm then runs ``profile_requests`` more at the top
    concurrency while py-spy samples the ingress it goes through (:func:`profile_arm`): ``"profile"``."""
    import httpx

    limits = httpx.Limits(max_connections=max(settings.concurrency) + 8,
                          max_keepalive_connections=max(settings.concurrency) + 8)
    headers = {"Authorization": f"Bearer {settings.api_key}"} if settings.api_key else {}
    client = (httpx.AsyncClient(base_url=settings.base_url, limits=limits, timeout=120.0, headers=headers)
              if settings.base_url is not None else None)
    try:
        calls = arms(settings, handles, client)
        await warm(calls, settings)
        levels: dict[str, Any] = {}
        for c in settings.concurrency:
            levels[str(c)] = await bench_level(calls, settings, c, cpu)
            if on_level is not None:
                on_level()
        result = {"levels": levels, "mixed": await mixed(handles["controller"], settings)}
        if profile_dir is not None and cpu is not None:
            top = max(settings.concurrency)
            profiled = [a for a in ("ray_ingress", "ray_ingress_env", "http_passthrough", "http_cascade_1")
                        if a in calls and cpu.pids(str(_INGRESS[a]))]
            result["profile"] = {a: await profile_arm(calls[a], settings, top, cpu.pids(str(_INGRESS[a])), profile_dir,
                                                      a, profile_requests) for a in profiled}
    finally:
        if client is not None:
            await client.aclose()
    if on_level is not None:
        on_level()
    return result


def headline(levels: dict[str, Any]) -> dict[str, float]:
    """The run's top-level numbers: overheads at the lowest concurrency (per stage: the pinned cascade has
    one), the controller/direct throughput ratio at the highest, and, where the run had the HTTP arms and
    CPU readings, CPU per request outside the engine against Ray Serve LLM's ingress at the highest."""
    c1 = levels[str(min(int(c) for c in levels))]
    top = levels[str(max(int(c) for c in levels))]
    out = {
        "controller_overhead_ms_p50": c1["controller"]["p50_ms"] - c1["direct"]["p50_ms"],
        "passthrough_overhead_ms_p50": c1["passthrough"]["p50_ms"] - c1["direct"]["p50_ms"],
        "controller_non_engine_overhead_ms_p50": (
            c1["non_engine_ms_p50"]["controller"] - c1["non_engine_ms_p50"]["direct"]),
        "throughput_ratio": top["controller"]["throughput_rps"] / top["direct"]["throughput_rps"],
    }
    path = top.get("cpu_ms_per_request_path", {})
    if "ray_ingress" in path:
        anchor = path["ray_ingress"]["outside_engine"]
        out["cpu_ratio_passthrough_vs_ray_ingress"] = path["http_passthrough"]["outside_engine"] / anchor
        out["cpu_ratio_cascade_vs_ray_ingress"] = path["http_cascade_1"]["outside_engine"] / anchor
        if "http_cascade_2" in path:
            out["cpu_ratio_cascade_2_vs_ray_ingress"] = path["http_cascade_2"]["outside_engine"] / anchor
        router = path["ray_ingress"]["ingress"]
        out["cpu_ratio_passthrough_vs_ray_ingress_router_only"] = path["http_passthrough"]["ingress"] / router
        out["cpu_ratio_cascade_vs_ray_ingress_router_only"] = path["http_cascade_1"]["ingress"] / router
    return out


async def profile_arm(fn: Call, settings: BenchSettings, concurrency: int, pids: Sequence[int], out_dir: Any,
                      label: str, requests: int) -> dict[str, Any]:
    """``requests`` of one arm at ``concurrency`` while py-spy samples ``pids`` (without pausing them); the raw
    stacks go to ``out_dir/<label>-<pid>.txt`` and their summary (:func:`summarize_profile`) is returned."""
    import shutil
    import signal
    import subprocess
    from pathlib import Path

    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        raise RuntimeError("py-spy is not installed: pip install py-spy (the dev extra has it)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    procs = {pid: subprocess.Popen([spy, "record", "--pid", str(pid), "--nonblocking", "--rate", "250",
                                    "--format", "raw", "-o", str(out / f"{label}-{pid}.txt")],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for pid in pids}
    await asyncio.sleep(1.0)  # py-spy attaches
    latencies, wall_s, _ = await run_block(fn, [settings.body(i) for i in range(requests)], concurrency)
    summaries = {}
    for pid, proc in procs.items():
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        path = out / f"{label}-{pid}.txt"
        if not path.exists():
            raise RuntimeError(f"py-spy wrote no profile of pid {pid}: {err.decode(errors='replace')[-500:]}")
        summaries[str(pid)] = summarize_profile(path.read_text())
    return {"requests": requests, "concurrency": concurrency, "wall_s": wall_s, "processes": summaries}


# Where a sampled frame's code comes from, by its file path as py-spy prints it (relative to sys.path).
_ORIGINS = (("cascade-serve", ("serve/", "routing/", "estimators/", "cluster/")), ("ray.serve.llm", ("ray/llm/",)),
            ("vllm", ("vllm/",)), ("ray.serve", ("ray/serve/",)), ("ray core", ("ray/",)),
            ("asgi", ("fastapi/", "starlette/", "uvicorn/", "pydantic", "anyio/")))


def _origin(frame: str) -> str:
    path = frame.rpartition(" (")[2].rstrip(")")
    return next((name for name, prefixes in _ORIGINS if path.startswith(prefixes)), "python")


def summarize_profile(raw: str, top: int = 25) -> dict[str, Any]:
    """py-spy's raw (collapsed) stacks as shares of all samples: the functions with the most ``self``
    samples (the sampled frame) and ``inclusive`` ones (anywhere on the stack, once per stack); ``self`` by
    the sampled frame's origin (``_ORIGINS``); and ``ours_inclusive``, the share of samples with
    cascade-serve's own code anywhere on the stack."""
    self_n: dict[str, int] = {}
    incl_n: dict[str, int] = {}
    origin_n: dict[str, int] = {}
    ours = total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [f for f in stack.split(";") if f]
        if not frames:  # native time with no Python frame
            origin_n["native"] = origin_n.get("native", 0) + n
            continue
        self_n[frames[-1]] = self_n.get(frames[-1], 0) + n
        origin = _origin(frames[-1])
        origin_n[origin] = origin_n.get(origin, 0) + n
        for f in set(frames):
            incl_n[f] = incl_n.get(f, 0) + n
        ours += n if any(_origin(f) == "cascade-serve" for f in frames) else 0

    def ranked(counts: dict[str, int], k: int) -> list[tuple[str, float]]:
        return [(f, n / total) for f, n in sorted(counts.items(), key=lambda kv: -kv[1])[:k]] if total else []

    return {"samples": total, "self": ranked(self_n, top), "inclusive": ranked(incl_n, top),
            "self_by_origin": dict(ranked(origin_n, len(origin_n))), "ours_inclusive": ours / total if total else 0.0}
