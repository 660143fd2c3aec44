"""Quality of candidate supermodels for one query state, memoised (algorithm-spec §3.1, §4.2).

A state is a query with a fixed set of answered models, hence fixed estimates. Every decision in that
state, whatever lambda, scores subsets of the same models, so the state keeps: the values of sets
already scored; for independent estimates, one quadrature grid shared by all its subsets
(``IndependentGrid``); and the candidate tables of ``candidate_table``. The simulator keeps one memo
per (query, answered set) across all rollouts of a fit, which is what makes fitting fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
from numpy.typing import NDArray

from routing._expected_max import (
    TAIL_SD,
    IndependentGrid,
    clark_expected_max,
    expected_max_independent,
    expected_max_qmc,
)

__all__ = ["CandidateTable", "StateMemos", "StateQuality", "upper_envelope_mask"]

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.intp]

# Up to this many sets per call, score each on its own panels instead of building the shared grid
# (the grid costs about as much as 30 sets but then makes every further set nearly free).
_PER_SET_MAX = 24


class StateQuality:
    """E[max] of member sets for fixed estimates, choosing the cheapest exact method per set.

    Parameters
    ----------
    mu : ndarray of shape (n_models,)
    var : ndarray of shape (n_models,) or None
        Independent variances.
    cov : ndarray of shape (n_models, n_models) or None
        Covariance (QMC for three or more correlated members).
    run : ndarray of int, optional
        The answered models. Every set scored in this state contains them, which lets the quadrature
        grid start at their floor (``IndependentGrid``).
    """

    def __init__(
        self,
        mu: FloatArray,
        var: FloatArray | None,
        cov: FloatArray | None,
        n_qmc_points: int,
        seed: int,
        run: IntArray | None = None,
    ) -> None:
        self.mu = mu
        self.run = np.zeros(0, dtype=np.intp) if run is None else run
        self.cov = cov
        if cov is not None:
            var = np.diag(cov)
        self.var = var
        self.independent = var is not None and cov is None
        self.n_qmc_points = n_qmc_points
        self.seed = seed
        self.values: dict[int, float] = {}
        self._grid: IndependentGrid | None = None
        self._pair_gains: FloatArray | None = None
        # Candidate tables of this state, keyed by the deciding policy's settings (the simulator's).
        self.tables_by_policy: dict[tuple[str, int, bool, float], CandidateTable] = {}

    @property
    def grid(self) -> IndependentGrid:
        if self._grid is None:
            assert self.var is not None
            sd = np.sqrt(self.var)
            floor = float(np.max(self.mu[self.run] - TAIL_SD * sd[self.run])) if self.run.shape[0] else -np.inf
            self._grid = IndependentGrid(self.mu, sd, floor)
        return self._grid

    def pair_gains(self) -> FloatArray:
        """G[s, y] = E[max(X_s, X_y)] - mu_s = E[(X_y - X_s)^+], shape (n_models, n_models).

        By submodularity, the gain of adding y to any set containing s is at most G[s, y]; the search
        bounds with it. Pairs' own E[max] is mu_s + G[s, y] (Clark, exact).
        """
        if self._pair_gains is None:
            mu = self.mu
            if self.var is None:
                gains = np.maximum(mu[None, :] - mu[:, None], 0.0)
            else:
                cov12 = 0.0 if self.cov is None else self.cov
                gains = clark_expected_max(mu[:, None], mu[None, :], self.var[:, None], self.var[None, :], cov12)
                gains -= mu[:, None]
            np.fill_diagonal(gains, 0.0)
            self._pair_gains = gains
        return self._pair_gains

    def __call__(self, members: IntArray) -> FloatArray:
        """E[max] of each row of ``members`` (shape (n_sets, set_size)); returns shape (n_sets,)."""
        size = members.shape[1]
        if size == 1 or self.var is None:
            out: FloatArray = self.mu[members].max(axis=1)
            return out
        if size == 2:
            a, b = members[:, 0], members[:, 1]
            cov12 = 0.0 if self.cov is None else self.cov[a, b]
            return clark_expected_max(self.mu[a], self.mu[b], self.var[a], self.var[b], cov12)
        keys = (np.int64(1) << members.astype(np.int64)).sum(axis=1).tolist()
        values = self.values
        out = np.empty(members.shape[0])
        todo = []
        for i, key in enumerate(keys):
            hit = values.get(key)
            if hit is None:
                todo.append(i)
            else:
                out[i] = hit
        if todo:
            sub = members[todo]
            if self.independent and self._grid is None and sub.shape[0] <= _PER_SET_MAX:
                # A few sets in a live decision: per-set panels beat building the state's grid.
                assert self.var is not None
                fresh = expected_max_independent(self.mu[sub], np.sqrt(self.var[sub]))
            elif self.independent:
                fresh = self.grid.expected_max(sub)
            else:
                assert self.cov is not None
                fresh = np.array(
                    [
                        expected_max_qmc(self.mu[m], self.cov[np.ix_(m, m)], n_points=self.n_qmc_points, seed=self.seed)
                        for m in sub
                    ]
                )
            out[todo] = fresh
            for i, v in zip(todo, fresh.tolist(), strict=True):
                values[keys[i]] = v
        return out

    def candidate_table(
        self,
        run: IntArray,
        allowed: list[int],
        depth: int,
        prefix: bool,
        greedy: bool,
        cost: FloatArray,
        tie_tol: float,
    ) -> CandidateTable:
        """Every candidate supermodel of this state, scored once, kept if it can win for some lambda.

        Enumerates added lists U in increasing order (prefixes if ``prefix``; |U| <= 1 if ``greedy``)
        within ``depth``, exactly the candidates of the unpruned search. Sets of three or more are
        scored on the state's shared grid, growing one model at a time: log F(S + x) = log F(S) +
        log Phi_x. The live search scores few sets per-set instead; the two agree to about 1e-7,
        below the tie tolerance, so decisions agree. Callers cache the table (``tables_by_policy``).
        """
        r = run.shape[0]
        q_parts: list[FloatArray] = []
        c_parts: list[FloatArray] = []
        first_parts: list[IntArray] = []
        cost_run = float(cost[run].sum()) if r else 0.0
        if r:
            q_parts.append(self(run[None, :]))
            c_parts.append(np.array([cost_run]))
            first_parts.append(np.array([-1], dtype=np.intp))
        slots = depth - r
        if greedy:
            slots = min(slots, 1)
        use_grid = self.independent
        level_c = np.array([cost_run])
        level_log_f: FloatArray | None = None
        log_f: FloatArray | None
        if use_grid and r:
            level_log_f = self.grid.log_cdf_of_max(run[None, :])
        levels = () if prefix else _enumeration(tuple(allowed), slots, prefix)
        if prefix and allowed and slots > 0:
            # Prefixes: the log CDF of every prefix's max is a cumulative sum along the model order,
            # so one pass scores them all (the optimal cascade's whole candidate set).
            order = np.asarray(allowed[:slots], dtype=np.intp)
            sizes = r + 1 + np.arange(order.shape[0])
            c_child = cost_run + np.cumsum(cost[order])
            q_child = np.empty(order.shape[0])
            small = sizes < 3 if use_grid else np.ones(order.shape[0], dtype=bool)
            for i in np.flatnonzero(small).tolist():
                q_child[i] = self(np.concatenate([run, order[: i + 1]])[None, :])[0]
            if not small.all():
                prefix_log_f = np.cumsum(self.grid.log_cdf[order], axis=0)
                if level_log_f is not None:
                    prefix_log_f += level_log_f
                q_child[~small] = self.grid.expected_max_from_log_cdf(prefix_log_f[~small])
            q_parts.append(q_child)
            c_parts.append(c_child)
            first_parts.append(np.full(order.shape[0], order[0], dtype=np.intp))
        for size, (parents, new, added) in enumerate(levels, start=r + 1):
            c_child = level_c[parents] + cost[new]
            if use_grid and size >= 3:
                if level_log_f is None:
                    log_f = self.grid.log_cdf[new]
                else:
                    log_f = level_log_f[parents]
                    log_f += self.grid.log_cdf[new]
                q_child = self.grid.expected_max_from_log_cdf(log_f)
            else:
                members = added if r == 0 else np.concatenate([np.broadcast_to(run, (added.shape[0], r)), added], 1)
                q_child = self(members)
                log_f = self.grid.log_cdf_of_max(members) if use_grid and size < depth else None
            q_parts.append(q_child)
            c_parts.append(c_child)
            first_parts.append(added[:, 0])
            level_c, level_log_f = c_child, log_f
        quality = np.concatenate(q_parts)
        total_cost = np.concatenate(c_parts)
        first = np.concatenate(first_parts)
        if quality.shape[0] > 32:
            keep = upper_envelope_mask(quality, total_cost, tie_tol)
            quality, total_cost, first = quality[keep], total_cost[keep], first[keep]
        # (Small tables are kept whole: the envelope only saves lookup work, never changes a decision.)
        table = CandidateTable(quality, total_cost, first)
        # The grid served only to build the table; states are many, keep memory small.
        self._grid = None
        return table


@dataclass(frozen=True, slots=True)
class CandidateTable:
    """The candidates of one state that can win for some lambda >= 0 (within the tie tolerance).

    Attributes
    ----------
    quality, cost : ndarray of shape (n_candidates,)
        E[max] and total cost (sunk cost included) of each kept supermodel.
    first : ndarray of shape (n_candidates,)
        The model to run next for it (its cheapest new member), -1 for "stop".
    """

    quality: FloatArray
    cost: FloatArray
    first: IntArray


@cache
def _enumeration(
    allowed: tuple[int, ...], slots: int, prefix: bool
) -> tuple[tuple[IntArray, IntArray, IntArray], ...]:
    """The added lists U of every candidate, level by level: (parent index, new model, U as rows).

    A pure function of small integers, cached: every state with the same allowed models and free
    slots shares it. Prefix mode adds the allowed models in order (a cascade's next model).
    """
    levels = []
    level: list[tuple[int, ...]] = [()]
    for _ in range(slots):
        parents: list[int] = []
        new: list[int] = []
        children: list[tuple[int, ...]] = []
        for p, added in enumerate(level):
            if prefix:
                nexts = [allowed[len(added)]] if len(added) < len(allowed) else []
            else:
                nexts = [m for m in allowed if not added or m > added[-1]]
            for m in nexts:
                parents.append(p)
                new.append(m)
                children.append((*added, m))
        if not children:
            break
        arrays = (np.array(parents, dtype=np.intp), np.array(new, dtype=np.intp), np.array(children, dtype=np.intp))
        for a in arrays:
            a.setflags(write=False)
        levels.append(arrays)
        level = children
    return tuple(levels)


def upper_envelope_mask(quality: FloatArray, cost: FloatArray, tie_tol: float) -> NDArray[np.bool_]:
    """Points within ``tie_tol`` of max_k (q_k - lambda c_k) for some lambda >= 0.

    hull(lambda) - (q - lambda c) is convex in lambda, so its minimum over [0, inf) sits at lambda = 0 or
    at a breakpoint of the hull; checking those finds every point that is ever best or tied.
    """
    order = np.lexsort((-quality, cost))
    c, q = cost[order], quality[order]
    # Upper-left hull of (cost, quality) by a monotone chain over increasing cost.
    hull: list[int] = []
    best_q = -np.inf
    for i in range(c.shape[0]):
        if q[i] <= best_q:
            continue  # dominated: costs at least as much, no better
        best_q = float(q[i])
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            # b is under the chord a -> i: it never wins.
            if (q[b] - q[a]) * (c[i] - c[a]) <= (q[i] - q[a]) * (c[b] - c[a]):
                hull.pop()
            else:
                break
        hull.append(i)
    hc, hq = c[hull], q[hull]
    slopes = (hq[1:] - hq[:-1]) / np.maximum(hc[1:] - hc[:-1], 1e-300)
    lambdas = np.concatenate([[0.0], slopes[slopes > 0]])
    top = np.max(hq[None, :] - lambdas[:, None] * hc[None, :], axis=1)
    gap = top[:, None] - (quality[None, :] - lambdas[:, None] * cost[None, :])
    mask: NDArray[np.bool_] = gap.min(axis=0) <= tie_tol
    return mask


# One memo per (query row, bitmask of answered models), shared across the rollouts of a fit.
StateMemos = dict[tuple[int, int], StateQuality]
