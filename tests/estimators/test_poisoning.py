"""One client's requests have bounded influence on the live estimates (issue 12: estimates that can't be poisoned).

Every live estimator is anchored on honest measurements, then fed a hundred adversarial stages of one
shape (or a seeded mix of extreme values); each cost estimate must move by less than ``TOLERANCE`` and
each quality statistic by no more than the bound ``estimators.bounded_update`` derives. Honest change
is still learnt, in a number of observations derived from the same step cap.
"""

from __future__ import annotations

import dataclasses
import math
import pickle

import numpy as np
import pytest

from estimators.calibrated_cost import CostSample, GpuTimeCostModel
from estimators.logprob_quality import LogprobQuality
from estimators.stage import QueryInfo, StageResult
from estimators.token_cost import TokenCostModel

N_ADVERSARIAL = 100
TOLERANCE = 0.10  # the bar: a cost estimate moves by less than this after N_ADVERSARIAL requests

# Honest anchor: a 200-token prompt prefilled at 1 ms per token, a 21-token answer decoded at 10 ms per token.
PROMPT, COMPLETION, PREFILL_S_PER_TOKEN, DECODE_S_PER_TOKEN = 200, 21, 1e-3, 1e-2
# Queries the cost is predicted for: answer-heavy, prompt-heavy, balanced.
QUERIES = [QueryInfo("q", prompt_tokens=10, max_tokens=4096), QueryInfo("q", prompt_tokens=4000, max_tokens=1),
           QueryInfo("q", prompt_tokens=500, max_tokens=64)]


def _stage(prompt_tokens: int = PROMPT, completion_tokens: int = COMPLETION, prefill_s: float | None = None,
           decode_s: float | None = None, *, model: str = "m", **extra: object) -> StageResult:
    """An honest stage unless told otherwise."""
    prefill = PREFILL_S_PER_TOKEN * prompt_tokens if prefill_s is None else prefill_s
    decode = DECODE_S_PER_TOKEN * max(completion_tokens - 1, 0) if decode_s is None else decode_s
    return StageResult(model, prompt_tokens, completion_tokens, (-0.5,) * completion_tokens, 0.0, prefill, decode,
                       **extra)  # type: ignore[arg-type]


# Shapes a client can send. Timings are what the engine would report for them, or worse.
ADVERSARIAL = {
    "free prefill": _stage(4000, prefill_s=0.0),
    "near-free prefill (an unreported prefix-cache hit)": _stage(4000, prefill_s=1e-9),
    "huge prefill": _stage(1, prefill_s=1e3),
    "huge decode": _stage(completion_tokens=2, decode_s=1e6),
    "near-free decode": _stage(completion_tokens=4096, decode_s=1e-9),
    "two-token answers": _stage(completion_tokens=2),
    "one-token answers": _stage(completion_tokens=1),
    "empty answers": _stage(completion_tokens=0),
    "max-length answers": _stage(completion_tokens=4096),
    "max-length answers decoded slowly": _stage(completion_tokens=4096, decode_s=1e6),
    "short answers decoded fast": _stage(completion_tokens=2, decode_s=1e-9),
    "n > 1 (untimed)": _stage(completion_tokens=400, prefill_s=0.0, decode_s=0.0, timed=False, n_sequences=8),
}


def _fuzz(n: int, seed: int) -> list[StageResult]:
    """Extreme values of every field at once: timings log-uniform over 21 decades, tokens up to 10^5."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        prompt = int(rng.integers(0, 100_000))
        out.append(_stage(prompt, int(rng.integers(0, 100_000)), float(10 ** rng.uniform(-12, 9)),
                          float(10 ** rng.uniform(-12, 9))))
    return out


def _moved(before: float, after: float) -> float:
    return abs(after / before - 1.0)


# -- the interim cost model ------------------------------------------------------------------------------


def _anchored_token_cost() -> TokenCostModel:
    cost = TokenCostModel()
    cost.observe(QUERIES[0], _stage())  # the probe's first measurement: the anchor
    return cost


def _token_cost_estimates(cost: TokenCostModel) -> list[float]:
    rates = cost.current_rates("m")
    assert rates is not None
    predicted = [float(cost.predict(q, ["m"], {})[0]) for q in QUERIES]
    return [*predicted, rates.prefill_s_per_token, rates.decode_s_per_token, cost.rates["m"].completion_tokens]


@pytest.mark.parametrize("shape", list(ADVERSARIAL))
def test_a_hundred_requests_of_one_shape_move_the_token_cost_estimates_less_than_ten_percent(shape: str) -> None:
    cost = _anchored_token_cost()
    before = _token_cost_estimates(cost)
    for _ in range(N_ADVERSARIAL):
        cost.observe(QUERIES[0], ADVERSARIAL[shape])
    after = _token_cost_estimates(cost)
    assert max(_moved(b, a) for b, a in zip(before, after, strict=True)) < TOLERANCE


@pytest.mark.parametrize("seed", range(5))
def test_a_hundred_requests_of_extreme_values_move_the_token_cost_estimates_less_than_ten_percent(seed: int) -> None:
    cost = _anchored_token_cost()
    before = _token_cost_estimates(cost)
    for stage in _fuzz(N_ADVERSARIAL, seed):
        cost.observe(QUERIES[0], stage)
    after = _token_cost_estimates(cost)
    assert max(_moved(b, a) for b, a in zip(before, after, strict=True)) < TOLERANCE


def test_fully_cached_prompts_teach_no_prefill_rate() -> None:
    """A prompt served from the prefix cache was not prefilled: its time says nothing of the rate."""
    cost = _anchored_token_cost()
    before = cost.rates["m"].prefill_s_per_token
    cached = _stage(4000, prefill_s=1e-4, cached_prompt_tokens=4000)
    for _ in range(N_ADVERSARIAL):
        cost.observe(QUERIES[0], cached)
    assert cost.rates["m"].prefill_s_per_token == before


def test_partly_cached_prompts_are_rated_on_their_uncached_tokens() -> None:
    cost = _anchored_token_cost()
    before = cost.rates["m"].prefill_s_per_token
    honest = _stage(4000, prefill_s=PREFILL_S_PER_TOKEN * 96, cached_prompt_tokens=3904)
    for _ in range(N_ADVERSARIAL):
        cost.observe(QUERIES[0], honest)
    assert cost.rates["m"].prefill_s_per_token == pytest.approx(before)  # 96 tokens at the honest rate


def test_a_fully_cached_first_measurement_is_no_anchor() -> None:
    cost = TokenCostModel()
    cost.observe(QUERIES[0], _stage(prefill_s=1e-4, cached_prompt_tokens=PROMPT))
    assert not cost.knows("m")


# -- the calibrated cost model ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def calibrated() -> GpuTimeCostModel:
    """A law that is exactly the honest anchor's (no overhead), fitted on noiseless rows."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(60):
        p, c = int(rng.integers(10, 4000)), int(rng.integers(2, 400))
        rows.append(CostSample(model="m", prompt_text=f"prompt {i}", prompt_tokens=p, completion_tokens=c,
                               max_tokens=4096, prefill_s=PREFILL_S_PER_TOKEN * p,
                               decode_s=DECODE_S_PER_TOKEN * (c - 1)))
    return GpuTimeCostModel(n_text_features=2**8).fit(rows)


def _fresh(model: GpuTimeCostModel) -> GpuTimeCostModel:
    out: GpuTimeCostModel = pickle.loads(pickle.dumps(model))
    return out


def _calibrated_estimates(model: GpuTimeCostModel) -> list[float]:
    predicted = [float(model.predict(q, ["m"], {})[0]) for q in QUERIES]
    gauges = model.coefficients()["m"]
    return [*predicted, gauges["correction"], gauges["completion_tokens"], gauges["expected_completion_tokens"]]


@pytest.mark.parametrize("shape", list(ADVERSARIAL))
def test_a_hundred_requests_of_one_shape_move_the_calibrated_estimates_less_than_ten_percent(
    calibrated: GpuTimeCostModel, shape: str
) -> None:
    model = _fresh(calibrated)
    before = _calibrated_estimates(model)
    for _ in range(N_ADVERSARIAL):
        model.observe(QUERIES[0], ADVERSARIAL[shape])
    after = _calibrated_estimates(model)
    assert max(_moved(b, a) for b, a in zip(before, after, strict=True)) < TOLERANCE


@pytest.mark.parametrize("seed", range(3))
def test_a_hundred_requests_of_extreme_values_move_the_calibrated_estimates_less_than_ten_percent(
    calibrated: GpuTimeCostModel, seed: int
) -> None:
    model = _fresh(calibrated)
    before = _calibrated_estimates(model)
    for i, stage in enumerate(_fuzz(N_ADVERSARIAL, seed)):
        model.observe(QueryInfo("x " * (i % 50), prompt_tokens=stage.prompt_tokens, max_tokens=100_000), stage)
    after = _calibrated_estimates(model)
    assert max(_moved(b, a) for b, a in zip(before, after, strict=True)) < TOLERANCE


def test_cached_prompts_do_not_pull_the_correction_down(calibrated: GpuTimeCostModel) -> None:
    """The law prices the tokens the engine prefilled: an honest cache hit matches it."""
    model = _fresh(calibrated)
    honest = _stage(4000, prefill_s=PREFILL_S_PER_TOKEN * 96, cached_prompt_tokens=3904)
    for _ in range(N_ADVERSARIAL):
        model.observe(QUERIES[0], honest)
    assert model.correction_["m"] == pytest.approx(1.0, rel=1e-3)


# -- the interim quality estimator -----------------------------------------------------------------------


def _answer(mean_logprob: float | None, model: str = "m") -> StageResult:
    """An answer whose post-hoc quality is exp(mean_logprob); None: an empty answer (quality 0)."""
    logprobs = () if mean_logprob is None else (mean_logprob,) * 8
    return StageResult(model, 20, len(logprobs), logprobs, 0.0, 0.01, 0.01)


QUALITY_ADVERSARIAL = {
    "certain answers": _answer(0.0),  # quality 1: "repeat after me"
    "empty answers": _answer(None),  # quality 0
    "floored logprobs": _answer(float("-inf")),
    "nan logprobs": StageResult("m", 20, 3, (float("nan"),) * 3, 0.0, 0.01, 0.01),
}


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


@pytest.mark.parametrize("honest_n", [0, 1000])
@pytest.mark.parametrize("shape", list(QUALITY_ADVERSARIAL))
def test_a_hundred_answers_of_one_shape_move_the_quality_prior_a_bounded_amount(shape: str, honest_n: int) -> None:
    """The ex-ante mean's odds and its variance move by a factor of at most exp(N * max_log_step), on a
    fresh controller (the prior alone) as on one that learnt from a thousand honest answers."""
    quality = LogprobQuality()
    for _ in range(honest_n):
        quality.observe(QUERIES[0], _answer(math.log(0.4)))
    mean0, var0 = quality.ex_ante("m")
    for _ in range(N_ADVERSARIAL):
        quality.observe(QUERIES[0], QUALITY_ADVERSARIAL[shape])
    mean1, var1 = quality.ex_ante("m")
    bound = N_ADVERSARIAL * quality.max_log_step
    assert abs(_logit(mean1) - _logit(mean0)) <= bound + 1e-12
    assert abs(math.log(var1 / var0)) <= bound + 1e-12
    assert abs(mean1 - mean0) <= _sigmoid(_logit(mean0) + bound) - mean0 + 1e-12  # the same, in probability


# -- honest change is still learnt -----------------------------------------------------------------------
# The count is derived (tests/estimators/test_bounded_update.py): ceil(ln(factor) / max_log_step)
# observations close a factor's gap down to the region where the step is an EWMA's, max_log_step /
# weight in relative error.


def _honest_count(factor: float, max_log_step: float) -> int:
    return math.ceil(abs(math.log(factor)) / max_log_step)


def test_a_replica_that_became_twice_as_slow_is_learnt_in_the_derived_count() -> None:
    cost = _anchored_token_cost()
    s, w = cost.max_log_step, cost.smoothing
    slow = _stage(decode_s=2 * DECODE_S_PER_TOKEN * (COMPLETION - 1))
    for _ in range(_honest_count(2.0, s)):
        cost.observe(QUERIES[0], slow)
    assert 1.0 <= 2 * DECODE_S_PER_TOKEN / cost.rates["m"].decode_s_per_token <= 1.0 + s / w


def test_answers_twice_as_long_are_learnt_in_the_derived_count() -> None:
    cost = _anchored_token_cost()
    s, w = cost.max_log_step, cost.smoothing
    longer = _stage(completion_tokens=2 * COMPLETION)
    for _ in range(_honest_count(2.0, s)):
        cost.observe(QUERIES[0], longer)
    assert 1.0 <= 2 * COMPLETION / cost.rates["m"].completion_tokens <= 1.0 + s / w
    assert cost.rates["m"].decode_s_per_token == pytest.approx(DECODE_S_PER_TOKEN)  # the rate stayed honest


def test_a_noisy_twice_as_slow_replica_is_learnt_in_twice_the_derived_count() -> None:
    """With timing noise the steps near the target partly cancel, so the approach is slower than the
    noise-free count; the estimate settles between the noise's median and mean, a spread**2 / 2 apart."""
    rng = np.random.default_rng(0)
    spread = 0.1
    cost = _anchored_token_cost()
    median_s = 2 * DECODE_S_PER_TOKEN * (COMPLETION - 1) * math.exp(-(spread**2) / 2)
    for _ in range(2 * _honest_count(2.0, cost.max_log_step)):
        cost.observe(QUERIES[0], _stage(decode_s=median_s * rng.lognormal(0.0, spread)))
    assert cost.rates["m"].decode_s_per_token / (2 * DECODE_S_PER_TOKEN) == pytest.approx(1.0, abs=spread**2 * 2)


def test_the_calibrated_correction_learns_a_genuine_drift_in_the_derived_count(calibrated: GpuTimeCostModel) -> None:
    model = _fresh(calibrated)
    s, w = model.live_max_log_step, model.live_smoothing
    slower = _stage(prefill_s=1.5 * PREFILL_S_PER_TOKEN * PROMPT, decode_s=1.5 * DECODE_S_PER_TOKEN * (COMPLETION - 1))
    law = float(model.gpu_s_given_tokens("m", PROMPT, COMPLETION))
    target = slower.gpu_s / law
    for _ in range(_honest_count(target, s)):
        model.observe(QUERIES[0], slower)
    assert 1.0 <= target / model.correction_["m"] <= 1.0 + s / w


def test_the_quality_prior_learns_a_confident_model_in_the_derived_count() -> None:
    """In log-odds: ceil(|logit(q) - logit(prior)| / max_log_step) answers bring the prior within
    max_log_step / smoothing of q in log-odds, so within a quarter of that in probability."""
    quality = LogprobQuality()
    s, w, q = quality.max_log_step, quality.smoothing, 0.8
    for _ in range(math.ceil(abs(_logit(q) - _logit(quality.prior_mean)) / s)):
        quality.observe(QUERIES[0], _answer(math.log(q)))
    assert 0.0 <= q - quality.ex_ante("m")[0] <= s / (4 * w)


# -- what a replica reports ------------------------------------------------------------------------------


def _response(**metrics: object) -> dict[str, object]:
    return {"choices": [{"text": "4"}], "usage": {"prompt_tokens": 50, "completion_tokens": 5},
            "metrics": {"queue_time_ms": 1.0, "time_to_first_token_ms": 20.0, "generation_time_ms": 40.0, **metrics}}


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), -5.0])
@pytest.mark.parametrize("field", ["time_to_first_token_ms", "generation_time_ms"])
def test_a_timing_that_is_no_duration_makes_the_stage_untimed(field: str, bad: float) -> None:
    """NaN, infinite or negative milliseconds measured nothing: billed from the rates, never learnt from."""
    stage = StageResult.from_response("m", "completions", _response(**{field: bad}))
    assert not stage.timed and not stage.measures_rates
    assert stage.prefill_s == 0.0 and stage.decode_s == 0.0


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -5.0])
def test_a_queue_time_that_is_no_duration_reads_zero(bad: float) -> None:
    stage = StageResult.from_response("m", "completions", _response(queue_time_ms=bad))
    assert stage.queue_s == 0.0 and stage.timed


@pytest.mark.parametrize("field", ["prefill_s", "decode_s", "queue_s"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0])
def test_a_stage_refuses_timings_that_are_no_duration(field: str, bad: float) -> None:
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(_stage(), **{field: bad})


def test_the_parser_reads_cached_prompt_tokens() -> None:
    response = _response()
    assert StageResult.from_response("m", "completions", response).cached_prompt_tokens == 0  # not reported
    response["usage"] = {"prompt_tokens": 50, "completion_tokens": 5, "prompt_tokens_details": None}
    assert StageResult.from_response("m", "completions", response).cached_prompt_tokens == 0
    response["usage"] = {"prompt_tokens": 50, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 32}}
    stage = StageResult.from_response("m", "completions", response)
    assert stage.cached_prompt_tokens == 32 and stage.uncached_prompt_tokens == 18
    with pytest.raises(ValueError, match="cached_prompt_tokens"):
        dataclasses.replace(stage, cached_prompt_tokens=51)
