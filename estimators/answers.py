"""Reading a model's answer: its final answer, a multiple-choice letter, a code block.

Shared by the graders (``calibration.graders``, which score an answer against a reference) and the
post-hoc answer signals (``estimators.answer_signals``, which compare answers with each other), so
both read an answer the same way.
"""

from __future__ import annotations

import re
from fractions import Fraction

__all__ = ["extract_choice", "extract_code", "final_answer", "last_boxed", "normalise_math", "parse_number"]

_UINT = r"(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?"
# A minus sign right after a word or ")" is subtraction ("10-3"), not a sign; digits glued to a word ("x2") or a
# decimal point are not a number of their own.
_NUMBER = re.compile(
    rf"(?:(?<![\w)])-)?(?<![\w.])"
    rf"(?:\\[dt]?frac\{{(?P<fn>-?{_UINT})\}}\{{(?P<fd>{_UINT})\}}|(?P<n>{_UINT})(?:\s*/\s*(?P<d>{_UINT}))?)"
)
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_UNITS = re.compile(r"\\(?:text|textbf|mbox|mathrm)\s*\{[^{}]*\}")
_MATH_NOISE = re.compile(r"\s+|\\?[$%]|\\[,!;:]|\^\s*\{?\\circ\}?|\\left|\\right")
_ASSIGNMENT = re.compile(r"^[A-Za-z]\w*=")


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` whose braces close, or None."""
    for match in reversed(list(_BOXED.finditer(text))):
        depth = 1
        for i in range(match.end(), len(text)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    return text[match.end() : i]
    return None


def _strip_outer_braces(text: str) -> str:
    while len(text) >= 2 and text[0] == "{" and text[-1] == "}":
        depth = 0
        for i, char in enumerate(text):
            depth += (char == "{") - (char == "}")
            if depth == 0 and i < len(text) - 1:
                return text  # "{1}{2}": the first brace closes before the end
        text = text[1:-1]
    return text


def final_answer(text: str) -> str:
    """The span of ``text`` that holds its final answer (boxed, then ``####``, then last number)."""
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    if "####" in text:
        tail = text.rsplit("####", 1)[1]
        first = _NUMBER.search(tail.replace("\u2212", "-"))
        return first.group(0) if first else tail.strip()
    numbers_found = list(_NUMBER.finditer(text.replace("\u2212", "-")))
    return numbers_found[-1].group(0) if numbers_found else text.strip()


def normalise_math(text: str) -> str:
    text = _UNITS.sub("", text.replace("\u2212", "-"))
    text = _MATH_NOISE.sub("", text).replace("{,}", ",")
    return _strip_outer_braces(_ASSIGNMENT.sub("", text)).rstrip(".")


def parse_number(text: str) -> Fraction | None:
    """The value of ``text`` if, once normalised, it is exactly one number; else None."""
    match = _NUMBER.fullmatch(normalise_math(text))
    if match is None:
        return None
    numerator, denominator = (match["fn"], match["fd"]) if match["fn"] is not None else (match["n"], match["d"])
    value = Fraction(numerator.replace(",", ""))
    if denominator is not None:
        divisor = Fraction(denominator.replace(",", ""))
        if divisor == 0:
            return None
        value /= divisor
    return -value if match.group(0).startswith("-") else value


_CHOICE_EXPLICIT = re.compile(
    r"(?i:\b(?:answer|choice|option)[*\s]*(?:is[*\s]*:?|:|=)[*\s]*(?:(?:option|choice|letter)\s+)?)"
    r"(?P<open>\()?(?P<letter>[A-Ja-j])\)?(?![\w'])"
)
_CHOICE_IS_CORRECT = re.compile(r"(?<![\w'])\(?(?P<letter>[A-J])\)?\s+is\s+(?:the\s+)?(?i:correct|right)\b")
_CHOICE_MARKED = re.compile(
    r"^[ \t*]*\(?(?P<alone>[A-J])\)?[ \t*]*[.:)]?[ \t*]*$|\((?P<paren>[A-J])\)|(?<![\w'(])(?P<mark>[A-J])[.):](?!\w)",
    re.MULTILINE,
)
_BOXED_LETTER = re.compile(r"(?:\\text\s*\{)?\(?(?P<letter>[A-Ja-j])\)?\}?")
# After "answer is" a lower-case letter counts only when it is clearly a label ("answer: b." / "(b)"), so that
# "the answer is a function of x" is not read as choice A.
_LABEL_END = re.compile(r"[ \t]*(?:[.,;:!)*\n]|$)")


def extract_choice(answer: str) -> str | None:
    explicit: list[tuple[int, str]] = []
    for match in _CHOICE_EXPLICIT.finditer(answer):
        letter = match["letter"]
        if letter.isupper() or match["open"] or _LABEL_END.match(answer, match.end()):
            explicit.append((match.start(), letter.upper()))
    explicit += [(m.start(), m["letter"]) for m in _CHOICE_IS_CORRECT.finditer(answer)]
    boxed = last_boxed(answer)
    if boxed is not None:
        boxed_letter = _BOXED_LETTER.fullmatch(boxed.strip())
        if boxed_letter is not None:
            explicit.append((answer.rfind("\\boxed"), boxed_letter["letter"].upper()))
    if explicit:
        return max(explicit)[1]
    marked = _CHOICE_MARKED.search(answer)
    if marked is None:
        return None
    return marked["alone"] or marked["paren"] or marked["mark"]


_FENCE = re.compile(r"```[ \t]*(?P<lang>[\w+-]*)[^\n]*\n(?P<body>.*?)```", re.DOTALL)


def extract_code(answer: str) -> str:
    """The last ```python block, else the last unlabelled fenced block, else the whole answer."""
    blocks = [(m["lang"].lower(), m["body"]) for m in _FENCE.finditer(answer)]
    for wanted in ({"python", "py", "python3"}, {""}):
        bodies = [body for lang, body in blocks if lang in wanted]
        if bodies:
            return bodies[-1]
    return answer
