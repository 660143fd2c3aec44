"""The cascade loop with injected replica calls (fakes: a replica that fails or stalls on demand).

Real-stack counterparts of every case run through HTTP in ``test_serving_e2e.py``.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest

from estimators.logprob_quality import LogprobQuality
from estimators.stage import QueryInfo, StageResult
from estimators.token_cost import ModelRates, TokenCostModel
from serve.cascade_run import CascadeKnobs, parse_knobs, run_cascade
from serve.errors import ApiError

MODELS = ["small", "medium", "large"]
# Per model: mean token logprob of its answers and GPU seconds per token (decode).
LOGPROB = {"small": -2.0, "medium": -0.7, "large": -0.1}
DECODE_S = {"small": 0.001, "medium": 0.004, "large": 0.02}


def _response(model: str, endpoint: str, n_tokens: int = 8) -> dict[str, Any]:
    lp = LOGPROB[model]
    logprobs: dict[str, Any]
    if endpoint == "chat":
        logprobs = {"content": [{"token": "a", "logprob": lp, "bytes": [97], "top_logprobs": []}] * n_tokens}
        choice = {"index": 0, "message": {"role": "assistant", "content": f"answer of {model}"},
                  "logprobs": logprobs, "finish_reason": "length"}
    else:
        choice = {"index": 0, "text": f"answer of {model}", "logprobs": {"token_logprobs": [lp] * n_tokens},
                  "finish_reason": "length"}
    decode_ms = DECODE_S[model] * (n_tokens - 1) * 1e3
    return {
        "id": f"cmpl-{model}", "object": "chat.completion", "created": 0, "model": model, "choices": [choice],
        "usage": {"prompt_tokens": 10, "completion_tokens": n_tokens, "total_tokens": 10 + n_tokens},
        "metrics": {"queue_time_ms": 1.0, "time_to_first_token_ms": DECODE_S[model] * 1e3,
                    "generation_time_ms": decode_ms},
    }


class FakeFleet:
    """Replica calls by model; ``fail``/``stall``/``reject`` make chosen models misbehave."""

    def __init__(self, fail: set[str] = frozenset(), stall: set[str] = frozenset(),  # type: ignore[assignment]
                 reject: dict[str, dict[str, Any]] | None = None) -> None:
        self.fail, self.stall, self.reject = fail, stall, reject or {}
        self.calls: list[tuple[str, dict[str, Any]]] = []

    async def __call__(self, model: str, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append((model, body))
        if model in self.fail:
            raise RuntimeError("replica died")
        if model in self.stall:
            await asyncio.sleep(60)
        if model in self.reject:
            return self.reject[model]
        return _response(model, endpoint, int(body.get("max_tokens", 8)))


def _estimators() -> tuple[LogprobQuality, TokenCostModel]:
    cost = TokenCostModel(rates={m: ModelRates(DECODE_S[m] / 10, DECODE_S[m], 8.0) for m in MODELS})
    return LogprobQuality(prior_mean=0.6, prior_sd=0.3), cost


def _run(fleet: FakeFleet, lam: float, *, depth: int = 3, policy: str = "cascade_routing",
         endpoint: str = "chat", body: dict[str, Any] | None = None, timeout_s: float = 5.0) -> Any:
    quality, cost = _estimators()
    body = body or {"model": "cascade", "messages": [{"role": "user", "content": "2+2?"}], "max_tokens": 8}
    knobs = CascadeKnobs(policy=policy, lambda_=lam, max_depth=depth)  # type: ignore[arg-type]
    return asyncio.run(run_cascade(endpoint, body, MODELS, fleet, quality, cost, knobs, stage_timeout_s=timeout_s))


def test_lambda_zero_escalates_to_the_most_confident_answer() -> None:
    fleet = FakeFleet()
    out = _run(fleet, 0.0)
    assert [m for m, _ in fleet.calls][0] == "small"  # cheapest first
    assert out.served_model == "large" and out.response["model"] == "large"
    trace = out.response["cascade"]["stages"]
    assert [s["decision"] for s in trace][-1] == "accept"
    assert all(s["decision"] == "escalate" for s in trace[:-1])
    usage = out.response["usage"]
    assert usage["completion_tokens"] == 8 * len(trace) and usage["total_tokens"] == 18 * len(trace)
    assert out.response["cascade"]["total_gpu_ms"] == round(sum(s["gpu_ms"] for s in trace), 3)
    assert "logprobs" not in out.response["choices"][0]  # the client did not ask for them
    assert "metrics" not in out.response


class SubMicrosecondFleet(FakeFleet):
    """Stages whose GPU time is below the trace's 1 µs resolution, where rounding could disagree."""

    async def __call__(self, model: str, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        response = await super().__call__(model, endpoint, body)
        response["metrics"] = {"queue_time_ms": 0.0, "time_to_first_token_ms": 0.0002, "generation_time_ms": 0.0002}
        return response


def test_total_gpu_ms_is_the_sum_of_the_stage_values_shown() -> None:
    out = _run(SubMicrosecondFleet(), 0.0)
    trace = out.response["cascade"]["stages"]
    assert len(trace) == 3
    # Three stages of 0.4 µs each: rounding the true sum would say 0.001 ms, the stages say 0.
    assert out.response["cascade"]["total_gpu_ms"] == round(sum(s["gpu_ms"] for s in trace), 3) == 0.0


def test_huge_lambda_stays_on_the_cheapest() -> None:
    fleet = FakeFleet()
    out = _run(fleet, 1e9)
    assert [m for m, _ in fleet.calls] == ["small"]
    assert out.served_model == "small" and out.response["cascade"]["stages"][0]["decision"] == "accept"


def test_trace_shows_the_ex_ante_costs_cheapest_first() -> None:
    out = _run(FakeFleet(), 1e9)
    estimates = out.response["cascade"]["cost_estimates_gpu_ms"]
    assert list(estimates) == ["small", "medium", "large"]
    _, cost = _estimators()
    body = {"model": "cascade", "messages": [{"role": "user", "content": "2+2?"}], "max_tokens": 8}
    expected = cost.predict(QueryInfo.from_request("chat", body), MODELS, {})
    assert list(estimates.values()) == [round(float(c) * 1e3, 3) for c in expected]


def test_forgotten_model_has_no_cost_until_measured_again() -> None:
    _, cost = _estimators()
    cost.forget("small")
    assert not cost.knows("small") and cost.knows("large")
    with pytest.raises(ValueError, match="no cost measurement for model 'small'"):
        cost.predict(_query(), ["small"], {})
    cost.forget("never-measured")  # no error: nothing to drop


def test_routing_policy_runs_exactly_one_model_and_depth_caps_stages() -> None:
    fleet = FakeFleet()
    assert len(_run(fleet, 0.0, policy="routing").stages) == 1
    fleet = FakeFleet()
    assert len(_run(fleet, 0.0, depth=2).stages) == 2


def test_fixed_order_cascade_climbs_in_cost_order() -> None:
    fleet = FakeFleet()
    _run(fleet, 0.0, policy="cascade")
    assert [m for m, _ in fleet.calls] == MODELS


def test_stage_bodies_ask_for_logprobs_and_drop_cascade_fields() -> None:
    fleet = FakeFleet()
    body = {"model": "cascade", "messages": [{"role": "user", "content": "x"}], "max_tokens": 8,
            "cascade": {"lambda": 0}, "stream": True, "stream_options": {"include_usage": True}}
    _run(fleet, 0.0, body=body)
    for model, sent in fleet.calls:
        assert sent["model"] == model and sent["logprobs"] is True
        assert not {"cascade", "stream", "stream_options"} & set(sent)


def test_completions_endpoint_reads_token_logprobs() -> None:
    body = {"model": "cascade", "prompt": "2+2=", "max_tokens": 8, "logprobs": 1}
    out = _run(FakeFleet(), 0.0, endpoint="completions", body=body)
    assert out.served_model == "large"
    assert "logprobs" in out.response["choices"][0]  # asked for: kept
    post = {s["model"]: s["quality_post_hoc"] for s in out.stages}
    assert post["large"] == pytest.approx(math.exp(LOGPROB["large"]))


def test_failed_replica_is_dropped_and_the_policy_re_decides() -> None:
    fleet = FakeFleet(fail={"small"})
    out = _run(fleet, 1e9)  # would stay on small; small dies: the next cheapest answers
    decisions = [(s["model"], s["decision"]) for s in out.stages]
    assert decisions[0] == ("small", "error") and "replica died" in out.stages[0]["error"]
    assert out.served_model == "medium"


def test_stalled_replica_times_out_and_is_skipped() -> None:
    fleet = FakeFleet(stall={"small"})
    out = _run(fleet, 1e9, timeout_s=0.2)
    assert out.stages[0]["decision"] == "error" and "0.2 s" in out.stages[0]["error"]
    assert out.served_model == "medium"


def test_a_request_may_tighten_the_stage_timeout_but_not_loosen_it() -> None:
    quality, cost = _estimators()
    body = {"model": "cascade", "messages": [{"role": "user", "content": "x"}], "max_tokens": 8}
    tight = CascadeKnobs("cascade_routing", 1e9, 3, stage_timeout_s=0.1)
    out = asyncio.run(run_cascade("chat", body, MODELS, FakeFleet(stall={"small"}), quality, cost, tight,
                                  stage_timeout_s=30))
    assert "0.1 s" in out.stages[0]["error"]
    loose = CascadeKnobs("cascade_routing", 1e9, 3, stage_timeout_s=999)
    out = asyncio.run(run_cascade("chat", body, MODELS, FakeFleet(stall={"small"}), quality, cost, loose,
                                  stage_timeout_s=0.1))
    assert "0.1 s" in out.stages[0]["error"]


def test_all_replicas_down_is_503_with_retry_after() -> None:
    with pytest.raises(ApiError) as info:
        _run(FakeFleet(fail=set(MODELS)), 0.0)
    assert info.value.status == 503 and info.value.headers() == {"Retry-After": "5"}


def test_bad_request_from_a_replica_is_returned_at_once() -> None:
    bad = {"error": {"message": "temperature must be non-negative", "type": "BadRequestError", "code": 400}}
    fleet = FakeFleet(reject={"small": bad})
    with pytest.raises(ApiError) as info:
        _run(fleet, 0.0)
    assert info.value.status == 400 and len(fleet.calls) == 1


def test_context_length_error_skips_only_that_model() -> None:
    too_long = {"error": {"message": "This model's maximum context length is 512 tokens", "code": 400}}
    fleet = FakeFleet(reject={"small": too_long})
    out = _run(fleet, 1e9)
    assert out.stages[0]["decision"] == "error" and out.served_model == "medium"
    with pytest.raises(ApiError) as info:
        _run(FakeFleet(reject=dict.fromkeys(MODELS, too_long)), 0.0)
    assert info.value.status == 400 and info.value.code == "context_length_exceeded"


def test_knobs_are_validated_strictly() -> None:
    default = CascadeKnobs(policy="cascade_routing", lambda_=0.5, max_depth=2)
    assert parse_knobs(None, default, MODELS) == default
    assert parse_knobs({"lambda": 0, "max_depth": 3}, default, MODELS) == CascadeKnobs("cascade_routing", 0.0, 3)
    pinned = parse_knobs({"models": ["large", "small"]}, default, MODELS)
    assert pinned.models == ("small", "large") and pinned.max_depth == 2
    for raw, param in [({"lamda": 1}, "cascade.lamda"), ({"lambda": -1}, "cascade.lambda"),
                       ({"lambda": float("nan")}, "cascade.lambda"), ({"max_depth": 4}, "cascade.max_depth"),
                       ({"max_depth": True}, "cascade.max_depth"), ({"policy": "x"}, "cascade.policy"),
                       ({"models": []}, "cascade.models"), ({"models": ["huge"]}, "cascade.models"),
                       ({"stage_timeout_s": 0}, "cascade.stage_timeout_s"),
                       ({"stage_timeout_s": "1"}, "cascade.stage_timeout_s"),
                       # Found by the live fuzz: a deadline no model can meet was a 503 blaming the fleet.
                       ({"request_timeout_s": 5e-324}, "cascade.request_timeout_s"),
                       ({"stage_timeout_s": 0.5}, "cascade.stage_timeout_s"),
                       ([1], "cascade")]:
        with pytest.raises(ApiError) as info:
            parse_knobs(raw, default, MODELS)
        assert info.value.status == 400 and info.value.param == param


def test_estimators_learn_online() -> None:
    quality, cost = LogprobQuality(), TokenCostModel()
    stage = StageResult("m", prompt_tokens=10, completion_tokens=5, token_logprobs=(-1.0,) * 5,
                        queue_s=0.5, prefill_s=0.01, decode_s=0.04)
    with pytest.raises(ValueError, match="no cost measurement"):
        cost.predict(_query(), ["m"], {})
    before = quality.ex_ante("m")
    quality.observe(_query(), stage)
    cost.observe(_query(), stage)
    after = quality.ex_ante("m")
    assert after[0] < before[0]  # pulled towards exp(-1) = 0.37 from the 0.5 prior
    assert cost.rates["m"].prefill_s_per_token == pytest.approx(0.001)
    assert cost.rates["m"].decode_s_per_token == pytest.approx(0.01)
    assert stage.gpu_s == pytest.approx(0.05)  # queueing excluded
    assert cost.predict(_query(), ["m"], {})[0] == pytest.approx(0.001 * 3 + 0.01 * 5)


def _query() -> Any:
    from estimators.stage import QueryInfo

    return QueryInfo(text="hello world", prompt_tokens=3, max_tokens=16)


def test_logprobs_are_asked_only_where_a_decision_can_use_them() -> None:
    fleet = FakeFleet()
    quality, cost = _estimators()
    body = {"model": "cascade", "messages": [{"role": "user", "content": "x"}], "max_tokens": 8}
    pinned = CascadeKnobs(policy="cascade_routing", lambda_=0.0, max_depth=1, models=("medium",))
    out = asyncio.run(run_cascade("chat", body, ["medium"], fleet, quality, cost, pinned, stage_timeout_s=5))
    assert [m for m, _ in fleet.calls] == ["medium"] and "logprobs" not in fleet.calls[0][1]
    assert out.stages[0]["quality_post_hoc"] is None
    assert quality.ex_ante("medium") == (quality.prior_mean, quality.prior_sd**2)  # nothing learned from it
    routed = CascadeKnobs(policy="routing", lambda_=0.0, max_depth=3)
    asyncio.run(run_cascade("chat", body, MODELS, fleet, quality, cost, routed, stage_timeout_s=5))
    assert "logprobs" not in fleet.calls[-1][1]


# -- threshold_cascade -----------------------------------------------------------------------------


class OverconfidentLargeFleet(FakeFleet):
    """``large`` answers with low token logprobs: the last model run is not the most confident one."""

    async def __call__(self, model: str, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        response = await super().__call__(model, endpoint, body)
        if model == "large":
            for token in response["choices"][0]["logprobs"]["content"]:
                token["logprob"] = -3.0
        return response


def test_threshold_cascade_knobs() -> None:
    default = CascadeKnobs(policy="cascade_routing", lambda_=0.5, max_depth=2)
    knobs = parse_knobs({"policy": "threshold_cascade", "lambda": 1}, default, MODELS)
    assert knobs == CascadeKnobs("threshold_cascade", 1.0, 2)
    assert parse_knobs({"policy": "threshold_cascade"}, default, MODELS).lambda_ == 0.5  # the default's lambda
    high_default = CascadeKnobs(policy="cascade_routing", lambda_=2.0, max_depth=2)
    for raw, fleet_default in [({"policy": "threshold_cascade", "lambda": 1.5}, default),
                               ({"policy": "threshold_cascade"}, high_default)]:
        with pytest.raises(ApiError) as info:
            parse_knobs(raw, fleet_default, MODELS)
        assert info.value.status == 400 and info.value.param == "cascade.lambda"
        assert "1 - the quality threshold, in [0, 1]" in info.value.message
    # Other policies read lambda as quality per GPU-second: no upper bound.
    assert parse_knobs({"policy": "cascade_routing", "lambda": 1.5}, default, MODELS).lambda_ == 1.5


def test_threshold_cascade_lambda_one_stays_on_the_cheapest() -> None:
    fleet = FakeFleet()
    out = _run(fleet, 1.0, policy="threshold_cascade")  # threshold 0: any answer is good enough
    assert [m for m, _ in fleet.calls] == ["small"]
    assert out.served_model == "small" and [s["decision"] for s in out.stages] == ["accept"]
    assert out.response["cascade"]["policy"] == "threshold_cascade"


def test_threshold_cascade_lambda_zero_climbs_to_max_depth_and_returns_the_last_answer() -> None:
    fleet = OverconfidentLargeFleet()
    out = _run(fleet, 0.0, policy="threshold_cascade", depth=3)  # threshold 1: nothing is good enough
    assert [m for m, _ in fleet.calls] == MODELS  # cost order
    post = {s["model"]: s["quality_post_hoc"] for s in out.stages}
    assert post["medium"] > post["large"]  # medium's answer is the most confident ...
    assert out.served_model == "large"  # ... but the baseline returns its last answer
    assert out.response["model"] == "large"
    assert out.response["choices"][0]["message"]["content"] == "answer of large"
    assert out.response["cascade"]["selected_stage"] == 2
    assert [s["decision"] for s in out.stages] == ["escalate", "escalate", "accept"]
    # The same fleet under cascade routing returns the best estimate instead.
    assert _run(OverconfidentLargeFleet(), 0.0, policy="cascade_routing").served_model == "medium"


def test_threshold_cascade_stops_at_max_depth() -> None:
    fleet = FakeFleet()
    out = _run(fleet, 0.0, policy="threshold_cascade", depth=2)
    assert [m for m, _ in fleet.calls] == ["small", "medium"]
    assert out.served_model == "medium"


def test_threshold_cascade_threshold_between_answers() -> None:
    """Post-hoc estimates are exp(mean logprob): small 0.135, medium 0.497. Threshold 0.5 (lambda 0.5) escalates
    past both; threshold 0.4 (lambda 0.6) accepts medium's answer."""
    fleet = FakeFleet()
    assert _run(fleet, 0.5, policy="threshold_cascade").served_model == "large"
    fleet = FakeFleet()
    assert _run(fleet, 0.6, policy="threshold_cascade").served_model == "medium"
    assert [m for m, _ in fleet.calls] == ["small", "medium"]


def test_threshold_cascade_skips_a_failed_model_and_returns_the_last_answer() -> None:
    fleet = FakeFleet(fail={"medium"})
    out = _run(fleet, 0.0, policy="threshold_cascade", depth=3)
    assert [(s["model"], s["decision"]) for s in out.stages] == [
        ("small", "escalate"), ("medium", "error"), ("large", "accept")]
    assert out.served_model == "large"


def _run_reporting_failures(fleet: FakeFleet) -> tuple[Any, list[str]]:
    quality, cost = _estimators()
    failed: list[str] = []
    body = {"model": "cascade", "messages": [{"role": "user", "content": "2+2?"}], "max_tokens": 8}
    out = asyncio.run(run_cascade("chat", body, MODELS, fleet, quality, cost, CascadeKnobs("cascade_routing", 1e9, 3),
                                  stage_timeout_s=5.0, on_stage_failure=lambda model, err: failed.append(model)))
    return out, failed


def test_a_replica_that_answers_an_error_body_is_not_a_failed_replica() -> None:
    """Regression (reliability issue, finding 1): a request one replica chokes on, answered with an
    error body, skips that model for this request only. Re-probing it would take it out of the
    cascade for every other client."""
    broken = {"error": {"message": "the model replica failed on this request (KeyError)", "code": 500}}
    out, failed = _run_reporting_failures(FakeFleet(reject={"small": broken}))
    assert out.stages[0]["decision"] == "error" and out.served_model == "medium"
    assert failed == []
    out, failed = _run_reporting_failures(FakeFleet(fail={"small"}))  # could not reach it: failed
    assert failed == ["small"]


def test_a_full_replica_queue_skips_the_model_without_marking_it_failed() -> None:
    """Busy is not dead: Serve's backpressure error on a stage skips that model for this request only."""
    serve_exceptions = pytest.importorskip("ray.serve.exceptions")

    class Full(FakeFleet):
        async def __call__(self, model: str, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
            if model == "small":
                self.calls.append((model, body))
                raise serve_exceptions.BackPressureError(16, 16)
            return await super().__call__(model, endpoint, body)

    out, failed = _run_reporting_failures(Full())
    assert out.stages[0]["decision"] == "error" and "at capacity" in out.stages[0]["error"]
    assert out.served_model == "medium" and failed == []
