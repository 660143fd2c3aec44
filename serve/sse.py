"""Server-sent events: the lines of an OpenAI stream, and a finished answer replayed as one.

A cascade's stages run buffered (a stage's answer must be complete before the policy can judge it,
and an escalated answer must never have reached the client), so the accepted answer is streamed
afterwards: chunks of about a word each, then the ``finish_reason`` chunk, then, with
``stream_options.include_usage``, a usage chunk (``choices: []``) that carries the ``cascade`` trace,
then ``[DONE]``. Nothing can fail once the first line is out: the answer is already complete.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any

__all__ = ["DONE", "replay_answer", "sse", "word_chunks"]

DONE = "data: [DONE]\n\n"


def sse(obj: Any) -> str:
    """One event: ``data: <json>`` and the blank line that ends it."""
    return f"data: {json.dumps(obj)}\n\n"


def word_chunks(text: str) -> list[str]:
    """``text`` cut before each word, each piece keeping its surrounding whitespace: joined, the text."""
    return re.findall(r"\s*\S+\s*", text) or ([text] if text else [])


async def replay_answer(endpoint: str, response: dict[str, Any], include_usage: bool) -> AsyncIterator[str]:
    """The finished ``response`` of ``endpoint`` (``"chat"`` or ``"completions"``) as an OpenAI chunk
    stream (module docstring); every chunk carries the response's id."""
    chat = endpoint == "chat"
    base = {"id": response.get("id", ""), "created": response.get("created", int(time.time())),
            "model": response["model"], "object": "chat.completion.chunk" if chat else "text_completion"}
    choice = (response.get("choices") or [{}])[0]
    if chat:
        text = (choice.get("message") or {}).get("content") or ""
        yield sse({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                        "logprobs": None, "finish_reason": None}]})
        for piece in word_chunks(text):
            yield sse({**base, "choices": [{"index": 0, "delta": {"content": piece}, "logprobs": None,
                                            "finish_reason": None}]})
        yield sse({**base, "choices": [{"index": 0, "delta": {}, "logprobs": None,
                                        "finish_reason": choice.get("finish_reason")}]})
    else:
        for piece in word_chunks(choice.get("text") or ""):
            yield sse({**base, "choices": [{"index": 0, "text": piece, "logprobs": None, "finish_reason": None}]})
        yield sse({**base, "choices": [{"index": 0, "text": "", "logprobs": None,
                                        "finish_reason": choice.get("finish_reason")}]})
    if include_usage:
        yield sse({**base, "choices": [], "usage": response["usage"], "cascade": response["cascade"]})
    yield DONE
