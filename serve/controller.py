"""The controller: the fleet's one OpenAI-compatible endpoint, as a plain class.

It holds a handle per model replica, the typed ``cascade`` settings and the live estimators, all
given to its constructor (``serve.app`` builds them from the fleet file; tests pass fakes), and takes
and returns plain data: a request's raw body and headers in, a :class:`Reply` out (a JSON body, SSE
lines or Prometheus text, with status and headers). The routes that call it live in
``serve.ingress``, which also makes it a Ray Serve deployment; ``call`` is the API for Serve handles.

A request naming a served model is forwarded to its replica as is (streaming passes through); a
request for the virtual model ``cascade`` runs ``serve.cascade_run``, and a streamed cascade answer is
replayed as SSE once accepted (``serve.sse``). API keys (``Authorization: Bearer``) guard ``/v1/*``
when configured. Every failure is answered through ``serve.errors.to_api_error``.

Readiness (``serve.probes``), from :meth:`CascadeController.start` on: probe requests measure each
replica's per-token prefill and decode time (the cost model's first point), and measure again once the
whole fleet is up; the cascade only uses replicas that answered a probe, and a replica whose stage
fails is probed again before it is used again. Direct calls are always attempted (Serve queues them
until the replica is up) and time out with 503 + Retry-After.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from cluster.config import CascadeSettings
from estimators.stage import CostEstimator, QualityEstimator, QueryInfo, StageResult
from serve.cascade_run import POLICIES, CascadeKnobs, CascadeOutcome, parse_knobs, run_cascade
from serve.errors import ApiError, to_api_error
from serve.logs import controller_logger
from serve.metrics import PROMETHEUS_TEXT, ControllerMetrics
from serve.probes import PROBE_BODY, ReplicaProbes
from serve.sse import replay_answer, sse

__all__ = ["VIRTUAL_MODEL", "CascadeController", "ControllerSettings", "Endpoint", "Reply"]

logger = controller_logger()

VIRTUAL_MODEL = "cascade"
PROBE_RETRY_S = 2.0
WATCH_PERIOD_S = 1.0  # how often the controller checks that every ready model still has a replica
SHED_RETRY_AFTER_S = 1  # a shed request may come back soon: capacity frees as requests finish
_DEADLINE_GRACE_S = 1.0  # past the request timeout, what the inner deadlines had to answer

Endpoint = Literal["chat", "completions"]
# A completion's answer: the JSON body, or the SSE lines of a stream; and the response headers.
_Answer = tuple[dict[str, Any] | AsyncIterator[str], dict[str, str]]


@dataclass(frozen=True, slots=True)
class ControllerSettings:
    """The fleet file's ``cascade`` block as the controller runs it; validated on construction."""

    policy: str  # an API policy name (routing.API_POLICY_NAMES)
    lambda_: float  # quality per GPU-second (threshold_cascade: 1 - the quality threshold)
    max_depth: int  # at most this many models per query
    stage_timeout_s: float  # per replica call
    # Completions served at once; more are shed with 503 + Retry-After. Default: the fleet file's.
    max_in_flight: int = CascadeSettings.model_fields["max_in_flight"].default
    # One request from arrival to its last byte, every stage and a stream included. Default: the fleet file's.
    request_timeout_s: float = CascadeSettings.model_fields["request_timeout_s"].default

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {self.policy!r}")
        lam = self.lambda_
        if isinstance(lam, bool) or not isinstance(lam, int | float) or not math.isfinite(lam) or lam < 0:
            raise ValueError(f"lambda_ must be a finite number >= 0, got {lam!r}")
        if self.policy == "threshold_cascade" and lam > 1:
            raise ValueError(f"lambda_ of threshold_cascade is 1 - the quality threshold, in [0, 1]; got {lam!r}")
        if isinstance(self.max_depth, bool) or not isinstance(self.max_depth, int) or self.max_depth < 1:
            raise ValueError(f"max_depth must be an int >= 1, got {self.max_depth!r}")
        timeout = self.stage_timeout_s
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout < math.inf:
            raise ValueError(f"stage_timeout_s must be a positive number, got {timeout!r}")
        if isinstance(self.max_in_flight, bool) or not isinstance(self.max_in_flight, int) or self.max_in_flight < 1:
            raise ValueError(f"max_in_flight must be an int >= 1, got {self.max_in_flight!r}")
        timeout = self.request_timeout_s
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout < math.inf:
            raise ValueError(f"request_timeout_s must be a positive number, got {timeout!r}")


@dataclass(frozen=True, slots=True)
class Reply:
    """One answer as plain data: a JSON body, text (``media_type`` says which), or SSE lines."""

    body: dict[str, Any] | str | AsyncIterator[str]
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    media_type: str | None = None  # for a text body


class CascadeController:
    """See the module docstring.

    Parameters
    ----------
    replicas : mapping of str to handle
        Model id -> handle of its replica (a Serve ``DeploymentHandle`` of ``CascadeLLMServer``, or a
        fake with the same ``run``/``stream`` methods), in the fleet file's order.
    settings : ControllerSettings
        The default knobs of the virtual model ``cascade`` and the stage timeout.
    quality, cost : live estimators
        ``estimators.stage.QualityEstimator`` and ``CostEstimator`` over the replicas' model ids.
    api_keys : collection of str
        Accepted bearer tokens; empty: no auth.
    probe_retry_s : float
        Pause between failed probes of a replica that is not up yet.
    sleep : async callable
        ``asyncio.sleep`` for the probes; tests pass a fake clock's.
    echo_request_id : bool
        Answer with ``x-request-id`` (the client's, if header-safe, else a new one); off behind a proxy
        that sets it itself (Ray Serve's).
    replica_watch : callable or None
        Returns the models that still have a live replica (``serve.watch.live_models``), or None when it
        cannot tell; polled every ``watch_period_s`` from :meth:`start`. None: no watch.
    """

    def __init__(
        self,
        replicas: Mapping[str, Any],
        settings: ControllerSettings,
        quality: QualityEstimator,
        cost: CostEstimator,
        api_keys: Collection[str] = (),
        *,
        probe_retry_s: float = PROBE_RETRY_S,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        echo_request_id: bool = True,
        replica_watch: Callable[[], set[str] | None] | None = None,
        watch_period_s: float = WATCH_PERIOD_S,
    ) -> None:
        if not replicas:
            raise ValueError("replicas: the fleet needs at least one model")
        if VIRTUAL_MODEL in replicas:
            raise ValueError(f"replicas: {VIRTUAL_MODEL!r} is the virtual model's id, not a model's")
        if settings.max_depth > len(replicas):
            raise ValueError(f"settings.max_depth: {settings.max_depth} exceeds the {len(replicas)} replicas "
                             f"({', '.join(replicas)})")
        self._handles = dict(replicas)
        self._echo_request_id = echo_request_id
        self._in_flight = 0
        self._replica_watch = replica_watch
        self._watch_period_s = watch_period_s
        self._watch_task: asyncio.Task[None] | None = None
        # Configuring a handle with .options() makes a new handle, with its own metrics pusher and
        # long-poll client in Serve: made once per model here and reused, as Ray's OpenAiIngress does.
        self._stream_handles = {model: handle.options(stream=True) for model, handle in replicas.items()}
        self._model_ids = list(replicas)
        self._settings = settings
        self._default = CascadeKnobs(policy=settings.policy, lambda_=float(settings.lambda_),
                                     max_depth=settings.max_depth)
        self._quality = quality
        self._cost = cost
        self._api_keys = frozenset(api_keys)
        self._metrics = ControllerMetrics()
        self._created = int(time.time())
        self._probes = ReplicaProbes(self._model_ids, self._call, self._measure_probe,
                                     timeout_s=settings.stage_timeout_s, retry_s=probe_retry_s, sleep=sleep)

    def start(self) -> None:
        """Start probing every replica, and watching for replicas that vanish (needs the running event loop
        the requests are served on)."""
        for model in self._model_ids:
            self._probes.start(model)
        if self._replica_watch is not None:
            self._watch_task = asyncio.get_running_loop().create_task(self._watch())

    async def stop(self) -> None:
        """Cancel the probes and the watch still running."""
        if self._watch_task is not None:
            self._watch_task.cancel()
        await self._probes.stop()

    async def _watch(self) -> None:
        """Every ``watch_period_s``: a ready model without a live replica (``serve.watch``) leaves the
        cascade now, not after a stage waited out its timeout; its probes bring it back."""
        assert self._replica_watch is not None
        while True:
            await asyncio.sleep(self._watch_period_s)
            try:
                alive = await asyncio.to_thread(self._replica_watch)  # a blocking call to Ray's GCS
            except Exception:  # a GCS hiccup must not end the watch
                logger.warning("could not list the live replicas; retrying", exc_info=True)
                continue
            if alive is None:
                continue
            for model in self._model_ids:
                if self._probes.ready[model] and model not in alive:
                    logger.warning("the replica of %s is gone; out of the cascade until a probe answers", model)
                    self._probes.failed(model)

    # -- public API: plain data in, plain data out ------------------------------------------------------
    async def complete(self, endpoint: Endpoint, body: bytes, headers: Mapping[str, str]) -> Reply:
        """One ``POST /v1/chat/completions`` or ``/v1/completions``: raw body and request headers
        (lower-case names) in; the answer, or its error envelope, out."""
        # Behind Serve's proxy, which already answers with the request's id, a second header would repeat it.
        reply_headers = {"x-request-id": _request_id(headers.get("x-request-id"))} if self._echo_request_id else {}
        if self._in_flight >= self._settings.max_in_flight:
            # Shed at once: a request queued behind a full controller would wait for minutes and time out;
            # answered now, the client backs off and the requests in flight keep their latency.
            return self._error_reply(ApiError(503, f"the endpoint is at capacity ({self._settings.max_in_flight} "
                                                   "requests in flight); retry shortly", code="overloaded",
                                              retry_after_s=SHED_RETRY_AFTER_S), reply_headers, endpoint)
        slot = _Slot(self)
        timeout_s = self._settings.request_timeout_s
        deadline = time.monotonic() + timeout_s
        try:
            self._check_auth(headers)
            # The inner deadlines answer first (a cascade returns its best answer so far); this bound
            # catches whatever else could hold a request past its timeout.
            payload, reply_headers = await asyncio.wait_for(
                self._dispatch(endpoint, _json_object(body), reply_headers, deadline), timeout_s + _DEADLINE_GRACE_S)
        except Exception as exc:
            slot.release()
            if isinstance(exc, TimeoutError):
                exc = self._request_timeout_error()
            return self._error_reply(exc, reply_headers, endpoint)
        except BaseException:
            slot.release()
            raise
        if isinstance(payload, dict):
            slot.release()
            return Reply(payload, headers=reply_headers)
        # A stream holds its place in max_in_flight until its last line: its replica is busy until then.
        return Reply(slot.held_by(payload), headers=reply_headers, media_type="text/event-stream")

    async def call(self, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        """The non-streaming API for Serve handles (in-cluster clients, the serving benchmark): the
        same dispatch as HTTP, minus the proxy hop; the response or error body as a dict."""
        deadline = time.monotonic() + self._settings.request_timeout_s
        try:
            payload, _ = await self._dispatch(endpoint, {**body, "stream": False}, {}, deadline)
        except Exception as exc:
            return self._api_error(exc).body()
        assert isinstance(payload, dict)  # stream is off
        return payload

    def list_models(self, headers: Mapping[str, str]) -> Reply:
        """``GET /v1/models``: the virtual model, then the fleet's, each with its readiness."""
        try:
            self._check_auth(headers)
        except ApiError as err:
            return self._error_reply(err, {}, "models")
        return Reply({"object": "list", "data": [self._model_card(m) for m in [VIRTUAL_MODEL, *self._model_ids]]})

    def get_model(self, model_id: str, headers: Mapping[str, str]) -> Reply:
        """``GET /v1/models/{model_id}``."""
        try:
            self._check_auth(headers)
            if model_id != VIRTUAL_MODEL and model_id not in self._handles:
                raise ApiError(404, f"the model {model_id!r} does not exist", param="model", code="model_not_found")
        except ApiError as err:
            return self._error_reply(err, {}, "models")
        return Reply(self._model_card(model_id))

    def health(self) -> Reply:
        """``GET /health`` (open): 200 once any replica answered a probe, 503 before."""
        ready = self._probes.ready
        ok = any(ready.values())
        # "settling" until every replica's cost was measured with the whole fleet up (serve.probes).
        cost = "settled" if self._probes.settled else "settling"
        body = {"status": "ok" if ok else "unavailable",
                "models": {m: ("ready" if up else "starting") for m, up in ready.items()}, "cost_model": cost}
        return Reply(body, status=200 if ok else 503)

    def metrics(self) -> Reply:
        """``GET /metrics``: Prometheus text."""
        return Reply(self._metrics.exposition(), media_type=PROMETHEUS_TEXT)

    # -- replicas ---------------------------------------------------------------------------------------
    async def _call(self, model: str, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        response = self._handles[model].run.remote(endpoint, body)
        try:
            result: dict[str, Any] = await response
            return result
        except asyncio.CancelledError:
            response.cancel()  # a superseded or timed-out stage must free its engine slot
            raise

    def _measure_probe(self, stage: StageResult, replaces_startup: bool) -> None:
        if replaces_startup:
            self._cost.supersede_measurements(stage.model)
        self._cost.observe(QueryInfo.from_request("completions", PROBE_BODY), stage)
        self._update_rate_gauges(stage.model)

    def _on_stage_failure(self, model: str, err: ApiError) -> None:
        logger.warning("stage on %s failed: %s; re-probing it", model, err.message)
        self._probes.failed(model)

    def _update_rate_gauges(self, model: str) -> None:
        rates = self._cost.current_rates(model)
        if rates is not None:
            self._metrics.set_cost_rates(model, rates)

    # -- request plumbing -------------------------------------------------------------------------------
    def _check_auth(self, headers: Mapping[str, str]) -> None:
        if not self._api_keys:
            return
        header = headers.get("authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else ""
        if token not in self._api_keys:
            raise ApiError(401, "missing or invalid API key (send Authorization: Bearer <key>)",
                           code="invalid_api_key")

    @staticmethod
    def _api_error(exc: Exception) -> ApiError:
        err = to_api_error(exc)
        if not isinstance(exc, ApiError):
            logger.error("request failed: %s", err.message, exc_info=exc)  # the traceback: logs only
        return err

    def _error_reply(self, exc: Exception, headers: Mapping[str, str], route: str) -> Reply:
        err = self._api_error(exc)
        self._metrics.requests.labels(route, "none", f"http_{err.status}").inc()
        return Reply(err.body(), status=err.status, headers={**headers, **err.headers()})

    async def _dispatch(self, endpoint: str, body: dict[str, Any], headers: dict[str, str], deadline: float) -> _Answer:
        """The answer to one completion request: a JSON body or SSE lines, and its headers."""
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise ApiError(400, "model: required (a served model id, or 'cascade')", param="model")
        if endpoint == "chat" and not isinstance(body.get("messages"), list):
            raise ApiError(400, "messages: required (a list of chat messages)", param="messages")
        if endpoint == "completions" and "prompt" not in body:
            raise ApiError(400, "prompt: required", param="prompt")
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise ApiError(400, f"stream must be a boolean, got {stream!r}", param="stream")
        _check_token_limits(body)
        body = _openai_fields(body)
        # What vLLM rejects on a direct call, the cascade rejects too: its stages ask for logprobs and
        # never stream, so the request's own combination would otherwise pass unchecked.
        if body.get("stream_options") is not None and not stream:
            raise ApiError(400, "stream_options is only allowed when stream is true", param="stream_options")
        if endpoint == "chat" and body.get("top_logprobs") is not None and not body.get("logprobs"):
            raise ApiError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
        if model == VIRTUAL_MODEL:
            return await self._cascade(endpoint, body, stream, headers, deadline)
        if model not in self._handles:
            raise ApiError(404, f"the model {model!r} does not exist; served: "
                           + ", ".join([VIRTUAL_MODEL, *self._model_ids]), param="model", code="model_not_found")
        if "cascade" in body:
            raise ApiError(400, "cascade knobs apply to model 'cascade' only", param="cascade")
        headers = {**headers, "x-cascade-served-model": model, "x-cascade-stages": "1"}
        if stream:
            return await self._direct_stream(endpoint, model, body, deadline), headers
        return await self._direct(endpoint, model, body, headers, deadline)

    def _wait_s(self, deadline: float) -> float:
        """How long one replica call may take: the stage timeout, or less when the request's deadline is nearer."""
        return max(min(self._settings.stage_timeout_s, deadline - time.monotonic()), 0.0)

    def _timeout_error(self, exc: Exception, waited_s: float) -> ApiError | None:
        """The request timeout's own error, when it (not the stage timeout) cut a wait of ``waited_s``."""
        if not isinstance(exc, TimeoutError) or waited_s >= self._settings.stage_timeout_s:
            return None
        return self._request_timeout_error()

    def _request_timeout_error(self) -> ApiError:
        timeout_s = self._settings.request_timeout_s
        return ApiError(503, f"the request did not finish within its timeout ({timeout_s:g} s)",
                        retry_after_s=SHED_RETRY_AFTER_S)

    async def _direct(self, endpoint: str, model: str, body: dict[str, Any], headers: dict[str, str],
                      deadline: float) -> _Answer:
        timeout_s = self._wait_s(deadline)
        try:
            response = await asyncio.wait_for(self._call(model, endpoint, body), timeout_s)
        except Exception as exc:
            raise self._timeout_error(exc, timeout_s) or to_api_error(
                exc, model=model, timeout_s=timeout_s, phase="answer") from None
        if "error" in response:
            raise ApiError.from_body(response)
        stage = StageResult.from_response(model, endpoint, response)
        if self._cost.current_rates(model) is not None:
            # A model's first point is its probe's: a client's request that happens to finish first
            # must not set it, unbounded (later ones move it by a capped step).
            self._cost.observe(QueryInfo.from_request(endpoint, body), stage)
        self._update_rate_gauges(model)
        billed_gpu_s = self._cost.billed_gpu_s(stage)
        self._metrics.gpu.observe(billed_gpu_s)
        self._metrics.requests.labels(endpoint, model, "ok").inc()
        return response, {**headers, "x-cascade-cost-gpu-ms": f"{billed_gpu_s * 1e3:.3f}"}

    async def _direct_stream(self, endpoint: str, model: str, body: dict[str, Any],
                             deadline: float) -> AsyncIterator[str]:
        """The replica's SSE lines, passed through. A failure before the first line is an ordinary error
        response; after it (headers are sent) it is one error event, then the end of the stream. The
        stage timeout bounds the wait for each line, the request's deadline the whole stream."""
        timeout_s = self._wait_s(deadline)
        gen = self._stream_handles[model].stream.remote(endpoint, body)
        try:
            first = await asyncio.wait_for(gen.__anext__(), timeout_s)
        except Exception as exc:
            if not isinstance(exc, StopAsyncIteration):
                gen.cancel()
            raise self._timeout_error(exc, timeout_s) or to_api_error(
                exc, model=model, timeout_s=timeout_s, phase="start") from None
        if isinstance(first, dict):
            raise ApiError.from_body(first)

        async def lines() -> AsyncIterator[str]:
            ended = False
            try:
                yield first
                while True:
                    wait_s = self._wait_s(deadline)
                    try:
                        line = await asyncio.wait_for(gen.__anext__(), wait_s)
                    except StopAsyncIteration:
                        ended = True
                        return
                    except Exception as exc:
                        ended = True
                        gen.cancel()
                        err = self._timeout_error(exc, wait_s) or to_api_error(
                            exc, model=model, timeout_s=wait_s, phase="stream")
                        yield sse(err.body())
                        return
                    yield line if isinstance(line, str) else sse(line)
            finally:
                if not ended:
                    gen.cancel()  # the client left mid-stream: the engine must not finish an answer nobody reads

        self._metrics.requests.labels(endpoint, model, "ok").inc()
        return lines()

    async def _cascade(self, endpoint: str, body: dict[str, Any], stream: bool, headers: dict[str, str],
                       deadline: float) -> _Answer:
        knobs = parse_knobs(body.get("cascade"), self._default, self._model_ids)
        stream_options = body.get("stream_options")
        if stream_options is not None and not isinstance(stream_options, dict):
            raise ApiError(400, "stream_options must be an object", param="stream_options")
        if stream:
            _check_replayable(body)
        if knobs.request_timeout_s is not None:  # a request may only tighten its timeout
            deadline = min(deadline, time.monotonic() + knobs.request_timeout_s)
        ready = [m for m in (knobs.models or self._model_ids) if self._probes.ready[m]]
        outcome = await run_cascade(
            endpoint, body, ready, self._call, self._quality, self._cost, knobs,
            stage_timeout_s=self._settings.stage_timeout_s, on_stage_failure=self._on_stage_failure, deadline=deadline,
        )
        self._count_cascade(endpoint, outcome)
        headers = {
            **headers,
            "x-cascade-served-model": outcome.served_model,
            "x-cascade-stages": str(sum(s["decision"] != "error" for s in outcome.stages)),
            "x-cascade-cost-gpu-ms": f"{outcome.response['cascade']['total_gpu_ms']:.3f}",
        }
        if not stream:
            return outcome.response, headers
        include_usage = bool((stream_options or {}).get("include_usage"))
        return replay_answer(endpoint, outcome.response, include_usage), headers

    def _count_cascade(self, endpoint: str, outcome: CascadeOutcome) -> None:
        m = self._metrics
        previous = None
        for stage in outcome.stages:
            m.stages.labels(stage["model"], stage["decision"]).inc()
            if stage["decision"] != "error":
                self._update_rate_gauges(stage["model"])
                if previous is not None:
                    m.escalations.labels(previous, stage["model"]).inc()
                previous = stage["model"]
        for seconds in outcome.decide_s:
            m.decide.observe(seconds)
        m.gpu.observe(outcome.total_gpu_s)
        m.requests.labels(endpoint, outcome.served_model, "ok").inc()

    def _model_card(self, model: str) -> dict[str, Any]:
        ready = any(self._probes.ready.values()) if model == VIRTUAL_MODEL else self._probes.ready[model]
        return {"id": model, "object": "model", "created": self._created, "owned_by": "cascade-serve", "ready": ready}


class _Slot:
    """One request's place in ``max_in_flight``, given back exactly once: when the answer is complete, or
    for a stream when its last line is sent, the client leaves, or the unstarted stream is dropped (a
    response never sent must not hold a place forever)."""

    def __init__(self, controller: CascadeController) -> None:
        self._controller: CascadeController | None = controller
        controller._in_flight += 1

    def release(self) -> None:
        if self._controller is not None:
            self._controller._in_flight -= 1
            self._controller = None

    def held_by(self, lines: AsyncIterator[str]) -> AsyncIterator[str]:
        async def held() -> AsyncIterator[str]:
            try:
                async for line in lines:
                    yield line
            finally:
                self.release()

        gen = held()
        weakref.finalize(gen, self.release)  # an async generator never started runs no finally
        return gen


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}") from None
    except RecursionError:  # thousands of nested brackets: valid JSON that Python will not hold
        raise ApiError(400, "the request body nests too deeply") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return body


# A client's id for its request, echoed in the response header and the logs: what fits a header and a
# log line unescaped; anything else is replaced by a fresh id (a non-ASCII one cannot be sent back).
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def _request_id(given: str | None) -> str:
    return given if given is not None and _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex


# Current OpenAI request fields that vLLM does not know, by the rule the README states: a field that only
# files or describes the request (it cannot change the answer) is accepted and dropped; a field that
# would change the answer, which this server cannot honour, is refused by name. Any other unknown field
# is refused by the replica (a typo must not fall back to a default).
IGNORED_FIELDS = frozenset({"metadata", "store", "service_tier", "prompt_cache_key", "safety_identifier"})
UNSUPPORTED_FIELDS = frozenset({"modalities", "audio", "prediction", "web_search_options", "verbosity",
                                "functions", "function_call"})


def _openai_fields(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` without the fields that cannot change the answer; a 400 for one this server cannot honour."""
    unsupported = sorted(UNSUPPORTED_FIELDS & body.keys())
    if unsupported:
        raise ApiError(400, f"{unsupported[0]}: not supported by this server (it would change the answer)",
                       param=unsupported[0])
    if IGNORED_FIELDS.isdisjoint(body):
        return body
    return {k: v for k, v in body.items() if k not in IGNORED_FIELDS}


def _check_token_limits(body: dict[str, Any]) -> None:
    """``max_tokens`` and ``max_completion_tokens``: absent, null, or a positive integer. JSON admits
    NaN, Infinity and 1e999; the cost estimates need an integer before any replica sees the request."""
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ApiError(400, f"{name} must be a positive integer, got {json.dumps(value)[:40]}", param=name)


def _check_replayable(body: dict[str, Any]) -> None:
    """A streamed cascade answer is replayed as one choice's text once accepted (``serve.sse``): a
    request it would answer with less than asked for is refused up front, saying why."""
    n = body.get("n")
    if n is not None and n != 1:
        raise ApiError(400, "a streamed cascade answers one choice: send n > 1 without stream, or to one model",
                       param="n")
    if body.get("logprobs"):
        raise ApiError(400, "a streamed cascade answer carries no logprobs: ask for them without stream, or from "
                       "one model", param="logprobs")
