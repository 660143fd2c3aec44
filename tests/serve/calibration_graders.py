"""A grader hook for the real-stack calibration test: the tiny models' answers are gibberish, so
"quality" is a deterministic property of the answer text that varies across prompts and models."""

from __future__ import annotations


def even_word_count(answer: str, reference: str) -> float:
    return float(len(answer.split()) % 2 == 0)
