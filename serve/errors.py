"""OpenAI error envelopes, and the one table from every failure a request can meet to its HTTP answer.

The envelope is ``{"error": {"message", "type", "param", "code"}}`` with the matching status; ``code``
carries the HTTP status as an integer, as vLLM's server does, except where OpenAI defines a string
code (``model_not_found``, ``invalid_api_key``, ``context_length_exceeded``). The replica builds its
error bodies with :func:`error_body` too.

:func:`to_api_error` answers any exception a replica call, Serve, the cascade loop or the controller
itself can raise, as httpx's ``map_httpcore_exceptions`` does for its transport: one table, most
specific class first, checked for completeness by ``tests/serve/test_errors.py``::

    BaseException
     ├── asyncio.CancelledError ...... never mapped: the client left, or a stage was superseded or timed
     │                                 out; it propagates, and cancels the replica call on its way
     └── Exception
          ├── ApiError ............... already an answer: a bad request, or a replica's own error body
          ├── TimeoutError ........... 503 + Retry-After: no answer within the stage timeout
          │    └── ray.exceptions.GetTimeoutError
          ├── StopAsyncIteration ..... 500: a replica's stream ended before its first line
          ├── ray.serve.exceptions.RayServeException
          │    ├── BackPressureError ......... its own status (503 or 429) and Retry-After
          │    ├── gRPCStatusError ........... as the exception it wraps
          │    ├── DeploymentUnavailableError, ReplicaUnavailableError, RequestCancelledError
          │    └── (any other) ............... 503 + Retry-After: the model's replica is unavailable
          ├── ray.exceptions.RayError ........ 503 + Retry-After: the replica's actor or task failed
          │    ├── RayActorError (ActorDiedError, ActorUnavailableError)
          │    └── RayTaskError, TaskCancelledError, ...
          └── (anything else) ........ 500 with a generic message: a bug of ours (the controller logs
                                       its traceback; the client never sees it)

Where the call was when it failed (:data:`Phase`) picks the wording: a direct call's answer, a
direct stream's first line or a later one, or a cascade stage, whose trace entry names the model and
says what went wrong in the exception's own first line. What the loop does with a failed stage (skip
the model, re-probe its replica or not) is the loop's decision (``serve.cascade_run``), not the table's.

Ray is imported only to classify an exception of Ray's own (importing Ray Serve costs seconds; a
process that never imported Ray cannot hold one), so the loop and its tests stay Ray-free.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "RETRY_AFTER_S", "ApiError", "Failure", "Phase", "classify", "clean_message", "error_body", "replica_failed",
    "to_api_error",
]

_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    404: "NotFoundError",
    408: "TimeoutError",
    429: "RateLimitError",
    500: "InternalServerError",
    503: "ServiceUnavailableError",
}

# Seconds a client is asked to wait before retrying a replica that is busy, starting, or being restarted.
RETRY_AFTER_S = 5

# "answer": a direct call's whole answer; "start": a direct stream's first line; "stream": a later line
# (the error goes out as one SSE event); "stage": one stage of a cascade (its trace entry names the model).
Phase = Literal["answer", "start", "stream", "stage"]
Kind = Literal["timeout", "busy", "unavailable", "empty_stream", "internal"]


# What a client may read of an error: one line, this long at most.
MESSAGE_CHARS = 500


def clean_message(message: str) -> str:
    """One line a client may read: Ray Serve LLM's "Message: M (Request ID: r), Internal exception: ...,
    original exception: ..." cut to M, and anything after the first line (a traceback) dropped."""
    text = message.strip()
    if text.startswith("Message: "):
        text = text[len("Message: "):].split(", Internal exception: ", 1)[0]
    text = text.split("\n", 1)[0].strip()
    if " (Request ID: " in text:
        text = text.split(" (Request ID: ", 1)[0]
    return text if len(text) <= MESSAGE_CHARS else text[: MESSAGE_CHARS - 3] + "..."


# Control characters a client put in a name the message quotes (a knob, a field): written as escapes,
# so that a message stays one line whatever the client sent.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def error_body(status: int, message: str, *, param: str | None = None, code: str | int | None = None) -> dict[str, Any]:
    return {
        "error": {
            "message": _CONTROL.sub(lambda m: repr(m.group())[1:-1], message),
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
        message = clean_message(str(err.get("message") or "")) or "the model replica failed"
        if status == 400 and "context length" in message.lower():
            return cls(400, message, param="messages", code="context_length_exceeded")
        # A replica that says it cannot answer now (503, 429) may answer later: the client is told when.
        retry_after_s = RETRY_AFTER_S if status in (429, 503) else None
        return cls(status, message, param=err.get("param"), retry_after_s=retry_after_s)

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, param=self.param, code=self.code)

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)} if self.retry_after_s is not None else {}


@dataclass(frozen=True, slots=True)
class Failure:
    """How one class of failure is answered: its status (the OpenAI type follows), its Retry-After,
    and what happened (which picks the message's wording)."""

    status: int
    retry_after_s: int | None
    kind: Kind


_TIMEOUT = Failure(503, RETRY_AFTER_S, "timeout")
_UNAVAILABLE = Failure(503, RETRY_AFTER_S, "unavailable")
_EMPTY_STREAM = Failure(500, None, "empty_stream")
_INTERNAL = Failure(500, None, "internal")  # not in the table: a bug of ours

# Each kind of failure in each phase; a stage's message goes into the trace entry that names the model.
# ``line`` is the exception's own first line (``Type: message``), which never holds a traceback.
_WORDING: dict[Kind, dict[Phase, str]] = {
    "timeout": {
        "answer": "{subject} did not answer within {within}",
        "start": "{subject} did not start answering within {within}",
        "stream": "{subject} stalled for {within}",
        "stage": "no answer within {within}",
    },
    "busy": {
        "answer": "{subject} is at capacity; retry shortly",
        "start": "{subject} is at capacity; retry shortly",
        "stream": "{subject} failed mid-stream ({name})",
        "stage": "at capacity ({name})",
    },
    "unavailable": {
        "answer": "{subject} is unavailable ({name})",
        "start": "{subject} is unavailable ({name})",
        "stream": "{subject} failed mid-stream ({name})",
        "stage": "{line}",
    },
    "empty_stream": dict.fromkeys(("answer", "start", "stream", "stage"), "{subject} returned an empty stream"),
    "internal": {
        "answer": "{subject} failed: internal server error ({name})",
        "start": "{subject} failed: internal server error ({name})",
        "stream": "{subject} failed mid-stream ({name})",
        "stage": "{line}",
    },
}

# The standard library's part of the table (the module docstring's tree); most specific first.
_TABLE: tuple[tuple[type[Exception], Failure], ...] = (
    (TimeoutError, _TIMEOUT),
    (StopAsyncIteration, _EMPTY_STREAM),
)


@functools.cache
def _ray_table() -> tuple[tuple[type[Exception], Failure], ...]:
    """Ray's part of the table; BackPressureError and gRPCStatusError are read by :func:`classify`."""
    from ray import exceptions as ray_exceptions
    from ray.serve import exceptions as serve_exceptions

    return (
        (serve_exceptions.RayServeException, _UNAVAILABLE),
        (ray_exceptions.RayError, _UNAVAILABLE),
    )


def _is_rays(exc: BaseException) -> bool:
    return any(cls.__module__.split(".")[0] == "ray" for cls in type(exc).__mro__)


def classify(exc: Exception) -> Failure | None:
    """The table's entry for ``exc``; None for an exception it does not know (answered as a generic 500)."""
    for cls, failure in _TABLE:
        if isinstance(exc, cls):
            return failure
    if not _is_rays(exc):
        return None
    from ray.serve.exceptions import BackPressureError, gRPCStatusError

    if isinstance(exc, gRPCStatusError):
        inner = exc.original_exception
        return classify(inner) if isinstance(inner, Exception) else None
    if isinstance(exc, BackPressureError):
        retry_s = exc.retry_after_s
        return Failure(int(exc.status_code), RETRY_AFTER_S if retry_s is None else math.ceil(retry_s), "busy")
    for cls, failure in _ray_table():
        if isinstance(exc, cls):
            return failure
    return None


def replica_failed(exc: BaseException) -> bool:
    """Whether ``exc`` says the replica itself is gone or broken (its actor died, Serve has it
    unavailable, our call to it failed unexpectedly), so it must answer a probe before it is used again.
    An answer it gave (an ``ApiError`` from its error body), a deadline it missed (slow is not dead) and
    a full queue (busy is not dead) leave it in the cascade."""
    if not isinstance(exc, Exception) or isinstance(exc, ApiError):
        return False
    failure = classify(exc)
    return failure is None or failure.kind in ("unavailable", "internal", "empty_stream")


def to_api_error(
    exc: BaseException, *, model: str | None = None, timeout_s: float | None = None, phase: Phase = "answer"
) -> ApiError:
    """The answer to ``exc`` (module docstring): status, OpenAI error type, Retry-After and message.

    Parameters
    ----------
    exc : BaseException
        What the call raised; an ``ApiError`` is returned as it is, and an exception that is no
        ``Exception`` (``asyncio.CancelledError``, ``KeyboardInterrupt``) is raised again: it is never
        answered, it propagates.
    model : str or None
        The model whose replica was called; None for a failure of the controller's own.
    timeout_s : float or None
        The deadline the call had, named in a timeout's message.
    phase : {"answer", "start", "stream", "stage"}
        Where the call was when it failed: picks the wording.
    """
    if not isinstance(exc, Exception):
        raise exc
    if isinstance(exc, ApiError):
        return exc
    failure = classify(exc)
    if failure is None:
        if model is None and phase != "stage":
            return ApiError(500, "internal server error")
        failure = _INTERNAL
    within = f"{timeout_s:.3g} s" if timeout_s is not None else "the timeout"
    subject = f"model {model!r}" if model is not None else "the server"
    message = _WORDING[failure.kind][phase].format(
        subject=subject, within=within, name=type(exc).__name__, line=_one_line(exc))
    return ApiError(failure.status, message, retry_after_s=failure.retry_after_s)


def _one_line(exc: BaseException) -> str:
    """``Type: message`` on one line, for a stage's trace entry. A Ray task error's text is the remote
    traceback, so the exception it carries (its ``cause``) speaks instead; Serve's exceptions keep
    their sentence in ``message`` (their ``str`` may be a bare id)."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        exc = cause
    message = getattr(exc, "message", None)
    lines = (message if isinstance(message, str) else str(exc)).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
