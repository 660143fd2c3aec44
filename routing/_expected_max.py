"""Expected maximum of Gaussian quality estimates: the quality of a supermodel (algorithm-spec §3.1, §4.2).

A supermodel S runs every model in S and returns the answer with the highest post-hoc estimate, so
its quality is E[max_{i in S} Q_i] with Q ~ N(mu_S, Sigma_S). Methods, from cheapest to dearest:

- no uncertainty: max(mu);
- one model: mu;
- two models, any correlation: Clark's closed form (Clark 1961);
- independent models: E[max] = t0 + integral_{t0}^{t1} (1 - prod_i Phi_i(x)) dx by composite
  Gauss-Legendre on panels whose breakpoints sit at mu_i + k sigma_i for every member, so sharp
  (nearly known) and wide estimates are both resolved (about 1e-7 absolute error at most);
- correlated, three or more models: seeded scrambled-Sobol quasi-Monte Carlo.

Every path scales by the standard deviation. The reference code scales independent normals by the
variance (algorithm-spec §8 item 3); ``test_expected_max.py`` pins the fix.
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np
from numpy.typing import NDArray
from scipy.special import ndtr, ndtri
from scipy.stats import qmc

__all__ = [
    "IndependentGrid",
    "TAIL_SD",
    "clark_expected_max",
    "expected_max",
    "expected_max_independent",
    "expected_max_qmc",
]

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.intp]

# Beyond 8.5 standard deviations Phi differs from 0 or 1 by < 1e-17, so the integral may be cut there.
TAIL_SD = 8.5
# Panel breakpoints in units of each member's sd: dense where Phi bends, sparse in the tails.
# 7 breakpoints per member, up to 6 Gauss-Legendre nodes per panel: max error 7e-8 against a
# 91-breakpoint x 8-node reference on random sets with wide, sharp and exactly known members,
# identical members (the worst case) included.
_BREAKS_SD = np.array([-TAIL_SD, -3.5, -1.5, 0.0, 1.5, 3.5, TAIL_SD])
_GL_NODES = 6
# Nodes per panel by width / (smallest sd bending there): <= 0.15 -> 2, <= 0.5 -> 3, <= 1 -> 4, else 6.
_RATIO_EDGES = np.array([0.15, 0.5, 1.0])
_NODES_BY_RATIO = (2, 3, 4, _GL_NODES)
DEFAULT_QMC_POINTS = 1024
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


@cache
def _gauss_legendre(n: int) -> tuple[FloatArray, FloatArray]:
    nodes, weights = np.polynomial.legendre.leggauss(n)
    return nodes, weights


def clark_expected_max(
    mu1: FloatArray | float,
    mu2: FloatArray | float,
    var1: FloatArray | float,
    var2: FloatArray | float,
    cov12: FloatArray | float = 0.0,
) -> FloatArray:
    """Exact E[max(X1, X2)] for a bivariate normal (Clark 1961), elementwise over arrays.

    With theta = sqrt(var1 + var2 - 2 cov12) and alpha = (mu1 - mu2) / theta,
    E[max] = mu2 + (mu1 - mu2) Phi(alpha) + theta phi(alpha). theta is floored at 1e-12, so two
    known values (theta = 0) give max(mu1, mu2) to within 4e-13 without a branch, which matters
    because this runs inside every decision.
    """
    diff = np.subtract(mu1, mu2, dtype=np.float64)
    theta = np.sqrt(np.maximum(np.add(var1, var2) - np.multiply(2.0, cov12), 1e-24))
    alpha = diff / theta
    result: FloatArray = mu2 + diff * ndtr(alpha) + theta * np.exp(-0.5 * alpha * alpha) * _INV_SQRT_2PI
    return result


def _phi_cdf(x: FloatArray, mu: FloatArray, sd: FloatArray) -> FloatArray:
    """Phi((x - mu) / sd), with sd = 0 read as a point mass (a step at mu).

    A zero sd becomes 1e-300, so z is +-inf and ndtr gives exactly 0 or 1: quadrature nodes are
    interior to panels whose ends include every mu, so x never equals mu there.
    """
    out: FloatArray = ndtr((x - mu) / np.maximum(sd, 1e-300))
    return out


def expected_max_independent(mu: FloatArray, sd: FloatArray) -> FloatArray:
    """E[max] of independent normals for a batch of sets.

    Parameters
    ----------
    mu, sd : ndarray of shape (n_sets, set_size)
        Means and standard deviations of each set's members. Pad smaller sets with
        ``mu = -inf, sd = 0`` (a member that never wins).

    Returns
    -------
    ndarray of shape (n_sets,)
    """
    mu = np.atleast_2d(np.asarray(mu, dtype=np.float64))
    sd = np.atleast_2d(np.asarray(sd, dtype=np.float64))
    # F(x) < 1e-17 below t0 (for the member that sets it) and 1 - F(x) < 1e-16 above t1.
    t0 = np.max(mu - TAIL_SD * sd, axis=1)
    t1 = np.max(mu + TAIL_SD * sd, axis=1)
    breaks = (mu[:, :, None] + sd[:, :, None] * _BREAKS_SD).reshape(mu.shape[0], -1)
    breaks = np.concatenate([breaks, t0[:, None], t1[:, None]], axis=1)
    breaks = np.sort(np.clip(breaks, t0[:, None], np.maximum(t0, t1)[:, None]), axis=1)
    nodes_ref, weights_ref = _gauss_legendre(_GL_NODES)
    lo, hi = breaks[:, :-1], breaks[:, 1:]
    half = 0.5 * (hi - lo)
    x = (0.5 * (lo + hi))[:, :, None] + half[:, :, None] * nodes_ref
    w = half[:, :, None] * weights_ref
    x = x.reshape(mu.shape[0], -1)
    w = w.reshape(mu.shape[0], -1)
    cdf = np.prod(_phi_cdf(x[:, None, :], mu[:, :, None], sd[:, :, None]), axis=1)
    result: FloatArray = t0 + np.sum(w * (1.0 - cdf), axis=1)
    return result


class IndependentGrid:
    """One quadrature grid shared by every subset of a fixed set of independent normals.

    E[max_S] = L + integral_L^U (1 - prod_{i in S} Phi_i(x)) dx holds for every subset S when [L, U]
    covers all members' +-8.5 sd ranges: below a subset's own range its integrand is 1 (integrated
    exactly), above it 0. The panels' breakpoints are the union of all members' breakpoints, so each
    subset's bends are resolved. Phi_i is evaluated once per member; a batch of subsets then costs
    one gather-sum and one exp, whatever its size. This is what keeps a decision in microseconds.

    Parameters
    ----------
    mu, sd : ndarray of shape (n_models,)
    floor : float, optional
        Start the integral here instead of at the lowest member's range. Valid for the subsets that
        contain a member with mu - 8.5 sd >= floor (their integrand is 1 below it): a query state
        whose every candidate contains the answered models starts at theirs, and needs fewer nodes.
    """

    def __init__(self, mu: FloatArray, sd: FloatArray, floor: float = -math.inf) -> None:
        lower = max(float(np.min(mu - TAIL_SD * sd)), floor)
        upper = max(float(np.max(mu + TAIL_SD * sd)), lower)
        breaks = np.sort(np.clip((mu[:, None] + sd[:, None] * _BREAKS_SD).ravel(), lower, upper))
        lo, hi = breaks[:-1], breaks[1:]
        width = hi - lo
        # Nodes per panel from its width relative to the sharpest member bending there: one member's
        # own panels (width up to 5 sd) need 6 Gauss-Legendre nodes; where many members' breakpoints
        # interleave, panels are narrow and 2-4 nodes are as exact. Zero-width panels get none.
        mid = 0.5 * (lo + hi)
        # A member bends a panel if the panel lies within its +-8.5 sd; point masses never do.
        reach = np.where(sd > 0.0, TAIL_SD * sd, -1.0)
        local_sd = np.min(np.where(np.abs(mid[:, None] - mu) <= reach, sd, np.inf), axis=1)
        n_nodes = np.searchsorted(_RATIO_EDGES, width / local_sd)
        n_nodes[width <= 0.0] = -1
        xs, ws = [], []
        for level, n in enumerate(_NODES_BY_RATIO):
            panels = n_nodes == level
            if not panels.any():
                continue
            nodes_ref, weights_ref = _gauss_legendre(n)
            half = 0.5 * width[panels]
            xs.append((mid[panels][:, None] + half[:, None] * nodes_ref).ravel())
            ws.append((half[:, None] * weights_ref).ravel())
        x = np.concatenate(xs) if xs else np.array([lower])
        self.weights: FloatArray = np.concatenate(ws) if ws else np.zeros(1)
        self.lower = lower
        # log Phi, floored so that a point mass's log 0 stays finite: exp of the floor is exactly 0.
        cdf = _phi_cdf(x[None, :], mu[:, None], sd[:, None])
        self.log_cdf: FloatArray = np.log(np.maximum(cdf, 1e-300))

    def log_cdf_of_max(self, members: NDArray[np.intp]) -> FloatArray:
        """log of the CDF of each set's max on the grid: shape (n_sets, n_nodes)."""
        out: FloatArray = self.log_cdf[members].sum(axis=1)
        return out

    def expected_max_from_log_cdf(self, log_f: FloatArray) -> FloatArray:
        """E[max] from log CDFs of shape (n_sets, n_nodes); returns shape (n_sets,)."""
        result: FloatArray = self.lower + (1.0 - np.exp(log_f)) @ self.weights
        return result

    def expected_max(self, members: NDArray[np.intp]) -> FloatArray:
        """E[max] of each row of ``members`` (shape (n_sets, set_size)); returns shape (n_sets,)."""
        return self.expected_max_from_log_cdf(self.log_cdf_of_max(members))


@cache
def _qmc_normals(dim: int, n_points: int, seed: int) -> FloatArray:
    """Scrambled Sobol points mapped to standard normals, cached per (dim, n, seed): deterministic."""
    m = max(int(math.ceil(math.log2(n_points))), 1)
    points = qmc.Sobol(d=dim, scramble=True, seed=seed).random_base2(m)
    eps = np.finfo(np.float64).eps
    normals: FloatArray = ndtri(np.clip(points, eps, 1.0 - eps))
    normals.setflags(write=False)
    return normals


def _cov_factor(cov: FloatArray) -> FloatArray:
    """A square root of a covariance matrix, tolerant of semi-definite input (eigenvalues clipped at 0)."""
    try:
        return np.asarray(np.linalg.cholesky(cov + 1e-12 * np.eye(cov.shape[0])), dtype=np.float64)
    except np.linalg.LinAlgError:
        vals, vecs = np.linalg.eigh(cov)
        root: FloatArray = vecs * np.sqrt(np.clip(vals, 0.0, None))
        return root


def expected_max_qmc(
    mu: FloatArray, cov: FloatArray, *, n_points: int = DEFAULT_QMC_POINTS, seed: int = 0
) -> float:
    """E[max] of a correlated normal vector by seeded randomised quasi-Monte Carlo.

    Parameters
    ----------
    mu : ndarray of shape (d,)
    cov : ndarray of shape (d, d)
    n_points : int
        Sobol points, rounded up to a power of two (Sobol's balance properties need it).
    seed : int
        Scrambling seed: the same seed gives the same value, and every set of the same size
        shares its points, which keeps the estimate submodular in practice.
    """
    mu = np.asarray(mu, dtype=np.float64)
    z = _qmc_normals(mu.shape[0], n_points, seed)
    samples = mu + z @ _cov_factor(np.asarray(cov, dtype=np.float64)).T
    return float(np.mean(np.max(samples, axis=1)))


def expected_max(
    mu: FloatArray,
    *,
    var: FloatArray | None = None,
    cov: FloatArray | None = None,
    n_qmc_points: int = DEFAULT_QMC_POINTS,
    seed: int = 0,
) -> float:
    """Quality of a supermodel: E[max_i Q_i] with Q ~ N(mu, diag(var)) or N(mu, cov).

    Parameters
    ----------
    mu : ndarray of shape (d,)
        Quality estimates of the members.
    var : ndarray of shape (d,), optional
        Independent variances. Exclusive with ``cov``.
    cov : ndarray of shape (d, d), optional
        Covariance. Neither given: no uncertainty, the result is ``max(mu)``.
    n_qmc_points, seed : int
        Only used for correlated sets of three or more members.

    Returns
    -------
    float
        ``-inf`` for an empty set.
    """
    mu = np.asarray(mu, dtype=np.float64)
    if mu.ndim != 1:
        raise ValueError(f"mu must be 1-D, got shape {mu.shape}")
    if var is not None and cov is not None:
        raise ValueError("give var (independent) or cov (correlated), not both")
    if not np.all(np.isfinite(mu)):
        raise ValueError("mu contains non-finite values")
    d = mu.shape[0]
    if d == 0:
        return -math.inf
    if d == 1 or (var is None and cov is None):
        return float(np.max(mu))
    if cov is not None:
        cov = np.asarray(cov, dtype=np.float64)
        if cov.shape != (d, d) or not np.all(np.isfinite(cov)):
            raise ValueError(f"cov must be a finite ({d}, {d}) matrix, got shape {cov.shape}")
        if np.any(np.diag(cov) < 0):
            raise ValueError("cov has a negative variance on its diagonal")
        if d == 2:
            return float(clark_expected_max(mu[0], mu[1], cov[0, 0], cov[1, 1], cov[0, 1]))
        if np.count_nonzero(cov - np.diag(np.diag(cov))) == 0:
            var = np.diag(cov).copy()
        else:
            return expected_max_qmc(mu, cov, n_points=n_qmc_points, seed=seed)
    assert var is not None
    var = np.asarray(var, dtype=np.float64)
    if var.shape != (d,) or not np.all(np.isfinite(var)) or np.any(var < 0):
        raise ValueError(f"var must be {d} finite non-negative values, got {var!r}")
    if d == 2:
        return float(clark_expected_max(mu[0], mu[1], var[0], var[1]))
    return float(expected_max_independent(mu[None, :], np.sqrt(var)[None, :])[0])
