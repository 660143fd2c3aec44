"""The compiled live search (``routing._kernels``) against the numpy code it replaces: the same
numbers from each kernel, the same decision from the search, and no compilation on a request."""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from conftest import one_query
from scipy.special import ndtr

from routing import CascadeRouter, OptimalCascade, _kernels as kernels, clark_expected_max, search_supermodel, warm_up
from routing._expected_max import IndependentGrid
from routing._supermodel_search import search_supermodel_numpy

# The grid sums in another order than numpy's dot product, and its CDF products are not
# exp(sum(log)): values agree to rounding.
GRID_TOL = 1e-12


def test_ndtr_is_scipys_normal_cdf() -> None:
    """scipy's formula on libm's erf/erfc instead of cephes': equal to an ulp of 1, and in the lower
    tail (where products of CDFs shrink) to 1e-12 relative down to 1e-88."""
    z = np.concatenate([np.linspace(-40, 40, 8001), [0.0, -0.0, 1e-300, -1e-300, 8.5, -8.5, 38.5, -38.5]])
    got = np.array([kernels.ndtr(float(v)) for v in z])
    np.testing.assert_allclose(got, ndtr(z), rtol=0, atol=np.finfo(np.float64).eps)
    tail = (z > -20) & (z < 0)
    np.testing.assert_allclose(got[tail], ndtr(z[tail]), rtol=1e-12, atol=0)
    assert math.isnan(kernels.ndtr(math.nan))


def test_clark_is_clark_expected_max() -> None:
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.uniform(0, 1, (2, 500))
    var1, var2 = rng.choice([0.0, 1e-6, 0.01, 0.09], (2, 500))
    cov12 = rng.uniform(-0.5, 0.5, 500) * np.sqrt(var1 * var2)
    mu2[:50] = mu1[:50]  # equal means
    var2[:50] = var1[:50] = 0.0  # two known values: theta at its floor
    got = np.array([kernels.clark(*args) for args in zip(mu1, mu2, var1, var2, cov12, strict=True)])
    np.testing.assert_allclose(got, clark_expected_max(mu1, mu2, var1, var2, cov12), rtol=0, atol=1e-15)


@pytest.mark.parametrize("n", [0, 1, 2, 7, 8, 9, 15, 16, 17, 127, 128, 129, 255, 256, 257, 1000, 5000])
def test_numpy_sum_is_np_sum_bit_for_bit(n: int) -> None:
    """Costs of equal-cost candidates compare as in the numpy search only if sums round alike."""
    rng = np.random.default_rng(n)
    for _ in range(20):
        a = rng.uniform(0, 1, n) * 10.0 ** rng.uniform(-6, 3, n)
        assert kernels.numpy_sum(a) == float(a.sum())


def _grid_case(rng: np.random.Generator, k: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    mu = rng.uniform(0.0, 1.0, k)
    sd = rng.choice([0.0, 1e-3, 0.05, 0.1, 0.2, 0.3], k)
    if kind == "ties":
        mu[:] = 0.5
        sd[:] = sd[0]
    elif kind == "known":
        sd[:] = 0.0
    elif kind == "wide":
        sd = rng.uniform(0.2, 0.6, k)
    return mu, sd


@pytest.mark.parametrize("kind", ["mixed", "ties", "known", "wide"])
@pytest.mark.parametrize("k", [1, 2, 3, 5, 11, 20])
def test_grid_expected_max_is_the_numpy_grid(k: int, kind: str) -> None:
    """Same breakpoints, panels and nodes as ``IndependentGrid``, with and without a floor, for sets
    of every size; zero variances (point masses) and identical members included."""
    rng = np.random.default_rng(k * 31 + len(kind))
    for _ in range(5):
        mu, sd = _grid_case(rng, k, kind)
        sizes = range(1, k + 1)
        members = [np.sort(rng.choice(k, size, replace=False)) for size in sizes for _ in range(3)]
        for floor in (-math.inf, float(np.max(mu[:1] - 8.5 * sd[:1]))):
            grid = IndependentGrid(mu, sd, floor)
            for m in members:
                if floor > -math.inf and 0 not in m:
                    continue  # the floor is valid only for sets that contain its member
                rows = m[None, :].astype(np.int64)
                got = kernels.grid_expected_max(mu, sd, floor, rows, *kernels.QUADRATURE)
                np.testing.assert_allclose(got, grid.expected_max(m[None, :]), rtol=0, atol=GRID_TOL)


def _random_instance(
    rng: np.random.Generator,
    make_state: Callable[..., dict[str, Any]],
    make_lambda: Callable[..., float],
    k: int,
    kind: str,
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """One search problem: random, tied (equal means, integer costs, lambda 0) or a cascade prefix."""
    if kind == "ties":
        mu = np.full(k, 0.5) if rng.integers(2) else rng.choice([0.2, 0.5], k)
        var = [None, np.zeros(k), np.full(k, 0.04)][int(rng.integers(3))]
        cost = np.sort(rng.integers(1, 4, k).astype(float))
        answered = np.zeros(k, dtype=bool)
        answered[rng.choice(k, int(rng.integers(0, k)), replace=False)] = True
        lam = float(rng.choice([0.0, 0.01, 0.1]))
        order = ["any", "forward"][int(rng.integers(2))]
    else:
        prefix = kind == "prefix"
        state = make_state(rng, k, int(rng.integers(0, k)), uncertainty=["var", "none"][int(rng.integers(2))],
                           prefix=prefix)
        mu, cost, answered, var = state["mu"], state["cost"], state["answered"], state["var"]
        lam = make_lambda(rng, cost) * float(rng.choice([0.01, 0.1, 1.0, 10.0]))
        order = "prefix" if prefix else ["any", "forward"][int(rng.integers(2))]
    options = {
        "var": var,
        "max_depth": int(rng.integers(1, k + 2)),
        "order": order,
        "greedy": bool(rng.integers(2)),
        "expensive_tie": bool(rng.integers(2)),
    }
    return (mu, cost, answered, lam), options


@pytest.mark.parametrize("kind", ["random", "ties", "prefix"])
def test_compiled_search_is_the_numpy_search(kind: str, make_state, make_lambda) -> None:
    """Decision for decision, pruned and not, greedy or not, in every order, with K from 1 to 8:
    the compiled search and the numpy search (itself pinned to brute force in test_policies.py)."""
    rng = np.random.default_rng({"random": 11, "ties": 12, "prefix": 13}[kind])
    differ = []
    for _ in range(500):
        args, options = _random_instance(rng, make_state, make_lambda, int(rng.integers(1, 9)), kind)
        for prune in (True, False):
            compiled = search_supermodel(*args, prune=prune, **options)
            reference = search_supermodel_numpy(*args, prune=prune, **options)
            if compiled != reference:
                differ.append((compiled, reference, prune, args, options))
    assert not differ, f"{len(differ)} of 1000 differ; first: {differ[0]}"


def test_compiled_search_is_the_numpy_search_at_twenty_models(make_state, make_lambda) -> None:
    """K = 20 at depth 5 (the benchmark's largest fleet), where the search scores hundreds of sets
    on the shared grid; and K = 20 without a depth limit where the answer is near (few candidates)."""
    rng = np.random.default_rng(20)
    for i in range(40):
        state = make_state(rng, 20, int(rng.integers(0, 5)))
        lam = make_lambda(rng, state["cost"]) * float(rng.choice([0.1, 1.0, 10.0]))
        depth = 5 if i < 30 else None
        if depth is None:
            lam *= 100.0
        args = (state["mu"], state["cost"], state["answered"], lam)
        options = {"var": state["var"], "max_depth": depth, "order": ["any", "forward"][i % 2]}
        assert search_supermodel(*args, **options) == search_supermodel_numpy(*args, **options), (args, options)


def test_large_fleets_past_the_exact_sum_block() -> None:
    """More than 128 models answered: the run cost is numpy's pairwise sum of two halves."""
    k = 300
    rng = np.random.default_rng(3)
    mu = rng.uniform(0, 1, k)
    cost = np.sort(rng.uniform(0.01, 1.0, k))
    answered = np.ones(k, dtype=bool)
    answered[-3:] = False
    for lam in (0.0, 0.01, 1.0):
        args = (mu, cost, answered, lam)
        assert search_supermodel(*args) == search_supermodel_numpy(*args)


def test_policy_decisions_equal_the_numpy_search(make_table) -> None:
    """Through ``decide`` (its own single-query path), for every step of rollouts of fitted policies."""
    table, quality, cost = make_table(np.random.default_rng(4), 40, 6)
    policies = [
        CascadeRouter(max_expected_cost=float(cost.mean(axis=0)[2]), max_depth=4).fit(table, quality, cost),
        CascadeRouter.from_lambdas([0.05] * 6, force_order=True),
        OptimalCascade.from_lambdas([0.02] * 6),
    ]
    for policy in policies:
        for row in range(table.n_queries):
            answered = np.zeros(6, dtype=bool)
            while True:
                est = table.estimate(np.array([row]), answered[None, :])
                got = policy.decide(est, answered, rng=np.random.default_rng(0))
                step = int(answered.sum())
                lam = policy.lambdas_
                expected = search_supermodel_numpy(
                    est.q_mean[0], est.cost[0], answered, float(lam[min(step, lam.shape[0] - 1)]),
                    var=est.q_var[0], max_depth=min(lam.shape[0], policy.n_steps(6)), order=policy._order,
                    prune=policy._prune, expensive_tie=policy.gamma_, rng=np.random.default_rng(0),
                )
                assert got == expected
                if got.stop:
                    break
                answered[got.run_next] = True


def test_no_request_compiles_after_warm_up() -> None:
    """Read-only, strided, integer or float32 inputs, numpy scalars and a default max_depth all reach
    the one signature ``warm_up`` compiled: numba never compiles on a request."""
    assert warm_up() >= 0.0
    signatures = list(kernels.search.signatures)
    assert len(signatures) == 1
    mu = np.array([0.3, 0.5, 0.6, 0.7, 0.2, 0.9])
    frozen = mu.copy()
    frozen.setflags(write=False)
    strided = np.repeat(mu, 2)[::2]
    var = np.broadcast_to(np.float32(0.04), (6,))
    cost = np.arange(1, 7)  # int64
    answered = np.array([1, 0, 0, 0, 0, 0])  # integers, not bools
    for m in (mu, frozen, strided):
        search_supermodel(m, cost, answered, np.float32(0.1), var=var, max_depth=np.int64(3), tie_tol=1e-6)
        search_supermodel(m, cost, answered, 0, max_depth=None, greedy=np.bool_(True))
    policy = CascadeRouter.from_lambdas([0.1, 0.1])
    policy.decide(one_query(mu, cost.astype(float), np.full(6, 0.04)), np.zeros(6, dtype=bool))
    assert list(kernels.search.signatures) == signatures


def test_import_routing_does_not_load_numba() -> None:
    """numba is loaded by the first live search or ``warm_up``, not by ``import routing``."""
    code = (
        "import sys, routing\n"
        "print('numba' in sys.modules)\n"
        "routing.warm_up()\n"
        "print('numba' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=600)
    assert result.stdout.split() == ["False", "True"]
