"""The controller: the fleet's one OpenAI-compatible endpoint, a Ray Serve ingress deployment.

Routes: ``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models[/{id}]``,
``GET /health`` (open), ``GET /metrics`` (Prometheus text). A request naming a served model is
forwarded to its replica as is (streaming passes through); a request for the virtual model
``cascade`` runs ``serve.cascade_run``. API keys (``Authorization: Bearer``) guard ``/v1/*`` when
configured.

Cascade streaming semantics: stages always run buffered (a stage's answer must be complete before
the policy can judge it, and an escalated answer must never have reached the client); once the
cascade accepts, the selected answer is streamed as SSE chunks of about a word each, then the
``finish_reason`` chunk, then, with ``stream_options.include_usage``, a usage chunk (``choices: []``)
that carries the ``cascade`` trace, then ``[DONE]``. A failure before the first byte is an ordinary
error response; nothing can fail after it, since the answer is already complete.

Readiness (``serve.probes``): at start probe requests measure each replica's per-token prefill and
decode time (the cost model's first point), and measure again once the whole fleet is up; the cascade
only uses replicas that answered a probe, and a replica whose stage fails is probed again before it is
used again. Direct calls are always attempted (Serve queues them until the replica is up) and time out
with 503 + Retry-After.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from ray import serve

from estimators.artifacts import load_artifacts
from estimators.calibrated_quality import CalibratedQuality
from estimators.logprob_quality import LogprobQuality
from estimators.stage import CostEstimator, QualityEstimator, QueryInfo, StageResult
from estimators.token_cost import TokenCostModel
from serve.cascade_run import CascadeKnobs, parse_knobs, run_cascade
from serve.errors import ApiError, error_body
from serve.probes import PROBE_BODY, ReplicaProbes

__all__ = ["CascadeController", "VIRTUAL_MODEL"]

logger = logging.getLogger("ray.serve")

VIRTUAL_MODEL = "cascade"
PROBE_RETRY_S = 2.0

app = FastAPI(title="cascade-serve")

# A completion's answer: the JSON body, or the SSE lines of a stream; and the response headers.
Reply = tuple[dict[str, Any] | AsyncIterator[str], dict[str, str]]


class _Metrics:
    """Bounded-label Prometheus metrics (model, policy, stage decision, outcome; never a request id)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("cascade_requests", "Requests answered, by route and outcome",
                                ["route", "served_model", "outcome"], registry=r)
        self.stages = Counter("cascade_stage_calls", "Cascade stages, by model and decision",
                              ["model", "decision"], registry=r)
        self.escalations = Counter("cascade_escalations", "Escalations between consecutive stages",
                                   ["from_model", "to_model"], registry=r)
        self.gpu = Histogram("cascade_request_gpu_seconds", "Engine GPU time of a request, all stages",
                             buckets=(0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30), registry=r)
        self.decide = Histogram("cascade_route_decision_seconds", "Time of one routing decision",
                                buckets=(1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2), registry=r)
        self.rate = Gauge("cascade_cost_model_seconds_per_token", "Measured GPU-seconds per token",
                          ["model", "phase"], registry=r)
        self.overhead = Gauge("cascade_cost_model_overhead_seconds", "Calibrated fixed GPU-seconds per request",
                              ["model"], registry=r)
        self.correction = Gauge("cascade_cost_model_live_correction",
                                "Live factor on the calibrated cost law (bounded EWMA of measured/predicted)",
                                ["model"], registry=r)


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj)}\n\n"


def _word_chunks(text: str) -> list[str]:
    return re.findall(r"\s*\S+\s*", text) or ([text] if text else [])


@serve.deployment(max_ongoing_requests=256)
@serve.ingress(app)
class CascadeController:
    """See the module docstring. ``models``: model id -> handle of its ``CascadeLLMServer``, in the
    fleet file's order; ``settings``: the ``cascade`` block (policy, lambda, max_depth,
    stage_timeout_s); ``api_keys``: accepted bearer tokens (empty: no auth)."""

    # Serve awaits async constructors (as Ray LLM's own LLMServer does); the probes need the loop.
    async def __init__(  # type: ignore[misc]
        self, models: dict[str, Any], settings: dict[str, Any], api_keys: list[str]
    ) -> None:
        self._handles = models
        self._model_ids = list(models)
        self._timeout_s = float(settings["stage_timeout_s"])
        self._default = CascadeKnobs(
            policy=settings["policy"],
            lambda_=float(settings["lambda"]),
            max_depth=int(settings.get("max_depth") or len(models)),
        )
        self._api_keys = set(api_keys)
        self._quality: QualityEstimator
        self._cost: CostEstimator
        if settings.get("artifacts"):
            # Calibrated estimators (`cascade calibrate`); the fleet's fingerprints were checked by the
            # app builder, which has the model files; here the pickles are only loaded.
            artifacts = load_artifacts(settings["artifacts"])
            self._quality = CalibratedQuality(artifacts.quality, answer_kind=artifacts.summary["answer_kind"])
            self._cost = artifacts.cost
        else:
            self._quality = LogprobQuality()
            self._cost = TokenCostModel()
        self._metrics = _Metrics()
        self._created = int(time.time())
        self._probes = ReplicaProbes(self._model_ids, self._call, self._measure_probe,
                                     timeout_s=self._timeout_s, retry_s=PROBE_RETRY_S)
        for model in self._model_ids:
            self._probes.start(model)

    # -- replicas -------------------------------------------------------------------------------------
    async def _call(self, model: str, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        response = self._handles[model].run.remote(endpoint, body)
        try:
            result: dict[str, Any] = await response
            return result
        except asyncio.CancelledError:
            response.cancel()  # a superseded or timed-out stage must free its engine slot
            raise

    def _measure_probe(self, stage: StageResult, replaces_startup: bool) -> None:
        if replaces_startup and isinstance(self._cost, TokenCostModel):
            # Its first point *is* its rate, so a skewed one must go. A calibrated model needs no
            # reset: a probe moves its bounded correction by at most live_smoothing x the bound range.
            self._cost.forget(stage.model)
        self._cost.observe(QueryInfo.from_request("completions", PROBE_BODY), stage)
        self._update_rate_gauges(stage.model)

    def _on_stage_failure(self, model: str, exc: BaseException | ApiError) -> None:
        logger.warning("stage on %s failed: %s; re-probing it", model, exc)
        self._probes.failed(model)

    def _update_rate_gauges(self, model: str) -> None:
        if isinstance(self._cost, TokenCostModel):
            rate = self._cost.rates.get(model)
            if rate is not None:
                self._metrics.rate.labels(model, "prefill").set(rate.prefill_s_per_token)
                self._metrics.rate.labels(model, "decode").set(rate.decode_s_per_token)
            return
        coef = self._cost.coefficients().get(model)  # type: ignore[attr-defined]
        if coef is not None:
            # The calibrated law, times the live correction: what a prediction uses now.
            k = coef["correction"]
            self._metrics.rate.labels(model, "prefill").set(k * coef["prefill_s_per_token"])
            self._metrics.rate.labels(model, "decode").set(k * coef["decode_s_per_token"])
            self._metrics.overhead.labels(model).set(k * coef["overhead_s"])
            self._metrics.correction.labels(model).set(k)

    # -- request plumbing -----------------------------------------------------------------------------
    def _check_auth(self, request: Request) -> None:
        if not self._api_keys:
            return
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else ""
        if token not in self._api_keys:
            raise ApiError(401, "missing or invalid API key (send Authorization: Bearer <key>)",
                           code="invalid_api_key")

    @staticmethod
    async def _json_body(request: Request) -> dict[str, Any]:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"the request body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object")
        return body

    def _error_response(self, err: ApiError, headers: dict[str, str], route: str) -> JSONResponse:
        self._metrics.requests.labels(route, "none", f"http_{err.status}").inc()
        return JSONResponse(err.body(), status_code=err.status, headers={**headers, **err.headers()})

    async def _complete(self, endpoint: str, request: Request) -> Response:
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        headers = {"x-request-id": request_id}
        try:
            self._check_auth(request)
            body = await self._json_body(request)
            payload, headers = await self._dispatch(endpoint, body, headers)
        except ApiError as err:
            return self._error_response(err, headers, endpoint)
        if isinstance(payload, dict):
            return JSONResponse(payload, headers=headers)
        return StreamingResponse(payload, media_type="text/event-stream", headers=headers)

    async def call(self, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        """The non-streaming API for Serve handles (in-cluster clients, the serving benchmark): the
        same dispatch as HTTP, minus the proxy hop; the response or error body as a dict."""
        try:
            payload, _ = await self._dispatch(endpoint, {**body, "stream": False}, {})
        except ApiError as err:
            return err.body()
        assert isinstance(payload, dict)  # stream is off
        return payload

    async def _dispatch(self, endpoint: str, body: dict[str, Any], headers: dict[str, str]) -> Reply:
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
        if model == VIRTUAL_MODEL:
            return await self._cascade(endpoint, body, stream, headers)
        if model not in self._handles:
            raise ApiError(404, f"the model {model!r} does not exist; served: "
                           + ", ".join([VIRTUAL_MODEL, *self._model_ids]), param="model", code="model_not_found")
        if "cascade" in body:
            raise ApiError(400, "cascade knobs apply to model 'cascade' only", param="cascade")
        return await self._direct(endpoint, model, body, stream, headers)

    async def _direct(self, endpoint: str, model: str, body: dict[str, Any], stream: bool,
                      headers: dict[str, str]) -> Reply:
        headers = {**headers, "x-cascade-served-model": model, "x-cascade-stages": "1"}
        if stream:
            gen = self._handles[model].options(stream=True).stream.remote(endpoint, body)
            try:
                first = await asyncio.wait_for(gen.__anext__(), self._timeout_s)
            except TimeoutError:
                gen.cancel()
                raise ApiError(503, f"model {model!r} did not start answering within {self._timeout_s:g} s",
                               retry_after_s=5) from None
            except StopAsyncIteration:
                raise ApiError(500, f"model {model!r} returned an empty stream") from None
            if isinstance(first, dict):
                raise ApiError.from_body(first)

            async def lines() -> AsyncIterator[str]:
                yield first
                while True:
                    try:
                        line = await asyncio.wait_for(gen.__anext__(), self._timeout_s)
                    except StopAsyncIteration:
                        return
                    except Exception as exc:  # headers are sent: one error event, then close
                        gen.cancel()
                        message = (f"model {model!r} stalled for {self._timeout_s:g} s" if isinstance(exc, TimeoutError)
                                   else f"model {model!r} failed mid-stream ({type(exc).__name__})")
                        yield _sse(error_body(503, message))
                        return
                    yield line if isinstance(line, str) else _sse(line)

            self._metrics.requests.labels(endpoint, model, "ok").inc()
            return lines(), headers
        try:
            response = await asyncio.wait_for(self._call(model, endpoint, body), self._timeout_s)
        except TimeoutError:
            raise ApiError(503, f"model {model!r} did not answer within {self._timeout_s:g} s",
                           retry_after_s=5) from None
        except Exception as exc:
            raise ApiError(503, f"model {model!r} is unavailable ({type(exc).__name__})", retry_after_s=5) from None
        if "error" in response:
            raise ApiError.from_body(response)
        stage = StageResult.from_response(model, endpoint, response)
        self._cost.observe(QueryInfo.from_request(endpoint, body), stage)
        self._update_rate_gauges(model)
        self._metrics.gpu.observe(stage.gpu_s)
        self._metrics.requests.labels(endpoint, model, "ok").inc()
        headers["x-cascade-cost-gpu-ms"] = f"{stage.gpu_s * 1e3:.3f}"
        return response, headers

    async def _cascade(self, endpoint: str, body: dict[str, Any], stream: bool, headers: dict[str, str]) -> Reply:
        knobs = parse_knobs(body.get("cascade"), self._default, self._model_ids)
        stream_options = body.get("stream_options")
        if stream_options is not None and not isinstance(stream_options, dict):
            raise ApiError(400, "stream_options must be an object", param="stream_options")
        ready = [m for m in (knobs.models or self._model_ids) if self._probes.ready[m]]
        outcome = await run_cascade(
            endpoint, body, ready, self._call, self._quality, self._cost, knobs,
            stage_timeout_s=self._timeout_s, on_stage_failure=self._on_stage_failure,
        )
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
        headers = {
            **headers,
            "x-cascade-served-model": outcome.served_model,
            "x-cascade-stages": str(sum(s["decision"] != "error" for s in outcome.stages)),
            "x-cascade-cost-gpu-ms": f"{outcome.response['cascade']['total_gpu_ms']:.3f}",
        }
        if not stream:
            return outcome.response, headers
        include_usage = bool((stream_options or {}).get("include_usage"))
        return self._replay(endpoint, outcome.response, include_usage), headers

    @staticmethod
    async def _replay(endpoint: str, response: dict[str, Any], include_usage: bool) -> AsyncIterator[str]:
        """The accepted answer as an OpenAI chunk stream (module docstring)."""
        chat = endpoint == "chat"
        base = {"id": response.get("id", ""), "created": response.get("created", int(time.time())),
                "model": response["model"], "object": "chat.completion.chunk" if chat else "text_completion"}
        choice = (response.get("choices") or [{}])[0]
        if chat:
            text = (choice.get("message") or {}).get("content") or ""
            yield _sse({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                             "logprobs": None, "finish_reason": None}]})
            for piece in _word_chunks(text):
                yield _sse({**base, "choices": [{"index": 0, "delta": {"content": piece}, "logprobs": None,
                                                 "finish_reason": None}]})
            yield _sse({**base, "choices": [{"index": 0, "delta": {}, "logprobs": None,
                                             "finish_reason": choice.get("finish_reason")}]})
        else:
            for piece in _word_chunks(choice.get("text") or ""):
                yield _sse({**base, "choices": [{"index": 0, "text": piece, "logprobs": None, "finish_reason": None}]})
            yield _sse({**base, "choices": [{"index": 0, "text": "", "logprobs": None,
                                             "finish_reason": choice.get("finish_reason")}]})
        if include_usage:
            yield _sse({**base, "choices": [], "usage": response["usage"], "cascade": response["cascade"]})
        yield "data: [DONE]\n\n"

    # -- routes ---------------------------------------------------------------------------------------
    @app.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> Response:
        return await self._complete("chat", request)

    @app.post("/v1/completions")
    async def completions(self, request: Request) -> Response:
        return await self._complete("completions", request)

    def _model_card(self, model: str) -> dict[str, Any]:
        ready = any(self._probes.ready.values()) if model == VIRTUAL_MODEL else self._probes.ready[model]
        return {"id": model, "object": "model", "created": self._created, "owned_by": "cascade-serve", "ready": ready}

    @app.get("/v1/models")
    async def list_models(self, request: Request) -> Response:
        try:
            self._check_auth(request)
        except ApiError as err:
            return self._error_response(err, {}, "models")
        cards = [self._model_card(m) for m in [VIRTUAL_MODEL, *self._model_ids]]
        return JSONResponse({"object": "list", "data": cards})

    @app.get("/v1/models/{model_id:path}")
    async def get_model(self, model_id: str, request: Request) -> Response:
        try:
            self._check_auth(request)
            if model_id != VIRTUAL_MODEL and model_id not in self._handles:
                raise ApiError(404, f"the model {model_id!r} does not exist", param="model", code="model_not_found")
        except ApiError as err:
            return self._error_response(err, {}, "models")
        return JSONResponse(self._model_card(model_id))

    @app.get("/health")
    async def health(self) -> Response:
        status = {m: ("ready" if ok else "starting") for m, ok in self._probes.ready.items()}
        ok = any(self._probes.ready.values())
        # "settling" until every replica's cost was measured with the whole fleet up (serve.probes).
        cost = "settled" if self._probes.settled else "settling"
        return JSONResponse({"status": "ok" if ok else "unavailable", "models": status, "cost_model": cost},
                            status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics(self) -> Response:
        return PlainTextResponse(generate_latest(self._metrics.registry).decode(),
                                 media_type="text/plain; version=0.0.4")

