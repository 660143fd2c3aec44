"""Interim live cost model: GPU-seconds per token, per model and phase, from the engines' own timings.

Each finished stage reports vLLM's per-request split (``StageResult``): prefill time (scheduled to
first token) over the prompt tokens the engine prefilled (those it found in its prefix cache cost it
nothing), decode time (first to last token) over the tokens after the first. The model keeps a
running estimate of both rates and of the answer length, so a query's cost on a model is
``prefill_s_per_token * prompt_tokens + decode_s_per_token * expected completion tokens`` (capped by
``max_tokens``); a model that ran costs what it measured. Queueing is excluded: it is load, not work.
A model with no measurement yet has no cost: ``predict`` refuses it (the controller measures every
replica with a probe request before routing to it).

Its first measurement of a model *is* that model's rate: the anchor. A measurement taken while other
engines were still starting is skewed, so ``supersede_measurements`` forgets it, and the next stage
becomes the first measurement again. Every later stage moves the estimates by a bounded step
(``estimators.bounded_update``), whatever the client asked for: a hundred requests shaped to look
cheap or dear (prompts the prefix cache serves, answers of one token or of ``max_tokens``) move a
model's predicted cost by less than the README's bound (``tests/estimators/test_poisoning.py``). The
same bound makes a genuine change of a model's speed slow to learn; the README gives the count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from estimators.bounded_update import DEFAULT_MAX_LOG_STEP, bounded_log_step, bounded_update
from estimators.stage import CostRates, QueryInfo, StageResult

__all__ = ["ModelRates", "TokenCostModel"]

FloatArray = NDArray[np.float64]


@dataclass
class ModelRates:
    prefill_s_per_token: float
    decode_s_per_token: float
    completion_tokens: float
    n_stages: int = 1


@dataclass
class TokenCostModel:
    """See the module docstring. ``smoothing`` is the weight of the newest stage near the estimates (an
    EWMA's); ``max_log_step`` bounds how far in log space one stage can move the predicted cost
    (:meth:`observe`)."""

    smoothing: float = 0.2
    rates: dict[str, ModelRates] = field(default_factory=dict)
    max_log_step: float = DEFAULT_MAX_LOG_STEP

    def __post_init__(self) -> None:
        if not 0.0 < self.smoothing <= 1.0:
            raise ValueError(f"smoothing must be in (0, 1], got {self.smoothing!r}")
        if not 0.0 < self.max_log_step < math.inf:
            raise ValueError(f"max_log_step must be a positive finite number, got {self.max_log_step!r}")

    def knows(self, model: str) -> bool:
        return model in self.rates

    def forget(self, model: str) -> None:
        """Drop ``model``'s measurements: they were taken under conditions that no longer hold."""
        self.rates.pop(model, None)

    def supersede_measurements(self, model: str) -> None:
        """The live protocol's name for :meth:`forget` (module docstring)."""
        self.forget(model)

    def current_rates(self, model: str) -> CostRates | None:
        """The measured per-token rates of ``model``; None before its first measurement."""
        rate = self.rates.get(model)
        if rate is None:
            return None
        return CostRates(prefill_s_per_token=rate.prefill_s_per_token, decode_s_per_token=rate.decode_s_per_token)

    def predict(self, query: QueryInfo, models: list[str], stages: dict[str, StageResult]) -> FloatArray:
        cost = np.empty(len(models))
        for i, model in enumerate(models):
            if model in stages:
                cost[i] = stages[model].gpu_s
                continue
            rate = self.rates.get(model)
            if rate is None:
                raise ValueError(f"no cost measurement for model {model!r} yet")
            prompt = stages[next(iter(stages))].prompt_tokens if stages else query.prompt_tokens
            completion = min(float(query.max_tokens), rate.completion_tokens)
            cost[i] = rate.prefill_s_per_token * prompt + rate.decode_s_per_token * completion
        return cost

    def observe(self, query: QueryInfo, stage: StageResult) -> None:
        """Move ``stage.model``'s estimates toward the stage's rates, by a bounded step (module docstring).

        Only what the stage measures moves an estimate: a stage without the engine's timing or with
        several sequences teaches nothing; one whose prompt came from the prefix cache measured no
        prefill; one with a single completion token measured no decode. The decode rate and the answer
        length multiply in the predicted cost, so when one stage pushes both the same way they share
        one ``max_log_step``: no stage moves any prediction by more than that.
        """
        if not stage.measures_rates:
            return
        uncached = stage.uncached_prompt_tokens
        prefill = stage.prefill_s / uncached if stage.prefill_s > 0 and uncached > 0 else None
        decode = stage.decode_s / (stage.completion_tokens - 1) if stage.completion_tokens >= 2 else None
        rate = self.rates.get(stage.model)
        if rate is None:
            # A first point needs both rates, and above 0: an estimate is moved by factors from there on.
            if prefill is not None and decode is not None and decode > 0:
                self.rates[stage.model] = ModelRates(prefill, decode, float(stage.completion_tokens))
            return
        a, cap = self.smoothing, self.max_log_step
        if prefill is not None:
            rate.prefill_s_per_token = bounded_update(rate.prefill_s_per_token, prefill, weight=a, max_log_step=cap)
        step_decode = 0.0
        if decode is not None:
            step_decode = bounded_log_step(rate.decode_s_per_token, decode, weight=a, max_log_step=cap)
        step_length = bounded_log_step(rate.completion_tokens, float(stage.completion_tokens), weight=a,
                                       max_log_step=cap)
        joint = step_decode + step_length
        if step_decode * step_length > 0 and abs(joint) > cap:
            step_decode, step_length = step_decode * cap / abs(joint), step_length * cap / abs(joint)
        rate.decode_s_per_token *= math.exp(step_decode)
        rate.completion_tokens *= math.exp(step_length)
        rate.n_stages += 1

    def billed_gpu_s(self, stage: StageResult) -> float:
        """Measured GPU-seconds, or for an untimed stage the rates times its tokens (0 before any rate)."""
        if stage.timed:
            return stage.gpu_s
        rate = self.rates.get(stage.model)
        if rate is None:
            return 0.0
        decoded = max(stage.completion_tokens - stage.n_sequences, 0)  # each sequence's first token is prefill's
        return rate.prefill_s_per_token * stage.uncached_prompt_tokens + rate.decode_s_per_token * decoded
