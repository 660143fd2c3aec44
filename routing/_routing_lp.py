"""Algorithm 1: optimal routing, one model per query (algorithm-spec §1.2, §2).

Route x to argmax_i q_i(x) - lambda c_i(x) on ex-ante estimates. lambda and the tie-break gamma
come from the routing LP's dual: gamma is the probability of the *expensive* tie-break, chosen so the
expected cost meets the budget exactly (the reference ``Router`` inverts it, spec §8 item 2).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from routing._base import Policy
from routing._estimates import Estimates
from routing._lambda_search import Strategy
from routing._state_quality import StateMemos
from routing._supermodel_search import DEFAULT_TIE_TOL

__all__ = ["Router", "argmax_with_ties"]

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]
IntArray = NDArray[np.intp]


def argmax_with_ties(
    tau: FloatArray,
    cost: FloatArray,
    expensive_tie: bool | float,
    rng: np.random.Generator | None,
    tie_tol: float = DEFAULT_TIE_TOL,
) -> IntArray:
    """Row-wise argmax of ``tau`` (shape (n, k)); ties go to the cheapest or, with probability
    ``expensive_tie``, the most expensive column. Draws happen only for rows with a tie."""
    tied = tau >= tau.max(axis=1, keepdims=True) - tie_tol
    cheap: IntArray = np.argmin(np.where(tied, cost, np.inf), axis=1).astype(np.intp)
    if expensive_tie is False or (not isinstance(expensive_tie, bool) and expensive_tie <= 0.0):
        return cheap
    dear: IntArray = np.argmax(np.where(tied, cost, -np.inf), axis=1).astype(np.intp)
    if expensive_tie is True or expensive_tie >= 1.0:
        return dear
    has_tie = tied.sum(axis=1) > 1
    if not has_tie.any():
        return cheap
    if rng is None:
        raise ValueError("a tie with 0 < gamma < 1 needs an rng to draw the tie-break")
    pick = cheap.copy()
    draws = rng.random(int(has_tie.sum())) < expensive_tie
    pick[np.flatnonzero(has_tie)[draws]] = dear[has_tie][draws]
    return pick


class Router(Policy):
    """Optimal routing (Alg. 1): one model per query, by quality minus lambda times cost.

    Parameters
    ----------
    max_expected_cost : float, optional
        Budget: average cost per query on the validation set. Needed by ``fit``.
    budget_margin_se : float >= 0, default 0
        ``fit`` keeps the validation mean cost plus this many standard errors of it within the budget
        (the budget's sampling error, ``routing._budget_margin``); 0 is the paper's fit.
    tie_tol : float
        Scores closer than this are ties.
    seed : int
        Seeds the tie-break draws of ``decide`` when no rng is given.

    Attributes
    ----------
    lambdas_ : ndarray of shape (1,)
    gamma_ : float
        Probability of the most expensive model among tied best ones.
    """

    def __init__(
        self, *, max_expected_cost: float | None = None, budget_margin_se: float = 0.0,
        tie_tol: float = DEFAULT_TIE_TOL, seed: int = 0
    ) -> None:
        self.max_expected_cost = max_expected_cost
        self.budget_margin_se = budget_margin_se
        self.tie_tol = tie_tol
        self.seed = seed

    strategy: Strategy = "constant"
    n_search = 0

    def n_steps(self, n_models: int) -> int:
        return 1

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
        n = answered.shape[0]
        if step == 0:
            tau = est.q_mean - float(lambdas[0]) * est.cost
            return argmax_with_ties(tau, est.cost, expensive_tie, rng, self.tie_tol), np.full(n, -1)
        answer = np.argmax(np.where(answered, est.q_mean, -np.inf), axis=1).astype(np.intp)
        return np.full(n, -1, dtype=np.intp), answer
