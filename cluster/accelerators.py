"""GPU kinds by Ray's accelerator-type names, and the memory the planner may count on for each.

Ray names a node's GPUs (``accelerator_type:H100``) and Ray Serve LLM asks for the name a fleet entry
gives in ``accelerator_type``; :data:`RAY_ACCELERATOR_TYPES` is Ray's list (ray 2.60,
``ray.util.accelerators.accelerators``), so a typo in a fleet file is caught before Ray sees it
(``tests/cluster/test_accelerators.py`` keeps the two lists equal). :data:`GPU_MEMORY_GIB` holds the
memory of the kinds the planner knows: the total the CUDA driver reports for one device, which is what
vLLM's ``gpu_memory_utilization`` multiplies, rounded down. The figures and where they come from are
in ``docs/scale.md``.
"""

from __future__ import annotations

import difflib

__all__ = ["GPU_MEMORY_GIB", "RAY_ACCELERATOR_TYPES", "gpu_memory_bytes", "unknown_accelerator"]

GIB = 2**30

RAY_ACCELERATOR_TYPES = frozenset(
    {
        "V100", "P100", "T4", "P4", "K80", "A10G", "L4", "L40S", "A100", "H100", "H200", "H20", "B200", "B300",
        "GB200", "GB300", "RTX-PRO-6000", "Intel-GPU-Max-1550", "Intel-GPU-Max-1100", "Intel-GAUDI",
        "AMD-Instinct-MI100", "AMD-Instinct-MI250X", "AMD-Instinct-MI250X-MI250", "AMD-Instinct-MI210",
        "AMD-Instinct-MI300A", "AMD-Instinct-MI300X-OAM", "AMD-Instinct-MI300X-HF", "AMD-Instinct-MI308X",
        "AMD-Instinct-MI325X-OAM", "AMD-Instinct-MI350X-OAM", "AMD-Instinct-MI355X-OAM",
        "AMD-Radeon-R9-200-HD-7900", "AMD-Radeon-HD-7900", "aws-neuron-core", "TPU-V2", "TPU-V3", "TPU-V4",
        "TPU-V5P", "TPU-V5LITEPOD", "TPU-V6E", "TPU-V7X", "Ascend910B", "Ascend910B4", "MXC500", "MXC550",
        "FURIOSA_RNGD", "M1", "M1-Pro", "M1-Max", "M1-Ultra", "M2", "M2-Pro", "M2-Max", "M2-Ultra", "M3",
        "M3-Pro", "M3-Max", "Apple-Silicon", "A100-40G", "A100-80G", "MOBILINT_ARIES", "MOBILINT_REGULUS",
    }
)  # fmt: skip

# GiB per device as CUDA reports it. Ray gives one name to several memory sizes of a kind (an H100 is
# 80 GB as SXM or PCIe, 94 GB as NVL; "A100" is 40 or 80 GB): the table holds the smallest, so a plan
# made with it holds on the larger ones. `--nodes 1x8xH100:93` states another size.
GPU_MEMORY_GIB: dict[str, float] = {
    "T4": 14.7,
    "V100": 15.7,
    "A10G": 21.9,
    "L4": 21.9,
    "L40S": 44.3,
    "A100": 39.3,
    "A100-40G": 39.3,
    "A100-80G": 79.1,
    "H100": 79.2,
    "H200": 139.8,
    "B200": 178.3,
}


def gpu_memory_bytes(accelerator: str) -> int:
    """Bytes of one GPU of the named kind; ``KeyError`` for a kind the table does not know."""
    return int(GPU_MEMORY_GIB[accelerator] * GIB)


def unknown_accelerator(name: str, known: frozenset[str] | set[str] | None = None) -> str:
    """The message for a name outside ``known`` (Ray's list by default), with the closest names."""
    choices = sorted(known if known is not None else RAY_ACCELERATOR_TYPES)
    close = difflib.get_close_matches(name, choices, n=2, cutoff=0.5)
    hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
    return f"unknown accelerator {name!r}{hint}"
