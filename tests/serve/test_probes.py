"""Replica probes with injected replica calls (fakes: replicas that come up late, fail, and run slow
while another engine starts; none of that can be arranged on demand on the real stack).

Real-stack counterpart: ``test_serving_e2e.py`` waits for ``/health`` to say ``cost_model: settled``
and checks the cascade runs models in the order of the costs the settled measurements give.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from estimators.stage import QueryInfo, StageResult
from estimators.token_cost import TokenCostModel
from serve.probes import PROBE_BODY, ReplicaProbes

# Decode seconds per token on a quiet machine; the small model is 4x cheaper.
DECODE_S = {"small": 0.01, "large": 0.04}


class SlowStartFleet:
    """``large`` is up only after its ``down_calls`` first calls; while it is down its engine loads
    and every ``small`` call takes ``contention`` times longer. Records the calls in flight at once
    once ``probes`` (set by the test) has every model ready."""

    def __init__(self, down_calls: int = 3, contention: float = 6.0) -> None:
        self.down_calls = down_calls
        self.contention = contention
        self.calls: list[str] = []
        self.probes: ReplicaProbes | None = None
        self.in_flight = 0
        self.peak_in_flight_all_ready = 0

    async def __call__(self, model: str, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        assert endpoint == "completions" and body["max_tokens"] == PROBE_BODY["max_tokens"]
        self.calls.append(model)
        large_up = self.calls.count("large") > self.down_calls
        if model == "large" and not large_up:
            raise RuntimeError("replica not up")
        self.in_flight += 1
        if self.probes is not None and all(self.probes.ready.values()):
            self.peak_in_flight_all_ready = max(self.peak_in_flight_all_ready, self.in_flight)
        try:
            await asyncio.sleep(0)  # let the other probes interleave
            slow = self.contention if model == "small" and not large_up else 1.0
            n = int(body["max_tokens"])
            decode_ms = DECODE_S[model] * slow * (n - 1) * 1e3
            return {"choices": [{"text": "x"}], "usage": {"prompt_tokens": 12, "completion_tokens": n},
                    "metrics": {"queue_time_ms": 0.0, "time_to_first_token_ms": decode_ms / n,
                                "generation_time_ms": decode_ms}}
        finally:
            self.in_flight -= 1


async def _no_sleep(_: float) -> None:
    await asyncio.sleep(0)


def _query() -> QueryInfo:
    return QueryInfo(text="What is 2 + 2?", prompt_tokens=8, max_tokens=8)


def _probe_fleet(fleet: SlowStartFleet, *, settle_probes: int = 3, forget: bool = True
                 ) -> tuple[ReplicaProbes, TokenCostModel, list[tuple[str, bool]]]:
    """Start both probes, wait for them and the settling pass; the cost model the controller keeps."""
    cost = TokenCostModel()
    measured: list[tuple[str, bool]] = []

    def measure(stage: StageResult, replaces: bool) -> None:
        measured.append((stage.model, replaces))
        if replaces and forget:
            cost.forget(stage.model)
        cost.observe(_query(), stage)

    async def main() -> ReplicaProbes:
        probes = ReplicaProbes(["small", "large"], fleet, measure, timeout_s=5.0, retry_s=1.0,
                               settle_probes=settle_probes, sleep=_no_sleep)
        fleet.probes = probes
        for model in probes.ready:
            probes.start(model)
        await probes.wait()
        return probes

    return asyncio.run(main()), cost, measured


def test_first_answer_warms_up_and_the_second_is_measured() -> None:
    fleet = SlowStartFleet(down_calls=0, contention=1.0)
    probes, _, measured = _probe_fleet(fleet, settle_probes=1)
    # Per model: warm-up, startup measurement, one settling measurement.
    assert fleet.calls.count("small") == fleet.calls.count("large") == 3
    assert measured.count(("small", False)) == measured.count(("large", False)) == 1
    assert probes.ready == {"small": True, "large": True} and probes.settled


def test_a_replica_that_is_not_up_is_retried_until_it_answers() -> None:
    fleet = SlowStartFleet(down_calls=4)
    probes, cost, _ = _probe_fleet(fleet)
    assert fleet.calls.count("large") == 4 + 2 + 3  # down, warm-up + measured, settling
    assert probes.ready["large"] and cost.knows("large")


def test_startup_measurements_are_redone_one_model_at_a_time_once_the_fleet_is_up() -> None:
    fleet = SlowStartFleet()
    probes, cost, measured = _probe_fleet(fleet)
    assert probes.settled
    settle = measured[2:]
    assert [m for m, _ in settle] == ["small"] * 3 + ["large"] * 3  # in the order they were first measured
    assert [r for _, r in settle] == [True, False, False] * 2  # the first one replaces, the rest average
    assert fleet.peak_in_flight_all_ready == 1
    prices = cost.predict(_query(), ["small", "large"], {})
    assert prices[0] < prices[1]
    assert cost.rates["small"].decode_s_per_token == pytest.approx(DECODE_S["small"])


def test_without_the_reset_the_startup_skew_ranks_the_small_model_dearer() -> None:
    """The failure the settling pass fixes (CI, 2 cores: the cascade ran tiny-large first)."""
    fleet = SlowStartFleet()
    _, cost, _ = _probe_fleet(fleet, forget=False, settle_probes=1)
    prices = cost.predict(_query(), ["small", "large"], {})
    assert prices[0] > prices[1]


def test_a_replica_probed_again_after_a_failure_is_not_settled_twice() -> None:
    fleet = SlowStartFleet(down_calls=0, contention=1.0)
    probes, _, measured = _probe_fleet(fleet, settle_probes=1)
    n_before = len(measured)

    async def fail_and_wait() -> None:
        probes.failed("small")
        assert not probes.ready["small"]
        await probes.wait()

    asyncio.run(fail_and_wait())
    assert probes.ready["small"]
    assert measured[n_before:] == [("small", False)]  # warm-up, then one measurement; no settling pass


def test_settle_probes_must_be_positive() -> None:
    async def noop(model: str, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        return {}

    with pytest.raises(ValueError, match="settle_probes must be at least 1, got 0"):
        ReplicaProbes(["m"], noop, lambda stage, replaces: None, timeout_s=1.0, settle_probes=0)
