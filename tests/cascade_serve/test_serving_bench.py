"""``cascade_serve.serving_bench`` without a fleet: the arms' requests, the interleaving, the CPU and latency
bookkeeping, the headline ratios and the profile summary. The same code runs on the real fleet, beside
Ray Serve LLM's own ingress, in ``tests/serve/test_serving_e2e.py``."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from cascade_serve import serving_bench as sb

STAGE = {"queue_time_ms": 1.0, "time_to_first_token_ms": 2.0, "generation_time_ms": 7.0, "decision": "accept"}


class _Remote:
    def __init__(self, fn: Any) -> None:
        self.remote = fn


class _Handle:
    """A Serve handle's shape: ``handle.<method>.remote(...)`` returns an awaitable."""

    def __init__(self, log: list[tuple[str, dict[str, Any]]], name: str) -> None:
        async def run(endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
            log.append((name, body))
            if body["model"] == "cascade":
                stages = [dict(STAGE, model=m) for m in body["cascade"].get("models", ["small", "large"])]
                return {"model": stages[-1]["model"], "cascade": {"stages": stages, "total_gpu_ms": 5.0}}
            return {"model": body["model"], "metrics": {"queue_time_ms": 1.0, "time_to_first_token_ms": 2.0,
                                                        "generation_time_ms": 7.0}}

        self.run = _Remote(run)
        self.call = _Remote(run)


class _Response:
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status_code, self._body = status, body

    def json(self) -> dict[str, Any]:
        return self._body


class _Http:
    def __init__(self, log: list[tuple[str, dict[str, Any]]], status: int = 200) -> None:
        self.log, self.status = log, status
        self.handle = _Handle([], "http")

    async def post(self, path: str, json: dict[str, Any]) -> _Response:
        self.log.append((path, json))
        return _Response(self.status, await self.handle.run.remote("chat", json))


class _Cpu:
    """A ``ProcessCpu`` whose roles each use 1 ms of CPU per read, the proxy 2 ms."""

    def __init__(self) -> None:
        self.reads = 0

    def read(self) -> dict[str, float]:
        self.reads += 1
        return {r: self.reads * (0.002 if r == "proxy" else 0.001) for r in sb.ROLES}


SETTINGS = sb.BenchSettings(model="small", second_model="large", default_lambda=0.5, concurrency=(1, 2),
                            requests=6, requests_c1=3, blocks=3, max_tokens=4, base_url="http://x",
                            ray_ingress_prefixes=(("ray_ingress", "/ray"),))


def _arms(status: int = 200) -> tuple[dict[str, sb.Call], list[tuple[str, dict[str, Any]]]]:
    log: list[tuple[str, dict[str, Any]]] = []
    handles = {"replica": _Handle(log, "replica"), "controller": _Handle(log, "controller")}
    return sb.arms(SETTINGS, handles, _Http(log, status)), log


def test_every_arm_sends_the_same_prompt_shaped_for_its_path() -> None:
    calls, log = _arms()
    assert list(calls) == ["direct", "controller", "passthrough", "ray_ingress", "http_passthrough",
                           "http_cascade_1", "http_cascade_2"]
    for fn in calls.values():
        asyncio.run(fn(SETTINGS.body(1)))
    (_, direct), (_, pinned), (_, passthrough), (ray_path, ray), (our_path, ours), (_, one), (_, two) = log
    assert direct == passthrough == ray == ours == SETTINGS.body(1)
    assert direct["ignore_eos"] and direct["max_tokens"] == 4  # every answer is exactly max_tokens long
    assert ray_path == "/ray/v1/chat/completions" and our_path == "/v1/chat/completions"
    assert pinned["cascade"] == one["cascade"] == {"models": ["small"], "lambda": 0.5}
    assert two["cascade"] == {"models": ["small", "large"], "policy": "threshold_cascade", "lambda": 0.0,
                              "max_depth": 2}
    assert {b["messages"][0]["content"] for _, b in log} == {sb.PROMPTS[1]}


def test_a_failed_http_request_stops_the_benchmark_with_its_status() -> None:
    calls, _ = _arms(status=503)
    with pytest.raises(RuntimeError, match="failed with 503"):
        asyncio.run(calls["http_passthrough"](SETTINGS.body(0)))


def test_without_a_second_model_or_http_there_are_fewer_arms() -> None:
    log: list[tuple[str, dict[str, Any]]] = []
    handles = {"replica": _Handle(log, "replica"), "controller": _Handle(log, "controller")}
    assert list(sb.arms(SETTINGS, handles, None)) == list(sb.HANDLE_ARMS)
    one_model = sb.BenchSettings(model="small", base_url="http://x")
    assert "http_cascade_2" not in sb.arms(one_model, handles, _Http(log))


@pytest.mark.parametrize(("field", "value"), [("requests", 0), ("requests_c1", 0), ("blocks", 0),
                                              ("max_tokens", 0), ("concurrency", (1, 0)), ("concurrency", ())])
def test_settings_refuse_what_cannot_be_measured(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=field if field != "concurrency" else "concurrency"):
        sb.BenchSettings(model="m", **{field: value})


def test_unknown_ray_ingress_arms_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown Ray ingress arm"):
        sb.BenchSettings(model="m", ray_ingress_prefixes=(("ray", "/ray"),))


def test_a_level_interleaves_the_arms_in_rotating_order_and_bills_each_its_blocks() -> None:
    calls, _ = _arms()
    order: list[str] = []

    def tracked(arm: str, fn: sb.Call) -> sb.Call:
        async def call(body: dict[str, Any]) -> dict[str, Any]:
            order.append(arm)
            return await fn(body)
        return call

    calls = {a: tracked(a, fn) for a, fn in calls.items()}
    cpu = _Cpu()
    level = asyncio.run(sb.bench_level(calls, SETTINGS, 2, cpu))  # type: ignore[arg-type]
    names = list(calls)
    blocks = [order[i * 2] for i in range(len(order) // 2)]  # 2 requests per block at concurrency 2 (6 / 3)
    assert blocks[: len(names)] == names
    assert blocks[len(names): 2 * len(names)] == names[1:] + names[:1]  # the next block starts one arm later
    for arm in names:
        assert level[arm]["n"] == 6
        assert level["engine_gpu_ms_p50"][arm] == pytest.approx(20.0 if arm == "http_cascade_2" else 10.0)
        # Each block reads the CPU before and after: 1 ms per role (2 ms proxy) over its 2 requests.
        assert level["cpu_ms_per_request"][arm]["replicas"] == pytest.approx(0.5)
    assert level["http_cascade_2_stages"] == 2.0
    path = level["cpu_ms_per_request_path"]
    assert path["direct"] == {"outside_engine": pytest.approx(0.5), "ingress": 0.0}
    assert path["controller"] == {"outside_engine": pytest.approx(1.0), "ingress": pytest.approx(0.5)}
    assert path["ray_ingress"] == {"outside_engine": pytest.approx(2.0), "ingress": pytest.approx(1.5)}
    assert path["http_cascade_1"] == pytest.approx(path["ray_ingress"])


def test_arm_cpu_counts_the_proxy_for_http_arms_and_each_arms_own_ingress() -> None:
    roles = {"proxy": 1.0, "controller": 2.0, "ray_ingress": 3.0, "ray_ingress_env": 4.0, "replicas": 5.0,
             "engines": 100.0, "driver": 50.0}
    assert sb.arm_cpu_ms("ray_ingress", roles) == {"outside_engine": 9.0, "ingress": 4.0}
    assert sb.arm_cpu_ms("ray_ingress_env", roles) == {"outside_engine": 10.0, "ingress": 5.0}
    assert sb.arm_cpu_ms("http_passthrough", roles) == {"outside_engine": 8.0, "ingress": 3.0}
    assert sb.arm_cpu_ms("controller", roles) == {"outside_engine": 7.0, "ingress": 2.0}
    assert sb.arm_cpu_ms("direct", roles) == {"outside_engine": 5.0, "ingress": 0.0}


def test_engine_time_sums_the_answered_stages_of_a_cascade() -> None:
    cascade = {"cascade": {"stages": [STAGE, dict(STAGE, decision="error"), STAGE]}}
    assert sb.engine_ms(cascade) == pytest.approx(20.0)
    assert sb.engine_ms({"metrics": {"queue_time_ms": 1.5, "generation_time_ms": None}}) == pytest.approx(1.5)
    assert sb.engine_ms({}) == 0.0


def test_headline_ratios_are_outside_engine_cpu_over_rays_ingress_at_the_top_level() -> None:
    def level(direct_ms: float, scale: float) -> dict[str, Any]:
        arms = ("direct", "controller", "passthrough")
        return {**{a: {"p50_ms": direct_ms + i, "throughput_rps": 10.0 - i} for i, a in enumerate(arms)},
                "non_engine_ms_p50": {"direct": 1.0, "controller": 1.5},
                "cpu_ms_per_request_path": {
                    "ray_ingress": {"outside_engine": 4.0 * scale, "ingress": 2.0 * scale},
                    "http_passthrough": {"outside_engine": 3.0 * scale, "ingress": 1.0 * scale},
                    "http_cascade_1": {"outside_engine": 5.0 * scale, "ingress": 3.0 * scale},
                    "http_cascade_2": {"outside_engine": 8.0 * scale, "ingress": 4.0 * scale}}}

    head = sb.headline({"1": level(50.0, 9.0), "32": level(80.0, 1.0)})
    assert head["controller_overhead_ms_p50"] == pytest.approx(1.0)
    assert head["throughput_ratio"] == pytest.approx(0.9)
    assert head["cpu_ratio_passthrough_vs_ray_ingress"] == pytest.approx(0.75)
    assert head["cpu_ratio_cascade_vs_ray_ingress"] == pytest.approx(1.25)
    assert head["cpu_ratio_cascade_2_vs_ray_ingress"] == pytest.approx(2.0)
    assert head["cpu_ratio_passthrough_vs_ray_ingress_router_only"] == pytest.approx(0.5)
    plain = {"1": level(50.0, 1.0)}
    del plain["1"]["cpu_ms_per_request_path"]
    assert "cpu_ratio_cascade_vs_ray_ingress" not in sb.headline(plain)  # a run without the HTTP arms


def test_profile_summary_ranks_functions_and_attributes_origins() -> None:
    raw = "\n".join([
        "Thread.run (threading.py:982);CascadeController.complete (serve/controller.py:200) 6",
        "Thread.run (threading.py:982);Router.assign (ray/serve/_private/router.py:1) 3",
        "Worker.main_loop (ray/_private/worker.py:1069) 1",
        " 2",  # native time without a Python frame
        "garbage line",
    ])
    s = sb.summarize_profile(raw)
    assert s["samples"] == 12
    assert s["self"][0] == ("CascadeController.complete (serve/controller.py:200)", pytest.approx(0.5))
    assert dict(s["inclusive"])["Thread.run (threading.py:982)"] == pytest.approx(0.75)
    assert s["self_by_origin"] == {"cascade-serve": pytest.approx(0.5), "ray.serve": pytest.approx(0.25),
                                   "native": pytest.approx(2 / 12), "ray core": pytest.approx(1 / 12)}
    assert s["ours_inclusive"] == pytest.approx(0.5)
    assert sb.summarize_profile("")["samples"] == 0


@pytest.mark.parametrize("text", ["1,0", "1,x", "", "-3"])
def test_concurrency_levels_are_positive_integers(text: str) -> None:
    import argparse

    assert sb.concurrency_levels("1,8,32") == [1, 8, 32]
    with pytest.raises(argparse.ArgumentTypeError, match="positive integers"):
        sb.concurrency_levels(text)


def test_the_profile_samples_the_ingress_each_one_stage_http_arm_goes_through(monkeypatch: pytest.MonkeyPatch,
                                                                              tmp_path: Any) -> None:
    log: list[tuple[str, dict[str, Any]]] = []
    handles = {"replica": _Handle(log, "replica"), "controller": _Handle(log, "controller")}
    real_arms = sb.arms
    # The HTTP arms answer from the fake client instead of the proxy bench() would connect to.
    monkeypatch.setattr(sb, "arms", lambda settings, h, http: real_arms(settings, h, _Http(log)))
    sampled: list[tuple[str, list[int], int, int]] = []

    async def fake_profile(fn: Any, settings: Any, concurrency: int, pids: list[int], out_dir: Any, label: str,
                           requests: int) -> dict[str, Any]:
        sampled.append((label, list(pids), concurrency, requests))
        return {"label": label}

    monkeypatch.setattr(sb, "profile_arm", fake_profile)

    class Cpu(_Cpu):
        def pids(self, role: str) -> list[int]:
            return {"controller": [11], "ray_ingress": [22]}.get(role, [])

    result = asyncio.run(sb.bench(SETTINGS, handles, cpu=Cpu(), profile_dir=tmp_path, profile_requests=5))  # type: ignore[arg-type]
    assert sampled == [("ray_ingress", [22], 2, 5), ("http_passthrough", [11], 2, 5), ("http_cascade_1", [11], 2, 5)]
    assert set(result["profile"]) == {"ray_ingress", "http_passthrough", "http_cascade_1"}
    assert "profile" not in asyncio.run(sb.bench(SETTINGS, handles, cpu=Cpu()))  # type: ignore[arg-type]

