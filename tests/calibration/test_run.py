"""``cascade calibrate``'s budget handling, before and after the replay (no fleet needed).

The whole command on a live fleet, including a budget below the cheapest model, is in
``tests/serve/test_serving_e2e.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from calibration.run import _round_up, parse_budget
from cascade_serve.main import main

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
