"""``cascade cluster-config``: a cluster launch config from a fleet file and its plan.

    cascade cluster-config models.yaml --target ray-up --cloud aws -o cluster.yaml   # then: ray up cluster.yaml
    cascade cluster-config models.yaml --target kuberay --cloud gcp -o fleet.k8s.yaml  # kubectl apply -f

The nodes are ``--nodes`` or the fewest 8-GPU nodes that hold the fleet (``cluster.plan.smallest_cluster``);
the fleet deployed is the file with the plan's choices written in. ``ray-up`` also writes a folder beside
OUT, which the launcher copies to every node: ``OUT-stem.files/`` with ``models.yaml`` (the planned fleet)
and ``serve.yaml`` (the Serve config that deploys it).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from cascade_serve.plan import describe_nodes, fleet_yaml
from cluster.config import FleetConfig
from cluster.kuberay import kuberay_manifests
from cluster.nodes import parse_nodes
from cluster.plan import PlanError, apply_plan, plan_fleet, smallest_cluster
from cluster.ray_up import SERVE_CONFIG_FILE, LaunchSettings, ray_up_config
from cluster.serve_config import serve_config

__all__ = ["run_cluster_config"]

_RAY_VERSION = "2.60.0"  # the ray[llm] pin of pyproject's gpu extra, where Ray is not installed here


def _ray_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ray")
    except PackageNotFoundError:
        return _RAY_VERSION


def _warn_local_paths(fleet: FleetConfig) -> None:
    for i, spec in enumerate(fleet.models):
        source = spec.model_loading_config.model_source or ""
        if source.startswith("/"):
            print(f"cascade: warning: models[{i}] loads {source} from disk: the path must exist on every GPU node",
                  file=sys.stderr)
    if fleet.cascade.artifacts is not None:
        print(f"cascade: warning: cascade.artifacts is {fleet.cascade.artifacts}: the path must exist on every node",
              file=sys.stderr)


def run_cluster_config(args: argparse.Namespace) -> int:
    fleet = FleetConfig.from_file(args.file)
    if args.target == "ray-up" and args.cloud is None:
        raise ValueError("--cloud: required with --target ray-up (aws or gcp)")
    try:
        nodes = parse_nodes(args.nodes) if args.nodes else smallest_cluster(fleet)
        cpu_only = [n.name for n in nodes if not n.gpus]
        if cpu_only:
            raise ValueError(f"--nodes: {args.nodes} has nodes without GPUs; launch configs add GPU workers to a "
                             "CPU head node of their own")
        plan = plan_fleet(fleet, nodes)
    except PlanError as exc:
        for problem in exc.problems:
            print(f"cascade: error: {problem}", file=sys.stderr)
        return 2
    settings = LaunchSettings(cloud=args.cloud or "aws", region=args.region, project=args.project,
                              cluster_name=args.name, package=args.package, ray_version=_ray_version(), port=args.port)
    planned = fleet_yaml(apply_plan(fleet, plan))
    _warn_local_paths(fleet)
    out: Path = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.target == "ray-up":
        files = out.with_name(f"{out.stem}.files")
        config = ray_up_config(plan, settings, files=str(files.resolve()))
        files.mkdir(exist_ok=True)
        (files / "models.yaml").write_text(planned)
        (files / SERVE_CONFIG_FILE).write_text(yaml.safe_dump(serve_config(port=settings.port), sort_keys=False))
        out.write_text(f"# `ray up {out.name}`: {args.file} planned on {describe_nodes(nodes)}\n"
                       + yaml.safe_dump(config, sort_keys=False))
        print(f"wrote {out} and {files}/ (the planned fleet, the Serve config): a head node on {settings.cloud} and "
              f"{describe_nodes(nodes)}; the fleet deploys as Ray starts")
        if not (Path.home() / ".ray" / "auth_token").exists():
            print("note: `ray up` copies ~/.ray/auth_token to every node: run `ray get-auth-token --generate` first")
    else:
        docs = kuberay_manifests(plan, settings, fleet_yaml=planned, cloud=args.cloud)
        out.write_text(f"# `kubectl apply -f {out.name}`: {args.file} planned on {describe_nodes(nodes)}\n"
                       + yaml.safe_dump_all(docs, sort_keys=False))
        print(f"wrote {out}: ConfigMap {docs[0]['metadata']['name']} and RayService {settings.cluster_name} on "
              f"{describe_nodes(nodes)}")
    return 0
