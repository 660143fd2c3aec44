"""How the per-model calibration lines share strength: empirical Bayes (pooled with few rows, per model with
many), one pooled slope, and one measurement model shared by every model."""

from __future__ import annotations

import numpy as np
import pytest

from evaluation.protocol import ProtocolSettings
from evaluation.simulated import PerModelLinearCalibrator, measurement_slopes, shrink_toward_pooled

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


ACCURACY = np.array([0.55, 0.75, 0.92])


def _measured(n: int, seed: int, sigma: float = 1.2) -> tuple[np.ndarray, np.ndarray]:
    """0/1 qualities of three models of different accuracy and one noisy signal of each: the truth plus
    Gaussian noise of one scale, as the simulated estimators draw them."""
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 3)) < ACCURACY).astype(float)
    return y + rng.normal(0.0, sigma, (n, 3)), y


def test_the_measurement_model_gives_each_model_its_attenuated_slope() -> None:
    """Many rows: the slopes are p(1-p) / (p(1-p) + sigma²), different per model, and agree with each
    model's own least-squares line, which "pooled" (one slope) cannot."""
    x, y = _measured(400_000, seed=6)
    v = ACCURACY * (1 - ACCURACY)
    expected = v / (v + 1.44)
    fitted = PerModelLinearCalibrator(shrinkage="measurement").fit(x, y)
    np.testing.assert_allclose(fitted.coef_, expected, rtol=0.03)
    np.testing.assert_allclose(fitted.coef_, PerModelLinearCalibrator().fit(x, y).coef_, rtol=0.05)
    assert np.ptp(PerModelLinearCalibrator(shrinkage="pooled").fit(x, y).coef_) == 0.0
    np.testing.assert_allclose(fitted.shrink_weight_, 0.0)
    np.testing.assert_allclose(fitted.predict(x).mean(axis=0), y.mean(axis=0), atol=1e-12)
    assert ProtocolSettings(calibration_shrinkage="measurement").calibration_shrinkage == "measurement"


def test_with_few_rows_the_measurement_model_keeps_every_slope_positive_and_closer_to_the_truth() -> None:
    """31 rows, as at test size 0.99: a model's own line often fits its noise's chance correlation with
    the target, now and then with a negative slope; the shared model never does, and misses the true
    slopes by less on average."""
    v = ACCURACY * (1 - ACCURACY)
    truth = v / (v + 1.44)
    own_err, shared_err, own_negative = [], [], 0
    for seed in range(200):
        x, y = _measured(31, seed=100 + seed)
        own = PerModelLinearCalibrator().fit(x, y).coef_
        shared = measurement_slopes(x, y)
        assert np.all(shared >= 0.0)
        own_negative += int(np.any(own < 0))
        own_err.append(np.abs(own - truth).mean())
        shared_err.append(np.abs(shared - truth).mean())
    assert own_negative > 10
    assert np.mean(shared_err) < 0.75 * np.mean(own_err)


def test_the_measurement_model_leaves_constant_targets_at_their_mean() -> None:
    x, y = _measured(40, seed=7)
    y[:, 2] = 1.0  # the model was right on every row
    fitted = PerModelLinearCalibrator(shrinkage="measurement").fit(x, y)
    assert fitted.coef_[2] == 0.0 and np.all(fitted.coef_[:2] > 0.0)
    np.testing.assert_allclose(fitted.predict(x)[:, 2], 1.0)
    np.testing.assert_array_equal(measurement_slopes(x, np.ones_like(y)), np.zeros(3))
    np.testing.assert_array_equal(measurement_slopes(x[:1], y[:1]), np.zeros(3))  # no degree of freedom left


@pytest.mark.parametrize("bad", [-1.0, float("inf"), True, "1"])
def test_a_bad_budget_margin_is_refused_by_the_settings(bad: object) -> None:
    with pytest.raises(ValueError, match="budget_margin_se"):
        ProtocolSettings(budget_margin_se=bad)  # type: ignore[arg-type]
