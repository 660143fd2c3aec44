"""Algorithm 3: cascade routing, and Algorithm 2 (the optimal cascade) as its prefix special case.

After every answer, re-estimate and pick the supermodel S ⊇ R maximising E[max_S] - lambda_j c(S);
stop if S* = R, else run the cheapest model of S* \\ R (algorithm-spec §4). Restricting candidates to
prefixes of the cost order gives the optimal cascade (§3.2); ``max_depth=1`` gives routing (§2).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from routing._base import Policy, check_max_depth
from routing._estimates import Estimates
from routing._expected_max import DEFAULT_QMC_POINTS
from routing._lambda_search import Strategy
from routing._state_quality import StateMemos, StateQuality
from routing._supermodel_search import (
    DEFAULT_TIE_TOL,
    Decision,
    Order,
    allowed_models,
    search_supermodel,
)

__all__ = ["CascadeRouter", "OptimalCascade"]

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]
IntArray = NDArray[np.intp]


class _SupermodelPolicy(Policy):
    """Shared batch loop of the two supermodel policies."""

    max_depth: int | None
    tie_tol: float
    n_qmc_points: int
    _order: Order
    _greedy: bool
    _prune: bool

    def n_steps(self, n_models: int) -> int:
        return n_models if self.max_depth is None else min(self.max_depth, n_models)

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
        run_next = np.full(n, -1, dtype=np.intp)
        answer = np.full(n, -1, dtype=np.intp)
        depth = min(lambdas.shape[0], self.n_steps(n_models))
        lam = float(lambdas[min(step, lambdas.shape[0] - 1)])
        # Memo keys (row, bitmask of answered models) only matter to the simulator, not a live decision.
        bits: list[int] = []
        row_ids: list[int] = []
        if memos is not None:
            bits = (answered.astype(np.int64) @ (np.int64(1) << np.arange(n_models, dtype=np.int64))).tolist()
            row_ids = rows.tolist()
            if est.q_cov is None:
                return self._decide_from_tables(est, answered, row_ids, bits, depth, lam, expensive_tie, rng, memos)
        for i in range(n):
            memo = None if memos is None else self._memo(memos, row_ids[i], bits[i], est, answered, i)
            decision = self._search(est, i, answered[i], lam, depth, expensive_tie, rng, memo)
            if decision.run_next is not None:
                run_next[i] = decision.run_next
            elif decision.answer_from is not None:
                answer[i] = decision.answer_from
        return run_next, answer

    def _decide_one(
        self,
        estimates: Estimates,
        answered: BoolArray,
        step: int,
        lambdas: FloatArray,
        expensive_tie: bool | float,
        rng: np.random.Generator,
    ) -> Decision:
        """``_decide_batch`` of one live query, without its batch arrays or memo: ``search_supermodel``
        directly, which runs the compiled search unless the estimates are correlated."""
        lam = float(lambdas[min(step, lambdas.shape[0] - 1)])
        depth = min(lambdas.shape[0], self.n_steps(answered.shape[0]))
        return self._search(estimates, 0, answered, lam, depth, expensive_tie, rng)

    def _search(
        self, est: Estimates, i: int, answered: BoolArray, lam: float, depth: int, expensive_tie: bool | float,
        rng: np.random.Generator | None, memo: StateQuality | None = None,
    ) -> Decision:
        """``search_supermodel`` on row ``i`` of ``est`` with this policy's settings: the one call of the
        batch and single-query paths."""
        return search_supermodel(
            est.q_mean[i],
            est.cost[i],
            answered,
            lam,
            var=None if est.q_var is None else est.q_var[i],
            cov=None if est.q_cov is None else est.q_cov[i],
            max_depth=depth,
            order=self._order,
            greedy=self._greedy,
            prune=self._prune,
            expensive_tie=expensive_tie,
            rng=rng,
            tie_tol=self.tie_tol,
            n_qmc_points=self.n_qmc_points,
            seed=self.seed,
            memo=memo,
        )

    def _memo(
        self, memos: StateMemos, row: int, bits: int, est: Estimates, answered: BoolArray, i: int
    ) -> StateQuality:
        """The memo of state (row, answered set), created from batch row ``i`` on first visit."""
        memo = memos.get((row, bits))
        if memo is None:
            memo = memos[(row, bits)] = StateQuality(
                est.q_mean[i],
                None if est.q_var is None else est.q_var[i],
                None if est.q_cov is None else est.q_cov[i],
                self.n_qmc_points,
                self.seed,
                np.flatnonzero(answered[i]),
            )
        return memo

    def _decide_from_tables(
        self,
        est: Estimates,
        answered: BoolArray,
        row_ids: list[int],
        bits: list[int],
        depth: int,
        lam: float,
        expensive_tie: bool | float,
        rng: np.random.Generator | None,
        memos: StateMemos,
    ) -> tuple[IntArray, IntArray]:
        """The simulator's path: every row's candidate table (built once per state), then one
        vectorised argmax with the search's tie rules. Same decisions, and the same rng draws in the
        same order, as calling ``search_supermodel`` row by row."""
        n = answered.shape[0]
        config = (self._order, depth, self._greedy, self.tie_tol)
        tables = []
        for i in range(n):
            memo = self._memo(memos, row_ids[i], bits[i], est, answered, i)
            table = memo.tables_by_policy.get(config)
            if table is None:
                run = np.flatnonzero(answered[i])
                allowed = allowed_models(answered[i], run, self._order)
                table = memo.candidate_table(
                    run, allowed, depth, self._order == "prefix", self._greedy, est.cost[i], self.tie_tol
                )
                memo.tables_by_policy[config] = table
            tables.append(table)
        lengths = np.array([t.quality.shape[0] for t in tables])
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        segment = np.repeat(np.arange(n), lengths)
        quality = np.concatenate([t.quality for t in tables])
        cost = np.concatenate([t.cost for t in tables])
        first = np.concatenate([t.first for t in tables])
        tau = quality - lam * cost
        tied = tau >= np.maximum.reduceat(tau, starts)[segment] - self.tie_tol
        if isinstance(expensive_tie, bool) or expensive_tie <= 0.0 or expensive_tie >= 1.0:
            dear = np.full(n, bool(expensive_tie >= 1.0) if not isinstance(expensive_tie, bool) else expensive_tie)
        else:
            ties = np.add.reduceat(tied.astype(np.intp), starts) > 1
            dear = np.zeros(n, dtype=bool)
            if ties.any():
                if rng is None:
                    raise ValueError("a tie with 0 < gamma < 1 needs an rng to draw the tie-break")
                dear[ties] = rng.random(int(ties.sum())) < expensive_tie
        # Among tied candidates the cheapest (or dearest) wins; equal costs go to the first in table
        # order, as in the search.
        order_key = np.where(tied, np.where(dear[segment], -cost, cost), np.inf)
        best = tied & (order_key == np.minimum.reduceat(order_key, starts)[segment])
        hits = np.flatnonzero(best)
        _, first_hit = np.unique(segment[hits], return_index=True)
        pick = first[hits[first_hit]]
        answer = np.argmax(np.where(answered, est.q_mean, -np.inf), axis=1).astype(np.intp)
        return np.where(pick >= 0, pick, -1).astype(np.intp), np.where(pick >= 0, -1, answer).astype(np.intp)


class CascadeRouter(_SupermodelPolicy):
    """Cascade routing (Alg. 3): after each answer, pick the best supermodel; run its cheapest new model.

    Parameters
    ----------
    max_expected_cost : float, optional
        Budget: average cost per query on the validation set. Needed by ``fit``.
    budget_margin_se : float >= 0, default 0
        ``fit`` keeps the validation mean cost plus this many standard errors of it within the budget
        (the budget's sampling error, ``routing._budget_margin``); 0 is the paper's fit.
    max_depth : int >= 1 or None
        At most this many models per query; None (the default): no limit.
    force_order : bool
        Only models above the most expensive one run so far may be added.
    greedy : bool
        One-step lookahead: compare "stop" with "add one model" only.
    prune : bool
        Lemma-1 pruning plus branch and bound (exact; off = full enumeration, for ablations).
    strategy : {"per_step", "constant"}
        How lambdas are fitted (``routing._lambda_search``).
    n_search : int
        Evaluations of the per-step search.
    cascade_start : bool, default True
        With two models, the per-step search may also start from the cascade start (the cheapest model
        first, the later step's lambda fitted to the budget: the optimal cascade) and keeps it when
        validation quality is higher (``routing._lambda_search``), so the fit contains the optimal
        cascade's. With more models it is not the optimal cascade and is not tried. False: only from the
        constant fit, as the paper.
    tie_tol : float
        Scores closer than this are ties.
    n_qmc_points : int
        QMC points for correlated sets of three or more.
    seed : int
        Seeds the per-step search, the QMC scrambling and the default tie-break rng.

    Attributes
    ----------
    lambdas_ : ndarray of shape (n_steps,)
        lambda_j is used after j models have answered.
    gamma_ : float
        Probability of the most expensive of tied best supermodels.
    fit_cost_, fit_quality_ : float
        Validation average cost and quality at the fitted lambdas (cheapest ties).
    """

    _first_free_step = 0

    def __init__(
        self,
        *,
        max_expected_cost: float | None = None,
        budget_margin_se: float = 0.0,
        max_depth: int | None = None,
        force_order: bool = False,
        greedy: bool = False,
        prune: bool = True,
        strategy: Strategy = "per_step",
        n_search: int = 24,
        cascade_start: bool = True,
        tie_tol: float = DEFAULT_TIE_TOL,
        n_qmc_points: int = DEFAULT_QMC_POINTS,
        seed: int = 0,
    ) -> None:
        check_max_depth(max_depth)
        self.max_expected_cost = max_expected_cost
        self.budget_margin_se = budget_margin_se
        self.max_depth = max_depth
        self.force_order = force_order
        self.cascade_start = cascade_start
        self.greedy = greedy
        self.prune = prune
        self.strategy = strategy
        self.n_search = n_search
        self.tie_tol = tie_tol
        self.n_qmc_points = n_qmc_points
        self.seed = seed

    @property
    def _order(self) -> Order:  # type: ignore[override]
        return "forward" if self.force_order else "any"

    @property
    def _greedy(self) -> bool:  # type: ignore[override]
        return self.greedy

    @property
    def _prune(self) -> bool:  # type: ignore[override]
        return self.prune


class OptimalCascade(_SupermodelPolicy):
    """The optimal cascade (Alg. 2): models in cost order; after each answer, stop or go on by
    comparing the prefix supermodels' E[max] - lambda_j cost.

    Parameters and attributes as ``CascadeRouter`` (no ordering, greedy, pruning or cascade-start
    options: the paper runs cascades without pruning, and a cascade always starts with its first model).
    lambda_0 has no effect: the first model always runs.
    """

    _first_free_step = 1
    _order: Order = "prefix"
    _greedy = False
    _prune = False

    def __init__(
        self,
        *,
        max_expected_cost: float | None = None,
        budget_margin_se: float = 0.0,
        max_depth: int | None = None,
        strategy: Strategy = "per_step",
        n_search: int = 24,
        tie_tol: float = DEFAULT_TIE_TOL,
        n_qmc_points: int = DEFAULT_QMC_POINTS,
        seed: int = 0,
    ) -> None:
        check_max_depth(max_depth)
        self.max_expected_cost = max_expected_cost
        self.budget_margin_se = budget_margin_se
        self.max_depth = max_depth
        self.strategy = strategy
        self.n_search = n_search
        self.tie_tol = tie_tol
        self.n_qmc_points = n_qmc_points
        self.seed = seed
