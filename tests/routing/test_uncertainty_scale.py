"""The uncertainty scale: fitted from what answer selection gets, 0 when answers tell nothing, applied to any source."""

from __future__ import annotations

import numpy as np
import pytest

from routing import (
    DEFAULT_SCALE_GRID,
    Estimates,
    ScaledUncertainty,
    TableEstimates,
    fit_uncertainty_scale,
)
from routing._uncertainty_scale import _one_se_choice


def _source(q_ante: np.ndarray, q_post: np.ndarray, var_ante: float | np.ndarray) -> TableEstimates:
    shape = q_ante.shape
    return TableEstimates(q_ante=q_ante, q_post=q_post, var_ante=np.broadcast_to(var_ante, shape).copy(),
                          var_post=np.full(shape, 1e-6), cost_ante=np.ones(shape), cost_post=np.ones(shape))


def test_answers_that_reveal_quality_give_a_positive_scale() -> None:
    """Ex ante every model is a coin flip; its answer reveals whether it is right. Running a second model
    then raises the selected quality from 0.5 to 0.75, which only a positive factor predicts."""
    rng = np.random.default_rng(0)
    q = (rng.random((400, 3)) < 0.5).astype(float)
    fit = fit_uncertainty_scale(_source(np.full(q.shape, 0.5), q, 0.25), q)
    assert fit.scale > 0.0
    assert fit.loss[fit.grid.index(fit.scale)] < fit.loss[0]


def test_answers_that_tell_nothing_give_scale_zero() -> None:
    """The estimator claims uncertainty, but an answer leaves its estimate where it was: selection gets the
    best mean, so any factor > 0 only overstates it."""
    rng = np.random.default_rng(1)
    p = rng.uniform(0.2, 0.9, size=(400, 3))
    q = (rng.random(p.shape) < p).astype(float)
    fit = fit_uncertainty_scale(_source(p, p, 0.05), q)
    assert fit.scale == 0.0


def test_a_source_without_uncertainty_gives_scale_zero() -> None:
    rng = np.random.default_rng(2)
    q = (rng.random((50, 2)) < 0.6).astype(float)
    fit = fit_uncertainty_scale(_source(np.full(q.shape, 0.6), q, 0.0), q)
    assert fit.scale == 0.0
    assert len(set(fit.loss)) == 1


def test_fit_reads_only_the_rows_it_is_given() -> None:
    """The same validation rows give the same factor whatever other rows the full source holds."""
    rng = np.random.default_rng(3)
    q = (rng.random((300, 3)) < 0.5).astype(float)
    source = _source(np.full(q.shape, 0.5), q, 0.25)
    val = np.arange(100)
    poisoned = q.copy()
    poisoned[100:] = 1.0 - poisoned[100:]
    a = fit_uncertainty_scale(source.subset(val), q[val])
    b = fit_uncertainty_scale(_source(np.full(q.shape, 0.5), poisoned, 0.25).subset(val), poisoned[val])
    assert a == b


def test_one_se_rule_prefers_the_smaller_candidate_within_noise() -> None:
    rng = np.random.default_rng(4)
    noise = rng.normal(0.0, 1.0, size=(20, 1))
    # Candidate 1 is better by far less than the row-to-row spread of the excess: within one SE.
    losses = np.hstack([1.0 + noise + rng.normal(0, 0.5, (20, 1)), 0.99 + noise])
    assert _one_se_choice(losses) == 0
    # Clearly better: chosen.
    assert _one_se_choice(np.hstack([1.0 + noise, 0.5 + noise])) == 1
    # Exact ties go to the first (smallest) candidate.
    assert _one_se_choice(np.ones((5, 3))) == 0
    with pytest.raises(ValueError, match="losses must have shape"):
        _one_se_choice(np.ones(3))


def test_scaled_uncertainty_scales_variances_and_covariances_only() -> None:
    rng = np.random.default_rng(5)
    q = rng.random((4, 3))
    table = _source(q, q, 0.2)
    rows, answered = np.arange(4), np.zeros((4, 3), dtype=bool)
    base = table.estimate(rows, answered)
    half = ScaledUncertainty(table, 0.5).estimate(rows, answered)
    assert np.array_equal(half.q_mean, base.q_mean) and np.array_equal(half.cost, base.cost)
    assert base.q_var is not None and half.q_var is not None
    assert np.allclose(half.q_var, 0.5 * base.q_var)
    none = ScaledUncertainty(table, 0.0).estimate(rows, answered)
    assert none.q_var is None and none.q_cov is None
    assert ScaledUncertainty(table, 1.0).estimate(rows, answered) is not None
    sub = ScaledUncertainty(table, 0.5).subset(np.array([1, 3]))
    assert sub.n_queries == 2 and sub.scale == 0.5

    class Correlated:
        n_queries, n_models = 4, 3

        def estimate(self, rows: np.ndarray, answered: np.ndarray) -> Estimates:
            return Estimates(q_mean=q[rows], cost=np.ones((len(rows), 3)), q_cov=np.tile(np.eye(3), (len(rows), 1, 1)))

    cov = ScaledUncertainty(Correlated(), 0.1).estimate(rows, answered).q_cov
    assert cov is not None and np.allclose(cov, 0.1 * np.eye(3))
    with pytest.raises(TypeError, match="no subset"):
        ScaledUncertainty(Correlated(), 0.1).subset(rows)


@pytest.mark.parametrize("scale", [-0.1, float("nan"), float("inf"), True, "1"])
def test_scaled_uncertainty_rejects_bad_factors(scale: object) -> None:
    q = np.full((2, 2), 0.5)
    with pytest.raises(ValueError, match="scale must be"):
        ScaledUncertainty(_source(q, q, 0.1), scale)  # type: ignore[arg-type]


def test_fit_validates_its_input() -> None:
    q = np.full((5, 2), 0.5)
    source = _source(q, q, 0.1)
    with pytest.raises(ValueError, match="quality has shape"):
        fit_uncertainty_scale(source, q[:3])
    with pytest.raises(ValueError, match="grid factors must be finite"):
        fit_uncertainty_scale(source, q, grid=(0.0, -1.0))
    with pytest.raises(ValueError, match="at least 2 validation rows"):
        fit_uncertainty_scale(source.subset(np.array([0])), q[:1])
    fit = fit_uncertainty_scale(source, q, grid=(1.0, 0.0))
    assert fit.grid == (0.0, 1.0) and fit.n_rows == 5 and fit.n_pairs == 1
    assert set(fit.as_dict()) >= {"scale", "grid", "loss", "excess_se", "n_rows", "n_pairs", "criterion"}
    assert 0.0 in DEFAULT_SCALE_GRID and 1.0 in DEFAULT_SCALE_GRID
