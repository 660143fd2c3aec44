"""The fleet file (``models.yaml``): strict typed config whose errors name the YAML key path.

Each entry of ``models`` is a Ray Serve LLM ``LLMConfig`` mapping (ray 2.60 field names), so Ray
Serve knowledge transfers; cascade-serve's own settings sit in the sibling ``cascade`` block. This
module is light (pydantic and PyYAML only): validating a fleet must not import Ray or vLLM. The
serving layer hands each entry to ``ray.serve.llm.LLMConfig`` when it builds the app.

    fleet = FleetConfig.from_file("models.yaml")   # ConfigError listing "models[2].engine_kwargs...: ..."
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cluster.accelerators import RAY_ACCELERATOR_TYPES, unknown_accelerator

__all__ = ["CascadeSettings", "ConfigError", "FleetConfig", "ModelHints", "ModelLoadingConfig", "ModelSpec", "SizeHint"]

# The options of ray.serve.deployment (ray 2.60), which LLMConfig.deployment_config forwards. Ray itself
# ignores unknown keys here, so a typo such as "autoscaling_confg" would silently do nothing.
DEPLOYMENT_OPTIONS = frozenset(
    {
        "name", "version", "num_replicas", "ray_actor_options", "placement_group_bundles",
        "placement_group_strategy", "placement_group_bundle_label_selector", "max_replicas_per_node",
        "user_config", "max_ongoing_requests", "max_queued_requests", "backpressure_config",
        "autoscaling_config", "graceful_shutdown_wait_loop_s", "graceful_shutdown_timeout_s",
        "health_check_period_s", "health_check_timeout_s", "logging_config", "request_router_config",
        "max_constructor_retry_count", "gang_scheduling_config", "deployment_actors",
        "rolling_update_percentage", "max_surge_percent",
    }
)  # fmt: skip


class ConfigError(ValueError):
    """A fleet file that cannot be used. ``problems`` holds one ``"key.path: message"`` per fault."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


class StrictModel(BaseModel):
    """Unknown keys are errors, values are immutable once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


class ModelLoadingConfig(StrictModel):
    """Which model to serve (Ray's ModelLoadingConfig)."""

    model_id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")  # the public name in /v1/models
    model_source: str | None = None  # hub id or local path (relative: to the fleet file); None = model_id
    tokenizer_source: str | None = None


class SizeHint(StrictModel):
    """A model's size where neither its ``config.json`` nor the Qwen2.5 table knows it (the names are
    ``config.json``'s, so they can be copied from there); ``cluster.architecture`` reads it."""

    parameters_billion: float = Field(gt=0)
    num_hidden_layers: int = Field(ge=1)
    num_attention_heads: int = Field(ge=1)
    num_key_value_heads: int | None = Field(default=None, ge=1)  # None: as many as attention heads
    head_dim: int = Field(ge=1)
    max_position_embeddings: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _grouped_heads(self) -> SizeHint:
        kv = self.num_key_value_heads
        if kv is not None and self.num_attention_heads % kv:
            raise ValueError(f"num_key_value_heads: {kv} does not divide num_attention_heads "
                             f"{self.num_attention_heads}")
        return self


class ModelHints(StrictModel):
    """cascade-serve's own settings of one model, beside Ray's fields (never passed to Ray)."""

    size: SizeHint | None = None


class ModelSpec(StrictModel):
    """One model of the fleet: a Ray Serve LLM ``LLMConfig`` mapping (field names of ray 2.60), plus an
    optional ``cascade`` block of cascade-serve's own (:class:`ModelHints`), which Ray never sees.

    ``server_cls`` and ``callback_config`` are not accepted: cascade-serve sets the server class.

    A model may share a GPU with others: ``placement_group_config: {bundles: [{GPU: 0.5}]}`` is Ray's
    fractional GPU, and ``engine_kwargs.gpu_memory_utilization`` the share of the GPU's memory its engine
    takes. Ray places fractions by their sum alone, so any replicas whose shares sum to one GPU may land
    on it together: each engine's memory fraction must stay within its GPU share.
    """

    model_loading_config: ModelLoadingConfig
    llm_engine: Literal["vLLM"] = "vLLM"
    engine_kwargs: dict[str, Any] = Field(default_factory=dict)  # vLLM engine arguments
    accelerator_type: str | None = None  # e.g. "H100"; None with accelerator_config {"kind": "cpu"}
    accelerator_config: dict[str, Any] | None = None
    placement_group_config: dict[str, Any] | None = None
    lora_config: dict[str, Any] | None = None
    deployment_config: dict[str, Any] = Field(default_factory=dict)  # ray.serve.deployment options
    runtime_env: dict[str, Any] | None = None
    experimental_configs: dict[str, Any] = Field(default_factory=dict)
    log_engine_metrics: bool = True
    cascade: ModelHints | None = None  # cascade-serve's own, stripped before Ray sees the entry

    @field_validator("engine_kwargs")
    @classmethod
    def _check_engine_kwargs(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in ("tensor_parallel_size", "pipeline_parallel_size", "max_model_len", "max_num_seqs"):
            if key in value and (not isinstance(value[key], int) or isinstance(value[key], bool) or value[key] < 1):
                raise ValueError(f"{key} must be a positive integer, got {value[key]!r}")
        memory = value.get("gpu_memory_utilization")
        if memory is not None and not (isinstance(memory, int | float) and 0.0 < memory <= 1.0):
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {memory!r}")
        return value

    @field_validator("deployment_config")
    @classmethod
    def _check_deployment_config(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in sorted(set(value) - DEPLOYMENT_OPTIONS):
            close = difflib.get_close_matches(key, DEPLOYMENT_OPTIONS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else " (not a ray.serve.deployment option)"
            raise ValueError(f"unknown deployment option {key!r}{hint}")
        return value

    @field_validator("accelerator_config")
    @classmethod
    def _check_accelerator_config(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and value.get("kind") not in ("cpu", "gpu", "tpu"):
            raise ValueError(f"accelerator_config.kind must be 'cpu', 'gpu' or 'tpu', got {value.get('kind')!r}")
        return value

    @field_validator("accelerator_type")
    @classmethod
    def _check_accelerator_type(cls, value: str | None) -> str | None:
        if value is not None and value not in RAY_ACCELERATOR_TYPES:
            raise ValueError(unknown_accelerator(value))
        return value

    @field_validator("placement_group_config")
    @classmethod
    def _check_placement_group_config(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return None
        def resources(bundle: object) -> bool:
            return isinstance(bundle, dict) and all(
                isinstance(a, int | float) and not isinstance(a, bool) and a >= 0 for a in bundle.values())

        bundles = value.get("bundles")
        if bundles is not None and not (isinstance(bundles, list) and all(resources(b) for b in bundles)):
            raise ValueError("bundles must be a list of resource mappings ({GPU: 0.5, CPU: 1}) of amounts >= 0")
        if value.get("bundle_per_worker") is not None and not resources(value["bundle_per_worker"]):
            raise ValueError("bundle_per_worker must be a resource mapping ({GPU: 1, CPU: 1}) of amounts >= 0")
        strategy = value.get("strategy", "PACK")
        if strategy not in ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"):
            raise ValueError(f"strategy must be PACK, SPREAD, STRICT_PACK or STRICT_SPREAD, got {strategy!r}")
        return value

    @model_validator(mode="after")
    def _shared_gpu(self) -> ModelSpec:
        share = self.gpu_share
        if not 0.0 < share < 1.0:
            return self
        where = f"a GPU share of {share:g} (placement_group_config)"
        if self.tensor_parallel_size * int(self.engine_kwargs.get("pipeline_parallel_size", 1)) > 1:
            raise ValueError(f"engine_kwargs.tensor_parallel_size: {where} holds one engine worker; tensor or "
                             "pipeline parallel engines need whole GPUs")
        memory = self.engine_kwargs.get("gpu_memory_utilization")
        if memory is None:
            raise ValueError(f"engine_kwargs.gpu_memory_utilization: required with {where}; vLLM's default "
                             "0.9 would take the memory of the replicas sharing the GPU")
        if memory > share + 1e-9:
            raise ValueError(f"engine_kwargs.gpu_memory_utilization: {memory:g} exceeds {where}; Ray may place "
                             "replicas beside it up to a whole GPU, and their memory fractions would sum past 1")
        return self

    @property
    def model_id(self) -> str:
        return self.model_loading_config.model_id

    @property
    def tensor_parallel_size(self) -> int:
        return int(self.engine_kwargs.get("tensor_parallel_size", 1))

    @property
    def gpu_share(self) -> float:
        """GPU of one engine worker's bundle: below 1 for a model that shares a GPU, else 1 (0 on CPU)."""
        if self.on_cpu:
            return 0.0
        pg = self.placement_group_config or {}
        bundles = [pg["bundle_per_worker"]] if pg.get("bundle_per_worker") else pg.get("bundles") or []
        gpus = [float(b.get("GPU", 0)) for b in bundles if float(b.get("GPU", 0)) > 0]
        return max(gpus) if gpus and max(gpus) < 1.0 else 1.0

    @property
    def on_cpu(self) -> bool:
        return self.accelerator_config is not None and self.accelerator_config.get("kind") == "cpu"

    @property
    def gpus_per_replica(self) -> float:
        """GPUs one replica holds: tensor x pipeline parallel size, each worker's share of a GPU counted
        (0 on CPU). An int where whole, so fingerprints made before shares existed stay as they were."""
        if self.on_cpu:
            return 0
        workers = self.tensor_parallel_size * int(self.engine_kwargs.get("pipeline_parallel_size", 1))
        share = self.gpu_share
        return workers if share == 1.0 else workers * share


class CascadeSettings(StrictModel):
    """cascade-serve's own settings: the policy of the virtual model ``cascade`` and its limits."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    policy: Literal["routing", "cascade", "threshold_cascade", "cascade_routing"] = "cascade_routing"
    max_depth: int | None = Field(default=None, ge=1)  # at most this many models per query
    budget_gpu_s: float | None = Field(default=None, gt=0)  # average GPU-seconds per query, fitted to
    lambda_: float | None = Field(default=None, ge=0, alias="lambda")  # or a fixed multiplier
    artifacts: Path | None = None  # folder written by `cascade calibrate`
    stage_timeout_s: float = Field(default=60.0, gt=0)  # per replica call
    # One request from arrival to its last byte (every stage, a stream included); a cascade that reaches
    # it returns its best answer so far.
    request_timeout_s: float = Field(default=180.0, gt=0)
    # Backpressure: requests the controller serves at once; more are shed at once with 503 + Retry-After.
    max_in_flight: int = Field(default=256, ge=1)
    max_body_bytes: int = Field(default=4 * 2**20, ge=1024)  # a larger request body is refused with 413
    # How the controller reaches the model replicas: Serve's gRPC transport between deployments, with
    # plain pickle for the JSON-shaped bodies (less CPU per stage than Ray actor calls: docs/serving_overhead.md),
    # or Ray actor calls (Serve's default; the choice where a firewall opens only Ray's ports between nodes,
    # since each replica's gRPC server listens on a port the OS picks).
    replica_transport: Literal["grpc", "actor"] = "grpc"

    @model_validator(mode="after")
    def _budget_or_lambda(self) -> CascadeSettings:
        if self.budget_gpu_s is not None and self.lambda_ is not None:
            raise ValueError("give budget_gpu_s or lambda, not both")
        return self


class FleetConfig(StrictModel):
    """The whole fleet file."""

    models: list[ModelSpec] = Field(min_length=1)
    cascade: CascadeSettings = Field(default_factory=CascadeSettings)

    @model_validator(mode="after")
    def _cross_checks(self) -> FleetConfig:
        seen: dict[str, int] = {}
        for i, spec in enumerate(self.models):
            if spec.model_id in seen:
                first = seen[spec.model_id]
                raise ValueError(
                    f"models[{i}].model_loading_config.model_id: {spec.model_id!r} repeats models[{first}]"
                    " (model ids must be unique)"
                )
            seen[spec.model_id] = i
        if self.cascade.max_depth is not None and self.cascade.max_depth > len(self.models):
            raise ValueError(
                f"cascade.max_depth: {self.cascade.max_depth} exceeds the {len(self.models)} models of the fleet"
            )
        return self

    @property
    def model_ids(self) -> list[str]:
        return [m.model_id for m in self.models]

    @property
    def total_gpus(self) -> float:
        """GPUs at the minimum replica count (autoscaling min_replicas, else num_replicas, else 1)."""
        return sum(m.gpus_per_replica * _min_replicas(m.deployment_config) for m in self.models)

    @classmethod
    def from_mapping(cls, data: Any, *, source: str = "<fleet>") -> FleetConfig:
        if not isinstance(data, dict):
            raise ConfigError(source, [f"the top level must be a mapping with 'models', got {type(data).__name__}"])
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(source, [_describe(err) for err in exc.errors()]) from None

    @classmethod
    def from_file(cls, path: str | Path) -> FleetConfig:
        """Load and validate a fleet file; ``ConfigError`` names the key path of every problem."""
        path = Path(path)
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise ConfigError(str(path), ["file not found"]) from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
            raise ConfigError(str(path), [f"{where}invalid YAML ({getattr(exc, 'problem', exc)})"]) from None
        return cls.from_mapping(data, source=str(path)).with_sources_relative_to(path.parent)

    def with_sources_relative_to(self, folder: Path) -> FleetConfig:
        """Local model sources written as relative paths (``./``, ``../``, ``.cache/…``) resolved
        against ``folder``, so a fleet file works from any working directory; hub ids such as
        ``Qwen/Qwen2.5-7B-Instruct`` and absolute paths are left as they are."""
        models = []
        for spec in self.models:
            source = spec.model_loading_config.model_source
            if source is not None and source.startswith("."):
                resolved = str((folder / source).resolve())
                loading = spec.model_loading_config.model_copy(update={"model_source": resolved})
                spec = spec.model_copy(update={"model_loading_config": loading})
            models.append(spec)
        cascade = self.cascade
        if cascade.artifacts is not None and not cascade.artifacts.is_absolute():
            cascade = cascade.model_copy(update={"artifacts": (folder / cascade.artifacts).resolve()})
        return self.model_copy(update={"models": models, "cascade": cascade})


def _min_replicas(deployment_config: dict[str, Any]) -> int:
    autoscaling = deployment_config.get("autoscaling_config") or {}
    if "min_replicas" in autoscaling:
        return max(int(autoscaling["min_replicas"]), 0)
    replicas = deployment_config.get("num_replicas", 1)
    return int(replicas) if isinstance(replicas, int) else 1


_RELATIVE_KEYS = frozenset({"engine_kwargs", "placement_group_config"})


def _describe(err: Any) -> str:
    """One pydantic error as ``key.path[i].leaf: message``, with the YAML key names."""
    parts: list[str] = []
    for item in err["loc"]:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + ("lambda" if item == "lambda_" else str(item)))
    path = "".join(parts)
    message = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        message = "unknown key (typo?)"
    if message.startswith(("models[", "cascade.")):
        return message  # cross-field checks name their own path
    if path and message.split(":", 1)[0].split(".", 1)[0] in _RELATIVE_KEYS:
        return f"{path}.{message}"  # a model's cross-field check names the key under the model
    return f"{path}: {message}" if path else message
