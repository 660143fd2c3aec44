"""Baseline: the thresholding cascade (algorithm-spec §3.3).

Models run in cost order; after model j-1 answers, run model j iff its post-hoc estimate
q_{j-1} < 1 - lambda_{j-1}. The answer is the last model run, not the best one, and costs play no
part in the decisions (as in the paper's baseline).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from routing._base import Policy, check_max_depth
from routing._estimates import Estimates
from routing._lambda_search import Strategy
from routing._state_quality import StateMemos

__all__ = ["ThresholdCascade"]

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]
IntArray = NDArray[np.intp]


class ThresholdCascade(Policy):
    """Thresholding cascade: escalate while the last answer's quality estimate is below 1 - lambda_j.

    Parameters
    ----------
    max_expected_cost : float, optional
        Budget: average cost per query on the validation set.
    budget_margin_se : float >= 0, default 0
        ``fit`` keeps the validation mean cost plus this many standard errors of it within the budget
        (the budget's sampling error, ``routing._budget_margin``); 0 is the paper's fit.
    max_depth : int >= 1 or None
        At most this many models per query; None (the default): no limit.
    strategy : {"per_step", "constant"}
        One threshold for every step, or per-step thresholds refined by a seeded search.
    n_search : int
        Evaluations of the per-step search.
    seed : int

    Attributes
    ----------
    lambdas_ : ndarray of shape (n_steps,)
        ``1 - lambdas_[j-1]`` is the threshold after step j.
    gamma_ : float
        Unused by the decisions (thresholds have no ties); kept for the common interface.
    """

    _first_free_step = 0

    def __init__(
        self,
        *,
        max_expected_cost: float | None = None,
        budget_margin_se: float = 0.0,
        max_depth: int | None = None,
        strategy: Strategy = "per_step",
        n_search: int = 24,
        seed: int = 0,
    ) -> None:
        check_max_depth(max_depth)
        self.max_expected_cost = max_expected_cost
        self.budget_margin_se = budget_margin_se
        self.max_depth = max_depth
        self.strategy = strategy
        self.n_search = n_search
        self.seed = seed

    def n_steps(self, n_models: int) -> int:
        return n_models if self.max_depth is None else min(self.max_depth, n_models)

    def _lambda_scale(self, cost: FloatArray) -> float:
        return 1.0

    def _decide_batch(
        self,
        est: Estimates,
        answered: BoolArray,
        rows: IntArray,
        step: int,
        lambdas: FloatArray,
        expensive_tie: bool | float,
        rng: np.random.Generator | None,
        memos: StateMemos | None,
    ) -> tuple[IntArray, IntArray]:
        n, n_models = answered.shape
        if step == 0:
            return np.zeros(n, dtype=np.intp), np.full(n, -1, dtype=np.intp)
        last = step - 1
        depth = min(lambdas.shape[0], self.n_steps(n_models))
        if step >= depth:
            return np.full(n, -1, dtype=np.intp), np.full(n, last, dtype=np.intp)
        escalate = est.q_mean[:, last] < 1.0 - float(lambdas[last])
        run_next = np.where(escalate, step, -1).astype(np.intp)
        answer = np.where(escalate, -1, last).astype(np.intp)
        return run_next, answer
