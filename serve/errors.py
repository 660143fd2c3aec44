"""OpenAI error envelopes: ``{"error": {"message", "type", "param", "code"}}`` with the matching status.

``code`` carries the HTTP status as an integer, as vLLM's server does, except where OpenAI defines a
string code (``model_not_found``, ``invalid_api_key``, ``context_length_exceeded``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["ApiError", "error_body"]

_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    404: "NotFoundError",
    408: "TimeoutError",
    429: "RateLimitError",
    500: "InternalServerError",
    503: "ServiceUnavailableError",
}


def error_body(status: int, message: str, *, param: str | None = None, code: str | int | None = None) -> dict[str, Any]:
    return {
        "error": {
            "message": message,
            "type": _TYPES.get(status, "APIError"),
            "param": param,
            "code": status if code is None else code,
        }
    }


class ApiError(Exception):
    """An error answered to the client as an OpenAI envelope (``retry_after_s`` adds ``Retry-After``)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | int | None = None,
        retry_after_s: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.retry_after_s = retry_after_s

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> ApiError:
        """From a replica's ``{"error": {...}}`` (vLLM puts the status in ``code``)."""
        err = body.get("error") or {}
        code = err.get("code")
        status = code if isinstance(code, int) and 400 <= code < 600 else 500
        message = str(err.get("message") or "the model replica failed")
        if status == 400 and "context length" in message.lower():
            return cls(400, message, param="messages", code="context_length_exceeded")
        return cls(status, message, param=err.get("param"))

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, param=self.param, code=self.code)

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)} if self.retry_after_s is not None else {}
