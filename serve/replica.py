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

from collections.abc import AsyncGenerator
from typing import Any

from ray.serve.llm import LLMServer

from serve.errors import error_body

__all__ = ["CascadeLLMServer", "ENDPOINTS"]

ENDPOINTS = ("chat", "completions")


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

    async def run(self, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        """One non-streaming request (``body["stream"]`` must be false); the response as a dict."""
        request = self._parse(endpoint, {**body, "stream": False})
        if isinstance(request, dict):
            return request
        try:
            stream = await (self.chat(request) if endpoint == "chat" else self.completions(request))
            last: Any = None
            async for item in stream:
                last = item
        except ValueError as exc:
            return error_body(400, str(exc))
        if last is None:
            return error_body(500, "the engine returned no response")
        out: dict[str, Any] = last.model_dump(mode="json", exclude_none=True)
        return out

    async def stream(self, endpoint: str, body: dict[str, Any]) -> AsyncGenerator[str, None]:
        """SSE lines (``data: {...}\\n\\n`` … ``data: [DONE]\\n\\n``) of a streaming request; a request
        rejected before the first token yields one error dict instead (the caller picks the status)."""
        request = self._parse(endpoint, {**body, "stream": True})
        if isinstance(request, dict):
            yield request  # type: ignore[misc]
            return
        stream = await (self.chat(request) if endpoint == "chat" else self.completions(request))
        async for batch in stream:
            # LLMServer batches stream chunks into lists; a single object is an error response.
            if isinstance(batch, list):
                for line in batch:
                    yield line
            elif hasattr(batch, "model_dump"):
                yield batch.model_dump(mode="json", exclude_none=True)
                return
            else:
                yield batch
