"""What one model's run of a query produced, and the interface of live estimators that read it.

A *stage* is one model answering one query inside the controller. Live estimators turn the query
and the stages so far into the arrays the routing policies consume (``routing.Estimates``): quality
mean and variance per model (post-hoc for models that answered, ex-ante otherwise) and cost in
GPU-seconds. The interim estimators (``estimators.logprob_quality``, ``estimators.token_cost``) and
the trained ones of the calibration work implement the same two protocols.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

__all__ = ["CostEstimator", "QualityEstimator", "QueryInfo", "StageResult"]

FloatArray = NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class QueryInfo:
    """What the controller knows about a query before any model ran.

    ``prompt_tokens`` is an estimate (characters / 4) until a replica has tokenized the prompt.
    """

    text: str
    prompt_tokens: int
    max_tokens: int


@dataclass(frozen=True, slots=True)
class StageResult:
    """One model's answer, as measured by its vLLM engine (per-request stats, not controller clocks)."""

    model: str
    prompt_tokens: int
    completion_tokens: int
    token_logprobs: tuple[float, ...]
    queue_s: float
    prefill_s: float
    decode_s: float
    text: str = ""  # the answer, for estimators that compare answers
    finish_reason: str | None = None

    @property
    def gpu_s(self) -> float:
        """Accelerator time of this answer: prefill plus decode, queueing excluded."""
        return self.prefill_s + self.decode_s

    @property
    def mean_logprob(self) -> float:
        """Mean log-probability of the answer's tokens; -inf for an empty answer."""
        if not self.token_logprobs:
            return -math.inf
        return float(np.mean(self.token_logprobs))


class QualityEstimator(Protocol):
    def predict(
        self, query: QueryInfo, models: list[str], stages: dict[str, StageResult]
    ) -> tuple[FloatArray, FloatArray]:
        """Quality means and variances for ``models`` (shape (len(models),) each)."""
        ...

    def observe(self, query: QueryInfo, stage: StageResult) -> None:
        """Learn from a finished stage (online priors)."""
        ...


class CostEstimator(Protocol):
    def predict(self, query: QueryInfo, models: list[str], stages: dict[str, StageResult]) -> FloatArray:
        """Cost in GPU-seconds of running each of ``models`` on the query (measured for those that ran)."""
        ...

    def observe(self, query: QueryInfo, stage: StageResult) -> None:
        """Learn from a finished stage."""
        ...
