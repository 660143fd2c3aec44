"""The model replica: Ray Serve LLM's ``LLMServer`` (the real vLLM engine) with a dict-in, dict-out face.

``CascadeLLMServer`` is set as ``LLMConfig.server_cls``, so placement, autoscaling, health checks,
engine metrics and the OpenAI serving layer are Ray's and vLLM's own. It adds two methods the
controller calls through a Serve handle:

- ``run(endpoint, body)``: one non-streaming request; returns the OpenAI response as a plain dict,
  with vLLM's per-request timing split (``metrics``: queue, time to first token = prefill, decode),
  or ``{"error": {...}}`` with the status in ``error.code`` (``serve.errors.error_body``);
- ``stream(endpoint, body)``: the SSE lines of a streaming request, for direct calls to a model.

Plain dicts keep vLLM out of the controller (its import costs ~10 s and 0.5 GB per process), and the
request is validated here, by vLLM's own request models, so sampling-parameter errors read exactly as
vLLM's server would word them. Unknown top-level fields are rejected (vLLM only logs them): a typo in
``max_tokens`` must not silently fall back to a default.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator
from typing import Any

from ray.serve.llm import LLMServer

from serve.errors import clean_message, error_body

__all__ = ["CascadeLLMServer", "ENDPOINTS", "request_error_body"]

logger = logging.getLogger("ray.serve")

ENDPOINTS = ("chat", "completions")


def request_error_body(exc: Exception) -> dict[str, Any] | None:
    """The answer to an exception raised while this replica handled one request, or None when the
    replica itself is broken and the exception must propagate (the controller then treats the replica
    as failed, and Serve's health check replaces it).

    vLLM splits its own errors into client (4xx) and server (5xx) ones; beyond those, vLLM, its chat
    template and the tokenizer validate a request by raising built-in errors (``ValueError``,
    ``TypeError``, ``UnicodeError``: a lone surrogate, a ``tool_choice`` of the wrong type): the request
    is bad, the replica is fine. Anything else is answered 500 without its traceback (logged here):
    the replica still answered, so one client's odd request never takes it out of the cascade.
    """
    from vllm.exceptions import GracefulHTTPError, VLLMClientError, VLLMNotFoundError, VLLMServerError
    from vllm.v1.engine.exceptions import EngineGenerateError

    if isinstance(exc, EngineGenerateError):
        # One request failed in a live engine (vLLM: "recoverable"). Its cause says whose fault: data
        # the engine cannot take (a number past 64 bits fails its serializer) is the request's.
        cause = exc.__cause__
        if isinstance(cause, ValueError | TypeError | OverflowError):
            return error_body(400, f"the engine cannot take this request: {clean_message(str(cause))}")
        logger.error("the engine failed on a request (answered 500)", exc_info=exc)
        return error_body(500, "the engine failed on this request")
    if isinstance(exc, VLLMServerError):  # the engine died: the replica is broken
        return None
    if isinstance(exc, GracefulHTTPError):  # the engine's admission control: busy, not broken
        status = int(exc.http_status)
        busy = status in (429, 503)
        return error_body(status, f"the model replica is at capacity; retry shortly ({clean_message(exc.message)})"
                          if busy else clean_message(exc.message))
    if isinstance(exc, VLLMNotFoundError):
        return error_body(404, clean_message(str(exc)))
    if isinstance(exc, VLLMClientError | ValueError | TypeError | OverflowError) or _is_template_error(exc):
        param = getattr(exc, "parameter", None)
        message = clean_message(str(exc)) or type(exc).__name__
        if _TOKENIZER_INPUT_ERROR in message:  # the Rust tokenizer's own words say nothing to a client
            message = "the text cannot be tokenized: it is not valid Unicode (a lone UTF-16 surrogate?)"
        return error_body(400, message, param=param)
    logger.exception("the replica failed on a request (answered 500)")
    return error_body(500, f"the model replica failed on this request ({type(exc).__name__})")


# How the tokenizers library refuses text it cannot encode (a lone surrogate is no Unicode scalar).
_TOKENIZER_INPUT_ERROR = "TextEncodeInput must be"


def _is_template_error(exc: Exception) -> bool:
    try:
        from jinja2 import TemplateError
    except ImportError:  # pragma: no cover - transformers' chat templates need jinja2
        return False
    return isinstance(exc, TemplateError)


class CascadeLLMServer(LLMServer):  # type: ignore[misc]
    """``LLMServer`` plus the controller's dict interface (module docstring)."""

    def _parse(self, endpoint: str, body: dict[str, Any]) -> Any:
        from pydantic import ValidationError
        from ray.llm._internal.serve.core.configs.openai_api_models import ChatCompletionRequest, CompletionRequest

        if endpoint not in ENDPOINTS:
            return error_body(404, f"unknown endpoint {endpoint!r}")
        cls = ChatCompletionRequest if endpoint == "chat" else CompletionRequest
        known = set(cls.model_fields) | {f.alias for f in cls.model_fields.values() if f.alias}
        unknown = sorted(set(body) - known)
        if unknown:
            return error_body(400, f"unknown field {unknown[0]!r} in the request body", param=unknown[0])
        try:
            return cls.model_validate(body)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or None
            message = str(first["msg"]).removeprefix("Value error, ")
            return error_body(400, f"{where}: {message}" if where else message, param=where)
        except Exception as exc:
            # Validating a body is a function of the body alone, so whatever the request model's own
            # validators raise (vLLM's errors, or an AttributeError on `"structured_outputs": false`) is
            # the request's fault, never the replica's.
            from vllm.exceptions import VLLMClientError

            if isinstance(exc, VLLMClientError | ValueError | TypeError | OverflowError):
                return request_error_body(exc)
            logger.warning("the engine's request model raised %s on a body", type(exc).__name__, exc_info=exc)
            return error_body(400, f"the request body is invalid ({type(exc).__name__} while validating it)")

    async def run(self, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        """One non-streaming request (``body["stream"]`` must be false); the response as a dict."""
        try:
            request = self._parse(endpoint, {**body, "stream": False})
            if isinstance(request, dict):
                return request
            stream = await (self.chat(request) if endpoint == "chat" else self.completions(request))
            last: Any = None
            async for item in stream:
                last = item
        except Exception as exc:
            answer = request_error_body(exc)
            if answer is None:
                raise
            return answer
        if last is None:
            return error_body(500, "the engine returned no response")
        out: dict[str, Any] = last.model_dump(mode="json", exclude_none=True)
        return _cleaned(out)

    async def stream(self, endpoint: str, body: dict[str, Any]) -> AsyncGenerator[str, None]:
        """SSE lines (``data: {...}\\n\\n`` … ``data: [DONE]\\n\\n``) of a streaming request; a request
        rejected before the first token yields one error dict instead (the caller picks the status)."""
        started = False
        try:
            # Inside the try: vLLM's request models raise their own client errors, not only pydantic's.
            request = self._parse(endpoint, {**body, "stream": True})
            if isinstance(request, dict):
                yield request  # type: ignore[misc]
                return
            stream = await (self.chat(request) if endpoint == "chat" else self.completions(request))
            async for batch in stream:
                # LLMServer batches stream chunks into lists; a single object is an error response.
                if isinstance(batch, list):
                    for line in batch:
                        if not isinstance(line, str):  # the engine's ErrorResponse, inside a batch
                            answer = _cleaned(line.model_dump(mode="json", exclude_none=True))
                            # Before the first line the caller answers with the status; after it, an event.
                            yield (f"data: {json.dumps(answer)}\n\n" if started else answer)  # type: ignore[misc]
                            return
                        started = True
                        yield line
                elif hasattr(batch, "model_dump"):
                    yield _cleaned(batch.model_dump(mode="json", exclude_none=True))  # type: ignore[misc]
                    return
                else:
                    started = True
                    yield batch
        except Exception as exc:
            refusal = request_error_body(exc)
            if refusal is None:
                raise
            # Before the first line the caller answers with the status; after it, one error event.
            yield (f"data: {json.dumps(refusal)}\n\n" if started else refusal)  # type: ignore[misc]


def _cleaned(body: dict[str, Any]) -> dict[str, Any]:
    """An engine's error response rebuilt as our envelope: its status kept, its message one clean line
    (Ray Serve LLM's carries the internal exception and the original one after it)."""
    error = body.get("error")
    if not isinstance(error, dict):
        return body
    code = error.get("code")
    status = code if isinstance(code, int) and 400 <= code < 600 else 500
    return error_body(status, clean_message(str(error.get("message") or "")) or "the model replica failed",
                      param=error.get("param"))
