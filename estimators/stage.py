"""What one model's run of a query produced, and the interface of live estimators that read it.

A *stage* is one model answering one query inside the controller. Live estimators turn the query
and the stages so far into the arrays the routing policies consume (``routing.Estimates``): quality
mean and variance per model (post-hoc for models that answered, ex-ante otherwise) and cost in
GPU-seconds. The interim estimators (``estimators.logprob_quality``, ``estimators.token_cost``) and
the calibrated ones (``estimators.calibrated_quality``, ``estimators.calibrated_cost``) implement the
same two protocols, so the controller never asks which one it holds: a cost model also says what to
do when its startup measurement is superseded, and what its rates are now (``CostRates``, exported
as gauges).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "DEFAULT_MAX_TOKENS_FOR_COST", "LOGPROB_FLOOR", "CostEstimator", "CostRates", "QualityEstimator", "QueryInfo",
    "StageResult",
]

FloatArray = NDArray[np.float64]

# Cost estimates need an answer length; OpenAI's own default for max_tokens is "up to the context".
DEFAULT_MAX_TOKENS_FOR_COST = 256
# A token the sampler forced can carry logprob -inf, and engines may send NaN: both would poison a
# mean and neither survives JSON, so they are floored here, once, for every reader.
LOGPROB_FLOOR = -1e4


@dataclass(frozen=True, slots=True)
class QueryInfo:
    """What the controller knows about a query before any model ran.

    ``prompt_tokens`` is an estimate (characters / 4) until a replica has tokenized the prompt.
    """

    text: str
    prompt_tokens: int
    max_tokens: int

    @classmethod
    def from_request(cls, endpoint: str, body: dict[str, Any]) -> QueryInfo:
        """Text and size of an OpenAI request body (``endpoint``: ``"chat"`` or ``"completions"``), before
        any replica tokenized it (characters / 4 per token)."""
        if endpoint == "chat":
            messages = body.get("messages")
            parts = []
            for m in messages if isinstance(messages, list) else []:
                content = m.get("content") if isinstance(m, dict) else None
                if isinstance(content, str):
                    parts.append(content)
                elif isinstance(content, list):
                    parts.extend(str(p.get("text", "")) for p in content if isinstance(p, dict))
            text = "\n".join(parts)
        else:
            prompt = body.get("prompt")
            text = prompt if isinstance(prompt, str) else " ".join(map(str, prompt)) if isinstance(prompt, list) else ""
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or DEFAULT_MAX_TOKENS_FOR_COST
        return cls(text=text, prompt_tokens=len(text) // 4 + 1, max_tokens=int(max_tokens))


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
    # The engine reported this answer's own timing. vLLM sends none for n > 1 or a list of prompts:
    # their prefill and decode read 0, which is no measurement and no bill.
    timed: bool = True
    n_sequences: int = 1  # choices in the answer: more than one share the timing, if any
    # Prompt tokens the engine found in its prefix cache and did not prefill (0 when it does not say).
    cached_prompt_tokens: int = 0

    def __post_init__(self) -> None:
        # Seconds that are no duration would reach every average and bill; the parser never builds
        # such a stage (it marks the answer untimed), so one here is a caller's bug.
        for name in ("queue_s", "prefill_s", "decode_s"):
            value = getattr(self, name)
            if not 0.0 <= value < math.inf:
                raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value!r} "
                                 f"(model {self.model!r})")
        if not 0 <= self.cached_prompt_tokens <= max(self.prompt_tokens, 0):
            raise ValueError(f"cached_prompt_tokens must be in [0, prompt_tokens={self.prompt_tokens}], "
                             f"got {self.cached_prompt_tokens!r} (model {self.model!r})")

    @property
    def measures_rates(self) -> bool:
        """One sequence with the engine's own timing: an observation per-token rates may learn from."""
        return self.timed and self.n_sequences == 1

    @property
    def uncached_prompt_tokens(self) -> int:
        """Prompt tokens the engine prefilled: the ones prefill time was spent on."""
        return max(self.prompt_tokens - self.cached_prompt_tokens, 0)

    @classmethod
    def from_response(cls, model: str, endpoint: str, response: dict[str, Any]) -> StageResult:
        """The one parser of what a replica answered and its engine measured (an OpenAI response body
        with vLLM's per-request ``metrics``): tokens (cached prompt tokens from
        ``usage.prompt_tokens_details``, 0 when absent), first choice's text, finish reason and token
        logprobs (floored at ``LOGPROB_FLOOR``), queue / prefill / decode seconds. A prefill or decode
        time that is no duration (missing, NaN, infinite, negative) leaves the answer untimed."""
        usage = response.get("usage") or {}
        metrics = response.get("metrics") or {}
        prefill_s = _seconds(metrics.get("time_to_first_token_ms"))
        decode_s = _seconds(metrics.get("generation_time_ms"))
        timed = prefill_s is not None and decode_s is not None
        if prefill_s is None or decode_s is None:  # one reading without the other is no split of the time
            prefill_s = decode_s = 0.0
        prompt_tokens = int(usage.get("prompt_tokens", 0))
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
        choices = response.get("choices") or [{}]
        choice = choices[0]
        logprobs = choice.get("logprobs") or {}
        if endpoint == "chat":
            content = (choice.get("message") or {}).get("content")
            raw = [t.get("logprob") for t in logprobs.get("content") or []]
        else:
            content = choice.get("text")
            raw = logprobs.get("token_logprobs") or []  # the prompt's first token has None
        return cls(
            model=model,
            prompt_tokens=prompt_tokens,
            completion_tokens=int(usage.get("completion_tokens", 0)),
            token_logprobs=tuple(_floored(x) for x in raw if x is not None),
            queue_s=_seconds(metrics.get("queue_time_ms")) or 0.0,
            prefill_s=prefill_s,
            decode_s=decode_s,
            text=content if isinstance(content, str) else "",
            finish_reason=choice.get("finish_reason"),
            timed=timed,
            n_sequences=max(1, len(choices)),
            cached_prompt_tokens=min(max(int(cached), 0), max(prompt_tokens, 0)),
        )

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


def _seconds(ms: Any) -> float | None:
    """Engine milliseconds as seconds; None for what is no duration (absent, NaN, infinite, negative)."""
    try:
        value = float(ms) / 1e3
    except (TypeError, ValueError):
        return None
    return value if 0.0 <= value < math.inf else None  # NaN compares False: None too


def _floored(x: Any) -> float:
    value = float(x)
    return value if value >= LOGPROB_FLOOR else LOGPROB_FLOOR  # NaN compares False: floored too


class QualityEstimator(Protocol):
    def predict(
        self, query: QueryInfo, models: list[str], stages: dict[str, StageResult]
    ) -> tuple[FloatArray, FloatArray]:
        """Quality means and variances for ``models`` (shape (len(models),) each)."""
        ...

    def observe(self, query: QueryInfo, stage: StageResult) -> None:
        """Learn from a finished stage (online priors), each statistic by a bounded step
        (``estimators.bounded_update``), or not at all."""
        ...


@dataclass(frozen=True, slots=True)
class CostRates:
    """What a cost model's predictions for one model use now, in GPU-seconds (live correction applied)."""

    prefill_s_per_token: float
    decode_s_per_token: float  # per completion token after the first
    overhead_s: float | None = None  # per request; None: the model has no fixed term
    correction: float | None = None  # live factor on a calibrated law; None: the model has none


class CostEstimator(Protocol):
    def predict(self, query: QueryInfo, models: list[str], stages: dict[str, StageResult]) -> FloatArray:
        """Cost in GPU-seconds of running each of ``models`` on the query (measured for those that ran)."""
        ...

    def observe(self, query: QueryInfo, stage: StageResult) -> None:
        """Learn from a finished stage, by a bounded step (``estimators.bounded_update``): a client's
        requests, whatever their shape, cannot drag a cost estimate far."""
        ...

    def supersede_measurements(self, model: str) -> None:
        """``model`` was measured under conditions that no longer hold (its replica shared the machine
        with engines that were still starting): the stage observed next is measured on the running
        fleet and should count as such. Each model decides what that means for what it learned."""
        ...

    def current_rates(self, model: str) -> CostRates | None:
        """``model``'s rates as a prediction uses them now; None while the model knows nothing of it."""
        ...

    def billed_gpu_s(self, stage: StageResult) -> float:
        """GPU-seconds a finished stage is billed: what the engine measured, or for a stage it did not
        time (``stage.timed`` false: n > 1, a list of prompts) the model's rates times its token counts."""
        ...
