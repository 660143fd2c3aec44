"""Where a plan's nodes come from: ``--nodes``, a live Ray cluster (``--address``), or this machine.

``cluster/`` never imports Ray, so reading a live cluster happens here: Ray's own report of each alive
node's resources (``ray.nodes()``, which needs no dashboard) converted by ``cluster.nodes``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

from cluster.accelerators import GPU_MEMORY_GIB
from cluster.nodes import Node, node_from_resources, parse_nodes

__all__ = ["live_nodes", "plan_nodes", "this_machine"]


def plan_nodes(nodes: str | None, address: str | None) -> tuple[list[Node], str]:
    """The nodes to plan on and a few words saying which (for the table's title)."""
    if nodes is not None:
        return parse_nodes(nodes), nodes
    if address is not None:
        return live_nodes(address), f"the Ray cluster at {address}"
    return this_machine(), "this machine"


def live_nodes(address: str) -> list[Node]:
    """The alive nodes of the Ray cluster at ``address`` (``auto``: the local one); ``ValueError`` in one
    line when nothing answers there, before Ray's own long wait."""
    from serve.deploy import _local_cluster_running, check_reachable, connect, node_names

    if address == "auto" and not os.environ.get("RAY_ADDRESS") and not _local_cluster_running():
        raise ValueError("--address auto: no Ray cluster runs on this machine and RAY_ADDRESS is unset")
    check_reachable(address)
    import ray

    try:
        connect(address, start_local=False)
        report = [n for n in ray.nodes() if n.get("Alive")]
    except (ConnectionError, RuntimeError) as exc:
        raise ValueError(f"--address: cannot join the Ray cluster at {address} ({exc})") from None
    finally:
        ray.shutdown()
    return [node_from_resources(name, n["Resources"]) for name, n in zip(node_names(report), report, strict=True)]


def _gpu_kind(name: str, memory_mib: float) -> str | None:
    """Ray's accelerator type for an ``nvidia-smi`` GPU name (``NVIDIA H100 80GB HBM3`` → ``H100``)."""
    for kind in (k for k in GPU_MEMORY_GIB if "-" not in k):
        if re.search(rf"(?<![A-Z0-9]){kind}(?![A-Z0-9])", name.upper()):
            if kind == "A100":
                return "A100-80G" if memory_mib > 60 * 1024 else "A100-40G"
            return kind
    return None


def this_machine() -> list[Node]:
    """This machine as one node: its CPUs and memory, and its GPUs as ``nvidia-smi`` lists them."""
    cpus = float(os.cpu_count() or 1)
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    resources: dict[str, float] = {"CPU": cpus, "memory": float(memory)}
    smi = shutil.which("nvidia-smi")
    if smi is not None:
        done = subprocess.run([smi, "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, check=False, timeout=30)
        rows = [line.rsplit(",", 1) for line in done.stdout.splitlines() if "," in line]
        if done.returncode == 0 and rows:
            resources["GPU"] = float(len(rows))
            kind = _gpu_kind(rows[0][0].strip(), float(rows[0][1]))
            if kind is not None:
                resources[f"accelerator_type:{kind}"] = 1.0
    return [node_from_resources("this machine", resources)]
