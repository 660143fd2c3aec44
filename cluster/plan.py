"""The placement plan of a fleet on a set of nodes, made before anything starts.

For each model, :func:`plan_fleet` works out what one replica needs (``cluster.memory``: weights, KV
cache, headroom), and from it the GPUs of a replica (the smallest tensor-parallel size whose GPUs hold
it, valid for the model's heads) and the ``gpu_memory_utilization`` to give it. A small model whose
entry leaves its placement open is packed onto a shared GPU: a fractional bundle (a quarter or half
of a GPU) with a memory fraction that leaves room for the CUDA context of every engine beside it. What
an entry states (tensor parallel size, GPU share, memory fraction) is checked, never changed. Then
every replica is assigned to a node and GPUs (a placement Ray can reach, whole-GPU groups first, each
on one node; shares packed tightly), and the fleet at its maximum replica counts is tried too.

A fleet that cannot fit is refused with one line per fault, naming the model (or its key path), what
it needs and what the largest node offers: :class:`PlanError`. :func:`apply_plan` writes the plan's
choices into the fleet, so what is deployed is what was planned.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cluster.accelerators import GIB, GPU_MEMORY_GIB, gpu_memory_bytes
from cluster.architecture import ArchitectureError, model_architecture
from cluster.config import FleetConfig, ModelSpec
from cluster.feasibility import ReplicaDemand, unplaceable
from cluster.memory import (
    COLLECTIVES_BYTES,
    CUDA_CONTEXT_BYTES,
    DEFAULT_MAX_NUM_SEQS,
    HEADROOM_BYTES,
    ReplicaMemory,
    replica_memory,
    tensor_parallel_problem,
)
from cluster.nodes import Node, custom_resources

__all__ = ["CONTROLLER", "FleetPlan", "ModelPlan", "Placement", "PlanError", "apply_plan", "plan_fleet",
           "smallest_cluster"]

CONTROLLER = "CascadeController"  # serve.app's controller deployment, one actor
CONTROLLER_CPUS = 1.0  # serve.app.CONTROLLER_ACTOR_CPUS (tests/cluster/test_plan.py keeps them equal)
# vLLM's default memory fraction, used where an entry gives none and its replica has GPUs to itself.
DEFAULT_GPU_MEMORY_UTILIZATION = 0.9
TENSOR_PARALLEL_SIZES = (1, 2, 4, 8, 16)
SHARES = (0.25, 0.5)  # fractions of a GPU a packed model may take: any mix of them fills a GPU exactly


class PlanError(ValueError):
    """The fleet cannot be planned on these nodes: one line per fault in ``problems``."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class ModelPlan:
    """One model's plan: what a replica needs and gets."""

    index: int  # in the fleet file
    model_id: str
    accelerator_type: str | None  # the kind the entry asks for (None: any GPU, or CPU)
    gpu_kind: str | None  # the kind the figures were made for (the smallest GPUs it may land on)
    gpu_memory_bytes: int  # of one such GPU
    memory: ReplicaMemory | None  # None: a CPU model whose size is unknown
    memory_source: str
    tensor_parallel_size: int
    pipeline_parallel_size: int
    gpu_share: float  # of a GPU per engine worker: 1 whole, below 1 shared, 0 on CPU
    gpu_memory_utilization: float | None  # None on CPU
    kv_sequences: int | None  # full-length sequences whose KV cache the memory fraction holds
    replicas: int  # at the minimum
    max_replicas: int
    cpus_per_replica: float
    strategy: str  # Ray's placement strategy of a replica's bundles
    chosen: tuple[str, ...] = ()  # engine settings the plan chose where the entry left them open
    # Custom resources one replica asks for (a node group's label in its bundles): it goes only to a
    # node that offers them. Sorted (name, amount) pairs.
    custom: tuple[tuple[str, float], ...] = ()

    @property
    def workers(self) -> int:
        """Engine workers (GPUs or GPU shares) of one replica."""
        return self.tensor_parallel_size * self.pipeline_parallel_size if self.gpu_share else 0

    @property
    def gpus_per_replica(self) -> float:
        return self.workers * self.gpu_share

    @property
    def per_gpu_bytes(self) -> int | None:
        """What each GPU of a replica needs for ``max_num_seqs`` sequences (None on CPU)."""
        if self.memory is None or not self.gpu_share:
            return None
        return self.memory.per_gpu_bytes(self.tensor_parallel_size, self.pipeline_parallel_size)

    def bundles(self) -> tuple[dict[str, float], ...]:
        """A replica's placement-group bundles as Ray Serve LLM derives them (the replica actor's CPUs in
        the first)."""
        if not self.gpu_share:
            return ({"CPU": self.cpus_per_replica, **dict(self.custom)},)
        label = {f"accelerator_type:{self.accelerator_type}": 0.001} if self.accelerator_type else {}
        bundles = [{"GPU": self.gpu_share, **label} for _ in range(self.workers)]
        bundles[0] = {"CPU": self.cpus_per_replica, **bundles[0], **dict(self.custom)}
        return tuple(bundles)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "index": self.index, "model_id": self.model_id, "accelerator_type": self.accelerator_type,
            "gpu_kind": self.gpu_kind, "gpu_memory_gib": _gib(self.gpu_memory_bytes),
            "size_source": self.memory_source, "tensor_parallel_size": self.tensor_parallel_size,
            "pipeline_parallel_size": self.pipeline_parallel_size, "gpu_share": self.gpu_share,
            "gpus_per_replica": self.gpus_per_replica, "gpu_memory_utilization": self.gpu_memory_utilization,
            "replicas": self.replicas, "max_replicas": self.max_replicas, "cpus_per_replica": self.cpus_per_replica,
            "chosen_by_plan": list(self.chosen), "bundles": list(self.bundles()),
        }
        m = self.memory
        if m is not None:
            out["memory"] = {
                "num_parameters": m.architecture.num_parameters, "dtype_bytes": m.dtype_bytes,
                "weights_bytes": m.weights_bytes, "kv_bytes_per_token": m.kv_bytes_per_token,
                "max_model_len": m.max_model_len, "max_num_seqs": m.max_num_seqs,
                "kv_cache_bytes": m.kv_cache_bytes, "per_gpu_bytes": self.per_gpu_bytes,
                "headroom_bytes_per_gpu": m.headroom_bytes(self.workers) if self.workers else None,
                "kv_sequences_held": self.kv_sequences,
            }
        return out


@dataclass(frozen=True, slots=True)
class Placement:
    """One replica (or the controller) on a node; ``gpus`` are the indices of the node's GPUs it uses."""

    deployment: str
    replica: int
    node: str
    gpus: tuple[int, ...]
    share: float


@dataclass(frozen=True, slots=True)
class FleetPlan:
    """The whole plan: the nodes, each model's plan, where every replica goes, and the totals."""

    nodes: tuple[Node, ...]
    models: tuple[ModelPlan, ...]
    placements: tuple[Placement, ...]
    max_replicas_problem: str | None  # why the fleet at its maximum replica counts does not fit; None: it fits
    gpus_used_by_node: dict[str, int] = field(default_factory=dict)

    @property
    def gpus_total(self) -> int:
        return sum(n.gpus for n in self.nodes)

    @property
    def gpus_used(self) -> int:
        """GPUs that hold at least one replica (a shared GPU counts once)."""
        return sum(self.gpus_used_by_node.values())

    @property
    def gpus_requested(self) -> float:
        """GPUs the fleet asks for at its minimum replica counts (shares summed)."""
        return sum(m.gpus_per_replica * m.replicas for m in self.models)

    @property
    def gpus_requested_at_max(self) -> float:
        return sum(m.gpus_per_replica * m.max_replicas for m in self.models)

    def node_groups(self) -> list[tuple[str, int, int]]:
        """The GPU nodes as (accelerator, GPUs per node, count), in the nodes' order: a launch config's
        worker groups."""
        groups: dict[tuple[str, int], int] = {}
        for n in self.nodes:
            if n.gpus and n.accelerator is not None:
                groups[(n.accelerator, n.gpus)] = groups.get((n.accelerator, n.gpus), 0) + 1
        return [(kind, gpus, count) for (kind, gpus), count in groups.items()]

    @property
    def nodes_used(self) -> int:
        return len({p.node for p in self.placements if p.gpus})

    def to_json(self) -> dict[str, Any]:
        return {
            "nodes": [{"name": n.name, "accelerator": n.accelerator, "gpus": n.gpus,
                       "gpu_memory_gib": _gib(n.gpu_memory_bytes), "cpus": n.cpus} for n in self.nodes],
            "models": [m.to_json() for m in self.models],
            "placements": [{"deployment": p.deployment, "replica": p.replica, "node": p.node, "gpus": list(p.gpus),
                            "share": p.share} for p in self.placements],
            "totals": {"gpus_total": self.gpus_total, "gpus_used": self.gpus_used,
                       "gpus_requested": self.gpus_requested, "gpus_requested_at_max": self.gpus_requested_at_max,
                       "nodes_used": self.nodes_used, "gpus_used_by_node": self.gpus_used_by_node,
                       "max_replicas_fit": self.max_replicas_problem is None,
                       "max_replicas_problem": self.max_replicas_problem},
            "assumptions": {"headroom_bytes_per_gpu": HEADROOM_BYTES,
                            "collectives_bytes_per_gpu_when_parallel": COLLECTIVES_BYTES,
                            "cuda_context_bytes_per_engine": CUDA_CONTEXT_BYTES,
                            "max_num_seqs_when_unset": DEFAULT_MAX_NUM_SEQS,
                            "gpu_memory_utilization_when_unset": DEFAULT_GPU_MEMORY_UTILIZATION},
        }


def _gib(n: float) -> float:
    return round(n / GIB, 2)


class _Refusal(Exception):
    """One model cannot be planned; the message is its line."""


def _replica_range(deployment_config: dict[str, Any]) -> tuple[int, int]:
    auto = deployment_config.get("autoscaling_config") or {}
    if auto:
        low = max(int(auto.get("min_replicas", 1)), 0)
        return low, max(int(auto.get("max_replicas", low)), low)
    replicas = deployment_config.get("num_replicas", 1)
    n = replicas if isinstance(replicas, int) else 1
    return n, n


def _cpus_per_replica(spec: ModelSpec) -> float:
    """The replica actor's CPUs (Ray Serve LLM puts them into the first bundle) plus the bundles' own."""
    actor = (spec.deployment_config.get("ray_actor_options") or {}).get("num_cpus", 1)
    pg = spec.placement_group_config or {}
    workers = spec.tensor_parallel_size * int(spec.engine_kwargs.get("pipeline_parallel_size", 1))
    if pg.get("bundle_per_worker"):
        bundle_cpus = float(pg["bundle_per_worker"].get("CPU", 0)) * workers
    else:
        bundle_cpus = sum(float(b.get("CPU", 0)) for b in pg.get("bundles") or [])
    return float(actor) + bundle_cpus


def _custom_per_replica(spec: ModelSpec) -> tuple[tuple[str, float], ...]:
    """The custom resources of a replica's bundles and actor (a node group's label, say)."""
    pg = spec.placement_group_config or {}
    workers = spec.tensor_parallel_size * int(spec.engine_kwargs.get("pipeline_parallel_size", 1))
    asked = [pg["bundle_per_worker"]] * workers if pg.get("bundle_per_worker") else list(pg.get("bundles") or [])
    asked.append((spec.deployment_config.get("ray_actor_options") or {}).get("resources") or {})
    total: dict[str, float] = {}
    for bundle in asked:
        for name, amount in custom_resources(bundle):
            total[name] = total.get(name, 0.0) + amount
    return tuple(sorted(total.items()))


def _largest(nodes: Sequence[Node]) -> Node:
    return max(nodes, key=lambda n: (n.gpus * n.gpu_memory_bytes, n.cpus or 0))


def _floor2(x: float) -> float:
    return math.floor(x * 100 + 1e-9) / 100


def _plan_cpu_model(i: int, spec: ModelSpec, replicas: tuple[int, int]) -> ModelPlan:
    memory, source = None, "unknown"
    try:
        architecture = model_architecture(spec)
        memory, source = replica_memory(spec, architecture), architecture.source
    except (ArchitectureError, ValueError):
        pass  # a CPU engine's KV cache is a fixed size (VLLM_CPU_KVCACHE_SPACE): the figures only inform
    return ModelPlan(
        index=i, model_id=spec.model_id, accelerator_type=None, gpu_kind=None, gpu_memory_bytes=0, memory=memory,
        memory_source=source, tensor_parallel_size=1, pipeline_parallel_size=1, gpu_share=0.0,
        gpu_memory_utilization=None, kv_sequences=None, replicas=replicas[0], max_replicas=replicas[1],
        cpus_per_replica=_cpus_per_replica(spec), strategy=str((spec.placement_group_config or {}).get("strategy",
                                                                                                        "PACK")),
        custom=_custom_per_replica(spec),
    )


def _plan_model(i: int, spec: ModelSpec, nodes: Sequence[Node]) -> ModelPlan:
    """One model's plan, or ``_Refusal`` with its line (module docstring)."""
    replicas = _replica_range(spec.deployment_config)
    if spec.on_cpu:
        return _plan_cpu_model(i, spec, replicas)
    key = f"models[{i}]"
    try:
        architecture = model_architecture(spec)
        memory = replica_memory(spec, architecture)
    except ArchitectureError as exc:
        raise _Refusal(str(exc)) from None
    except ValueError as exc:
        raise _Refusal(f"{key}.{exc}") from None
    wanted = spec.accelerator_type
    candidates = [n for n in nodes if n.offers(wanted)]
    if not candidates:
        offer = _largest(nodes).kind if nodes else "nothing"
        raise _Refusal(f"{spec.model_id}: one replica needs {wanted or 'a'} GPU(s); the largest node offers {offer}")
    smallest = min(candidates, key=lambda n: n.gpu_memory_bytes)
    gpu_bytes, kind = smallest.gpu_memory_bytes, smallest.accelerator
    widest = max(candidates, key=lambda n: n.gpus)
    kwargs = spec.engine_kwargs
    pp = int(kwargs.get("pipeline_parallel_size", 1))
    share = spec.gpu_share
    stated_util = kwargs.get("gpu_memory_utilization")
    util = float(stated_util) if stated_util is not None else DEFAULT_GPU_MEMORY_UTILIZATION
    chosen: list[str] = []

    if "tensor_parallel_size" in kwargs:
        tp = spec.tensor_parallel_size
        problem = tensor_parallel_problem(architecture, tp, spec.model_id)
        if problem:
            raise _Refusal(f"{key}.engine_kwargs.tensor_parallel_size: {problem}")
        if tp * pp > widest.gpus:
            raise _Refusal(f"{spec.model_id}: one replica needs {tp * pp} GPUs on one node (tensor parallel {tp}"
                           f"{f' x pipeline {pp}' if pp > 1 else ''}); the largest node offers {widest.kind}")
    else:
        # A share of a GPU holds one engine worker (cluster.config): no tensor parallel size to choose.
        sizes = (1,) if share < 1.0 else TENSOR_PARALLEL_SIZES
        valid = [t for t in sizes if t * pp <= widest.gpus and tensor_parallel_problem(architecture, t) is None]
        budget = util * gpu_bytes
        full = [t for t in valid if memory.per_gpu_bytes(t, pp) <= budget]
        started = [t for t in valid if memory.per_gpu_bytes(t, pp, sequences=1) <= budget]
        if not (full or started):
            top = valid[-1] if valid else 1
            gpus = "one GPU" if top * pp == 1 else f"each of {top * pp} GPUs"
            raise _Refusal(
                f"{spec.model_id}: one replica needs {_gib(memory.per_gpu_bytes(top, pp, sequences=1)):.1f} GiB on "
                f"{gpus} (weights {_gib(memory.weights_bytes):.1f} GiB, one {memory.max_model_len}-token sequence's "
                f"KV cache, headroom); the largest node offers {widest.kind}, {util:g} of each GPU for the engine"
            )
        # The fewest GPUs that hold every sequence; where no size does, the fewest that start the engine
        # (the table shows how many sequences its KV cache holds).
        tp = (full or started)[0]
        if tp != 1:
            chosen.append("tensor_parallel_size")

    if share < 1.0:  # a share the entry states (cluster.config checked its fraction against it)
        room = share * gpu_bytes - CUDA_CONTEXT_BYTES
        if util * gpu_bytes > room + 1:
            raise _Refusal(
                f"{key}.engine_kwargs.gpu_memory_utilization: {util:g} of a {kind} ({_gib(util * gpu_bytes):.1f} "
                f"GiB) leaves no room in its GPU share {share:g} for the CUDA context ({_gib(CUDA_CONTEXT_BYTES):g} "
                f"GiB) of each engine on the GPU; at most {_floor2(room / gpu_bytes):g}")
    elif (tp == 1 and pp == 1 and stated_util is None and spec.placement_group_config is None
          and "tensor_parallel_size" not in kwargs):
        for candidate in SHARES:  # the smallest share that holds the model packs it tightest
            fraction = _floor2((candidate * gpu_bytes - CUDA_CONTEXT_BYTES) / gpu_bytes)
            if memory.per_gpu_bytes(1) <= fraction * gpu_bytes:
                share, util = candidate, fraction
                chosen += ["placement_group_config", "gpu_memory_utilization"]
                break

    if memory.per_gpu_bytes(tp, pp, sequences=1) > util * gpu_bytes:
        raise _Refusal(
            f"{spec.model_id}: gpu_memory_utilization {util:g} gives each {kind} {_gib(util * gpu_bytes):.1f} GiB; "
            f"its share of the weights, one {memory.max_model_len}-token sequence and headroom need "
            f"{_gib(memory.per_gpu_bytes(tp, pp, sequences=1)):.1f} GiB (tensor parallel {tp})")
    held = min(memory.sequences_within(util * gpu_bytes, tp, pp), memory.max_num_seqs)
    return ModelPlan(
        index=i, model_id=spec.model_id, accelerator_type=wanted, gpu_kind=kind, gpu_memory_bytes=gpu_bytes,
        memory=memory, memory_source=architecture.source, tensor_parallel_size=tp, pipeline_parallel_size=pp,
        gpu_share=share, gpu_memory_utilization=util, kv_sequences=held,
        replicas=replicas[0], max_replicas=replicas[1], cpus_per_replica=_cpus_per_replica(spec),
        strategy=str((spec.placement_group_config or {}).get("strategy", "PACK")), chosen=tuple(chosen),
        custom=_custom_per_replica(spec),
    )


def _demands(models: Sequence[ModelPlan], with_cpus: bool) -> dict[str, ReplicaDemand]:
    demands = {}
    for m in models:
        bundles = tuple({k: v for k, v in b.items() if with_cpus or k != "CPU"} for b in m.bundles())
        demands[m.model_id] = ReplicaDemand(bundles=bundles, strategy=m.strategy, replicas=m.replicas)
    if with_cpus:
        demands[CONTROLLER] = ReplicaDemand(bundles=({"CPU": CONTROLLER_CPUS},), strategy="PACK", replicas=1)
    return demands


class _Cluster:
    """What is free on each node while replicas are assigned: each GPU's unused fraction, the CPUs."""

    def __init__(self, nodes: Sequence[Node]) -> None:
        self.nodes = list(nodes)
        self.gpu_free = {n.name: [1.0] * n.gpus for n in nodes}
        self.cpu_free = {n.name: n.cpus for n in nodes}
        self.custom_free = {n.name: dict(n.custom) for n in nodes}

    def _cpus_fit(self, node: Node, cpus: float, custom: tuple[tuple[str, float], ...] = ()) -> bool:
        free = self.cpu_free[node.name]
        offered = self.custom_free[node.name]
        return (free is None or cpus <= free + 1e-9) and all(amount <= offered.get(name, 0.0) + 1e-9
                                                               for name, amount in custom)

    def _take_cpus(self, node: Node, cpus: float, custom: tuple[tuple[str, float], ...] = ()) -> None:
        free = self.cpu_free[node.name]
        if free is not None:
            self.cpu_free[node.name] = free - cpus
        for name, amount in custom:
            self.custom_free[node.name][name] -= amount

    def place(self, m: ModelPlan, replica: int) -> Placement | None:
        if not m.gpu_share:
            return self.place_cpus(m.model_id, replica, m.cpus_per_replica, m.custom)
        nodes = [n for n in self.nodes
                 if n.offers(m.accelerator_type) and self._cpus_fit(n, m.cpus_per_replica, m.custom)]
        if m.gpu_share == 1.0:
            for node in nodes:
                whole = [g for g, free in enumerate(self.gpu_free[node.name]) if free >= 1.0 - 1e-9]
                if len(whole) >= m.workers:
                    taken = tuple(whole[: m.workers])
                    for g in taken:
                        self.gpu_free[node.name][g] = 0.0
                    self._take_cpus(node, m.cpus_per_replica, m.custom)
                    return Placement(m.model_id, replica, node.name, taken, 1.0)
            return None
        # A share goes to the fullest GPU that still holds it: whole GPUs stay whole for what needs them.
        fits = [(free, k, g, node) for k, node in enumerate(nodes)
                for g, free in enumerate(self.gpu_free[node.name]) if free >= m.gpu_share - 1e-9]
        if not fits:
            return None
        _, _, g, node = min(fits, key=lambda f: (f[0], f[1], f[2]))
        self.gpu_free[node.name][g] -= m.gpu_share
        self._take_cpus(node, m.cpus_per_replica, m.custom)
        return Placement(m.model_id, replica, node.name, (g,), m.gpu_share)

    def place_cpus(self, deployment: str, replica: int, cpus: float,
                   custom: tuple[tuple[str, float], ...] = ()) -> Placement | None:
        # CPU-only work goes to nodes without GPUs first (a head node), then to any with room.
        for node in sorted(self.nodes, key=lambda n: n.gpus > 0):
            if self._cpus_fit(node, cpus, custom):
                self._take_cpus(node, cpus, custom)
                return Placement(deployment, replica, node.name, (), 0.0)
        return None

    def left(self, m: ModelPlan) -> str:
        """What is left that the model might use, for its refusal line."""
        if not m.gpu_share:
            return ", ".join(
                f"{n}: {free:g} CPUs" + "".join(f", {a:g} {r}" for r, a in self.custom_free[n].items())
                for n, free in self.cpu_free.items() if free is not None) or "-"
        parts = []
        for node in self.nodes:
            if node.offers(m.accelerator_type):
                free = self.gpu_free[node.name]
                whole = sum(f >= 1.0 - 1e-9 for f in free)
                partial = [f"{f:g}" for f in free if 1e-9 < f < 1.0 - 1e-9]
                shares = f" + shares {', '.join(partial)}" if partial else ""
                parts.append(f"{node.name} {whole} free GPU(s){shares}")
        return "; ".join(parts) or "no node of its kind"

    def gpus_used(self) -> dict[str, int]:
        return {name: sum(f < 1.0 - 1e-9 for f in free) for name, free in self.gpu_free.items()}


def _assign(models: Sequence[ModelPlan], nodes: Sequence[Node],
            count: Callable[[ModelPlan], int]) -> tuple[list[Placement], dict[str, int]]:
    """Every replica on a node (largest whole-GPU groups first, then shares, then CPU-only replicas),
    and the controller; ``PlanError`` names the first replica that finds no room."""
    cluster = _Cluster(nodes)
    order = sorted(((m, r) for m in models for r in range(count(m))),
                   key=lambda mr: (-(mr[0].workers if mr[0].gpu_share == 1.0 else 0), -mr[0].gpu_share,
                                   mr[0].index, mr[1]))
    placements = []
    for m, r in order:
        placed = cluster.place(m, r)
        if placed is None:
            labels = "".join(f", {amount:g} {name}" for name, amount in m.custom)
            raise PlanError([f"{m.model_id}: replica {r + 1} of {count(m)} finds no room "
                             f"({m.gpus_per_replica:g} GPU of {m.accelerator_type or 'any kind'} and "
                             f"{m.cpus_per_replica:g} CPU{labels} on one node); left: {cluster.left(m)}"])
        placements.append(placed)
    controller = cluster.place_cpus(CONTROLLER, 0, CONTROLLER_CPUS)
    if controller is None:
        raise PlanError([f"{CONTROLLER}: needs {CONTROLLER_CPUS:g} CPU on a node; left: "
                         f"{', '.join(f'{n}: {f:g}' for n, f in cluster.cpu_free.items())}"])
    placements.append(controller)
    return placements, cluster.gpus_used()


def plan_fleet(fleet: FleetConfig, nodes: Sequence[Node]) -> FleetPlan:
    """The fleet's plan on ``nodes`` (module docstring); ``PlanError`` with one line per fault."""
    models, problems = [], []
    for i, spec in enumerate(fleet.models):
        try:
            models.append(_plan_model(i, spec, nodes))
        except _Refusal as exc:
            problems.append(str(exc))
    if problems:
        raise PlanError(problems)
    with_cpus = all(n.cpus is not None for n in nodes)
    problems = unplaceable(_demands(models, with_cpus), [n.resources() for n in nodes])
    if problems:
        raise PlanError(problems)
    placements, used = _assign(models, nodes, lambda m: m.replicas)
    try:
        _assign(models, nodes, lambda m: m.max_replicas)
        at_max = None
    except PlanError as exc:
        at_max = exc.problems[0]
    return FleetPlan(nodes=tuple(nodes), models=tuple(models), placements=tuple(placements),
                     max_replicas_problem=at_max, gpus_used_by_node=used)


def apply_plan(fleet: FleetConfig, plan: FleetPlan) -> FleetConfig:
    """The fleet with the plan's choices written into its entries (``chosen_by_plan``): deploy this."""
    by_id = {m.model_id: m for m in plan.models}
    entries = []
    for spec in fleet.models:
        m = by_id[spec.model_id]
        kwargs = dict(spec.engine_kwargs)
        update: dict[str, Any] = {}
        if "tensor_parallel_size" in m.chosen:
            kwargs["tensor_parallel_size"] = m.tensor_parallel_size
        if "gpu_memory_utilization" in m.chosen:
            kwargs["gpu_memory_utilization"] = m.gpu_memory_utilization
        if "placement_group_config" in m.chosen:
            update["placement_group_config"] = {"bundles": [{"GPU": m.gpu_share}]}
        if kwargs != spec.engine_kwargs:
            update["engine_kwargs"] = kwargs
        entries.append(spec.model_copy(update=update) if update else spec)
    # Validated again: the planned file passes the same checks a hand-written one does.
    return FleetConfig.model_validate(fleet.model_copy(update={"models": entries}).model_dump(by_alias=True))


def smallest_cluster(fleet: FleetConfig, *, gpus_per_node: int = 8, max_nodes: int = 64) -> list[Node]:
    """The fewest nodes of ``gpus_per_node`` GPUs, of the kinds the entries ask for, that hold the fleet at
    its minimum replica counts; ``PlanError`` when no number of them does (the plan's own lines) or when
    an entry names no GPU kind."""
    kinds: list[str] = []
    problems = []
    for i, spec in enumerate(fleet.models):
        kind = spec.accelerator_type
        if spec.on_cpu:
            continue
        if kind is None or kind not in GPU_MEMORY_GIB:
            why = "names no GPU kind" if kind is None else "names a kind whose memory the planner does not know"
            problems.append(f"models[{i}].accelerator_type: {spec.model_id} {why}; give --nodes to size the cluster")
        elif kind not in kinds:
            kinds.append(kind)
    if problems:
        raise PlanError(problems)
    if not kinds:
        raise PlanError(["the fleet has no GPU model: launch configs size GPU workers (a CPU fleet runs with "
                         "`cascade up` on the machine itself)"])

    def nodes_of(counts: dict[str, int]) -> list[Node]:
        return [Node(name=f"{kind.lower()}-{j + 1}", accelerator=kind, gpus=gpus_per_node,
                     gpu_memory_bytes=gpu_memory_bytes(kind)) for kind in kinds for j in range(counts[kind])]

    # A plan on a generous cluster tells what each kind must hold; then grow from the least that could.
    ample = plan_fleet(fleet, nodes_of(dict.fromkeys(kinds, max_nodes)))
    counts = {kind: max(1, math.ceil(sum(m.gpus_per_replica * m.replicas for m in ample.models
                                         if m.gpu_kind == kind) / gpus_per_node)) for kind in kinds}
    for _ in range(max_nodes * max(len(kinds), 1)):
        nodes = nodes_of(counts)
        try:
            plan_fleet(fleet, nodes)
            return nodes
        except PlanError as exc:
            short = next((k for k in kinds if any(f"of {k} " in p for p in exc.problems)), None)
            for kind in [short] if short else kinds:
                counts[kind] += 1
    raise PlanError([f"the fleet does not fit {max_nodes} nodes of {gpus_per_node} GPUs of each kind"])
