"""The controller's HTTP routes: one table, and two builders that attach it.

``ROUTES`` lists every route as (method, path, handler, OpenAPI operation); a handler is one line into
a ``CascadeController`` method, which takes and returns plain data (``controller.Reply``). The routes
are attached separately from the controller, as Ray Serve LLM's ``make_fastapi_ingress`` attaches
its ``DEFAULT_ENDPOINTS``, by one function (``_add_route``) that both builders call, so both publish
the same ``/openapi.json`` (``serve.openapi``: the handlers read raw bytes, so the request bodies are
the engine's request models, described there):

- :func:`http_app` binds them to one controller instance: a FastAPI app for any ASGI server (and for
  ``tests/serve/test_controller_http.py``, without Ray), whose lifespan starts and stops the probes;
- :func:`serve_ingress` makes the Ray Serve deployment class: its async constructor builds the
  controller and starts it on the replica's event loop; FastAPI class-based routes generated from the
  same table reach it, and ``call`` serves Serve handles.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cluster.config import CascadeSettings
from serve import openapi
from serve.controller import CascadeController, Reply
from serve.errors import error_body
from serve.logs import controller_logger
from serve.watch import live_models

__all__ = ["DEFAULT_MAX_BODY_BYTES", "ROUTES", "TITLE", "BodyLimit", "Route", "http_app", "replica_handles",
           "serve_ingress"]

logger = logging.getLogger(__name__)

TITLE = "cascade-serve"
DEFAULT_MAX_BODY_BYTES: int = CascadeSettings.model_fields["max_body_bytes"].default  # the fleet file's

Handler = Callable[[CascadeController, Request], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class Route:
    """One row of the route table: the handler answers ``method path``; ``operation`` is what
    ``/openapi.json`` says of it (FastAPI's ``openapi_extra``), ``response_class`` the kind of answer
    FastAPI documents for a success."""

    method: Literal["GET", "POST"]
    path: str
    handler: Handler
    operation: dict[str, Any]
    response_class: type[Response] = JSONResponse

    @property
    def name(self) -> str:
        """The endpoint's name: the FastAPI operation, and the method of the Serve ingress class."""
        return self.handler.__name__.lstrip("_")


def _response(reply: Reply) -> Response:
    if isinstance(reply.body, dict):
        return JSONResponse(reply.body, status_code=reply.status, headers=dict(reply.headers))
    if isinstance(reply.body, str):
        return PlainTextResponse(reply.body, status_code=reply.status, headers=dict(reply.headers),
                                 media_type=reply.media_type)
    body: AsyncIterator[str] = reply.body
    return StreamingResponse(body, status_code=reply.status, headers=dict(reply.headers),
                             media_type=reply.media_type)


async def _chat_completions(c: CascadeController, request: Request) -> Response:
    return _response(await c.complete("chat", await request.body(), request.headers))


async def _completions(c: CascadeController, request: Request) -> Response:
    return _response(await c.complete("completions", await request.body(), request.headers))


async def _list_models(c: CascadeController, request: Request) -> Response:
    return _response(c.list_models(request.headers))


async def _get_model(c: CascadeController, request: Request) -> Response:
    return _response(c.get_model(request.path_params["model_id"], request.headers))


async def _health(c: CascadeController, request: Request) -> Response:
    return _response(c.health())


async def _metrics(c: CascadeController, request: Request) -> Response:
    return _response(c.metrics())


ROUTES: tuple[Route, ...] = (
    Route("POST", "/v1/chat/completions", _chat_completions, openapi.completion_operation("chat")),
    Route("POST", "/v1/completions", _completions, openapi.completion_operation("completions")),
    Route("GET", "/v1/models", _list_models, openapi.models_operation()),
    Route("GET", "/v1/models/{model_id:path}", _get_model, openapi.model_operation()),
    Route("GET", "/health", _health, openapi.health_operation()),  # open: no API key
    Route("GET", "/metrics", _metrics, openapi.metrics_operation(), PlainTextResponse),
)


def _engine_schemas() -> dict[str, Any]:
    """``/openapi.json``'s schemas, with the request models the replicas validate bodies with
    (``serve.replica``); importing them imports vLLM."""
    try:
        from ray.llm._internal.serve.core.configs.openai_api_models import ChatCompletionRequest, CompletionRequest
    except ImportError as exc:
        logger.warning("the engine's request models cannot be imported (%s): /openapi.json publishes loose bodies",
                       exc)
        return openapi.components(None)
    return openapi.components({"chat": ChatCompletionRequest, "completions": CompletionRequest})


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own answers (no such path, a method the path does not take) as OpenAI envelopes:
    a client reads the same error shape from every URL of the endpoint."""
    assert isinstance(exc, HTTPException)
    message = {404: f"no route {request.url.path}", 405: f"{request.method} is not allowed on {request.url.path}",
               413: str(exc.detail)}
    body = error_body(exc.status_code, message.get(exc.status_code, str(exc.detail)))
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


DRAIN_MAX_BYTES = 16 * 2**20  # a refused body up to this size is read (and dropped) before the 413


async def _drain(receive: Receive) -> None:
    """Read the request body to its end, keeping nothing."""
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` is answered 413 (an OpenAI envelope) without
    being held whole: refused from its ``Content-Length`` (read and dropped first, up to
    ``DRAIN_MAX_BYTES``, so the client reads the answer), or, sent without one, as soon as the bytes read
    pass the limit."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            if int(declared) <= DRAIN_MAX_BYTES:
                # Read and drop a modest body first: answered while the client is still sending, the
                # 413 races the server's close of the connection, and the client may see a reset
                # instead of the envelope. A larger one is refused at once (the connection closes).
                await _drain(receive)
            status, body = 413, error_body(413, self._message())
            await send({"type": "http.response.start", "status": status,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": json.dumps(body).encode()})
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # Raised inside the app, where the HTTP-error handler turns it into an envelope.
                    raise HTTPException(413, self._message())
            return message

        await self.app(scope, limited, send)

    def _message(self) -> str:
        return f"the request body exceeds {self.max_bytes} bytes"


def _app(*, max_body_bytes: int, schemas: Callable[[], dict[str, Any]], **kwargs: Any) -> FastAPI:
    app = FastAPI(title=TITLE, **kwargs)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    openapi.publish(app, schemas)
    return app


def _add_route(app: FastAPI, route: Route, endpoint: Callable[..., Awaitable[Response]]) -> None:
    app.add_api_route(route.path, endpoint, methods=[route.method], name=route.name,
                      openapi_extra=route.operation, response_class=route.response_class)


def http_app(controller: CascadeController, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> FastAPI:
    """The routes bound to ``controller``, as a FastAPI app; its lifespan starts and stops the probes."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        controller.start()
        try:
            yield
        finally:
            await controller.stop()

    # Built at the first GET /openapi.json: most uses of this app (the tests) never ask for it.
    app = _app(max_body_bytes=max_body_bytes, schemas=_engine_schemas, lifespan=lifespan)
    for route in ROUTES:
        _add_route(app, route, _bound(route.handler, controller))
    return app


def _bound(handler: Handler, controller: CascadeController) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        return await handler(controller, request)

    return endpoint


def serve_ingress(controller_cls: type[CascadeController] = CascadeController, *,
                  max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> type:
    """The Ray Serve deployment class of ``controller_cls`` (``serve.deployment`` and ``.bind`` are the
    builder's: ``serve.app``); its constructor takes the controller's arguments."""
    from ray import serve

    # Built here, in the process that builds the application (its Serve LLM builders have imported vLLM
    # already), and pickled with the app: the controller's replicas never import vLLM.
    schemas = _engine_schemas()
    app = _app(max_body_bytes=max_body_bytes, schemas=lambda: schemas)

    class CascadeIngress:
        controller: CascadeController

        # Serve awaits an async constructor; the probes need the replica's running loop.
        async def __init__(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[misc]
            # Serve's proxy answers every request with its x-request-id: the controller must not add one.
            deployments: dict[str, str] = kwargs.pop("replica_deployments", {})
            watch = functools.partial(live_models, deployments) if deployments else None
            kwargs["replicas"] = replica_handles(kwargs["replicas"], kwargs.pop("replica_transport", "actor"))
            self.controller = controller_cls(*args, echo_request_id=False, replica_watch=watch, **kwargs)
            # The decision core's compiled search is loaded (or compiled, once per install) before Serve
            # routes a request here, so no request pays for it; off the loop, which the probes share.
            from routing import warm_up

            warm_s = await asyncio.to_thread(warm_up)
            controller_logger().info("decision core ready in %.1f s", warm_s)
            self.controller.start()

        async def call(self, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
            """Serve handles' API: ``CascadeController.call``."""
            return await self.controller.call(endpoint, body)

    for route in ROUTES:
        method = _method(route.handler)
        method.__name__ = route.name
        # Serve's class-based view finds a class's routes by their endpoints' qualified names.
        method.__qualname__ = f"{CascadeIngress.__qualname__}.{route.name}"
        setattr(CascadeIngress, route.name, method)
        _add_route(app, route, method)
    ingress: type = serve.ingress(app)(CascadeIngress)
    return ingress


def replica_handles(handles: dict[str, Any], transport: str) -> dict[str, Any]:
    """The controller's handles to the model replicas over ``transport`` (``CascadeSettings.replica_transport``):
    ``grpc`` is Serve's gRPC transport between deployments with pickle for the bodies, which are plain JSON
    data (no cloudpickle needed); ``actor`` is Serve's default, Ray actor calls."""
    if transport == "actor":
        return dict(handles)
    if transport != "grpc":
        raise ValueError(f"replica_transport must be 'grpc' or 'actor', got {transport!r}")
    return {model: h.options(_by_reference=False, request_serialization="pickle", response_serialization="pickle")
            for model, h in handles.items()}


def _method(handler: Handler) -> Callable[[Any, Request], Awaitable[Response]]:
    async def endpoint(self: Any, request: Request) -> Response:
        return await handler(self.controller, request)

    return endpoint
