"""``cluster.feasibility``: which fleets a cluster can never hold, and the one line that says why.

The demands here are what Ray Serve LLM derives for such models (one bundle per tensor-parallel rank,
the first also holding the replica actor's CPU); ``tests/serve/test_serving_e2e.py`` derives them from a
real fleet file on a real cluster.
"""

from __future__ import annotations

from cluster.feasibility import ReplicaDemand, unplaceable

H100 = "accelerator_type:H100"
NODE_8XH100 = {"CPU": 208.0, "GPU": 8.0, "memory": 1.8e12, H100: 1.0}
NODE_4XL4 = {"CPU": 48.0, "GPU": 4.0, "memory": 1.9e11, "accelerator_type:L4": 1.0}
CPU_NODE = {"CPU": 2.0, "memory": 1.6e10}


def _gpu_model(tp: int, replicas: int = 1, strategy: str = "PACK") -> ReplicaDemand:
    bundles = ({"CPU": 1.0, "GPU": 1.0, H100: 0.001},) + ({"GPU": 1.0, H100: 0.001},) * (tp - 1)
    return ReplicaDemand(bundles=bundles, strategy=strategy, replicas=replicas)


def test_a_fleet_that_fits_has_no_problems() -> None:
    demands = {"qwen2.5-72b": _gpu_model(4), "qwen2.5-7b": _gpu_model(1, replicas=2), "qwen2.5-1.5b": _gpu_model(1)}
    assert unplaceable(demands, [NODE_8XH100]) == []
    cpu = {"tiny-small": ReplicaDemand(({"CPU": 0.5, "GPU": 0.0},), "PACK", 1),
           "tiny-large": ReplicaDemand(({"CPU": 0.5, "GPU": 0.0},), "PACK", 1),
           "CascadeController": ReplicaDemand(({"CPU": 1.0},), "PACK", 1)}
    assert unplaceable(cpu, [CPU_NODE]) == []


def test_a_model_no_node_can_hold_is_named_with_what_it_needs_and_the_largest_node_offers() -> None:
    problems = unplaceable({"qwen2.5-7b": _gpu_model(1), "qwen2.5-72b": _gpu_model(8, strategy="STRICT_PACK")},
                           [{**NODE_8XH100, "GPU": 4.0}, {**NODE_8XH100, "GPU": 2.0}])
    assert problems == ["qwen2.5-72b: one replica needs 1 CPU, 8 GPU, H100 on one node; the largest node offers "
                        "208 CPU, 4 GPU, H100"]


def test_a_missing_accelerator_type_is_named() -> None:
    [problem] = unplaceable({"qwen2.5-7b": _gpu_model(1)}, [NODE_4XL4])
    assert problem.startswith("qwen2.5-7b: one replica needs a bundle of 1 CPU, 1 GPU, H100 on one node")
    assert problem.endswith("the largest node offers 48 CPU, 4 GPU, no H100")


def test_no_gpus_at_all() -> None:
    [problem] = unplaceable({"qwen2.5-1.5b": _gpu_model(1)}, [CPU_NODE])
    assert problem == "qwen2.5-1.5b: one replica needs a bundle of 1 CPU, 1 GPU, H100 on one node; the largest " \
                      "node offers 2 CPU, 0 GPU, no H100"


def test_replicas_that_each_fit_but_not_together_are_one_line_for_the_fleet() -> None:
    """The default file's first form: nine single-GPU replicas on one 8-GPU node."""
    demands = {f"m{i}": _gpu_model(1) for i in range(9)}
    assert unplaceable(demands, [NODE_8XH100]) == [
        "the fleet's replicas together need 9 GPU; the cluster has 8 GPU"]
    assert unplaceable(demands, [NODE_8XH100, NODE_8XH100]) == []


def test_bundles_spread_over_nodes_need_enough_nodes() -> None:
    spread = ReplicaDemand(bundles=({"GPU": 1.0},) * 3, strategy="STRICT_SPREAD", replicas=1)
    assert unplaceable({"m": spread}, [{"GPU": 4.0}, {"GPU": 4.0}]) == [
        "m: one replica spreads 3 bundles over as many nodes; 2 node(s) can hold one"]
    assert unplaceable({"m": spread}, [{"GPU": 1.0}] * 3) == []
    # PACK may split a replica's bundles over nodes: two 2-GPU nodes hold a TP-4 replica.
    assert unplaceable({"m": _gpu_model(4)}, [{**NODE_8XH100, "GPU": 2.0}] * 2) == []


def test_fractional_resources_compare_with_rays_fixed_point_room() -> None:
    thirds = {f"m{i}": ReplicaDemand(({"GPU": 1 / 3},), "PACK", 1) for i in range(3)}
    assert unplaceable(thirds, [{"GPU": 1.0}]) == []
