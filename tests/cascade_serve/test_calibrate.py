"""``cascade calibrate`` on the terminal: the reporter's bars and lines, the summary's tables, and the
command's wiring (its default ``--out``) with the calibration itself replaced."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from calibration.run import CalibrateOptions
from cascade_serve.calibrate import ConsoleReporter, print_summary
from cascade_serve.main import main

REPO = Path(__file__).resolve().parents[2]

SUMMARY: dict[str, Any] = {
    "per_model": {"tiny-small": {"accuracy": 0.5, "gpu_s_per_query": 0.0125, "cost_mape_ex_ante": 0.1,
                                 "cost_mape_given_tokens": 0.02},
                  "tiny-large": {"accuracy": 0.75, "gpu_s_per_query": 0.05, "cost_mape_ex_ante": 0.2,
                                 "cost_mape_given_tokens": 0.03}},
    "report": {"auc": {"routing": 61.25, "cascade_routing": 63.5}},
    "budget": {"budget_gpu_s": 0.02, "policy": "cascade_routing", "lambda": 12.5, "cost": 0.0199, "quality": 0.625},
}


def _log() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=False, width=200), out


def test_lines_and_bars_appear_in_the_order_they_happened_in_a_log() -> None:
    console, out = _log()
    with ConsoleReporter(console=console) as reporter:
        reporter.progress("replay 2 prompts x 2 models", 1, 4)
        reporter.progress("replay 2 prompts x 2 models", 4, 4)
        reporter.warning("1 replay call(s) failed, e.g. q1 on small: HTTP 500: [engine] died")
        reporter.progress("grade answers", 4, 4)
        reporter.note("fitting ...")
        reporter.progress("late", 1, 2)  # still drawing when the run ends: the context stops it
    lines = [line.split("━")[0].strip() for line in out.getvalue().splitlines()]
    warning = "1 replay call(s) failed, e.g. q1 on small: HTTP 500: [engine] died"  # brackets are not markup
    assert lines == ["replay 2 prompts x 2 models", warning, "grade answers", "fitting ...", "late"]
    assert "4/4" in out.getvalue().splitlines()[0] and "1/2" in out.getvalue().splitlines()[-1]


def test_a_quiet_reporter_prints_nothing() -> None:
    console, out = _log()
    with ConsoleReporter(quiet=True, console=console) as reporter:
        reporter.progress("replay", 1, 4)
        reporter.warning("careful")
        reporter.note("fitting ...")
    assert out.getvalue() == ""


@pytest.mark.parametrize("budget", [SUMMARY["budget"], None])
def test_the_summary_prints_models_aucs_budget_and_where_the_artifacts_are(budget: dict[str, Any] | None) -> None:
    console, out = _log()
    print_summary({**SUMMARY, "budget": budget}, Path("runs/calibration/fleet"), console=console)
    text = out.getvalue()
    assert "│ tiny-small │    0.500 │        0.0125 │             10.0% │         2.0% │" in text
    assert "│ cascade_routing │ 63.50 │" in text
    line = "budget 0.02 GPU-s/query → cascade_routing lambda 12.5 (validation: 0.0199 GPU-s, quality 0.625)"
    assert (line in text) == (budget is not None)
    assert "artifacts: runs/calibration/fleet/calibration.json, runs/calibration/fleet/estimators.pkl; plot: " \
           "runs/calibration/fleet/pareto.png" in text


@pytest.mark.parametrize(("args", "out"), [([], "runs/calibration/models.cpu"), (["--out", "here"], "here")])
def test_calibrate_defaults_its_output_under_runs_and_reports_on_the_terminal(
    args: list[str], out: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not under ``calibration/``, the package of the command's code."""
    seen: list[tuple[CalibrateOptions, Any]] = []

    def fake_run(opts: CalibrateOptions, *, reporter: Any = None) -> dict[str, Any]:
        seen.append((opts, reporter))
        reporter.note("fitting ...")
        return SUMMARY

    monkeypatch.setattr("calibration.run.run_calibrate", fake_run)
    monkeypatch.chdir(tmp_path)
    assert main(["calibrate", str(REPO / "models.cpu.yaml"), "--prompts", "p.jsonl", "--quiet", *args]) == 0
    [(opts, reporter)] = seen
    assert opts.out == Path(out) and isinstance(reporter, ConsoleReporter) and reporter.quiet
    captured = capsys.readouterr()
    assert captured.err == ""  # --quiet: no bars, no notes
    assert f"artifacts: {out}/calibration.json" in captured.out
