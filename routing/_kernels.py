"""Compiled kernels of the live decision: one cascade-routing search per call, in numba.

A decision in numpy is dozens of small array operations, each paying numpy's per-call overhead;
here it is one compiled call.
The kernels compute what the numpy code computes (``_supermodel_search``, ``_expected_max``):

- ``ndtr`` and ``clark`` are scipy's normal CDF formula and ``clark_expected_max``, for scalars;
- the quadrature grid is ``IndependentGrid``'s (same breakpoints, panels and Gauss-Legendre nodes),
  with each member's CDF column computed only when a set containing it is first scored;
- ``search`` is the branch and bound of ``_search_pruned`` (Lemma 1, pair-gain caps, sibling gains)
  walked depth first, so a strong candidate is known early; without pruning, or in prefix order, it
  is ``_search_all``'s enumeration. Among candidates within the tie tolerance of the best, the
  cheapest (or dearest) wins and equal costs go to the candidate the numpy search lists first
  (fewer models, then lexicographic), so the pick does not depend on the walk's order.

Only independent or no uncertainty is compiled; correlated sets (QMC) and the simulator's memos stay
in numpy. Compiled code is cached on disk (``cache=True``, in ``__pycache__``);
``routing.warm_up`` loads or compiles it before the first request.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar, cast

import numpy as np
from numba import njit  # type: ignore[import-untyped]
from numpy.typing import NDArray

from routing._expected_max import _BREAKS_SD, _GL_NODES, _NODES_BY_RATIO, _RATIO_EDGES, TAIL_SD

__all__ = ["QUADRATURE", "clark", "grid_expected_max", "ndtr", "numpy_sum", "search"]

FloatArray = NDArray[np.float64]
_F = TypeVar("_F", bound=Callable[..., Any])


def _compiled(fn: _F) -> _F:
    """``numba.njit`` with the on-disk cache, typed for mypy (numba's decorator is not)."""
    return cast(_F, njit(cache=True)(fn))


_SQRT1_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
# Beyond 8.5 sd, ndtr is 1.0 exactly above, and below 1e-17: taken as 0 it moves no set's E[max] by
# more than 1e-17 times the grid's width, so most evaluations of sharp members are skipped.
_SATURATED_Z = 8.5


def _quadrature_tables() -> tuple[FloatArray, FloatArray, FloatArray, FloatArray, NDArray[np.int64]]:
    """``_expected_max``'s quadrature constants as arrays, passed to every call: numba would freeze
    module constants into its disk cache, which is keyed on this file only."""
    counts = np.array(_NODES_BY_RATIO, dtype=np.int64)
    nodes = np.zeros((counts.shape[0], _GL_NODES))
    weights = np.zeros((counts.shape[0], _GL_NODES))
    for level, n in enumerate(_NODES_BY_RATIO):
        x, w = np.polynomial.legendre.leggauss(n)
        nodes[level, :n] = x
        weights[level, :n] = w
    breaks = np.array(_BREAKS_SD, dtype=np.float64)
    assert breaks[-1] == TAIL_SD and breaks[0] == -TAIL_SD  # the grid's range is the outer breakpoints
    return breaks, np.array(_RATIO_EDGES, dtype=np.float64), nodes, weights, counts


QUADRATURE = _quadrature_tables()


@_compiled
def ndtr(a: float) -> float:
    """Phi(a), by the formula of scipy.special.ndtr (cephes)."""
    x = a * _SQRT1_2
    z = abs(x)
    if z < _SQRT1_2:
        return 0.5 + 0.5 * math.erf(x)
    y = 0.5 * math.erfc(z)
    return 1.0 - y if x > 0.0 else y


@_compiled
def clark(mu1: float, mu2: float, var1: float, var2: float, cov12: float) -> float:
    """``clark_expected_max`` for scalars, operation for operation."""
    diff = mu1 - mu2
    theta = math.sqrt(max(var1 + var2 - 2.0 * cov12, 1e-24))
    alpha = diff / theta
    return mu2 + diff * ndtr(alpha) + theta * math.exp(-0.5 * alpha * alpha) * _INV_SQRT_2PI


@_compiled
def _block_sum(a: FloatArray, start: int, n: int) -> float:
    # numpy's pairwise summation of up to 128 values: eight running sums, then a tree.
    if n < 8:
        res = 0.0
        for i in range(start, start + n):
            res += a[i]
        return res
    r = np.empty(8)
    for j in range(8):
        r[j] = a[start + j]
    i = 8
    while i < n - (n % 8):
        for j in range(8):
            r[j] += a[start + i + j]
        i += 8
    res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
    while i < n:
        res += a[start + i]
        i += 1
    return float(res)


@_compiled
def numpy_sum(a: FloatArray) -> float:
    """``float(a.sum())`` of a contiguous float64 array, bit for bit.

    Equal-cost candidates must compare equal here as they do in the numpy search. numpy splits more
    than 128 values in halves (a multiple of 8 first) and adds the halves' sums; the recursion is
    unrolled on a stack because numba's disk cache does not handle recursive functions.
    """
    n_frames = 64
    starts = np.empty(n_frames, dtype=np.int64)
    sizes = np.empty(n_frames, dtype=np.int64)
    phases = np.zeros(n_frames, dtype=np.int64)
    lefts = np.empty(n_frames)
    starts[0] = 0
    sizes[0] = a.shape[0]
    depth = 1
    ret = 0.0
    while depth > 0:
        f = depth - 1
        n = sizes[f]
        if n <= 128:
            ret = _block_sum(a, starts[f], n)
            depth -= 1
            continue
        half = n // 2
        half -= half % 8
        if phases[f] == 0:
            phases[f] = 1
            starts[depth] = starts[f]
            sizes[depth] = half
            phases[depth] = 0
            depth += 1
        elif phases[f] == 1:
            lefts[f] = ret
            phases[f] = 2
            starts[depth] = starts[f] + half
            sizes[depth] = n - half
            phases[depth] = 0
            depth += 1
        else:
            ret = lefts[f] + ret
            depth -= 1
    return ret


@_compiled
def _grid_nodes(
    mu: FloatArray,
    sd: FloatArray,
    floor: float,
    breaks_sd: FloatArray,
    ratio_edges: FloatArray,
    gl_nodes: FloatArray,
    gl_weights: FloatArray,
    gl_counts: NDArray[np.int64],
) -> tuple[FloatArray, FloatArray, float]:
    """Nodes, weights and lower end of ``IndependentGrid(mu, sd, floor)``."""
    k = mu.shape[0]
    tail = breaks_sd[breaks_sd.shape[0] - 1]
    lower = math.inf
    upper = -math.inf
    for i in range(k):
        lower = min(lower, mu[i] - tail * sd[i])
        upper = max(upper, mu[i] + tail * sd[i])
    lower = max(lower, floor)
    upper = max(upper, lower)
    nb = breaks_sd.shape[0]
    breaks = np.empty(k * nb)
    for i in range(k):
        for j in range(nb):
            breaks[i * nb + j] = min(max(mu[i] + sd[i] * breaks_sd[j], lower), upper)
    breaks.sort()
    n_panels = breaks.shape[0] - 1
    levels = np.empty(n_panels, dtype=np.int64)
    total = 0
    for p in range(n_panels):
        width = breaks[p + 1] - breaks[p]
        if width <= 0.0:
            levels[p] = -1
            continue
        mid = 0.5 * (breaks[p] + breaks[p + 1])
        # The sharpest member that bends this panel (within its +-8.5 sd; point masses never do).
        local_sd = math.inf
        for i in range(k):
            if sd[i] > 0.0 and abs(mid - mu[i]) <= tail * sd[i]:
                local_sd = min(local_sd, sd[i])
        ratio = width / local_sd
        level = 0
        while level < ratio_edges.shape[0] and ratio_edges[level] < ratio:
            level += 1
        levels[p] = level
        total += gl_counts[level]
    if total == 0:
        return np.full(1, lower), np.zeros(1), lower
    x = np.empty(total)
    w = np.empty(total)
    at = 0
    for p in range(n_panels):
        level = levels[p]
        if level < 0:
            continue
        mid = 0.5 * (breaks[p] + breaks[p + 1])
        half = 0.5 * (breaks[p + 1] - breaks[p])
        for j in range(gl_counts[level]):
            x[at] = mid + half * gl_nodes[level, j]
            w[at] = half * gl_weights[level, j]
            at += 1
    return x, w, lower


@_compiled
def _cdf_column(out: FloatArray, x: FloatArray, mu: float, sd: float) -> None:
    """Phi((x - mu) / sd) on the grid, sd = 0 read as a point mass (as ``_phi_cdf``)."""
    scale = max(sd, 1e-300)
    for j in range(x.shape[0]):
        z = (x[j] - mu) / scale
        if z > _SATURATED_Z:
            out[j] = 1.0
        elif z < -_SATURATED_Z:
            out[j] = 0.0
        else:
            out[j] = ndtr(z)


@_compiled
def _dot(a: FloatArray, b: FloatArray) -> float:
    # Eight running sums in registers: the additions overlap instead of waiting on one another. A
    # fixed order (not fastmath) keeps every set's value the same on every machine and search path.
    n = a.shape[0]
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = 0.0
    stop = n - n % 8
    for j in range(0, stop, 8):
        s0 += a[j] * b[j]
        s1 += a[j + 1] * b[j + 1]
        s2 += a[j + 2] * b[j + 2]
        s3 += a[j + 3] * b[j + 3]
        s4 += a[j + 4] * b[j + 4]
        s5 += a[j + 5] * b[j + 5]
        s6 += a[j + 6] * b[j + 6]
        s7 += a[j + 7] * b[j + 7]
    total = ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))
    for j in range(stop, n):
        total += a[j] * b[j]
    return float(total)


@_compiled
def _set_value(lower: float, w_total: float, weighted_cdf: FloatArray, cdf: FloatArray) -> float:
    """E[max] on the grid of a set whose max has CDF F_parent * cdf, given w * F_parent:
    lower + sum_j w_j (1 - F(x_j)), written as lower + sum(w) - (w F_parent) . cdf."""
    return lower + (w_total - _dot(weighted_cdf, cdf))


@_compiled
def grid_expected_max(
    mu: FloatArray,
    sd: FloatArray,
    floor: float,
    members: NDArray[np.int64],
    breaks_sd: FloatArray,
    ratio_edges: FloatArray,
    gl_nodes: FloatArray,
    gl_weights: FloatArray,
    gl_counts: NDArray[np.int64],
) -> FloatArray:
    """``IndependentGrid(mu, sd, floor).expected_max(members)`` as the search scores sets: E[max] of
    each row of ``members`` (at least one column)."""
    x, w, lower = _grid_nodes(mu, sd, floor, breaks_sd, ratio_edges, gl_nodes, gl_weights, gl_counts)
    phi = np.empty((mu.shape[0], x.shape[0]))
    for i in range(mu.shape[0]):
        _cdf_column(phi[i], x, mu[i], sd[i])
    w_total = 0.0
    for j in range(x.shape[0]):
        w_total += w[j]
    out = np.empty(members.shape[0])
    weighted = np.empty(x.shape[0])
    last = members.shape[1] - 1
    for s in range(members.shape[0]):
        weighted[:] = w
        for m in range(last):
            weighted *= phi[members[s, m]]
        out[s] = _set_value(lower, w_total, weighted, phi[members[s, last]])
    return out


@_compiled
def _pair_gain_row(
    gains: FloatArray, s: int, start: int, mu: FloatArray, var: FloatArray, certain: bool
) -> None:
    """G[s, y] = E[max(X_s, X_y)] - mu_s for y >= start (``StateQuality.pair_gains``, one row)."""
    for y in range(start, mu.shape[0]):
        if y == s:
            gains[y] = 0.0
        elif certain:
            gains[y] = max(mu[y] - mu[s], 0.0)
        else:
            gains[y] = clark(mu[s], mu[y], var[s], var[y], 0.0) - mu[s]


@_compiled
def _precedes(keys: NDArray[np.int64], sizes: NDArray[np.int64], a: int, b: int) -> bool:
    """Candidate a before b in the numpy search's list: fewer models, then lexicographic added models."""
    if sizes[a] != sizes[b]:
        return bool(sizes[a] < sizes[b])
    for j in range(keys.shape[1]):
        if keys[a, j] != keys[b, j]:
            return bool(keys[a, j] < keys[b, j])
    return False


@_compiled
def _grown(a: NDArray[Any], n: int) -> NDArray[Any]:
    """``a`` with its first axis grown to ``n`` rows (the new rows uninitialised)."""
    out = np.empty((n,) + a.shape[1:], dtype=a.dtype)
    out[: a.shape[0]] = a
    return out


@_compiled
def _build_grid(
    mu: FloatArray,
    sd: FloatArray,
    run: NDArray[np.int64],
    n_levels: int,
    breaks_sd: FloatArray,
    ratio_edges: FloatArray,
    gl_nodes: FloatArray,
    gl_weights: FloatArray,
    gl_counts: NDArray[np.int64],
) -> tuple[FloatArray, FloatArray, float, float, FloatArray, FloatArray]:
    """The state's grid (``StateQuality.grid``): nodes, weights, lower end, sum of weights, and room
    for the members' CDF columns and each level's weighted CDF."""
    # The floor is valid for every candidate: each contains the run models, whose CDFs are 0 below it.
    floor = -math.inf
    tail_sd = breaks_sd[breaks_sd.shape[0] - 1]
    for i in range(run.shape[0]):
        floor = max(floor, mu[run[i]] - tail_sd * sd[run[i]])
    x, w, lower = _grid_nodes(mu, sd, floor, breaks_sd, ratio_edges, gl_nodes, gl_weights, gl_counts)
    w_total = 0.0
    for j in range(w.shape[0]):
        w_total += w[j]
    return x, w, lower, w_total, np.empty((mu.shape[0], x.shape[0])), np.empty((n_levels, x.shape[0]))


@_compiled
def _fill_weighted(
    level: int,
    weighted: FloatArray,
    weighted_ready: NDArray[np.bool_],
    phi: FloatArray,
    phi_ready: NDArray[np.bool_],
    path: NDArray[np.int64],
    run: NDArray[np.int64],
    x: FloatArray,
    w: FloatArray,
    mu: FloatArray,
    sd: FloatArray,
) -> None:
    """weighted[level] = w * CDF of the max of that level's node, multiplied up from the deepest level
    above it whose product is known (level 0: the run models)."""
    base = level
    while base > 0 and not weighted_ready[base]:
        base -= 1
    if not weighted_ready[base]:
        weighted[0, :] = w
        for i in range(run.shape[0]):
            m = run[i]
            if not phi_ready[m]:
                _cdf_column(phi[m], x, mu[m], sd[m])
                phi_ready[m] = True
            weighted[0] *= phi[m]
        weighted_ready[0] = True
    for lv in range(base + 1, level + 1):
        m = path[lv]
        if not phi_ready[m]:
            _cdf_column(phi[m], x, mu[m], sd[m])
            phi_ready[m] = True
        for j in range(x.shape[0]):
            weighted[lv, j] = weighted[lv - 1, j] * phi[m, j]
        weighted_ready[lv] = True


@_compiled
def search(
    mu: FloatArray,
    var: FloatArray,
    cost: FloatArray,
    answered: NDArray[np.bool_],
    lam: float,
    depth: int,
    order: int,
    greedy: bool,
    prune: bool,
    tie_tol: float,
    certain: bool,
    breaks_sd: FloatArray,
    ratio_edges: FloatArray,
    gl_nodes: FloatArray,
    gl_weights: FloatArray,
    gl_counts: NDArray[np.int64],
) -> tuple[int, int, bool, int]:
    """One decision (``search_supermodel`` without covariance or memo).

    ``depth`` is the depth limit (at most the number of models); ``order``: 0 any, 1 forward,
    2 prefix; ``certain``: no uncertainty (``var`` is ignored).

    Returns (first model of the cheapest tied best, first model of the dearest, whether several
    tie, answer_from); a first model of -1 means stop, an answer_from of -1 that nothing answered.
    """
    k = mu.shape[0]
    run = np.empty(k, dtype=np.int64)
    r = 0
    answer_from = -1
    for i in range(k):
        if answered[i]:
            run[r] = i
            r += 1
            if answer_from < 0 or mu[i] > mu[answer_from]:
                answer_from = i
    depth = min(depth, k)
    if r >= depth:
        return -1, -1, False, answer_from
    extendable = np.zeros(k, dtype=np.bool_)
    n_allowed = 0
    if order == 2:
        for m in range(r, k):
            extendable[m] = True
            n_allowed += 1
    else:
        floor_model = run[r - 1] + 1 if (order == 1 and r > 0) else 0
        for m in range(floor_model, k):
            if not answered[m]:
                extendable[m] = True
                n_allowed += 1
    if n_allowed == 0:
        return -1, -1, False, answer_from
    bound_search = prune and order != 2
    sd = np.sqrt(var) if not certain else np.zeros(k)
    n_levels = depth - r + 1  # the node at level L has L added models

    # Quadrature grid (``IndependentGrid`` of the state), built when the first set of three or more
    # is scored; each member's CDF column on first use. weighted[L] = w * CDF of level L's max.
    grid_ready = False
    grid_x = np.empty(0)
    grid_w = np.empty(0)
    grid_lower = 0.0
    w_total = 0.0
    phi = np.empty((0, 0))
    phi_ready = np.zeros(k, dtype=np.bool_)
    weighted = np.empty((0, 0))
    weighted_ready = np.zeros(n_levels, dtype=np.bool_)

    gains = np.empty((k, k))  # rows of run models in full, of others from the model up
    gains_ready = np.zeros(k, dtype=np.bool_)

    # The node at each level: last added model, first added model, quality, cost, tau, caps.
    path = np.full(n_levels, -1, dtype=np.int64)
    node_first = np.full(n_levels, -1, dtype=np.int64)
    node_q = np.empty(n_levels)
    node_c = np.empty(n_levels)
    node_tau = np.empty(n_levels)
    caps = np.full((n_levels, k), math.inf)
    pair_min = np.full((n_levels, k), math.inf)  # min over the node's members s of G[s, z]
    # Children of each level's node: the kept ones in order, their scores, caps for grandchildren.
    kids = np.empty((n_levels, k), dtype=np.int64)
    n_kids = np.zeros(n_levels, dtype=np.int64)
    kid_pos = np.zeros(n_levels, dtype=np.int64)
    kid_q = np.empty((n_levels, k))
    kid_c = np.empty((n_levels, k))
    kid_tau = np.empty((n_levels, k))
    child_caps = np.full((n_levels, k), math.inf)
    net = np.empty(k)
    top = np.empty(k)  # the largest positive net caps seen, descending
    after = np.empty(k)

    # Candidates that may tie with the best: tau, cost, first model, size, added models.
    n_slots = 64
    c_tau = np.empty(n_slots)
    c_cost = np.empty(n_slots)
    c_first = np.empty(n_slots, dtype=np.int64)
    c_size = np.empty(n_slots, dtype=np.int64)
    c_keys = np.full((n_slots, n_levels), -1, dtype=np.int64)
    n_cands = 0
    best = -math.inf

    # The root: the models already run (for r = 0 the empty set, which is no candidate).
    cost_run = 0.0
    node_q[0] = -math.inf
    if r:
        cost_run = numpy_sum(cost[run[:r]])
        if certain or r == 1:
            for i in range(r):
                node_q[0] = max(node_q[0], mu[run[i]])
        elif r == 2:
            node_q[0] = clark(mu[run[0]], mu[run[1]], var[run[0]], var[run[1]], 0.0)
        else:
            grid_x, grid_w, grid_lower, w_total, phi, weighted = _build_grid(
                mu, sd, run[:r], n_levels, breaks_sd, ratio_edges, gl_nodes, gl_weights, gl_counts)
            grid_ready = True
            _fill_weighted(0, weighted, weighted_ready, phi, phi_ready, path, run[:r], grid_x, grid_w, mu, sd)
            node_q[0] = grid_lower + (w_total - np.sum(weighted[0]))
        if bound_search:
            for i in range(r):
                s = run[i]
                _pair_gain_row(gains[s], s, 0, mu, var, certain)
                for y in range(k):
                    pair_min[0, y] = min(pair_min[0, y], gains[s, y])
            caps[0] = pair_min[0]
    node_c[0] = cost_run
    node_tau[0] = node_q[0] - lam * cost_run
    if r:  # stopping is a candidate once a model has answered
        best = node_tau[0]
        c_tau[0] = best
        c_cost[0] = cost_run
        c_first[0] = -1
        c_size[0] = r
        n_cands = 1

    level = 0
    fresh = True
    while True:
        if fresh:
            # Score the children of this level's node.
            fresh = False
            size = r + level
            slots = depth - size
            last = path[level]
            n_kids[level] = 0
            kid_pos[level] = 0
            bounded = bound_search and size > 0
            if bounded:
                for y in range(k):
                    if extendable[y] and y > last:
                        net[y] = caps[level, y] - lam * cost[y]
                    else:
                        net[y] = -math.inf
                if slots > 1:
                    # after[y]: the slots - 1 largest positive net caps among models above y, the most
                    # that the models a completion through y may add can gain (the numpy search bounds
                    # by all models, looser: each subset is reached only by adding models in order).
                    n_top = slots - 1
                    top[:n_top] = 0.0
                    for y in range(k - 1, last, -1):
                        total = 0.0
                        for j in range(n_top):
                            total += top[j]
                        after[y] = total
                        v = max(net[y], 0.0)
                        if v > top[n_top - 1]:
                            j = n_top - 1
                            while j > 0 and top[j - 1] < v:
                                top[j] = top[j - 1]
                                j -= 1
                            top[j] = v
            for y in range(k):
                if not extendable[y] or y <= last:
                    continue
                if order == 2 and y != r + level:
                    continue
                if bounded:
                    # Lemma 1 on the gain cap, then the bound on every completion through y.
                    if not net[y] >= -tie_tol:
                        child_caps[level, y] = caps[level, y]
                        continue
                    rest = net[y] + after[y] if slots > 1 else net[y]
                    if not node_tau[level] + rest >= best - tie_tol:
                        child_caps[level, y] = caps[level, y]
                        continue
                if size == 0:
                    q = mu[y]
                elif certain:
                    q = max(node_q[level], mu[y])
                elif size == 1:
                    a = run[0] if level == 0 else path[1]
                    q = clark(mu[a], mu[y], var[a], var[y], 0.0)
                else:
                    if not grid_ready:
                        grid_x, grid_w, grid_lower, w_total, phi, weighted = _build_grid(
                            mu, sd, run[:r], n_levels, breaks_sd, ratio_edges, gl_nodes, gl_weights, gl_counts)
                        grid_ready = True
                    if not weighted_ready[level]:
                        _fill_weighted(level, weighted, weighted_ready, phi, phi_ready, path, run[:r], grid_x, grid_w,
                                       mu, sd)
                    if not phi_ready[y]:
                        _cdf_column(phi[y], grid_x, mu[y], sd[y])
                        phi_ready[y] = True
                    q = _set_value(grid_lower, w_total, weighted[level], phi[y])
                exact_gain = q - node_q[level]
                c = node_c[level] + cost[y]
                tau = q - lam * c
                child_caps[level, y] = exact_gain
                if bounded and not exact_gain - lam * cost[y] >= -tie_tol:
                    # Lemma 1: node + y loses to the node by more than the tolerance, as does every
                    # superset of it.
                    continue
                kids[level, n_kids[level]] = y
                n_kids[level] += 1
                kid_q[level, y] = q
                kid_c[level, y] = c
                kid_tau[level, y] = tau
                if tau > best:
                    best = tau
                if tau < best - tie_tol:
                    continue
                if n_cands == n_slots:
                    # Drop what no longer ties with the best; grow if still more than half full.
                    kept = 0
                    for i in range(n_cands):
                        if c_tau[i] >= best - tie_tol:
                            c_tau[kept] = c_tau[i]
                            c_cost[kept] = c_cost[i]
                            c_first[kept] = c_first[i]
                            c_size[kept] = c_size[i]
                            c_keys[kept] = c_keys[i]
                            kept += 1
                    n_cands = kept
                    if 2 * n_cands > n_slots:
                        n_slots *= 2
                        c_tau = _grown(c_tau, n_slots)
                        c_cost = _grown(c_cost, n_slots)
                        c_first = _grown(c_first, n_slots)
                        c_size = _grown(c_size, n_slots)
                        c_keys = _grown(c_keys, n_slots)
                c_tau[n_cands] = tau
                c_cost[n_cands] = c
                c_first[n_cands] = node_first[level] if node_first[level] >= 0 else y
                c_size[n_cands] = size + 1
                c_keys[n_cands, :] = -1
                for lv in range(1, level + 1):
                    c_keys[n_cands, lv - 1] = path[lv]
                c_keys[n_cands, level] = y
                n_cands += 1
            if greedy:
                break
        # Down into the next kept child that may have children of its own, else back up.
        if kid_pos[level] < n_kids[level] and r + level + 1 < depth:
            y = kids[level, kid_pos[level]]
            kid_pos[level] += 1
            child = level + 1
            path[child] = y
            node_first[child] = node_first[level] if node_first[level] >= 0 else y
            node_q[child] = kid_q[level, y]
            node_c[child] = kid_c[level, y]
            node_tau[child] = kid_tau[level, y]
            weighted_ready[child] = False
            if bound_search:
                # A child's cap on z: its parent's exact gain of z (or cap on it), and the pair
                # bounds G[s, z] of its members (submodularity). Only models above y can join its
                # descendants, so only their entries are needed.
                if not gains_ready[y]:
                    _pair_gain_row(gains[y], y, y + 1, mu, var, certain)
                    gains_ready[y] = True
                for z in range(y + 1, k):
                    pair_min[child, z] = min(pair_min[level, z], gains[y, z])
                    caps[child, z] = min(child_caps[level, z], pair_min[child, z])
            level = child
            fresh = True
        elif level == 0:
            break
        else:
            level -= 1

    # The pick among candidates within the tolerance of the best (``_pick``'s rule).
    cheap = -1
    dear = -1
    n_tied = 0
    for i in range(n_cands):
        if not c_tau[i] >= best - tie_tol:
            continue
        n_tied += 1
        ci = c_cost[i]
        if cheap < 0 or ci < c_cost[cheap] or (ci == c_cost[cheap] and _precedes(c_keys, c_size, i, cheap)):
            cheap = i
        if dear < 0 or ci > c_cost[dear] or (ci == c_cost[dear] and _precedes(c_keys, c_size, i, dear)):
            dear = i
    return c_first[cheap], c_first[dear], n_tied > 1, answer_from
