"""The ``cascade`` CLI end to end on the self-made RouterBench fixture (no ../shared needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cascade_serve.main import main

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "routerbench_tiny"
FAST = ["--per-segment", "3", "--bootstrap", "40", "--quiet"]


def test_eval_routerbench_writes_json_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_json, out_png = tmp_path / "rb.json", tmp_path / "rb.png"
    rc = main(["eval", "routerbench", "--data", str(FIXTURE), "--models", "3", "--noise", "low",
               "--json", str(out_json), "--plot", str(out_png), *FAST])
    assert rc == 0
    result = json.loads(out_json.read_text())
    assert set(result) == {"auc", "ci", "points", "policy_choice", "settings"}
    assert set(result["auc"]) == {"linear", "routing", "threshold_cascade", "optimal_cascade", "cascade_routing"}
    assert all(0.0 <= v <= 100.0 for v in result["auc"].values())
    ci = result["ci"]["cascade_routing"]
    assert 0.0 <= ci["low"] <= ci["mean"] <= ci["high"] <= 100.0
    assert set(result["ci"]["diff_vs_cascade_routing"]) == {"routing", "threshold_cascade", "optimal_cascade"}
    points = result["points"]["cascade_routing"]
    assert len(points["cost"]) == len(points["quality"]) == result["settings"]["n_budgets"]
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    choice = result["policy_choice"]
    assert len(choice["budgets"]) == result["settings"]["n_budgets"]
    assert {entry["chosen"] for entry in choice["budgets"]} <= {"routing", "optimal_cascade", "cascade_routing"}
    printed = capsys.readouterr().out
    assert "cascade_routing" in printed
    verdict = "PASS" if choice["never_below_routing"]["pass"] else "FAIL"
    assert f"on held-out prompts, never below routing (paired CI): {verdict}" in printed


def test_eval_routerbench_same_seed_same_result(tmp_path: Path) -> None:
    """Noise is drawn once from the seed, so two runs agree exactly."""
    paths = [tmp_path / "a.json", tmp_path / "b.json"]
    for p in paths:
        assert main(["eval", "routerbench", "--data", str(FIXTURE), "--models", "3", "--json", str(p), *FAST]) == 0
    a, b = (json.loads(p.read_text()) for p in paths)
    assert a["auc"] == b["auc"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--models", "7"], "models must be one of"),
        (["--noise", "extreme"], "--noise must be one of"),
        (["--data", "/nonexistent/routerbench"], "not found"),
    ],
)
def test_eval_routerbench_bad_input_exits_2_with_one_line(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    data = [] if args[0] == "--data" else ["--data", str(FIXTURE)]
    rc = main(["eval", "routerbench", *data, *args, "--quiet"])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_eval_routerbench_trained_estimators_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Estimators learn from tiny_train.csv; validation and test split tiny_test.csv; the JSON says so."""
    out = tmp_path / "trained.json"
    rc = main(["eval", "routerbench", "--data", str(FIXTURE), "--models", "3", "--estimators", "trained",
               "--json", str(out), *FAST])
    assert rc == 0
    result = json.loads(out.read_text())
    assert set(result["auc"]) == {"linear", "routing", "threshold_cascade", "optimal_cascade", "cascade_routing"}
    assert all(0.0 <= v <= 100.0 for v in result["auc"].values())
    s = result["settings"]
    assert s["estimators"] == "trained" and s["noise"] is None
    assert s["n_estimator_training"] == 78  # tiny_train.csv's complete rows
    assert s["n_validation"] + s["n_test"] == 40  # tiny_test.csv's rows
    assert "*_train.csv" in s["estimator_rows"]
    assert "trained estimators" in capsys.readouterr().out


def test_eval_routerbench_default_is_simulated(tmp_path: Path) -> None:
    out = tmp_path / "default.json"
    assert main(["eval", "routerbench", "--data", str(FIXTURE), "--models", "3", "--json", str(out), *FAST]) == 0
    s = json.loads(out.read_text())["settings"]
    assert s["estimators"] == "simulated" and s["noise"] == "low"
    assert "n_estimator_training" not in s


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--estimators", "trained", "--noise", "low"], "--noise applies only to --estimators simulated"),
        (["--estimators", "trained", "--data", str(FIXTURE / "tiny_test.csv")], "needs a folder"),
    ],
)
def test_eval_routerbench_trained_bad_input_exits_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    data = [] if "--data" in args else ["--data", str(FIXTURE)]
    rc = main(["eval", "routerbench", *data, *args, "--quiet"])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_eval_routerbench_accepts_model_names(tmp_path: Path) -> None:
    out = tmp_path / "names.json"
    names = "mistralai/mixtral-8x7b-chat,gpt-3.5-turbo-1106,gpt-4-1106-preview"
    assert main(["eval", "routerbench", "--data", str(FIXTURE), "--models", names, "--json", str(out), *FAST]) == 0
    assert json.loads(out.read_text())["settings"]["models_used"] == names.split(",")


def test_eval_routerbench_unknown_model_name_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["eval", "routerbench", "--data", str(FIXTURE), "--models", "gpt-4-1106-preview,gpt-9", "--quiet"])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "gpt-9" in err[0], err


def test_health_summary_names_every_model_state_and_the_cost_model() -> None:
    from serve.deploy import health_summary

    body = {"status": "ok", "models": {"tiny-small": "ready", "tiny-large": "starting"}, "cost_model": "settling"}
    assert health_summary(body) == "tiny-small ready, tiny-large starting; cost model settling"
    assert health_summary({}) == ""



@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-depth", "0"], "argument --max-depth: expected an int >= 1 or 'none'"),
        (["--max-depth", "-3"], "argument --max-depth: expected an int >= 1 or 'none'"),
        (["--max-depth", "deep"], "argument --max-depth: expected an int >= 1 or 'none'"),
        (["--test-size", "1"], "argument --test-size: expected a number in (0, 1)"),
        (["--test-size", "0"], "argument --test-size: expected a number in (0, 1)"),
        (["--uncertainty-scale", "-1"], "argument --uncertainty-scale: expected 'fit' or a finite number >= 0"),
        (["--uncertainty-scale", "lots"], "argument --uncertainty-scale: expected 'fit' or a number >= 0"),
    ],
)
def test_eval_routerbench_bad_flags_are_argparse_errors(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Refused while parsing (usage and one error line, exit 2), before any data is read."""
    with pytest.raises(SystemExit) as exc:
        main(["eval", "routerbench", "--data", str(FIXTURE), *args, "--quiet"])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_eval_routerbench_flags_reach_the_protocol(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--test-size, --max-depth none and a fixed --uncertainty-scale are what the record says; without
    --models, --data means every model of the file; tables are named by the data, not RouterBench."""
    out = tmp_path / "flags.json"
    rc = main(["eval", "routerbench", "--data", str(FIXTURE), "--test-size", "0.5", "--max-depth", "none",
               "--uncertainty-scale", "0.3", "--json", str(out), *FAST])
    assert rc == 0
    s = json.loads(out.read_text())["settings"]
    assert s["test_size"] == 0.5 and s["max_depth"] is None and s["uncertainty_scale"] == 0.3
    assert len(s["models_used"]) == 11  # every model of the fixture's files
    assert abs(s["n_validation"] - s["n_test"]) <= 1
    printed = capsys.readouterr().out
    assert "routerbench_tiny, 11 models" in printed and "RouterBench" not in printed
    assert "uncertainty scale 0.3 (fixed by --uncertainty-scale)" in printed
    assert "USD per query" in printed


def test_eval_routerbench_cr_cell_is_the_interval_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The AUC column holds the point AUC; the CI column holds only an interval (no second AUC)."""
    out = tmp_path / "cell.json"
    assert main(["eval", "routerbench", "--data", str(FIXTURE), "--models", "3", "--json", str(out), *FAST]) == 0
    result = json.loads(out.read_text())
    row = next(line for line in capsys.readouterr().out.splitlines() if "cascade_routing" in line)
    ci = result["ci"]["cascade_routing"]
    assert f"{result['auc']['cascade_routing']:.2f}" in row
    assert f"[{ci['low']:.2f}, {ci['high']:.2f}]" in row
    assert row.count(".") == 3  # the AUC and the two ends of the interval



def test_the_cli_offers_exactly_the_protocols_calibration_choices(capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI lists the choices literally (importing evaluation.simulated would load scikit-learn at every
    start), so this keeps the two lists equal: each protocol choice parses, and the refusal names them all."""
    from cascade_serve.main import _build_parser
    from evaluation.simulated import SHRINKAGE

    parser = _build_parser()
    for choice in SHRINKAGE:
        args = parser.parse_args(["eval", "routerbench", "--calibration-shrinkage", choice])
        assert args.calibration_shrinkage == choice
    with pytest.raises(SystemExit):
        parser.parse_args(["eval", "routerbench", "--calibration-shrinkage", "ridge"])
    listed = capsys.readouterr().err.split("choose from", 1)[1]
    assert sorted(c.strip(" '\n)") for c in listed.split(",")) == sorted(SHRINKAGE)
