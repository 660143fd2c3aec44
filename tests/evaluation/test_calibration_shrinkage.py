"""Empirical-Bayes shrinkage of the per-model calibration: pooled with few rows, per model with many."""

from __future__ import annotations

import numpy as np
import pytest

from evaluation.protocol import ProtocolSettings
from evaluation.simulated import PerModelLinearCalibrator, shrink_toward_pooled

SLOPES = np.array([0.2, 0.5, 0.9])


def _data(n: int, seed: int = 0, noise: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Three columns with different true slopes (and intercepts) and Gaussian noise."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 1.0, (n, 3))
    y = SLOPES * x + np.array([0.1, 0.3, 0.6]) + rng.normal(0.0, noise, (n, 3))
    return x, y


def test_many_rows_give_each_columns_own_slope() -> None:
    x, y = _data(200_000)
    own = PerModelLinearCalibrator().fit(x, y)
    shrunk = PerModelLinearCalibrator(shrinkage="empirical_bayes").fit(x, y)
    assert np.all(shrunk.shrink_weight_ > 0.99)
    np.testing.assert_allclose(shrunk.coef_, own.coef_, atol=2e-3)
    np.testing.assert_allclose(shrunk.coef_, SLOPES, atol=0.02)


def test_few_noisy_rows_give_the_pooled_slope() -> None:
    """With a handful of rows the slopes' own noise swamps their spread: every column takes the pooled one."""
    x, y = _data(6, seed=1, noise=3.0)
    shrunk = PerModelLinearCalibrator(shrinkage="empirical_bayes").fit(x, y)
    xc, yc = x - x.mean(axis=0), y - y.mean(axis=0)
    pooled = float((xc * yc).sum() / (xc * xc).sum())
    assert np.all(shrunk.shrink_weight_ < 0.05)
    np.testing.assert_allclose(shrunk.coef_, pooled, atol=0.05 * abs(pooled) + 1e-9)


def test_the_weight_on_each_columns_own_slope_grows_with_rows() -> None:
    weights = [PerModelLinearCalibrator(shrinkage="empirical_bayes").fit(*_data(n, seed=2)).shrink_weight_.mean()
               for n in (20, 200, 2000, 20_000)]
    assert weights[0] < weights[-1]
    assert weights[-1] > 0.95


def test_shrinkage_keeps_each_columns_mean() -> None:
    """Only slopes are pooled: each model's calibrated mean on the fit rows stays its own mean."""
    x, y = _data(30, seed=3)
    shrunk = PerModelLinearCalibrator(shrinkage="empirical_bayes").fit(x, y)
    np.testing.assert_allclose(shrunk.predict(x).mean(axis=0), y.mean(axis=0), atol=1e-12)


def test_pooled_gives_every_column_one_slope_and_keeps_its_mean() -> None:
    """Even with many rows, where the columns' own slopes are clearly apart, "pooled" keeps one slope."""
    x, y = _data(20_000, seed=4)
    pooled = PerModelLinearCalibrator(shrinkage="pooled").fit(x, y)
    xc, yc = x - x.mean(axis=0), y - y.mean(axis=0)
    np.testing.assert_allclose(pooled.coef_, float((xc * yc).sum() / (xc * xc).sum()), rtol=1e-12)
    np.testing.assert_allclose(pooled.shrink_weight_, 0.0)
    np.testing.assert_allclose(pooled.predict(x).mean(axis=0), y.mean(axis=0), atol=1e-12)
    assert ProtocolSettings(calibration_shrinkage="pooled").calibration_shrinkage == "pooled"


def test_pooled_leaves_a_constant_column_at_its_mean() -> None:
    x, y = _data(50, seed=5)
    x[:, 1] = 2.0
    pooled = PerModelLinearCalibrator(shrinkage="pooled").fit(x, y)
    assert pooled.coef_[1] == 0.0 and pooled.coef_[0] == pooled.coef_[2] != 0.0
    np.testing.assert_allclose(pooled.predict(x)[:, 1], y[:, 1].mean())


def test_no_residual_degrees_of_freedom_takes_the_pooled_slope() -> None:
    coef = np.array([1.0, 3.0])
    slopes, weights = shrink_toward_pooled(coef, np.array([1.0, 1.0]), np.array([1.0, 3.0]), np.zeros(2), 0,
                                           np.array([True, True]))
    np.testing.assert_allclose(slopes, [2.0, 2.0])
    np.testing.assert_allclose(weights, [0.0, 0.0])


def test_an_unknown_shrinkage_is_refused() -> None:
    x, y = _data(10)
    with pytest.raises(ValueError, match="shrinkage"):
        PerModelLinearCalibrator(shrinkage="ridge").fit(x, y)
    with pytest.raises(ValueError, match="calibration_shrinkage"):
        ProtocolSettings(calibration_shrinkage="ridge")


@pytest.mark.parametrize("bad", [-1.0, float("inf"), True, "1"])
def test_a_bad_budget_margin_is_refused_by_the_settings(bad: object) -> None:
    with pytest.raises(ValueError, match="budget_margin_se"):
        ProtocolSettings(budget_margin_se=bad)  # type: ignore[arg-type]
