"""Shared helpers for the routing tests: random instances and a brute-force supermodel search.

The brute force is deliberately naive (spec §4.1): enumerate every supermodel S ⊇ R within the depth
limit, score tau = E[max_S] - lambda * cost(S), take the argmax with the cheapest-cost tie-break,
and run the lowest-index model of S* \\ R (or stop). It shares only ``routing.expected_max`` with
the code under test.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import combinations

import numpy as np
import pytest

from routing import Decision, Estimates, TableEstimates, expected_max
from routing._expected_max import expected_max_qmc

TIE_TOL = 1e-9  # routing's default tie tolerance


@dataclass(frozen=True)
class BruteForce:
    """Outcome of the brute-force search for one state."""

    decision: Decision
    best: frozenset[int]  # S*
    margin: float  # tau(S*) minus the best tau outside the tie set (inf when S* is the only candidate)


def one_query(
    mu: np.ndarray, cost: np.ndarray, var: np.ndarray | None = None, cov: np.ndarray | None = None
) -> Estimates:
    """Estimates of a single query, as ``Policy.decide`` takes them."""
    return Estimates(
        q_mean=mu[None, :],
        cost=cost[None, :],
        q_var=None if var is None else var[None, :],
        q_cov=None if cov is None else cov[None, :, :],
    )


def supermodel_quality(
    members: list[int],
    mu: np.ndarray,
    var: np.ndarray | None,
    cov: np.ndarray | None,
    *,
    seed: int = 0,
    n_qmc_points: int = 1024,
) -> float:
    idx = np.asarray(members, dtype=np.intp)
    if cov is not None:
        sub = cov[np.ix_(idx, idx)]
        if idx.shape[0] >= 3:
            # routing scores every correlated set of three or more by QMC, even one whose
            # off-diagonal block happens to be zero (expected_max would switch to quadrature there).
            return expected_max_qmc(mu[idx], sub, n_points=n_qmc_points, seed=seed)
        return expected_max(mu[idx], cov=sub)
    return expected_max(mu[idx], var=None if var is None else var[idx])


def brute_force(
    mu: np.ndarray,
    cost: np.ndarray,
    answered: np.ndarray,
    lam: float,
    *,
    var: np.ndarray | None = None,
    cov: np.ndarray | None = None,
    max_depth: int | None = None,
    order: str = "any",
    greedy: bool = False,
    expensive_tie: bool = False,
    seed: int = 0,
) -> BruteForce:
    """Naive cascade-routing decision; ``order="prefix"`` restricts candidates to prefixes {0..i-1}."""
    k = mu.shape[0]
    run = sorted(int(i) for i in np.flatnonzero(answered))
    depth = k if max_depth is None else min(max_depth, k)
    answer_from = max(run, key=lambda i: mu[i]) if run else None
    if len(run) >= depth:
        return BruteForce(Decision(None, answer_from), frozenset(run), np.inf)
    if order == "prefix":
        assert run == list(range(len(run))), "prefix order needs a prefix of models run"
        added_sets = [tuple(range(len(run), i)) for i in range(max(len(run), 1), depth + 1)]
    else:
        floor = max(run) + 1 if (order == "forward" and run) else 0
        pool = [m for m in range(floor, k) if m not in run]
        max_add = min(depth - len(run), 1 if greedy else k)
        added_sets = [u for size in range(max_add + 1) for u in combinations(pool, size)]
    if greedy and order == "prefix":
        added_sets = [u for u in added_sets if len(u) <= 1]
    cands = []
    for added in added_sets:
        members = run + list(added)  # the order routing uses: models run, then added ones
        if not members:
            continue  # stopping before any model ran is not allowed
        q = supermodel_quality(members, mu, var, cov, seed=seed)
        c = float(sum(cost[m] for m in members))
        cands.append((q - lam * c, c, added))
    taus = np.array([t for t, _, _ in cands])
    tied = [i for i, t in enumerate(taus) if t >= taus.max() - TIE_TOL]
    pick = (max if expensive_tie else min)(tied, key=lambda i: cands[i][1])
    others = [t for i, t in enumerate(taus) if i not in tied]
    margin = float(taus.max() - max(others)) if others else np.inf
    added = cands[pick][2]
    best = frozenset(run) | frozenset(added)
    if not added:
        return BruteForce(Decision(None, answer_from), best, margin)
    return BruteForce(Decision(min(added), None), best, margin)


def random_state(
    rng: np.random.Generator, k: int, n_run: int, *, uncertainty: str = "var", prefix: bool = False
) -> dict[str, np.ndarray | None]:
    """Random estimates of one query: mixed wide and nearly known members, costs increasing."""
    mu = rng.uniform(0.0, 1.0, k)
    sd = rng.choice([0.0, 1e-3, 0.05, 0.1, 0.2, 0.3], size=k)
    answered = np.zeros(k, dtype=bool)
    answered[np.arange(n_run) if prefix else rng.choice(k, n_run, replace=False)] = True
    sd[answered] = rng.choice([0.0, 1e-3], size=n_run)  # models that ran are (nearly) known
    cost = np.sort(rng.uniform(0.01, 1.0, k))
    out: dict[str, np.ndarray | None] = {"mu": mu, "cost": cost, "answered": answered, "var": None, "cov": None}
    if uncertainty == "var":
        out["var"] = sd**2
    elif uncertainty == "cov":
        a = rng.normal(size=(k, k))
        corr = a @ a.T
        d = np.sqrt(np.diag(corr))
        corr = corr / np.outer(d, d)
        out["cov"] = corr * np.outer(sd, sd)
    return out


def random_lambda(rng: np.random.Generator, cost: np.ndarray) -> float:
    """A multiplier where cost and quality trade off: lambda * mean cost spans 0.003 .. 0.3."""
    return float(10 ** rng.uniform(-2.5, -0.5) / cost.mean())


def random_table(rng: np.random.Generator, n: int, k: int) -> tuple[TableEstimates, np.ndarray, np.ndarray]:
    """A TableEstimates with noisy ex-ante and sharp post-hoc estimates, plus its ground truth.

    Ex-ante cost estimates are each model's typical cost, post-hoc ones the realised cost; qualities
    are 0/1 with accuracy rising with cost.
    """
    skill = np.linspace(0.3, 0.85, k)
    quality = (rng.uniform(0, 1, (n, k)) < skill).astype(float)
    base = np.geomspace(0.1, 3.0, k)
    cost = base * rng.uniform(0.7, 1.3, (n, k))
    q_ante = np.clip(skill + rng.normal(0, 0.15, (n, k)) + 0.2 * (quality - skill), 0, 1)
    q_post = np.clip(quality + rng.normal(0, 0.2, (n, k)), 0, 1)
    table = TableEstimates(
        q_ante=q_ante,
        q_post=q_post,
        var_ante=np.full((n, k), 0.04),
        var_post=np.full((n, k), 1e-6),
        cost_ante=np.broadcast_to(base, (n, k)).copy(),
        cost_post=cost,
    )
    return table, quality, cost


# Fixtures hand the helpers to the test modules (importing from conftest is fragile across pytest
# import modes).


@pytest.fixture
def brute() -> Callable[..., BruteForce]:
    """The brute-force supermodel search (``brute_force``)."""
    return brute_force


@pytest.fixture
def make_state() -> Callable[..., dict[str, np.ndarray | None]]:
    """Random one-query estimates (``random_state``)."""
    return random_state


@pytest.fixture
def make_lambda() -> Callable[[np.random.Generator, np.ndarray], float]:
    return random_lambda


@pytest.fixture
def make_table() -> Callable[[np.random.Generator, int, int], tuple[TableEstimates, np.ndarray, np.ndarray]]:
    """A random validation table with its ground truth (``random_table``)."""
    return random_table
