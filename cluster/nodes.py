"""The nodes a plan places replicas on: written on the command line, or read from a live Ray cluster.

    parse_nodes("2x8xH100,1x4xL4")      # two nodes of 8 H100s, one of 4 L4s
    parse_nodes("1x8xH100:93")          # GPUs of 93 GiB (an H100 NVL) instead of the table's size
    parse_nodes("1x16xcpu")             # one node of 16 CPUs and no GPU

A node of Ray's own report (``ray.nodes()``'s ``Resources``) converts with :func:`node_from_resources`;
the command gathers those, since this package never imports Ray.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from cluster.accelerators import GIB, GPU_MEMORY_GIB, gpu_memory_bytes, unknown_accelerator

__all__ = ["Node", "NodeSpecError", "custom_resources", "node_from_resources", "parse_nodes"]

_SPEC = re.compile(r"^(\d+)x(\d+)x([A-Za-z0-9_-]+?)(?::(\d+(?:\.\d+)?))?$")


class NodeSpecError(ValueError):
    """A ``--nodes`` value, or a live node, the planner cannot use."""


@dataclass(frozen=True, slots=True)
class Node:
    """One node: its GPUs (kind, count, memory of each) and, where known, its CPUs and memory."""

    name: str
    accelerator: str | None  # Ray's accelerator type of its GPUs; None: no GPU
    gpus: int
    gpu_memory_bytes: int  # of each GPU (0 without GPUs)
    cpus: float | None = None  # None: not known, not checked
    memory_bytes: int | None = None
    # Custom resources (``ray start --resources``), e.g. a node group's label: a model whose bundles ask
    # for one goes only where it is offered. Sorted (name, amount) pairs, so a Node stays hashable.
    custom: tuple[tuple[str, float], ...] = ()

    @property
    def kind(self) -> str:
        """``8 x H100 (79.1 GiB)`` or ``16 CPUs``: the node's shape, for messages and tables."""
        labels = "".join(f", {name}" for name, _ in self.custom)
        if self.gpus:
            return f"{self.gpus} x {self.accelerator} ({self.gpu_memory_bytes / GIB:.1f} GiB){labels}"
        return (f"{self.cpus:g} CPUs" if self.cpus is not None else "no GPU") + labels

    def resources(self) -> dict[str, float]:
        """The node as Ray reports it (``cluster.feasibility`` reads this shape)."""
        out: dict[str, float] = {}
        if self.cpus is not None:
            out["CPU"] = self.cpus
        if self.gpus:
            out["GPU"] = float(self.gpus)
            out[f"accelerator_type:{self.accelerator}"] = 1.0
            if self.accelerator in ("A100-40G", "A100-80G"):
                out["accelerator_type:A100"] = 1.0  # Ray labels every A100 so; the size label is added
        out.update(self.custom)
        return out

    def offers(self, accelerator_type: str | None) -> bool:
        """Whether a model asking for ``accelerator_type`` (None: any GPU) may run on this node's GPUs."""
        if not self.gpus:
            return False
        return accelerator_type is None or f"accelerator_type:{accelerator_type}" in self.resources()


def parse_nodes(text: str) -> list[Node]:
    """``COUNTxGPUSxKIND[:GIB]`` or ``COUNTxCPUSxcpu``, comma-separated; ``NodeSpecError`` names the part."""
    nodes: list[Node] = []
    for part in (p.strip() for p in text.split(",")):
        match = _SPEC.match(part)
        if match is None:
            raise NodeSpecError(f"--nodes: {part!r} is not COUNTxGPUSxKIND (2x8xH100, 1x4xL4:24) or COUNTxCPUSxcpu")
        count, amount, kind, gib = int(match[1]), int(match[2]), match[3], match[4]
        if count < 1 or amount < 1:
            raise NodeSpecError(f"--nodes: {part!r} needs at least one node of at least one GPU or CPU")
        for _ in range(count):
            name = f"node-{len(nodes) + 1}"
            if kind.lower() == "cpu":
                nodes.append(Node(name=name, accelerator=None, gpus=0, gpu_memory_bytes=0, cpus=float(amount)))
                continue
            if gib is None and kind not in GPU_MEMORY_GIB:
                raise NodeSpecError(f"--nodes: {part!r}: {unknown_accelerator(kind, set(GPU_MEMORY_GIB))}; "
                                    f"known: {', '.join(sorted(GPU_MEMORY_GIB))} (or give the GiB: {part}:80)")
            memory = int(float(gib) * GIB) if gib is not None else gpu_memory_bytes(kind)
            nodes.append(Node(name=name, accelerator=kind, gpus=amount, gpu_memory_bytes=memory))
    return nodes


def custom_resources(resources: Mapping[str, float]) -> tuple[tuple[str, float], ...]:
    """The custom resources among Ray's (those a user gave ``ray start --resources``): not Ray's own
    (CPU, GPU, memory, object store, accelerator and node labels) nor a placement group's share of one
    (``CPU_group_<id>``, ``bundle_group_<id>``), which Ray also lists while groups exist."""
    own = {"CPU", "GPU", "memory", "object_store_memory"}
    return tuple(sorted(
        (name, float(amount)) for name, amount in resources.items()
        if name not in own and not name.startswith(("accelerator_type:", "node:")) and "_group_" not in name
        and float(amount) > 0))


def node_from_resources(name: str, resources: Mapping[str, float]) -> Node:
    """A live node from its Ray resources (``CPU``, ``GPU``, ``memory``, ``accelerator_type:H100``, custom)."""
    custom = custom_resources(resources)
    gpus = int(resources.get("GPU", 0))
    kinds = [k.removeprefix("accelerator_type:") for k in resources if k.startswith("accelerator_type:")]
    cpus = float(resources.get("CPU", 0.0))
    memory = int(resources["memory"]) if resources.get("memory") else None
    if not gpus:
        return Node(name=name, accelerator=None, gpus=0, gpu_memory_bytes=0, cpus=cpus, memory_bytes=memory,
                    custom=custom)
    # A100 nodes may carry a size label beside the kind; the sized one tells the memory.
    kind = next((k for k in kinds if k in ("A100-40G", "A100-80G")), kinds[0] if kinds else None)
    if kind is None or kind not in GPU_MEMORY_GIB:
        raise NodeSpecError(f"node {name}: {gpus} GPU(s) of {'an unknown kind' if kind is None else repr(kind)}, "
                            f"whose memory the planner does not know (known: {', '.join(sorted(GPU_MEMORY_GIB))})")
    return Node(name=name, accelerator=kind, gpus=gpus, gpu_memory_bytes=gpu_memory_bytes(kind), cpus=cpus,
                memory_bytes=memory, custom=custom)
