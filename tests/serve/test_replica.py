"""How the replica answers an exception raised while it handled one request (no engine needed: the
classification is a function; the real-stack counterpart is ``test_serving_e2e.py``'s hostile-input test)."""

from __future__ import annotations

import pytest

pytest.importorskip("vllm", reason="the engine stack (cpu/gpu extra) is not installed")


@pytest.mark.parametrize("exc", [
    ValueError("max_tokens must be at least 1"),
    TypeError("'int' object is not iterable"),  # tool_choice: 5
    UnicodeEncodeError("utf-8", "\ud800x", 0, 1, "surrogates not allowed"),  # a lone surrogate in a message
    OverflowError("int too large to convert"),
])
def test_a_request_that_vllm_rejects_by_raising_is_a_400(exc: Exception) -> None:
    from serve.replica import request_error_body

    body = request_error_body(exc)
    assert body is not None and body["error"]["code"] == 400 and body["error"]["type"] == "BadRequestError"
    assert "\n" not in body["error"]["message"]


def test_vllm_errors_keep_their_side() -> None:
    from vllm.exceptions import VLLMValidationError
    from vllm.v1.engine.exceptions import EngineDeadError

    from serve.replica import request_error_body

    body = request_error_body(VLLMValidationError("top_logprobs needs logprobs", parameter="top_logprobs"))
    assert body is not None and body["error"]["code"] == 400 and body["error"]["param"] == "top_logprobs"
    assert request_error_body(EngineDeadError()) is None  # the replica is broken: the exception propagates


def test_an_unknown_failure_is_a_500_without_internals() -> None:
    from serve.replica import request_error_body

    body = request_error_body(RuntimeError("/secret/path/file.py line 3 in <module>"))
    assert body is not None and body["error"]["code"] == 500
    assert "secret" not in body["error"]["message"] and "RuntimeError" in body["error"]["message"]


def test_text_the_tokenizer_cannot_encode_is_explained_in_words_a_client_reads() -> None:
    from serve.replica import request_error_body

    raw = TypeError("TextEncodeInput must be Union[TextInputSequence, Tuple[InputSequence, InputSequence]]")
    body = request_error_body(raw)
    assert body is not None and body["error"]["code"] == 400
    assert body["error"]["message"] == ("the text cannot be tokenized: it is not valid Unicode (a lone UTF-16 "
                                        "surrogate?)")


def test_the_engines_admission_control_is_a_shed_not_a_broken_replica() -> None:
    from vllm.exceptions import QueueOverflowError

    from serve.replica import request_error_body

    body = request_error_body(QueueOverflowError())
    assert body is not None and body["error"]["code"] == 503 and "at capacity" in body["error"]["message"]


# A body vLLM's request model refuses by raising its own VLLMValidationError, not pydantic's error
# (found by the 20,000-request live fuzz: as a stream it reached the controller as a broken replica).
PROMPT_NONE = {"model": "m", "prompt": None, "repetition_penalty": ""}


# vLLM's own before-validator calls .get on it (an AttributeError, which pydantic does not wrap).
STRUCTURED_FALSE = {"model": "m", "prompt": [6813], "structured_outputs": False}


@pytest.mark.parametrize(("body", "param"), [(PROMPT_NONE, "prompt"), (STRUCTURED_FALSE, None)])
@pytest.mark.parametrize("stream", [True, False])
def test_a_body_the_request_model_refuses_by_raising_is_a_400_on_both_paths(
        stream: bool, body: dict, param: str | None) -> None:
    import asyncio

    from serve.replica import CascadeLLMServer

    class Parsing(CascadeLLMServer):  # parsing needs no engine, and no engine is there to shut down
        def __del__(self) -> None:
            pass

    replica = object.__new__(Parsing)

    async def answer() -> list:
        if not stream:
            return [await replica.run("completions", dict(body))]
        return [line async for line in replica.stream("completions", {**body, "stream": True})]

    lines = asyncio.run(answer())
    assert len(lines) == 1 and isinstance(lines[0], dict), lines
    assert lines[0]["error"]["code"] == 400 and lines[0]["error"].get("param") == param


def test_one_request_failing_in_a_live_engine_leaves_the_replica_in_the_cascade() -> None:
    """Found by the live fuzz: a number past 64 bits passes the request model, fails the engine's
    serializer, and vLLM raises EngineGenerateError ("recoverable"): a 400, not a broken replica."""
    from vllm.v1.engine.exceptions import EngineGenerateError

    from serve.replica import request_error_body

    def raised(cause: Exception) -> EngineGenerateError:
        try:
            raise EngineGenerateError() from cause
        except EngineGenerateError as exc:
            return exc

    body = request_error_body(raised(OverflowError("can't serialize ints < -2**63 or > 2**64 - 1")))
    assert body is not None and body["error"]["code"] == 400 and "serialize" in body["error"]["message"]
    body = request_error_body(raised(RuntimeError("/secret/path")))
    assert body is not None and body["error"]["code"] == 500 and "secret" not in body["error"]["message"]
