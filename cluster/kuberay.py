"""A KubeRay ``RayService`` manifest for a fleet's plan: the fleet file as a ConfigMap, then the service.

The RayService's ``serveConfigV2`` is ``cluster.serve_config`` (its application installs cascade-serve
into a runtime environment, the pods run Ray's stock LLM image); its worker groups are the plan's
nodes, one group per GPU shape with that many pods, each asking for the node's GPUs
(``nvidia.com/gpu``). The fleet file, as planned, is mounted into every pod from the ConfigMap.

Ray's token authentication stays on: ``authOptions: {mode: token}`` (KubeRay 1.5.1 or later, Ray 2.52
or later) makes the operator generate a token Secret and set ``RAY_AUTH_MODE``/``RAY_AUTH_TOKEN`` on
every Ray container. The fleet's API keys come from an optional Secret (``<name>-api-keys``, key
``keys``: comma-separated). ``tests/cluster/test_launch_configs.py`` checks ``serveConfigV2`` with Ray's
own Serve schema.
"""

from __future__ import annotations

from typing import Any

import yaml

from cluster.instances import instance_for
from cluster.plan import FleetPlan
from cluster.ray_up import LaunchSettings
from cluster.serve_config import FLEET_DIR, serve_config

__all__ = ["kuberay_manifests"]

_HEAD = {"cpu": "8", "memory": "32Gi"}
# Pod sizes where no cloud is named: a share of a typical GPU machine per GPU.
_CPUS_PER_GPU, _MEMORY_GIB_PER_GPU = 8, 64


def _container(name: str, settings: LaunchSettings, resources: dict[str, Any], api_keys: str) -> dict[str, Any]:
    return {
        "name": name, "image": settings.image,
        "resources": {"limits": dict(resources), "requests": {k: v for k, v in resources.items()
                                                              if k != "nvidia.com/gpu"}},
        "env": [{"name": "CASCADE_API_KEYS",
                 "valueFrom": {"secretKeyRef": {"name": api_keys, "key": "keys", "optional": True}}}],
        "volumeMounts": [{"name": "fleet", "mountPath": FLEET_DIR}],
    }


def _worker_group(kind: str, gpus: int, count: int, settings: LaunchSettings, cloud: str | None,
                  fleet_map: str, api_keys: str) -> dict[str, Any]:
    if cloud is not None:
        instance = instance_for(cloud, kind, gpus)
        # Leave a tenth of the machine to Kubernetes' own daemons.
        cpus, memory_gib, selector = int(instance.cpus * 0.9), int(instance.memory_gib * 0.9), instance.k8s_selector
    else:
        cpus, memory_gib, selector = _CPUS_PER_GPU * gpus, _MEMORY_GIB_PER_GPU * gpus, None
    container = _container("ray-worker", settings,
                           {"cpu": str(cpus), "memory": f"{memory_gib}Gi", "nvidia.com/gpu": gpus}, api_keys)
    container["volumeMounts"].append({"name": "dshm", "mountPath": "/dev/shm"})  # vLLM's tensor-parallel workers
    spec: dict[str, Any] = {
        "containers": [container],
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "volumes": [{"name": "fleet", "configMap": {"name": fleet_map}},
                    {"name": "dshm", "emptyDir": {"medium": "Memory"}}],
    }
    if selector is not None:
        spec["nodeSelector"] = {selector[0]: selector[1]}
    return {"groupName": f"{kind.lower()}-x{gpus}", "replicas": count, "minReplicas": count, "maxReplicas": count,
            "rayStartParams": {}, "template": {"spec": spec}}


def kuberay_manifests(plan: FleetPlan, settings: LaunchSettings, *, fleet_yaml: str,
                      cloud: str | None = None) -> list[dict[str, Any]]:
    """The ConfigMap holding ``fleet_yaml`` (the planned fleet file) and the RayService, in apply order."""
    name = settings.cluster_name
    fleet_map, api_keys = f"{name}-fleet", f"{name}-api-keys"
    head = _container("ray-head", settings, _HEAD, api_keys)
    head["ports"] = [{"containerPort": 6379, "name": "gcs-server"}, {"containerPort": 8265, "name": "dashboard"},
                     {"containerPort": 10001, "name": "client"}, {"containerPort": settings.port, "name": "serve"}]
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": fleet_map},
                  "data": {"models.yaml": fleet_yaml}}
    service = {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": name},
        "spec": {
            "serveConfigV2": yaml.safe_dump(serve_config(port=settings.port, pip=[settings.package]), sort_keys=False),
            "rayClusterConfig": {
                "rayVersion": settings.ray_version,
                "authOptions": {"mode": "token"},
                "enableInTreeAutoscaling": False,  # the plan fixed the nodes; Serve scales within them
                "headGroupSpec": {
                    # KubeRay's operator reaches the dashboard over the pod network to deploy serveConfigV2.
                    "rayStartParams": {"dashboard-host": "0.0.0.0"},
                    "template": {"spec": {"containers": [head],
                                          "volumes": [{"name": "fleet", "configMap": {"name": fleet_map}}]}},
                },
                "workerGroupSpecs": [_worker_group(kind, gpus, count, settings, cloud, fleet_map, api_keys)
                                     for kind, gpus, count in plan.node_groups()],
            },
        },
    }
    return [config_map, service]
