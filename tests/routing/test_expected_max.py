"""Expected maximum of Gaussian estimates (algorithm-spec §3.1, §4.2): accuracy against seeded Monte
Carlo, cross-checks between the exact methods, and the set-function properties pruning relies on."""

from __future__ import annotations

import math
import warnings
from itertools import combinations

import numpy as np
import pytest
from scipy import integrate
from scipy.special import ndtr

from routing import clark_expected_max, expected_max

MC_SAMPLES = 10**6
EXACT_TOL = 1e-6  # Clark and quadrature: exact up to ~1e-7
QMC_TOL = 3e-3  # 1024 scrambled Sobol points, sd <= 0.3: measured error ~1e-3 at worst


def _monte_carlo(mu: np.ndarray, cov: np.ndarray, seed: int) -> tuple[float, float]:
    """Mean of max over 10^6 seeded samples, and its standard error."""
    rng = np.random.default_rng(seed)
    vals, vecs = np.linalg.eigh(cov)
    root = vecs * np.sqrt(np.clip(vals, 0.0, None))
    samples = (mu + rng.standard_normal((MC_SAMPLES, mu.shape[0])) @ root.T).max(axis=1)
    return float(samples.mean()), float(samples.std() / math.sqrt(MC_SAMPLES))


def _random_cov(rng: np.random.Generator, sd: np.ndarray) -> np.ndarray:
    a = rng.normal(size=(sd.shape[0], sd.shape[0] + 1))
    corr = a @ a.T
    d = np.sqrt(np.diag(corr))
    return corr / np.outer(d, d) * np.outer(sd, sd)


def _integral_reference(mu: np.ndarray, sd: np.ndarray) -> float:
    """E[max] = t0 + int_t0^t1 (1 - prod Phi_i) dx by adaptive quadrature, split at every mean."""
    t0 = float(np.max(mu - 10 * sd))
    t1 = float(np.max(mu + 10 * sd))

    def integrand(x: float) -> float:
        z = (x - mu) / np.maximum(sd, 1e-300)
        return 1.0 - float(np.prod(ndtr(z)))

    points = sorted({float(p) for p in np.concatenate([mu, mu - sd, mu + sd]) if t0 < p < t1})
    edges = [t0, *points, t1]
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        value, _err, *_ = integrate.quad(integrand, lo, hi, epsabs=1e-12, epsrel=1e-12, limit=200, full_output=1)
        total += value
    return t0 + total


# ---------------------------------------------------------------------------------------------------
# degenerate sets


def test_empty_set_is_minus_infinity() -> None:
    assert expected_max(np.array([])) == -math.inf


def test_single_model_is_its_mean_whatever_the_variance() -> None:
    assert expected_max(np.array([0.3]), var=np.array([0.09])) == 0.3
    assert expected_max(np.array([0.3]), cov=np.array([[0.09]])) == 0.3


@pytest.mark.parametrize("n", [2, 3, 5])
def test_known_values_give_the_plain_max(n: int) -> None:
    rng = np.random.default_rng(n)
    mu = rng.uniform(0, 1, n)
    assert expected_max(mu) == mu.max()
    assert expected_max(mu, var=np.zeros(n)) == pytest.approx(mu.max(), abs=1e-9)
    assert expected_max(mu, cov=np.zeros((n, n))) == pytest.approx(mu.max(), abs=1e-9)


# ---------------------------------------------------------------------------------------------------
# accuracy against 10^6-sample Monte Carlo

TWO_MODELS = [
    # (mu1, mu2, sd1, sd2, rho)
    (0.5, 0.5, 0.3, 0.3, 0.0),
    (0.2, 0.7, 0.3, 0.1, 0.0),
    (0.6, 0.4, 0.2, 0.2, 0.8),
    (0.6, 0.4, 0.2, 0.25, -0.6),
    (0.5, 0.52, 0.1, 1e-3, 0.0),
    (0.5, 0.45, 0.3, 0.0, 0.0),
    (0.3, 0.3, 1e-3, 0.0, 0.0),
    (0.3, 0.31, 0.0, 0.0, 0.0),
]


@pytest.mark.parametrize(("mu1", "mu2", "sd1", "sd2", "rho"), TWO_MODELS)
def test_two_models_clark_matches_monte_carlo(mu1: float, mu2: float, sd1: float, sd2: float, rho: float) -> None:
    mu = np.array([mu1, mu2])
    cov = np.array([[sd1**2, rho * sd1 * sd2], [rho * sd1 * sd2, sd2**2]])
    mc, se = _monte_carlo(mu, cov, seed=1)
    assert abs(expected_max(mu, cov=cov) - mc) <= 5 * se + EXACT_TOL
    if rho == 0.0:
        assert abs(expected_max(mu, var=np.diag(cov)) - mc) <= 5 * se + EXACT_TOL
    assert float(clark_expected_max(mu1, mu2, sd1**2, sd2**2, cov[0, 1])) == pytest.approx(
        expected_max(mu, cov=cov), abs=1e-12
    )


INDEPENDENT_SETS = [
    # mixes wide (0.1-0.3), nearly known (1e-3) and known (0) members
    ([0.5, 0.5, 0.5], [0.3, 0.3, 0.3]),
    ([0.2, 0.6, 0.55, 0.4], [0.3, 1e-3, 0.1, 0.2]),
    ([0.7, 0.65, 0.3, 0.9, 0.1], [0.0, 0.2, 0.3, 1e-3, 0.1]),
    ([0.45, 0.5, 0.48, 0.52, 0.4, 0.6], [0.1, 0.0, 1e-3, 0.3, 0.2, 0.0]),
    ([0.8, 0.1, 0.2], [0.0, 0.3, 0.3]),
]


@pytest.mark.parametrize(("mu", "sd"), INDEPENDENT_SETS)
def test_independent_quadrature_matches_monte_carlo(mu: list[float], sd: list[float]) -> None:
    mu_a, sd_a = np.array(mu), np.array(sd)
    mc, se = _monte_carlo(mu_a, np.diag(sd_a**2), seed=2)
    assert abs(expected_max(mu_a, var=sd_a**2) - mc) <= 5 * se + EXACT_TOL
    # A diagonal covariance takes the same exact path.
    assert expected_max(mu_a, cov=np.diag(sd_a**2)) == pytest.approx(expected_max(mu_a, var=sd_a**2), abs=1e-12)


@pytest.mark.parametrize("n", [3, 4, 5])
def test_correlated_qmc_matches_monte_carlo(n: int) -> None:
    rng = np.random.default_rng(100 + n)
    for _ in range(2):
        mu = rng.uniform(0.3, 0.7, n)
        sd = rng.choice([0.0, 1e-3, 0.1, 0.2, 0.3], size=n)
        sd[:2] = [0.3, 0.1]  # at least two wide members, so the set is really correlated
        cov = _random_cov(rng, sd)
        mc, se = _monte_carlo(mu, cov, seed=3)
        assert abs(expected_max(mu, cov=cov) - mc) <= 5 * se + QMC_TOL


def test_quadrature_matches_adaptive_integration() -> None:
    """Exact methods agree to ~1e-7 with an independent adaptive integral, on random mixed sets."""
    rng = np.random.default_rng(4)
    for _ in range(25):
        n = int(rng.integers(3, 7))
        mu = rng.uniform(0, 1, n)
        sd = rng.choice([0.0, 1e-3, 0.05, 0.1, 0.2, 0.3], size=n)
        assert expected_max(mu, var=sd**2) == pytest.approx(_integral_reference(mu, sd), abs=EXACT_TOL)


def test_clark_agrees_with_quadrature_for_independent_pairs() -> None:
    """Two exact methods on the same pair: Clark's closed form vs the one-dimensional integral."""
    rng = np.random.default_rng(5)
    for _ in range(50):
        mu = rng.uniform(0, 1, 2)
        sd = rng.choice([0.0, 1e-3, 0.1, 0.3], size=2)
        clark = float(clark_expected_max(mu[0], mu[1], sd[0] ** 2, sd[1] ** 2))
        assert clark == pytest.approx(_integral_reference(mu, sd), abs=EXACT_TOL)
        # A third member that never wins leaves the pair's value: compares Clark with the quadrature.
        mu3, sd3 = np.append(mu, -5.0), np.append(sd, 0.0)
        assert expected_max(mu3, var=sd3**2) == pytest.approx(clark, abs=EXACT_TOL)


def test_clark_is_elementwise() -> None:
    mu1 = np.array([0.1, 0.5, 0.9])
    mu2 = np.array([0.4, 0.5, 0.2])
    var = np.array([0.01, 0.09, 0.0])
    batch = clark_expected_max(mu1, mu2, var, var[::-1])
    single = [float(clark_expected_max(a, b, c, d)) for a, b, c, d in zip(mu1, mu2, var, var[::-1], strict=True)]
    np.testing.assert_allclose(batch, single, rtol=0, atol=1e-15)


# ---------------------------------------------------------------------------------------------------
# scaling: sigma, not sigma squared (spec §8 item 3)


def test_two_wide_models_expected_max_is_0669() -> None:
    """Spec §8 item 3: two N(0.5, 0.3^2) give 0.5 + 0.3 / sqrt(pi) = 0.669, not the reference's 0.552."""
    exact = 0.5 + 0.3 / math.sqrt(math.pi)
    mu = np.array([0.5, 0.5])
    assert expected_max(mu, var=np.array([0.09, 0.09])) == pytest.approx(exact, abs=1e-9)
    assert expected_max(mu, cov=np.diag([0.09, 0.09])) == pytest.approx(exact, abs=1e-9)
    assert abs(expected_max(mu, var=np.array([0.09, 0.09])) - 0.552) > 0.1


@pytest.mark.parametrize("n", [2, 3, 5])
def test_expected_max_scales_by_the_standard_deviation(n: int) -> None:
    """E[max(c + s Z)] = c + s E[max Z]: linear in s. Scaling by the variance would make it s^2."""
    rng = np.random.default_rng(n)
    base_sd = rng.uniform(0.5, 1.0, n)
    c = 0.4
    gains = [(expected_max(np.full(n, c), var=(s * base_sd) ** 2) - c) / s for s in (0.05, 0.1, 0.3)]
    assert gains[0] > 0.1
    np.testing.assert_allclose(gains, gains[0], rtol=1e-5)
    cov = _random_cov(rng, base_sd)
    gains_cov = [(expected_max(np.full(n, c), cov=s * s * cov) - c) / s for s in (0.05, 0.1, 0.3)]
    np.testing.assert_allclose(gains_cov, gains_cov[0], rtol=1e-5)


def test_expected_max_is_translation_equivariant() -> None:
    rng = np.random.default_rng(6)
    mu = rng.uniform(0, 1, 4)
    var = np.array([0.09, 1e-6, 0.0, 0.01])
    assert expected_max(mu + 0.25, var=var) == pytest.approx(expected_max(mu, var=var) + 0.25, abs=1e-7)


def test_independent_value_does_not_depend_on_member_order() -> None:
    rng = np.random.default_rng(7)
    for _ in range(10):
        mu = rng.uniform(0, 1, 5)
        var = rng.choice([0.0, 1e-6, 0.01, 0.09], size=5)
        perm = rng.permutation(5)
        assert expected_max(mu[perm], var=var[perm]) == pytest.approx(expected_max(mu, var=var), abs=1e-9)


# ---------------------------------------------------------------------------------------------------
# set-function properties (what Lemma-1 pruning relies on, spec §4.4)


def _set_value(mu: np.ndarray, var: np.ndarray | None, cov: np.ndarray | None, members: tuple[int, ...]) -> float:
    idx = np.array(members, dtype=np.intp)
    if cov is not None:
        return expected_max(mu[idx], cov=cov[np.ix_(idx, idx)])
    return expected_max(mu[idx], var=None if var is None else var[idx])


def _random_instance(rng: np.random.Generator, n: int, correlated: bool) -> tuple[np.ndarray, ...]:
    mu = rng.uniform(0, 1, n)
    sd = rng.choice([0.0, 1e-3, 0.05, 0.1, 0.2, 0.3], size=n)
    if correlated:
        return mu, None, _random_cov(rng, sd)
    return mu, sd**2, None


@pytest.mark.parametrize(("correlated", "tol"), [(False, 1e-6), (True, 2 * QMC_TOL)])
def test_expected_max_is_monotone_in_the_set(correlated: bool, tol: float) -> None:
    rng = np.random.default_rng(8)
    for _ in range(40):
        n = int(rng.integers(3, 7))
        mu, var, cov = _random_instance(rng, n, correlated)
        size = int(rng.integers(1, n))
        members = tuple(sorted(rng.choice(n, size, replace=False).tolist()))
        x = int(rng.choice([m for m in range(n) if m not in members]))
        bigger = tuple(sorted((*members, x)))
        assert _set_value(mu, var, cov, bigger) >= _set_value(mu, var, cov, members) - tol


@pytest.mark.parametrize(("correlated", "tol"), [(False, 1e-6), (True, 2 * QMC_TOL)])
def test_expected_max_is_submodular(correlated: bool, tol: float) -> None:
    """gain(A, x) >= gain(B, x) for A ⊆ B, x not in B: the soundness condition of Lemma-1 pruning."""
    rng = np.random.default_rng(9)
    checked = 0
    for _ in range(40):
        n = int(rng.integers(3, 7))
        mu, var, cov = _random_instance(rng, n, correlated)
        x = int(rng.integers(n))
        others = [m for m in range(n) if m != x]
        b = tuple(sorted(rng.choice(others, int(rng.integers(1, n)), replace=False).tolist()))
        for size in range(1, len(b)):
            for a in combinations(b, size):
                gain_a = _set_value(mu, var, cov, tuple(sorted((*a, x)))) - _set_value(mu, var, cov, a)
                gain_b = _set_value(mu, var, cov, tuple(sorted((*b, x)))) - _set_value(mu, var, cov, b)
                assert gain_a >= gain_b - tol, (mu, var, cov, a, b, x)
                checked += 1
    assert checked > 50


# ---------------------------------------------------------------------------------------------------
# determinism and input validation


def test_qmc_is_seeded() -> None:
    rng = np.random.default_rng(10)
    mu = rng.uniform(0, 1, 4)
    cov = _random_cov(rng, np.full(4, 0.2))
    first = expected_max(mu, cov=cov, seed=3)
    assert expected_max(mu, cov=cov, seed=3) == first
    other = expected_max(mu, cov=cov, seed=4)
    assert other != first
    assert other == pytest.approx(first, abs=QMC_TOL)


def test_qmc_point_count_is_rounded_to_a_power_of_two_without_warning() -> None:
    """Spec §8 item 12: the reference's 100 Sobol points make scipy warn; 100 must become 128."""
    from routing._expected_max import _qmc_normals

    rng = np.random.default_rng(11)
    mu = rng.uniform(0, 1, 3)
    cov = _random_cov(rng, np.full(3, 0.2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value = expected_max(mu, cov=cov, n_qmc_points=100, seed=12345)
    assert np.isfinite(value)
    assert _qmc_normals(3, 100, 12345).shape == (128, 3)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mu": np.array([0.1, np.nan])}, "non-finite"),
        ({"mu": np.array([0.1, np.inf]), "var": np.array([0.1, 0.1])}, "non-finite"),
        ({"mu": np.array([[0.1, 0.2]])}, "1-D"),
        ({"mu": np.array([0.1, 0.2]), "var": np.array([0.1, -0.1])}, "var"),
        ({"mu": np.array([0.1, 0.2, 0.3]), "var": np.array([0.1, 0.1])}, "var"),
        ({"mu": np.array([0.1, 0.2]), "var": np.array([0.1, np.nan])}, "var"),
        ({"mu": np.array([0.1, 0.2]), "cov": np.eye(3)}, "cov"),
        ({"mu": np.array([0.1, 0.2]), "cov": -np.eye(2)}, "negative variance"),
        ({"mu": np.array([0.1, 0.2]), "var": np.ones(2), "cov": np.eye(2)}, "not both"),
    ],
)
def test_expected_max_rejects_bad_input(kwargs: dict[str, np.ndarray], match: str) -> None:
    mu = kwargs.pop("mu")
    with pytest.raises(ValueError, match=match):
        expected_max(mu, **kwargs)
