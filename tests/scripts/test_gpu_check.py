"""``scripts/gpu_check.py`` without a GPU, Ray or an engine: its options, the fleet it builds, the
preflight, the prompts, the verdicts, the JSON, the dry run, and the run's bookkeeping with its live
steps faked.

The live steps themselves are ``cascade_serve.serving_bench`` (run on the real fleet in
``tests/serve/test_serving_e2e.py``) and ``cascade calibrate`` (``calibration.run``, tested against a fake
fleet in ``tests/calibration/test_run.py``).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from calibration.graders import numeric_match
from calibration.prompt_set import load_prompt_set
from cascade_serve import serving_bench
from cluster.config import FleetConfig
from cluster.nodes import parse_nodes
from cluster.plan import plan_fleet
from scripts import gpu_check
from scripts.gpu_check import BadInput
from toymodels.tiny import TINY_FLEET

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """This machine as the probes see it: the stack installed, no GPU, nothing in the hub cache."""
    monkeypatch.setattr(gpu_check, "_gpu_names", list)
    monkeypatch.setattr(gpu_check, "_has_module", lambda name: True)
    monkeypatch.setattr(gpu_check, "_in_hf_cache", lambda repo_id: False)


# -- options ------------------------------------------------------------------------------------------------


def test_defaults_are_the_bench_serving_measurement_and_the_default_fleet() -> None:
    args = gpu_check.parse_args([])
    assert args.fleet is None and not args.tiny and not args.dry_run
    assert args.concurrency == [1, 8, 32] and args.max_tokens == 16
    assert args.json == Path("runs/gpu_check.json")


@pytest.mark.parametrize(("argv", "message"), [
    (["--tiny", "--fleet", "models.yaml"], "--tiny builds its own fleet"),
    (["--concurrency", "1,0"], "--concurrency"),
    (["--concurrency", "1,x"], "--concurrency"),
    (["--requests", "2", "--blocks", "3"], "--requests"),
    (["--requests-c1", "0"], "--requests-c1 must be at least 1"),
    (["--cal-prompts", "5"], "--cal-prompts must be at least"),
    (["--cal-concurrency", "0"], "--cal-concurrency"),
    (["--port", "70000"], "--port"),
    (["--ready-timeout-s", "0"], "--ready-timeout-s"),
    (["--models-dir", "/nonexistent/weights"], "--models-dir"),
    (["--bogus"], "unrecognized arguments"),
])
def test_bad_options_are_refused_by_name(argv: list[str], message: str) -> None:
    with pytest.raises(BadInput, match=message):
        gpu_check.parse_args(argv)


@pytest.mark.parametrize("argv", [
    ["--concurrency", "x"],
    ["--fleet", "absent.yaml"],
    ["--model", "nope", "--dry-run"],
    ["--dry-run", "--nodes", "1x1xNOPE"],
    ["--tiny", "--models-dir", "."],
])
def test_bad_input_is_one_line_and_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str], no_gpu: None,
                                          tmp_path: Path) -> None:
    assert gpu_check.main([*argv, "--json", str(tmp_path / "r.json")]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.splitlines()) == 1 and err.startswith("gpu_check: error: ")
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize(("flags", "named"), [
    ([], ["no NVIDIA GPU", "Qwen2.5-0.5B-Instruct/", "Qwen2.5-1.5B-Instruct/", "--tiny"]),
    (["--tiny"], ["no NVIDIA GPU"]),  # nothing to download, and nothing built for a run that cannot happen
])
def test_a_machine_without_a_gpu_is_told_what_it_lacks_before_anything_starts(
    flags: list[str], named: list[str], capsys: pytest.CaptureFixture[str], no_gpu: None, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(gpu_check, "_run", lambda *a, **k: pytest.fail("the run must not start"))
    monkeypatch.setattr(gpu_check, "_build_tiny", lambda fleet: pytest.fail("nothing may be built"))
    assert gpu_check.main([*flags, "--out", str(tmp_path / "out"), "--json", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("gpu_check: error: this machine cannot run the check: ")
    assert all(text in err for text in named)
    assert ("Qwen" in err) == (not flags)
    assert not (tmp_path / "out").exists()


# -- the fleet ---------------------------------------------------------------------------------------------


def test_the_default_fleet_is_two_gpu_models_on_one_gpu() -> None:
    fleet = gpu_check.resolve_fleet(None, models_dir=None, tiny=False)
    assert fleet.model_ids == ["qwen2.5-0.5b", "qwen2.5-1.5b"]
    assert not any(spec.on_cpu for spec in fleet.models)
    assert all(spec.accelerator_type is None for spec in fleet.models)  # any GPU kind (H100, H200, ...)
    plan = plan_fleet(fleet, parse_nodes("1x1xH100"))
    assert {p.deployment: p.gpus for p in plan.placements if p.gpus} == {"qwen2.5-0.5b": (0,), "qwen2.5-1.5b": (0,)}


def test_models_dir_holds_hub_ids_by_name_or_by_org_and_name(tmp_path: Path) -> None:
    (tmp_path / "Qwen2.5-0.5B-Instruct").mkdir()
    (tmp_path / "Qwen" / "Qwen2.5-1.5B-Instruct").mkdir(parents=True)
    fleet = gpu_check.resolve_fleet(None, models_dir=tmp_path, tiny=False)
    sources = [spec.model_loading_config.model_source for spec in fleet.models]
    assert sources == [str(tmp_path / "Qwen2.5-0.5B-Instruct"), str(tmp_path / "Qwen" / "Qwen2.5-1.5B-Instruct")]


def test_tiny_swaps_the_models_and_keeps_the_gpu_placement() -> None:
    fleet = gpu_check.resolve_fleet(None, models_dir=None, tiny=True)
    assert fleet.model_ids == list(TINY_FLEET)
    for spec in fleet.models:
        assert spec.model_loading_config.model_source == str(gpu_check.TINY_DIR / spec.model_id)
        assert spec.engine_kwargs["max_model_len"] <= gpu_check.TINY_MAX_MODEL_LEN
        assert spec.gpu_share == 0.5 and not spec.on_cpu


def test_a_one_model_fleet_is_refused(tmp_path: Path) -> None:
    text = (REPO / "models.gpucheck.yaml").read_text()
    one = tmp_path / "one.yaml"
    one.write_text(text[: text.index("  - model_loading_config: {model_id: qwen2.5-1.5b")]
                   + text[text.index("cascade:"):].replace("max_depth: 2", "max_depth: 1"))
    with pytest.raises(BadInput, match="at least 2 models"):
        gpu_check.resolve_fleet(one, models_dir=None, tiny=False)


# -- preflight ---------------------------------------------------------------------------------------------


def _preflight(fleet: Any, **changes: Any) -> list[str]:
    probes: dict[str, Any] = {"environ": {}, "has_module": lambda name: True, "gpu_names": ["NVIDIA H100 80GB HBM3"],
                              "in_hf_cache": lambda repo_id: True}
    return gpu_check.preflight(fleet, **{**probes, **changes})


def test_preflight_passes_a_ready_machine_and_names_each_lack() -> None:
    fleet = gpu_check.resolve_fleet(None, models_dir=None, tiny=False)
    assert _preflight(fleet) == []
    [stack] = _preflight(fleet, has_module=lambda name: name != "vllm")
    assert "vllm" in stack and ".[gpu]" in stack
    assert _preflight(fleet, gpu_names=[]) == ["no NVIDIA GPU found (nvidia-smi lists none)"]
    uncached = _preflight(fleet, in_hf_cache=lambda repo_id: repo_id != "Qwen/Qwen2.5-1.5B-Instruct")
    assert len(uncached) == 1 and uncached[0].startswith("qwen2.5-1.5b: Qwen/Qwen2.5-1.5B-Instruct is not in")
    assert _preflight(fleet, in_hf_cache=lambda repo_id: False, environ={"HF_HUB_OFFLINE": "0"}) == []


def test_preflight_checks_local_folders_and_skips_weights_built_here(tmp_path: Path) -> None:
    (tmp_path / "Qwen2.5-0.5B-Instruct").mkdir()
    (tmp_path / "Qwen2.5-0.5B-Instruct" / "config.json").write_text("{}")
    fleet = gpu_check.resolve_fleet(None, models_dir=tmp_path, tiny=False)
    [missing] = _preflight(fleet)
    assert missing == f"qwen2.5-1.5b: no model at {tmp_path / 'Qwen2.5-1.5B-Instruct'} (no config.json)"
    assert _preflight(fleet, check_weights=False) == []


def test_a_cpu_fleet_needs_no_gpu() -> None:
    fleet = FleetConfig.from_file(REPO / "models.cpu.yaml")
    assert _preflight(fleet, gpu_names=[], check_weights=False) == []


# -- calibration prompts and the cost error ------------------------------------------------------------------


def test_calibration_prompts_are_seeded_labelled_and_load_as_a_prompt_set(tmp_path: Path) -> None:
    rows = gpu_check.calibration_prompts(120, seed=3, max_tokens=48)
    assert rows == gpu_check.calibration_prompts(120, seed=3, max_tokens=48)
    assert rows != gpu_check.calibration_prompts(120, seed=4, max_tokens=48)
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    loaded = load_prompt_set(path, default_grader="exact_match", default_max_tokens=8)
    assert len({r.id for r in loaded}) == 120
    assert {r.grader for r in loaded} == {"numeric"} and {r.max_tokens for r in loaded} == {48}
    operand_digits = set()
    for row in rows:
        a, op, b = row["messages"][0]["content"].split("?")[0].split()[-3:]
        assert int(row["answer"]) == (int(a) + int(b) if op == "+" else int(a) * int(b))
        assert numeric_match(f"The answer is {row['answer']}.", row["answer"]) == 1.0
        operand_digits.add(len(a))
    assert operand_digits == {1, 2, 3, 4}  # a spread of prompt and answer lengths for the cost model


def test_cost_error_is_the_worst_models_error_given_tokens_in_percent() -> None:
    summary = {"per_model": {
        "small": {"cost_mape_given_tokens": 0.04, "cost_mape_ex_ante": 0.30, "gpu_s_per_query": 0.01},
        "large": {"cost_mape_given_tokens": 0.12, "cost_mape_ex_ante": 0.20, "gpu_s_per_query": 0.05},
    }}
    error = gpu_check.cost_error(summary)
    assert error["worst_model"] == "large" and error["cost_mape_pct"] == pytest.approx(12.0)
    assert error["per_model"]["small"]["mape_ex_ante_pct"] == pytest.approx(30.0)
    with pytest.raises(ValueError, match="no model"):
        gpu_check.cost_error({"per_model": {}})


def test_the_serving_numbers_come_from_the_lowest_and_highest_concurrency() -> None:
    def level(direct_ms: float, controller_ms: float, direct_rps: float, controller_rps: float) -> dict[str, Any]:
        arms = {"direct": (direct_ms, direct_rps), "controller": (controller_ms, controller_rps),
                "passthrough": (direct_ms + 1.0, direct_rps)}
        return {**{a: {"p50_ms": ms, "throughput_rps": rps} for a, (ms, rps) in arms.items()},
                "non_engine_ms_p50": {"direct": direct_ms / 10, "controller": controller_ms / 10}}

    head = serving_bench.headline({"2": level(100.0, 103.0, 9.0, 8.0), "8": level(200.0, 210.0, 40.0, 30.0),
                                   "32": level(500.0, 600.0, 50.0, 46.0)})
    assert head["controller_overhead_ms_p50"] == pytest.approx(3.0)
    assert head["passthrough_overhead_ms_p50"] == pytest.approx(1.0)
    assert head["controller_non_engine_overhead_ms_p50"] == pytest.approx(0.3)
    assert head["throughput_ratio"] == pytest.approx(0.92)


# -- verdicts and JSON ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("key", "value", "verdict"), [
    ("controller_overhead_ms_p50", 5.0, "PASS"), ("controller_overhead_ms_p50", 5.01, "FAIL"),
    ("controller_overhead_ms_p50", -0.4, "PASS"),  # faster than direct: noise, and within the target
    ("throughput_ratio", 0.90, "PASS"), ("throughput_ratio", 0.899, "FAIL"), ("throughput_ratio", 1.3, "PASS"),
    ("cost_mape_pct", 10.0, "PASS"), ("cost_mape_pct", 10.5, "FAIL"),
    ("cost_mape_pct", None, "NO DATA"), ("throughput_ratio", math.nan, "NO DATA"),
])
def test_each_target_has_its_direction_and_threshold(key: str, value: float | None, verdict: str) -> None:
    [row] = [r for r in gpu_check.evaluate({key: value})["targets"] if r["key"] == key]
    assert row["verdict"] == verdict


def test_the_check_passes_only_when_every_target_passes() -> None:
    good = {"controller_overhead_ms_p50": 2.0, "throughput_ratio": 0.95, "cost_mape_pct": 7.0}
    assert gpu_check.evaluate(good)["verdict"] == "PASS"
    assert gpu_check.evaluate({**good, "throughput_ratio": 0.5})["verdict"] == "FAIL"
    assert gpu_check.evaluate({k: v for k, v in good.items() if k != "cost_mape_pct"})["verdict"] == "FAIL"
    assert gpu_check.evaluate(good, error="TimeoutError: not ready")["verdict"] == "ERROR"
    assert [r["key"] for r in gpu_check.evaluate(good)["targets"]] == [t.key for t in gpu_check.TARGETS]


def test_the_report_is_strict_json_with_nan_as_null(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "report.json"
    gpu_check.write_report({"a": math.nan, "b": [1.5, math.inf], "c": {"d": Path("x/y")}, "e": (1, 2)}, path)
    assert json.loads(path.read_text()) == {"a": None, "b": [1.5, None], "c": {"d": "x/y"}, "e": [1, 2]}


# -- the dry run ---------------------------------------------------------------------------------------------


def test_the_dry_run_prints_the_plan_and_writes_nothing(capsys: pytest.CaptureFixture[str], no_gpu: None,
                                                         tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpu_check, "_run", lambda *a, **k: pytest.fail("a dry run must not run"))
    argv = ["--dry-run", "--out", str(tmp_path / "out"), "--json", str(tmp_path / "r.json")]
    assert gpu_check.main(argv) == 0
    out = capsys.readouterr().out
    for text in ("qwen2.5-0.5b", "qwen2.5-1.5b", "placement on 1x1xH100", "cascade_serve.serving_bench",
                 "cascade calibrate", "cannot run it yet", "no NVIDIA GPU"):
        assert text in out
    for target in gpu_check.TARGETS:
        assert target.label in out.replace("\n", " ")
    assert not (tmp_path / "out").exists() and not (tmp_path / "r.json").exists()


def test_the_dry_run_loads_neither_ray_nor_the_engine(tmp_path: Path) -> None:
    code = ("import sys\nfrom scripts import gpu_check\n"
            f"assert gpu_check.main(['--dry-run', '--tiny', '--json', {str(tmp_path / 'r.json')!r}]) == 0\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'ray', 'vllm', 'torch', 'sklearn'}))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO,
                          check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]"


# -- the run's bookkeeping, live steps faked ------------------------------------------------------------------


def _ready_machine(monkeypatch: pytest.MonkeyPatch, *, cost_fails: bool = False) -> list[str]:
    monkeypatch.setattr(gpu_check, "_gpu_names", lambda: ["NVIDIA H100 80GB HBM3"])
    monkeypatch.setattr(gpu_check, "_has_module", lambda name: True)
    monkeypatch.setattr(gpu_check, "_in_hf_cache", lambda repo_id: True)
    steps: list[str] = []

    def up(args: Any, fleet: Any, report: dict[str, Any]) -> None:
        steps.append("up")

    def serving(args: Any, fleet: Any, console: Any) -> dict[str, Any]:
        steps.append(f"serving {args.model}")
        return {"controller_overhead_ms_p50": 3.2, "throughput_ratio": 0.85, "passthrough_overhead_ms_p50": 2.9,
                "controller_non_engine_overhead_ms_p50": 2.5, "levels": {}}

    def cost(args: Any, fleet_file: Path) -> dict[str, Any]:
        steps.append("cost")
        assert FleetConfig.from_file(fleet_file).model_ids == ["qwen2.5-0.5b", "qwen2.5-1.5b"]
        if cost_fails:
            raise RuntimeError("replay failed")
        return {"per_model": {m: {"cost_mape_given_tokens": g, "cost_mape_ex_ante": 0.2, "gpu_s_per_query": 0.01}
                              for m, g in (("qwen2.5-0.5b", 0.06), ("qwen2.5-1.5b", 0.08))},
                "prompts": {"training": 72, "held_out": 48}}

    monkeypatch.setattr(gpu_check, "_up", up)
    monkeypatch.setattr(gpu_check, "_serving_overhead", serving)
    monkeypatch.setattr(gpu_check, "_cost_model", cost)
    return steps


def test_a_run_that_misses_a_target_reports_fail_and_exits_0(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    steps = _ready_machine(monkeypatch)
    report_path = tmp_path / "r.json"
    assert gpu_check.main(["--out", str(tmp_path / "out"), "--json", str(report_path)]) == 0
    assert steps == ["up", "serving qwen2.5-0.5b", "cost"]
    report = json.loads(report_path.read_text())
    assert report["verdict"] == "FAIL" and report["error"] is None
    assert {r["key"]: (r["measured"], r["verdict"]) for r in report["targets"]} == {
        "controller_overhead_ms_p50": (3.2, "PASS"), "throughput_ratio": (0.85, "FAIL"),
        "cost_mape_pct": (pytest.approx(8.0), "PASS")}
    assert report["cost_model"]["worst_model"] == "qwen2.5-1.5b"
    assert report["gpus"] == ["NVIDIA H100 80GB HBM3"] and report["settings"]["model"] == "qwen2.5-0.5b"
    assert (tmp_path / "out" / "fleet.yaml").exists()
    assert "GPU check: FAIL" in capsys.readouterr().out


def test_a_failed_step_keeps_what_was_measured_and_exits_1(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    _ready_machine(monkeypatch, cost_fails=True)
    report_path = tmp_path / "r.json"
    assert gpu_check.main(["--out", str(tmp_path / "out"), "--json", str(report_path)]) == 1
    report = json.loads(report_path.read_text())
    assert report["verdict"] == "ERROR" and report["error"] == "RuntimeError: replay failed"
    verdicts = {r["key"]: r["verdict"] for r in report["targets"]}
    assert verdicts == {"controller_overhead_ms_p50": "PASS", "throughput_ratio": "FAIL", "cost_mape_pct": "NO DATA"}
    assert "the check stopped: RuntimeError: replay failed" in capsys.readouterr().out


def test_the_serving_step_sends_the_checks_options_and_puts_rays_ingress_beside() -> None:
    """The serving step's settings come from the check's own options (an option the benchmark needs and the
    check lacks would fail the GPU run after the fleet is up), on the fleet's first two models."""
    from types import SimpleNamespace

    args = gpu_check.parse_args(["--concurrency", "1,4", "--requests", "30", "--requests-c1", "7", "--blocks", "2",
                                 "--max-tokens", "9", "--port", "8123"])
    args.model = "small"
    fleet = SimpleNamespace(model_ids=["small", "large"], cascade=SimpleNamespace(lambda_=0.25))
    settings = gpu_check.serving_settings(args, fleet)  # type: ignore[arg-type]
    assert (settings.model, settings.second_model, settings.default_lambda) == ("small", "large", 0.25)
    assert (settings.concurrency, settings.requests, settings.requests_c1, settings.blocks, settings.max_tokens) == (
        (1, 4), 30, 7, 2, 9)
    assert settings.base_url == "http://127.0.0.1:8123"
    assert settings.ray_ingress_prefixes == (("ray_ingress", gpu_check.RAY_INGRESS_PREFIX),)
