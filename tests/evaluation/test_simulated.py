"""Tests for evaluation.simulated: seeded ground-truth-plus-noise estimators and their calibration."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.utils.estimator_checks import parametrize_with_checks

from evaluation.routerbench import load_routerbench
from evaluation.simulated import (
    NOISE_LEVELS,
    NoiseLevel,
    NoisySignals,
    PerModelLinearCalibrator,
    draw_noise,
    simulated_estimates,
)
from routing._estimates import TableEstimates

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "routerbench_tiny"

# sklearn's common checks fit a 1-D y (one target) on X with several columns. This calibrator pairs
# column j of y with column j of X, so it must reject that input; every check below fails only there.
# The calibrator tests further down re-test the same properties (pickling, idempotence, parameter
# immutability, n_features_in_, dtypes, NaN rejection, sample-order invariance) on paired data.
_PAIRED_SHAPES = "fits a 1-D y on a multi-column X; the calibrator pairs y[:, j] with X[:, j] and rejects it"
_PAIRED_SHAPE_CHECKS = (
    "check_dict_unchanged",
    "check_dont_overwrite_parameters",
    "check_dtype_object",
    "check_estimators_dtypes",
    "check_estimators_fit_returns_self",
    "check_estimators_nan_inf",
    "check_estimators_overwrite_params",
    "check_estimators_pickle",
    "check_f_contiguous_array_estimator",
    "check_fit2d_1sample",
    "check_fit2d_predict1d",
    "check_fit_check_is_fitted",
    "check_fit_idempotent",
    "check_fit_score_takes_y",
    "check_methods_sample_order_invariance",
    "check_methods_subset_invariance",
    "check_n_features_in",
    "check_n_features_in_after_fitting",
    "check_pipeline_consistency",
    "check_positive_only_tag_during_fit",
    "check_readonly_memmap_input",
    "check_regressor_data_not_an_array",
    "check_regressors_int",
    "check_regressors_no_decision_function",
    "check_regressors_train",
    "check_supervised_y_2d",
)


def _expected_failed_checks(estimator):
    return dict.fromkeys(_PAIRED_SHAPE_CHECKS, _PAIRED_SHAPES)


@parametrize_with_checks([PerModelLinearCalibrator(), PerModelLinearCalibrator(shrinkage="measurement")],
                         expected_failed_checks=_expected_failed_checks)
def test_sklearn_compatible_estimator(estimator, check):
    check(estimator)


def _ground_truth(n=2000, k=4, seed=0):
    rng = np.random.default_rng(seed)
    quality = (rng.random((n, k)) < np.linspace(0.4, 0.9, k)).astype(float)
    cost = rng.gamma(2.0, 1.0, (n, k)) * np.array([1e-4, 4e-4, 1e-3, 5e-3])[:k]
    return quality, cost


# ----------------------------------------------------------------------------------- noise levels


def test_noise_levels_match_spec():
    assert NOISE_LEVELS["low"] == NoiseLevel(0.6, 0.3, 2e-4, 5e-5)
    assert NOISE_LEVELS["medium"] == NoiseLevel(1.6, 0.8, 4e-4, 1e-4)
    assert NOISE_LEVELS["high"] == NoiseLevel(2.4, 1.2, 100.0, 100.0)


def test_noise_level_rejects_negative_sd():
    with pytest.raises(ValueError, match="q_post_sd must be a finite non-negative number, got -0.1"):
        NoiseLevel(0.1, -0.1, 0.0, 0.0)


# ------------------------------------------------------------------------------------- draw_noise


def test_same_seed_same_draw():
    quality, cost = _ground_truth()
    a = draw_noise(quality, cost, "medium", seed=7)
    b = draw_noise(quality, cost, "medium", seed=7)
    for name in ("q_ante", "q_post", "cost_ante", "cost_post"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def test_different_seed_different_draw():
    quality, cost = _ground_truth()
    a = draw_noise(quality, cost, "medium", seed=7)
    b = draw_noise(quality, cost, "medium", seed=8)
    for name in ("q_ante", "q_post", "cost_ante", "cost_post"):
        assert not np.allclose(getattr(a, name), getattr(b, name))


def test_draw_order_is_documented():
    """One standard_normal((4, n, k)) call; slices are q_ante, q_post, cost_ante, cost_post."""
    quality, cost = _ground_truth(n=50, k=3)
    level = NoiseLevel(0.5, 0.25, 1e-3, 2e-3)
    z = np.random.default_rng(3).standard_normal((4, 50, 3))
    signals = draw_noise(quality, cost, level, seed=3)
    np.testing.assert_allclose(signals.q_ante, quality + 0.5 * z[0])
    np.testing.assert_allclose(signals.q_post, quality + 0.25 * z[1])
    np.testing.assert_allclose(signals.cost_ante, cost + 1e-3 * z[2])
    np.testing.assert_allclose(signals.cost_post, cost + 2e-3 * z[3])


@pytest.mark.parametrize("name", sorted(NOISE_LEVELS))
def test_noise_sd_matches_level(name):
    quality, cost = _ground_truth(n=5000)
    signals = draw_noise(quality, cost, name, seed=0)
    level = NOISE_LEVELS[name]
    for field, truth in (("q_ante", quality), ("q_post", quality), ("cost_ante", cost), ("cost_post", cost)):
        sd = np.std(getattr(signals, field) - truth)
        assert sd == pytest.approx(getattr(level, field + "_sd"), rel=0.03), field


def test_zero_noise_returns_ground_truth():
    quality, cost = _ground_truth(n=20)
    signals = draw_noise(quality, cost, NoiseLevel(0.0, 0.0, 0.0, 0.0), seed=0)
    np.testing.assert_array_equal(signals.q_ante, quality)
    np.testing.assert_array_equal(signals.cost_post, cost)


def test_unknown_noise_level():
    quality, cost = _ground_truth(n=5)
    with pytest.raises(ValueError, match=r"noise level 'extreme'; valid levels: \['high', 'low', 'medium'\]"):
        draw_noise(quality, cost, "extreme", seed=0)


@pytest.mark.parametrize("seed", [None, -1, 1.5, True])
def test_seed_is_required(seed):
    quality, cost = _ground_truth(n=5)
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        draw_noise(quality, cost, "low", seed=seed)


def test_draw_noise_validates_ground_truth():
    quality, cost = _ground_truth(n=5)
    with pytest.raises(ValueError, match=r"cost has shape \(5, 3\), expected \(5, 4\)"):
        draw_noise(quality, cost[:, :3], "low", seed=0)
    with pytest.raises(ValueError, match=r"quality must have shape \(n_queries, n_models\)"):
        draw_noise(quality[:, 0], cost[:, 0], "low", seed=0)
    with pytest.raises(ValueError, match=r"quality must lie in \[0, 1\]"):
        draw_noise(quality + 0.5, cost, "low", seed=0)
    with pytest.raises(ValueError, match="quality contains non-finite values"):
        draw_noise(np.where(quality > 0, np.nan, quality), cost, "low", seed=0)
    with pytest.raises(ValueError, match="cost must be non-negative"):
        draw_noise(quality, -cost, "low", seed=0)


def test_noisy_signals_validate_shapes():
    with pytest.raises(ValueError, match=r"q_post has shape \(2, 2\), expected \(2, 3\) like q_ante"):
        NoisySignals(np.zeros((2, 3)), np.zeros((2, 2)), np.zeros((2, 3)), np.zeros((2, 3)))


# ---------------------------------------------------------------------------- the calibrator itself


def test_calibrator_recovers_lines_per_column():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3))
    y = X * np.array([2.0, -1.0, 0.5]) + np.array([1.0, 0.0, -3.0])
    est = PerModelLinearCalibrator().fit(X, y)
    np.testing.assert_allclose(est.coef_, [2.0, -1.0, 0.5])
    np.testing.assert_allclose(est.intercept_, [1.0, 0.0, -3.0], atol=1e-12)
    assert est.n_features_in_ == 3
    np.testing.assert_allclose(est.predict(X), y)


def test_calibrator_columns_are_independent():
    """Column j's line depends on column j only: permuting the other columns changes nothing."""
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(100, 3)), rng.normal(size=(100, 3))
    base = PerModelLinearCalibrator().fit(X, y)
    X2, y2 = X.copy(), y.copy()
    perm = rng.permutation(100)
    X2[:, 1:], y2[:, 1:] = X[perm, 1:], y[perm, 1:]
    other = PerModelLinearCalibrator().fit(X2, y2)
    assert other.coef_[0] == base.coef_[0]
    assert other.intercept_[0] == base.intercept_[0]


def test_calibrator_matches_numpy_polyfit():
    rng = np.random.default_rng(2)
    x = rng.normal(size=300)
    y = 0.3 * x + rng.normal(size=300)
    est = PerModelLinearCalibrator().fit(x[:, None], y[:, None])
    slope, intercept = np.polyfit(x, y, 1)
    assert est.coef_[0] == pytest.approx(slope)
    assert est.intercept_[0] == pytest.approx(intercept)


def test_calibrator_constant_column_predicts_mean():
    X = np.column_stack([np.full(10, 0.1), np.arange(10.0)])
    y = np.column_stack([np.arange(10.0), np.arange(10.0)])
    est = PerModelLinearCalibrator().fit(X, y)
    assert est.coef_[0] == 0.0
    assert est.intercept_[0] == pytest.approx(4.5)
    assert np.all(np.isfinite(est.predict(X)))


def test_calibrator_without_intercept():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(50, 2))
    est = PerModelLinearCalibrator(fit_intercept=False).fit(X, 3 * X + 1)
    np.testing.assert_array_equal(est.intercept_, [0.0, 0.0])
    np.testing.assert_allclose(est.coef_, (X * (3 * X + 1)).sum(0) / (X * X).sum(0))


def test_calibrator_1d_target_needs_one_column():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(30, 1))
    est = PerModelLinearCalibrator().fit(x, 2 * x[:, 0])
    assert est.predict(x).shape == (30,)
    with pytest.raises(ValueError, match=r"y has 1 column\(s\) but X has 2"):
        PerModelLinearCalibrator().fit(np.hstack([x, x]), 2 * x[:, 0])


def test_calibrator_predict_before_fit():
    with pytest.raises(NotFittedError):
        PerModelLinearCalibrator().predict(np.zeros((3, 2)))


def test_calibrator_predict_checks_n_features():
    est = PerModelLinearCalibrator().fit(np.eye(3), np.eye(3))
    with pytest.raises(ValueError, match="X has 2 features, but PerModelLinearCalibrator is expecting 3"):
        est.predict(np.zeros((4, 2)))


def test_calibrator_rejects_nan_and_inf():
    X = np.eye(3)
    for bad in (np.nan, np.inf):
        X_bad = X.copy()
        X_bad[0, 0] = bad
        with pytest.raises(ValueError, match="Input X contains"):
            PerModelLinearCalibrator().fit(X_bad, X)


def test_calibrator_rejects_bad_fit_intercept():
    with pytest.raises(ValueError, match="fit_intercept must be a bool"):
        PerModelLinearCalibrator(fit_intercept="yes").fit(np.eye(2), np.eye(2))


def test_calibrator_fit_is_idempotent_and_keeps_params():
    rng = np.random.default_rng(5)
    X, y = rng.normal(size=(40, 3)), rng.normal(size=(40, 3))
    est = PerModelLinearCalibrator(fit_intercept=True)
    params = est.get_params()
    first = est.fit(X, y).predict(X)
    assert est.fit(X, y) is est
    np.testing.assert_array_equal(est.predict(X), first)
    assert est.get_params() == params
    assert clone(est).get_params() == params


def test_calibrator_accepts_int_and_float32_input():
    rng = np.random.default_rng(6)
    X = rng.integers(0, 5, size=(30, 2))
    y = X.astype(np.float32) * 2
    est = PerModelLinearCalibrator().fit(X, y)
    np.testing.assert_allclose(est.coef_, [2.0, 2.0], rtol=1e-6)
    assert est.predict(X).dtype == np.float64


def test_calibrator_sample_order_invariance():
    rng = np.random.default_rng(7)
    X, y = rng.normal(size=(60, 2)), rng.normal(size=(60, 2))
    perm = rng.permutation(60)
    a = PerModelLinearCalibrator().fit(X, y)
    b = PerModelLinearCalibrator().fit(X[perm], y[perm])
    np.testing.assert_allclose(a.coef_, b.coef_)
    np.testing.assert_allclose(a.predict(X)[perm], a.predict(X[perm]))


def test_calibrator_pickle_round_trip():
    rng = np.random.default_rng(8)
    X, y = rng.normal(size=(20, 3)), rng.normal(size=(20, 3))
    est = PerModelLinearCalibrator().fit(X, y)
    back = pickle.loads(pickle.dumps(est))
    np.testing.assert_array_equal(back.predict(X), est.predict(X))
    assert back.get_params() == est.get_params()


# ---------------------------------------------------------------------------- simulated_estimates


def test_simulated_estimates_returns_table_for_all_rows():
    quality, cost = _ground_truth(n=300)
    signals = draw_noise(quality, cost, "low", seed=0)
    est = simulated_estimates(signals, quality, cost, fit_rows=np.arange(100))
    assert isinstance(est, TableEstimates)
    assert est.n_queries == 300 and est.n_models == 4
    assert est.subset(np.arange(100, 300)).n_queries == 200


def test_calibration_reduces_mse():
    quality, cost = _ground_truth()
    signals = draw_noise(quality, cost, "medium", seed=0)
    fit, test = np.arange(1000), np.arange(1000, 2000)
    est = simulated_estimates(signals, quality, cost, fit_rows=fit)
    for raw, calibrated, truth in (
        (signals.q_ante, est.q_ante, quality),
        (signals.q_post, est.q_post, quality),
        (signals.cost_ante, est.cost_ante, cost),
        (signals.cost_post, est.cost_post, cost),
    ):
        mse_raw = np.mean((raw[test] - truth[test]) ** 2)
        mse_cal = np.mean((calibrated[test] - truth[test]) ** 2)
        assert mse_cal < mse_raw


def test_calibration_uses_only_fit_rows():
    """Changing the ground truth outside fit_rows changes no estimate (algorithm-spec §8 item 9)."""
    quality, cost = _ground_truth(n=400)
    signals = draw_noise(quality, cost, "low", seed=1)
    fit = np.arange(0, 400, 4)
    others = np.setdiff1d(np.arange(400), fit)
    base = simulated_estimates(signals, quality, cost, fit_rows=fit)
    q2, c2 = quality.copy(), cost.copy()
    q2[others] = 1.0 - q2[others]
    c2[others] *= 10
    changed = simulated_estimates(signals, q2, c2, fit_rows=fit)
    for name in ("q_ante", "q_post", "var_ante", "var_post", "cost_ante", "cost_post"):
        np.testing.assert_array_equal(getattr(changed, name), getattr(base, name))


def test_calibrator_coef_ignores_rows_outside_fit():
    quality, cost = _ground_truth(n=400)
    signals = draw_noise(quality, cost, "low", seed=1)
    fit = np.arange(200)
    a = PerModelLinearCalibrator().fit(signals.q_ante[fit], quality[fit])
    q2 = quality.copy()
    q2[200:] = 0.0
    b = PerModelLinearCalibrator().fit(signals.q_ante[fit], q2[fit])
    np.testing.assert_array_equal(a.coef_, b.coef_)


def test_fit_rows_boolean_mask_equals_indices():
    quality, cost = _ground_truth(n=100)
    signals = draw_noise(quality, cost, "low", seed=2)
    mask = np.zeros(100, dtype=bool)
    mask[10:60] = True
    a = simulated_estimates(signals, quality, cost, fit_rows=mask)
    b = simulated_estimates(signals, quality, cost, fit_rows=np.arange(10, 60))
    np.testing.assert_array_equal(a.q_ante, b.q_ante)


def test_variances():
    """var_ante[:, i] = (std over fit rows of calibrated ante - calibrated post)²; var_post as given."""
    quality, cost = _ground_truth(n=500)
    signals = draw_noise(quality, cost, "medium", seed=3)
    fit = np.arange(250)
    est = simulated_estimates(signals, quality, cost, fit_rows=fit, post_var=2e-6)
    assert np.all(est.var_ante > 0)
    np.testing.assert_array_equal(est.var_post, np.full((500, 4), 2e-6))
    s = np.std(est.q_ante[fit] - est.q_post[fit], axis=0)
    np.testing.assert_allclose(est.var_ante, np.broadcast_to(s**2, (500, 4)))
    # Heavier noise shrinks calibrated estimates toward each model's mean, so they move *less* when the
    # model runs: the "medium" level yields smaller ex-ante variances than "low".
    low = simulated_estimates(draw_noise(quality, cost, "low", seed=3), quality, cost, fit_rows=fit)
    assert np.all(est.var_ante[0] < low.var_ante[0])


def test_default_post_var():
    quality, cost = _ground_truth(n=50)
    est = simulated_estimates(draw_noise(quality, cost, "low", seed=0), quality, cost, fit_rows=np.arange(50))
    assert np.all(est.var_post == 1e-6)


def test_costs_are_clipped_at_zero():
    """A calibrated line can dip below zero off the fit rows; routing needs non-negative costs."""
    quality = np.zeros((4, 1))
    cost = np.array([[0.0], [1e-3], [2e-3], [0.0]])
    signal = np.array([[0.0], [1e-3], [2e-3], [-5e-3]])  # row 3 lies far below the fitted range
    signals = NoisySignals(quality, quality, signal, signal)
    est = simulated_estimates(signals, quality, cost, fit_rows=[0, 1, 2])
    np.testing.assert_allclose(est.cost_ante[:3, 0], [0.0, 1e-3, 2e-3], atol=1e-15)
    assert est.cost_ante[3, 0] == 0.0 and est.cost_post[3, 0] == 0.0


def test_empty_fit_rows():
    quality, cost = _ground_truth(n=20)
    signals = draw_noise(quality, cost, "low", seed=0)
    with pytest.raises(ValueError, match="fit_rows is empty"):
        simulated_estimates(signals, quality, cost, fit_rows=[])
    with pytest.raises(ValueError, match="fit_rows is empty"):
        simulated_estimates(signals, quality, cost, fit_rows=np.zeros(20, dtype=bool))


def test_fit_rows_out_of_range():
    quality, cost = _ground_truth(n=20)
    signals = draw_noise(quality, cost, "low", seed=0)
    with pytest.raises(ValueError, match=r"fit_rows must index rows 0..19"):
        simulated_estimates(signals, quality, cost, fit_rows=[0, 20])
    with pytest.raises(ValueError, match=r"fit_rows must index rows 0..19"):
        simulated_estimates(signals, quality, cost, fit_rows=[-1])
    with pytest.raises(ValueError, match=r"boolean fit_rows must have shape \(20,\)"):
        simulated_estimates(signals, quality, cost, fit_rows=np.ones(5, dtype=bool))


def test_signals_shape_must_match_ground_truth():
    quality, cost = _ground_truth(n=20)
    signals = draw_noise(quality, cost, "low", seed=0)
    with pytest.raises(ValueError, match=r"signals have shape \(20, 4\), quality has shape \(10, 4\)"):
        simulated_estimates(signals, quality[:10], cost[:10], fit_rows=[0])


@pytest.mark.parametrize("post_var", [-1e-6, np.inf])
def test_bad_post_var(post_var):
    quality, cost = _ground_truth(n=20)
    signals = draw_noise(quality, cost, "low", seed=0)
    with pytest.raises(ValueError, match="post_var must be a finite non-negative number"):
        simulated_estimates(signals, quality, cost, fit_rows=[0, 1], post_var=post_var)


def test_end_to_end_on_fixture():
    """The evaluation path without ../shared: load, sort by cost, add noise, calibrate on a split."""
    table = load_routerbench(FIXTURE).sorted_by_cost()
    signals = draw_noise(table.quality, table.cost, "low", seed=0)
    val = np.arange(0, table.n_queries, 2)
    est = simulated_estimates(signals, table.quality, table.cost, fit_rows=val)
    test = est.subset(np.arange(1, table.n_queries, 2))
    assert test.n_models == 11
    # With low noise, post-hoc estimates rank answers: correct answers score higher on average.
    q = table.quality[1::2]
    assert test.q_post[q == 1].mean() > test.q_post[q == 0].mean() + 0.3
