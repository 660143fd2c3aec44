"""Interim live quality estimator: answer confidence after a model ran, its running average before.

- Post-hoc (the model answered): the geometric-mean probability of its answer tokens,
  ``exp(mean token logprob)`` in [0, 1], with a small fixed variance (``post_var``): a documented,
  model-agnostic confidence signal, the feature threshold cascades on logprobs use.
- Ex-ante (not yet run): a moving mean of that model's post-hoc quality on past queries, starting at
  ``prior_mean`` as if ``prior_count`` queries had scored it; its variance is the moving spread,
  starting at ``prior_sd ** 2`` the same way. A fresh controller therefore starts with equal priors
  (the cheapest model goes first) and learns which models answer confidently.

A client chooses the questions, and so the answers' confidence ("repeat after me" is answered with
certainty): each answer moves the mean's log-odds and the spread's log by a bounded step
(``estimators.bounded_update``): a running mean's weight near the estimate, never below
``smoothing`` so that it keeps following the model, and ``max_log_step`` at most. A hundred answers
of any kind move the prior by the bound the README gives (``tests/estimators/test_poisoning.py``),
and honest change is learnt no faster.

Both sides are on the same scale, which is what lets the policy compare a model that answered with
one that has not. Trained, query-dependent estimators replace this through the same interface
(``estimators.stage.QualityEstimator``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from estimators.bounded_update import DEFAULT_MAX_LOG_STEP, bounded_probability_update, bounded_update
from estimators.stage import QueryInfo, StageResult

__all__ = ["LogprobQuality"]

FloatArray = NDArray[np.float64]


@dataclass
class _Running:
    mean: float
    var: float
    n: int = 0


@dataclass
class LogprobQuality:
    """See the module docstring. Not thread-safe: one instance per controller replica (asyncio)."""

    prior_mean: float = 0.5
    prior_sd: float = 0.25
    prior_count: float = 2.0
    post_var: float = 1e-4
    smoothing: float = 0.05  # the least weight of the newest answer near the estimates (an EWMA's)
    max_log_step: float = DEFAULT_MAX_LOG_STEP
    _stats: dict[str, _Running] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.prior_mean <= 1.0:
            raise ValueError(f"prior_mean must be in [0, 1], got {self.prior_mean!r}")
        if not (self.prior_sd > 0 and self.prior_count > 0 and self.post_var >= 0):
            raise ValueError("prior_sd and prior_count must be positive and post_var non-negative")
        if not 0.0 < self.smoothing <= 1.0:
            raise ValueError(f"smoothing must be in (0, 1], got {self.smoothing!r}")
        if not 0.0 < self.max_log_step < math.inf:
            raise ValueError(f"max_log_step must be a positive finite number, got {self.max_log_step!r}")

    @staticmethod
    def post_hoc(stage: StageResult) -> float:
        """exp(mean token logprob); 0 for an empty answer."""
        mean = stage.mean_logprob
        return 0.0 if mean == -math.inf else math.exp(mean)

    def ex_ante(self, model: str) -> tuple[float, float]:
        """Prior mean and variance of ``model``'s quality on a new query."""
        run = self._stats.get(model)
        return (self.prior_mean, self.prior_sd**2) if run is None else (run.mean, run.var)

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
        """Move ``stage.model``'s ex-ante mean and spread toward the answer's post-hoc quality (module
        docstring)."""
        x = self.post_hoc(stage)
        run = self._stats.setdefault(stage.model, _Running(self.prior_mean, self.prior_sd**2))
        run.n += 1
        # A running mean's weight (the prior counts as prior_count answers) until it falls to smoothing.
        w = max(1.0 / (self.prior_count + run.n), self.smoothing)
        deviation = (x - run.mean) ** 2
        run.mean = bounded_probability_update(run.mean, x, weight=w, max_log_step=self.max_log_step)
        run.var = bounded_update(run.var, deviation, weight=w, max_log_step=self.max_log_step)
