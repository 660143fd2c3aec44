"""Cloud machine types for a plan's nodes: which AWS instance or GCP machine holds N GPUs of a kind.

Only shapes that come with their GPUs attached (no separately attached accelerators), and only the
kinds of ``cluster.accelerators`` with a known memory. ``k8s_selector`` is the node label a Kubernetes
cluster on that cloud puts on such machines (EKS: the instance type; GKE: the accelerator).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CLOUDS", "HEAD", "InstanceType", "instance_for"]

CLOUDS = ("aws", "gcp")


@dataclass(frozen=True, slots=True)
class InstanceType:
    name: str
    accelerator: str | None
    gpus: int
    cpus: int
    memory_gib: int
    k8s_selector: tuple[str, str] | None = None


def _aws(name: str, kind: str | None, gpus: int, cpus: int, memory_gib: int) -> InstanceType:
    return InstanceType(name, kind, gpus, cpus, memory_gib, ("node.kubernetes.io/instance-type", name))


def _gcp(name: str, kind: str | None, gpus: int, cpus: int, memory_gib: int, label: str | None) -> InstanceType:
    return InstanceType(name, kind, gpus, cpus, memory_gib,
                        ("cloud.google.com/gke-accelerator", label) if label else None)


_A2_40 = "nvidia-tesla-a100"
_A2_80 = "nvidia-a100-80gb"
CATALOG: dict[str, tuple[InstanceType, ...]] = {
    "aws": (
        _aws("p5.48xlarge", "H100", 8, 192, 2048), _aws("p5e.48xlarge", "H200", 8, 192, 2048),
        _aws("p4de.24xlarge", "A100-80G", 8, 96, 1152), _aws("p4d.24xlarge", "A100-40G", 8, 96, 1152),
        _aws("p4d.24xlarge", "A100", 8, 96, 1152),
        _aws("g6.4xlarge", "L4", 1, 16, 64), _aws("g6.12xlarge", "L4", 4, 48, 192),
        _aws("g6.48xlarge", "L4", 8, 192, 768),
        _aws("g5.4xlarge", "A10G", 1, 16, 64), _aws("g5.12xlarge", "A10G", 4, 48, 192),
        _aws("g5.48xlarge", "A10G", 8, 192, 768),
        _aws("g6e.4xlarge", "L40S", 1, 16, 128), _aws("g6e.12xlarge", "L40S", 4, 48, 384),
        _aws("g6e.48xlarge", "L40S", 8, 192, 1536),
    ),
    "gcp": (
        _gcp("a3-highgpu-8g", "H100", 8, 208, 1872, "nvidia-h100-80gb"),
        _gcp("a3-ultragpu-8g", "H200", 8, 224, 2952, "nvidia-h200-141gb"),
        *(_gcp(f"a2-highgpu-{g}g", kind, g, 12 * g, 85 * g, _A2_40)
          for kind in ("A100", "A100-40G") for g in (1, 2, 4, 8)),
        *(_gcp(f"a2-ultragpu-{g}g", "A100-80G", g, 12 * g, 170 * g, _A2_80) for g in (1, 2, 4, 8)),
        _gcp("g2-standard-8", "L4", 1, 8, 32, "nvidia-l4"), _gcp("g2-standard-24", "L4", 2, 24, 96, "nvidia-l4"),
        _gcp("g2-standard-48", "L4", 4, 48, 192, "nvidia-l4"), _gcp("g2-standard-96", "L4", 8, 96, 384, "nvidia-l4"),
    ),
}
HEAD = {"aws": _aws("m5.2xlarge", None, 0, 8, 32), "gcp": _gcp("n2-standard-8", None, 0, 8, 32, None)}


def instance_for(cloud: str, accelerator: str, gpus: int) -> InstanceType:
    """The machine type of ``cloud`` with ``gpus`` GPUs of ``accelerator``; ``ValueError`` lists the shapes
    that cloud has of that kind."""
    for instance in CATALOG[cloud]:
        if instance.accelerator == accelerator and instance.gpus == gpus:
            return instance
    shapes = sorted({i.gpus for i in CATALOG[cloud] if i.accelerator == accelerator})
    offer = f"it has {', '.join(map(str, shapes))} per machine" if shapes else "none of that kind"
    raise ValueError(f"--cloud {cloud}: no machine type with {gpus} x {accelerator} ({offer}); pick node shapes "
                     "with --nodes")
