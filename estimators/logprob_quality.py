"""Interim live quality estimator: answer confidence after a model ran, its running average before.

- Post-hoc (the model answered): the geometric-mean probability of its answer tokens,
  ``exp(mean token logprob)`` in [0, 1], with a small fixed variance (``post_var``): a documented,
  model-agnostic confidence signal, the feature threshold cascades on logprobs use.
- Ex-ante (not yet run): the running mean of that model's post-hoc quality on past queries, shrunk
  towards ``prior_mean`` with weight ``prior_count`` queries; its variance is the running spread,
  shrunk the same way towards ``prior_sd ** 2``. A fresh controller therefore starts with equal
  priors (the cheapest model goes first) and learns which models answer confidently.

Both sides are on the same scale, which is what lets the policy compare a model that answered with
one that has not. Trained, query-dependent estimators replace this through the same interface
(``estimators.stage.QualityEstimator``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from estimators.stage import QueryInfo, StageResult

__all__ = ["LogprobQuality"]

FloatArray = NDArray[np.float64]


@dataclass
class _Running:
    n: int = 0
    mean: float = 0.0
    m2: float = 0.0  # sum of squared deviations (Welford)

    def add(self, x: float) -> None:
        self.n += 1
        delta = x - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (x - self.mean)


@dataclass
class LogprobQuality:
    """See the module docstring. Not thread-safe: one instance per controller replica (asyncio)."""

    prior_mean: float = 0.5
    prior_sd: float = 0.25
    prior_count: float = 2.0
    post_var: float = 1e-4
    _stats: dict[str, _Running] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.prior_mean <= 1.0:
            raise ValueError(f"prior_mean must be in [0, 1], got {self.prior_mean!r}")
        if not (self.prior_sd > 0 and self.prior_count > 0 and self.post_var >= 0):
            raise ValueError("prior_sd and prior_count must be positive and post_var non-negative")

    @staticmethod
    def post_hoc(stage: StageResult) -> float:
        """exp(mean token logprob); 0 for an empty answer."""
        mean = stage.mean_logprob
        return 0.0 if mean == -math.inf else math.exp(mean)

    def ex_ante(self, model: str) -> tuple[float, float]:
        """Prior mean and variance of ``model``'s quality on a new query."""
        run = self._stats.get(model, _Running())
        w = self.prior_count
        mean = (w * self.prior_mean + run.n * run.mean) / (w + run.n)
        var = (w * self.prior_sd**2 + run.m2) / (w + run.n)
        return mean, var

    def predict(
        self, query: QueryInfo, models: list[str], stages: dict[str, StageResult]
    ) -> tuple[FloatArray, FloatArray]:
        mean = np.empty(len(models))
        var = np.empty(len(models))
        for i, model in enumerate(models):
            if model in stages:
                mean[i], var[i] = self.post_hoc(stages[model]), self.post_var
            else:
                mean[i], var[i] = self.ex_ante(model)
        return mean, var

    def observe(self, query: QueryInfo, stage: StageResult) -> None:
        self._stats.setdefault(stage.model, _Running()).add(self.post_hoc(stage))
