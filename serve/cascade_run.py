"""One request through the virtual model ``cascade``: estimate, run, re-estimate, accept or escalate.

Ray-free on purpose: the replicas are reached through an injected ``call(model, endpoint, body)``
coroutine (a Serve handle call in the controller, a fake in unit tests), so the loop's logic is tested
without an engine and its real-stack counterpart runs through HTTP.

The loop (algorithm-spec §4): the live estimators give every available model's quality (ex-ante, or
post-hoc from its answer) and cost in GPU-seconds; the policy (routing, cascade or cascade routing,
from ``routing/``) picks the next model or stops; a stage that fails or times out is dropped and the
policy re-decides without that model (``serve.errors`` says how each failure reads in the trace). The
answer returned is the answered model with the highest quality estimate. Every stage asks its replica
for token logprobs (the post-hoc feature); they are removed from the returned answer unless the client
asked for them.

``run_cascade`` calls one function per step: order the candidates by ex-ante cost, decide the next
model, run one stage (or record its failure), choose the answer, build the response and its trace.
"""

from __future__ import annotations

import asyncio
import functools
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from estimators.stage import CostEstimator, QualityEstimator, QueryInfo, StageResult
from routing import API_POLICY_NAMES, Estimates, Policy, constant_lambda_policy, core_policy_name
from serve.errors import RETRY_AFTER_S, ApiError, replica_failed, to_api_error

__all__ = ["CascadeKnobs", "CascadeOutcome", "parse_knobs", "run_cascade"]

# The API's policy names; routing.core_policy_name maps each to the policy it runs.
POLICIES: tuple[str, ...] = tuple(API_POLICY_NAMES)
Call = Callable[[str, str, dict[str, Any]], Awaitable[dict[str, Any]]]
FloatArray = NDArray[np.float64]

KNOBS = frozenset({"lambda", "max_depth", "policy", "models", "stage_timeout_s", "request_timeout_s"})
# The tightest timeout a request may ask for: below it no model can answer, and a deadline that can only
# expire would be answered with a 503 that blames the fleet for the client's own setting.
MIN_KNOB_TIMEOUT_S = 1.0


@dataclass(frozen=True, slots=True)
class CascadeKnobs:
    policy: str  # an API policy name (POLICIES)
    lambda_: float  # quality per GPU-second
    max_depth: int
    models: tuple[str, ...] | None = None  # restrict the candidates (None: the whole fleet)
    stage_timeout_s: float | None = None  # tighter than the fleet's own, per request (None: the fleet's)
    request_timeout_s: float | None = None  # likewise for the whole request


def parse_knobs(raw: Any, default: CascadeKnobs, fleet: Sequence[str]) -> CascadeKnobs:
    """The per-request ``"cascade": {...}`` object (sent with the SDK's ``extra_body``), strictly."""
    if raw is None:
        return default
    n_models = len(fleet)
    if not isinstance(raw, dict):
        raise ApiError(400, "cascade must be an object like {\"lambda\": 0.5, \"max_depth\": 2}", param="cascade")
    unknown = sorted(set(raw) - KNOBS)
    if unknown:
        raise ApiError(400, f"cascade.{unknown[0]}: unknown knob (known: {', '.join(sorted(KNOBS))})",
                       param=f"cascade.{unknown[0]}")
    timeouts = {name: _positive_seconds(raw, name) for name in ("stage_timeout_s", "request_timeout_s")}
    models = raw.get("models")
    if models is not None:
        if not isinstance(models, list) or not models or not all(isinstance(m, str) for m in models):
            raise ApiError(400, "cascade.models must be a non-empty list of model ids", param="cascade.models")
        strange = [m for m in models if m not in fleet]
        if strange:
            raise ApiError(400, f"cascade.models: unknown model {strange[0]!r}; served: {', '.join(fleet)}",
                           param="cascade.models")
        models = tuple(m for m in fleet if m in models)
    lam = raw.get("lambda", default.lambda_)
    if isinstance(lam, bool) or not isinstance(lam, int | float) or not math.isfinite(lam) or lam < 0:
        raise ApiError(400, f"cascade.lambda must be a finite number >= 0, got {lam!r}", param="cascade.lambda")
    depth = raw.get("max_depth", default.max_depth)
    if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= n_models:
        raise ApiError(400, f"cascade.max_depth must be an integer in [1, {n_models}], got {depth!r}",
                       param="cascade.max_depth")
    policy = raw.get("policy", default.policy)
    if policy not in POLICIES:
        raise ApiError(400, f"cascade.policy must be one of {', '.join(POLICIES)}, got {policy!r}",
                       param="cascade.policy")
    if policy == "threshold_cascade" and lam > 1:
        raise ApiError(400, f"cascade.lambda of threshold_cascade is 1 - the quality threshold, in [0, 1]; got {lam!r}",
                       param="cascade.lambda")
    if models is not None:
        depth = min(depth, len(models))
    return CascadeKnobs(policy=policy, lambda_=float(lam), max_depth=depth, models=models, **timeouts)


def _positive_seconds(raw: dict[str, Any], name: str) -> float | None:
    value = raw.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        raise ApiError(400, f"cascade.{name} must be a positive number, got {value!r}", param=f"cascade.{name}")
    if value < MIN_KNOB_TIMEOUT_S:
        raise ApiError(400, f"cascade.{name} must be at least {MIN_KNOB_TIMEOUT_S:g} s, got {value!r}",
                       param=f"cascade.{name}")
    return float(value)


def _policy(knobs: CascadeKnobs) -> Policy:
    return _policy_of(knobs.policy, knobs.lambda_, knobs.max_depth)


@functools.lru_cache(maxsize=256)
def _policy_of(name: str, lam: float, max_depth: int) -> Policy:
    """The policy of a knob setting; cached: decisions with gamma = 0 draw nothing, so it is stateless."""
    return constant_lambda_policy(core_policy_name(name), lam, max_depth)


@dataclass
class CascadeOutcome:
    """The answer to return and the trace of every stage."""

    response: dict[str, Any]
    served_model: str
    stages: list[dict[str, Any]]
    total_gpu_s: float
    decide_s: list[float] = field(default_factory=list)


@dataclass
class _Run:
    """One request's state while the loop runs: what was asked, what answered, what failed."""

    endpoint: str
    body: dict[str, Any]
    query: QueryInfo
    knobs: CascadeKnobs
    stage_timeout_s: float
    deadline: float | None  # time.monotonic() past which no stage starts or keeps running (the request timeout)
    depth: int  # stages the policy may run
    logprobs: bool  # every stage asks its replica for token logprobs
    stages: dict[str, StageResult] = field(default_factory=dict)  # answered, in the order they answered
    billed_gpu_s: dict[str, float] = field(default_factory=dict)  # per answered model (CostEstimator.billed_gpu_s)
    responses: dict[str, dict[str, Any]] = field(default_factory=dict)
    trace: list[dict[str, Any]] = field(default_factory=list)
    decide_s: list[float] = field(default_factory=list)
    failed: set[str] = field(default_factory=set)
    last_client_error: ApiError | None = None  # a model's context length was exceeded
    chosen: str | None = None
    timed_out: bool = False  # the request's deadline stopped the cascade


def _stage_body(endpoint: str, body: dict[str, Any], model: str, logprobs: bool) -> dict[str, Any]:
    out = {k: v for k, v in body.items() if k not in ("cascade", "stream", "stream_options")}
    out["model"] = model
    if logprobs and endpoint == "chat":
        out["logprobs"] = True
    elif logprobs and not out.get("logprobs"):
        out["logprobs"] = 1
    return out


def _strip_logprobs(body: dict[str, Any], response: dict[str, Any]) -> None:
    asked = body.get("logprobs")
    if asked:
        return
    for choice in response.get("choices") or []:
        choice.pop("logprobs", None)


async def run_cascade(
    endpoint: str,
    body: dict[str, Any],
    models: Sequence[str],
    call: Call,
    quality: QualityEstimator,
    cost: CostEstimator,
    knobs: CascadeKnobs,
    *,
    stage_timeout_s: float,
    on_stage_failure: Callable[[str, ApiError], None] | None = None,
    deadline: float | None = None,
) -> CascadeOutcome:
    """Run one cascade request over the available ``models`` (module docstring).

    ``deadline`` (a ``time.monotonic()`` value) is the request's own timeout: a stage still running then
    is cancelled, and no stage starts after it; the best answer so far is returned, or a 503 timeout
    when none came.

    The steps: order the candidates by ex-ante cost (:func:`_order_by_cost`); then, until the policy
    stops, decide what runs next (:func:`_decide_next`) and run it as one stage (:func:`_run_stage`),
    or pick the answer (:func:`_choose_answer`); build the response and its trace (:func:`_build_outcome`).

    Raises ``ApiError``: the replica's 4xx for a bad request, 503 with Retry-After when no model
    could answer.
    """
    if not models:
        raise ApiError(503, "no model replica is ready yet", retry_after_s=RETRY_AFTER_S)
    run = _start(endpoint, body, len(models), knobs, stage_timeout_s, deadline)
    policy = _policy(knobs)
    t0 = time.perf_counter()
    candidates, ante_ms = _order_by_cost(run.query, list(models), cost)
    while ordered := [m for m in candidates if m not in run.failed]:
        if run.decide_s:
            t0 = time.perf_counter()
        run_next, q_mean = _decide_next(run, ordered, quality, cost, policy)
        run.decide_s.append(time.perf_counter() - t0)
        if run_next is not None and _past_deadline(run):
            run.timed_out = True
            run_next = None  # out of time: the answers so far are all there is
        if run_next is None:
            run.chosen = _choose_answer(run, ordered, q_mean)
            break
        await _run_stage(run, ordered[run_next], float(q_mean[run_next]), call, quality, cost, on_stage_failure)
    return _build_outcome(run, quality, ante_ms)


def _start(endpoint: str, body: dict[str, Any], n_models: int, knobs: CascadeKnobs, stage_timeout_s: float,
           deadline: float | None) -> _Run:
    if knobs.stage_timeout_s is not None:
        stage_timeout_s = min(stage_timeout_s, knobs.stage_timeout_s)  # a request may only tighten it
    # Post-hoc estimates (token logprobs cost engine time) only where a decision can use them: with
    # a second model to escalate to. Pinned to one model, or routing, the request runs as sent.
    depth = 1 if knobs.policy == "routing" else knobs.max_depth
    logprobs = (depth >= 2 and n_models >= 2) or bool(body.get("logprobs"))
    return _Run(endpoint=endpoint, body=body, query=QueryInfo.from_request(endpoint, body), knobs=knobs,
                stage_timeout_s=stage_timeout_s, deadline=deadline, depth=depth, logprobs=logprobs)


def _past_deadline(run: _Run) -> bool:
    return run.deadline is not None and time.monotonic() >= run.deadline


def _stage_budget_s(run: _Run) -> float:
    """How long the next stage may take: the stage timeout, or less when the request's deadline is nearer."""
    if run.deadline is None:
        return run.stage_timeout_s
    return max(min(run.stage_timeout_s, run.deadline - time.monotonic()), 0.0)


def _order_by_cost(query: QueryInfo, candidates: list[str], cost: CostEstimator) -> tuple[list[str], dict[str, float]]:
    """The candidates cheapest first by ex-ante cost, and those costs in GPU-milliseconds (for the trace).

    The policies take models in increasing cost order (a cascade's order, the "cheapest new model runs
    first" rule): sorted once, so the answered models stay a prefix of it.
    """
    ante = cost.predict(query, candidates, {})
    by_cost = sorted(range(len(candidates)), key=lambda i: (float(ante[i]), i))
    ante_ms = {candidates[i]: round(float(ante[i]) * 1e3, 3) for i in by_cost}
    return [candidates[i] for i in by_cost], ante_ms


def _decide_next(
    run: _Run, ordered: list[str], quality: QualityEstimator, cost: CostEstimator, policy: Policy
) -> tuple[int | None, FloatArray]:
    """The index in ``ordered`` of the model to run next (None: stop), and every model's quality estimate."""
    stages = run.stages
    q_mean, q_var = quality.predict(run.query, ordered, stages)
    # Forced moves skip the search (same outcome): the first step must run a model, and with one
    # model left that is the one; with the depth spent or every model answered, stop.
    if len(stages) >= run.depth or all(m in stages for m in ordered):
        return None, q_mean
    if not stages and len(ordered) == 1:
        return 0, q_mean
    costs = cost.predict(run.query, ordered, stages)
    answered = np.array([m in stages for m in ordered])
    est = Estimates(q_mean=q_mean[None, :], cost=costs[None, :], q_var=q_var[None, :])
    return policy.decide(est, answered).run_next, q_mean


def _choose_answer(run: _Run, ordered: list[str], q_mean: FloatArray) -> str | None:
    """The answered model whose answer is returned: the best quality estimate (the cheaper on a tie)."""
    if not run.stages:
        return None
    if run.knobs.policy == "threshold_cascade":
        return list(run.stages)[-1]  # the baseline returns its last answer, not its best
    return max(run.stages, key=lambda m: (float(q_mean[ordered.index(m)]), -ordered.index(m)))


async def _run_stage(
    run: _Run,
    model: str,
    estimate: float,
    call: Call,
    quality: QualityEstimator,
    cost: CostEstimator,
    on_stage_failure: Callable[[str, ApiError], None] | None,
) -> None:
    """Run ``model`` on the request: record its answer and feed the estimators, or record its failure.

    Raises the replica's ``ApiError`` for a bad request (bad on every model). Any other failure
    (serve.errors) drops the model and the policy re-decides without it.
    """
    budget_s = _stage_budget_s(run)
    try:
        stage_call = call(model, run.endpoint, _stage_body(run.endpoint, run.body, model, run.logprobs))
        response = await asyncio.wait_for(stage_call, budget_s)
        if "error" in response:
            raise ApiError.from_body(response)
    except Exception as exc:
        err = to_api_error(exc, model=model, timeout_s=budget_s, phase="stage")
        if isinstance(exc, TimeoutError) and budget_s < run.stage_timeout_s:
            run.timed_out = True  # the request's deadline, not the stage timeout, cut this stage
        client_error = isinstance(exc, ApiError) and err.status < 500
        if client_error and err.code != "context_length_exceeded":
            raise err from None
        run.failed.add(model)
        run.trace.append({"model": model, "decision": "error", "quality_estimate": estimate, "error": err.message})
        if client_error:
            run.last_client_error = err
        # Slow is not dead (a long answer, a busy replica): a timed-out stage is cancelled, its replica
        # kept. A replica that answered with an error body is alive too (it may have choked on this
        # request alone): only a call that could not reach it marks it failed, or one client's odd
        # request would take a model out of the cascade for everyone.
        elif on_stage_failure is not None and replica_failed(exc):
            on_stage_failure(model, err)
        return
    result = StageResult.from_response(model, run.endpoint, response)
    run.stages[model] = result
    run.responses[model] = response
    if run.logprobs:
        quality.observe(run.query, result)
    cost.observe(run.query, result)
    run.billed_gpu_s[model] = cost.billed_gpu_s(result)
    run.trace.append({
        "model": model,
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "gpu_ms": round(run.billed_gpu_s[model] * 1e3, 3),
        "gpu_ms_measured": result.timed,  # false: the engine sent no timing; gpu_ms is the cost model's
        "queue_time_ms": round(result.queue_s * 1e3, 3),
        "time_to_first_token_ms": round(result.prefill_s * 1e3, 3),
        "generation_time_ms": round(result.decode_s * 1e3, 3),
        "quality_estimate": estimate,
        "quality_post_hoc": None,  # filled by _build_outcome, once the answer's own estimate is known
        "decision": "escalate",
    })


def _build_outcome(run: _Run, quality: QualityEstimator, ante_ms: dict[str, float]) -> CascadeOutcome:
    """The chosen answer with the request's usage and the ``cascade`` trace; raises when none was chosen."""
    chosen, stages, trace = run.chosen, run.stages, run.trace
    if chosen is None:
        if run.last_client_error is not None:
            raise run.last_client_error
        tried = "; ".join(f"{t['model']}: {t.get('error', '')}" for t in trace)
        if run.timed_out:
            raise ApiError(503, "no model answered within the request timeout" + (f": {tried}" if tried else ""),
                           retry_after_s=RETRY_AFTER_S)
        raise ApiError(503, "no model replica could answer" + (f": {tried}" if tried else ""),
                       retry_after_s=RETRY_AFTER_S)
    post, _ = quality.predict(run.query, list(stages), stages)
    post_by_model = dict(zip(stages, post.tolist(), strict=True))
    answered_stages = [t for t in trace if t["decision"] != "error"]
    for t in answered_stages:
        t["quality_post_hoc"] = post_by_model[t["model"]] if run.logprobs else None
    answered_stages[-1]["decision"] = "accept"
    selected = next(i for i, t in enumerate(trace) if t["model"] == chosen and t["decision"] != "error")
    response = dict(run.responses[chosen])
    _strip_logprobs(run.body, response)
    usage = {
        "prompt_tokens": sum(s.prompt_tokens for s in stages.values()),
        "completion_tokens": sum(s.completion_tokens for s in stages.values()),
    }
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    # Summing the rounded stage values keeps the trace self-consistent: a reader adding up
    # stages[*].gpu_ms gets total_gpu_ms exactly, not one unit off in the last digit.
    total_gpu_ms = round(sum(round(gpu_s * 1e3, 3) for gpu_s in run.billed_gpu_s.values()), 3)
    response["usage"] = usage
    response["model"] = chosen
    response["cascade"] = {
        "policy": run.knobs.policy,
        "lambda": run.knobs.lambda_,
        "max_depth": run.knobs.max_depth,
        # Why this order: the ex-ante costs the policy saw, cheapest first (it runs models in this order).
        "cost_estimates_gpu_ms": ante_ms,
        "stages": trace,
        "selected_stage": selected,
        "total_gpu_ms": total_gpu_ms,
        "deadline_reached": run.timed_out,  # the request timeout stopped it: a further stage might have run
    }
    response.pop("metrics", None)
    return CascadeOutcome(response=response, served_model=chosen, stages=trace,
                          total_gpu_s=sum(run.billed_gpu_s.values()), decide_s=run.decide_s)
