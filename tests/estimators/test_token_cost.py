"""The interim live cost model (``estimators.token_cost``) through the live protocol the controller uses."""

from __future__ import annotations

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
