"""Launch configs from a plan: Ray's own validators accept them, their nodes are the plan's, token auth is on.

The validators are Ray's (the cluster launcher's JSON schema and checks in ``ray.autoscaler``, the Serve
config schema in ``ray.serve.schema``): importing Ray takes seconds, so those tests are marked slow.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from cluster.config import FleetConfig
from cluster.instances import instance_for
from cluster.kuberay import kuberay_manifests
from cluster.nodes import parse_nodes
from cluster.plan import FleetPlan, apply_plan, plan_fleet
from cluster.ray_up import LaunchSettings, ray_up_config
from cluster.serve_config import FLEET_PATH, serve_config

REPO = Path(__file__).resolve().parents[2]


def _mixed() -> tuple[FleetConfig, FleetPlan]:
    """A fleet on two GPU kinds: the 72B on H100s, a 7B on L4s (two per replica)."""
    fleet = FleetConfig.from_mapping({"models": [
        {"model_loading_config": {"model_id": "q72", "model_source": "Qwen/Qwen2.5-72B-Instruct"},
         "accelerator_type": "H100", "engine_kwargs": {"max_model_len": 8192, "max_num_seqs": 48}},
        {"model_loading_config": {"model_id": "q7", "model_source": "Qwen/Qwen2.5-7B-Instruct"},
         "accelerator_type": "L4", "engine_kwargs": {"max_model_len": 4096, "max_num_seqs": 16},
         "deployment_config": {"num_replicas": 3}},
    ]})
    return fleet, plan_fleet(fleet, parse_nodes("1x8xH100,2x4xL4"))


def _ray_up(plan: FleetPlan, **settings: Any) -> dict[str, Any]:
    return ray_up_config(plan, LaunchSettings(**settings), files="/tmp/cascade.files")


def test_ray_up_node_types_follow_the_plan() -> None:
    _, plan = _mixed()
    config = _ray_up(plan, cloud="aws")
    workers = {k: v for k, v in config["available_node_types"].items() if k != "head"}
    assert {k: (v["min_workers"], v["node_config"]["InstanceType"], v["resources"]) for k, v in workers.items()} == {
        "gpu_h100_x8": (1, "p5.48xlarge", {"CPU": 192, "GPU": 8, "accelerator_type:H100": 1}),
        "gpu_l4_x4": (2, "g6.12xlarge", {"CPU": 48, "GPU": 4, "accelerator_type:L4": 1}),
    }
    assert config["max_workers"] == 3


def test_ray_up_keeps_token_auth_on_and_deploys_the_fleet_at_start() -> None:
    config = _ray_up(plan_fleet(FleetConfig.from_file(REPO / "models.yaml"), parse_nodes("1x8xH100")), cloud="aws")
    assert "echo 'export RAY_AUTH_MODE=token' >> ~/.bashrc" in config["setup_commands"][0]
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"  # the same token on every node
    assert config["file_mounts"][str(Path(FLEET_PATH).parent)] == "/tmp/cascade.files"
    head = " ; ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "serve deploy /home/ray/cascade/serve.yaml" in head
    assert any("pip install -U 'cascade-serve[gpu]'" in c for c in config["setup_commands"])


def test_gcp_needs_a_project_and_unknown_shapes_are_refused() -> None:
    _, plan = _mixed()
    with pytest.raises(ValueError, match="--project: required with --cloud gcp"):
        _ray_up(plan, cloud="gcp")
    with pytest.raises(ValueError, match=r"--cloud gcp: no machine type with 8 x L40S \(none of that kind\)"):
        instance_for("gcp", "L40S", 8)
    with pytest.raises(ValueError, match=r"--cloud aws: no machine type with 2 x L4 \(it has 1, 4, 8 per machine\)"):
        instance_for("aws", "L4", 2)


@pytest.mark.slow
@pytest.mark.parametrize("cloud", ["aws", "gcp"])
def test_ray_up_config_passes_rays_own_validator(cloud: str) -> None:
    util = pytest.importorskip("ray.autoscaler._private.util", reason="ray is not installed")
    pytest.importorskip("jsonschema", reason="Ray's validator needs jsonschema")
    _, plan = _mixed()
    config = _ray_up(plan, cloud=cloud, project="my-project" if cloud == "gcp" else None)
    util.validate_config(util.prepare_config(copy.deepcopy(yaml.safe_load(yaml.safe_dump(config)))))


def _service(plan: FleetPlan, fleet: FleetConfig, cloud: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    config_map, service = kuberay_manifests(plan, LaunchSettings(), fleet_yaml=yaml.safe_dump(
        apply_plan(fleet, plan).model_dump(mode="json", exclude_none=True, by_alias=True)), cloud=cloud)
    return config_map, service


def test_kuberay_worker_groups_follow_the_plan_with_token_auth_on() -> None:
    fleet, plan = _mixed()
    config_map, service = _service(plan, fleet, cloud="gcp")
    assert (service["apiVersion"], service["kind"]) == ("ray.io/v1", "RayService")
    cluster = service["spec"]["rayClusterConfig"]
    assert cluster["authOptions"] == {"mode": "token"} and cluster["rayVersion"] == "2.60.0"
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    assert {name: (g["replicas"], g["minReplicas"], g["maxReplicas"]) for name, g in groups.items()} == {
        "h100-x8": (1, 1, 1), "l4-x4": (2, 2, 2)}
    h100 = groups["h100-x8"]["template"]["spec"]
    assert h100["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 8
    assert h100["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
    # The fleet every pod mounts is the planned file (the 72B's tensor parallel size written in).
    mounted = FleetConfig.from_mapping(yaml.safe_load(config_map["data"]["models.yaml"]))
    assert mounted.models[0].tensor_parallel_size == 4
    assert yaml.safe_load(service["spec"]["serveConfigV2"]) == serve_config(pip=["cascade-serve[gpu]"])


@pytest.mark.slow
def test_kuberay_serve_config_passes_rays_own_schema() -> None:
    schema = pytest.importorskip("ray.serve.schema", reason="ray[serve] is not installed")
    fleet, plan = _mixed()
    _, service = _service(plan, fleet)
    deploy = schema.ServeDeploySchema.model_validate(yaml.safe_load(service["spec"]["serveConfigV2"]))
    [app] = deploy.applications
    assert (app.name, app.import_path, app.args) == ("cascade", "serve.app:build_app", {"config": FLEET_PATH})
