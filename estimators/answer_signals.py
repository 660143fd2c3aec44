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
- **final answers** (a calibration set graded ``numeric`` or ``exact_match``; only when the caller says
  so through ``kinds``): the final answer as the graders extract it (last ``\\boxed{}``, ``####`` or
  last number; else the normalised text); answers agree when their values are equal.
- for every response, ``log(1 + number of characters)``: the paper's log(length) certainty feature;
  and, where the engine reported them (``stats``), the answer's token log-probability summary and
  whether it stopped at ``max_tokens`` (all zero otherwise).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from estimators import answers

__all__ = [
    "AnswerSignals", "answer_signals", "answer_stats", "choice_options", "code_tokens", "extract_choice",
    "final_answer",
]

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
    stats : ndarray of shape (n_queries, n_models, n_stats)
        The engine's signals of each answer (``QueryModelTable.answer_stats`` columns); zeros when
        none were recorded.
    """

    agreement: FloatArray
    extracted: BoolArray
    log_length: FloatArray
    stats: FloatArray

    def __post_init__(self) -> None:
        if self.agreement.ndim != 3 or self.agreement.shape[1] != self.agreement.shape[2]:
            raise ValueError(f"agreement must have shape (n_queries, n_models, n_models), got {self.agreement.shape}")
        shape = self.agreement.shape[:2]
        for name in ("extracted", "log_length"):
            if getattr(self, name).shape != shape:
                raise ValueError(f"{name} has shape {getattr(self, name).shape}, expected {shape}")
        if self.stats.ndim != 3 or self.stats.shape[:2] != shape:
            raise ValueError(f"stats has shape {self.stats.shape}, expected {shape} + (n_stats,)")

    def take(self, rows: NDArray[np.intp]) -> AnswerSignals:
        """The signals of ``rows`` only."""
        return AnswerSignals(self.agreement[rows], self.extracted[rows], self.log_length[rows], self.stats[rows])


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


def answer_signals(
    prompts: Sequence[str],
    responses: Sequence[Sequence[str]],
    *,
    kinds: Sequence[str] | None = None,
    stats: FloatArray | None = None,
) -> AnswerSignals:
    """Extract answers and compute pairwise agreement for every query (see the module docstring).

    Parameters
    ----------
    prompts : sequence of str of length n_queries
    responses : sequence of n_queries sequences of n_models str
        ``responses[r][i]`` is model i's response text to query r.
    kinds : sequence of {"choice", "code", "final"} of length n_queries, optional
        How each query's answers are compared; by default detected from the prompt (a multiple-choice
        instruction, else code).
    stats : ndarray of shape (n_queries, n_models, n_stats), optional
        The engine's per-answer signals, passed through (``QueryModelTable.answer_stats``).

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
    if kinds is not None and len(kinds) != n:
        raise ValueError(f"kinds has {len(kinds)} entries, prompts has {n}")
    agreement = np.zeros((n, k, k))
    extracted = np.zeros((n, k), dtype=bool)
    log_length = np.zeros((n, k))
    for r, (prompt, row) in enumerate(zip(prompts, responses, strict=True)):
        log_length[r] = np.log1p([len(s) for s in row])
        kind = None if kinds is None else kinds[r]
        options = choice_options(prompt) if kind in (None, "choice") else None
        if kind == "final":
            finals = [final_answer(s) for s in row]
            extracted[r] = [f is not None for f in finals]
            agreement[r] = [[a is not None and a == b for b in finals] for a in finals]
        elif options is not None or kind == "choice":
            # Without RouterBench's option line, letters are read as the ``choice`` grader reads them.
            letters = [extract_choice(s, options) if options is not None else answers.extract_choice(s) for s in row]
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
    if stats is None:
        stats_arr = np.zeros((n, k, 0))
    else:
        stats_arr = np.asarray(stats, dtype=np.float64)
        if stats_arr.ndim != 3 or stats_arr.shape[:2] != (n, k):
            raise ValueError(f"stats has shape {stats_arr.shape}, expected {(n, k)} + (n_stats,)")
    return AnswerSignals(agreement=agreement, extracted=extracted, log_length=log_length, stats=stats_arr)


def final_answer(response: str) -> str | None:
    """The final answer of a response as a comparable key: its value for a number, else normalised text.

    None for an empty response. Extraction is the graders' (``estimators.answers``), so two answers
    agree exactly when ``numeric_match`` would score one against the other.
    """
    if not response.strip():
        return None
    span = answers.final_answer(response)
    value = answers.parse_number(span)
    if value is not None:
        return f"#{value}"
    text = answers.normalise_math(span).lower()
    return text or None


def _normalise(text: str) -> str:
    return re.sub(r"[^a-z0-9 ]", "", text.lower()).strip()


# A floor for log-probabilities: an empty answer or a forced token must not turn a statistic into -inf.
_LOGPROB_FLOOR = -30.0


def answer_stats(token_logprobs: Sequence[float], finish_reason: str | None) -> FloatArray:
    """The engine's signals of one answer, in the columns of ``QueryModelTable.answer_stats``.

    Token log-probability mean, minimum and 10th percentile (floored at -30; all at the floor for an
    empty answer), and 1.0 when the answer stopped at ``max_tokens`` (``finish_reason == "length"``).
    """
    lp = np.maximum(np.asarray(token_logprobs, dtype=np.float64), _LOGPROB_FLOOR)
    if lp.size == 0:
        lp = np.array([_LOGPROB_FLOOR])
    return np.array([lp.mean(), lp.min(), np.quantile(lp, 0.1), float(finish_reason == "length")])
