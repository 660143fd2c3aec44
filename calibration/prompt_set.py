"""A labelled prompt set for calibration: one JSON object per line, read strictly.

Each line is a query of the user's own traffic with the answer it should get::

    {"id": "gsm-17", "messages": [{"role": "user", "content": "What is 17*3?"}], "answer": "51",
     "grader": "numeric", "task": "math", "max_tokens": 64}

- ``messages`` (chat) or ``prompt`` (completions): exactly one of them.
- ``answer``: the reference the grader compares with (required: an unlabelled row is an error).
- ``id`` (default ``line-N``), ``grader`` (a registry name or ``package.module:function``; default the
  caller's), ``task`` (a label for reports), ``max_tokens`` (default the caller's): optional.

Errors name the file and line number; nothing is partially loaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from calibration.graders import GRADERS

__all__ = ["PromptRow", "PromptSetError", "load_prompt_set"]

_FIELDS = frozenset({"id", "messages", "prompt", "answer", "grader", "task", "max_tokens"})


class PromptSetError(ValueError):
    """A malformed prompt file; the message names the file and line."""


@dataclass(frozen=True)
class PromptRow:
    id: str
    answer: str
    grader: str
    task: str
    max_tokens: int
    messages: tuple[tuple[str, str], ...] | None = None  # (role, content) pairs
    prompt: str | None = None

    @property
    def endpoint(self) -> str:
        return "chat" if self.messages is not None else "completions"

    @property
    def text(self) -> str:
        """The query text the estimators read (as the controller builds it from a request)."""
        if self.messages is not None:
            return "\n".join(content for _, content in self.messages)
        assert self.prompt is not None
        return self.prompt

    def request_body(self, model: str) -> dict[str, Any]:
        """An OpenAI request for ``model``: greedy, with token log-probabilities."""
        body: dict[str, Any] = {"model": model, "max_tokens": self.max_tokens, "temperature": 0.0, "logprobs": True}
        if self.messages is not None:
            body["messages"] = [{"role": r, "content": c} for r, c in self.messages]
        else:
            body["prompt"] = self.prompt
            body["logprobs"] = 1
        return body


def load_prompt_set(path: str | Path, *, default_grader: str = "exact_match", default_max_tokens: int = 64,
                    ) -> list[PromptRow]:
    """Read and validate every line of ``path`` (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise PromptSetError(f"{path}: no such prompt file")
    rows: list[PromptRow] = []
    seen: dict[str, int] = {}
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as exc:
                raise PromptSetError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
            row = _parse(raw, where, number, default_grader, default_max_tokens)
            if row.id in seen:
                raise PromptSetError(f"{where}: id {row.id!r} repeats line {seen[row.id]}")
            seen[row.id] = number
            rows.append(row)
    if not rows:
        raise PromptSetError(f"{path}: no prompts (the file is empty)")
    return rows


def _parse(raw: Any, where: str, number: int, default_grader: str, default_max_tokens: int) -> PromptRow:
    if not isinstance(raw, dict):
        raise PromptSetError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    unknown = sorted(set(raw) - _FIELDS)
    if unknown:
        raise PromptSetError(f"{where}: unknown field(s) {unknown}; allowed: {sorted(_FIELDS)}")
    if "answer" not in raw or raw["answer"] is None:
        raise PromptSetError(f"{where}: unlabelled row: 'answer' (the reference answer) is required")
    answer = raw["answer"]
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)) or str(answer).strip() == "":
        raise PromptSetError(f"{where}: 'answer' must be a non-empty string or a number, got {answer!r}")
    has_messages, has_prompt = "messages" in raw, "prompt" in raw
    if has_messages == has_prompt:
        raise PromptSetError(f"{where}: give exactly one of 'messages' (chat) or 'prompt' (completions)")
    messages: tuple[tuple[str, str], ...] | None = None
    prompt: str | None = None
    if has_messages:
        msgs = raw["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise PromptSetError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects")
        parsed = []
        for j, m in enumerate(msgs):
            if (not isinstance(m, dict) or not isinstance(m.get("role"), str)
                    or not isinstance(m.get("content"), str) or set(m) - {"role", "content"}):
                raise PromptSetError(f"{where}: messages[{j}] must be {{\"role\": str, \"content\": str}}")
            parsed.append((m["role"], m["content"]))
        messages = tuple(parsed)
    else:
        prompt = raw["prompt"]
        if not isinstance(prompt, str) or not prompt:
            raise PromptSetError(f"{where}: 'prompt' must be a non-empty string")
    grader = raw.get("grader", default_grader)
    module, _, function = grader.partition(":") if isinstance(grader, str) else ("", "", "")
    if not isinstance(grader, str) or not (grader in GRADERS or (module and function)):
        raise PromptSetError(f"{where}: 'grader' must be one of {sorted(GRADERS)} or 'package.module:function', "
                             f"got {grader!r}")
    max_tokens = raw.get("max_tokens", default_max_tokens)
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise PromptSetError(f"{where}: 'max_tokens' must be a positive integer, got {max_tokens!r}")
    row_id = raw.get("id", f"line-{number}")
    if not isinstance(row_id, (str, int)) or isinstance(row_id, bool) or str(row_id) == "":
        raise PromptSetError(f"{where}: 'id' must be a non-empty string or an integer, got {row_id!r}")
    task = raw.get("task", "default")
    if not isinstance(task, str) or not task:
        raise PromptSetError(f"{where}: 'task' must be a non-empty string, got {task!r}")
    return PromptRow(id=str(row_id), answer=str(answer), grader=grader, task=task, max_tokens=max_tokens,
                     messages=messages, prompt=prompt)
