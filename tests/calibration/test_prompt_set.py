"""The calibration prompt file: strict JSONL parsing whose errors name file:line, and the requests it builds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from calibration.prompt_set import PromptRow, PromptSetError, load_prompt_set

CHAT = {"id": "gsm-17", "messages": [{"role": "system", "content": "Be brief."},
                                     {"role": "user", "content": "What is 17*3?"}],
        "answer": "51", "grader": "numeric", "task": "math", "max_tokens": 32}
COMPLETION = {"prompt": "The capital of France is", "answer": "Paris"}


def _write(tmp_path: Path, *lines: Any) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def test_chat_and_completion_rows_with_defaults(tmp_path: Path) -> None:
    path = _write(tmp_path, CHAT, "", "   ", COMPLETION, {"id": 7, "prompt": "2+2=", "answer": 4})
    rows = load_prompt_set(path, default_grader="exact_match", default_max_tokens=16)
    assert [r.id for r in rows] == ["gsm-17", "line-4", "7"]  # ids default to the line number; ints are ids
    chat, completion, numbered = rows
    assert chat == PromptRow(id="gsm-17", answer="51", grader="numeric", task="math", max_tokens=32,
                             messages=(("system", "Be brief."), ("user", "What is 17*3?")))
    assert chat.endpoint == "chat" and completion.endpoint == "completions"
    assert (completion.grader, completion.task, completion.max_tokens) == ("exact_match", "default", 16)
    assert numbered.answer == "4"  # a numeric answer is kept as its text


def test_text_joins_message_contents_or_is_the_prompt(tmp_path: Path) -> None:
    chat, completion = load_prompt_set(_write(tmp_path, CHAT, COMPLETION))
    assert chat.text == "Be brief.\nWhat is 17*3?"
    assert completion.text == "The capital of France is"


def test_request_bodies_are_greedy_with_logprobs(tmp_path: Path) -> None:
    chat, completion = load_prompt_set(_write(tmp_path, CHAT, COMPLETION), default_max_tokens=64)
    assert chat.request_body("small") == {
        "model": "small", "max_tokens": 32, "temperature": 0.0, "logprobs": True,
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 17*3?"}],
    }
    assert completion.request_body("large") == {
        "model": "large", "max_tokens": 64, "temperature": 0.0, "logprobs": 1, "prompt": "The capital of France is",
    }


def test_custom_grader_hook_name_is_accepted(tmp_path: Path) -> None:
    (row,) = load_prompt_set(_write(tmp_path, {**COMPLETION, "grader": "my_pkg.grading:score"}))
    assert row.grader == "my_pkg.grading:score"


# (line content, fragment of the message); each bad line is written as line 2, after a good one.
_BAD_LINES: list[tuple[Any, str]] = [
    ('{"prompt": "x", "answer": ', "not valid JSON"),
    ("[1, 2]", "expected a JSON object, got list"),
    ('"just text"', "expected a JSON object, got str"),
    ({**COMPLETION, "reference": "Paris"}, "unknown field(s) ['reference']"),
    ({"prompt": "x"}, "unlabelled row"),
    ({"prompt": "x", "answer": None}, "unlabelled row"),
    ({"prompt": "x", "answer": True}, "'answer' must be a non-empty string or a number"),
    ({"prompt": "x", "answer": ["a"]}, "'answer' must be a non-empty string or a number"),
    ({"answer": "a"}, "exactly one of 'messages' (chat) or 'prompt' (completions)"),
    ({**COMPLETION, "messages": [{"role": "user", "content": "x"}]}, "exactly one of 'messages'"),
    ({"messages": [], "answer": "a"}, "'messages' must be a non-empty list"),
    ({"messages": "hello", "answer": "a"}, "'messages' must be a non-empty list"),
    ({"messages": [{"role": "user"}], "answer": "a"}, "messages[0] must be"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "user", "content": 3}], "answer": "a"},
     "messages[1] must be"),
    ({"messages": [{"role": "user", "content": "x", "name": "bob"}], "answer": "a"}, "messages[0] must be"),
    ({"messages": ["hi"], "answer": "a"}, "messages[0] must be"),
    ({"prompt": "", "answer": "a"}, "'prompt' must be a non-empty string"),
    ({"prompt": 5, "answer": "a"}, "'prompt' must be a non-empty string"),
    ({**COMPLETION, "grader": "fuzzy"}, "'grader' must be one of"),
    ({**COMPLETION, "grader": 3}, "'grader' must be one of"),
    ({**COMPLETION, "max_tokens": 0}, "'max_tokens' must be a positive integer, got 0"),
    ({**COMPLETION, "max_tokens": 1.5}, "'max_tokens' must be a positive integer"),
    ({**COMPLETION, "max_tokens": True}, "'max_tokens' must be a positive integer"),
    ({**COMPLETION, "max_tokens": "64"}, "'max_tokens' must be a positive integer"),
    ({**COMPLETION, "id": ""}, "'id' must be a non-empty string or an integer"),
    ({**COMPLETION, "id": [1]}, "'id' must be a non-empty string or an integer"),
    ({**COMPLETION, "task": ""}, "'task' must be a non-empty string"),
    ({**COMPLETION, "answer": " "}, "'answer' must be a non-empty string or a number"),
    ({**COMPLETION, "grader": "pkg.mod:"}, "'grader' must be one of"),
    ({**COMPLETION, "grader": ":fn"}, "'grader' must be one of"),
]


@pytest.mark.parametrize(("line", "fragment"), _BAD_LINES, ids=[f for _, f in _BAD_LINES])
def test_every_bad_line_names_file_and_line(tmp_path: Path, line: Any, fragment: str) -> None:
    path = _write(tmp_path, CHAT, line, COMPLETION)
    with pytest.raises(PromptSetError) as info:
        load_prompt_set(path)
    message = str(info.value)
    assert message.startswith(f"{path}:2: "), message
    assert fragment in message
    assert isinstance(info.value, ValueError)  # callers may catch ValueError


def test_duplicate_ids_name_both_lines(tmp_path: Path) -> None:
    path = _write(tmp_path, CHAT, COMPLETION, {**COMPLETION, "id": "gsm-17"})
    with pytest.raises(PromptSetError, match=r":3: id 'gsm-17' repeats line 1"):
        load_prompt_set(path)
    # An integer id and its text are the same id.
    path = _write(tmp_path, {**COMPLETION, "id": 5}, {**COMPLETION, "id": "5"})
    with pytest.raises(PromptSetError, match=r":2: id '5' repeats line 1"):
        load_prompt_set(path)


def test_empty_and_missing_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n  \n")
    with pytest.raises(PromptSetError, match=r"empty\.jsonl: no prompts \(the file is empty\)"):
        load_prompt_set(empty)
    with pytest.raises(PromptSetError, match="no such prompt file"):
        load_prompt_set(tmp_path / "absent.jsonl")


def test_nothing_is_loaded_when_a_late_line_is_bad(tmp_path: Path) -> None:
    """The whole file is validated: a bad last line fails the load (no partial prompt set)."""
    path = _write(tmp_path, CHAT, COMPLETION, {"prompt": "x"})
    with pytest.raises(PromptSetError, match=":3: "):
        load_prompt_set(path)
