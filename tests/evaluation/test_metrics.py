"""Tests for evaluation.metrics: hull, budget grid, AUC (algorithm-spec §5.4) and bootstrap."""

from __future__ import annotations

import numpy as np
import pytest

from evaluation.metrics import (
    AucRange,
    ConfidenceInterval,
    area_under_curve,
    auc_range,
    bootstrap_auc,
    bootstrap_indices,
    budget_grid,
    hull_models,
    linear_interpolation_curve,
    paired_difference,
    single_model_points,
)

# Five models: 0, 2 and 4 form the hull; 1 lies under segment 0-2, 3 is dominated by 2.
COST = np.array([1.0, 2.0, 3.0, 4.0, 6.0])
QUALITY = np.array([0.2, 0.3, 0.6, 0.5, 0.8])
HULL = [0, 2, 4]


def _random_models(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    return rng.uniform(0.1, 10.0, n), rng.uniform(0.0, 1.0, n)


# ---------------------------------------------------------------------------------------------------
# single models and hull


def test_single_model_points_are_column_means() -> None:
    rng = np.random.default_rng(0)
    quality = rng.integers(0, 2, size=(50, 3)).astype(float)
    cost = rng.uniform(0, 1, size=(50, 3))
    mean_cost, mean_quality = single_model_points(quality, cost)
    np.testing.assert_allclose(mean_cost, cost.mean(axis=0))
    np.testing.assert_allclose(mean_quality, quality.mean(axis=0))


def test_single_model_points_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="cost"):
        single_model_points(np.zeros((4, 3)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="quality must be 2-D"):
        single_model_points(np.zeros(4), np.zeros(4))


def test_hull_drops_dominated_and_under_hull_models() -> None:
    assert hull_models(COST, QUALITY).tolist() == HULL


def test_hull_single_model() -> None:
    assert hull_models([2.5], [0.4]).tolist() == [0]


def test_hull_is_sorted_by_cost_with_increasing_quality_and_concave() -> None:
    rng = np.random.default_rng(1)
    for _ in range(50):
        cost, quality = _random_models(rng, int(rng.integers(1, 12)))
        hull = hull_models(cost, quality)
        c, q = cost[hull], quality[hull]
        assert np.all(np.diff(c) > 0)
        assert np.all(np.diff(q) > 0)
        slopes = np.diff(q) / np.diff(c)
        assert np.all(np.diff(slopes) <= 1e-12)
        # No model lies above the piecewise-linear hull within its cost range (all are under it).
        inside = (cost >= c[0]) & (cost <= c[-1])
        assert np.all(quality[inside] <= np.interp(cost[inside], c, q) + 1e-12)
        # The cheapest model's cost group and the best model are on the hull.
        assert quality[hull[-1]] == quality.max()
        assert c[0] == cost.min()


def test_hull_order_invariance() -> None:
    """Shuffling the models relabels the hull but selects the same (cost, quality) points."""
    rng = np.random.default_rng(2)
    for _ in range(30):
        cost, quality = _random_models(rng, 8)
        perm = rng.permutation(8)
        hull = hull_models(cost, quality)
        hull_perm = hull_models(cost[perm], quality[perm])
        assert perm[hull_perm].tolist() == hull.tolist()


def test_hull_identical_points_keep_one() -> None:
    cost = np.array([1.0, 3.0, 1.0, 3.0])
    quality = np.array([0.5, 0.9, 0.5, 0.9])
    assert hull_models(cost, quality).tolist() == [0, 1]


def test_hull_same_cost_keeps_best_and_equal_quality_keeps_cheapest() -> None:
    cost = np.array([1.0, 1.0, 2.0, 3.0])
    quality = np.array([0.3, 0.5, 0.9, 0.9])
    assert hull_models(cost, quality).tolist() == [1, 2]


def test_hull_keeps_collinear_models() -> None:
    # As the reference, only models strictly under a segment are removed.
    assert hull_models([1.0, 2.0, 3.0], [0.1, 0.2, 0.3]).tolist() == [0, 1, 2]


def test_hull_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match="model_cost must not be empty"):
        hull_models([], [])
    with pytest.raises(ValueError, match="model_quality"):
        hull_models([1.0, 2.0], [0.5])
    with pytest.raises(ValueError, match="model_cost contains non-finite"):
        hull_models([1.0, np.nan], [0.5, 0.6])


# ---------------------------------------------------------------------------------------------------
# budget grid


def test_budget_grid_ten_per_segment() -> None:
    grid = budget_grid(COST, QUALITY)
    hull_cost = COST[HULL]
    assert grid.size == 9 * (len(HULL) - 1) + 1
    np.testing.assert_array_equal(grid[::9], hull_cost)
    np.testing.assert_allclose(grid[:10], np.linspace(1.0, 3.0, 10))
    np.testing.assert_allclose(grid[9:], np.linspace(3.0, 6.0, 10))


def test_budget_grid_properties() -> None:
    rng = np.random.default_rng(3)
    for _ in range(50):
        cost, quality = _random_models(rng, int(rng.integers(1, 12)))
        hull_cost = cost[hull_models(cost, quality)]
        grid = budget_grid(cost, quality)
        h = hull_cost.size
        assert grid.size == 9 * (h - 1) + 1
        assert np.all(np.diff(grid) > 0)  # sorted, no duplicates
        assert grid[0] == hull_cost[0] and grid[-1] == hull_cost[-1]
        assert set(hull_cost.tolist()) <= set(grid.tolist())


def test_budget_grid_per_segment() -> None:
    grid = budget_grid(COST, QUALITY, per_segment=3)
    np.testing.assert_allclose(grid, [1.0, 2.0, 3.0, 4.5, 6.0])
    with pytest.raises(ValueError, match="per_segment"):
        budget_grid(COST, QUALITY, per_segment=1)


def test_budget_grid_single_hull_model() -> None:
    # Model 0 dominates model 1: the grid is the single hull cost.
    np.testing.assert_array_equal(budget_grid([1.0, 2.0], [0.9, 0.5]), [1.0])


# ---------------------------------------------------------------------------------------------------
# AUC


def test_auc_constant_curve() -> None:
    rng = np.random.default_rng(4)
    for c in (0.0, 0.37, 1.0):
        x = np.sort(rng.uniform(0.0, 12.0, 7))
        assert area_under_curve(x, np.full(7, c), x_min=1.0, x_max=10.0, y_base=c) == pytest.approx(c)


def test_auc_of_linear_baseline() -> None:
    cost, quality = linear_interpolation_curve(COST, QUALITY)
    np.testing.assert_array_equal(cost, COST[HULL])
    rng_ = auc_range(COST, QUALITY)
    assert rng_ == AucRange(x_min=1.0, x_max=6.0, y_base=0.2)
    auc = area_under_curve(cost, quality, x_min=rng_.x_min, x_max=rng_.x_max, y_base=rng_.y_base)
    # Trapezoids (1, .2)-(3, .6) and (3, .6)-(6, .8) over a width of 5.
    assert auc == pytest.approx((2 * 0.4 + 3 * 0.7) / 5)


def test_auc_curve_starting_after_x_min_joins_y_base() -> None:
    auc = area_under_curve([2.0, 4.0], [0.6, 0.6], x_min=0.0, x_max=4.0, y_base=0.2)
    assert auc == pytest.approx((2 * 0.4 + 2 * 0.6) / 4)


def test_auc_flat_extension_after_last_point() -> None:
    auc = area_under_curve([0.0, 2.0], [0.2, 0.6], x_min=0.0, x_max=4.0, y_base=0.0)
    assert auc == pytest.approx((2 * 0.4 + 2 * 0.6) / 4)


def test_auc_clips_by_interpolation_at_both_ends() -> None:
    # y = x / 10 on [-2, 12], evaluated on [0, 10]: mean 0.5.
    x = np.array([-2.0, 3.0, 12.0])
    assert area_under_curve(x, x / 10, x_min=0.0, x_max=10.0, y_base=-5.0) == pytest.approx(0.5)


def test_auc_curve_entirely_left_of_range_is_flat() -> None:
    assert area_under_curve([-3.0, -1.0], [0.1, 0.4], x_min=0.0, x_max=1.0, y_base=0.0) == pytest.approx(0.4)


def test_auc_duplicate_costs_keep_max_quality_spec_8_17() -> None:
    """Regression test for algorithm-spec §8 item 17: a shared cost keeps its best quality, in any order."""
    expected = area_under_curve([0.0, 1.0, 2.0], [0.2, 0.9, 0.5], x_min=0.0, x_max=2.0, y_base=0.0)
    for order in ([0, 1, 2, 3], [0, 3, 2, 1], [2, 1, 3, 0]):
        x = np.array([0.0, 1.0, 2.0, 1.0])[order]
        y = np.array([0.2, 0.9, 0.5, 0.1])[order]
        assert area_under_curve(x, y, x_min=0.0, x_max=2.0, y_base=0.0) == pytest.approx(expected)


def test_auc_is_monotone_in_quality() -> None:
    """Raising any point's quality never lowers the AUC."""
    rng = np.random.default_rng(5)
    for _ in range(200):
        n = int(rng.integers(1, 10))
        x = rng.uniform(0.0, 10.0, n).round(1)  # rounding makes shared costs likely
        y = rng.uniform(0.0, 1.0, n)
        kw = {"x_min": 1.0, "x_max": 9.0, "y_base": 0.1}
        base = area_under_curve(x, y, **kw)
        i = int(rng.integers(n))
        y_up = y.copy()
        y_up[i] += rng.uniform(0.0, 0.5)
        assert area_under_curve(x, y_up, **kw) >= base - 1e-12


def test_auc_invariant_to_point_order() -> None:
    rng = np.random.default_rng(6)
    for _ in range(50):
        n = int(rng.integers(1, 10))
        x = rng.uniform(0.0, 10.0, n).round(0)
        y = rng.uniform(0.0, 1.0, n)
        perm = rng.permutation(n)
        kw = {"x_min": 2.0, "x_max": 8.0, "y_base": 0.0}
        assert area_under_curve(x[perm], y[perm], **kw) == area_under_curve(x, y, **kw)


def test_auc_between_min_and_max_quality() -> None:
    rng = np.random.default_rng(7)
    for _ in range(50):
        x = rng.uniform(0.0, 10.0, 6)
        y = rng.uniform(0.2, 0.8, 6)
        auc = area_under_curve(x, y, x_min=1.0, x_max=9.0, y_base=0.1)
        assert 0.1 - 1e-12 <= auc <= 0.8 + 1e-12


@pytest.mark.parametrize(
    ("cost", "quality", "kw", "match"),
    [
        ([], [], {}, "cost must not be empty"),
        ([1.0, 2.0], [0.5], {}, "quality has shape"),
        ([1.0, np.inf], [0.5, 0.6], {}, "cost contains non-finite"),
        ([1.0, 2.0], [0.5, np.nan], {}, "quality contains non-finite"),
        ([[1.0]], [[0.5]], {}, "cost must be 1-D"),
        ([1.0], [0.5], {"x_max": 0.0}, "x_max must be greater than x_min"),
        ([1.0], [0.5], {"x_max": 0.0, "x_min": 0.0}, "x_max must be greater than x_min"),
        ([1.0], [0.5], {"y_base": np.nan}, "y_base must be finite"),
        ([1.0], [0.5], {"x_min": -np.inf}, "x_min must be finite"),
    ],
)
def test_auc_rejects_bad_inputs(
    cost: list[float], quality: list[float], kw: dict[str, float], match: str
) -> None:
    args = {"x_min": 0.0, "x_max": 2.0, "y_base": 0.0} | kw
    with pytest.raises(ValueError, match=match):
        area_under_curve(cost, quality, **args)


# ---------------------------------------------------------------------------------------------------
# bootstrap


def _synthetic_method(
    rng: np.random.Generator, n_queries: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Three models and a method that mixes neighbouring models along the budget grid."""
    p_correct = np.array([0.4, 0.6, 0.75])
    model_quality = (rng.uniform(size=(n_queries, 3)) < p_correct).astype(float)
    model_cost = rng.gamma(4.0, np.array([0.25, 1.0, 3.0]) / 4.0, size=(n_queries, 3))
    mean_cost, mean_quality = single_model_points(model_quality, model_cost)
    grid = budget_grid(mean_cost, mean_quality)
    hull = hull_models(mean_cost, mean_quality)
    point_quality = np.empty((grid.size, n_queries))
    point_cost = np.empty((grid.size, n_queries))
    for p, budget in enumerate(grid):
        seg = min(int(np.searchsorted(mean_cost[hull], budget, side="right")) - 1, hull.size - 2)
        a, b = hull[max(seg, 0)], hull[max(seg, 0) + 1]
        w = (budget - mean_cost[a]) / (mean_cost[b] - mean_cost[a])
        pick = np.where(rng.uniform(size=n_queries) < w, b, a)
        point_quality[p] = model_quality[np.arange(n_queries), pick]
        point_cost[p] = model_cost[np.arange(n_queries), pick]
    return point_quality, point_cost, model_quality, model_cost


def _point_estimate(
    point_quality: np.ndarray, point_cost: np.ndarray, model_quality: np.ndarray, model_cost: np.ndarray
) -> float:
    r = auc_range(*single_model_points(model_quality, model_cost))
    return area_under_curve(
        point_cost.mean(axis=1), point_quality.mean(axis=1), x_min=r.x_min, x_max=r.x_max, y_base=r.y_base
    )


def test_bootstrap_indices_same_seed_same_indices() -> None:
    a = bootstrap_indices(100, n_resamples=20, seed=0)
    np.testing.assert_array_equal(a, bootstrap_indices(100, n_resamples=20, seed=0))
    assert a.shape == (20, 100)
    assert a.min() >= 0 and a.max() < 100
    assert not np.array_equal(a, bootstrap_indices(100, n_resamples=20, seed=1))
    assert bootstrap_indices(30).shape == (500, 30)


def test_bootstrap_indices_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="n_queries"):
        bootstrap_indices(0)
    with pytest.raises(ValueError, match="n_resamples"):
        bootstrap_indices(10, n_resamples=0)


def test_bootstrap_matches_direct_resampling() -> None:
    """The vectorised means equal recomputing everything on the resampled arrays."""
    rng = np.random.default_rng(8)
    pq, pc, mq, mc = _synthetic_method(rng, 200)
    idx = bootstrap_indices(200, n_resamples=5, seed=3)
    samples = bootstrap_auc(pq, pc, mq, mc, idx)
    for r in range(5):
        expected = _point_estimate(pq[:, idx[r]], pc[:, idx[r]], mq[idx[r]], mc[idx[r]])
        assert samples[r] == pytest.approx(expected, abs=1e-12)


def test_bootstrap_mean_close_to_point_estimate_and_ci_contains_it() -> None:
    rng = np.random.default_rng(9)
    pq, pc, mq, mc = _synthetic_method(rng, 3000)
    estimate = _point_estimate(pq, pc, mq, mc)
    samples = bootstrap_auc(pq, pc, mq, mc, bootstrap_indices(3000))
    assert samples.shape == (500,)
    ci = ConfidenceInterval.from_samples(samples)
    assert ci.low < estimate < ci.high
    assert ci.mean == pytest.approx(estimate, abs=0.25 * (ci.high - ci.low))
    assert ci.plus > 0 and ci.minus > 0
    assert ci.high - ci.low < 0.05  # 3000 queries: a CI of a few points at most


def test_paired_difference_with_itself_is_exactly_zero() -> None:
    rng = np.random.default_rng(10)
    pq, pc, mq, mc = _synthetic_method(rng, 300)
    idx = bootstrap_indices(300, n_resamples=50)
    a = bootstrap_auc(pq, pc, mq, mc, idx)
    b = bootstrap_auc(pq.copy(), pc.copy(), mq, mc, idx)
    assert paired_difference(a, b) == ConfidenceInterval(mean=0.0, low=0.0, high=0.0)


def test_paired_difference_of_shifted_method() -> None:
    samples = np.random.default_rng(11).normal(0.7, 0.01, 500)
    ci = paired_difference(samples + 0.05, samples)
    assert ci.mean == pytest.approx(0.05) and ci.low == pytest.approx(0.05) and ci.high == pytest.approx(0.05)
    with pytest.raises(ValueError, match="samples_b has shape"):
        paired_difference(samples, samples[:10])


def test_confidence_interval_percentiles() -> None:
    samples = np.arange(1001, dtype=float)
    ci = ConfidenceInterval.from_samples(samples)
    assert (ci.mean, ci.low, ci.high) == pytest.approx((500.0, 25.0, 975.0))
    with pytest.raises(ValueError, match="level"):
        ConfidenceInterval.from_samples(samples, level=1.0)
    with pytest.raises(ValueError, match="samples must not be empty"):
        ConfidenceInterval.from_samples([])


def test_bootstrap_auc_rejects_bad_inputs() -> None:
    rng = np.random.default_rng(12)
    pq, pc, mq, mc = _synthetic_method(rng, 20)
    idx = bootstrap_indices(20, n_resamples=3)
    with pytest.raises(ValueError, match="point_cost has shape"):
        bootstrap_auc(pq, pc[:, :10], mq, mc, idx)
    with pytest.raises(ValueError, match="model_cost has shape"):
        bootstrap_auc(pq, pc, mq, mc[:, :2], idx)
    with pytest.raises(ValueError, match="model_quality has 10 queries"):
        bootstrap_auc(pq, pc, mq[:10], mc[:10], idx)
    with pytest.raises(ValueError, match="indices must lie in"):
        bootstrap_auc(pq, pc, mq, mc, idx + 20)
    with pytest.raises(ValueError, match="indices must be integers"):
        bootstrap_auc(pq, pc, mq, mc, idx.astype(float))
    with pytest.raises(ValueError, match="indices must be a non-empty 2-D"):
        bootstrap_auc(pq, pc, mq, mc, idx[0])
