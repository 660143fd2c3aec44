"""The bounded live update every estimator's ``observe`` uses (``estimators.bounded_update``)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from estimators.bounded_update import (
    DEFAULT_MAX_LOG_STEP,
    bounded_log_step,
    bounded_probability_update,
    bounded_update,
)

WEIGHT = 0.2


def _extreme_values(n: int, seed: int) -> list[float]:
    """Anything an observation can read: 0, negative, infinite, NaN, and 30 decades of magnitudes."""
    rng = np.random.default_rng(seed)
    special = [0.0, -1.0, math.inf, -math.inf, math.nan, 1e-300, 1e300]
    return [special[i] if i < len(special) else float(10 ** rng.uniform(-15, 15)) for i in rng.permutation(n)]


def _log_odds(p: float) -> float:
    return math.log(p / (1.0 - p))


def test_the_default_keeps_a_hundred_observations_within_ten_percent() -> None:
    assert math.exp(100 * DEFAULT_MAX_LOG_STEP) < 1.10 and math.exp(-100 * DEFAULT_MAX_LOG_STEP) > 0.90


@pytest.mark.parametrize("seed", range(3))
def test_n_observations_of_any_value_move_an_estimate_by_at_most_exp_n_steps(seed: int) -> None:
    estimate = start = 0.37
    for n, observed in enumerate(_extreme_values(200, seed), start=1):
        estimate = bounded_update(estimate, observed, weight=WEIGHT, max_log_step=DEFAULT_MAX_LOG_STEP)
        assert abs(math.log(estimate / start)) <= n * DEFAULT_MAX_LOG_STEP * (1 + 1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_n_observations_of_any_value_move_a_probability_by_at_most_n_steps_in_log_odds(seed: int) -> None:
    p = start = 0.3
    for n, observed in enumerate(_extreme_values(200, seed), start=1):
        p = bounded_probability_update(p, observed, weight=WEIGHT, max_log_step=DEFAULT_MAX_LOG_STEP)
        assert 0.0 < p < 1.0
        assert abs(_log_odds(p) - _log_odds(start)) <= n * DEFAULT_MAX_LOG_STEP * (1 + 1e-9)


def test_a_nan_observation_is_none_and_zero_weight_freezes() -> None:
    assert bounded_update(2.0, math.nan, weight=WEIGHT, max_log_step=0.1) == 2.0
    assert bounded_probability_update(0.4, math.nan, weight=WEIGHT, max_log_step=0.1) == 0.4
    assert bounded_update(2.0, math.inf, weight=0.0, max_log_step=0.1) == 2.0


def test_extreme_observations_move_by_exactly_the_cap() -> None:
    s = DEFAULT_MAX_LOG_STEP
    assert bounded_log_step(1.0, math.inf, weight=WEIGHT, max_log_step=s) == s
    assert bounded_log_step(1.0, 1e12, weight=WEIGHT, max_log_step=s) == s
    assert bounded_log_step(1.0, 0.0, weight=WEIGHT, max_log_step=s) == -s
    assert bounded_log_step(1.0, -5.0, weight=WEIGHT, max_log_step=s) == -s  # counted as 0


def test_near_the_estimate_it_is_an_ewma_of_the_relative_error() -> None:
    s = DEFAULT_MAX_LOG_STEP
    observed = 1.0 + 0.5 * s / WEIGHT  # within the region where the cap does not bind
    assert bounded_update(1.0, observed, weight=WEIGHT, max_log_step=s) == pytest.approx(
        math.exp(WEIGHT * (observed - 1.0)))


@pytest.mark.parametrize("factor", [2.0, 0.5])
def test_a_genuine_change_is_learnt_in_ln_factor_over_the_cap_observations(factor: float) -> None:
    """Derived bound: every observation closes the log gap by the cap until the gap is within the region
    where the step is an EWMA's (``max_log_step / weight`` in relative error), and never overshoots;
    so after ``ceil(ln(factor) / max_log_step)`` observations the estimate is inside that region."""
    s = DEFAULT_MAX_LOG_STEP
    k = math.ceil(abs(math.log(factor)) / s)
    estimate = 1.0
    for _ in range(k):
        estimate = bounded_update(estimate, factor, weight=WEIGHT, max_log_step=s)
    region = math.log(1.0 + s / WEIGHT) if factor > 1 else -math.log(1.0 - s / WEIGHT)
    gap = math.log(factor / estimate) * (1 if factor > 1 else -1)
    assert 0.0 <= gap <= region
    # And not one observation sooner: the cap is what a client's requests meet, and honest ones too.
    early = 1.0
    for _ in range(k - math.ceil(region / s) - 1):
        early = bounded_update(early, factor, weight=WEIGHT, max_log_step=s)
    assert abs(math.log(factor / early)) > region


def test_under_noise_it_settles_between_the_median_and_the_mean() -> None:
    """Far from the target steps are signs (a median); near it, relative errors (a mean). Log-normal noise
    of spread sigma puts the median below the mean by the factor exp(-sigma**2 / 2)."""
    rng = np.random.default_rng(0)
    sigma, mean = 0.3, 2.0
    median = mean * math.exp(-(sigma**2) / 2)
    estimate, tail = mean, []
    for i in range(20_000):
        estimate = bounded_update(estimate, median * rng.lognormal(0.0, sigma), weight=WEIGHT,
                                  max_log_step=DEFAULT_MAX_LOG_STEP)
        if i >= 10_000:
            tail.append(estimate)
    settled = float(np.mean(tail))
    assert median * 0.99 <= settled <= mean * 1.01
