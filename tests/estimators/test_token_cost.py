"""The interim live cost model (``estimators.token_cost``) through the live protocol the controller uses."""

from __future__ import annotations

import math

import pytest

from estimators.stage import CostEstimator, CostRates, QueryInfo, StageResult
from estimators.token_cost import TokenCostModel

QUERY = QueryInfo(text="hello world", prompt_tokens=3, max_tokens=16)


def _stage(prefill_s: float, decode_s: float) -> StageResult:
    return StageResult("m", prompt_tokens=10, completion_tokens=5, token_logprobs=(-1.0,) * 5,
                       queue_s=0.5, prefill_s=prefill_s, decode_s=decode_s)


def test_current_rates_are_the_measured_rates() -> None:
    cost: CostEstimator = TokenCostModel()
    assert cost.current_rates("m") is None  # nothing measured yet
    cost.observe(QUERY, _stage(0.01, 0.04))
    rates = cost.current_rates("m")
    assert rates == CostRates(prefill_s_per_token=pytest.approx(0.001), decode_s_per_token=pytest.approx(0.01))
    assert rates is not None and rates.overhead_s is None and rates.correction is None


def test_a_superseded_measurement_is_forgotten_and_the_next_one_counts_alone() -> None:
    """Its first point is its rate: a skewed startup measurement would otherwise weigh for many stages."""
    cost = TokenCostModel()
    cost.observe(QUERY, _stage(0.1, 0.4))  # measured while another engine was loading
    cost.supersede_measurements("m")
    assert not cost.knows("m") and cost.current_rates("m") is None
    cost.observe(QUERY, _stage(0.01, 0.04))
    assert cost.rates["m"].decode_s_per_token == pytest.approx(0.01) and cost.rates["m"].n_stages == 1
    cost.supersede_measurements("never-measured")  # nothing to drop: no error


# -- observations that cannot poison the estimate (reliability issue, finding 2) -------------------------


def _adversarial(n: int) -> list[StageResult]:
    """Shapes a client can send that used to be booked as free: several sequences without the engine's
    timing (n > 1, a list of prompts), and single-token answers (no decode to measure)."""
    shapes = [
        StageResult("m", 10, 40, (), 0.0, 0.0, 0.0, timed=False, n_sequences=4),  # n=4: vLLM sends no metrics
        StageResult("m", 80, 16, (), 0.0, 0.0, 0.0, timed=False, n_sequences=8),  # a list of 8 prompts
        StageResult("m", 10, 1, (-0.1,), 0.0, 0.01, 0.0),  # max_tokens=1: prefill only, decode 0 s
    ]
    return [shapes[i % len(shapes)] for i in range(n)]


def test_a_hundred_adversarial_requests_do_not_move_the_decode_estimate() -> None:
    cost = TokenCostModel()
    for _ in range(5):
        cost.observe(QUERY, _stage(0.01, 0.04))
    before = cost.current_rates("m")
    for stage in _adversarial(100):
        cost.observe(QUERY, stage)
    after = cost.current_rates("m")
    assert before is not None and after is not None
    assert after.decode_s_per_token == before.decode_s_per_token  # 0 % moved (was driven toward 0)
    assert after.prefill_s_per_token == pytest.approx(before.prefill_s_per_token)  # single-token: honest prefill


def test_an_untimed_stage_is_billed_from_the_rates_not_as_free() -> None:
    cost = TokenCostModel()
    cost.observe(QUERY, _stage(0.01, 0.04))  # 1 ms per prompt token, 10 ms per decoded token
    n4 = StageResult("m", 10, 40, (), 0.0, 0.0, 0.0, timed=False, n_sequences=4)
    assert cost.billed_gpu_s(n4) == pytest.approx(0.001 * 10 + 0.01 * (40 - 4))
    assert cost.billed_gpu_s(_stage(0.01, 0.04)) == pytest.approx(0.05)  # timed: what the engine measured
    assert TokenCostModel().billed_gpu_s(n4) == 0.0  # nothing known of the model yet


def test_one_observation_moves_an_estimate_by_a_bounded_step() -> None:
    cost = TokenCostModel(smoothing=0.2, max_log_step=0.01)
    cost.observe(QUERY, _stage(0.01, 0.04))
    cost.observe(QUERY, _stage(0.01, 4.0))  # a 100x decode: one capped step
    assert cost.rates["m"].decode_s_per_token == pytest.approx(0.01 * math.exp(0.01))
    with pytest.raises(ValueError, match="max_log_step"):
        TokenCostModel(max_log_step=0.0)


def test_a_long_slow_answer_moves_the_decode_term_by_one_step_not_two() -> None:
    """Decode rate and answer length multiply in the prediction: pushed the same way, they share the cap."""
    cost = TokenCostModel(smoothing=0.2, max_log_step=0.01)
    cost.observe(QUERY, _stage(0.01, 0.04))
    before = cost.rates["m"].decode_s_per_token * cost.rates["m"].completion_tokens
    long_slow = StageResult("m", prompt_tokens=10, completion_tokens=500, token_logprobs=(), queue_s=0.0,
                            prefill_s=0.01, decode_s=1e3)
    cost.observe(QUERY, long_slow)
    after = cost.rates["m"].decode_s_per_token * cost.rates["m"].completion_tokens
    assert after / before == pytest.approx(math.exp(0.01))


def test_the_parser_marks_answers_without_engine_timing() -> None:
    one = {"choices": [{"message": {"content": "4"}}], "usage": {"prompt_tokens": 5, "completion_tokens": 1},
           "metrics": {"time_to_first_token_ms": 2.0, "generation_time_ms": 0.0, "queue_time_ms": 0.1}}
    stage = StageResult.from_response("m", "chat", one)
    assert stage.timed and stage.n_sequences == 1 and stage.measures_rates
    many = {"choices": [{"message": {"content": "4"}}] * 3, "usage": {"prompt_tokens": 5, "completion_tokens": 3}}
    stage = StageResult.from_response("m", "chat", many)
    assert not stage.timed and stage.n_sequences == 3 and not stage.measures_rates
