"""The one exception -> HTTP table (``serve.errors``): every upstream failure is mapped, and each reads
as its phase words it (httpx's ``test_httpcore_all_exceptions_mapped``, for Ray and Serve)."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any

import pytest

from serve.errors import RETRY_AFTER_S, ApiError, classify, error_body, to_api_error

# importorskip imports with warnings silenced: Ray Serve's own import raises a pydantic deprecation
# warning, which this suite's filterwarnings would turn into an error.
serve_exceptions = pytest.importorskip("ray.serve.exceptions", reason="ray[serve] is not installed")
ray_exceptions = pytest.importorskip("ray.exceptions")

# How to build each upstream exception (their constructors differ). A class Ray adds later fails
# test_every_ray_serve_exception_is_mapped until it gets a line here, and so a look at its meaning.
EXAMPLES: dict[str, Callable[[], Exception]] = {
    "RayServeException": lambda: serve_exceptions.RayServeException("serve failed"),
    "BackPressureError": lambda: serve_exceptions.BackPressureError(9, 8),
    "DeploymentUnavailableError": lambda: serve_exceptions.DeploymentUnavailableError("cascade#model:small"),
    "ReplicaUnavailableError": lambda: serve_exceptions.ReplicaUnavailableError("replica-1"),
    "RequestCancelledError": lambda: serve_exceptions.RequestCancelledError("req-1"),
    "TaskCancelledError": lambda: ray_exceptions.TaskCancelledError(),
    "gRPCStatusError": lambda: serve_exceptions.gRPCStatusError(ray_exceptions.ActorDiedError()),
    "RayActorError": lambda: ray_exceptions.RayActorError(),
    "ActorDiedError": lambda: ray_exceptions.ActorDiedError(),
    "ActorUnavailableError": lambda: ray_exceptions.ActorUnavailableError("restarting", None),
    "GetTimeoutError": lambda: ray_exceptions.GetTimeoutError("get timed out"),
}


def _serve_exception_classes() -> list[type[BaseException]]:
    return [cls for _, cls in inspect.getmembers(serve_exceptions, inspect.isclass) if issubclass(cls, BaseException)]


def test_every_ray_serve_exception_is_mapped() -> None:
    classes = _serve_exception_classes()
    assert {c.__name__ for c in classes} >= {"BackPressureError", "DeploymentUnavailableError",
                                             "ReplicaUnavailableError", "RequestCancelledError"}
    unmapped = []
    for cls in classes:
        assert cls.__name__ in EXAMPLES, f"{cls.__name__}: new in ray.serve.exceptions; add it to EXAMPLES"
        exc = EXAMPLES[cls.__name__]()
        assert type(exc) is cls
        if classify(exc) is None:
            unmapped.append(cls.__name__)
    assert not unmapped, f"would fall through to the generic 500: {unmapped}"


@pytest.mark.parametrize("name", ["RayActorError", "ActorDiedError", "ActorUnavailableError",
                                  "DeploymentUnavailableError", "ReplicaUnavailableError", "RequestCancelledError",
                                  "TaskCancelledError", "RayServeException"])
def test_a_replica_that_is_gone_is_503_with_retry_after(name: str) -> None:
    err = to_api_error(EXAMPLES[name](), model="small")
    assert (err.status, err.headers()) == (503, {"Retry-After": str(RETRY_AFTER_S)})
    assert err.message == f"model 'small' is unavailable ({name})"
    assert err.body()["error"]["type"] == "ServiceUnavailableError"


def test_backpressure_keeps_its_own_status_and_retry_after() -> None:
    assert to_api_error(serve_exceptions.BackPressureError(9, 8), model="m").headers() == {"Retry-After": "5"}
    err = to_api_error(serve_exceptions.BackPressureError(9, 8, status_code=429, retry_after_s=2.5), model="m")
    assert (err.status, err.headers()) == (429, {"Retry-After": "3"})
    assert err.body()["error"]["type"] == "RateLimitError"


def test_grpc_status_error_maps_as_the_exception_it_wraps() -> None:
    assert classify(EXAMPLES["gRPCStatusError"]()) == classify(ray_exceptions.ActorDiedError())
    assert classify(serve_exceptions.gRPCStatusError(KeyError("x"))) is None


@pytest.mark.parametrize("exc", [TimeoutError(), EXAMPLES["GetTimeoutError"]()])
def test_timeouts_are_503_worded_by_phase(exc: Exception) -> None:
    words = {
        "answer": "model 'small' did not answer within 2.5 s",
        "start": "model 'small' did not start answering within 2.5 s",
        "stream": "model 'small' stalled for 2.5 s",
        "stage": "no answer within 2.5 s",  # the trace entry names the model
    }
    for phase, message in words.items():
        err = to_api_error(exc, model="small", timeout_s=2.5, phase=phase)  # type: ignore[arg-type]
        assert (err.status, err.message, err.retry_after_s) == (503, message, RETRY_AFTER_S)


def test_an_empty_stream_is_500() -> None:
    err = to_api_error(StopAsyncIteration(), model="small", phase="start")
    assert (err.status, err.message, err.retry_after_s) == (500, "model 'small' returned an empty stream", None)


def test_unknown_exceptions_are_a_generic_500_never_their_text_or_traceback() -> None:
    exc = KeyError("db password in here")
    assert classify(exc) is None
    err = to_api_error(exc)
    assert (err.status, err.message, err.headers()) == (500, "internal server error", {})
    assert err.body()["error"]["type"] == "InternalServerError"
    assert to_api_error(exc, model="small").message == "model 'small' failed: internal server error (KeyError)"
    assert to_api_error(exc, model="small", phase="stream").message == "model 'small' failed mid-stream (KeyError)"


def test_stage_messages_are_one_line_of_the_exception_itself() -> None:
    """The trace names the model; its entry says what went wrong, on one line, never a traceback."""
    assert to_api_error(RuntimeError("replica died"), model="m", phase="stage").message == "RuntimeError: replica died"
    multi = to_api_error(ray_exceptions.ActorDiedError(), model="m", phase="stage").message
    assert multi.startswith("ActorDiedError: The actor died") and "\n" not in multi
    gone = to_api_error(EXAMPLES["ReplicaUnavailableError"](), model="m", phase="stage").message
    assert gone == "ReplicaUnavailableError: Replica replica-1 is no longer available."
    remote = ray_exceptions.RayTaskError("run", "Traceback (most recent call last):\n  File ...", ValueError("bad"))
    err = to_api_error(remote, model="m", phase="stage")
    assert err.status == 503 and err.message == "ValueError: bad" and "Traceback" not in err.message


def test_api_errors_pass_through_unchanged() -> None:
    err = ApiError(400, "temperature: must be >= 0", param="temperature")
    assert to_api_error(err, model="m", phase="stage") is err
    assert classify(err) is None  # not a failure: already an answer


def test_cancellation_is_never_mapped() -> None:
    """A client that left, or a superseded stage, must cancel the replica call: asyncio.CancelledError is
    no Exception (the controller's ``except Exception`` lets it through), and handed to the table
    anyway it is raised again (the controller's side: test_controller_http)."""
    assert not issubclass(asyncio.CancelledError, Exception)
    with pytest.raises(asyncio.CancelledError):
        to_api_error(asyncio.CancelledError(), model="small")


def test_error_bodies_are_openai_envelopes() -> None:
    body: dict[str, Any] = error_body(404, "unknown endpoint 'x'")
    assert body == {"error": {"message": "unknown endpoint 'x'", "type": "NotFoundError", "param": None, "code": 404}}
    assert error_body(418, "teapot")["error"]["type"] == "APIError"
    assert error_body(401, "no", code="invalid_api_key")["error"]["code"] == "invalid_api_key"


def test_replica_error_bodies_round_trip_through_from_body() -> None:
    err = ApiError.from_body(error_body(400, "This model's maximum context length is 512 tokens"))
    assert (err.status, err.code, err.param) == (400, "context_length_exceeded", "messages")
    err = ApiError.from_body(error_body(503, "engine dead", param=None))
    assert (err.status, err.message) == (503, "engine dead")
    assert ApiError.from_body({"error": {"message": "?", "code": "weird"}}).status == 500


def test_clean_message_keeps_one_line_for_the_client() -> None:
    """Regression (reliability issue, finding 1): Ray Serve LLM's error message carries the internal
    and original exceptions; a client reads the message alone, one line, bounded."""
    from serve.errors import MESSAGE_CHARS, clean_message

    ray_style = ("Message: tool_choice must be a string (Request ID: abc), Internal exception: tool_choice "
                 "must be a string (Request ID: abc), original exception: Traceback (most recent call last):\n"
                 '  File "/x.py", line 1')
    assert clean_message(ray_style) == "tool_choice must be a string"
    assert clean_message("bad value\nTraceback (most recent call last):\n  File ...") == "bad value"
    assert len(clean_message("x" * 10_000)) == MESSAGE_CHARS
    assert ApiError.from_body({"error": {"message": ray_style, "code": 400}}).message == "tool_choice must be a string"


def test_a_replicas_own_503_or_429_tells_the_client_when_to_retry() -> None:
    for status in (503, 429):
        err = ApiError.from_body({"error": {"message": "engine busy", "code": status}})
        assert err.status == status and err.headers() == {"Retry-After": str(RETRY_AFTER_S)}
    assert ApiError.from_body({"error": {"message": "bad", "code": 400}}).headers() == {}


def test_a_message_quoting_what_a_client_sent_stays_one_line() -> None:
    """Found by the live fuzz: an unknown knob named "\\n\\x11" made a two-line message."""
    from serve.cascade_run import CascadeKnobs, parse_knobs

    default = CascadeKnobs(policy="cascade_routing", lambda_=0.5, max_depth=2)
    with pytest.raises(ApiError) as info:
        parse_knobs({"\n\x11": 1}, default, ("small",))
    message = info.value.body()["error"]["message"]
    assert "\n" not in message and "\x11" not in message and "\\n\\x11" in message, message
