"""The paper's RouterBench protocol (algorithm-spec §5.1, §5.4), with the reference's flaws fixed.

Per (model set, noise level, seed): sort models by cost; split 5% validation / 95% test
(``train_test_split(test_size=0.95, random_state=42)``); draw the estimator noise once for all rows and
calibrate on the validation rows only (spec §8 item 9); build the budget grid from the test averages
of the single models (10 per hull segment, §5.4); fit every method at every budget on validation and
score it on test; AUC ×100 with 500-resample paired bootstrap CIs.

Costs are in the data's unit (USD per query for RouterBench).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sklearn.model_selection import train_test_split

from estimators.routerbench import MODEL_SETS, RouterBenchTable
from estimators.simulated import draw_noise, simulated_estimates
from routing import (
    CascadeRouter,
    OptimalCascade,
    Policy,
    Router,
    ThresholdCascade,
    area_under_curve,
    auc_range,
    bootstrap_auc,
    bootstrap_indices,
    budget_grid,
    linear_interpolation_curve,
    paired_difference,
    rollout,
    single_model_points,
)
from routing._evaluation import ConfidenceInterval
from routing._state_quality import StateMemos

__all__ = ["METHODS", "ProtocolSettings", "run_protocol"]

FloatArray = NDArray[np.float64]
# Progress callback: (method, budget index, number of budgets).
Progress = Callable[[str, int, int], None]

METHODS = ("routing", "threshold_cascade", "optimal_cascade", "cascade_routing")


@dataclass(frozen=True)
class ProtocolSettings:
    """Everything that defines one evaluation; saved next to the results."""

    models: int = 11
    noise: str = "low"
    seed: int = 0  # noise draw; the split keeps the paper's seed
    split_seed: int = 42
    test_size: float = 0.95
    per_segment: int = 10
    max_depth: int = 5  # cascade routing, as the paper on RouterBench
    strategy: str = "per_step"
    n_search: int = 24
    n_bootstrap: int = 500
    bootstrap_seed: int = 0

    def __post_init__(self) -> None:
        if self.models not in MODEL_SETS:
            raise ValueError(f"models must be one of {sorted(MODEL_SETS)}, got {self.models!r}")
        if not 0.0 < self.test_size < 1.0:
            raise ValueError(f"test_size must be in (0, 1), got {self.test_size!r}")


def _make_policy(method: str, budget: float, s: ProtocolSettings) -> Policy:
    common: dict[str, Any] = {"max_expected_cost": budget, "seed": s.seed}
    if method == "routing":
        return Router(**common)
    search = {"strategy": s.strategy, "n_search": s.n_search}
    if method == "threshold_cascade":
        return ThresholdCascade(**common, **search)
    if method == "optimal_cascade":
        return OptimalCascade(**common, **search)
    if method == "cascade_routing":
        return CascadeRouter(**common, **search, max_depth=s.max_depth)
    raise ValueError(f"unknown method {method!r}; choose from {METHODS}")


def run_protocol(
    table: RouterBenchTable,
    settings: ProtocolSettings,
    *,
    methods: tuple[str, ...] = METHODS,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run the protocol; return a JSON-ready dict ``{"auc", "ci", "points", "settings"}``.

    ``auc`` holds AUC ×100 per method plus ``"linear"``; ``ci`` the bootstrap interval of cascade
    routing (absolute) and of every other method's difference to it (paired, same resamples);
    ``points`` the (budget, cost, quality) curve per method on the test split.
    """
    started = time.perf_counter()
    table = table.select_models(MODEL_SETS[settings.models]).sorted_by_cost()
    quality, cost = np.asarray(table.quality), np.asarray(table.cost_usd)
    rows = np.arange(table.n_queries)
    val, test = train_test_split(rows, test_size=settings.test_size, random_state=settings.split_seed)
    if len(val) == 0 or len(test) == 0:
        raise ValueError(f"the split left an empty side ({len(val)} validation, {len(test)} test rows)")
    signals = draw_noise(quality, cost, settings.noise, seed=settings.seed)
    estimates = simulated_estimates(signals, quality, cost, fit_rows=val)
    est_val, est_test = estimates.subset(val), estimates.subset(test)
    q_val, c_val, q_test, c_test = quality[val], cost[val], quality[test], cost[test]

    model_cost, model_quality = single_model_points(q_test, c_test)
    budgets = budget_grid(model_cost, model_quality, per_segment=settings.per_segment)
    # The grid comes from test averages (spec §8 item 14); a budget under the cheapest model's
    # *validation* cost cannot be fitted, so it is raised to that cost and reported.
    floor = float(c_val.mean(axis=0).min())
    fit_budgets = np.maximum(budgets, floor)
    rng_area = auc_range(model_cost, model_quality)

    # One memo per (query, answered set) on each split, shared by every method and budget: a state's
    # supermodels are scored once, then each rollout is a lookup (routing._state_quality).
    memos_val: StateMemos = {}
    memos_test: StateMemos = {}
    per_query_q: dict[str, FloatArray] = {}
    per_query_c: dict[str, FloatArray] = {}
    fit_s: dict[str, float] = {}
    for method in methods:
        t0 = time.perf_counter()
        qs, cs = np.empty((len(budgets), len(test))), np.empty((len(budgets), len(test)))
        for b, budget in enumerate(fit_budgets):
            policy = _make_policy(method, float(budget), settings).fit(est_val, q_val, c_val, memos=memos_val)
            result = rollout(
                policy, est_test, q_test, c_test, rng=np.random.default_rng(settings.seed), memos=memos_test
            )
            qs[b], cs[b] = result.quality, result.cost
            if progress is not None:
                progress(method, b + 1, len(budgets))
        per_query_q[method], per_query_c[method] = qs, cs
        fit_s[method] = time.perf_counter() - t0

    auc: dict[str, float] = {}
    lin_c, lin_q = linear_interpolation_curve(model_cost, model_quality)
    area = {"x_min": rng_area.x_min, "x_max": rng_area.x_max, "y_base": rng_area.y_base}
    auc["linear"] = 100 * area_under_curve(lin_c, lin_q, **area)
    points: dict[str, Any] = {
        "single_models": {
            "model": list(table.models),
            "cost": model_cost.tolist(),
            "quality": model_quality.tolist(),
        },
        "linear": {"cost": lin_c.tolist(), "quality": lin_q.tolist()},
    }
    for method in methods:
        mean_c, mean_q = per_query_c[method].mean(axis=1), per_query_q[method].mean(axis=1)
        auc[method] = 100 * area_under_curve(mean_c, mean_q, **area)
        points[method] = {"budget": budgets.tolist(), "cost": mean_c.tolist(), "quality": mean_q.tolist()}

    ci = _bootstrap(per_query_q, per_query_c, q_test, c_test, settings, methods)
    return {
        "auc": auc,
        "ci": ci,
        "points": points,
        "settings": {
            **asdict(settings),
            "models_used": list(table.models),
            "n_validation": int(len(val)),
            "n_test": int(len(test)),
            "budget_grid": f"{settings.per_segment} per segment of the single models' test cost hull",
            "n_budgets": int(len(budgets)),
            "budgets_raised_to_validation_floor": int(np.sum(budgets < floor)),
            "cost_unit": "USD per query",
            "fit_and_test_s": fit_s,
            "total_s": time.perf_counter() - started,
        },
    }


def _bootstrap(
    per_query_q: dict[str, FloatArray],
    per_query_c: dict[str, FloatArray],
    q_test: FloatArray,
    c_test: FloatArray,
    settings: ProtocolSettings,
    methods: tuple[str, ...],
) -> dict[str, Any]:
    """Paired bootstrap: every method sees the same resamples, so differences have tight CIs."""
    if settings.n_bootstrap <= 0:
        return {}
    idx = bootstrap_indices(q_test.shape[0], n_resamples=settings.n_bootstrap, seed=settings.bootstrap_seed)
    samples = {
        m: 100 * bootstrap_auc(per_query_q[m], per_query_c[m], q_test, c_test, idx) for m in methods
    }

    def as_dict(ci: ConfidenceInterval) -> dict[str, float]:
        return {"mean": ci.mean, "low": ci.low, "high": ci.high}

    out: dict[str, Any] = {m: as_dict(ConfidenceInterval.from_samples(v)) for m, v in samples.items()}
    if "cascade_routing" in samples:
        base = samples["cascade_routing"]
        out["diff_vs_cascade_routing"] = {
            m: as_dict(paired_difference(v, base)) for m, v in samples.items() if m != "cascade_routing"
        }
    out["n_resamples"] = settings.n_bootstrap
    out["seed"] = settings.bootstrap_seed
    return out
