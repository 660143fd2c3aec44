"""``serve.deploy.check_placement``: the placement plan made on the live cluster's nodes and written into the
fleet ``cascade up`` deploys, or a refusal before anything is deployed (issue 14, item 2).

The cluster's node list is faked here (a GPU node cannot be produced on this machine); the real-stack
counterpart, a refusal on the live CPU cluster that leaves the running fleet as it is, is
``test_serving_e2e.py``'s placement test.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cluster.config import FleetConfig
from serve import deploy

pytest.importorskip("ray")
ROOT = Path(__file__).resolve().parents[2]
GIB = 1024**3


def _cluster(monkeypatch: pytest.MonkeyPatch, *nodes: dict[str, float]) -> None:
    import ray

    import serve.app

    listed = [{"Alive": True, "NodeManagerAddress": f"10.0.0.{i}", "Resources": r} for i, r in enumerate(nodes)]
    monkeypatch.setattr(ray, "nodes", lambda: listed)
    # What Serve would ask for is read from Ray Serve LLM's deployment options, which join a Ray cluster;
    # the plan's own demands are what is checked here.
    monkeypatch.setattr(serve.app, "replica_demands", lambda fleet: {})


def h100_node(gpus: float) -> dict[str, float]:
    return {"CPU": 64.0, "GPU": gpus, "memory": 900.0 * GIB, "accelerator_type:H100": 1.0}


def test_the_default_fleet_is_deployed_as_planned_on_one_h100_node(monkeypatch: pytest.MonkeyPatch) -> None:
    _cluster(monkeypatch, h100_node(8))
    planned = deploy.check_placement(FleetConfig.from_file(ROOT / "models.yaml"))
    kwargs: dict[str, Any] = {m.model_id: m.engine_kwargs for m in planned.models}
    assert kwargs["qwen2.5-72b"]["tensor_parallel_size"] == 4
    shared = [m for m in planned.models if m.model_id.endswith("1.5b")]
    assert all(m.placement_group_config["bundles"] == [{"GPU": 0.5}] for m in shared)
    assert sum(m.engine_kwargs["gpu_memory_utilization"] for m in shared) < 1.0


def test_a_cluster_too_small_is_refused_in_the_plans_words(monkeypatch: pytest.MonkeyPatch) -> None:
    _cluster(monkeypatch, h100_node(4))
    with pytest.raises(deploy.PlacementError) as refused:
        deploy.check_placement(FleetConfig.from_file(ROOT / "models.yaml"))
    assert refused.value.problems == ["the fleet's replicas together need 8 GPU; the cluster has 4 GPU"]


def test_the_cpu_fleet_is_deployed_as_written(monkeypatch: pytest.MonkeyPatch) -> None:
    _cluster(monkeypatch, {"CPU": 2.0, "memory": 20.0 * GIB})
    fleet = FleetConfig.from_file(ROOT / "models.cpu.yaml")
    assert deploy.check_placement(fleet).model_dump() == fleet.model_dump()
