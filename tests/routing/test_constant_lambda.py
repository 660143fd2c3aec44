"""Constant-lambda policies: one (policy name, lambda) pair means the same policy offline and online."""

from __future__ import annotations

import numpy as np
import pytest

from routing import (
    CONSTANT_LAMBDA_POLICIES,
    CascadeRouter,
    OptimalCascade,
    TableEstimates,
    ThresholdCascade,
    constant_lambda_policy,
    rollout,
)


def _source(n: int = 60, seed: int = 0) -> tuple[TableEstimates, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    accuracy = np.array([0.4, 0.6, 0.8, 0.9])
    quality = (rng.random((n, 4)) < accuracy).astype(float)
    cost = np.tile([0.1, 0.3, 0.9, 2.7], (n, 1))
    q_post = np.clip(0.7 * quality + 0.15 + rng.normal(0, 0.05, size=(n, 4)), 0.01, 0.99)
    source = TableEstimates(q_ante=np.tile(accuracy, (n, 1)), q_post=q_post, var_ante=np.full((n, 4), 0.02),
                            var_post=np.full((n, 4), 1e-4), cost_ante=cost, cost_post=cost)
    return source, quality, cost


def test_the_four_names() -> None:
    assert CONSTANT_LAMBDA_POLICIES == ("routing", "threshold_cascade", "optimal_cascade", "cascade_routing")


@pytest.mark.parametrize(
    ("name", "cls", "depth", "lambdas"),
    [
        ("routing", CascadeRouter, 1, [0.5]),
        ("threshold_cascade", ThresholdCascade, 3, [0.5, 0.5, 0.5]),
        ("optimal_cascade", OptimalCascade, 3, [0.5, 0.5, 0.5]),
        ("cascade_routing", CascadeRouter, 3, [0.5, 0.5, 0.5]),
    ],
)
def test_each_name_gives_its_policy_with_one_lambda_per_step(
    name: str, cls: type, depth: int, lambdas: list[float]
) -> None:
    policy = constant_lambda_policy(name, 0.5, 3)
    assert type(policy) is cls
    assert policy.max_depth == depth  # type: ignore[attr-defined]
    np.testing.assert_array_equal(policy.lambdas_, lambdas)
    assert policy.gamma_ == 0.0


@pytest.mark.parametrize("name", CONSTANT_LAMBDA_POLICIES)
def test_depth_caps_the_models_run(name: str) -> None:
    source, quality, cost = _source()
    for depth in (1, 2, 4):
        result = rollout(constant_lambda_policy(name, 0.0, depth), source, quality, cost)
        assert result.n_models_run.max() <= (1 if name == "routing" else depth)
        assert result.n_models_run.min() >= 1


def test_lambda_zero_and_large_lambda_extremes() -> None:
    source, quality, cost = _source()
    routing = rollout(constant_lambda_policy("routing", 0.0, 4), source, quality, cost)
    assert np.all(routing.answer_from == 3)  # best ex-ante model, one model per query
    cheap = rollout(constant_lambda_policy("cascade_routing", 1e6, 4), source, quality, cost)
    assert np.all(cheap.n_models_run == 1) and np.all(cheap.answer_from == 0)
    everything = rollout(constant_lambda_policy("threshold_cascade", 0.0, 4), source, quality, cost)
    assert np.all(everything.n_models_run == 4) and np.all(everything.answer_from == 3)  # threshold 1
    first = rollout(constant_lambda_policy("threshold_cascade", 1.0, 4), source, quality, cost)
    assert np.all(first.n_models_run == 1) and np.all(first.answer_from == 0)  # threshold 0


def test_threshold_cascade_reads_lambda_as_one_minus_the_threshold() -> None:
    source, quality, cost = _source()
    policy = constant_lambda_policy("threshold_cascade", 0.3, 2)  # escalate while q_post < 0.7
    result = rollout(policy, source, quality, cost)
    escalated = source.q_post[:, 0] < 0.7
    np.testing.assert_array_equal(result.n_models_run, np.where(escalated, 2, 1))
    np.testing.assert_array_equal(result.answer_from, np.where(escalated, 1, 0))


@pytest.mark.parametrize("lam", [-0.01, 1.01, 5.0])
def test_threshold_lambda_outside_the_unit_interval(lam: float) -> None:
    with pytest.raises(ValueError, match=r"threshold_cascade's lambda is 1 - a quality threshold, in \[0, 1\]"):
        constant_lambda_policy("threshold_cascade", lam, 2)


@pytest.mark.parametrize("name", ["routing", "optimal_cascade", "cascade_routing"])
def test_negative_or_non_finite_lambda_is_refused(name: str) -> None:
    for lam in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="lambdas must be a non-empty list of finite non-negative numbers"):
            constant_lambda_policy(name, lam, 2)
    assert constant_lambda_policy(name, 1e3, 2).lambdas_[0] == 1e3  # no upper bound: quality per unit cost


def test_unknown_name() -> None:
    with pytest.raises(ValueError, match=r"unknown policy 'cascade'; choose from \['routing', 'threshold_cascade'"):
        constant_lambda_policy("cascade", 0.5, 2)


@pytest.mark.parametrize("name", CONSTANT_LAMBDA_POLICIES)
@pytest.mark.parametrize("depth", [0, -1])
def test_max_depth_below_one(name: str, depth: int) -> None:
    with pytest.raises(ValueError, match=f"max_depth must be at least 1, got {depth}"):
        constant_lambda_policy(name, 0.5, depth)
