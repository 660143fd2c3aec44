"""Hostile and malformed requests, generated: every answer is an OpenAI envelope with the right status,
never a 5xx but a shed 503, never a hang (reliability issue, findings 1, 5 and 6).

Runs the controller's routes over fake replicas (``test_controller_http``'s), so thousands of requests
take seconds; the real-stack counterparts are ``test_serving_e2e.py``'s hostile-input tests.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from starlette.testclient import TestClient
from test_controller_http import API_KEY, AUTH, FakeHandle, _controller, _wait_settled

from serve.ingress import http_app

ALLOWED = {200, 400, 401, 404, 405, 413, 503}

scalars = st.none() | st.booleans() | st.integers(-10**20, 10**20) | st.floats() | st.text(max_size=12)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)
# A request that is valid but for one to three fields, each drawn valid or hostile: most of what the
# generator spends then reaches the code behind the first check, where the bugs were.
VALID: dict[str, Any] = {
    "model": st.sampled_from(["cascade", "small", "large"]),
    "messages": st.just([{"role": "user", "content": "What is 2 + 2?"}]),
    "prompt": st.text(max_size=40),
    "cascade": st.fixed_dictionaries({}, optional={"lambda": st.floats(0, 1e9), "max_depth": st.integers(1, 2),
                                                   "policy": st.sampled_from(["routing", "cascade", "cascade_routing",
                                                                              "threshold_cascade"]),
                                                   "models": st.just(["small"])}),
    "max_tokens": st.integers(1, 64), "max_completion_tokens": st.integers(1, 64), "stream": st.booleans(),
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}), "n": st.integers(1, 3),
    "logprobs": st.booleans(), "top_logprobs": st.integers(0, 5), "temperature": st.floats(0, 2),
    "metadata": st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=2), "store": st.booleans(),
    "seed": st.integers(0, 2**31), "user": st.text(max_size=8), "x_unknown": json_values,
}
HOSTILE_VALUES = json_values | st.sampled_from([float("nan"), float("inf"), -1, 0, 10**30, "", "\ud800x", [1], {}])


@st.composite
def bodies(draw: Any) -> dict[str, Any]:
    endpoint_field = draw(st.sampled_from(["messages", "prompt"]))
    body = {"model": draw(VALID["model"]), endpoint_field: draw(VALID[endpoint_field])}
    for name in draw(st.lists(st.sampled_from(sorted(VALID)), min_size=1, max_size=3, unique=True)):
        body[name] = draw(HOSTILE_VALUES if draw(st.booleans()) else VALID[name])
    return body


raw_bodies = st.binary(max_size=64) | st.sampled_from([b"", b"[]", b"null", b"{", b'{"model": "cascade"', b"\xff\xfe"])


class SloppyHandle(FakeHandle):
    """A replica that answers whatever it is sent, as vLLM would once the request validated."""

    def response(self, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        return super().response(endpoint, {"logprobs": True, "max_tokens": 8})

    def stream_lines(self, body: dict[str, Any]) -> list[str]:
        return super().stream_lines({})


@pytest.fixture(scope="module")
def fuzz_client() -> Iterator[TestClient]:
    handles = {m: SloppyHandle(m) for m in ("small", "large")}
    with TestClient(http_app(_controller(handles), max_body_bytes=4096)) as client:
        _wait_settled(client)
        yield client


def check_envelope(response: Any) -> None:
    """An allowed status; any error an envelope with a one-line message; a 503 says when to retry."""
    assert response.status_code in ALLOWED, (response.status_code, response.text[:300])
    if response.status_code == 200:
        return
    error = response.json()["error"]
    assert isinstance(error["message"], str) and error["message"] and "\n" not in error["message"]
    assert isinstance(error["type"], str) and "Traceback" not in error["message"]
    if response.status_code == 503:
        assert "retry-after" in response.headers


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=bodies(), path=st.sampled_from(["/v1/chat/completions", "/v1/completions"]))
def test_generated_requests_get_envelopes_never_5xx(fuzz_client: TestClient, body: dict[str, Any],
                                                     path: str) -> None:
    raw = json.dumps(body, allow_nan=True).encode()
    check_envelope(fuzz_client.post(path, content=raw, headers={**AUTH, "content-type": "application/json"}))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=raw_bodies, key=st.sampled_from([API_KEY, "wrong", ""]),
       path=st.sampled_from(["/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/models/x", "/health",
                             "/metrics", "/v1/nothing", "/"]),
       method=st.sampled_from(["GET", "POST", "PUT", "DELETE"]))
def test_generated_raw_requests_on_every_route(fuzz_client: TestClient, raw: bytes, key: str, path: str,
                                               method: str) -> None:
    headers = {"Authorization": f"Bearer {key}", "content-type": "application/json"}
    response = fuzz_client.request(method, path, content=raw if method in ("POST", "PUT") else None,
                                   headers=headers)
    check_envelope(response)
