"""Requests generated from the published ``/openapi.json`` by schemathesis, valid and invalid: every answer
is what the document promises (status, media type, body and headers), an OpenAI envelope with a one-line
message when it is an error, JSON or server-sent JSON events when it is not, and never a 5xx but a 503
that says when to retry (reliability issue, "schema-driven fuzzing").

Runs over ``test_fuzz``'s fake replicas, which answer whatever they are sent, so a few hundred requests take
seconds once vLLM's request models are imported for the document. The campaign against the real fleet is
``scripts/fuzz_live.py``; it runs here too, over HTTP against the same routes, where it must find nothing.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import schemathesis
import test_fuzz
from hypothesis import HealthCheck, given, settings, strategies as st
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.testclient import TestClient
from test_controller_http import API_KEY, AUTH, _controller
from test_fuzz import SloppyHandle, check_envelope

from scripts import fuzz_live
from serve.ingress import http_app

pytestmark = pytest.mark.slow  # importing vLLM for the document: 10-20 s

# The document's promises, checked on every answer; whether an invalid request is refused is the
# replica's part (the fakes accept anything), checked by scripts/fuzz_live.py on the real fleet.
CHECKS = [status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance]
MODELS = ("cascade", "small", "large")
CASES_PER_MODE = 150
ENGINE_MODELS = "ray.llm._internal.serve.core.configs.openai_api_models"

# test_fuzz's routes over its fake replicas, settled (pytest finds a fixture by its name in the module).
fuzz_client = test_fuzz.fuzz_client


@pytest.fixture(scope="module")
def published(fuzz_client: TestClient) -> Any:
    """The schema the endpoint publishes, as schemathesis reads it (/metrics is not the OpenAI API)."""
    pytest.importorskip(ENGINE_MODELS, reason="the engine's request models need the cpu or gpu extra")
    response = fuzz_client.get("/openapi.json")
    assert response.status_code == 200
    return schemathesis.openapi.from_dict(response.json()).exclude(path="/metrics")


def send(client: TestClient, case: Any, headers: dict[str, str]) -> Any:
    """``case`` as schemathesis would send it (its headers, query and serialized body), through ``client``."""
    kwargs = case.as_transport_kwargs(base_url=str(client.base_url), headers=headers)
    content = json.dumps(kwargs["json"]).encode() if "json" in kwargs else kwargs.get("data")
    return client.request(kwargs["method"], kwargs["url"], params=kwargs.get("params") or None,
                          headers=dict(kwargs["headers"]), content=content)


def assert_json_answer(response: Any) -> None:
    """A 2xx is a JSON object, or server-sent events whose data are JSON objects (or the final [DONE])."""
    if response.headers["content-type"].startswith("text/event-stream"):
        blocks = response.text.split("\n\n")
        assert blocks[-1] == "" and blocks[-2] == "data: [DONE]", response.text[-200:]
        for block in blocks[:-2]:
            assert block.startswith("data: ") and isinstance(json.loads(block.removeprefix("data: ")), dict), block
        return
    assert response.headers["content-type"] == "application/json", response.headers["content-type"]
    assert isinstance(response.json(), dict)


@pytest.mark.parametrize("mode", list(GenerationMode))
def test_generated_requests_get_what_the_document_promises(published: Any, fuzz_client: TestClient,
                                                           mode: GenerationMode) -> None:
    """Most requests carry the key and name a served model (a generated key or model id is a 401 or a 404
    before anything else is read); the rest keep what schemathesis generated."""

    @settings(max_examples=CASES_PER_MODE, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(case=published.as_strategy(mode), model=st.sampled_from(MODELS) | st.none(), unkeyed=st.integers(0, 9))
    def check(case: Any, model: str | None, unkeyed: int) -> None:
        if model is not None and isinstance(case.body, dict) and "model" in case.body:
            case.body["model"] = model
        response = send(fuzz_client, case, {} if unkeyed == 9 else AUTH)
        check_envelope(response)
        if response.status_code < 300:
            assert_json_answer(response)
        case.validate_response(response, checks=CHECKS)

    check()


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """``app`` served over HTTP by uvicorn on a thread (its lifespan run), until the block ends."""
    uvicorn = pytest.importorskip("uvicorn")
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", ws="none"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)


def test_the_live_campaign_finds_nothing_on_the_fast_harness(tmp_path: Path) -> None:
    """``scripts/fuzz_live.py`` end to end (schema fetched, requests generated, adjusted, sent, judged)."""
    pytest.importorskip(ENGINE_MODELS, reason="the engine's request models need the cpu or gpu extra")
    import httpx

    out = tmp_path / "fuzz.json"
    app = http_app(_controller({m: SloppyHandle(m) for m in ("small", "large")}), max_body_bytes=4096)
    with serving(app) as url:
        deadline = time.monotonic() + 10
        while httpx.get(f"{url}/health").json()["cost_model"] != "settled" and time.monotonic() < deadline:
            time.sleep(0.01)
        rc = fuzz_live.main(["--url", url, "--api-key", API_KEY, "--requests", "200", "--timeout-s", "30",
                             "--json", str(out)])
    result = json.loads(out.read_text())
    assert rc == 0, result["examples"]
    assert result["total"] == 200 and set(result["by_route"]) == set(fuzz_live.ROUTE_SHARES)
    assert {"200", "400"} <= set(result["by_route"]["POST /v1/chat/completions"])
