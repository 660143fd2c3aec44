"""Graders: turn a model's answer into a quality label in [0, 1] for calibration on a user's labelled prompts.

A grader is a callable ``(answer, reference) -> float``. The built-in ones, by registry name:

``exact_match`` (:func:`exact_match`)
    Equal after case folding, whitespace collapsing and stripping surrounding quotes, brackets, markdown
    emphasis and sentence punctuation. Signs and currency (``-``, ``+``, ``$``, ``%``, ``#``) are kept.
``numeric`` (:func:`numeric_match`)
    The final answer is the content of the last ``\\boxed{...}`` (nested braces allowed), else the first number
    after the last ``####`` (GSM8K), else the last number in the text. Numbers are integers, decimals, ``1,234``
    thousands separators, simple fractions ``a/b`` and ``\\frac{a}{b}`` (also ``\\dfrac``, ``\\tfrac``) with
    numeric parts. Equal when the reference is an integer, within a relative 1e-6 otherwise. A reference whose
    final answer is not a number (``\\boxed{\\sqrt{2}}``) is compared as text with spacing removed.
``choice`` (:func:`choice_match`)
    A multiple-choice letter A-J: the last explicit statement ("Answer: B", "the answer is (C)", "D is
    correct") wins, else the first marked letter ("(B)", "B)", "B.", a letter alone on its line).
``code_tests`` (:func:`code_tests`)
    The last fenced Python block of the answer (else the whole answer) followed by the reference's test code,
    run in a fresh Python process with a timeout: 1.0 if it exits cleanly, else 0.0.

:func:`load_grader` resolves a name from a YAML config: a registry name or a user hook ``package.module:function``.
:func:`grade` runs any grader so that one bad row cannot stop a calibration run: exceptions, hangs and scores
outside [0, 1] come back as a :class:`Grade` whose ``status`` marks the row.
"""

from __future__ import annotations

import importlib
import math
import numbers
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Literal

from estimators.answers import extract_choice, extract_code, final_answer, normalise_math, parse_number

__all__ = [
    "GRADERS",
    "Grade",
    "Grader",
    "choice_match",
    "code_tests",
    "exact_match",
    "grade",
    "load_grader",
    "numeric_match",
]

Grader = Callable[[str, str], float]
Status = Literal["ok", "error", "timeout"]

_DETAIL_CHARS = 80


@dataclass(frozen=True, slots=True)
class Grade:
    """The quality label of one answer.

    Attributes
    ----------
    score : float
        Quality in [0, 1]; 0.0 whenever ``status`` is not ``"ok"``.
    status : {"ok", "error", "timeout"}
        ``"ok"`` when the grader produced a valid score; ``"error"`` when it raised or returned something that
        is not a number in [0, 1]; ``"timeout"`` when it did not finish in time.
    detail : str
        A short reason: what was expected and found, or the exception's one-line message.
    """

    score: float
    status: Status
    detail: str = ""


def _short(text: str, limit: int = _DETAIL_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------------------------------- exact match

# Signs, currency and percent change the meaning of an answer, so they are not stripped.
_EDGE_CHARS = " \t\r\n.,;:!?\"'`*_()[]{}<>\u201c\u201d\u2018\u2019\u00ab\u00bb"


def _normalise_text(text: str) -> str:
    return " ".join(text.split()).casefold().strip(_EDGE_CHARS)


def _exact(answer: str, reference: str) -> tuple[float, str]:
    got, expected = _normalise_text(answer), _normalise_text(reference)
    if got == expected:
        return 1.0, f"matched {_short(expected)!r}"
    return 0.0, f"expected {_short(expected)!r}, got {_short(got)!r}"


def exact_match(answer: str, reference: str) -> float:
    """1.0 if the answer equals the reference up to case, spacing and surrounding punctuation, else 0.0.

    Parameters
    ----------
    answer : str
        The model's answer.
    reference : str
        The expected answer.

    Returns
    -------
    float
        1.0 or 0.0.

    Examples
    --------
    >>> exact_match('  "The Eiffel  Tower." ', "the eiffel tower")
    1.0
    >>> exact_match("-5", "5")
    0.0
    """
    return _exact(answer, reference)[0]


# ------------------------------------------------------------------------------------------------ numeric match

def _numeric(answer: str, reference: str) -> tuple[float, str]:
    expected_text = final_answer(reference)
    if not normalise_math(expected_text):
        raise ValueError(f"reference {_short(reference)!r} has no final answer")
    got_text = final_answer(answer)
    expected = parse_number(expected_text)
    if expected is None:
        same = normalise_math(got_text) == normalise_math(expected_text)
    else:
        got = parse_number(got_text)
        if got is None:
            return 0.0, f"expected {_short(expected_text)}, got no number"
        if expected.denominator == 1:
            same = got == expected
        else:
            same = abs(got - expected) <= Fraction(1, 10**6) * max(abs(got), abs(expected))
    if same:
        return 1.0, f"matched {_short(expected_text)}"
    return 0.0, f"expected {_short(expected_text)}, got {_short(got_text) or 'nothing'}"


def numeric_match(answer: str, reference: str) -> float:
    """1.0 if the final answer of ``answer`` equals that of ``reference`` as a number, else 0.0.

    The final answer of either text is the content of its last ``\\boxed{...}``, else the first number after
    its last ``####``, else its last number; so the reference may be ``"42"``, ``"#### 42"`` or
    ``"\\boxed{42}"``. Boxed content must be a single number once spacing, ``$``, ``%``, ``\\text{...}``
    units, degrees, a leading ``x =`` and outer braces are removed: ``\\boxed{\\sqrt{2}}`` is not 2.
    ``\\frac{a}{b}`` with numeric ``a`` and ``b`` is parsed (``\\boxed{\\frac{1}{2}}`` matches ``"0.5"``); other
    LaTeX is not evaluated.

    Parameters
    ----------
    answer : str
        The model's answer, typically a chain of thought ending in the result.
    reference : str
        The expected answer.

    Returns
    -------
    float
        1.0 or 0.0. An integer reference needs an exact match; otherwise a relative tolerance of 1e-6 applies.
        A reference whose final answer is not a number is compared as text with spacing removed.

    Raises
    ------
    ValueError
        If the reference has no final answer (it is empty or only punctuation).

    Examples
    --------
    >>> numeric_match("48 + 24 = 72 clips. The answer is 72.", "#### 72")
    1.0
    >>> numeric_match("So the probability is \\\\boxed{\\\\frac{1}{2}}.", "0.5")
    1.0
    """
    return _numeric(answer, reference)[0]


# ------------------------------------------------------------------------------------------------ choice match

def _choice(answer: str, reference: str) -> tuple[float, str]:
    expected = reference.strip().strip("()[].:*").strip().upper()
    if len(expected) != 1 or expected not in "ABCDEFGHIJ":
        raise ValueError(f"reference {_short(reference)!r} is not a choice letter A-J")
    got = extract_choice(answer)
    if got == expected:
        return 1.0, f"matched {expected}"
    return 0.0, f"expected {expected}, got {got or 'no letter'}"


def choice_match(answer: str, reference: str) -> float:
    """1.0 if the multiple-choice letter (A-J) the answer gives is the reference letter, else 0.0.

    The letter is the last explicit statement: "Answer: B", "**Answer:** B", "The answer is (C).", "the correct
    option is D", "B is correct". Without one, it is the first marked letter: "(B)", "B)", "B." or "B:", or an
    upper-case letter alone on its line. A bare letter in running text ("A train leaves...") is not an answer.

    Parameters
    ----------
    answer : str
        The model's answer.
    reference : str
        The correct letter, any case, optionally in parentheses: ``"B"``, ``"b"``, ``"(B)"``.

    Returns
    -------
    float
        1.0 or 0.0; 0.0 when no letter can be found.

    Raises
    ------
    ValueError
        If the reference is not a letter A-J.

    Examples
    --------
    >>> choice_match("A looks tempting, but the answer is (C).", "c")
    1.0
    """
    return _choice(answer, reference)[0]


# -------------------------------------------------------------------------------------------------- code tests

_STDERR_TAIL_BYTES = 4096


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _code_tests(answer: str, reference: str, timeout_s: float) -> tuple[float, str]:
    program = extract_code(answer) + "\n\n" + reference + "\n"
    with tempfile.TemporaryDirectory(prefix="cascade-grade-") as tmp:
        script = Path(tmp) / "solution.py"
        script.write_text(program, encoding="utf-8")
        stderr_path = Path(tmp) / "stderr.txt"
        # stdout is discarded and stderr goes to a file: a program that prints in a loop must not fill our memory.
        with stderr_path.open("wb") as stderr:
            process = subprocess.Popen(
                [sys.executable, "-I", str(script)],
                cwd=tmp,
                env={"PATH": os.defpath, "HOME": tmp, "LANG": "C.UTF-8"},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,
            )
            try:
                returncode = process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                _kill_group(process.pid)
                process.wait()
                raise TimeoutError(f"tests did not finish in {timeout_s:g} s") from None
            finally:
                # The program may have started children of its own; they share its process group.
                _kill_group(process.pid)
        if returncode == 0:
            return 1.0, "tests passed"
        with stderr_path.open("rb") as stderr:
            stderr.seek(max(0, stderr_path.stat().st_size - _STDERR_TAIL_BYTES))
            lines = stderr.read().decode("utf-8", errors="replace").splitlines()
    last = next((line.strip() for line in reversed(lines) if line.strip()), "")
    reason = f"killed by signal {-returncode}" if returncode < 0 else f"exit code {returncode}"
    return 0.0, f"{reason}: {_short(last)}" if last else reason


def code_tests(answer: str, reference: str, *, timeout_s: float = 10.0) -> float:
    """1.0 if the answer's Python code passes the reference tests, else 0.0.

    The code is the last fenced block labelled ``python``/``py``/``python3`` in the answer, else its last
    unlabelled fenced block, else the whole answer. The code, a blank line and the tests run as one script in
    a fresh isolated interpreter (``python -I``), in a new temporary directory, with a minimal environment,
    stdin closed, stdout discarded, and in a process group of its own that is killed when the run ends.

    This isolates runs from each other and from this process; it is not a security sandbox: the code runs with
    the user's privileges and no memory limit.

    Parameters
    ----------
    answer : str
        The model's answer containing Python code.
    reference : str
        Test code, typically ``assert`` statements, that exits non-zero when the code is wrong.
    timeout_s : float, default 10.0
        Wall-clock limit for the run.

    Returns
    -------
    float
        1.0 if the script exits with status 0, else 0.0 (a failed assert, a syntax error, a crash).

    Raises
    ------
    TimeoutError
        If the run does not finish within ``timeout_s``; its processes are killed first.
    """
    return _code_tests(answer, reference, timeout_s)[0]


# ------------------------------------------------------------------------------------------- registry and hooks

GRADERS: dict[str, Grader] = {
    "exact_match": exact_match,
    "numeric": numeric_match,
    "choice": choice_match,
    "code_tests": code_tests,
}

# The built-in graders also explain their score; grade() uses these to fill Grade.detail.
_EXPLAINED: dict[Grader, Callable[[str, str], tuple[float, str]]] = {
    exact_match: _exact,
    numeric_match: _numeric,
    choice_match: _choice,
}


def load_grader(spec: str) -> Grader:
    """Resolve a grader named in a config file.

    Parameters
    ----------
    spec : str
        A registry name (``"exact_match"``, ``"numeric"``, ``"choice"``, ``"code_tests"``) or a user hook
        ``"package.module:function"``: any importable callable ``(answer: str, reference: str) -> float``.

    Returns
    -------
    Grader
        The grader callable.

    Raises
    ------
    ValueError
        If ``spec`` is neither a registry name nor a hook, its module cannot be imported, the module lacks the
        attribute, or the attribute is not callable. The message names ``spec``.
    """
    name = spec.strip()
    if name in GRADERS:
        return GRADERS[name]
    module_name, colon, attribute = name.partition(":")
    if not colon or not module_name or not attribute:
        raise ValueError(f"unknown grader {spec!r}: expected one of {sorted(GRADERS)} or 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"grader {spec!r}: cannot import module {module_name!r} ({exc})") from exc
    hook = getattr(module, attribute, None)
    if hook is None:
        raise ValueError(f"grader {spec!r}: module {module_name!r} has no attribute {attribute!r}")
    if not callable(hook):
        raise ValueError(f"grader {spec!r}: {attribute!r} is a {type(hook).__name__}, not a callable")
    grader: Grader = hook
    return grader


# ------------------------------------------------------------------------------------------------- safe grading


def _validated(value: object, detail: str) -> Grade:
    if isinstance(value, bool):
        return Grade(float(value), "ok", detail)
    if not isinstance(value, numbers.Real):
        return Grade(0.0, "error", f"grader returned {_short(repr(value))} ({type(value).__name__}), not a number")
    score = float(value)
    if not math.isfinite(score) or not 0.0 <= score <= 1.0:
        return Grade(0.0, "error", f"grader returned {score!r}, outside [0, 1]")
    return Grade(score, "ok", detail)


def _failed(exc: BaseException) -> Grade:
    message = _short(str(exc).strip().splitlines()[0]) if str(exc).strip() else ""
    detail = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    # A grader that gives up on a slow computation reports it as a timeout, like a hang would.
    return Grade(0.0, "timeout" if isinstance(exc, TimeoutError) else "error", detail)


def grade(grader: Grader, answer: str, reference: str, *, timeout_s: float = 10.0) -> Grade:
    """Grade one answer without letting the grader crash or stall the caller.

    Parameters
    ----------
    grader : Grader
        A built-in grader or a user hook (see :func:`load_grader`).
    answer : str
        The model's answer.
    reference : str
        The expected answer, in the form the grader reads.
    timeout_s : float, default 10.0
        How long the grader may take. :func:`code_tests` gets it as its subprocess timeout; any other grader
        runs in a daemon thread that is abandoned when it does not finish in time (a thread cannot be killed:
        a hung hook keeps its thread until the process exits, but never blocks the exit).

    Returns
    -------
    Grade
        ``status="ok"`` with the score (``True``/``False`` count as 1.0/0.0); ``"error"`` with score 0.0 when the
        grader raised or returned something other than a finite number in [0, 1]; ``"timeout"`` with score 0.0
        when it ran out of time. The row is marked, never lost.
    """
    if grader is code_tests:
        try:
            return _validated(*_code_tests(answer, reference, timeout_s))
        except Exception as exc:
            return _failed(exc)

    explained = _EXPLAINED.get(grader)
    future: Future[tuple[object, str]] = Future()

    def run() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(explained(answer, reference) if explained else (grader(answer, reference), ""))
        except BaseException as exc:  # a hook calling sys.exit() is a failed row, not the end of the run
            future.set_exception(exc)

    threading.Thread(target=run, name=f"grader-{getattr(grader, '__name__', 'hook')}", daemon=True).start()
    try:
        raised = future.exception(timeout=timeout_s)
    except TimeoutError:
        return Grade(0.0, "timeout", f"grader did not finish in {timeout_s:g} s")
    if raised is not None:
        return _failed(raised)
    return _validated(*future.result())
