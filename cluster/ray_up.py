"""A Ray cluster launcher config (``ray up``) for a fleet's plan: a CPU head and GPU workers as planned.

Every node runs Ray's LLM image (vLLM inside) in Docker and installs cascade-serve in its setup. The
workers are the plan's nodes, one node type per GPU shape, all started at once (``min_workers``); the
head deploys the fleet with ``serve deploy`` as soon as Ray runs, and Serve starts each replica when
its workers join. A folder holding the fleet file, as planned, and the Serve config is copied to every
node.

Ray's token authentication stays on: every node's shell sets ``RAY_AUTH_MODE=token`` before Ray starts,
and the token of the machine that runs ``ray up`` (``~/.ray/auth_token``: ``ray get-auth-token
--generate``) is copied to every node. The dashboard listens on the head's loopback only (``ray
dashboard`` forwards it). ``tests/cluster/test_launch_configs.py`` validates the output with the
launcher's own schema and checks (``ray.autoscaler``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cluster.instances import HEAD, InstanceType, instance_for
from cluster.plan import FleetPlan
from cluster.serve_config import FLEET_DIR

__all__ = ["SERVE_CONFIG_FILE", "LaunchSettings", "ray_up_config"]

SERVE_CONFIG_FILE = "serve.yaml"  # beside the fleet file (cluster.serve_config.FLEET_PATH) in the copied folder
_DISK_GB = {"head": 200, "worker": 1000}  # workers hold the weights of every model they may serve
_GCP_IMAGE = "projects/deeplearning-platform-release/global/images/family/common-cu128-ubuntu-2204-nvidia-570"
_GCP_CPU_IMAGE = "projects/deeplearning-platform-release/global/images/family/common-cpu"
_DEFAULT_REGION = {"aws": "us-west-2", "gcp": "us-central1"}


@dataclass(frozen=True, slots=True)
class LaunchSettings:
    """What a launch config needs beside the plan."""

    cloud: str = "aws"
    region: str | None = None  # None: the cloud's default in _DEFAULT_REGION
    project: str | None = None  # GCP project id
    cluster_name: str = "cascade"
    package: str = "cascade-serve[gpu]"  # what pip installs on every node
    ray_version: str = "2.60.0"
    port: int = 8000

    @property
    def image(self) -> str:
        return f"rayproject/ray-llm:{self.ray_version}-py311-cu128"


def _node_config(cloud: str, instance: InstanceType, role: str) -> dict[str, Any]:
    if cloud == "aws":
        return {"InstanceType": instance.name, "BlockDeviceMappings": [
            {"DeviceName": "/dev/sda1", "Ebs": {"VolumeSize": _DISK_GB[role], "VolumeType": "gp3"}}]}
    image = _GCP_IMAGE if instance.gpus else _GCP_CPU_IMAGE
    config: dict[str, Any] = {"machineType": instance.name, "disks": [{
        "boot": True, "autoDelete": True, "type": "PERSISTENT",
        "initializeParams": {"diskSizeGb": _DISK_GB[role], "sourceImage": image},
    }]}
    if instance.gpus:  # GCP cannot live-migrate a GPU machine; its image installs the driver on first boot
        config["scheduling"] = [{"onHostMaintenance": "TERMINATE"}]
        config["metadata"] = {"items": [{"key": "install-nvidia-driver", "value": "True"}]}
    return config


def _provider(settings: LaunchSettings) -> dict[str, Any]:
    region = settings.region or _DEFAULT_REGION[settings.cloud]
    if settings.cloud == "aws":
        return {"type": "aws", "region": region, "cache_stopped_nodes": False}
    if not settings.project:
        raise ValueError("--project: required with --cloud gcp (the GCP project id)")
    return {"type": "gcp", "region": region, "availability_zone": f"{region}-a", "project_id": settings.project}


def ray_up_config(plan: FleetPlan, settings: LaunchSettings, *, files: str) -> dict[str, Any]:
    """The launcher config; ``files`` is the local folder of the planned fleet file (``models.yaml``) and
    the Serve config (``serve.yaml``), copied to every node. ``ValueError`` when the cloud has no machine
    of a planned shape."""
    head = HEAD[settings.cloud]
    types: dict[str, Any] = {
        "head": {"resources": {"CPU": head.cpus}, "node_config": _node_config(settings.cloud, head, "head")},
    }
    workers = 0
    for kind, gpus, count in plan.node_groups():
        instance = instance_for(settings.cloud, kind, gpus)
        types[f"gpu_{kind.lower().replace('-', '_')}_x{gpus}"] = {
            "min_workers": count, "max_workers": count,
            # The accelerator label lets the autoscaler match Ray Serve LLM's bundles to this type.
            "resources": {"CPU": instance.cpus, "GPU": gpus, f"accelerator_type:{kind}": 1},
            "node_config": _node_config(settings.cloud, instance, "worker"),
        }
        workers += count
    return {
        "cluster_name": settings.cluster_name,
        "max_workers": workers,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 5,
        "provider": _provider(settings),
        "auth": {"ssh_user": "ubuntu"},
        "docker": {"image": settings.image, "container_name": "ray_container", "pull_before_run": True,
                   # vLLM's tensor-parallel workers share memory through /dev/shm: the host's IPC namespace
                   "run_options": ["--ulimit nofile=65536:65536", "--ipc=host"]},
        "available_node_types": types,
        "head_node_type": "head",
        "file_mounts": {FLEET_DIR: files, "~/.ray/auth_token": "~/.ray/auth_token"},
        "setup_commands": [
            # Every later command of the launcher sources ~/.bashrc: Ray starts and is reached with the token.
            "grep -q RAY_AUTH_MODE ~/.bashrc || echo 'export RAY_AUTH_MODE=token' >> ~/.bashrc",
            f"pip install -U '{settings.package}'",
        ],
        "head_start_ray_commands": [
            "ray stop",
            "ulimit -n 65536; ray start --head --port=6379 --object-manager-port=8076 "
            "--autoscaling-config=~/ray_bootstrap_config.yaml --dashboard-host=127.0.0.1",
            f"serve deploy {FLEET_DIR}/{SERVE_CONFIG_FILE}",
        ],
        "worker_start_ray_commands": [
            "ray stop",
            "ulimit -n 65536; ray start --address=$RAY_HEAD_IP:6379 --object-manager-port=8076",
        ],
    }
