"""One cascade-routing decision: pick the supermodel with the best quality-minus-lambda-cost (algorithm-spec §4).

Given the models already run R (step j = |R|), the candidates are supermodels S ⊇ R within the depth
limit; S = R means stop (not allowed before any model ran). The search is breadth-first over the
added sets U, kept in increasing index order so each subset appears once (spec §4.3):

- ``order="any"``: any model not yet run may be added (cascade routing);
- ``order="forward"``: only models above the largest index run so far (``force_order``);
- ``order="prefix"``: only the next model in list order, so candidates are prefixes (Alg. 2).

Lemma-1 pruning (spec §4.4): a child P ∪ {m} whose marginal quality does not pay for lambda c_m is
dropped with its descendants; sound because E[max] is submodular in the set. After the argmax, the
model run next is the cheapest (lowest-index) member of S* \\ R: an explicit rule, where the reference
got it by accident (spec §8 item 4). Greedy is an explicit one-step lookahead (spec §8 item 8).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from routing._expected_max import (
    DEFAULT_QMC_POINTS,
    clark_expected_max,
    expected_max_independent,
    expected_max_qmc,
)

__all__ = ["Decision", "Order", "search_supermodel"]

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]
Order = Literal["any", "forward", "prefix"]

# Differences of quality-minus-cost below this count as ties (the reference rounded to 6 digits).
DEFAULT_TIE_TOL = 1e-9


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do next for one query.

    Attributes
    ----------
    run_next : int or None
        Index of the model to run next; None means stop.
    answer_from : int or None
        When stopping, the model whose answer to return (highest current quality estimate among
        those that answered); None when nothing has answered or when a model is to run next.
    """

    run_next: int | None
    answer_from: int | None

    @property
    def stop(self) -> bool:
        return self.run_next is None


class _SetQuality:
    """E[max] of member sets for one query state, picking the cheapest exact method per set size."""

    def __init__(
        self,
        mu: FloatArray,
        var: FloatArray | None,
        cov: FloatArray | None,
        n_qmc_points: int,
        seed: int,
        cache: dict[int, float] | None,
        state_key: int,
    ) -> None:
        self.mu = mu
        self.cov = cov
        if cov is not None:
            var = np.diag(cov)
        self.var = var
        self.sd = None if var is None else np.sqrt(var)
        self.n_qmc_points = n_qmc_points
        self.seed = seed
        self.cache = cache
        self.key_base = state_key << mu.shape[0]

    def __call__(self, members: NDArray[np.intp]) -> FloatArray:
        """``members`` has shape (n_sets, set_size); returns shape (n_sets,)."""
        size = members.shape[1]
        mu = self.mu[members]
        if size == 1 or self.var is None:
            out: FloatArray = mu.max(axis=1)
            return out
        var = self.var[members]
        if size == 2:
            cov12 = 0.0 if self.cov is None else self.cov[members[:, 0], members[:, 1]]
            return clark_expected_max(mu[:, 0], mu[:, 1], var[:, 0], var[:, 1], cov12)
        # Three or more members need quadrature or QMC: the expensive path, hence the cache.
        keys: list[int] = []
        todo: list[int] = []
        out = np.empty(members.shape[0])
        for i, row in enumerate(members.tolist()):
            key = self.key_base | sum(1 << m for m in row)
            keys.append(key)
            hit = None if self.cache is None else self.cache.get(key)
            if hit is None:
                todo.append(i)
            else:
                out[i] = hit
        if todo:
            sub = members[todo]
            if self.cov is None:
                assert self.sd is not None
                values = expected_max_independent(self.mu[sub], self.sd[sub])
            else:
                values = np.array(
                    [
                        expected_max_qmc(
                            self.mu[r], self.cov[np.ix_(r, r)], n_points=self.n_qmc_points, seed=self.seed
                        )
                        for r in sub
                    ]
                )
            out[todo] = values
            if self.cache is not None:
                for i, v in zip(todo, values.tolist(), strict=True):
                    self.cache[keys[i]] = v
        return out


def search_supermodel(
    mu: FloatArray,
    cost: FloatArray,
    answered: BoolArray,
    lam: float,
    *,
    var: FloatArray | None = None,
    cov: FloatArray | None = None,
    max_depth: int | None = None,
    order: Order = "any",
    greedy: bool = False,
    prune: bool = True,
    expensive_tie: bool | float = False,
    rng: np.random.Generator | None = None,
    tie_tol: float = DEFAULT_TIE_TOL,
    n_qmc_points: int = DEFAULT_QMC_POINTS,
    seed: int = 0,
    cache: dict[int, float] | None = None,
    state_key: int = 0,
) -> Decision:
    """Decide the next step for one query (algorithm-spec §4.6).

    Parameters
    ----------
    mu, cost : ndarray of shape (n_models,)
        Current quality and cost estimates; models sorted by increasing cost.
    answered : ndarray of shape (n_models,), bool
        Models that have already run (R).
    lam : float
        The multiplier lambda_j of this step.
    var, cov : ndarray of shape (n_models,) or (n_models, n_models), optional
        Independent variances or a covariance of the quality estimates; neither means no uncertainty.
    max_depth : int, optional
        At most this many models per query.
    order : {"any", "forward", "prefix"}
        Which models may be added (module docstring).
    greedy : bool
        Only compare "stop" with "add one model".
    prune : bool
        Lemma-1 pruning (never in prefix order, as in the paper).
    expensive_tie : bool or float
        Among tied best supermodels take the most expensive (True), the cheapest (False), or the
        most expensive with this probability, drawn from ``rng`` only when a tie occurs.
    cache, state_key : optional
        Memo of expected maxima for sets of three or more, keyed by ``state_key`` (which must
        identify the query and its answered set) and the set: makes repeated simulation cheap.
    """
    n_models = mu.shape[0]
    run = np.flatnonzero(answered)
    r = run.shape[0]
    depth = n_models if max_depth is None else min(max_depth, n_models)
    answer_from = int(run[np.argmax(mu[run])]) if r else None
    if r >= depth:
        return Decision(None, answer_from)

    if order == "prefix":
        allowed = [r] if r < n_models else []
    else:
        floor = int(run.max()) + 1 if (order == "forward" and r) else 0
        allowed = [m for m in range(floor, n_models) if not answered[m]]
    if not allowed:
        return Decision(None, answer_from)

    quality = _SetQuality(mu, var, cov, n_qmc_points, seed, cache, state_key)
    cost_run = float(cost[run].sum()) if r else 0.0

    # Every candidate kept for the final argmax: tau, total cost, first added model (-1 = stop).
    taus: list[float] = []
    costs: list[float] = []
    firsts: list[int] = []
    if r:
        q_run = float(quality(run[None, :])[0])
        taus.append(q_run - lam * cost_run)
        costs.append(cost_run)
        firsts.append(-1)
    else:
        q_run = -math.inf

    if prune and order != "prefix":
        _search_pruned(quality, run, cost, lam, allowed, depth, greedy, tie_tol, cost_run, q_run,
                       taus, costs, firsts)
    else:
        _search_all(quality, run, cost, lam, allowed, depth, greedy, order, cost_run, q_run,
                    taus, costs, firsts)

    tau_arr = np.asarray(taus)
    cost_arr = np.asarray(costs)
    tied = np.flatnonzero(tau_arr >= tau_arr.max() - tie_tol)
    if tied.shape[0] > 1:
        expensive = _draw_expensive(expensive_tie, rng)
        pick = int(tied[np.argmax(cost_arr[tied])]) if expensive else int(tied[np.argmin(cost_arr[tied])])
    else:
        pick = int(tied[0])
    first = firsts[pick]
    if first < 0:
        return Decision(None, answer_from)
    return Decision(first, None)


def _members(run: NDArray[np.intp], added: list[tuple[int, ...]]) -> NDArray[np.intp]:
    added_arr = np.array(added, dtype=np.intp)
    if run.shape[0] == 0:
        return added_arr
    return np.concatenate([np.broadcast_to(run, (len(added), run.shape[0])), added_arr], axis=1)


def _search_all(
    quality: _SetQuality,
    run: NDArray[np.intp],
    cost: FloatArray,
    lam: float,
    allowed: list[int],
    depth: int,
    greedy: bool,
    order: Order,
    cost_run: float,
    q_run: float,
    taus: list[float],
    costs: list[float],
    firsts: list[int],
) -> None:
    """Plain enumeration of every candidate (no pruning): the reference for tests and ablations."""
    r = run.shape[0]
    frontier: list[tuple[tuple[int, ...], float]] = [((), cost_run)]
    size = r
    while frontier and size < depth:
        children: list[tuple[int, ...]] = []
        parent_c: list[float] = []
        for added, c_parent in frontier:
            if order == "prefix":
                nexts = [r + len(added)] if r + len(added) < cost.shape[0] else []
            else:
                nexts = [m for m in allowed if not added or m > added[-1]]
            for m in nexts:
                children.append((*added, m))
                parent_c.append(c_parent)
        if not children:
            break
        size += 1
        q = quality(_members(run, children))
        c_total = np.asarray(parent_c) + cost[[c[-1] for c in children]]
        taus.extend((q - lam * c_total).tolist())
        costs.extend(c_total.tolist())
        firsts.extend(c[0] for c in children)
        if greedy:
            break
        frontier = list(zip(children, c_total.tolist(), strict=True))


def _search_pruned(
    quality: _SetQuality,
    run: NDArray[np.intp],
    cost: FloatArray,
    lam: float,
    allowed: list[int],
    depth: int,
    greedy: bool,
    tie_tol: float,
    cost_run: float,
    q_run: float,
    taus: list[float],
    costs: list[float],
    firsts: list[int],
) -> None:
    """Enumeration with Lemma-1 pruning plus branch and bound; same argmax as ``_search_all``.

    Submodularity gives, for S = P ∪ {m} and x > m, gain(S, x) <= gain(P, x), and gain(P, x) was
    computed when P's children were scored. So (1) only models whose sibling P ∪ {x} survived
    Lemma-1 can extend S (the others would fail Lemma-1 at S too), and (2) tau(S ∪ X) <= tau(S) +
    sum over x in X of (gain(P, x) - lam c_x), which skips whole subtrees that cannot beat the best
    candidate so far. With r = 0 a singleton has no parent gain; its pairs are scored exactly.
    """
    r = run.shape[0]
    best = max(taus) if taus else -math.inf
    # Node: (added, q, total cost, tau, sibling models usable next, their gains over the parent).
    # None gains = unknown (the parent is the empty set): no bound, score every pair.
    Node = tuple[tuple[int, ...], float, float, float, list[int], list[float] | None]
    tau_run = q_run - lam * cost_run if r else -math.inf
    frontier: list[Node] = [((), q_run, cost_run, tau_run, allowed, None)]
    size = r
    while frontier and size < depth:
        remaining = depth - size  # models each frontier node may still add, this one included
        children: list[tuple[int, ...]] = []
        parent_index: list[int] = []
        for index, (added, _q, _c, tau_p, nexts, gains) in enumerate(frontier):
            if gains is None:
                for x in nexts:
                    children.append((*added, x))
                    parent_index.append(index)
                continue
            net = [g - lam * cost[x] for x, g in zip(nexts, gains, strict=True)]
            for i, x in enumerate(nexts):
                # Best completion through x: x itself plus the best remaining - 1 positive terms after it.
                tail = sorted((v for v in net[i + 1 :] if v > 0.0), reverse=True)[: remaining - 1]
                if tau_p + net[i] + sum(tail) >= best - tie_tol:
                    children.append((*added, x))
                    parent_index.append(index)
        if not children:
            break
        size += 1
        q = quality(_members(run, children))
        new_model = np.array([c[-1] for c in children], dtype=np.intp)
        q_parent = np.array([frontier[i][1] for i in parent_index])
        c_total = np.array([frontier[i][2] for i in parent_index]) + cost[new_model]
        tau = q - lam * c_total
        gain = q - q_parent
        keep = (gain - lam * cost[new_model] >= 0.0) if size > 1 else np.ones(len(children), dtype=bool)
        kept = np.flatnonzero(keep).tolist()
        tau_l, q_l, c_l, gain_l = tau.tolist(), q.tolist(), c_total.tolist(), gain.tolist()
        for i in kept:
            taus.append(tau_l[i])
            costs.append(c_l[i])
            firsts.append(children[i][0])
        if kept:
            best = max(best, max(tau_l[i] for i in kept))
        if greedy:
            break
        # Group survivors by parent: the survivors of one parent are each other's siblings.
        by_parent: dict[int, list[int]] = {}
        for i in kept:
            by_parent.setdefault(parent_index[i], []).append(i)
        frontier = []
        for group in by_parent.values():
            for pos, i in enumerate(group):
                later = group[pos + 1 :]
                if size == 1 and r == 0:
                    # A singleton's extensions: every allowed model above it, gains unknown.
                    ext = [x for x in allowed if x > children[i][-1]]
                    frontier.append((children[i], q_l[i], c_l[i], tau_l[i], ext, None))
                else:
                    frontier.append(
                        (children[i], q_l[i], c_l[i], tau_l[i], [children[j][-1] for j in later],
                         [gain_l[j] for j in later])
                    )


def _draw_expensive(expensive_tie: bool | float, rng: np.random.Generator | None) -> bool:
    if isinstance(expensive_tie, bool):
        return expensive_tie
    if expensive_tie <= 0.0:
        return False
    if expensive_tie >= 1.0:
        return True
    if rng is None:
        raise ValueError("a tie with 0 < gamma < 1 needs an rng to draw the tie-break")
    return bool(rng.random() < expensive_tie)
