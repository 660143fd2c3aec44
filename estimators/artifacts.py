"""Calibration artifacts on disk, bound to the fleet they were measured on.

``cascade calibrate`` writes a folder:

- ``calibration.json``: what a person (and the controller) reads: the fleet's model fingerprints,
  models in cost order, replay concurrency, per-model accuracy / GPU-seconds / cost-model error, the
  lambda curve of every policy (mean GPU-seconds and quality per constant lambda on validation
  prompts), the budget asked for with the policy chosen for it and its lambda, the policy choice per
  budget with its held-out evidence (``policy_choice``), the held-out Pareto report's AUCs;
- ``estimators.pkl``: the fitted quality estimator and cost model (pickle: load only artifacts you
  wrote yourself, as with any pickle);
- ``replay.jsonl`` (the resumable replay cache) and ``pareto.png``.

``load_artifacts`` refuses a folder whose fingerprints differ from the fleet's (a model retrained, its
engine arguments changed, a model added or removed), naming the models.
"""

from __future__ import annotations

import json
import math
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from routing import BudgetUnreachableError

__all__ = [
    "ARTIFACT_VERSION", "Artifacts", "ArtifactsError", "lambda_for_budget", "load_artifacts", "point_cost_bound",
    "save_artifacts",
]

# 2: the prompt features gained a digit-masked block, which estimators pickled by version 1 lack.
ARTIFACT_VERSION = 2
SUMMARY = "calibration.json"
ESTIMATORS = "estimators.pkl"


class ArtifactsError(ValueError):
    """Artifacts missing, unreadable, or from another fleet."""


@dataclass
class Artifacts:
    summary: dict[str, Any]
    quality: Any  # TrainedQualityEstimator
    cost: Any  # GpuTimeCostModel

    def lambda_for(self, policy: str, budget_gpu_s: float) -> float:
        """The constant lambda of ``policy`` whose validation cost fits ``budget_gpu_s`` best, with the
        budget margin the calibration was run with (none for artifacts that record none)."""
        curves = self.summary["lambda_curves"]
        if policy not in curves:
            raise ArtifactsError(f"no lambda curve for policy {policy!r} in the artifacts ({sorted(curves)})")
        margin_se = float(self.summary.get("budget_margin_se", 0.0))
        try:
            return float(lambda_for_budget(curves[policy], budget_gpu_s, margin_se=margin_se)["lambda"])
        except ValueError as exc:
            raise ArtifactsError(str(exc)) from None


def save_artifacts(folder: Path, summary: dict[str, Any], quality: Any, cost: Any) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / ESTIMATORS).open("wb") as fh:
        pickle.dump({"version": ARTIFACT_VERSION, "quality": quality, "cost": cost}, fh)
    (folder / SUMMARY).write_text(json.dumps({"version": ARTIFACT_VERSION, **summary}, indent=2))


def load_artifacts(folder: str | Path, fingerprints: dict[str, str] | None = None) -> Artifacts:
    """Read a calibration folder; with ``fingerprints`` (model → fingerprint of the fleet to serve),
    refuse artifacts of another fleet."""
    folder = Path(folder)
    try:
        summary = json.loads((folder / SUMMARY).read_text())
    except FileNotFoundError:
        raise ArtifactsError(f"{folder}: no {SUMMARY}; run `cascade calibrate` to create the artifacts") from None
    except json.JSONDecodeError as exc:
        raise ArtifactsError(f"{folder / SUMMARY}: not valid JSON ({exc.msg})") from None
    if summary.get("version") != ARTIFACT_VERSION:
        raise ArtifactsError(f"{folder / SUMMARY}: artifact version {summary.get('version')!r}, this build reads "
                             f"{ARTIFACT_VERSION}; calibrate again")
    if fingerprints is not None:
        calibrated: dict[str, str] = summary.get("fingerprints", {})
        problems = []
        for model in sorted(set(calibrated) | set(fingerprints)):
            if model not in fingerprints:
                problems.append(f"{model}: calibrated but not in the fleet")
            elif model not in calibrated:
                problems.append(f"{model}: in the fleet but not calibrated")
            elif calibrated[model] != fingerprints[model]:
                problems.append(f"{model}: weights or engine settings changed since calibration "
                                f"({calibrated[model]} != {fingerprints[model]})")
        if problems:
            raise ArtifactsError(f"{folder}: these artifacts belong to another fleet; calibrate again. "
                                 + "; ".join(problems))
    try:
        with (folder / ESTIMATORS).open("rb") as fh:
            payload = pickle.load(fh)
    except FileNotFoundError:
        raise ArtifactsError(f"{folder}: no {ESTIMATORS}; calibrate again") from None
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError) as exc:
        raise ArtifactsError(
            f"{folder / ESTIMATORS}: unreadable ({type(exc).__name__}: {exc}); calibrate again"
        ) from None
    return Artifacts(summary=summary, quality=payload["quality"], cost=payload["cost"])


def point_cost_bound(point: dict[str, float], margin_se: float) -> float:
    """A curve point's validation mean cost plus ``margin_se`` standard errors of it (``cost_se``; curves
    written before it was recorded have none, and count as exact)."""
    return float(point["cost"]) + margin_se * float(point.get("cost_se", 0.0))


def lambda_for_budget(curve: Sequence[dict[str, float]], budget: float, *, margin_se: float = 0.0) -> dict[str, float]:
    """The point of a lambda curve with the best quality whose cost is within ``budget``.

    With ``margin_se`` > 0 a point's cost is its validation mean plus that many standard errors
    (:func:`point_cost_bound`): the budget's sampling error on the few prompts a curve is measured on
    (``routing._budget_margin``).

    Raises ``BudgetUnreachableError`` (a ValueError carrying ``cheapest_cost``, the cheapest point's
    bound) when every point costs more than the budget (a budget below the cheapest model).
    """
    if not math.isfinite(budget) or budget <= 0:
        raise ValueError(f"the budget must be a positive number of GPU-seconds per query, got {budget!r}")
    within = [p for p in curve if point_cost_bound(p, margin_se) <= budget]
    if not within:
        cheapest = min(point_cost_bound(p, margin_se) for p in curve)
        margin = f" with its margin of {margin_se:g} standard errors" if margin_se > 0 else ""
        raise BudgetUnreachableError(f"budget {budget:.6g} GPU-s per query is below the cheapest setting "
                                     f"({cheapest:.6g} GPU-s per query on the calibration prompts{margin})",
                                     cheapest_cost=cheapest)
    return max(within, key=lambda p: (p["quality"], -p["cost"]))
