"""One cascade-routing decision: pick the supermodel with the best quality-minus-lambda-cost (algorithm-spec §4).

Given the models already run R (step j = |R|), the candidates are supermodels S ⊇ R within the depth
limit; S = R means stop (not allowed before any model ran). The search is breadth-first over the
added sets U, kept in increasing index order so each subset appears once (spec §4.3):

- ``order="any"``: any model not yet run may be added (cascade routing);
- ``order="forward"``: only models above the largest index run so far (``force_order``);
- ``order="prefix"``: only the next model in list order, so candidates are prefixes (Alg. 2).

Four ways to the same argmax:

- ``routing._kernels.search`` (the live path, compiled with numba): the branch and bound below,
  walked depth first, for independent or no uncertainty;
- ``_search_pruned`` (numpy; correlated estimates, and the reference of the compiled search):
  Lemma-1 pruning (spec §4.4: a child P ∪ {m} whose marginal quality does not pay for lambda c_m is
  dropped with its descendants, sound because E[max] is submodular) plus branch and bound on
  pairwise gain bounds;
- ``_search_all``: plain enumeration, the reference for tests and the no-pruning ablation;
- candidate tables (``StateQuality.candidate_table``): every candidate of a state scored once and
  kept if it wins for some lambda, for the simulator, which decides each state for many lambdas.

After the argmax, the model run next is the cheapest (lowest-index) member of S* \\ R: an explicit
rule, where the reference got it by accident (spec §8 item 4). Greedy is an explicit one-step
lookahead (spec §8 item 8). Candidates within ``tie_tol`` of the best are ties, broken by cost.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import cache
from types import ModuleType
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from routing._expected_max import DEFAULT_QMC_POINTS
from routing._state_quality import StateQuality

__all__ = ["Decision", "Order", "allowed_models", "search_compiled", "search_supermodel", "search_supermodel_numpy",
           "warm_up"]

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]
Order = Literal["any", "forward", "prefix"]

# Differences of quality-minus-cost below this count as ties (the reference rounded to 6 digits). It
# must exceed the E[max] error (about 1e-7): the live search and the simulator's tables score sets
# with different quadratures, and both must see the same ties, which gamma then breaks.
DEFAULT_TIE_TOL = 1e-6


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
    memo: StateQuality | None = None,
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
    memo : StateQuality, optional
        The memo of this query state (same estimates, same answered set): values of scored sets and
        the quadrature grid. Reusing it across decisions in the same state makes simulation cheap.

    Without covariance or memo (a live decision) the search runs compiled (``routing._kernels``);
    otherwise, and as the reference the tests compare it with, in numpy (``search_supermodel_numpy``).
    """
    if cov is None and memo is None:
        return search_compiled(mu, cost, answered, lam, var, max_depth, order, greedy, prune, expensive_tie, rng,
                               tie_tol)
    return search_supermodel_numpy(
        mu, cost, answered, lam, var=var, cov=cov, max_depth=max_depth, order=order, greedy=greedy, prune=prune,
        expensive_tie=expensive_tie, rng=rng, tie_tol=tie_tol, n_qmc_points=n_qmc_points, seed=seed, memo=memo,
    )


_ORDER_CODES = {"any": 0, "forward": 1, "prefix": 2}


def search_compiled(
    mu: FloatArray,
    cost: FloatArray,
    answered: BoolArray,
    lam: float,
    var: FloatArray | None,
    max_depth: int | None,
    order: Order,
    greedy: bool,
    prune: bool,
    expensive_tie: bool | float,
    rng: np.random.Generator | None,
    tie_tol: float,
) -> Decision:
    """``search_supermodel`` by the compiled kernel, arguments by position (a live decision's path).

    Every argument is cast to the one signature ``warm_up`` compiles (contiguous, writable float64
    and bool arrays, Python scalars): any other type would make numba compile on the request.
    """
    kernels = _load_kernels()
    mu = _writable(mu, np.float64)
    n_models = mu.shape[0]
    cheap, dear, several, answer_from = kernels.search(
        mu,
        mu if var is None else _writable(var, np.float64),
        _writable(cost, np.float64),
        _writable(answered, np.bool_),
        float(lam),
        n_models if max_depth is None else min(int(max_depth), n_models),
        _ORDER_CODES[order],
        bool(greedy),
        bool(prune),
        float(tie_tol),
        var is None,
        *kernels.QUADRATURE,
    )
    first = dear if (several and _draw_expensive(expensive_tie, rng)) else cheap
    if first >= 0:
        return Decision(int(first), None)
    return Decision(None, int(answer_from) if answer_from >= 0 else None)


def _writable(a: NDArray[Any], dtype: type) -> NDArray[Any]:
    # numba types read-only arrays apart (a broadcast or frozen estimate would compile anew).
    out: NDArray[Any] = np.ascontiguousarray(a, dtype=dtype)
    return out if out.flags.writeable else out.copy()


@cache
def _load_kernels() -> ModuleType:
    """The compiled kernels, imported on first use so that ``import routing`` does not load numba."""
    from routing import _kernels

    return _kernels


def warm_up() -> float:
    """Make the live search ready: import numba and load the compiled search from numba's disk cache
    (``routing/__pycache__``), or compile it if the cache is missing or stale, which takes far
    longer. Call it once at start so that no request pays for it; returns the seconds it took.

    A serving controller calls it before taking requests; ``scripts/bench_routing.py`` measures it.
    """
    t0 = time.perf_counter()
    mu = np.array([0.3, 0.5, 0.6, 0.7])
    cost = np.array([0.1, 0.2, 0.4, 0.8])
    answered = np.array([True, True, True, False])
    for var in (np.array([1e-6, 1e-6, 1e-6, 0.09]), None):
        search_supermodel(mu, cost, answered, 0.1, var=var)
    return time.perf_counter() - t0


def search_supermodel_numpy(
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
    memo: StateQuality | None = None,
) -> Decision:
    """``search_supermodel`` in numpy, for every kind of uncertainty: the reference of the compiled
    search, and the path of correlated estimates and of the simulator's memos."""
    n_models = mu.shape[0]
    run = np.flatnonzero(answered)
    r = run.shape[0]
    depth = n_models if max_depth is None else min(max_depth, n_models)
    answer_from = int(run[np.argmax(mu[run])]) if r else None
    if r >= depth:
        return Decision(None, answer_from)

    allowed = allowed_models(answered, run, order)
    if not allowed:
        return Decision(None, answer_from)

    quality = memo if memo is not None else StateQuality(mu, var, cov, n_qmc_points, seed, run)
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

    first = _pick(np.asarray(taus), np.asarray(costs), firsts, expensive_tie, rng, tie_tol)
    return Decision(None, answer_from) if first < 0 else Decision(first, None)


def _pick(
    tau: FloatArray,
    cost: FloatArray,
    firsts: list[int],
    expensive_tie: bool | float,
    rng: np.random.Generator | None,
    tie_tol: float,
) -> int:
    """First model of the best candidate; among ties the cheapest, or the dearest per gamma."""
    tied = np.flatnonzero(tau >= tau.max() - tie_tol)
    if tied.shape[0] > 1:
        expensive = _draw_expensive(expensive_tie, rng)
        pick = int(tied[np.argmax(cost[tied])]) if expensive else int(tied[np.argmin(cost[tied])])
    else:
        pick = int(tied[0])
    return firsts[pick]


def allowed_models(answered: BoolArray, run: NDArray[np.intp], order: Order) -> list[int]:
    """Models a supermodel may add in this state: not yet run, and for "forward" above the last run;
    for "prefix" the rest of the cost order (a cascade's remaining models)."""
    n_models = answered.shape[0]
    r = run.shape[0]
    if order == "prefix":
        return list(range(r, n_models))
    floor = int(run.max()) + 1 if (order == "forward" and r) else 0
    return [m for m in range(floor, n_models) if not answered[m]]


def _members(run: NDArray[np.intp], added: list[tuple[int, ...]]) -> NDArray[np.intp]:
    added_arr = np.array(added, dtype=np.intp)
    if run.shape[0] == 0:
        return added_arr
    return np.concatenate([np.broadcast_to(run, (len(added), run.shape[0])), added_arr], axis=1)


def _search_all(
    quality: StateQuality,
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
    quality: StateQuality,
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
    """Level-wise enumeration with Lemma-1 pruning plus branch and bound; same argmax as ``_search_all``.

    Submodularity bounds the gain of adding y to S by the gain of adding it to any subset of S: by
    min over s in S of G[s, y] = E[(X_y - X_s)^+] (one vectorised Clark call for all pairs), and by
    the exact gain of y over S's parent once its children are scored. Hence (1) a child whose bound
    does not pay for lambda c_y would fail Lemma 1: it is not even scored; (2) a node's completions
    are bounded by tau(S) plus the best positive bounded net gains, so subtrees that cannot beat the
    best candidate so far are skipped. Each level is a handful of array operations, whatever its size.
    """
    n_models = cost.shape[0]
    r = run.shape[0]
    gains = quality.pair_gains()
    allowed_arr = np.asarray(allowed, dtype=np.intp)
    best = max(taus) if taus else -math.inf

    if r == 0:
        # Singletons have no parent to bound them: score all (E[max] of one model is its mean).
        q = quality.mu[allowed_arr]
        c = cost[allowed_arr]
        tau = q - lam * c
        taus.extend(tau.tolist())
        costs.extend(c.tolist())
        firsts.extend(allowed)
        best = max(best, float(tau.max()))
        if greedy or depth <= 1:
            return
        members = allowed_arr[:, None]
        caps = np.full((members.shape[0], n_models), np.inf)
        node_q, node_c, node_tau, node_first, node_last = q, c, tau, allowed_arr, allowed_arr
    else:
        members = run[None, :]
        caps = np.full((1, n_models), np.inf)
        node_q = np.array([q_run])
        node_c = np.array([cost_run])
        node_tau = node_q - lam * node_c
        node_first = np.array([-1], dtype=np.intp)
        node_last = np.array([-1], dtype=np.intp)

    extendable = np.zeros(n_models, dtype=bool)
    extendable[allowed_arr] = True
    size = members.shape[1]
    while members.shape[0] and size < depth:
        slots = depth - size
        caps = np.minimum(caps, gains[members].min(axis=1))
        ext = extendable[None, :] & (np.arange(n_models)[None, :] > node_last[:, None])
        net = np.where(ext, caps - lam * cost[None, :], -np.inf)
        # Lemma 1: a child whose gain bound does not pay for its cost would be pruned once scored.
        # Pruning only what loses by more than tie_tol keeps every tied candidate (gamma needs them).
        candidate = net >= -tie_tol
        if slots > 1:
            top = -np.sort(-np.maximum(net, 0.0), axis=1)[:, : slots]
            top_sum = np.cumsum(top, axis=1)
            kth = top[:, slots - 2]
            rest = np.where(net >= kth[:, None], top_sum[:, slots - 1 : slots], net + top_sum[:, slots - 2 : slots - 1])
            bound = node_tau[:, None] + rest
        else:
            bound = node_tau[:, None] + net
        candidate &= bound >= best - tie_tol
        parent, new = np.nonzero(candidate)
        if parent.shape[0] == 0:
            return
        size += 1
        child_members = np.concatenate([members[parent], new[:, None]], axis=1)
        if size == 2:
            q = quality.mu[child_members[:, 0]] + gains[child_members[:, 0], new]
        else:
            q = quality(child_members)
        exact_gain = q - node_q[parent]
        c = node_c[parent] + cost[new]
        tau = q - lam * c
        keep = exact_gain - lam * cost[new] >= -tie_tol
        first = np.where(node_first[parent] < 0, new, node_first[parent])
        taus.extend(tau[keep].tolist())
        costs.extend(c[keep].tolist())
        firsts.extend(first[keep].tolist())
        if keep.any():
            best = max(best, float(tau[keep].max()))
        if greedy:
            return
        # A child's cap on z: its parent's cap, tightened by the exact gain of z over the parent.
        level_caps = caps.copy()
        level_caps[parent, new] = exact_gain
        members = child_members[keep]
        caps = level_caps[parent[keep]]
        node_q, node_c, node_tau = q[keep], c[keep], tau[keep]
        node_first, node_last = first[keep], new[keep]


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
