"""Calibration artifacts on disk: the round trip, and refusal of a folder from another fleet or build."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from estimators.artifacts import (
    ARTIFACT_VERSION,
    ESTIMATORS,
    SUMMARY,
    Artifacts,
    ArtifactsError,
    load_artifacts,
    save_artifacts,
)


@dataclass
class FakeQuality:
    """Stands in for the fitted estimator: any picklable object must come back equal."""

    models: tuple[str, ...]
    weights: list[float]


FINGERPRINTS = {"small": "aaaa000011112222", "large": "bbbb000011112222"}
CURVES = {
    "cascade_routing": [
        {"lambda": 0.0, "cost": 2.0, "quality": 0.9},
        {"lambda": 5.0, "cost": 1.0, "quality": 0.85},
        {"lambda": 50.0, "cost": 0.2, "quality": 0.6},
    ],
}


def _summary(**extra: Any) -> dict[str, Any]:
    return {"fingerprints": dict(FINGERPRINTS), "models": ["small", "large"], "lambda_curves": CURVES, **extra}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    out = tmp_path / "runs" / "calib"  # created by save_artifacts, parents included
    save_artifacts(out, _summary(budget_gpu_s=1.5), FakeQuality(("small", "large"), [0.1, 0.2]), {"cost": [1, 2]})
    return out


def test_round_trip(folder: Path) -> None:
    loaded = load_artifacts(folder, dict(FINGERPRINTS))
    assert isinstance(loaded, Artifacts)
    assert loaded.quality == FakeQuality(("small", "large"), [0.1, 0.2])
    assert loaded.cost == {"cost": [1, 2]}
    assert loaded.summary == {"version": ARTIFACT_VERSION, **_summary(budget_gpu_s=1.5)}
    assert json.loads((folder / SUMMARY).read_text())["version"] == ARTIFACT_VERSION  # human-readable JSON
    assert load_artifacts(str(folder)).cost == {"cost": [1, 2]}  # no fingerprints given: no fleet check


@pytest.mark.parametrize(
    ("fleet", "fragments"),
    [
        ({"small": "aaaa000011112222", "large": "cccc000011112222"},
         ["large: weights or engine settings changed since calibration (bbbb000011112222 != cccc000011112222)"]),
        ({"small": "aaaa000011112222"}, ["large: calibrated but not in the fleet"]),
        ({**FINGERPRINTS, "medium": "dddd000011112222"}, ["medium: in the fleet but not calibrated"]),
        ({"small": "eeee000011112222", "huge": "ffff000011112222"},
         ["huge: in the fleet but not calibrated", "large: calibrated but not in the fleet", "small: weights"]),
    ],
    ids=["changed", "missing", "extra", "several"],
)
def test_another_fleet_is_refused_naming_the_models(folder: Path, fleet: dict[str, str], fragments: list[str]) -> None:
    with pytest.raises(ArtifactsError) as info:
        load_artifacts(folder, fleet)
    message = str(info.value)
    assert message.startswith(f"{folder}: these artifacts belong to another fleet")
    for fragment in fragments:
        assert fragment in message
    unaffected = set(FINGERPRINTS) & set(fleet)
    for model in unaffected:
        if fleet[model] == FINGERPRINTS[model]:
            assert f"{model}:" not in message


def test_missing_summary(tmp_path: Path) -> None:
    with pytest.raises(ArtifactsError, match=f"no {SUMMARY}; run `cascade calibrate`"):
        load_artifacts(tmp_path)
    with pytest.raises(ArtifactsError, match=f"no {SUMMARY}"):
        load_artifacts(tmp_path / "absent")


def test_missing_estimators(folder: Path) -> None:
    (folder / ESTIMATORS).unlink()
    with pytest.raises(ArtifactsError, match=f"no {ESTIMATORS}; calibrate again"):
        load_artifacts(folder, dict(FINGERPRINTS))


def test_unreadable_estimators(folder: Path) -> None:
    (folder / ESTIMATORS).write_bytes(b"")
    with pytest.raises(ArtifactsError, match=f"{ESTIMATORS}: unreadable \\(EOFError"):
        load_artifacts(folder)
    (folder / ESTIMATORS).write_bytes(b"not a pickle at all")
    with pytest.raises(ArtifactsError, match="unreadable"):
        load_artifacts(folder)


def test_bad_json(folder: Path) -> None:
    (folder / SUMMARY).write_text('{"version": 1, ')
    with pytest.raises(ArtifactsError, match=f"{SUMMARY}: not valid JSON"):
        load_artifacts(folder)


@pytest.mark.parametrize("version", [None, 0, ARTIFACT_VERSION + 1, "1"])
def test_wrong_version(folder: Path, version: object) -> None:
    summary = json.loads((folder / SUMMARY).read_text())
    if version is None:
        del summary["version"]
    else:
        summary["version"] = version
    (folder / SUMMARY).write_text(json.dumps(summary))
    with pytest.raises(ArtifactsError, match=f"artifact version {version!r}, this build reads {ARTIFACT_VERSION}"):
        load_artifacts(folder, dict(FINGERPRINTS))


def test_errors_are_value_errors() -> None:
    assert issubclass(ArtifactsError, ValueError)


@pytest.mark.parametrize(("budget", "expected"), [(10.0, 0.0), (2.0, 0.0), (1.5, 5.0), (0.2, 50.0)])
def test_lambda_for_a_budget(folder: Path, budget: float, expected: float) -> None:
    assert load_artifacts(folder).lambda_for("cascade_routing", budget) == expected


def test_lambda_for_errors(folder: Path) -> None:
    artifacts = load_artifacts(folder)
    with pytest.raises(ArtifactsError, match=r"no lambda curve for policy 'routing' .*\['cascade_routing'\]"):
        artifacts.lambda_for("routing", 1.0)
    with pytest.raises(ArtifactsError, match="below the cheapest setting"):
        artifacts.lambda_for("cascade_routing", 0.1)
