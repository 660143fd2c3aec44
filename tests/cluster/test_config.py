"""The fleet file: the shipped models.yaml validates, and every bad input names its YAML key path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cascade_serve.main import main
from cluster.config import ConfigError, FleetConfig

REPO = Path(__file__).resolve().parents[2]


def _fleet(**cascade: Any) -> dict[str, Any]:
    return {
        "models": [
            {"model_loading_config": {"model_id": "small", "model_source": "/models/small"}},
            {
                "model_loading_config": {"model_id": "large", "model_source": "/models/large"},
                "engine_kwargs": {"tensor_parallel_size": 2},
                "deployment_config": {"autoscaling_config": {"min_replicas": 2, "max_replicas": 4}},
            },
        ],
        "cascade": cascade,
    }


def _problems(data: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        FleetConfig.from_mapping(data, source="models.yaml")
    assert str(info.value).startswith("models.yaml: ")
    return info.value.problems


def test_shipped_models_yaml_validates() -> None:
    fleet = FleetConfig.from_file(REPO / "models.yaml")
    assert fleet.model_ids[0] == "qwen2.5-math-1.5b" and fleet.model_ids[-1] == "qwen2.5-72b"
    assert fleet.models[-1].gpus_per_replica == 4
    assert fleet.total_gpus == 8  # the 1.5B pair shares one GPU (half each)
    assert [m.gpu_share for m in fleet.models[:2]] == [0.5, 0.5]
    assert fleet.cascade.policy == "cascade_routing"


def test_the_controller_reaches_replicas_over_grpc_unless_the_file_says_actor() -> None:
    assert FleetConfig.from_mapping(_fleet()).cascade.replica_transport == "grpc"
    data = _fleet()
    data["cascade"]["replica_transport"] = "actor"
    assert FleetConfig.from_mapping(data).cascade.replica_transport == "actor"


def test_gpus_count_tensor_parallel_and_min_replicas() -> None:
    fleet = FleetConfig.from_mapping(_fleet())
    assert [m.gpus_per_replica for m in fleet.models] == [1, 2]
    assert fleet.total_gpus == 1 + 2 * 2


def test_cpu_models_hold_no_gpu() -> None:
    data = _fleet()
    data["models"][0]["accelerator_config"] = {"kind": "cpu"}
    assert FleetConfig.from_mapping(data).models[0].gpus_per_replica == 0


# (where in the fleet, key, value or _DROP, a fragment of the expected problem)
_DROP = object()
_BAD = [
    ((), "fleet_name", "x", "fleet_name: unknown key"),
    (("models", 1), "engine_kwarg", {}, "models[1].engine_kwarg: unknown key"),
    (("models", 0, "model_loading_config"), "model_id", _DROP, "models[0].model_loading_config.model_id: Field req"),
    (("models", 0, "model_loading_config"), "model_id", "has space", "models[0].model_loading_config.model_id"),
    (("models", 1, "engine_kwargs"), "tensor_parallel_size", 0, "models[1].engine_kwargs: tensor_parallel_size"),
    (("models", 1, "engine_kwargs"), "gpu_memory_utilization", 1.5, "gpu_memory_utilization must be in (0, 1]"),
    (("models", 1, "deployment_config"), "autoscaling_confg", {}, "did you mean 'autoscaling_config'"),
    (("models", 0), "server_cls", "my.Server", "models[0].server_cls: unknown key"),
    (("models", 0), "accelerator_config", {"kind": "fpga"}, "models[0].accelerator_config"),
    (("models", 0), "accelerator_type", "H1OO", "models[0].accelerator_type: unknown accelerator 'H1OO' (did you"),
    (("models", 0), "placement_group_config", {"bundles": [{"GPU": -1}]}, "models[0].placement_group_config: bun"),
    (("models", 0), "placement_group_config", {"bundle_per_worker": 1}, "placement_group_config: bundle_per_w"),
    (("models", 0), "cascade", {"sizes": {}}, "models[0].cascade.sizes: unknown key"),
    (("models", 1, "model_loading_config"), "model_id", "small", "model_id: 'small' repeats models[0]"),
    (("cascade",), "lambda", 2.0, "cascade: give budget_gpu_s or lambda, not both"),
    (("cascade",), "stage_timeout_s", -1, "cascade.stage_timeout_s"),
    (("cascade",), "policy", "random", "cascade.policy"),
    (("cascade",), "replica_transport", "http", "cascade.replica_transport"),
    (("cascade",), "max_depth", 3, "cascade.max_depth: 3 exceeds the 2 models"),
    ((), "models", [], "models: List should have at least 1 item"),
]


@pytest.mark.parametrize(("where", "key", "value", "expected"), _BAD)
def test_bad_fleet_names_the_key_path(where: tuple[Any, ...], key: str, value: Any, expected: str) -> None:
    data = _fleet(budget_gpu_s=1.0) if key == "lambda" else _fleet()
    node: Any = data
    for step in where:
        node = node[step]
    if value is _DROP:
        del node[key]
    else:
        node[key] = value
    problems = _problems(data)
    assert any(expected in p for p in problems), problems


def test_every_problem_is_reported_at_once() -> None:
    data = _fleet()
    data["models"][0].update(engine_kwarg={})
    data["cascade"]["stage_timeout_s"] = 0
    assert len(_problems(data)) == 2


def test_top_level_must_be_a_mapping() -> None:
    assert "the top level must be a mapping" in _problems(["models"])[0]


def test_invalid_yaml_gives_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    path.write_text("models:\n  - model_loading_config: {model_id: a\n")
    with pytest.raises(ConfigError, match=r"line \d+, column \d+: invalid YAML"):
        FleetConfig.from_file(path)


def test_relative_local_sources_resolve_against_the_fleet_file(tmp_path: Path, monkeypatch: Any) -> None:
    (tmp_path / "fleet").mkdir()
    path = tmp_path / "fleet" / "models.yaml"
    path.write_text(
        "models:\n"
        "  - model_loading_config: {model_id: a, model_source: .cache/tiny/a}\n"
        "  - model_loading_config: {model_id: b, model_source: Qwen/Qwen2.5-7B-Instruct}\n"
        "  - model_loading_config: {model_id: c, model_source: /abs/models/c}\n"
        "  - model_loading_config: {model_id: d, model_source: ../shared/d}\n"
    )
    monkeypatch.chdir(tmp_path)  # the working directory must not matter
    sources = [m.model_loading_config.model_source for m in FleetConfig.from_file("fleet/models.yaml").models]
    assert sources == [
        str(tmp_path / "fleet" / ".cache" / "tiny" / "a"),
        "Qwen/Qwen2.5-7B-Instruct",
        "/abs/models/c",
        str(tmp_path / "shared" / "d"),
    ]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        FleetConfig.from_file(tmp_path / "nope.yaml")


def test_cli_validate_ok_and_bad(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(REPO / "models.yaml")]) == 0
    assert "qwen2.5-72b" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("models:\n  - model_loading_config: {model_id: a}\n    engine_kwarg: {}\n")
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "1 problem(s)" in err and "models[0].engine_kwarg: unknown key" in err


def test_cpu_fleet_file_matches_the_tiny_models() -> None:
    from toymodels.tiny import TINY_FLEET

    fleet = FleetConfig.from_file(REPO / "models.cpu.yaml")
    assert fleet.model_ids == list(TINY_FLEET)
    sources = [m.model_loading_config.model_source for m in fleet.models]
    assert sources == [str(REPO / ".cache" / "tiny" / name) for name in TINY_FLEET]
    assert all(m.on_cpu for m in fleet.models)
    assert fleet.total_gpus == 0
    # Replicas take no logical CPU, or two engines and the controller never schedule on 2 CPUs.
    assert all(m.deployment_config["ray_actor_options"]["num_cpus"] == 0 for m in fleet.models)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["models.yaml", "models.cpu.yaml", "models.64gpu.yaml"])
def test_entries_are_real_ray_llm_configs(name: str) -> None:
    """Each entry is accepted by ray.serve.llm.LLMConfig (the cpu extra, which CI installs, brings Ray)."""
    llm = pytest.importorskip("ray.serve.llm", reason="ray[serve] is not installed (the cpu/gpu extra)")
    for spec in FleetConfig.from_file(REPO / name).models:
        config = llm.LLMConfig.model_validate(spec.model_dump(exclude_none=True))
        assert config.model_id == spec.model_id
        assert (config.accelerator_config is not None and config.accelerator_config.kind == "cpu") == spec.on_cpu


def test_fleet_file_policies_are_the_api_policy_names() -> None:
    """cluster/ imports nothing of the project, so it spells the policy names itself; they must stay the
    names the controller and calibration map (routing.API_POLICY_NAMES), in the same order."""
    from typing import get_args

    from cluster.config import CascadeSettings
    from routing import API_POLICY_NAMES

    assert get_args(CascadeSettings.model_fields["policy"].annotation) == tuple(API_POLICY_NAMES)
