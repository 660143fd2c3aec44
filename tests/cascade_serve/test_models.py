"""``cascade models build``: the tiny fleet, and the toy fleet with its held-out report."""

from __future__ import annotations

from pathlib import Path

import pytest

from cascade_serve.main import main
from toymodels import toy_fleet
from toymodels.toy_fleet import ToySpec

# A model small enough to train in well under a second; head_dim 32 as vLLM's CPU backend needs.
TINY = ToySpec(hidden=32, layers=1, heads=1, kv_heads=1, ffn=32, steps=3, batch=4, warmup=1, seed=7)


def test_models_build_toy_builds_and_reports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(toy_fleet, "TOY_FLEET", {"a": TINY})
    assert main(["models", "build", "--toy", "--out", str(tmp_path), "--eval", "6", "--jobs", "1"]) == 0
    out = capsys.readouterr().out
    assert "accuracy" in out and "a" in out
    assert toy_fleet._is_built(tmp_path / "a", TINY)


def test_models_build_eval_needs_toy(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "build", "--eval", "6"]) == 2
    assert "--toy only" in capsys.readouterr().err
