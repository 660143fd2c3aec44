"""Replica readiness and the live cost model's first measurements, taken by probe requests.

A replica is ready once it answered a probe: one warm-up request (discarded: a fresh engine's first
request pays one-off costs, kernel selection and allocation, that no later request pays), then one
measured request whose prefill and decode times are the cost model's first point.

Startup skews that first point: the replicas come up one after another, and a replica measured while
another engine was still loading (weights, KV cache, profiling) shares the machine's cores or memory
bandwidth with it. On a 2-core CPU fleet this inflated the small model's per-token time past the large
one's, so the cost ranking, and with it the cascade's order, came out backwards. So the first
measurements are provisional: once every replica has answered, each model measured before that is
measured again, one model at a time: the first of these replaces the startup measurement, the others
average in. A replica that is probed later (it failed a stage and came back) is measured on the
running fleet already.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from estimators.stage import StageResult
from serve.logs import controller_logger

__all__ = ["PROBE_BODY", "ReplicaProbes"]

logger = controller_logger()

PROBE_BODY = {"prompt": "Measure the prefill and decode time of this replica, token by token.",
              "max_tokens": 16, "ignore_eos": True, "temperature": 0.0, "logprobs": 1}

# (model, endpoint, body) -> the replica's response body.
Call = Callable[[str, str, dict[str, Any]], Awaitable[dict[str, Any]]]
# (stage, replaces_startup_measurement) -> None: feed the cost model.
Measure = Callable[[StageResult, bool], None]


class ReplicaProbes:
    """See the module docstring.

    Parameters
    ----------
    models : list of str
        The fleet's model ids.
    call : async callable
        Sends one request to a model's replica.
    measure : callable
        Receives each measured probe, and whether it replaces the model's startup measurement.
    timeout_s : float
        How long one probe request may take.
    retry_s : float
        Pause between failed probes of a replica that is not up yet.
    settle_probes : int
        Measurements per model once the whole fleet is up.
    sleep : async callable
        ``asyncio.sleep``; tests pass a fake clock's.
    """

    def __init__(
        self,
        models: list[str],
        call: Call,
        measure: Measure,
        *,
        timeout_s: float,
        retry_s: float = 2.0,
        settle_probes: int = 3,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if settle_probes < 1:
            raise ValueError(f"settle_probes must be at least 1, got {settle_probes!r}")
        self.ready: dict[str, bool] = dict.fromkeys(models, False)
        self.settled = False  # every replica answered once, and the startup measurements were redone
        self._complete = False  # every replica answered once
        self._call = call
        self._measure = measure
        self._timeout_s = timeout_s
        self._retry_s = retry_s
        self._n_sent = 0  # probes sent, numbered into their prompts
        self._settle_probes = settle_probes
        self._sleep = sleep
        self._probing: set[str] = set()
        self._stopped = False
        self._provisional: list[str] = []  # measured before the fleet was complete, in that order
        self._tasks: set[asyncio.Task[None]] = set()  # the loop keeps only weak references

    def start(self, model: str) -> None:
        """Probe ``model`` until it answers (no-op while a probe of it runs)."""
        if model not in self._probing and not self._stopped:
            self._probing.add(model)
            self._spawn(self._probe(model))

    def failed(self, model: str) -> None:
        """A stage on ``model`` failed: not ready until a probe answers again."""
        self.ready[model] = False
        self.start(model)

    async def stop(self) -> None:
        """Cancel every probe still running, and start none again (the controller is shutting down)."""
        # The flag as well as the cancellation: asyncio.wait_for of Python 3.11 can swallow a cancel
        # that lands as its call finishes, and a probe that missed it must still end at its next step.
        self._stopped = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def wait(self) -> None:
        """Until every probe started so far, and the settling pass, has finished (for tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks))

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _once(self, model: str) -> StageResult | None:
        """One probe request; None when the replica is not up or answered an error."""
        # A prompt the prefix cache has never seen: a repeated one would be measured as a cache hit,
        # and caching matches from the prompt's start, so the unique part comes first.
        self._n_sent += 1
        body = {**PROBE_BODY, "model": model, "prompt": f"Probe {self._n_sent} of {model}. {PROBE_BODY['prompt']}"}
        try:
            response = await asyncio.wait_for(self._call(model, "completions", body), self._timeout_s)
        except Exception as exc:  # not up yet, or dead
            logger.info("probe of %s failed (%s); retrying", model, type(exc).__name__)
            return None
        if "error" in response:
            logger.warning("probe of %s answered an error: %s", model, response["error"])
            return None
        return StageResult.from_response(model, "completions", response)

    async def _probe(self, model: str) -> None:
        try:
            warmed = False
            while True:
                if self._stopped:
                    return
                stage = await self._once(model)
                if stage is None:
                    await self._sleep(self._retry_s)
                elif not warmed:
                    warmed = True
                else:
                    self._measure(stage, False)
                    break
            if not self._complete:
                self._provisional.append(model)
            self.ready[model] = True
        finally:
            self._probing.discard(model)
        if not self._complete and all(self.ready.values()):
            self._complete = True  # before the first await: a second finisher must not settle again
            self._spawn(self._settle(list(self._provisional)))

    async def _settle(self, models: list[str]) -> None:
        # One model at a time: the point is to measure each replica with nothing else starting.
        for model in models:
            replaced = False
            for _ in range(self._settle_probes):
                if self._stopped:
                    return
                stage = await self._once(model)
                if stage is None:
                    break  # failing now: the stage-failure path re-probes it
                self._measure(stage, not replaced)
                replaced = True
        self.settled = True
        logger.info("cost model settled: %s measured again on the complete fleet", ", ".join(models) or "none")
