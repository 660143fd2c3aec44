"""``/openapi.json`` publishes what the endpoint takes and answers: the engine's request models as the
completion bodies (with the controller's own rules and the ``cascade`` knobs), the error envelope of
every failure, and the same document from both builders of ``serve.ingress``.

Requests generated from this document are ``test_schema_fuzz.py``'s.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient
from test_controller_http import _controller

from serve.cascade_run import KNOBS, POLICIES
from serve.controller import IGNORED_FIELDS
from serve.errors import ApiError, error_body
from serve.ingress import ROUTES, http_app

ENGINE_MODELS = "ray.llm._internal.serve.core.configs.openai_api_models"
COMPONENTS = "#/components/schemas/"


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    """What ``http_app`` publishes (vLLM's request models imported with their warnings silenced)."""
    pytest.importorskip(ENGINE_MODELS, reason="the engine's request models need the cpu or gpu extra")
    response = TestClient(http_app(_controller())).get("/openapi.json")
    assert response.status_code == 200
    published: dict[str, Any] = response.json()
    return published


def _component(document: dict[str, Any], ref: str) -> dict[str, Any]:
    assert ref.startswith(COMPONENTS), ref
    schema: dict[str, Any] = document["components"]["schemas"][ref.removeprefix(COMPONENTS)]
    return schema


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def _operation(document: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    operation: dict[str, Any] = document["paths"][path.replace(":path}", "}")][method.lower()]
    return operation


@pytest.mark.slow  # imports vLLM: 10-20 s
def test_every_route_is_published_and_every_ref_resolves(document: dict[str, Any]) -> None:
    for route in ROUTES:
        operation = _operation(document, route.method, route.path)
        assert "200" in operation["responses"]
        assert ("security" in operation) == route.path.startswith("/v1/"), route.path  # /health, /metrics: open
    assert document["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer", "description": "one of the fleet's API keys"}
    refs = set(_refs(document))
    assert refs and all(_component(document, ref) for ref in refs)


@pytest.mark.slow
@pytest.mark.parametrize(("path", "model", "required_input"), [
    ("/v1/chat/completions", "ChatCompletionRequest", "messages"),
    ("/v1/completions", "CompletionRequest", "prompt"),
])
def test_completion_bodies_are_the_engines_request_models(document: dict[str, Any], path: str, model: str,
                                                          required_input: str) -> None:
    """Every field the replica's model reads, plus ``cascade`` and the fields the controller drops; no
    other field (the replica refuses one it does not know); what the controller requires, required."""
    engine_model = getattr(sys.modules[ENGINE_MODELS], model)
    body_ref = _operation(document, "POST", path)["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert body_ref == COMPONENTS + model
    body = _component(document, body_ref)
    assert set(body["properties"]) == set(engine_model.model_fields) | {"cascade"} | IGNORED_FIELDS
    assert body["additionalProperties"] is False
    assert {"model", required_input} <= set(body["required"])
    assert body["properties"]["stream"]["type"] == "boolean"  # the controller refuses null
    knobs = body["properties"]["cascade"]["anyOf"]
    assert {"$ref": COMPONENTS + "CascadeKnobs"} in knobs and {"type": "null"} in knobs


@pytest.mark.slow
def test_the_cascade_knobs_are_what_parse_knobs_reads(document: dict[str, Any]) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    knobs = document["components"]["schemas"]["CascadeKnobs"]
    assert set(knobs["properties"]) == KNOBS
    assert knobs["properties"]["policy"]["enum"] == list(POLICIES)
    validator = jsonschema.Draft202012Validator(knobs)
    assert validator.is_valid({"lambda": 0.5, "max_depth": 2, "policy": POLICIES[0], "models": ["small"],
                               "stage_timeout_s": 1.5})
    for refused in ({"lamda": 1}, {"lambda": -1}, {"max_depth": 0}, {"models": []}, {"stage_timeout_s": 0},
                    {"request_timeout_s": 0.5}):
        assert not validator.is_valid(refused), refused


@pytest.mark.slow
def test_errors_are_documented_as_the_envelope_error_body_builds(document: dict[str, Any]) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    envelope = jsonschema.Draft202012Validator(document["components"]["schemas"]["ErrorResponse"])
    for body in (error_body(400, "bad", param="x"), error_body(404, "no", code="model_not_found"),
                 ApiError(503, "busy", code="overloaded", retry_after_s=1).body(), error_body(500, "internal")):
        assert envelope.is_valid(body), body
    assert not envelope.is_valid({"error": {"message": "no type, param or code"}})
    for route in ROUTES:
        if route.path == "/health":  # its 503 is the health document: no replica is ready yet
            continue
        for status, response in _operation(document, route.method, route.path)["responses"].items():
            if status[0] in "45":
                assert response["content"]["application/json"]["schema"] == {"$ref": COMPONENTS + "ErrorResponse"}
                assert ("Retry-After" in response.get("headers", {})) == (status in ("429", "503")), (route, status)


@pytest.mark.slow
def test_both_builders_publish_the_same_document(document: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """The Serve ingress's app, as Serve freezes it (class-based routes, pickled), publishes what
    ``http_app`` does; its schemas were built in the builder's process, so its replica never imports vLLM."""
    pytest.importorskip("ray.serve", reason="ray[serve] is not installed (the cpu/gpu extra)")
    from ray import cloudpickle, serve

    from serve.ingress import serve_ingress

    ingress = serve.ingress
    apps: list[Any] = []

    def recording_ingress(app: Any) -> Any:
        apps.append(app)
        return ingress(app)

    monkeypatch.setattr(serve, "ingress", recording_ingress)
    serve_ingress()
    frozen = cloudpickle.loads(cloudpickle.dumps(apps[0]))
    assert frozen.openapi() == document


def test_without_the_engine_models_the_bodies_are_published_loose(monkeypatch: pytest.MonkeyPatch) -> None:
    """A controller-only install (no vLLM) still answers ``/openapi.json``, with plain-object bodies."""
    monkeypatch.setitem(sys.modules, ENGINE_MODELS, None)  # importing it raises ImportError
    response = TestClient(http_app(_controller())).get("/openapi.json")
    assert response.status_code == 200
    body = response.json()["components"]["schemas"]["ChatCompletionRequest"]
    assert body["type"] == "object" and body["required"] == ["model", "messages"]
