"""Calibrated GPU-time cost model: the cost law, the output-length predictor, live use, the sklearn contract."""

from __future__ import annotations

import dataclasses
import math
import pickle
from typing import Any

import joblib
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from estimators.bounded_update import DEFAULT_MAX_LOG_STEP
from estimators.calibrated_cost import CostSample, GpuTimeCostModel, ModelCost, fit_linear_cost
from estimators.stage import QueryInfo, StageResult

# Engine seconds per request, per prompt token, per completion token after the first.
LAW = {"small": (0.010, 5e-5, 0.008), "big": (0.030, 2e-4, 0.025)}
GPUS = {"big": 2}
# Answer length is set by the kind of request, which the prompt's wording gives away.
KINDS = (("Answer yes or no:", 2), ("Give a one-sentence answer about", 25), ("Write a detailed essay on", 400))
TOPICS = ("rivers", "stars", "cells", "markets", "poetry", "engines", "forests", "music")
FAST: dict[str, Any] = {"n_text_features": 2**10, "gpus_per_replica": GPUS}


def prompt(kind: str, rng: np.random.Generator) -> str:
    return " ".join(rng.choice(TOPICS, size=6)) + f". {kind} {rng.choice(TOPICS)}."


def replay(n: int, *, seed: int, noise: float = 0.05, max_tokens: int = 1024) -> list[CostSample]:
    """Rows from ``LAW`` with multiplicative timing noise; ``big`` answers 1.5x longer than ``small``."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        model = "small" if i % 2 else "big"
        kind, length = KINDS[int(rng.integers(len(KINDS)))]
        prompt_tokens = int(np.exp(rng.uniform(np.log(10), np.log(4000))))
        text = prompt(kind, rng)
        scale = 1.5 if model == "big" else 1.0
        completion = int(min(max_tokens, max(1, round(length * scale * rng.lognormal(0.0, 0.15)))))
        overhead, prefill, decode = LAW[model]
        wall = (overhead + prefill * prompt_tokens + decode * max(completion - 1, 0)) * rng.lognormal(0.0, noise)
        rows.append(CostSample(
            model=model, prompt_text=text, prompt_tokens=prompt_tokens, completion_tokens=completion,
            max_tokens=max_tokens, prefill_s=0.3 * wall, decode_s=0.7 * wall,
            finish_reason="length" if completion == max_tokens else "stop",
        ))
    return rows


@pytest.fixture(scope="module")
def fitted() -> GpuTimeCostModel:
    return GpuTimeCostModel(**FAST).fit(replay(600, seed=0))


def fresh(model: GpuTimeCostModel) -> GpuTimeCostModel:
    """A copy whose live state the test may change without touching the module fixture."""
    out: GpuTimeCostModel = pickle.loads(pickle.dumps(model))
    return out


def stage(model: str, *, prompt_tokens: int = 100, completion_tokens: int = 20, wall_s: float = 0.5) -> StageResult:
    return StageResult(
        model=model, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, token_logprobs=(-0.1,),
        queue_s=3.0, prefill_s=0.25 * wall_s, decode_s=0.75 * wall_s,
    )


# -- the cost law ----------------------------------------------------------------------------------


@pytest.mark.parametrize("loss", ["relative", "absolute"])
def test_fit_linear_cost_recovers_exact_law(loss: str) -> None:
    rng = np.random.default_rng(0)
    p, c = rng.integers(1, 4000, 200), rng.integers(1, 1000, 200)
    wall = 0.02 + 1e-4 * p + 0.01 * (c - 1)
    np.testing.assert_allclose(fit_linear_cost(p, c, wall, loss=loss), (0.02, 1e-4, 0.01), rtol=1e-6)


def test_fit_linear_cost_keeps_coefficients_non_negative() -> None:
    """Time that falls with prompt length is noise, not a negative cost per token."""
    p = np.array([10.0, 100.0, 1000.0, 2000.0])
    wall = np.array([1.0, 0.9, 0.8, 0.7])
    coef = fit_linear_cost(p, np.ones(4), wall)
    assert min(coef) >= 0.0
    assert coef[1] == 0.0


def test_fitted_coefficients_are_the_law_times_gpus(fitted: GpuTimeCostModel) -> None:
    assert fitted.models_ == ("big", "small")
    for model, (overhead, prefill, decode) in LAW.items():
        gpus = GPUS.get(model, 1)
        cost = fitted.coef_[model]
        assert isinstance(cost, ModelCost) and cost.gpus == gpus
        assert cost.overhead_s == pytest.approx(overhead * gpus, rel=0.3)
        assert cost.prefill_s_per_token == pytest.approx(prefill * gpus, rel=0.1)
        assert cost.decode_s_per_token == pytest.approx(decode * gpus, rel=0.05)
    assert fitted.n_samples_ == {"big": 300, "small": 300}


def test_given_tokens_mape_is_at_the_noise_floor(fitted: GpuTimeCostModel) -> None:
    """5% log-normal timing noise has a MAPE of about 4%; the fitted law should add little to it."""
    scores = fitted.mape(replay(400, seed=1))
    assert set(scores) == {"big", "small"}
    for score in scores.values():
        assert score["given_tokens"] < 0.05
        # The answer length varies 15% around its kind's length, which no predictor can know.
        assert score["given_tokens"] < score["ex_ante"] < 0.25


def test_relative_loss_beats_absolute_on_mape() -> None:
    """With a few stalled requests (3x as long), weighting rows by 1/measured keeps the small ones fitted."""
    rng = np.random.default_rng(3)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        p = np.exp(rng.uniform(np.log(10), np.log(4000), n)).round()
        c = np.clip(np.exp(rng.normal(np.log(60), 1.3, n)).round(), 1, 1024)
        wall = (0.01 + 5e-5 * p + 0.008 * np.maximum(c - 1, 0)) * rng.lognormal(0, 0.05, n)
        return p, c, wall * np.where(rng.random(n) < 0.02, 3.0, 1.0)

    p, c, wall = draw(1000)
    p_test, c_test, wall_test = draw(5000)
    mape = {}
    for loss in ("relative", "absolute"):
        overhead, prefill, decode = fit_linear_cost(p, c, wall, loss=loss)
        predicted = overhead + prefill * p_test + decode * np.maximum(c_test - 1, 0)
        mape[loss] = np.mean(np.abs(predicted - wall_test) / wall_test)
    assert mape["relative"] < 0.8 * mape["absolute"]


def test_single_token_answers_fit_a_zero_decode_rate() -> None:
    rows = [CostSample("m", "hi", p, 1, 8, 0.001 * p, 0.0) for p in (10, 20, 40)]
    model = GpuTimeCostModel(n_text_features=16).fit(rows)
    assert model.coef_["m"].decode_s_per_token == 0.0
    assert model.coef_["m"].prefill_s_per_token == pytest.approx(0.001)


# -- the output-length predictor -------------------------------------------------------------------


def test_output_length_follows_the_prompt(fitted: GpuTimeCostModel) -> None:
    """Unseen prompts of each kind: the predicted length is the kind's (the median of its log-normal)."""
    rng = np.random.default_rng(11)
    for kind, length in KINDS:
        texts = [prompt(kind, rng) for _ in range(20)]
        for model, scale in (("small", 1.0), ("big", 1.5)):
            tokens = fitted.expected_completion_tokens(model, texts, np.full(20, 500), np.full(20, 1024))
            assert tokens.shape == (20,)
            assert np.median(tokens) == pytest.approx(length * scale, rel=0.3), (model, kind)


def test_output_length_follows_the_size_of_numbers_never_seen() -> None:
    """Column-sum answers grow with the digits of the operands; training and test operands share no
    value, so only the shape features (digits as 0) can carry what was learned."""
    rng = np.random.default_rng(3)

    def rows(values: range, n: int) -> list[CostSample]:
        out = []
        for _ in range(n):
            digits = int(rng.integers(1, 4))
            a, b = (int(rng.choice([v for v in values if len(str(v)) == digits])) for _ in range(2))
            completion = 10 * digits + 4
            out.append(CostSample("m", f"What is {a}+{b}?", 30, completion, 64, 0.01, 0.002 * completion))
        return out

    train_values, test_values = range(0, 1000, 2), range(1, 1000, 2)  # even operands in training, odd in test
    model = GpuTimeCostModel(n_text_features=2**10).fit(rows(train_values, 400))
    test = rows(test_values, 60)
    predicted = model.expected_completion_tokens("m", [r.prompt_text for r in test], [30] * 60, [64] * 60)
    actual = np.array([r.completion_tokens for r in test])
    assert np.mean(np.abs(predicted - actual) / actual) < 0.1


def test_output_length_is_clipped_to_max_tokens(fitted: GpuTimeCostModel) -> None:
    essay = prompt("Write a detailed essay on", np.random.default_rng(12))
    tokens = fitted.expected_completion_tokens("big", [essay, essay], [500, 500], [1024, 50])
    assert tokens[0] > 50 and tokens[1] == 50.0
    assert fitted.predict_gpu_s("big", [essay], [500], [50])[0] == pytest.approx(
        float(fitted.gpu_s_given_tokens("big", 500, 50))
    )
    # An empty answer is predicted as one token, never fewer.
    shy = GpuTimeCostModel(n_text_features=16).fit([CostSample("m", "x", 5, 0, 8, 0.01, 0.0)] * 3)
    assert shy.expected_completion_tokens("m", ["x"], [5], [8])[0] == 1.0


def test_aborted_rows_are_left_out_of_the_length_fit() -> None:
    finished = CostSample("m", "q", 10, 100, 200, 0.01, 1.0)
    aborted = CostSample("m", "q", 10, 3, 200, 0.01, 0.03, "abort")
    rows = [finished] * 4 + [aborted] * 4
    model = GpuTimeCostModel(n_text_features=16, length_alpha=1e-3).fit(rows)
    assert model.expected_completion_tokens("m", ["q"], [10], [200])[0] == pytest.approx(100, rel=0.01)
    assert model.n_samples_ == {"m": 8}


# -- live use --------------------------------------------------------------------------------------


def test_live_predict_uses_measured_cost_for_answered_models(fitted: GpuTimeCostModel) -> None:
    text = "stars cells music. Answer yes or no: rivers."
    query = QueryInfo(text=text, prompt_tokens=10, max_tokens=256)
    done = stage("big", prompt_tokens=3000, wall_s=0.5)
    cost = fitted.predict(query, ["small", "big"], {"big": done})
    assert cost.shape == (2,)
    assert cost[1] == pytest.approx(0.5 * 2)  # measured engine seconds times the two GPUs
    # The others are predicted ex ante at the prompt length a replica counted, not the estimate.
    assert cost[0] == pytest.approx(fitted.predict_gpu_s("small", [text], [3000], [256])[0])
    before = fitted.predict(query, ["small"], {})[0]
    assert before == pytest.approx(fitted.predict_gpu_s("small", [text], [10], [256])[0])
    assert before < cost[0]


def test_observe_moves_the_correction_toward_the_measured_ratio(fitted: GpuTimeCostModel) -> None:
    model = fresh(fitted)
    query = QueryInfo(text="Answer yes or no: stars.", prompt_tokens=100, max_tokens=64)
    law = float(model.gpu_s_given_tokens("small", 100, 20))
    before = model.predict(query, ["small", "big"], {})
    model.observe(query, stage("small", wall_s=1.5 * law))
    # One bounded step toward 1.5: the EWMA's (live_smoothing * 0.5), unless the cap binds first.
    k = math.exp(min(0.05 * 0.5, model.live_max_log_step))
    assert model.correction_["small"] == pytest.approx(k)
    assert model.correction_["big"] == 1.0
    after = model.predict(query, ["small", "big"], {})
    assert after[0] == pytest.approx(before[0] * k) and after[1] == before[1]
    assert float(model.gpu_s_given_tokens("small", 100, 20)) == pytest.approx(law * k)
    gauges = model.coefficients()["small"]
    assert gauges["correction"] == pytest.approx(k) and gauges["n_observed"] == 1.0


def test_current_rates_are_the_law_times_the_correction(fitted: GpuTimeCostModel) -> None:
    """What the controller exports as gauges, through the live protocol (estimators.stage.CostEstimator)."""
    model = fresh(fitted)
    query = QueryInfo(text="Answer yes or no: stars.", prompt_tokens=100, max_tokens=64)
    model.observe(query, stage("small", wall_s=1.5 * float(model.gpu_s_given_tokens("small", 100, 20))))
    rates, law, k = model.current_rates("small"), model.coef_["small"], model.correction_["small"]
    assert rates is not None and rates.correction == k and k > 1.0
    assert rates.prefill_s_per_token == pytest.approx(k * law.prefill_s_per_token)
    assert rates.decode_s_per_token == pytest.approx(k * law.decode_s_per_token)
    assert rates.overhead_s == pytest.approx(k * law.overhead_s)
    assert model.current_rates("huge") is None


def test_superseding_a_measurement_keeps_the_calibrated_law(fitted: GpuTimeCostModel) -> None:
    """A skewed startup stage moved the bounded correction a little; the calibrated law is the measurement."""
    model = fresh(fitted)
    query = QueryInfo(text="Answer yes or no: stars.", prompt_tokens=100, max_tokens=64)
    model.observe(query, stage("small", wall_s=10.0))
    before = model.current_rates("small")
    model.supersede_measurements("small")
    assert model.current_rates("small") == before and model.n_observed_["small"] == 1


def test_correction_stays_within_its_bounds_after_many_extreme_observations(fitted: GpuTimeCostModel) -> None:
    # A loose step cap, so that the bounds are reached at all.
    model = fresh(fitted).set_params(live_max_log_step=0.1)
    query = QueryInfo(text="Answer yes or no: stars.", prompt_tokens=100, max_tokens=64)
    law = float(model.coef_["small"].gpu_s(100, 20))
    for _ in range(500):
        model.observe(query, stage("small", wall_s=100.0 * law))
    assert model.correction_["small"] == 2.0
    for _ in range(500):
        model.observe(query, stage("small", wall_s=law / 100.0))
    assert model.correction_["small"] == 0.5
    # One wild stage moves the factor by one capped step.
    model.observe(query, stage("small", wall_s=1e6 * law))
    assert model.correction_["small"] == pytest.approx(0.5 * math.exp(0.1))


def test_a_model_pickled_before_the_step_cap_loads_with_the_default(fitted: GpuTimeCostModel) -> None:
    old = fresh(fitted)
    del old.__dict__["live_max_log_step"]
    loaded = pickle.loads(pickle.dumps(old))
    assert loaded.live_max_log_step == DEFAULT_MAX_LOG_STEP
    loaded.observe(QueryInfo(text="x", prompt_tokens=1, max_tokens=8), stage("small", wall_s=100.0))
    assert loaded.correction_["small"] == pytest.approx(math.exp(DEFAULT_MAX_LOG_STEP))


def test_zero_live_smoothing_freezes_the_model(fitted: GpuTimeCostModel) -> None:
    model = fresh(fitted).set_params(live_smoothing=0.0)
    query = QueryInfo(text="Answer yes or no: stars.", prompt_tokens=100, max_tokens=64)
    model.observe(query, stage("big", wall_s=50.0))
    assert model.correction_["big"] == 1.0 and model.n_observed_["big"] == 1


def test_observe_tracks_live_answer_lengths(fitted: GpuTimeCostModel) -> None:
    model = fresh(fitted)
    start = model.coefficients()["small"]
    query = QueryInfo(text="stars. Write a detailed essay on rivers.", prompt_tokens=100, max_tokens=1024)
    model.observe(query, stage("small", completion_tokens=1000))
    after = model.coefficients()["small"]
    step = min(0.05 * (1000 / start["completion_tokens"] - 1), model.live_max_log_step)
    assert after["completion_tokens"] == pytest.approx(start["completion_tokens"] * math.exp(step))
    assert after["expected_completion_tokens"] > start["expected_completion_tokens"]


def test_coefficients_lists_every_model_as_floats(fitted: GpuTimeCostModel) -> None:
    gauges = fitted.coefficients()
    assert set(gauges) == {"big", "small"}
    for model, values in gauges.items():
        assert set(values) == {
            "overhead_s", "prefill_s_per_token", "decode_s_per_token", "gpus", "correction",
            "completion_tokens", "expected_completion_tokens", "n_observed",
        }
        assert all(isinstance(v, float) for v in values.values())
        assert values["decode_s_per_token"] == fitted.coef_[model].decode_s_per_token


def test_unknown_model_is_refused_by_name(fitted: GpuTimeCostModel) -> None:
    query = QueryInfo(text="hi", prompt_tokens=1, max_tokens=8)
    assert fitted.knows("big") and not fitted.knows("huge")
    assert not GpuTimeCostModel().knows("big")
    with pytest.raises(ValueError, match="'huge' was not calibrated"):
        fitted.predict(query, ["small", "huge"], {})
    with pytest.raises(ValueError, match="'huge'"):
        fitted.predict(query, ["huge"], {"huge": stage("huge")})
    with pytest.raises(ValueError, match="'huge'"):
        fresh(fitted).observe(query, stage("huge"))
    with pytest.raises(ValueError, match="'huge'"):
        fitted.gpu_s_given_tokens("huge", 1, 1)
    with pytest.raises(ValueError, match="'huge'"):
        fitted.mape([CostSample("huge", "hi", 1, 1, 8, 0.1, 0.0)])


def test_unfitted_model_raises_not_fitted() -> None:
    with pytest.raises(NotFittedError):
        GpuTimeCostModel().predict(QueryInfo(text="hi", prompt_tokens=1, max_tokens=8), ["m"], {})
    with pytest.raises(NotFittedError):
        GpuTimeCostModel().coefficients()


def test_usd_prices_gpu_seconds(fitted: GpuTimeCostModel) -> None:
    priced = clone(fitted).set_params(usd_per_gpu_hour=2.5)
    np.testing.assert_allclose(priced.usd([3600.0, 36.0]), [2.5, 0.025])
    with pytest.raises(ValueError, match="usd_per_gpu_hour is None"):
        fitted.usd(1.0)


# -- input validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"n_text_features": 0}, "n_text_features"),
        ({"length_alpha": 0.0}, "length_alpha"),
        ({"loss": "squared"}, "loss"),
        ({"live_smoothing": 1.5}, "live_smoothing"),
        ({"live_bounds": (1.2, 2.0)}, "live_bounds"),
        ({"live_bounds": (0.5,)}, "live_bounds"),
        ({"live_max_log_step": 0.0}, "live_max_log_step"),
        ({"live_max_log_step": float("inf")}, "live_max_log_step"),
        ({"concurrency": 0}, "concurrency"),
        ({"gpus_per_replica": {"big": 0}}, r"gpus_per_replica\['big'\]"),
        ({"gpus_per_replica": [("big", 2)]}, "gpus_per_replica"),
        ({"usd_per_gpu_hour": -1.0}, "usd_per_gpu_hour"),
    ],
)
def test_bad_params_are_refused_at_fit(params: dict[str, object], match: str) -> None:
    model = GpuTimeCostModel(**params)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=match):
        model.fit(replay(4, seed=0))


def test_bad_fit_input_is_refused() -> None:
    with pytest.raises(ValueError, match="X is empty"):
        GpuTimeCostModel().fit([])
    with pytest.raises(ValueError, match=r"only CostSample rows, found \['dict'\]"):
        GpuTimeCostModel().fit([{"model": "m"}])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="iterable of CostSample"):
        GpuTimeCostModel().fit(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"models \['m'\] have only aborted rows"):
        GpuTimeCostModel().fit([CostSample("m", "q", 10, 3, 200, 0.01, 0.03, "abort")])


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"model": ""}, "model"),
        ({"prompt_tokens": -1}, "prompt_tokens"),
        ({"completion_tokens": 1.5}, "completion_tokens"),
        ({"completion_tokens": 300}, "exceeds max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"decode_s": float("nan")}, "decode_s"),
        ({"prefill_s": 0.0, "decode_s": 0.0}, "must be positive"),
        ({"finish_reason": "eos"}, "finish_reason"),
    ],
)
def test_cost_sample_validates_on_construction(change: dict[str, object], match: str) -> None:
    fields = {"model": "m", "prompt_text": "q", "prompt_tokens": 10, "completion_tokens": 5, "max_tokens": 200,
              "prefill_s": 0.01, "decode_s": 0.05, "finish_reason": "stop"}
    with pytest.raises(ValueError, match=match):
        CostSample(**{**fields, **change})  # type: ignore[arg-type]


def test_cost_sample_from_stage() -> None:
    query = QueryInfo(text="hi", prompt_tokens=1, max_tokens=64)
    row = CostSample.from_stage(query, stage("m", prompt_tokens=7, completion_tokens=9, wall_s=2.0))
    assert (row.prompt_text, row.prompt_tokens, row.completion_tokens, row.max_tokens) == ("hi", 7, 9, 64)
    assert row.wall_s == pytest.approx(2.0)


def test_vectorised_inputs_must_agree_in_length(fitted: GpuTimeCostModel) -> None:
    with pytest.raises(ValueError, match="differ in length"):
        fitted.predict_gpu_s("big", ["a", "b"], [1], [8, 8])
    with pytest.raises(ValueError, match="single string"):
        fitted.expected_completion_tokens("big", "a", [1], [8])


# -- scikit-learn contract -------------------------------------------------------------------------

def test_clone_and_params_round_trip(fitted: GpuTimeCostModel) -> None:
    copy = clone(fitted)
    assert copy.get_params() == fitted.get_params()
    assert not hasattr(copy, "coef_")
    copy.set_params(length_alpha=3.0, concurrency=8)
    assert copy.get_params()["length_alpha"] == 3.0 and fitted.length_alpha == 1.0
    assert copy.get_params()["concurrency"] == 8


def test_fit_leaves_params_alone_and_is_idempotent() -> None:
    gpus = {"big": 2}
    model = GpuTimeCostModel(n_text_features=2**8, gpus_per_replica=gpus)
    before = joblib.hash(model.get_params())
    rows = replay(60, seed=5)
    first = model.fit(rows).predict_gpu_s("big", ["Answer yes or no: stars."], [100], [64])
    assert joblib.hash(model.get_params()) == before and model.gpus_per_replica is gpus
    model.observe(QueryInfo(text="x", prompt_tokens=1, max_tokens=8), stage("big", wall_s=10.0))
    again = model.fit(rows).predict_gpu_s("big", ["Answer yes or no: stars."], [100], [64])
    np.testing.assert_array_equal(first, again)  # refitting also resets the live correction
    assert model.n_observed_["big"] == 0


@pytest.mark.parametrize("dumps_loads", [pickle, joblib], ids=["pickle", "joblib"])
def test_pickle_round_trip_gives_identical_predictions(
    fitted: GpuTimeCostModel, dumps_loads: object, tmp_path: object
) -> None:
    model = fresh(fitted)
    model.observe(QueryInfo(text="x", prompt_tokens=1, max_tokens=8), stage("small", wall_s=1.0))
    if dumps_loads is pickle:
        copy = pickle.loads(pickle.dumps(model))
    else:
        path = f"{tmp_path}/cost.joblib"
        joblib.dump(model, path)
        copy = joblib.load(path)
    held_out = replay(40, seed=7)
    assert copy.mape(held_out) == model.mape(held_out)
    query = QueryInfo(text=held_out[0].prompt_text, prompt_tokens=300, max_tokens=512)
    np.testing.assert_array_equal(copy.predict(query, ["big", "small"], {}), model.predict(query, ["big", "small"], {}))
    assert copy.coefficients() == model.coefficients()


def test_stages_without_engine_timing_neither_move_the_model_nor_bill_zero(fitted: GpuTimeCostModel) -> None:
    """Regression (reliability issue, finding 2): n > 1 and lists of prompts come back without vLLM's
    per-request metrics; a hundred of them left the correction where it was, and each is billed by the
    law given its tokens, not as free."""
    model = fresh(fitted)
    query = QueryInfo(text="Answer yes or no: stars.", prompt_tokens=100, max_tokens=64)
    untimed = dataclasses.replace(stage("small", completion_tokens=60), prefill_s=0.0, decode_s=0.0, timed=False,
                                  n_sequences=3)
    for _ in range(100):
        model.observe(query, untimed)
    assert model.correction_["small"] == 1.0 and model.n_observed_["small"] == 0
    billed = model.billed_gpu_s(untimed)
    assert billed == pytest.approx(float(model.gpu_s_given_tokens("small", 100, 60))) and billed > 0
    assert model.billed_gpu_s(stage("small", wall_s=0.5)) == pytest.approx(model.measured_gpu_s(stage("small")))
