"""``cascade plan``: a fleet file's placement plan on a set of nodes, printed as a table and written as JSON.

    cascade plan models.yaml --nodes 1x8xH100
    cascade plan models.yaml --address auto          # the nodes of a running Ray cluster
    cascade plan models.cpu.yaml                     # this machine

The plan itself is ``cluster.plan``; this module gathers the nodes, prints and writes.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

from cluster.accelerators import GIB
from cluster.config import FleetConfig
from cluster.nodes import Node
from cluster.plan import CONTROLLER, FleetPlan, ModelPlan, PlanError, apply_plan, plan_fleet

__all__ = ["describe_nodes", "fleet_yaml", "print_plan", "run_plan"]

_DEFAULT_OUT = Path("runs") / "plans"


def describe_nodes(nodes: list[Node]) -> str:
    """``2 x (8 x H100 (79.2 GiB)), 1 x (4 x L4 (21.9 GiB))``: the node shapes and their counts."""
    counts: dict[str, int] = defaultdict(int)
    for node in nodes:
        counts[node.kind] += 1
    return ", ".join(f"{n} x ({kind})" if n > 1 else kind for kind, n in counts.items()) or "no nodes"


def fleet_yaml(fleet: FleetConfig) -> str:
    """The fleet as a fleet file (what ``apply_plan`` returns, written out)."""
    data = fleet.model_dump(mode="json", exclude_none=True, exclude_defaults=True, by_alias=True)
    return yaml.safe_dump(data, sort_keys=False)


def _share(m: ModelPlan) -> str:
    if not m.gpu_share:
        return "-"
    return "1" if m.gpu_share == 1.0 else f"{m.gpu_share:g}"


def _ranges(gpus: list[int]) -> str:
    """``[0, 1, 2, 3, 6]`` → ``0-3,6``."""
    parts: list[str] = []
    for g in gpus:
        if parts and g == int(parts[-1].rsplit("-", 1)[-1]) + 1:
            parts[-1] = f"{parts[-1].split('-')[0]}-{g}"
        else:
            parts.append(str(g))
    return ",".join(parts)


def _placed(plan: FleetPlan, deployment: str) -> str:
    """Where a deployment's replicas are, node by node: ``node-1 GPU 0-3; node-2 GPU 7 (shared)``."""
    by_node: dict[str, list[tuple[int, ...]]] = defaultdict(list)
    shared: set[str] = set()
    for p in plan.placements:
        if p.deployment == deployment:
            by_node[p.node].append(p.gpus)
            if 0 < p.share < 1:
                shared.add(p.node)
    parts = []
    for node, groups in by_node.items():
        gpus = sorted({g for group in groups for g in group})
        where = f"GPU {_ranges(gpus)}" if gpus else "CPU"
        parts.append(f"{node} {where}" + (" (shared)" if node in shared else ""))
    return "; ".join(parts)


def _gib(n: int) -> str:
    return f"{n / GIB:.1f}" if n >= GIB / 10 else f"{n / GIB:.3f}"  # the tiny CPU models weigh megabytes


def _row(plan: FleetPlan, m: ModelPlan) -> list[str]:
    mark = dict.fromkeys(m.chosen, "*")
    mem = m.memory
    replicas = str(m.replicas) if m.replicas == m.max_replicas else f"{m.replicas}..{m.max_replicas}"
    if mem is None:
        sizes = ["-", "-", "-", "-"]
    else:
        per_gpu = m.per_gpu_bytes
        sizes = [_gib(mem.weights_bytes), _gib(mem.kv_cache_bytes), f"{mem.max_model_len} x {mem.max_num_seqs}",
                 _gib(per_gpu) if per_gpu is not None else "-"]
    util = "-" if m.gpu_memory_utilization is None else f"{m.gpu_memory_utilization:g}"
    seqs = "-" if m.kv_sequences is None or mem is None else (
        "all" if m.kv_sequences >= mem.max_num_seqs else f"{m.kv_sequences} of {mem.max_num_seqs}")
    return [m.model_id, m.gpu_kind or "cpu", m.memory_source.rsplit("/", 1)[-1], *sizes,
            f"{m.tensor_parallel_size}{mark.get('tensor_parallel_size', '')}" if m.gpu_share else "-",
            f"{_share(m)}{mark.get('placement_group_config', '')}", f"{util}{mark.get('gpu_memory_utilization', '')}",
            seqs, replicas, _placed(plan, m.model_id)]


def print_plan(plan: FleetPlan, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for col in ("model", "on", "size from", "weights GiB", "KV GiB", "context x seqs", "per GPU GiB", "TP",
                "GPU share", "mem frac", "KV holds", "replicas", "placed"):
        table.add_column(col, justify="left" if col in ("model", "on", "size from", "placed") else "right")
    for m in plan.models:
        table.add_row(*_row(plan, m))
    # Piped or captured output keeps the table whole (rich would fit it to 80 columns, cutting model ids).
    console = Console() if sys.stdout.isatty() else Console(width=200)
    console.print(table)
    console.print(f"{CONTROLLER}: {_placed(plan, CONTROLLER)}")
    if plan.gpus_total or plan.gpus_requested:
        at_max = "fit" if plan.max_replicas_problem is None else f"do not fit: {plan.max_replicas_problem}"
        console.print(f"GPUs: {plan.gpus_used} of {plan.gpus_total} used on {plan.nodes_used} of "
                      f"{sum(1 for n in plan.nodes if n.gpus)} GPU node(s); {plan.gpus_requested:g} requested at "
                      f"minimum replicas, {plan.gpus_requested_at_max:g} at maximum ({at_max})")
    else:
        cpus = sum(m.cpus_per_replica * m.replicas for m in plan.models) + 1
        console.print(f"CPUs: {cpus:g} requested of {sum(n.cpus or 0 for n in plan.nodes):g} "
                      "(the controller's included)")
    if any(m.chosen for m in plan.models):
        console.print("* chosen by the plan (the entry left it open); --write-fleet FILE writes the fleet with them")


def _json(plan: FleetPlan, file: Path, nodes_from: str) -> dict[str, Any]:
    return {"fleet": str(file), "nodes_from": nodes_from, **plan.to_json()}


def run_plan(args: argparse.Namespace) -> int:
    from cascade_serve.cluster_nodes import plan_nodes

    fleet = FleetConfig.from_file(args.file)  # a bad file fails here, naming its key paths
    nodes, where = plan_nodes(args.nodes, args.address)
    try:
        plan = plan_fleet(fleet, nodes)
    except PlanError as exc:
        for problem in exc.problems:
            print(f"cascade: error: {problem}", file=sys.stderr)
        return 2
    print_plan(plan, f"{args.file}: {len(plan.models)} models on {where}: {describe_nodes(nodes)}")
    out = args.json or _DEFAULT_OUT / f"{args.file.stem}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(_json(plan, args.file, where), indent=2) + "\n")
    print(f"plan written to {out}")
    if args.write_fleet is not None:
        args.write_fleet.write_text(fleet_yaml(apply_plan(fleet, plan)))
        print(f"fleet file with the plan's choices written to {args.write_fleet}")
    return 0
