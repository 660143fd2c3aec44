"""The controller's HTTP face without Ray: ``http_app(CascadeController(...))`` driven by starlette's
``TestClient``, with fake replica handles that answer like ``CascadeLLMServer`` (OpenAI bodies with
``usage``, vLLM's per-request ``metrics`` and token logprobs; SSE lines for streams).

Real-stack counterparts run through Ray Serve and vLLM in ``test_serving_e2e.py``.
"""

from __future__ import annotations

import asyncio
import gc
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from estimators.logprob_quality import LogprobQuality
from estimators.token_cost import TokenCostModel
from serve.controller import CascadeController, ControllerSettings
from serve.ingress import ROUTES, http_app

API_KEY = "test-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
CHAT = [{"role": "user", "content": "What is 2 + 2?"}]
# Per model: mean token logprob of its answers (its confidence) and GPU-seconds per decoded token.
LOGPROB = {"small": -2.0, "large": -0.1}
DECODE_S = {"small": 0.001, "large": 0.01}


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj)}\n\n"


class FakeResponse:
    """What ``handle.run.remote(...)`` returns: awaitable once, and cancellable."""

    def __init__(self, answer: Callable[[], Awaitable[dict[str, Any]]]) -> None:
        self._answer = answer
        self.cancelled = False

    def __await__(self) -> Any:
        return self._answer().__await__()

    def cancel(self) -> None:
        self.cancelled = True


class FakeStream:
    """What ``handle.options(stream=True).stream.remote(...)`` returns: the replica's lines, cancellable."""

    def __init__(self, lines: AsyncIterator[Any]) -> None:
        self._lines = lines
        self.cancelled = False

    def __anext__(self) -> Awaitable[Any]:
        return self._lines.__anext__()

    def cancel(self) -> None:
        self.cancelled = True


class _Method:
    def __init__(self, remote: Callable[[str, dict[str, Any]], Any]) -> None:
        self.remote = remote


class FakeHandle:
    """A model replica's Serve handle. ``down``: raise like a replica that is not up; ``fail``: raise
    this on every call; ``stall_s``: answer that late; ``reject``: answer this error body instead;
    ``fail_mid_stream``: raise it after a stream's first line."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.down = False
        self.fail: Exception | None = None
        self.stall_s = 0.0
        self.reject: dict[str, Any] | None = None
        self.fail_mid_stream: Exception | None = None
        self.line_gap_s = 0.0  # a stream's pause before each line after the first
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.responses: list[FakeResponse] = []
        self.streams: list[FakeStream] = []
        self.options_calls = 0
        self.run = _Method(self._remote_run)
        self.stream = _Method(self._remote_stream)

    def options(self, *, stream: bool) -> FakeHandle:
        assert stream
        self.options_calls += 1
        return self

    def _remote_run(self, endpoint: str, body: dict[str, Any]) -> FakeResponse:
        response = FakeResponse(lambda: self._answer(endpoint, body))
        self.responses.append(response)
        return response

    def _remote_stream(self, endpoint: str, body: dict[str, Any]) -> FakeStream:
        stream = FakeStream(self._lines(endpoint, body))
        self.streams.append(stream)
        return stream

    async def _answer(self, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append((endpoint, body))
        if self.down:
            raise ConnectionRefusedError("not up yet")
        if self.fail is not None:
            raise self.fail
        if self.stall_s:
            await asyncio.sleep(self.stall_s)
        if self.reject is not None:
            return self.reject
        return self.response(endpoint, body)

    def text(self) -> str:
        return f"The answer of {self.model} is four."

    def response(self, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        n = int(body.get("max_tokens") or 8)
        lp = LOGPROB[self.model]
        choice: dict[str, Any]
        if endpoint == "chat":
            choice = {"index": 0, "message": {"role": "assistant", "content": self.text()}, "finish_reason": "length"}
            if body.get("logprobs"):
                choice["logprobs"] = {"content": [{"token": "a", "logprob": lp, "bytes": [97], "top_logprobs": []}] * n}
        else:
            choice = {"index": 0, "text": self.text(), "finish_reason": "length"}
            if body.get("logprobs"):
                choice["logprobs"] = {"token_logprobs": [lp] * n}
        return {
            "id": f"cmpl-{self.model}", "object": "chat.completion" if endpoint == "chat" else "text_completion",
            "created": 0, "model": self.model, "choices": [choice],
            "usage": {"prompt_tokens": 10, "completion_tokens": n, "total_tokens": 10 + n},
            "metrics": {"queue_time_ms": 0.5, "time_to_first_token_ms": DECODE_S[self.model] * 1e3,
                        "generation_time_ms": DECODE_S[self.model] * (n - 1) * 1e3},
        }

    def stream_lines(self, body: dict[str, Any]) -> list[str]:
        """The SSE lines of a streamed chat answer, as vLLM writes them."""
        base = {"id": f"chatcmpl-{self.model}", "object": "chat.completion.chunk", "created": 0, "model": self.model}
        lines = [_sse({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})]
        lines += [_sse({**base, "choices": [{"index": 0, "delta": {"content": w}}]}) for w in self.text().split(" ")]
        lines.append(_sse({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))
        if (body.get("stream_options") or {}).get("include_usage"):
            lines.append(_sse({**base, "choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 6,
                                                                "total_tokens": 16}}))
        return [*lines, "data: [DONE]\n\n"]

    async def _lines(self, endpoint: str, body: dict[str, Any]) -> AsyncIterator[Any]:
        self.calls.append((endpoint, body))
        if self.reject is not None:
            yield self.reject
            return
        if self.stall_s:
            await asyncio.sleep(self.stall_s)
        lines = self.stream_lines(body)
        yield lines[0]
        if self.fail_mid_stream is not None:
            raise self.fail_mid_stream
        for line in lines[1:]:
            if self.line_gap_s:
                await asyncio.sleep(self.line_gap_s)
            yield line


class FakeSleep:
    """The probes' sleep: records what was asked and returns at once (a real sleep would be seconds)."""

    def __init__(self) -> None:
        self.asked_s: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.asked_s.append(seconds)
        await asyncio.sleep(0.001)


def _controller(handles: dict[str, FakeHandle] | None = None, *, stage_timeout_s: float = 5.0,
                sleep: FakeSleep | None = None, max_in_flight: int = 256, request_timeout_s: float = 60.0,
                **options: Any) -> CascadeController:
    handles = handles if handles is not None else {m: FakeHandle(m) for m in ("small", "large")}
    settings = ControllerSettings(policy="cascade_routing", lambda_=0.01, max_depth=2, stage_timeout_s=stage_timeout_s,
                                  max_in_flight=max_in_flight, request_timeout_s=request_timeout_s)
    return CascadeController(handles, settings, LogprobQuality(), TokenCostModel(), [API_KEY],
                             sleep=sleep or FakeSleep(), **options)


def _wait_health(client: TestClient, done: Callable[[dict[str, Any]], bool], timeout_s: float = 5.0
                 ) -> dict[str, Any]:
    """``/health``'s body once ``done`` holds for it (the probes run in the background), or at the timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        body: dict[str, Any] = client.get("/health").json()
        if done(body) or time.monotonic() > deadline:
            return body
        time.sleep(0.002)


def _wait_settled(client: TestClient) -> dict[str, Any]:
    """Until every replica answered its probes and the cost model settled."""
    return _wait_health(client, lambda body: body["cost_model"] == "settled")


@pytest.fixture
def handles() -> dict[str, FakeHandle]:
    return {m: FakeHandle(m) for m in ("small", "large")}


@pytest.fixture
def client(handles: dict[str, FakeHandle]) -> Iterator[TestClient]:
    with TestClient(http_app(_controller(handles))) as test_client:
        assert _wait_settled(test_client)["cost_model"] == "settled"
        yield test_client


def _chat(client: TestClient, body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
    return client.post("/v1/chat/completions", json=body, headers=AUTH if headers is None else headers)


def _events(text: str) -> list[Any]:
    """The data of each SSE event; ``[DONE]`` as the string."""
    assert text.endswith("\n\n")
    events = []
    for block in text.split("\n\n")[:-1]:
        assert block.startswith("data: "), block
        data = block.removeprefix("data: ")
        events.append(data if data == "[DONE]" else json.loads(data))
    return events


def _assert_envelope(r: Any, status: int, needle: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err: dict[str, Any] = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and needle in err["message"], err
    assert r.headers["x-request-id"]
    return err


# -- auth, request parsing, models ------------------------------------------------------------------------


def test_api_keys_guard_v1_but_not_health(client: TestClient) -> None:
    body = {"model": "cascade", "messages": CHAT}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}):
        r = _chat(client, body, headers)
        err = _assert_envelope(r, 401, "API key")
        assert err["code"] == "invalid_api_key" and err["type"] == "AuthenticationError"
    assert client.get("/v1/models").status_code == 401
    assert client.get("/v1/models/small").status_code == 401
    assert client.post("/v1/completions", json={"model": "small", "prompt": "x"}).status_code == 401
    health = client.get("/health")
    assert health.status_code == 200 and health.json()["models"] == {"small": "ready", "large": "ready"}


def test_malformed_json_and_non_object_bodies_are_400(client: TestClient) -> None:
    r = client.post("/v1/chat/completions", content=b'{"model": "cascade", ', headers=AUTH)
    assert _assert_envelope(r, 400, "not valid JSON")["type"] == "BadRequestError"
    r = client.post("/v1/completions", content=b"[1, 2]", headers=AUTH)
    _assert_envelope(r, 400, "must be a JSON object")
    for body, param in [({"messages": CHAT}, "model"), ({"model": "small"}, "messages"),
                        ({"model": "small", "messages": CHAT, "stream": "yes"}, "stream")]:
        assert _assert_envelope(_chat(client, body), 400, param)["param"] == param


def test_unknown_model_is_404_model_not_found(client: TestClient) -> None:
    err = _assert_envelope(_chat(client, {"model": "nope", "messages": CHAT}), 404, "'nope' does not exist")
    assert err["code"] == "model_not_found" and err["param"] == "model" and err["type"] == "NotFoundError"
    assert "cascade, small, large" in err["message"]
    r = client.get("/v1/models/org/nope", headers=AUTH)
    assert r.status_code == 404 and "'org/nope'" in r.json()["error"]["message"]


def test_models_lists_the_virtual_model_first_with_readiness(client: TestClient) -> None:
    listing = client.get("/v1/models", headers=AUTH).json()
    assert listing["object"] == "list"
    assert [(m["id"], m["ready"]) for m in listing["data"]] == [("cascade", True), ("small", True), ("large", True)]
    card = client.get("/v1/models/large", headers=AUTH).json()
    assert card["id"] == "large" and card["object"] == "model" and card["owned_by"] == "cascade-serve"


def test_request_id_is_echoed_or_made(client: TestClient) -> None:
    body = {"model": "small", "messages": CHAT, "max_tokens": 4}
    assert _chat(client, body, {**AUTH, "x-request-id": "abc"}).headers["x-request-id"] == "abc"
    assert len(_chat(client, body).headers["x-request-id"]) == 32


# -- knobs -----------------------------------------------------------------------------------------------


def test_cascade_knobs_are_applied_or_refused(client: TestClient) -> None:
    ok = _chat(client, {"model": "cascade", "messages": CHAT, "cascade": {"lambda": 0, "max_depth": 1}})
    assert ok.status_code == 200
    trace = ok.json()["cascade"]
    assert trace["lambda"] == 0 and trace["max_depth"] == 1 and len(trace["stages"]) == 1
    for knobs, param in [({"lambda": -1}, "cascade.lambda"), ({"max_depth": 3}, "cascade.max_depth"),
                         ({"lamda": 1}, "cascade.lamda"), ([1], "cascade")]:
        r = _chat(client, {"model": "cascade", "messages": CHAT, "cascade": knobs})
        assert _assert_envelope(r, 400, param)["param"] == param
    r = _chat(client, {"model": "small", "messages": CHAT, "cascade": {"lambda": 1}})
    assert _assert_envelope(r, 400, "model 'cascade' only")["param"] == "cascade"


# -- direct calls ----------------------------------------------------------------------------------------


def test_direct_call_goes_to_the_named_model(client: TestClient, handles: dict[str, FakeHandle]) -> None:
    r = _chat(client, {"model": "small", "messages": CHAT, "max_tokens": 8})
    assert r.status_code == 200, r.text
    reply = r.json()
    assert reply == handles["small"].response("chat", {"max_tokens": 8})  # passed through as is
    assert r.headers["x-cascade-served-model"] == "small" and r.headers["x-cascade-stages"] == "1"
    # The engine's prefill (1 ms) plus decode (7 tokens after the first at 1 ms), queueing excluded.
    assert r.headers["x-cascade-cost-gpu-ms"] == "8.000"
    endpoint, sent = handles["small"].calls[-1]
    assert endpoint == "chat" and sent == {"model": "small", "messages": CHAT, "max_tokens": 8}


def test_direct_completions(client: TestClient, handles: dict[str, FakeHandle]) -> None:
    r = client.post("/v1/completions", json={"model": "large", "prompt": "2 + 2 =", "max_tokens": 4, "logprobs": 1},
                    headers=AUTH)
    assert r.status_code == 200 and r.json()["choices"][0]["logprobs"]["token_logprobs"] == [-0.1] * 4
    assert handles["large"].calls[-1][0] == "completions"


def test_replica_error_body_is_forwarded_as_an_envelope(client: TestClient, handles: dict[str, FakeHandle]) -> None:
    handles["small"].reject = {"error": {"message": "temperature: must be >= 0", "type": "BadRequestError",
                                         "param": "temperature", "code": 400}}
    r = _chat(client, {"model": "small", "messages": CHAT, "temperature": -1})
    assert _assert_envelope(r, 400, "temperature")["param"] == "temperature"


def test_a_stalled_direct_call_is_503_and_its_replica_call_cancelled(handles: dict[str, FakeHandle]) -> None:
    with TestClient(http_app(_controller(handles, stage_timeout_s=0.2))) as client:
        _wait_settled(client)
        handles["small"].stall_s = 30
        r = _chat(client, {"model": "small", "messages": CHAT})
        _assert_envelope(r, 503, "model 'small' did not answer within 0.2 s")
        assert r.headers["retry-after"] == "5"
        assert handles["small"].responses[-1].cancelled  # the engine slot is freed


def test_a_cancelled_request_cancels_its_replica_call(handles: dict[str, FakeHandle]) -> None:
    """Serve cancels a request whose client left: the cancellation reaches the replica call."""
    handles["small"].stall_s = 30
    controller = _controller(handles)
    body = json.dumps({"model": "small", "messages": CHAT}).encode()

    async def main() -> None:
        task = asyncio.create_task(controller.complete("chat", body, {"authorization": f"Bearer {API_KEY}"}))
        while not handles["small"].calls:
            await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert handles["small"].responses[-1].cancelled


def test_an_unknown_failure_is_a_generic_500_without_traceback(client: TestClient,
                                                               handles: dict[str, FakeHandle]) -> None:
    handles["large"].fail = KeyError("secret internal detail")
    r = _chat(client, {"model": "large", "messages": CHAT})
    err = _assert_envelope(r, 500, "model 'large' failed: internal server error (KeyError)")
    assert err["type"] == "InternalServerError" and "secret" not in r.text and "Traceback" not in r.text


# -- cascades --------------------------------------------------------------------------------------------


def test_cascade_call_escalates_and_traces_every_stage(client: TestClient) -> None:
    r = _chat(client, {"model": "cascade", "messages": CHAT, "max_tokens": 8, "cascade": {"lambda": 0}})
    assert r.status_code == 200, r.text
    reply = r.json()
    trace = reply["cascade"]
    assert list(trace["cost_estimates_gpu_ms"]) == ["small", "large"]  # cheapest first, as measured
    assert [(s["model"], s["decision"]) for s in trace["stages"]] == [("small", "escalate"), ("large", "accept")]
    assert reply["model"] == "large" and trace["selected_stage"] == 1
    assert reply["usage"] == {"prompt_tokens": 20, "completion_tokens": 16, "total_tokens": 36}
    assert "metrics" not in reply and "logprobs" not in reply["choices"][0]
    assert r.headers["x-cascade-served-model"] == "large" and r.headers["x-cascade-stages"] == "2"
    assert float(r.headers["x-cascade-cost-gpu-ms"]) == trace["total_gpu_ms"]


def test_cascade_with_huge_lambda_stays_on_the_cheapest(client: TestClient) -> None:
    r = _chat(client, {"model": "cascade", "messages": CHAT, "cascade": {"lambda": 1e9}})
    assert [(s["model"], s["decision"]) for s in r.json()["cascade"]["stages"]] == [("small", "accept")]


def test_cascade_stream_replays_the_accepted_answer_with_usage_and_trace(client: TestClient) -> None:
    body = {"model": "cascade", "messages": CHAT, "max_tokens": 8, "cascade": {"lambda": 0}}
    whole = _chat(client, body).json()
    r = _chat(client, {**body, "stream": True, "stream_options": {"include_usage": True}})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["x-cascade-served-model"] == "large"
    events = _events(r.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == whole["choices"][0]["message"]["content"]
    assert len([c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]) == 6  # a word each
    assert {c["id"] for c in chunks} == {whole["id"]}
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    usage = chunks[-1]
    assert usage["choices"] == [] and usage["usage"] == whole["usage"]
    assert [s["model"] for s in usage["cascade"]["stages"]] == ["small", "large"]
    no_usage = _events(_chat(client, {**body, "stream": True}).text)
    assert no_usage[-1] == "[DONE]" and all("usage" not in c for c in no_usage[:-1])


def test_cascade_completions_stream(client: TestClient) -> None:
    body = {"model": "cascade", "prompt": "2 + 2 =", "max_tokens": 4, "cascade": {"lambda": 1e9}, "stream": True}
    events = _events(client.post("/v1/completions", json=body, headers=AUTH).text)
    assert "".join(c["choices"][0]["text"] for c in events[:-1]) == "The answer of small is four."
    assert all(c["object"] == "text_completion" for c in events[:-1])


def test_a_failed_stage_is_skipped_and_its_replica_probed_again(
    client: TestClient, handles: dict[str, FakeHandle]
) -> None:
    handles["small"].fail = ConnectionResetError("replica died")
    r = _chat(client, {"model": "cascade", "messages": CHAT, "cascade": {"lambda": 1e9}})
    stages = r.json()["cascade"]["stages"]
    assert [(s["model"], s["decision"]) for s in stages] == [("small", "error"), ("large", "accept")]
    assert stages[0]["error"] == "ConnectionResetError: replica died"
    assert client.get("/health").json()["models"]["small"] == "starting"  # re-probed before it is used again


# -- direct streams --------------------------------------------------------------------------------------


def test_direct_streaming_passes_through(client: TestClient, handles: dict[str, FakeHandle]) -> None:
    body = {"model": "large", "messages": CHAT, "stream": True, "stream_options": {"include_usage": True}}
    r = _chat(client, body)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["x-cascade-served-model"] == "large"
    assert r.text == "".join(handles["large"].stream_lines(body))
    _chat(client, body)
    # One configured stream handle per model, made once and reused.
    assert {m: h.options_calls for m, h in handles.items()} == {"small": 1, "large": 1}


def test_direct_stream_failures(client: TestClient, handles: dict[str, FakeHandle]) -> None:
    body = {"model": "small", "messages": CHAT, "stream": True}
    handles["small"].fail_mid_stream = ConnectionResetError("engine died")
    events = _events(_chat(client, body).text)
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert events[-1]["error"]["message"] == "model 'small' failed mid-stream (ConnectionResetError)"
    assert handles["small"].streams[-1].cancelled
    handles["small"].reject = {"error": {"message": "unknown field 'x'", "param": "x", "code": 400}}
    _assert_envelope(_chat(client, body), 400, "unknown field 'x'")


def test_a_stream_that_does_not_start_is_503(handles: dict[str, FakeHandle]) -> None:
    with TestClient(http_app(_controller(handles, stage_timeout_s=0.2))) as client:
        _wait_settled(client)
        handles["large"].stall_s = 30
        r = _chat(client, {"model": "large", "messages": CHAT, "stream": True})
        _assert_envelope(r, 503, "model 'large' did not start answering within 0.2 s")
        assert r.headers["retry-after"] == "5" and handles["large"].streams[-1].cancelled


# -- metrics and health ----------------------------------------------------------------------------------


def test_metrics_count_requests_stages_escalations_and_cost(client: TestClient) -> None:
    assert _chat(client, {"model": "small", "messages": CHAT}).status_code == 200
    assert _chat(client, {"model": "cascade", "messages": CHAT, "cascade": {"lambda": 0}}).status_code == 200
    assert _chat(client, {"model": "cascade", "messages": CHAT}, headers={}).status_code == 401
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    for line in [
        'cascade_requests_total{outcome="ok",route="chat",served_model="small"} 1.0',
        'cascade_requests_total{outcome="ok",route="chat",served_model="large"} 1.0',
        'cascade_requests_total{outcome="http_401",route="chat",served_model="none"} 1.0',
        'cascade_stage_calls_total{decision="escalate",model="small"} 1.0',
        'cascade_stage_calls_total{decision="accept",model="large"} 1.0',
        'cascade_escalations_total{from_model="small",to_model="large"} 1.0',
        "cascade_request_gpu_seconds_count 2.0",
        "cascade_route_decision_seconds_count 3.0",  # run small, run large, stop
    ]:
        assert line in text, line
    for model in ("small", "large"):
        for phase in ("prefill", "decode"):
            assert f'cascade_cost_model_seconds_per_token{{model="{model}",phase="{phase}"}}' in text
    assert "cascade_cost_model_live_correction{" not in text  # the interim cost model has none


def test_health_is_503_until_a_probe_answers(handles: dict[str, FakeHandle]) -> None:
    for handle in handles.values():
        handle.down = True
    sleep = FakeSleep()
    with TestClient(http_app(_controller(handles, sleep=sleep))) as client:
        r = client.get("/health")
        assert r.status_code == 503
        assert r.json() == {"status": "unavailable", "models": {"small": "starting", "large": "starting"},
                            "cost_model": "settling"}
        models = client.get("/v1/models", headers=AUTH).json()["data"]
        assert [m["ready"] for m in models] == [False, False, False]
        r = _chat(client, {"model": "cascade", "messages": CHAT})
        _assert_envelope(r, 503, "no model replica is ready yet")
        assert r.headers["retry-after"] == "5"
        handles["large"].down = False
        body = _wait_health(client, lambda body: body["status"] == "ok")
        assert body["models"] == {"small": "starting", "large": "ready"} and body["status"] == "ok"
        assert client.get("/health").status_code == 200
        served = _chat(client, {"model": "cascade", "messages": CHAT}).json()
        assert [s["model"] for s in served["cascade"]["stages"]] == ["large"]  # only the ready replica
    assert set(sleep.asked_s) == {2.0}  # failed probes waited their retry pause (on the fake clock)


# -- the route table and the constructor -----------------------------------------------------------------


def test_one_route_table_serves_every_route() -> None:
    app = http_app(_controller())
    routes = {(m, r.path) for r in app.routes if hasattr(r, "methods") and r.name != "openapi"
              for m in r.methods if m != "HEAD"}
    assert {(r.method, r.path) for r in ROUTES} == {
        ("POST", "/v1/chat/completions"), ("POST", "/v1/completions"), ("GET", "/v1/models"),
        ("GET", "/v1/models/{model_id:path}"), ("GET", "/health"), ("GET", "/metrics"),
    }
    assert {(r.method, r.path) for r in ROUTES} <= routes


def test_handle_api_answers_dicts() -> None:
    controller = _controller()
    ok = asyncio.run(controller.call("chat", {"model": "small", "messages": CHAT, "stream": True}))
    assert ok["model"] == "small" and "usage" in ok
    err = asyncio.run(controller.call("chat", {"model": "nope", "messages": CHAT}))
    assert err["error"]["code"] == "model_not_found"


def test_settings_and_replicas_must_agree() -> None:
    settings = ControllerSettings(policy="cascade", lambda_=0.5, max_depth=3, stage_timeout_s=1.0)
    with pytest.raises(ValueError, match="max_depth: 3 exceeds the 2 replicas"):
        CascadeController({m: FakeHandle(m) for m in ("small", "large")}, settings, LogprobQuality(),
                          TokenCostModel())
    with pytest.raises(ValueError, match="at least one model"):
        CascadeController({}, settings, LogprobQuality(), TokenCostModel())
    with pytest.raises(ValueError, match="'cascade' is the virtual model"):
        CascadeController({"cascade": FakeHandle("small")}, ControllerSettings("cascade", 0.5, 1, 1.0),
                          LogprobQuality(), TokenCostModel())


@pytest.mark.parametrize(("change", "match"), [
    ({"policy": "best"}, "policy must be one of"),
    ({"lambda_": -1.0}, "lambda_ must be a finite number"),
    ({"lambda_": float("inf")}, "lambda_ must be a finite number"),
    ({"policy": "threshold_cascade", "lambda_": 1.5}, "1 - the quality threshold"),
    ({"max_depth": 0}, "max_depth must be an int >= 1"),
    ({"stage_timeout_s": 0.0}, "stage_timeout_s must be a positive number"),
])
def test_settings_are_validated(change: dict[str, Any], match: str) -> None:
    base: dict[str, Any] = {"policy": "cascade_routing", "lambda_": 0.5, "max_depth": 2, "stage_timeout_s": 1.0}
    with pytest.raises(ValueError, match=match):
        ControllerSettings(**{**base, **change})


def test_the_controller_module_does_not_need_ray() -> None:
    """The plain class and its HTTP face import without Ray (the Serve ingress imports it lazily)."""
    import subprocess
    import sys

    code = ("import sys, serve.controller, serve.ingress, serve.errors\n"
            "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] == 'ray')))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert result.stdout.strip() == ""


# -- hostile and malformed input (reliability issue, finding 5): envelopes, never a plain-text 500 ----------


@pytest.mark.parametrize("raw", ["NaN", "Infinity", "-1", "0", '"abc"', "[1]", "{}", "true", "1.5", "1e999"])
@pytest.mark.parametrize("name", ["max_tokens", "max_completion_tokens"])
@pytest.mark.parametrize("model", ["cascade", "small"])
def test_token_limits_that_are_not_positive_integers_are_400s(client: TestClient, name: str, raw: str,
                                                               model: str) -> None:
    body = f'{{"model": "{model}", "messages": [{{"role": "user", "content": "hi"}}], "{name}": {raw}}}'
    r = client.post("/v1/chat/completions", content=body, headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == name


def test_deeply_nested_json_is_a_400(client: TestClient) -> None:
    raw = '{"model": "cascade", "messages": ' + "[" * 100_000 + "]" * 100_000 + "}"
    r = client.post("/v1/chat/completions", content=raw, headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == 400 and "nests too deeply" in r.json()["error"]["message"]


def test_a_request_id_is_echoed_once_and_only_when_it_is_header_safe(client: TestClient) -> None:
    body = {"model": "small", "messages": CHAT}
    r = _chat(client, body, {**AUTH, "x-request-id": "abc-123"})
    assert r.headers.get_list("x-request-id") == ["abc-123"]
    non_ascii = ("x-request-id", "caf\xe9 \xfc".encode("latin-1"))
    r = client.post("/v1/chat/completions", json=body, headers=[("Authorization", AUTH["Authorization"]), non_ascii])
    assert r.status_code == 200
    echoed = r.headers.get_list("x-request-id")
    assert len(echoed) == 1 and re.fullmatch(r"[0-9a-f]{32}", echoed[0])


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/v1/nothing", 404), ("POST", "/v2/chat/completions", 404), ("GET", "/v1/chat/completions", 405),
    ("DELETE", "/v1/models", 405), ("PUT", "/health", 405),
])
def test_unknown_paths_and_methods_answer_openai_envelopes(client: TestClient, method: str, path: str,
                                                           status: int) -> None:
    r = client.request(method, path, headers=AUTH)
    assert r.status_code == status
    error = r.json()["error"]
    assert error["code"] == status and error["type"] and path in error["message"]


@pytest.mark.parametrize("model", ["cascade", "small"])
@pytest.mark.parametrize(("extra", "param"), [
    ({"stream_options": {"include_usage": True}}, "stream_options"), ({"top_logprobs": 2}, "top_logprobs"),
])
def test_options_that_need_another_option_are_400s_on_every_model(client: TestClient, model: str,
                                                                  extra: dict[str, Any], param: str) -> None:
    """Regression (reliability issue, finding 6): never a 503 + Retry-After a client SDK would retry."""
    r = _chat(client, {"model": model, "messages": CHAT, **extra})
    assert r.status_code == 400 and r.json()["error"]["param"] == param and "Retry-After" not in r.headers


@pytest.mark.parametrize(("extra", "param"), [({"n": 2}, "n"), ({"logprobs": True}, "logprobs")])
def test_a_streamed_cascade_refuses_what_its_replay_would_drop(client: TestClient, extra: dict[str, Any],
                                                               param: str) -> None:
    """Regression (reliability issue, finding 9): the replay sent choice 0 only and no logprobs."""
    r = _chat(client, {"model": "cascade", "messages": CHAT, "stream": True, **extra})
    assert r.status_code == 400 and r.json()["error"]["param"] == param
    assert _chat(client, {"model": "cascade", "messages": CHAT, **extra}).status_code == 200  # unstreamed: fine


# -- backpressure (reliability issue, finding 4) -----------------------------------------------------------


def test_requests_past_max_in_flight_are_shed_at_once_with_an_envelope() -> None:
    handles = {m: FakeHandle(m) for m in ("small", "large")}
    controller = _controller(handles, max_in_flight=2)
    body = json.dumps({"model": "small", "messages": CHAT}).encode()
    auth = {"authorization": AUTH["Authorization"]}

    async def burst() -> list[Any]:
        handles["small"].stall_s = 0.3
        t0 = time.monotonic()
        replies = await asyncio.gather(*(controller.complete("chat", body, auth) for _ in range(5)))
        return [(r, time.monotonic() - t0) for r in replies]

    replies = asyncio.run(burst())
    statuses = sorted(r.status for r, _ in replies)
    assert statuses == [200, 200, 503, 503, 503]
    for reply, _ in replies:
        if reply.status == 503:
            assert reply.body["error"]["code"] == "overloaded" and reply.headers["Retry-After"] == "1"
    shed = 'cascade_requests_total{outcome="http_503",route="chat",served_model="none"} 3.0'
    assert shed in controller.metrics().body


def test_a_stream_holds_its_place_in_max_in_flight_until_its_last_line() -> None:
    handles = {m: FakeHandle(m) for m in ("small", "large")}
    controller = _controller(handles, max_in_flight=1)
    auth = {"authorization": AUTH["Authorization"]}
    streamed = json.dumps({"model": "small", "messages": CHAT, "stream": True}).encode()
    plain = json.dumps({"model": "small", "messages": CHAT}).encode()

    async def main() -> None:
        reply = await controller.complete("chat", streamed, auth)
        assert reply.status == 200
        assert (await controller.complete("chat", plain, auth)).status == 503  # the stream still runs
        assert [line async for line in reply.body]  # type: ignore[union-attr]
        assert (await controller.complete("chat", plain, auth)).status == 200
        # A stream whose response was never sent (the client left first) gives its place back too.
        dropped = await controller.complete("chat", streamed, auth)
        assert dropped.status == 200
        del dropped
        gc.collect()
        assert (await controller.complete("chat", plain, auth)).status == 200

    asyncio.run(main())


def test_a_cascade_at_its_request_timeout_returns_its_best_answer_so_far(handles: dict[str, FakeHandle]) -> None:
    with TestClient(http_app(_controller(handles, request_timeout_s=0.6))) as client:
        _wait_settled(client)
        handles["large"].stall_s = 30
        t0 = time.monotonic()
        r = _chat(client, {"model": "cascade", "messages": CHAT, "cascade": {"lambda": 0}})
        assert time.monotonic() - t0 < 3.0  # the stage timeout is 5 s, the large model's stall 30 s
        assert r.status_code == 200, r.text
        trace = r.json()["cascade"]
        assert r.json()["model"] == "small" and trace["deadline_reached"]
        assert [s["decision"] for s in trace["stages"]] == ["accept", "error"]
        assert handles["large"].responses[-1].cancelled
        # Without a deadline in the way, the same request escalates.
        handles["large"].stall_s = 0
        r = _chat(client, {"model": "cascade", "messages": CHAT, "cascade": {"lambda": 0}})
        assert r.json()["model"] == "large" and not r.json()["cascade"]["deadline_reached"]


def test_a_request_with_no_answer_by_its_timeout_is_503(handles: dict[str, FakeHandle]) -> None:
    with TestClient(http_app(_controller(handles, request_timeout_s=0.4))) as client:
        _wait_settled(client)
        for handle in handles.values():
            handle.stall_s = 30
        r = _chat(client, {"model": "cascade", "messages": CHAT})
        _assert_envelope(r, 503, "no model answered within the request timeout")
        assert r.headers["retry-after"]
        r = _chat(client, {"model": "small", "messages": CHAT})  # a direct call: the same deadline
        _assert_envelope(r, 503, "the request did not finish within its timeout (0.4 s)")


def test_the_request_timeout_bounds_a_whole_stream(handles: dict[str, FakeHandle]) -> None:
    with TestClient(http_app(_controller(handles, request_timeout_s=0.5))) as client:
        _wait_settled(client)
        handles["small"].line_gap_s = 0.2  # each line within the stage timeout, the whole stream not
        t0 = time.monotonic()
        events = _events(_chat(client, {"model": "small", "messages": CHAT, "stream": True}).text)
        assert time.monotonic() - t0 < 2.0
        assert "did not finish within its timeout (0.5 s)" in events[-1]["error"]["message"]
        assert handles["small"].streams[-1].cancelled


def test_a_body_over_the_limit_is_413_before_it_is_read_whole(handles: dict[str, FakeHandle]) -> None:
    with TestClient(http_app(_controller(handles), max_body_bytes=2048)) as client:
        big = json.dumps({"model": "small", "messages": [{"role": "user", "content": "x" * 5000}]})
        r = client.post("/v1/chat/completions", content=big, headers={**AUTH, "content-type": "application/json"})
        assert r.status_code == 413 and "2048 bytes" in r.json()["error"]["message"]

        def chunks() -> Any:  # no Content-Length: counted as it arrives
            for _ in range(10):
                yield b"x" * 1000

        r = client.post("/v1/chat/completions", content=chunks(), headers=AUTH)
        assert r.status_code == 413 and r.json()["error"]["code"] == 413
        assert not handles["small"].calls or all(e != "chat" for e, _ in handles["small"].calls)
        assert _chat(client, {"model": "small", "messages": CHAT}).status_code == 200  # small bodies pass


@pytest.mark.parametrize("model", ["cascade", "small"])
def test_openai_fields_that_cannot_change_the_answer_are_accepted_and_dropped(
    client: TestClient, handles: dict[str, FakeHandle], model: str
) -> None:
    """Reliability issue, finding 9: current clients send these; the replica (vLLM) does not know them."""
    extra = {"metadata": {"team": "a"}, "store": False, "service_tier": "auto", "prompt_cache_key": "k",
             "safety_identifier": "u1"}
    r = _chat(client, {"model": model, "messages": CHAT, **extra})
    assert r.status_code == 200, r.text
    forwarded = [body for h in handles.values() for _, body in h.calls if body.get("messages") == CHAT]
    assert forwarded and all(extra.keys().isdisjoint(body) for body in forwarded)


@pytest.mark.parametrize("field", ["modalities", "audio", "prediction", "web_search_options", "function_call"])
def test_openai_fields_this_server_cannot_honour_are_refused_by_name(client: TestClient, field: str) -> None:
    r = _chat(client, {"model": "cascade", "messages": CHAT, field: {}})
    assert r.status_code == 400 and r.json()["error"]["param"] == field
    assert "not supported" in r.json()["error"]["message"]


def test_a_model_whose_replica_vanished_leaves_the_cascade_within_a_watch_period(
    handles: dict[str, FakeHandle]
) -> None:
    """Reliability issue, finding 3: a replica killed outright left Serve's router holding stages for it
    until their timeout. The watch (``serve.watch``) takes the model out within a period; its probes
    bring it back once it answers."""
    alive = {"small", "large"}
    # The stage timeout is also the probes': they retry soon.
    controller = _controller(handles, stage_timeout_s=1.0, replica_watch=lambda: set(alive), watch_period_s=0.02)
    with TestClient(http_app(controller)) as client:
        _wait_settled(client)
        alive.discard("small")
        handles["small"].stall_s = 60.0  # what Serve's router does for a model without a replica
        health = _wait_health(client, lambda h: h["models"]["small"] == "starting")
        assert health["models"] == {"small": "starting", "large": "ready"}
        t0 = time.monotonic()
        r = _chat(client, {"model": "cascade", "messages": CHAT, "cascade": {"lambda": 1e9}})
        assert r.status_code == 200 and r.json()["model"] == "large" and time.monotonic() - t0 < 1.0
        assert all(s["model"] == "large" for s in r.json()["cascade"]["stages"])  # small was not even tried
        alive.add("small")
        handles["small"].stall_s = 0.0
        assert _wait_health(client, lambda h: h["models"]["small"] == "ready")["models"]["small"] == "ready"
