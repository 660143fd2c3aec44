"""``cluster.plan``: what goes where, the packing of small models, the refusals, and the node list."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cluster.config import ConfigError, FleetConfig
from cluster.memory import CUDA_CONTEXT_BYTES
from cluster.nodes import Node, NodeSpecError, node_from_resources, parse_nodes
from cluster.plan import CONTROLLER, PlanError, apply_plan, plan_fleet, smallest_cluster

REPO = Path(__file__).resolve().parents[2]
GIB = 2**30


def _fleet(*models: dict[str, Any]) -> FleetConfig:
    return FleetConfig.from_mapping({"models": list(models)}, source="fleet.yaml")


def _model(model_id: str, source: str, **extra: Any) -> dict[str, Any]:
    return {"model_loading_config": {"model_id": model_id, "model_source": source}, **extra}


def _problems(fleet: FleetConfig, nodes: str) -> list[str]:
    with pytest.raises(PlanError) as info:
        plan_fleet(fleet, parse_nodes(nodes))
    return info.value.problems


def test_the_default_fleet_fits_one_node_of_eight_h100s() -> None:
    plan = plan_fleet(FleetConfig.from_file(REPO / "models.yaml"), parse_nodes("1x8xH100"))
    assert (plan.gpus_used, plan.gpus_total, plan.nodes_used) == (8, 8, 1)
    assert plan.gpus_requested == plan.gpus_requested_at_max == 8 and plan.max_replicas_problem is None
    shared = [p for p in plan.placements if 0 < p.share < 1]
    assert {p.deployment for p in shared} == {"qwen2.5-math-1.5b", "qwen2.5-coder-1.5b"}
    assert len({(p.node, p.gpus) for p in shared}) == 1  # the pair on one GPU
    # Their memory fractions and both engines' CUDA contexts fit in that GPU.
    fractions = [m.gpu_memory_utilization or 0 for m in plan.models if m.gpu_share == 0.5]
    assert sum(fractions) * 79.2 * GIB + 2 * CUDA_CONTEXT_BYTES <= 79.2 * GIB
    assert [p.node for p in plan.placements if p.deployment == CONTROLLER] == ["node-1"]
    assert all(not m.chosen for m in plan.models)  # the file states every setting; the plan only checks
    assert json.loads(json.dumps(plan.to_json()))["totals"]["gpus_used"] == 8


def test_the_default_fleet_needs_more_than_four_h100s() -> None:
    assert _problems(FleetConfig.from_file(REPO / "models.yaml"), "1x4xH100") == [
        "the fleet's replicas together need 8 GPU; the cluster has 4 GPU"]


def test_small_models_left_open_are_packed_onto_shared_gpus() -> None:
    """Four 0.5B models whose entries say nothing of placement share one GPU, a quarter each, each with a
    memory fraction that leaves room for the CUDA context of every engine on the GPU."""
    small = {"engine_kwargs": {"max_model_len": 4096, "max_num_seqs": 32}}
    fleet = _fleet(*(_model(f"q{i}", "Qwen/Qwen2.5-0.5B-Instruct", **small) for i in range(4)))
    plan = plan_fleet(fleet, parse_nodes("1x2xH100"))
    assert {m.gpu_share for m in plan.models} == {0.25}
    assert {m.gpu_memory_utilization for m in plan.models} == {0.23}  # floor((0.25 x 79.2 GiB - 1 GiB) / 79.2 GiB)
    assert {p.gpus for p in plan.placements if p.share} == {(0,)} and plan.gpus_used == 1
    assert all(m.chosen == ("placement_group_config", "gpu_memory_utilization") for m in plan.models)
    planned = apply_plan(fleet, plan)
    assert planned.models[0].placement_group_config == {"bundles": [{"GPU": 0.25}]}
    assert planned.models[0].engine_kwargs == {"max_model_len": 4096, "max_num_seqs": 32,
                                               "gpu_memory_utilization": 0.23}
    assert planned.total_gpus == 1.0
    again = plan_fleet(planned, parse_nodes("1x2xH100"))  # the planned file plans the same, choosing nothing
    assert [m.gpu_share for m in again.models] == [0.25] * 4 and not any(m.chosen for m in again.models)


def test_a_model_one_gpu_cannot_hold_gets_the_smallest_tensor_parallel_size_that_does() -> None:
    fleet = _fleet(_model("big", "Qwen/Qwen2.5-72B-Instruct",
                          engine_kwargs={"max_model_len": 8192, "max_num_seqs": 48}))
    [m] = plan_fleet(fleet, parse_nodes("1x8xH100")).models
    assert m.tensor_parallel_size == 4 and m.chosen == ("tensor_parallel_size",)
    assert m.kv_sequences == 48
    assert apply_plan(fleet, plan_fleet(fleet, parse_nodes("1x8xH100"))).models[0].tensor_parallel_size == 4


def test_where_no_size_holds_every_sequence_the_smallest_that_starts_is_taken_and_shown() -> None:
    fleet = _fleet(_model("big", "Qwen/Qwen2.5-72B-Instruct", engine_kwargs={"max_model_len": 32768}))
    [m] = plan_fleet(fleet, parse_nodes("1x8xH100")).models
    assert m.tensor_parallel_size == 4
    assert m.memory is not None and 0 < (m.kv_sequences or 0) < m.memory.max_num_seqs == 256


def test_a_model_too_large_for_any_node_is_one_line_with_its_need_and_the_largest_node() -> None:
    fleet = _fleet(_model("big", "Qwen/Qwen2.5-72B-Instruct", engine_kwargs={"max_model_len": 8192}))
    [line] = _problems(fleet, "2x4xL4,1x2xA10G")
    assert line.startswith("big: one replica needs 39.5 GiB on each of 4 GPUs (weights 135.4 GiB")
    assert line.endswith("the largest node offers 4 x L4 (21.9 GiB), 0.9 of each GPU for the engine")


def test_an_accelerator_no_node_has_is_named() -> None:
    fleet = _fleet(_model("q", "Qwen/Qwen2.5-7B-Instruct", accelerator_type="H100"))
    assert _problems(fleet, "2x4xL4") == ["q: one replica needs H100 GPU(s); the largest node offers 4 x L4 (21.9 GiB)"]


def test_a_tensor_parallel_size_that_does_not_divide_the_heads_names_its_key() -> None:
    fleet = _fleet(_model("q", "Qwen/Qwen2.5-72B-Instruct", engine_kwargs={"tensor_parallel_size": 3}))
    assert _problems(fleet, "1x8xH100") == [
        "models[0].engine_kwargs.tensor_parallel_size: 3 does not divide the 64 attention heads of q"]


def test_more_gpus_per_replica_than_a_node_has() -> None:
    fleet = _fleet(_model("q", "Qwen/Qwen2.5-72B-Instruct", engine_kwargs={"tensor_parallel_size": 8}))
    assert _problems(fleet, "4x4xH100") == [
        "q: one replica needs 8 GPUs on one node (tensor parallel 8); the largest node offers 4 x H100 (79.2 GiB)"]


def test_a_memory_fraction_that_starves_the_engine() -> None:
    kwargs = {"gpu_memory_utilization": 0.15, "max_model_len": 8192}
    [line] = _problems(_fleet(_model("q", "Qwen/Qwen2.5-7B-Instruct", engine_kwargs=kwargs)), "1x1xH100")
    assert line.startswith("q: one replica needs 17.6 GiB on one GPU (weights 14.2 GiB, one 8192-token sequence's")
    assert line.endswith("the largest node offers 1 x H100 (79.2 GiB), 0.15 of each GPU for the engine")
    kwargs["tensor_parallel_size"] = 1  # stated, not chosen: the fraction is what fails
    [line] = _problems(_fleet(_model("q", "Qwen/Qwen2.5-7B-Instruct", engine_kwargs=kwargs)), "1x1xH100")
    assert line.startswith("q: gpu_memory_utilization 0.15 gives each H100 11.9 GiB; its share of the weights")


@pytest.mark.parametrize(
    ("engine_kwargs", "bundle", "expected"),
    [({"gpu_memory_utilization": 0.9}, {"GPU": 0.5},
      "models[0].engine_kwargs.gpu_memory_utilization: 0.9 exceeds a GPU share of 0.5 (placement_group_config)"),
     ({}, {"GPU": 0.5}, "models[0].engine_kwargs.gpu_memory_utilization: required with a GPU share of 0.5"),
     ({"gpu_memory_utilization": 0.2, "tensor_parallel_size": 2}, {"GPU": 0.25},
      "models[0].engine_kwargs.tensor_parallel_size: a GPU share of 0.25 (placement_group_config) holds one engine")],
)
def test_conflicting_memory_fractions_on_a_shared_gpu_name_the_key(engine_kwargs: dict[str, Any],
                                                                   bundle: dict[str, float], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        _fleet(_model("q", "Qwen/Qwen2.5-0.5B-Instruct", engine_kwargs=engine_kwargs,
                      placement_group_config={"bundles": [bundle]}))
    [problem] = info.value.problems
    assert problem.startswith(expected)


def test_a_stated_share_is_never_given_a_tensor_parallel_size() -> None:
    """However short its memory, a replica on a share of a GPU stays one engine worker on that share."""
    fleet = _fleet(_model("q", "Qwen/Qwen2.5-7B-Instruct", placement_group_config={"bundles": [{"GPU": 0.5}]},
                          engine_kwargs={"gpu_memory_utilization": 0.45, "max_model_len": 32768}))
    [m] = plan_fleet(fleet, parse_nodes("1x8xH100")).models
    assert (m.tensor_parallel_size, m.gpu_share, m.chosen) == (1, 0.5, ())
    assert m.memory is not None and (m.kv_sequences or 0) < m.memory.max_num_seqs


def test_a_memory_fraction_that_fills_its_share_leaves_no_room_for_the_cuda_contexts() -> None:
    fleet = _fleet(_model("q", "Qwen/Qwen2.5-0.5B-Instruct", placement_group_config={"bundles": [{"GPU": 0.5}]},
                          engine_kwargs={"gpu_memory_utilization": 0.5, "max_model_len": 4096}))
    assert _problems(fleet, "1x1xH100") == [
        "models[0].engine_kwargs.gpu_memory_utilization: 0.5 of a H100 (39.6 GiB) leaves no room in its GPU share "
        "0.5 for the CUDA context (1 GiB) of each engine on the GPU; at most 0.48"]


def test_an_unknown_model_without_a_size_hint() -> None:
    fleet = _fleet(_model("llama", "meta-llama/Llama-3.1-8B-Instruct"))
    [line] = _problems(fleet, "1x8xH100")
    assert line.startswith("llama: the size of 'meta-llama/Llama-3.1-8B-Instruct' is unknown")
    hint = {"parameters_billion": 8.03, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
            "head_dim": 128}
    fleet = _fleet(_model("llama", "meta-llama/Llama-3.1-8B-Instruct", cascade={"size": hint},
                          engine_kwargs={"max_model_len": 8192, "max_num_seqs": 16}))
    [m] = plan_fleet(fleet, parse_nodes("1x8xH100")).models
    assert m.memory_source == "cascade.size hint" and m.tensor_parallel_size == 1


def test_replicas_spread_over_nodes_and_the_maximum_is_tried_too() -> None:
    spec = {"engine_kwargs": {"max_model_len": 8192, "max_num_seqs": 96},
            "deployment_config": {"autoscaling_config": {"min_replicas": 3, "max_replicas": 5}}}
    plan = plan_fleet(_fleet(_model("q", "Qwen/Qwen2.5-7B-Instruct", **spec)), parse_nodes("2x2xH100"))
    assert sorted(p.node for p in plan.placements if p.gpus) == ["node-1", "node-1", "node-2"]
    assert plan.max_replicas_problem is not None and plan.max_replicas_problem.startswith("q: replica 5 of 5 finds "
                                                                                          "no room")


def test_the_cpu_fleet_on_two_cpus() -> None:
    fleet = FleetConfig.from_file(REPO / "models.cpu.yaml")
    plan = plan_fleet(fleet, parse_nodes("1x2xcpu"))
    assert {p.deployment for p in plan.placements} == {"tiny-small", "tiny-large", CONTROLLER}
    assert _problems(fleet, "1x1xcpu") == ["the fleet's replicas together need 2 CPU; the cluster has 1 CPU"]


def test_the_controller_is_the_app_s_own() -> None:
    from cluster import plan
    from serve import app

    assert (plan.CONTROLLER, plan.CONTROLLER_CPUS) == (app.CONTROLLER_DEPLOYMENT, app.CONTROLLER_ACTOR_CPUS)


def test_the_smallest_cluster_of_eight_gpu_nodes() -> None:
    default = smallest_cluster(FleetConfig.from_file(REPO / "models.yaml"))
    assert [(n.accelerator, n.gpus) for n in default] == [("H100", 8)]
    assert len(smallest_cluster(FleetConfig.from_file(REPO / "models.64gpu.yaml"))) == 8
    with pytest.raises(PlanError, match=r"models\[0\]\.accelerator_type: q names no GPU kind"):
        smallest_cluster(_fleet(_model("q", "Qwen/Qwen2.5-7B-Instruct")))


def test_the_64_gpu_fleet_uses_every_gpu_of_eight_nodes() -> None:
    fleet = FleetConfig.from_file(REPO / "models.64gpu.yaml")
    plan = plan_fleet(fleet, parse_nodes("8x8xH100"))
    assert (plan.gpus_used, plan.gpus_total, plan.gpus_requested) == (64, 64, 64)
    assert _problems(fleet, "7x8xH100") == ["the fleet's replicas together need 64 GPU; the cluster has 56 GPU"]


def test_node_specs() -> None:
    nodes = parse_nodes("2x8xH100, 1x4xL4:24,1x16xcpu")
    assert [(n.name, n.accelerator, n.gpus, n.cpus) for n in nodes] == [
        ("node-1", "H100", 8, None), ("node-2", "H100", 8, None), ("node-3", "L4", 4, None), ("node-4", None, 0, 16.0)]
    assert nodes[2].gpu_memory_bytes == 24 * GIB
    assert nodes[0].resources() == {"GPU": 8.0, "accelerator_type:H100": 1.0}


@pytest.mark.parametrize(
    ("text", "message"),
    [("8xH100", "'8xH100' is not COUNTxGPUSxKIND"), ("1x8xH1OO", "unknown accelerator 'H1OO' (did you mean 'H100'?)"),
     ("0x8xH100", "needs at least one node"), ("1x8xMXC500", "unknown accelerator 'MXC500'")],
)
def test_bad_node_specs_name_the_part(text: str, message: str) -> None:
    with pytest.raises(NodeSpecError, match=r"^--nodes: ") as info:
        parse_nodes(text)
    assert message in str(info.value)


def test_live_nodes_from_ray_resources() -> None:
    node = node_from_resources("10.0.0.2", {"CPU": 96.0, "GPU": 8.0, "memory": 1e12, "accelerator_type:A100": 1.0,
                                            "accelerator_type:A100-80G": 1.0})
    assert (node.accelerator, node.gpus, node.cpus) == ("A100-80G", 8, 96.0)
    assert round(node.gpu_memory_bytes / GIB, 1) == 79.1
    assert node.offers("A100") and node.offers("A100-80G") and node.offers(None) and not node.offers("H100")
    assert node_from_resources("head", {"CPU": 8.0}) == Node("head", None, 0, 0, 8.0, None)
    with pytest.raises(NodeSpecError, match="node n: 2 GPU\\(s\\) of an unknown kind"):
        node_from_resources("n", {"CPU": 8.0, "GPU": 2.0})


def test_custom_resources_of_live_nodes_are_kept_and_placement_group_shares_are_not() -> None:
    node = node_from_resources("127.0.0.1/ab12cd", {"CPU": 1.0, "memory": 1e9, "group_small": 1.0,
                                                    "node:127.0.0.1": 1.0, "object_store_memory": 1e8,
                                                    "CPU_group_0_f00d": 0.5, "bundle_group_f00d": 1000.0})
    assert node.custom == (("group_small", 1.0),)
    assert node.resources()["group_small"] == 1.0
    assert "group_small" in node.kind


def _group_nodes() -> list[Node]:
    return [node_from_resources(name, {"CPU": cpus, **extra}) for name, cpus, extra in (
        ("head", 2.0, {}), ("worker-1", 1.0, {"group_large": 1.0}), ("worker-2", 1.0, {"group_small": 1.0}))]


def test_a_model_pinned_to_a_node_group_is_planned_on_the_node_that_offers_it() -> None:
    fleet = FleetConfig.from_file(REPO / "models.cpu.multinode.yaml")
    plan = plan_fleet(fleet, _group_nodes())
    where = {p.deployment: p.node for p in plan.placements}
    assert where == {"tiny-small": "worker-2", "tiny-large": "worker-1", "CascadeController": "head"}
    [small] = [m for m in plan.models if m.model_id == "tiny-small"]
    assert small.bundles() == ({"CPU": 0.5, "group_small": 1.0},)


def test_a_node_group_no_node_offers_is_refused_naming_it() -> None:
    fleet = FleetConfig.from_file(REPO / "models.cpu.multinode.yaml")
    nodes = [n for n in _group_nodes() if n.name != "worker-2"]
    with pytest.raises(PlanError) as info:
        plan_fleet(fleet, nodes)
    [line] = info.value.problems
    assert line.startswith("tiny-small: ") and "1 group_small" in line and "0 group_small" in line
