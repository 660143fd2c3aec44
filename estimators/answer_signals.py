"""Signals of the models' answers for post-hoc quality estimation: extracted answers and their agreement.

RouterBench has no log-probabilities, so the post-hoc signals are what the response text gives
(algorithm-spec §5.2 lists the paper's: agreement between answers, and certainty of the answer):

- **multiple choice** (ARC-Challenge, Winogrande: the prompt ends with ``Print only a single choice from
  "A" or "B" ...``): the chosen letter is extracted (a bare letter, ``A)``, ``(B)``, ``the answer is C``,
  or the text of an option); two answers agree when both were extracted and are the same letter, as the
  paper's open-form "extracted answers are equal". Whether a letter could be extracted stands in for
  the paper's "whether an answer was extracted" (refusals such as "I do not have enough context" get
  none).
- **code and open text** (MBPP): exact equality of programs almost never happens, so agreement is the
  Jaccard similarity of the token sets of the extracted code, in [0, 1]; "extracted" means the response
  contains a function definition.
- for every response, ``log(1 + number of characters)``: the paper's log(length) certainty feature.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

__all__ = ["AnswerSignals", "answer_signals", "choice_options", "code_tokens", "extract_choice"]

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]

_CHOICE_LINE = re.compile(r'single choice\s+from\s+((?:"[A-Z]"(?:\s*or\s*)?)+)')
_OPTION_LINE = re.compile(r"^\s*([A-Z])\)\s*(.*?)\s*$", re.MULTILINE)
# A letter alone, or followed by ")", ".", ":" or "(": "A", "A)", "(B)", "C.", "D (because ...)".
# "A hypothesis is ..." (the article) does not match.
_LEADING_LETTER = re.compile(r"^\(?([A-Z])\)?\s*(?:[).:(]|$)")
_STATED_ANSWER = re.compile(r"(?i:answer)(?: is)?\s*:?\s*\(?([A-Z])\b")
_CODE_BLOCK = re.compile(r"```(?:[a-zA-Z0-9_+-]*)\n(.*?)(?:```|$)|\[PYTHON\](.*?)(?:\[/PYTHON\]|$)", re.DOTALL)
_TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|\d+|[^\sA-Za-z0-9_]")


@dataclass(frozen=True, eq=False)
class AnswerSignals:
    """Per-query answer signals of every model.

    Attributes
    ----------
    agreement : ndarray of shape (n_queries, n_models, n_models)
        ``agreement[r, i, j]`` in [0, 1]: how much the answers of models i and j to query r agree
        (symmetric; the diagonal is 0, a model does not vote for itself).
    extracted : ndarray of shape (n_queries, n_models), bool
        Whether an answer (a valid option letter, or a function definition) was found in the response.
    log_length : ndarray of shape (n_queries, n_models)
        ``log(1 + number of characters)`` of the response.
    """

    agreement: FloatArray
    extracted: BoolArray
    log_length: FloatArray

    def __post_init__(self) -> None:
        if self.agreement.ndim != 3 or self.agreement.shape[1] != self.agreement.shape[2]:
            raise ValueError(f"agreement must have shape (n_queries, n_models, n_models), got {self.agreement.shape}")
        shape = self.agreement.shape[:2]
        for name in ("extracted", "log_length"):
            if getattr(self, name).shape != shape:
                raise ValueError(f"{name} has shape {getattr(self, name).shape}, expected {shape}")

    def take(self, rows: NDArray[np.intp]) -> AnswerSignals:
        """The signals of ``rows`` only."""
        return AnswerSignals(self.agreement[rows], self.extracted[rows], self.log_length[rows])


def choice_options(prompt: str) -> dict[str, str] | None:
    """Option letters and texts of a multiple-choice prompt's last question; None if it is not one.

    The letters come from the last ``single choice from "A" or "B" ...`` instruction; their texts from
    the last ``A) ...`` lines before it (few-shot prompts repeat the layout for every example).
    """
    matches = _CHOICE_LINE.findall(prompt)
    if not matches:
        return None
    letters = re.findall(r'"([A-Z])"', matches[-1])
    options = {letter: "" for letter in letters}
    head = prompt[: prompt.rfind("single choice")]
    for letter, text in _OPTION_LINE.findall(head):
        if letter in options:
            options[letter] = text  # later lines win: the last question's options
    return options


def extract_choice(response: str, options: dict[str, str]) -> str | None:
    """The option letter a response chose, or None (refusal, several letters, a letter not offered)."""
    text = response.strip()
    if not text:
        return None
    m = _LEADING_LETTER.match(text)
    if m and m.group(1) in options:
        return str(m.group(1))
    stated: set[str] = {s for s in _STATED_ANSWER.findall(text) if s in options}
    if len(stated) == 1:
        return stated.pop()
    # Some models answer with the option's text ("Logan" for "B) Logan").
    norm = _normalise(text)
    hits = [letter for letter, option in options.items() if option and _normalise(option) == norm]
    return hits[0] if len(hits) == 1 else None


def code_tokens(response: str) -> frozenset[str] | None:
    """Token set of the code in a response (fenced or ``[PYTHON]`` block, else the whole text).

    Returns None when the response defines no function: no program was extracted.
    """
    blocks = ["".join(g for g in m if g) for m in _CODE_BLOCK.findall(response)]
    code = "\n".join(blocks) if blocks else response
    if "def " not in code:
        return None
    return frozenset(_TOKEN.findall(code))


def answer_signals(prompts: Sequence[str], responses: Sequence[Sequence[str]]) -> AnswerSignals:
    """Extract answers and compute pairwise agreement for every query (see the module docstring).

    Parameters
    ----------
    prompts : sequence of str of length n_queries
    responses : sequence of n_queries sequences of n_models str
        ``responses[r][i]`` is model i's response text to query r.

    Returns
    -------
    AnswerSignals
    """
    n = len(prompts)
    if len(responses) != n:
        raise ValueError(f"responses has {len(responses)} rows, prompts has {n}")
    if n == 0:
        raise ValueError("no queries: prompts is empty")
    k = len(responses[0])
    if k == 0 or any(len(r) != k for r in responses):
        raise ValueError("responses must hold the same positive number of strings (one per model) in every row")
    agreement = np.zeros((n, k, k))
    extracted = np.zeros((n, k), dtype=bool)
    log_length = np.zeros((n, k))
    for r, (prompt, row) in enumerate(zip(prompts, responses, strict=True)):
        log_length[r] = np.log1p([len(s) for s in row])
        options = choice_options(prompt)
        if options is not None:
            letters = [extract_choice(s, options) for s in row]
            codes = np.array([-1 if c is None else ord(c) for c in letters])
            extracted[r] = codes >= 0
            agreement[r] = (codes[:, None] == codes[None, :]) & (codes[:, None] >= 0)
        else:
            tokens = [code_tokens(s) for s in row]
            extracted[r] = [t is not None for t in tokens]
            for i in range(k):
                ti = tokens[i]
                if ti is None:
                    continue
                for j in range(i + 1, k):
                    tj = tokens[j]
                    if tj is not None and (ti or tj):
                        agreement[r, i, j] = agreement[r, j, i] = len(ti & tj) / len(ti | tj)
    idx = np.arange(k)
    agreement[:, idx, idx] = 0.0
    return AnswerSignals(agreement=agreement, extracted=extracted, log_length=log_length)


def _normalise(text: str) -> str:
    return re.sub(r"[^a-z0-9 ]", "", text.lower()).strip()
