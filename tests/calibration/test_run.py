"""``cascade calibrate``'s budget handling, before and after the replay, and the whole run against a fake
fleet (an HTTP server answering as vLLM replicas do).

The whole command on a live fleet, including a budget below the cheapest model, is in
``tests/serve/test_serving_e2e.py``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from fake_http import running, send_json

from calibration.run import CalibrateOptions, _round_up, parse_budget, run_calibrate
from calibration.served_policy import REPORT_BUDGETS
from cascade_serve.main import main
from evaluation.policy_report import PROMISE
from routing import BudgetUnreachableError

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("text", "expected"), [("0.05", 0.05), ("40%", 0.08), ("100%", 0.2), ("2.5", 2.5)])
def test_parse_budget_reads_seconds_or_a_share_of_the_strongest(text: str, expected: float) -> None:
    assert parse_budget(text, 0.2) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["forty%", "", "%", "-5%", "0", "nan", "inf"])
def test_parse_budget_refuses_what_is_not_a_positive_budget(text: str) -> None:
    with pytest.raises(ValueError, match="--budget must be"):
        parse_budget(text, 0.2)


@pytest.mark.parametrize("value", [0.106249, 0.10627951716984778, 1.0, 123.456, 1.2341e-4, 0.1, 7.0])
def test_the_suggested_budget_is_rounded_up_so_it_is_reachable(value: float) -> None:
    rounded = _round_up(value)
    assert value <= rounded <= value * 1.001
    assert float(f"{rounded:.4g}") == rounded  # four significant digits, as the message prints them


@pytest.mark.parametrize("budget", ["forty%", "-5%", "0"])
def test_calibrate_refuses_a_bad_budget_before_replaying(
    budget: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nothing listens at the URL and the prompt file does not exist: the budget is checked first."""
    out = tmp_path / "out"
    code = main(["calibrate", str(REPO / "models.cpu.yaml"), "--prompts", str(tmp_path / "absent.jsonl"),
                 f"--budget={budget}", "--url", "http://127.0.0.1:9", "--out", str(out)])
    assert code == 2
    err = capsys.readouterr().err
    assert "cascade: error: --budget must be" in err and "Traceback" not in err
    assert not out.exists()


# -- the whole run against a fake fleet ----------------------------------------------------------------


class _Fleet(ThreadingHTTPServer):
    """An OpenAI chat endpoint with vLLM's metrics: "What is a+b?" answered by tiny-large always right and
    by tiny-small wrong on every third question, in 4x less engine time."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Answer)
        self.requests = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Answer(BaseHTTPRequestHandler):
    server: _Fleet

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests += 1
        i = int(body["messages"][-1]["content"].split()[-1].rstrip("?").split("+")[0])
        large = body["model"] == "tiny-large"
        right = large or i % 3 != 0
        prompt_tokens, completion_tokens = 5 + i % 7, 1 + i % 4
        scale = 4.0 if large else 1.0
        response = {
            "choices": [{"index": 0, "message": {"role": "assistant", "content": f"{2 * i if right else 2 * i + 1}"},
                         "logprobs": {"content": [{"token": "x", "logprob": -0.1 if right else -2.0}]},
                         "finish_reason": "length" if i % 5 == 0 else "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens},
            "metrics": {"queue_time_ms": 1.0, "time_to_first_token_ms": scale * (2.0 + prompt_tokens),
                        "generation_time_ms": scale * 3.0 * completion_tokens},
        }
        send_json(self, 200, json.dumps(response).encode())


@pytest.fixture
def fake_fleet() -> Iterator[_Fleet]:
    with running(_Fleet()) as server:
        yield server


class _Recorder:
    """A Reporter that keeps what it was told."""

    def __init__(self) -> None:
        self.events: list[tuple[str, ...]] = []
        self.progress_of: dict[str, tuple[int, int]] = {}

    def progress(self, step: str, done: int, total: int) -> None:
        if step not in self.progress_of:
            self.events.append(("start", step))
        self.progress_of[step] = (done, total)

    def note(self, text: str) -> None:
        self.events.append(("note", text))

    def warning(self, text: str) -> None:
        self.events.append(("warning", text))


def _options(tmp_path: Path, url: str, **changes: Any) -> CalibrateOptions:
    fleet = yaml.safe_load((REPO / "models.cpu.yaml").read_text())
    for entry in fleet["models"]:  # hub ids: nothing to hash, nothing is loaded
        entry["model_loading_config"]["model_source"] = f"fake/{entry['model_loading_config']['model_id']}"
    fleet_file = tmp_path / "fleet.yaml"
    fleet_file.write_text(yaml.safe_dump(fleet))
    prompts = tmp_path / "prompts.jsonl"
    rows = [{"id": f"q{i}", "messages": [{"role": "user", "content": f"What is {i}+{i}?"}], "answer": str(2 * i),
             "grader": "numeric", "max_tokens": 8} for i in range(40)]
    prompts.write_text("".join(json.dumps(row) + "\n" for row in rows))
    opts = CalibrateOptions(fleet_file=fleet_file, prompts=prompts, out=tmp_path / "out", url=url, concurrency=2,
                            bootstrap=10)
    return dataclasses.replace(opts, **changes)


@pytest.mark.slow
def test_a_run_reports_its_steps_in_order_and_saves_what_it_returns(fake_fleet: _Fleet, tmp_path: Path) -> None:
    opts = _options(tmp_path, fake_fleet.url, budget="100%")
    reporter = _Recorder()
    summary = run_calibrate(opts, reporter=reporter)
    assert reporter.events == [
        ("start", "replay 40 prompts x 2 models"), ("start", "grade answers"),
        ("note", "fitting the quality estimators and the cost model ..."),
        ("note", f"uncertainty scale {summary['uncertainty_scale']:g}, fitted on 8 validation prompts; "
                 "lambda curves ..."),
        ("note", "Pareto report on the held-out test prompts ..."),
        ("note", "choosing the served policy per budget on the validation prompts ..."),
    ]
    assert summary["uncertainty_scale"] >= 0
    assert reporter.progress_of == {"replay 40 prompts x 2 models": (80, 80), "grade answers": (80, 80)}
    assert fake_fleet.requests == 80
    assert summary["models"] == ["tiny-small", "tiny-large"]  # cost order, measured
    assert summary["per_model"]["tiny-large"]["accuracy"] == 1.0
    assert summary["per_model"]["tiny-small"]["accuracy"] == pytest.approx(26 / 40)
    assert summary["prompts"] | {"file": None} == {
        "file": None, "total": 40, "used": 40, "missing_answers": [], "grade_problems": [], "training": 24,
        "held_out": 16, "seed": 0}
    # The budget serves the policy chosen for it on validation, among the fleet file's and the simpler ones.
    choice = summary["policy_choice"]
    assert choice["candidates"] == ["routing", "optimal_cascade", "cascade_routing"]
    budgets = [entry["budget"] for entry in choice["budgets"]]
    assert len(budgets) in (REPORT_BUDGETS, REPORT_BUDGETS + 1) and budgets == sorted(budgets)
    [at_budget] = [entry for entry in choice["budgets"] if entry["budget"] == summary["budget"]["budget_gpu_s"]]
    assert summary["budget"]["policy"] == at_budget["chosen"] and summary["budget"]["lambda"] is not None
    assert summary["budget"]["chosen_under"] == "cascade_routing"
    assert choice["never_below_routing"]["claim"] == PROMISE
    assert choice["never_below_routing"]["pass"] == (choice["never_below_routing"]["failed_budgets"] == [])
    assert set(summary["timing_s"]) == {"replay", "fit", "total"}
    saved = json.loads((opts.out / "calibration.json").read_text())
    assert saved["per_model"] == summary["per_model"] and saved["budget"] == summary["budget"]
    assert saved["policy_choice"] == json.loads(json.dumps(choice))
    assert (opts.out / "estimators.pkl").exists() and (opts.out / "pareto.png").stat().st_size > 0

    # Again with a budget out of reach: nothing is replayed, the fit is saved, then the error says what to ask for.
    again = _Recorder()
    with pytest.raises(BudgetUnreachableError, match=r"--budget 1%: .* or run again with --budget \S+ or more"):
        run_calibrate(dataclasses.replace(opts, budget="1%"), reporter=again)
    assert fake_fleet.requests == 80 and again.progress_of["replay 40 prompts x 2 models"] == (80, 80)
    assert json.loads((opts.out / "calibration.json").read_text())["budget"]["lambda"] is None


def test_a_run_without_a_reporter_reports_nothing_and_failed_calls_are_warnings(tmp_path: Path) -> None:
    """Nothing listens at the URL: every call fails, a warning says so, and no prompt is left to calibrate."""
    opts = _options(tmp_path, "http://127.0.0.1:9")
    reporter = _Recorder()
    with pytest.raises(ValueError, match="only 0 prompts have an answer from every model"):
        run_calibrate(opts, reporter=reporter)
    [warning] = [text for kind, *text in reporter.events if kind == "warning"]
    assert warning[0].startswith("80 replay call(s) failed (kept in the cache, retried next run), e.g. q")
    with pytest.raises(ValueError, match="only 0 prompts"):
        run_calibrate(opts)
