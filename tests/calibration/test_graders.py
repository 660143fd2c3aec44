"""Graders: answer extraction per grader, code runs in a killed-on-timeout subprocess, safe grading, hooks."""

from __future__ import annotations

import math
import re
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from calibration.graders import (
    GRADERS,
    Grade,
    choice_match,
    code_tests,
    exact_match,
    grade,
    load_grader,
    numeric_match,
)

GSM8K_ANSWER = (
    "Natalia sold 48/2 = 24 clips in May.\n"
    "Natalia sold 48 + 24 = 72 clips altogether in April and May.\n"
    "The answer is 72."
)


@pytest.mark.parametrize(
    ("answer", "reference", "expected"),
    [
        ("Paris", "paris", 1.0),
        ("  The   Eiffel\nTower. ", "the eiffel tower", 1.0),
        ('"Yes"', "yes", 1.0),
        ("**Paris**", "Paris", 1.0),
        ("\u201cParis!\u201d", "Paris", 1.0),
        ("Paris, France", "Paris", 0.0),
        ("London", "Paris", 0.0),
        ("-5", "5", 0.0),  # a sign is meaning, not punctuation
        ("$5", "5", 0.0),
    ],
)
def test_exact_match(answer: str, reference: str, expected: float) -> None:
    assert exact_match(answer, reference) == expected


@pytest.mark.parametrize(
    ("answer", "reference", "expected"),
    [
        # GSM8K: chain of thought graded by its last number against a "#### n" reference.
        (GSM8K_ANSWER, "#### 72", 1.0),
        (GSM8K_ANSWER.replace("72", "70"), "#### 72", 0.0),
        ("She pays 3 * $4 = $12.\n#### 12", "#### 12", 1.0),
        ("#### 12\nI hope this helps with step 3", "12", 1.0),  # "####" beats the last number
        # MATH: the last \boxed{} wins, nested braces included.
        (r"So the answer is $\boxed{12}$.", "12", 1.0),
        (r"\boxed{{12}}", "12", 1.0),
        (r"First \boxed{3}, but correcting the sign: \boxed{4}", "4", 1.0),
        (r"First \boxed{3}, but correcting the sign: \boxed{4}", "3", 0.0),
        (r"The area is \boxed{5}. Check: 5 * 2 = 10.", "5", 1.0),  # boxed beats a later number
        (r"\boxed{12}", r"\boxed{12}", 1.0),
        (r"\boxed{\frac{1}{2}}", "1/2", 1.0),
        (r"\boxed{\dfrac{1}{2}}", "0.5", 1.0),
        (r"$\boxed{-\frac{3}{4}}$", "-0.75", 1.0),
        (r"\boxed{\frac{1}{3}}", "1/2", 0.0),
        (r"\boxed{x = 5}", "5", 1.0),
        (r"\boxed{18 \text{ dollars}}", "18", 1.0),
        (r"\boxed{1{,}234}", "1234", 1.0),
        (r"\boxed{\sqrt{2}}", r"\boxed{\sqrt{2}}", 1.0),  # non-numeric reference: compared as text
        (r"\boxed{\sqrt{3}}", r"\boxed{\sqrt{2}}", 0.0),
        (r"\boxed{\sqrt{2}}", "2", 0.0),  # boxed LaTeX is not searched for stray digits
        # Thousands separators, negatives, decimals, fractions, percent.
        ("The total is $1,234.", "1234", 1.0),
        ("It costs 1234.0 dollars", "#### 1,234", 1.0),
        ("The population grew to 1,234,567 people.", "1234567", 1.0),
        ("The temperature drops to -3.5 degrees.", "-3.5", 1.0),
        ("The temperature drops to -3.5 degrees.", "3.5", 0.0),
        ("x = \u22127", "-7", 1.0),  # unicode minus
        ("10-3 = 7", "7", 1.0),
        ("Half of them: 1/2", "0.5", 1.0),
        ("The discount is 50%.", "50", 1.0),
        # The last number rule.
        ("Step 1: 3 apples. Step 2: 5 apples. So 8 apples in all.", "8", 1.0),
        ("So 8 apples in all, from step 2.", "8", 0.0),
        # Tolerance: exact for integer references, relative 1e-6 otherwise.
        ("1000000.5", "1000000", 0.0),
        ("1000001", "1,000,000", 0.0),
        ("0.3333333", r"\frac{1}{3}", 1.0),
        ("0.33", "1/3", 0.0),
        ("I don't know.", "42", 0.0),
    ],
)
def test_numeric_match(answer: str, reference: str, expected: float) -> None:
    assert numeric_match(answer, reference) == expected


def test_numeric_match_refuses_a_reference_without_an_answer() -> None:
    with pytest.raises(ValueError, match="no final answer"):
        numeric_match("42", "  ")


@pytest.mark.parametrize(
    ("answer", "reference", "expected"),
    [
        ("Answer: B", "B", 1.0),
        ("The answer is (C).", "c", 1.0),
        ("The answer is: B", "(b)", 1.0),
        ("**Answer:** D", "D", 1.0),
        ("After eliminating the others, the correct option is E", "E", 1.0),
        ("Option B is correct.", "B", 1.0),
        (r"The final answer is $\boxed{\text{E}}$", "E", 1.0),
        ("the answer is b.", "B", 1.0),
        ("B) Paris", "B", 1.0),
        ("(D)", "D", 1.0),
        ("C", "C", 1.0),
        ("Let me think.\n\nC\n", "C", 1.0),
        # The last explicit statement wins over earlier ones and over marked letters.
        ("The answer is A... no wait, the answer is C.", "C", 1.0),
        ("The answer is A... no wait, the answer is C.", "A", 0.0),
        ("(A) is a trap. Answer: J", "J", 1.0),
        # Without an explicit statement, the first marked letter.
        ("(B) looks right, though (C) is close.", "B", 1.0),
        # Articles and prose are not letters.
        ("A train leaves at 3 pm and arrives at 5 pm. Answer: J", "J", 1.0),
        ("The answer is a function of x", "A", 0.0),
        ("Answer: b because it is larger", "B", 0.0),
        ("I am not sure.", "A", 0.0),
    ],
)
def test_choice_match(answer: str, reference: str, expected: float) -> None:
    assert choice_match(answer, reference) == expected


@pytest.mark.parametrize("reference", ["Paris", "K", "", "AB"])
def test_choice_match_refuses_a_reference_that_is_not_a_letter(reference: str) -> None:
    with pytest.raises(ValueError, match="not a choice letter"):
        choice_match("Answer: A", reference)


ADD_TESTS = "assert add(2, 3) == 5\nassert add(-1, 1) == 0"


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("Here is my solution:\n```python\ndef add(a, b):\n    return a + b\n```\nIt adds.", 1.0),
        ("def add(a, b):\n    return a + b", 1.0),  # no fence: the whole answer is the code
        ("```\ndef add(a, b):\n    return a + b\n```", 1.0),  # unlabelled fence
        # The last python block wins, and a python block beats an unlabelled one.
        ("```python\ndef add(a, b):\n    return a - b\n```\nFixed:\n```py\ndef add(a, b):\n    return a + b\n```", 1.0),
        ("```python\ndef add(a, b):\n    return a + b\n```\nUsage:\n```\nadd(2, 3)\n```", 1.0),
        ("```python\ndef add(a, b):\n    return a - b\n```", 0.0),
        ("```python\ndef add(a, b)\n    return a + b\n```", 0.0),  # syntax error
    ],
)
def test_code_tests(answer: str, expected: float) -> None:
    assert code_tests(answer, ADD_TESTS) == expected


def test_code_tests_detail_names_the_failure() -> None:
    failed = grade(code_tests, "def add(a, b):\n    return a - b", ADD_TESTS)
    assert (failed.score, failed.status) == (0.0, "ok")
    assert failed.detail.startswith("exit code 1: ") and "AssertionError" in failed.detail
    broken = grade(code_tests, "def add(a, b)\n    return a + b", ADD_TESTS)
    assert "SyntaxError" in broken.detail
    assert grade(code_tests, "def add(a, b):\n    return a + b", ADD_TESTS) == Grade(1.0, "ok", "tests passed")


def test_code_tests_runs_isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh temporary cwd, none of our environment, stdin closed (input() fails rather than hangs)."""
    monkeypatch.setenv("CASCADE_GRADER_SECRET", "leaked")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "add.py").write_text("def add(a, b):\n    return a + b\n")
    probe = textwrap.dedent(
        """
        import os
        assert "CASCADE_GRADER_SECRET" not in os.environ
        assert sorted(os.listdir(".")) == ["solution.py", "stderr.txt"]
        """
    )
    assert code_tests("def add(a, b):\n    return a + b", probe) == 1.0
    assert code_tests("from add import add", ADD_TESTS) == 0.0
    waited = grade(code_tests, "line = input()", "assert True", timeout_s=20.0)
    assert (waited.status, waited.score) == ("ok", 0.0)  # an open stdin would have hung until "timeout"
    assert "EOFError" in waited.detail


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a live (not zombie) process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_code_tests_timeout_kills_the_process_group(tmp_path: Path) -> None:
    pids = tmp_path / "pids.txt"
    spinner = textwrap.dedent(
        f"""
        import os, subprocess, sys
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        with open({str(pids)!r}, "w") as f:
            f.write(f"{{os.getpid()}} {{child.pid}}")
        while True:
            pass
        """
    )
    # Long enough for the spinner to start its grandchild and record both pids on a loaded machine.
    started = time.monotonic()
    result = grade(code_tests, "```python\nx = 1\n```", spinner, timeout_s=5.0)
    assert time.monotonic() - started < 15.0
    assert result == Grade(0.0, "timeout", "TimeoutError: tests did not finish in 5 s")
    own, grandchild = (int(p) for p in pids.read_text().split())
    deadline = time.monotonic() + 5.0
    while (_alive(own) or _alive(grandchild)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(own)
    assert not _alive(grandchild)
    with pytest.raises(TimeoutError):
        code_tests("while True:\n    pass", "", timeout_s=0.5)


def test_grade_reports_the_extracted_answers() -> None:
    assert grade(numeric_match, "So she has 41 left.", "#### 42") == Grade(0.0, "ok", "expected 42, got 41")
    assert grade(numeric_match, r"\boxed{42}", "42") == Grade(1.0, "ok", "matched 42")
    assert grade(choice_match, "Answer: C", "b") == Grade(0.0, "ok", "expected B, got C")
    assert grade(choice_match, "No idea", "B").detail == "expected B, got no letter"
    assert grade(exact_match, "London.", "Paris") == Grade(0.0, "ok", "expected 'paris', got 'london'")


def test_grade_marks_a_raising_grader_as_an_error() -> None:
    def divide(answer: str, reference: str) -> float:
        return 1 / 0

    assert grade(divide, "a", "b") == Grade(0.0, "error", "ZeroDivisionError: division by zero")
    bad_reference = grade(numeric_match, "42", "")
    assert bad_reference.status == "error" and bad_reference.detail.startswith("ValueError: reference")
    assert grade(choice_match, "Answer: A", "Paris").status == "error"

    def leave(answer: str, reference: str) -> float:
        sys.exit(3)

    assert grade(leave, "a", "b") == Grade(0.0, "error", "SystemExit: 3")


def test_grade_times_out_a_hanging_grader() -> None:
    def hang(answer: str, reference: str) -> float:
        time.sleep(5)
        return 1.0

    started = time.monotonic()
    assert grade(hang, "a", "b", timeout_s=0.5) == Grade(0.0, "timeout", "grader did not finish in 0.5 s")
    assert time.monotonic() - started < 2.5

    def give_up(answer: str, reference: str) -> float:
        raise TimeoutError("judge API too slow")

    assert grade(give_up, "a", "b") == Grade(0.0, "timeout", "TimeoutError: judge API too slow")


@pytest.mark.parametrize(
    ("returned", "expected"),
    [
        (True, Grade(1.0, "ok")),
        (False, Grade(0.0, "ok")),
        (1, Grade(1.0, "ok")),
        (0.25, Grade(0.25, "ok")),
        (1.5, Grade(0.0, "error", "grader returned 1.5, outside [0, 1]")),
        (-0.1, Grade(0.0, "error", "grader returned -0.1, outside [0, 1]")),
        (math.nan, Grade(0.0, "error", "grader returned nan, outside [0, 1]")),
        ("yes", Grade(0.0, "error", "grader returned 'yes' (str), not a number")),
        (None, Grade(0.0, "error", "grader returned None (NoneType), not a number")),
    ],
)
def test_grade_validates_the_score(returned: object, expected: Grade) -> None:
    def fixed(answer: str, reference: str) -> object:
        return returned

    assert grade(fixed, "a", "b") == expected  # type: ignore[arg-type]


HOOKS = textwrap.dedent(
    """
    def contains(answer, reference):
        return float(reference.lower() in answer.lower())

    NOT_CALLABLE = 3
    """
)


@pytest.fixture
def hook_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An importable user module of graders (``tests`` itself is not a package importable under pytest)."""
    name = "cascade_test_grader_hooks"
    (tmp_path / f"{name}.py").write_text(HOOKS)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_load_grader_resolves_registry_names() -> None:
    assert set(GRADERS) == {"exact_match", "numeric", "choice", "code_tests"}
    for name, grader in GRADERS.items():
        assert load_grader(name) is grader
    assert load_grader(" numeric ") is numeric_match


def test_load_grader_imports_a_user_hook(hook_module: str) -> None:
    contains = load_grader(f"{hook_module}:contains")
    assert grade(contains, "The capital is Paris.", "paris") == Grade(1.0, "ok")
    assert grade(contains, "The capital is Lyon.", "paris") == Grade(0.0, "ok")


@pytest.mark.parametrize(
    "spec",
    [
        "nope",
        "numeric_match",
        "cascade_no_such_module_xyz:grade",
        "{hooks}:missing",
        "{hooks}:NOT_CALLABLE",
        ":contains",
        "{hooks}:",
    ],
)
def test_load_grader_rejects_bad_specs(spec: str, hook_module: str) -> None:
    spec = spec.format(hooks=hook_module)
    with pytest.raises(ValueError, match=re.escape(repr(spec))):
        load_grader(spec)
