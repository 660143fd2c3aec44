"""``cascade plan``: the table and the JSON, the node sources, and every bad input as one line, exit code 2,
nothing started (the cluster calls are replaced by ones that fail the test if reached)."""

from __future__ import annotations

import json
import socket
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from cascade_serve.main import main

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def no_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    """Joining or starting Ray fails the test: a plan from a file or --nodes must never touch a cluster."""
    import serve.deploy

    def refuse(*args: Any, **kwargs: Any) -> str:
        raise AssertionError("cascade plan reached for a Ray cluster")

    monkeypatch.setattr(serve.deploy, "connect", refuse)


def _one_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("cascade: error: ")
    return err[0]


def test_the_default_fleet_on_one_node_of_eight_h100s(tmp_path: Path, no_cluster: None,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "plan.json"
    assert main(["plan", str(REPO / "models.yaml"), "--nodes", "1x8xH100", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "GPUs: 8 of 8 used on 1 of 1 GPU node(s)" in printed and "qwen2.5-72b" in printed
    plan = json.loads(out.read_text())
    assert plan["fleet"].endswith("models.yaml") and plan["nodes_from"] == "1x8xH100"
    assert plan["totals"]["gpus_used"] == 8 and plan["totals"]["max_replicas_fit"]
    by_id = {m["model_id"]: m for m in plan["models"]}
    assert by_id["qwen2.5-72b"]["tensor_parallel_size"] == 4
    assert by_id["qwen2.5-math-1.5b"]["bundles"] == [{"CPU": 1.0, "GPU": 0.5, "accelerator_type:H100": 0.001}]
    assert by_id["qwen2.5-7b"]["memory"]["weights_bytes"] == 7_615_616_512 * 2


def test_the_cpu_fleet_on_this_machine(tmp_path: Path, no_cluster: None, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    import cascade_serve.cluster_nodes as cluster_nodes

    monkeypatch.setattr(cluster_nodes.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(cluster_nodes.shutil, "which", lambda name, **kw: None)  # no nvidia-smi
    assert main(["plan", str(REPO / "models.cpu.yaml"), "--json", str(tmp_path / "p.json")]) == 0
    assert "CPUs: 2 requested of 2" in capsys.readouterr().out
    monkeypatch.setattr(cluster_nodes.os, "cpu_count", lambda: 1)
    assert main(["plan", str(REPO / "models.cpu.yaml"), "--json", str(tmp_path / "p.json")]) == 2
    assert _one_line(capsys).endswith("the fleet's replicas together need 2 CPU; the cluster has 1 CPU")


def test_write_fleet_writes_the_plans_choices(tmp_path: Path, no_cluster: None) -> None:
    from cluster.config import FleetConfig

    fleet = tmp_path / "small.yaml"
    fleet.write_text("models:\n  - model_loading_config: {model_id: q, model_source: Qwen/Qwen2.5-0.5B-Instruct}\n"
                     "    engine_kwargs: {max_model_len: 4096, max_num_seqs: 32}\n")
    planned = tmp_path / "planned.yaml"
    assert main(["plan", str(fleet), "--nodes", "1x1xH100", "--json", str(tmp_path / "p.json"),
                 "--write-fleet", str(planned)]) == 0
    [spec] = FleetConfig.from_file(planned).models
    assert spec.gpu_share == 0.25 and spec.engine_kwargs["gpu_memory_utilization"] == 0.23


def _file(tmp_path: Path, entry: str) -> str:
    path = tmp_path / "fleet.yaml"
    path.write_text("models:\n  - model_loading_config: {model_id: m, model_source: Qwen/Qwen2.5-72B-Instruct}\n"
                    + entry)
    return str(path)


@pytest.mark.parametrize(
    ("entry", "nodes", "line"),
    [("    accelerator_type: H1OO\n", "1x8xH100",
      "fleet.yaml: models[0].accelerator_type: unknown accelerator 'H1OO' (did you mean 'H100'?)"),
     ("    engine_kwargs: {tensor_parallel_size: 3}\n", "1x8xH100",
      "models[0].engine_kwargs.tensor_parallel_size: 3 does not divide the 64 attention heads of m"),
     ("    engine_kwargs: {max_model_len: 8192}\n", "2x4xL4",
      "m: one replica needs 39.5 GiB on each of 4 GPUs (weights 135.4 GiB, one 8192-token sequence's KV cache, "
      "headroom); the largest node offers 4 x L4 (21.9 GiB), 0.9 of each GPU for the engine"),
     ("    placement_group_config: {bundles: [{GPU: 0.5}]}\n    engine_kwargs: {gpu_memory_utilization: 0.9}\n",
      "1x8xH100", "fleet.yaml: models[0].engine_kwargs.gpu_memory_utilization: 0.9 exceeds a GPU share of 0.5"),
     ("", "1x8xH1OO", "--nodes: '1x8xH1OO': unknown accelerator 'H1OO' (did you mean 'H100'?)")],
)
def test_bad_input_is_one_line_and_exit_code_2(entry: str, nodes: str, line: str, tmp_path: Path, no_cluster: None,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", _file(tmp_path, entry), "--nodes", nodes, "--json", str(tmp_path / "p.json")]) == 2
    assert line in _one_line(capsys)
    assert not (tmp_path / "p.json").exists()


def test_an_unreachable_ray_address_is_one_line_within_seconds(tmp_path: Path, no_cluster: None,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["plan", str(REPO / "models.yaml"), "--address", f"127.0.0.1:{port}"]) == 2
    assert f"--address: no Ray cluster answers at 127.0.0.1:{port}" in _one_line(capsys)


def test_address_auto_without_a_local_cluster(no_cluster: None, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    import serve.deploy

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(serve.deploy, "_local_cluster_running", lambda: False)
    assert main(["plan", str(REPO / "models.yaml"), "--address", "auto"]) == 2
    assert _one_line(capsys) == ("cascade: error: --address auto: no Ray cluster runs on this machine and "
                                 "RAY_ADDRESS is unset")


def test_a_live_clusters_nodes_are_read_from_ray(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """Ray's report of each alive node (``ray.nodes()``) becomes the plan's nodes; Ray itself is a stand-in."""
    import serve.deploy

    report = [{"Alive": True, "NodeID": "a" * 56, "NodeManagerAddress": "10.0.0.1", "Resources": {"CPU": 8.0}},
              {"Alive": True, "NodeID": "b" * 56, "NodeManagerAddress": "10.0.0.2",
               "Resources": {"CPU": 192.0, "GPU": 8.0, "accelerator_type:H100": 1.0}},
              {"Alive": False, "NodeID": "c" * 56, "NodeManagerAddress": "10.0.0.3", "Resources": {}}]
    calls: list[str] = []
    fake_ray = types.ModuleType("ray")
    fake_ray.nodes = lambda: report  # type: ignore[attr-defined]
    fake_ray.shutdown = lambda: calls.append("shutdown")  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ray", fake_ray)
    monkeypatch.setattr(serve.deploy, "check_reachable", lambda address: None)
    monkeypatch.setattr(serve.deploy, "connect", lambda address, **kw: calls.append(f"connect {address}") or "existing")
    out = tmp_path / "p.json"
    assert main(["plan", str(REPO / "models.yaml"), "--address", "10.0.0.1:6379", "--json", str(out)]) == 0
    assert calls == ["connect 10.0.0.1:6379", "shutdown"]
    plan = json.loads(out.read_text())
    assert [(n["name"], n["gpus"]) for n in plan["nodes"]] == [("10.0.0.1", 0), ("10.0.0.2", 8)]
    assert {p["node"] for p in plan["placements"] if p["gpus"]} == {"10.0.0.2"}
    assert {p["node"] for p in plan["placements"] if p["deployment"] == "CascadeController"} == {"10.0.0.1"}
    assert "the Ray cluster at 10.0.0.1:6379" in capsys.readouterr().out


@pytest.mark.parametrize(("name", "mib", "kind"), [("NVIDIA H100 80GB HBM3", 81559, "H100"),
                                                   ("NVIDIA A100-SXM4-80GB", 81920, "A100-80G"),
                                                   ("NVIDIA A100-PCIE-40GB", 40960, "A100-40G"),
                                                   ("NVIDIA L40S", 46068, "L40S"), ("NVIDIA L4", 23034, "L4"),
                                                   ("Tesla T4", 15360, "T4"), ("NVIDIA GeForce RTX 4090", 24564, None)])
def test_this_machines_gpus_by_their_nvidia_smi_names(name: str, mib: int, kind: str | None) -> None:
    from cascade_serve.cluster_nodes import _gpu_kind

    assert _gpu_kind(name, mib) == kind
