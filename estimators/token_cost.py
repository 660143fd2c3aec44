"""Interim live cost model: GPU-seconds per token, per model and phase, from the engines' own timings.

Each finished stage reports vLLM's per-request split (``StageResult``): prefill time (scheduled to
first token) over the prompt tokens, decode time (first to last token) over the tokens after the
first. The model keeps an exponential moving average of both rates and of the answer length, so a
query's cost on a model is ``prefill_s_per_token * prompt_tokens + decode_s_per_token * expected
completion tokens`` (capped by ``max_tokens``); a model that ran costs what it measured. Queueing is
excluded: it is load, not work. A model with no measurement yet has no cost: ``predict`` refuses it
(the controller measures every replica with a probe request before routing to it).

Its first measurement of a model *is* that model's rate, so a measurement taken while other engines
were still starting is skewed for many stages after: ``supersede_measurements`` forgets it, and the
next stage becomes the first measurement again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

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
    """See the module docstring. ``smoothing`` is the weight of the newest stage in the averages;
    ``max_step`` bounds how far one stage can pull them (:meth:`observe`)."""

    smoothing: float = 0.2
    rates: dict[str, ModelRates] = field(default_factory=dict)
    max_step: float = 2.0  # one observation counts as at most this factor above or below the estimate

    def __post_init__(self) -> None:
        if not 0.0 < self.smoothing <= 1.0:
            raise ValueError(f"smoothing must be in (0, 1], got {self.smoothing!r}")
        if not self.max_step > 1.0:
            raise ValueError(f"max_step must be above 1, got {self.max_step!r}")

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
        """Move ``stage.model``'s averages toward the stage's rates (module docstring).

        Only what the stage measures moves an average, and by a bounded step: a stage without the
        engine's timing or with several sequences teaches nothing; one with a single completion token
        measured no decode; and one observation counts as at most ``max_step`` times the current
        estimate (or its inverse), so a client's odd requests cannot drag an estimate far.
        """
        if not stage.measures_rates:
            return
        prefill = stage.prefill_s / max(stage.prompt_tokens, 1) if stage.prefill_s > 0 else None
        decode = stage.decode_s / (stage.completion_tokens - 1) if stage.completion_tokens >= 2 else None
        rate = self.rates.get(stage.model)
        if rate is None:
            if prefill is not None and decode is not None:  # a first point needs both rates
                self.rates[stage.model] = ModelRates(prefill, decode, float(stage.completion_tokens))
            return
        a = self.smoothing
        if prefill is not None:
            step = self._bounded(prefill, rate.prefill_s_per_token) - rate.prefill_s_per_token
            rate.prefill_s_per_token += a * step
        if decode is not None:
            rate.decode_s_per_token += a * (self._bounded(decode, rate.decode_s_per_token) - rate.decode_s_per_token)
        tokens = self._bounded(float(stage.completion_tokens), max(rate.completion_tokens, 1.0))
        rate.completion_tokens += a * (tokens - rate.completion_tokens)
        rate.n_stages += 1

    def _bounded(self, value: float, current: float) -> float:
        return min(max(value, current / self.max_step), current * self.max_step)

    def billed_gpu_s(self, stage: StageResult) -> float:
        """Measured GPU-seconds, or for an untimed stage the rates times its tokens (0 before any rate)."""
        if stage.timed:
            return stage.gpu_s
        rate = self.rates.get(stage.model)
        if rate is None:
            return 0.0
        decoded = max(stage.completion_tokens - stage.n_sequences, 0)  # each sequence's first token is prefill's
        return rate.prefill_s_per_token * stage.prompt_tokens + rate.decode_s_per_token * decoded
