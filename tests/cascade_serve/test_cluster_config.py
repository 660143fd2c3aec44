"""``cascade cluster-config``: the files it writes, and its bad input as one line with exit code 2.
(Ray's own validators on the configs: ``tests/cluster/test_launch_configs.py``.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cascade_serve.main import main
from cluster.config import FleetConfig

REPO = Path(__file__).resolve().parents[2]


def test_ray_up_writes_the_config_and_the_folder_it_copies_to_every_node(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cluster.yaml"
    args = ["cluster-config", str(REPO / "models.yaml"), "--target", "ray-up", "--cloud", "aws", "-o", str(out)]
    assert main(args) == 0
    config = yaml.safe_load(out.read_text())
    assert [t["node_config"]["InstanceType"] for t in config["available_node_types"].values()] == [
        "m5.2xlarge", "p5.48xlarge"]  # the head, and the one 8 x H100 node the default fleet fits
    files = tmp_path / "cluster.files"
    assert config["file_mounts"]["/home/ray/cascade"] == str(files)
    planned = FleetConfig.from_file(files / "models.yaml")
    assert planned.model_ids == FleetConfig.from_file(REPO / "models.yaml").model_ids
    assert yaml.safe_load((files / "serve.yaml").read_text())["applications"][0]["args"] == {
        "config": "/home/ray/cascade/models.yaml"}
    assert "p5.48xlarge" not in capsys.readouterr().err


def test_kuberay_writes_a_config_map_and_a_rayservice(tmp_path: Path) -> None:
    out = tmp_path / "fleet.k8s.yaml"
    assert main(["cluster-config", str(REPO / "models.64gpu.yaml"), "--target", "kuberay", "--cloud", "aws",
                 "-o", str(out)]) == 0
    config_map, service = yaml.safe_load_all(out.read_text())
    assert config_map["kind"] == "ConfigMap" and service["kind"] == "RayService"
    [group] = service["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    assert (group["groupName"], group["replicas"]) == ("h100-x8", 8)
    assert group["template"]["spec"]["nodeSelector"] == {"node.kubernetes.io/instance-type": "p5.48xlarge"}


@pytest.mark.parametrize(
    ("args", "line"),
    [(["--target", "ray-up"], "--cloud: required with --target ray-up (aws or gcp)"),
     (["--target", "ray-up", "--cloud", "gcp"], "--project: required with --cloud gcp"),
     (["--target", "kuberay", "--nodes", "1x4xH100"],
      "the fleet's replicas together need 8 GPU; the cluster has 4 GPU"),
     (["--target", "kuberay", "--nodes", "1x8xH100,1x8xcpu"], "--nodes: 1x8xH100,1x8xcpu has nodes without GPUs"),
     (["--target", "ray-up", "--cloud", "gcp", "--project", "p", "--nodes", "1x8xA10G"],
      "qwen2.5-math-1.5b: one replica needs H100 GPU(s)")],
)
def test_bad_input_is_one_line_and_exit_code_2(args: list[str], line: str, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.yaml"
    assert main(["cluster-config", str(REPO / "models.yaml"), *args, "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert line in err[0] and all(e.startswith("cascade: error: ") for e in err)
    assert not out.exists()


def test_a_cpu_fleet_has_no_gpu_workers_to_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cluster-config", str(REPO / "models.cpu.yaml"), "--target", "kuberay", "-o",
                 str(tmp_path / "k.yaml")]) == 2
    assert "the fleet has no GPU model" in capsys.readouterr().err
