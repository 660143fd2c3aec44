"""The endpoint's ``/openapi.json``: the request bodies the replicas validate, the ``cascade`` knobs, and the
OpenAI error envelope every failure is answered with.

The completion routes read raw bytes (the controller parses them; the replica validates them with the
engine's own request models), so FastAPI sees no body to describe. Each route of ``serve.ingress.ROUTES``
carries its operation from here instead (:func:`completion_operation`, ... : FastAPI's ``openapi_extra``),
whose ``$ref``s name the components (:func:`components`) that :func:`publish` adds to the app's document:

- each completion body: the engine's request model as JSON schema, its ``$defs`` lifted into
  ``components.schemas``, with what the controller checks before any replica sees the request written in
  (:func:`request_schema`);
- ``CascadeKnobs``: the ``cascade`` object that ``serve.cascade_run.parse_knobs`` reads;
- ``ErrorResponse``: the envelope of ``serve.errors.error_body``.

The engine's models are vLLM's: importing them costs seconds and half a gigabyte, which the controller's
process must not pay (``serve.replica``), so ``serve.ingress`` turns them into JSON schema where vLLM is
loaded anyway. Without them (a controller-only install) the bodies are published as loose objects.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any, Literal

from fastapi import FastAPI
from pydantic import BaseModel

from serve.cascade_run import MIN_KNOB_TIMEOUT_S, POLICIES
from serve.controller import IGNORED_FIELDS

__all__ = [
    "BODIES", "ERROR_SCHEMA", "KNOBS_SCHEMA", "Endpoint", "completion_operation", "components", "health_operation",
    "metrics_operation", "model_operation", "models_operation", "publish", "request_schema",
]

Endpoint = Literal["chat", "completions"]
REF = "#/components/schemas/{model}"

# Each completion endpoint's body: the component it is published as, and the input the controller requires.
BODIES: dict[Endpoint, tuple[str, str]] = {
    "chat": ("ChatCompletionRequest", "messages"),
    "completions": ("CompletionRequest", "prompt"),
}

# ``serve.errors.error_body``: ``code`` is the HTTP status, or OpenAI's string code where it defines one.
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "additionalProperties": False,
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "additionalProperties": False,
            "properties": {
                "message": {"type": "string", "description": "one line"},
                "type": {"type": "string", "examples": ["BadRequestError", "ServiceUnavailableError"]},
                "param": {"type": ["string", "null"], "description": "the request field at fault"},
                "code": {"type": ["string", "integer"], "examples": [400, "model_not_found", "overloaded"]},
            },
        }
    },
}

# ``serve.cascade_run.parse_knobs``; tests/serve/test_openapi.py pins the properties to its KNOBS.
KNOBS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "description": "Per-request settings of the virtual model 'cascade' (the fleet's own when absent); "
                   "refused on any other model.",
    "properties": {
        "lambda": {"type": "number", "minimum": 0,
                   "description": "quality per GPU-second: how much a better answer may cost (threshold_cascade: "
                                  "1 - the quality threshold, at most 1)"},
        "max_depth": {"type": "integer", "minimum": 1, "description": "the most models one request may run"},
        "policy": {"enum": list(POLICIES)},
        "models": {"type": ["array", "null"], "items": {"type": "string"}, "minItems": 1,
                   "description": "served model ids the cascade may use (default: all)"},
        "stage_timeout_s": {"type": ["number", "null"], "minimum": MIN_KNOB_TIMEOUT_S,
                            "description": "seconds each stage may take, if tighter than the fleet's"},
        "request_timeout_s": {"type": ["number", "null"], "minimum": MIN_KNOB_TIMEOUT_S,
                              "description": "seconds the whole request may take, if tighter than the fleet's "
                                             "(past it, the best answer so far)"},
    },
}

_ERROR = {"application/json": {"schema": {"$ref": REF.format(model="ErrorResponse")}}}
_RETRY_AFTER = {"Retry-After": {"required": True, "description": "seconds to wait before retrying",
                                "schema": {"type": "integer", "minimum": 0}}}
_AUTH: list[dict[str, list[str]]] = [{"bearer": []}]
# One server-sent event of a stream (``itemSchema``, as FastAPI writes its own streams): a JSON chunk, an
# error envelope if the stream fails after its start, and [DONE] last.
_EVENT = {"type": "object", "required": ["data"],
          "properties": {"data": {"anyOf": [{"const": "[DONE]"},
                                            {"type": "string", "contentMediaType": "application/json",
                                             "contentSchema": {"type": "object"}}]}}}


def _error(description: str, *, retry: bool = False) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description, "content": _ERROR}
    if retry:
        response["headers"] = _RETRY_AFTER
    return response


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def completion_operation(endpoint: Endpoint) -> dict[str, Any]:
    """The operation of ``POST /v1/chat/completions`` or ``/v1/completions``."""
    component, _ = BODIES[endpoint]
    return {
        "requestBody": {"required": True,
                        "content": {"application/json": {"schema": {"$ref": REF.format(model=component)}}}},
        "security": _AUTH,
        "responses": {
            "200": {"description": "the completion; its chunks as server-sent events when stream is true",
                    "content": {"application/json": {"schema": {"type": "object"}},
                                "text/event-stream": {"itemSchema": _EVENT}}},
            "400": _error("the request is malformed, or the model refused it"),
            "401": _error("missing or invalid API key"),
            "404": _error("no such model"),
            "413": _error("the request body is over the endpoint's limit"),
            "429": _error("the model's replica is at capacity", retry=True),
            "4XX": _error("a model replica's own refusal"),
            "500": _error("internal server error (no detail)"),
            "503": _error("the endpoint (code 'overloaded') or the model is at capacity, unavailable, or did not "
                          "answer in time", retry=True),
            "5XX": _error("a model replica's own failure"),
        },
    }


def models_operation() -> dict[str, Any]:
    """The operation of ``GET /v1/models``."""
    card = {"$ref": REF.format(model="Model")}
    return {
        "security": _AUTH,
        "responses": {
            "200": _json("the virtual model 'cascade', then the fleet's",
                         {"type": "object", "required": ["object", "data"],
                          "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": card}}}),
            "401": _error("missing or invalid API key"),
        },
    }


def model_operation() -> dict[str, Any]:
    """The operation of ``GET /v1/models/{model_id}`` (an id may hold slashes: ``org/name``)."""
    return {
        "parameters": [{"name": "model_id", "in": "path", "required": True, "schema": {"type": "string"}}],
        "security": _AUTH,
        "responses": {
            "200": _json("the model", {"$ref": REF.format(model="Model")}),
            "401": _error("missing or invalid API key"),
            "404": _error("no such model"),
        },
    }


def health_operation() -> dict[str, Any]:
    """The operation of ``GET /health`` (open: no API key)."""
    health = {"$ref": REF.format(model="Health")}
    return {"responses": {"200": _json("a replica is ready", health),
                          "503": _json("no replica is ready yet", health)}}


def metrics_operation() -> dict[str, Any]:
    """The operation of ``GET /metrics`` (Prometheus text; its route answers ``text/plain``)."""
    return {"responses": {"200": {"description": "Prometheus exposition"}}}


_SHAPES: dict[str, Any] = {
    "ErrorResponse": ERROR_SCHEMA,
    "CascadeKnobs": KNOBS_SCHEMA,
    "Model": {"type": "object", "required": ["id", "object", "created", "owned_by", "ready"],
              "properties": {"id": {"type": "string"}, "object": {"const": "model"}, "created": {"type": "integer"},
                             "owned_by": {"type": "string"},
                             "ready": {"type": "boolean", "description": "a replica of it answers"}}},
    "Health": {"type": "object", "required": ["status", "models", "cost_model"],
               "properties": {"status": {"enum": ["ok", "unavailable"]},
                              "models": {"type": "object", "additionalProperties": {"enum": ["ready", "starting"]}},
                              "cost_model": {"enum": ["settled", "settling"]}}},
}


def request_schema(model: type[BaseModel], required_input: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A completion body as published: the engine's ``model`` with the controller's checks written in.

    The controller requires ``model`` and ``required_input``, a boolean ``stream`` and positive token
    limits, reads ``cascade``, and drops the OpenAI fields that cannot change the answer; the replica
    refuses any other field the engine does not know.

    Returns
    -------
    schema : dict
        The body's JSON schema, its ``$ref``s into ``components.schemas``.
    defs : dict
        The schemas it refers to, by component name.
    """
    schema = model.model_json_schema(ref_template=REF)
    defs: dict[str, Any] = schema.pop("$defs", {})
    props: dict[str, Any] = schema["properties"]
    props["model"] = {"type": "string", "minLength": 1, "description": "a served model id, or 'cascade'"}
    props["stream"] = {"type": "boolean", "default": False}
    for name in ("max_tokens", "max_completion_tokens"):
        if name in props:
            props[name] = {**props[name], "anyOf": [{"type": "integer", "minimum": 1}, {"type": "null"}]}
    props["cascade"] = {"anyOf": [{"$ref": REF.format(model="CascadeKnobs")}, {"type": "null"}]}
    for name in sorted(IGNORED_FIELDS):
        props[name] = {"description": "accepted and dropped: it cannot change the answer"}
    schema["required"] = sorted({*schema.get("required", ()), "model", required_input})
    schema["additionalProperties"] = False
    return schema, defs


def components(request_models: Mapping[Endpoint, type[BaseModel]] | None) -> dict[str, Any]:
    """Every schema the routes' operations refer to, by component name; ``request_models`` are the
    engine's request model of each completion endpoint (None: publish the bodies as loose objects)."""
    schemas = dict(_SHAPES)
    for endpoint, (component, required_input) in BODIES.items():
        if request_models is None:
            schemas[component] = {"type": "object", "required": ["model", required_input],
                                  "properties": {"cascade": {"$ref": REF.format(model="CascadeKnobs")}}}
            continue
        body, defs = request_schema(request_models[endpoint], required_input)
        for name, schema in defs.items():
            # The two models share some definitions (StreamOptions, ResponseFormat): one component each.
            if schemas.setdefault(name, schema) != schema:
                raise ValueError(f"the schema {name!r} is defined twice, differently")
        schemas[component] = body
    return schemas


def publish(app: FastAPI, schemas: Callable[[], dict[str, Any]]) -> None:
    """Make ``app.openapi`` (what ``/openapi.json`` answers) publish ``schemas()`` (:func:`components`)
    and the bearer scheme next to FastAPI's document of the routes: built at the first call, then cached
    in ``app.openapi_schema``, as FastAPI's own is."""
    routes_only = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        published = copy.deepcopy(schemas())  # the document is the app's: the module's shapes stay as they are
        document = routes_only()  # FastAPI's, from the routes alone; cached in app.openapi_schema, completed here
        parts = document.setdefault("components", {})
        parts.setdefault("schemas", {}).update(published)
        parts.setdefault("securitySchemes", {})["bearer"] = {"type": "http", "scheme": "bearer",
                                                             "description": "one of the fleet's API keys"}
        return document

    app.openapi = openapi  # type: ignore[method-assign]
