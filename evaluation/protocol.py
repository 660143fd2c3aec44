"""The paper's RouterBench protocol (algorithm-spec §5.1, §5.4), with the reference's flaws fixed.

Per (model set, noise level, seed): sort models by cost; split 5% validation / 95% test
(``train_test_split(test_size=0.95, random_state=42)``; ``test_size`` sets the share); draw the estimator
noise once for all rows and calibrate on the validation rows only (spec §8 item 9), each model's slope
from one measurement model of the signals shared by every model (``calibration_shrinkage``); fit the factor on the
estimators' uncertainty on the validation rows (``routing.fit_uncertainty_scale``,
``docs/uncertainty_scale.md``) and apply it to validation and test estimates; build the budget grid from
the test averages of the single models (10 per hull segment, §5.4); fit every method at every budget on
validation, keeping the validation mean cost plus ``budget_margin_se`` standard errors of it within the
budget (``routing._budget_margin``), and score it on test; AUC ×100 with 500-resample paired bootstrap CIs.
Both departures from the paper are for small validation sets (``docs/small_validation.md``).

With ``estimators="trained"`` the noise-simulated estimators are replaced by
:class:`~estimators.trained_quality.TrainedQualityEstimator`, which needs rows of its own. Three
disjoint row sets, then:

- **estimator training**: the ``estimator_table`` rows (for RouterBench, the ``*_train.csv`` files:
  ``split_by_file``); the estimators see their prompts, responses, scores and costs;
- **validation** (lambda/gamma fitting) and **test** (scoring): the paper's 5% / 95% split, unchanged,
  of the ``table`` rows (the ``*_test.csv`` files).

``run_protocol`` refuses an ``estimator_table`` that shares a ``sample_id`` with ``table``, so no scored
query ever trains an estimator. Noise levels do not apply (``noise=None``); ``seed`` seeds the
estimators' folds and subset draws.

Costs are in the data's unit (USD per query for RouterBench).
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from queue import Empty
from typing import Any, Literal, Protocol

import numpy as np
from numpy.typing import NDArray
from sklearn.model_selection import train_test_split

from estimators.table import QueryModelTable
from evaluation.metrics import (
    ConfidenceInterval,
    area_under_curve,
    auc_range,
    bootstrap_auc,
    bootstrap_indices,
    budget_grid,
    linear_interpolation_curve,
    paired_difference,
    single_model_points,
)
from evaluation.policy_choice import CANDIDATES
from evaluation.policy_report import Outcomes, policy_report
from evaluation.routerbench import MODEL_SETS
from evaluation.simulated import SHRINKAGE, draw_noise, simulated_estimates
from routing import (
    CONSTANT_LAMBDA_POLICIES,
    DEFAULT_BUDGET_MARGIN_SE,
    BudgetUnreachableError,
    CascadeRouter,
    EstimateSource,
    OptimalCascade,
    Policy,
    Router,
    ScaledUncertainty,
    StateMemos,
    ThresholdCascade,
    fit_uncertainty_scale,
    rollout,
)

__all__ = ["CALIBRATION_SHRINKAGE", "ESTIMATORS", "METHODS", "ProtocolSettings", "run_protocol"]

FloatArray = NDArray[np.float64]
# Progress callback: (stage such as "train estimators", "fit routing" or "test routing", done, total).
Progress = Callable[[str, int, int], None]
# The test split is scored in this many fixed chunks, each with its own seeded tie-break rng, so the
# results are the same whatever the number of processes.
_TEST_CHUNKS = 2
# The validation rows' tie-break stream: apart from the test chunks' ([seed, 0], [seed, 1], ...).
_VALIDATION_STREAM = 1_000

METHODS = CONSTANT_LAMBDA_POLICIES
ESTIMATORS = ("simulated", "trained")
CALIBRATION_SHRINKAGE = SHRINKAGE


class _SplittableSource(EstimateSource, Protocol):
    """An estimate source that can be restricted to some of its rows (TableEstimates, TrainedEstimates)."""

    def subset(self, rows: NDArray[np.intp]) -> _SplittableSource: ...


@dataclass(frozen=True)
class ProtocolSettings:
    """Everything that defines one evaluation; saved next to the results."""

    models: int | tuple[str, ...] = 11  # a paper set (3, 5, 11) or model names
    noise: str | None = "low"  # simulated estimators only; None with estimators="trained"
    seed: int = 0  # noise draw, or the trained estimators' random_state; the split keeps the paper's seed
    split_seed: int = 42
    test_size: float = 0.95
    per_segment: int = 10
    max_depth: int | None = 5  # cascade routing, as the paper on RouterBench; None: no limit
    strategy: str = "per_step"
    n_search: int = 24
    n_bootstrap: int = 500
    bootstrap_seed: int = 0
    estimators: str = "simulated"  # "simulated" (noise, spec §5.1) or "trained" (module docstring)
    # Factor on the estimators' variances in E[max]; None fits it on the validation rows
    # (routing.fit_uncertainty_scale). A number fixes it (1.0: the variance as the estimator states it).
    uncertainty_scale: float | None = None
    # Every lambda fit keeps the validation mean cost plus this many standard errors of it within the
    # budget (routing._budget_margin): the budget's sampling error on few validation rows. 0: the paper's fit.
    budget_margin_se: float = DEFAULT_BUDGET_MARGIN_SE
    # Simulated estimators' per-model calibration: "measurement" derives every model's slope from one
    # measurement model of the signals (one signal scale and noise variance for every model, each model's
    # own quality variance; evaluation.simulated.measurement_slopes); "empirical_bayes" pulls each model's
    # slope toward the pooled slope by how noisy it is; "none": per model alone, as the reference; "pooled":
    # one slope for every model (docs/routerbench_results.md compares them). Trained estimators ignore it.
    calibration_shrinkage: str = "measurement"
    # With two models cascade routing's per-step lambda search may also start from the optimal cascade
    # (routing._lambda_search); False: the paper's search, from the constant fit only.
    cascade_start: bool = True

    def __post_init__(self) -> None:
        if self.estimators not in ESTIMATORS:
            raise ValueError(f"estimators must be one of {list(ESTIMATORS)}, got {self.estimators!r}")
        if self.estimators == "trained" and self.noise is not None:
            raise ValueError(f"noise applies only to simulated estimators; use noise=None with trained ones, "
                             f"got noise={self.noise!r}")
        if self.estimators == "simulated" and self.noise is None:
            raise ValueError("simulated estimators need a noise level (low, medium or high)")
        if self.strategy not in ("per_step", "constant"):
            raise ValueError(f"strategy must be 'per_step' or 'constant', got {self.strategy!r}")
        if isinstance(self.models, int) and self.models not in MODEL_SETS:
            raise ValueError(f"models must be one of {sorted(MODEL_SETS)} or model names, got {self.models!r}")
        if isinstance(self.models, tuple) and len(self.models) < 2:
            raise ValueError(f"name at least two models to route between, got {list(self.models)}")
        if not 0.0 < self.test_size < 1.0:
            raise ValueError(f"test_size must be in (0, 1), got {self.test_size!r}")
        if self.max_depth is not None and (isinstance(self.max_depth, bool) or not isinstance(self.max_depth, int)
                                           or self.max_depth < 1):
            raise ValueError(f"max_depth must be an int >= 1 or None (no limit), got {self.max_depth!r}")
        margin = self.budget_margin_se
        if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0.0 <= margin < float("inf"):
            raise ValueError(f"budget_margin_se must be a finite number >= 0 (standard errors), got {margin!r}")
        if not isinstance(self.cascade_start, bool):
            raise ValueError(f"cascade_start must be True or False, got {self.cascade_start!r}")
        if self.calibration_shrinkage not in CALIBRATION_SHRINKAGE:
            raise ValueError(f"calibration_shrinkage must be one of {list(CALIBRATION_SHRINKAGE)}, "
                             f"got {self.calibration_shrinkage!r}")
        scale = self.uncertainty_scale
        if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))
                                  or not 0.0 <= scale < float("inf")):
            raise ValueError(f"uncertainty_scale must be None (fit on validation) or a finite number >= 0, "
                             f"got {scale!r}")

    @property
    def model_names(self) -> tuple[str, ...]:
        return MODEL_SETS[self.models] if isinstance(self.models, int) else self.models


def _make_policy(method: str, budget: float, s: ProtocolSettings) -> Policy:
    strategy: Literal["constant", "per_step"] = "constant" if s.strategy == "constant" else "per_step"
    margin = s.budget_margin_se
    if method == "routing":
        return Router(max_expected_cost=budget, budget_margin_se=margin, seed=s.seed)
    if method == "threshold_cascade":
        return ThresholdCascade(max_expected_cost=budget, budget_margin_se=margin, strategy=strategy,
                                n_search=s.n_search, seed=s.seed)
    if method == "optimal_cascade":
        return OptimalCascade(max_expected_cost=budget, budget_margin_se=margin, strategy=strategy,
                              n_search=s.n_search, seed=s.seed)
    if method == "cascade_routing":
        return CascadeRouter(max_expected_cost=budget, budget_margin_se=margin, max_depth=s.max_depth,
                             strategy=strategy, n_search=s.n_search, cascade_start=s.cascade_start,
                             seed=s.seed)
    raise ValueError(f"unknown method {method!r}; choose from {METHODS}")


def run_protocol(
    table: QueryModelTable,
    settings: ProtocolSettings,
    *,
    methods: tuple[str, ...] = METHODS,
    progress: Progress | None = None,
    n_jobs: int = 1,
    estimator_table: QueryModelTable | None = None,
    estimator_params: dict[str, Any] | None = None,
    bootstrap_samples: bool = False,
) -> dict[str, Any]:
    """Run the protocol; return a JSON-ready dict ``{"auc", "ci", "points", "policy_choice", "settings"}``.

    ``auc`` holds AUC ×100 per method plus ``"linear"``; ``ci`` the bootstrap interval of cascade
    routing (absolute) and of every other method's difference to it (paired, same resamples), and with
    ``bootstrap_samples`` every resample's AUC per method (``samples``: runs that share test rows and
    resamples, such as the seeds of one setting, then combine into paired CIs of their means);
    ``points`` the (budget, cost, quality) curve per method on the test split; ``policy_choice`` the
    policy chosen at each budget on the validation split (``evaluation.policy_choice``, among routing, the
    optimal cascade and cascade routing) and every method's paired CIs on test against routing and every
    single model (``evaluation.policy_report``).

    ``n_jobs`` processes share the work (fits by method, then the test split in two fixed halves);
    results do not depend on it.

    With ``settings.estimators == "trained"``, ``estimator_table`` holds the rows the estimators are
    trained on (required, and disjoint in ``sample_id`` from ``table``, whose rows are split into
    validation and test as usual; module docstring). It must be None for simulated estimators.
    ``estimator_params`` are set on the ``TrainedQualityEstimator`` (its defaults otherwise).
    """
    if n_jobs < 1:
        raise ValueError(f"n_jobs must be at least 1, got {n_jobs!r}")
    started = time.perf_counter()
    table = table.select_models(settings.model_names).sorted_by_cost()
    quality, cost = np.asarray(table.quality), np.asarray(table.cost)
    val, test = _split(table.n_queries, settings)
    estimates, extra = _estimate_source(table, settings, val, estimator_table, estimator_params, progress)
    q_val, c_val, q_test, c_test = quality[val], cost[val], quality[test], cost[test]
    est_val, scale_record = _scale_uncertainty(estimates.subset(val), q_val, settings)
    est_test = ScaledUncertainty(estimates.subset(test), est_val.scale)

    model_cost, model_quality = single_model_points(q_test, c_test)
    budgets = budget_grid(model_cost, model_quality, per_segment=settings.per_segment)
    # The grid comes from test averages (spec §8 item 14); a budget under the cheapest model's
    # *validation* cost cannot be fitted, so it is raised to that cost and reported.
    floor = float(c_val.mean(axis=0).min())
    fit_budgets = np.maximum(budgets, floor)

    fit_s, policies, on_validation = _fit_all(methods, fit_budgets, settings, est_val, q_val, c_val, n_jobs,
                                              progress)
    t0 = time.perf_counter()
    per_query_q, per_query_c = _score_all(policies, est_test, q_test, c_test, settings.seed, n_jobs, progress)
    test_s = time.perf_counter() - t0

    auc, points = _curves(table.models, model_cost, model_quality, budgets, per_query_q, per_query_c, methods)
    ci = _bootstrap(per_query_q, per_query_c, q_test, c_test, settings, methods, keep_samples=bootstrap_samples)
    choice = policy_report(
        budgets, on_validation, {m: Outcomes(quality=per_query_q[m], cost=per_query_c[m]) for m in methods},
        q_test, c_test, table.models, [m for m in CANDIDATES["cascade_routing"] if m in methods],
        seed=settings.bootstrap_seed)
    record = {
        **asdict(settings),
        "models_used": list(table.models),
        "n_validation": int(len(val)),
        "n_test": int(len(test)),
        "budget_grid": f"{settings.per_segment} per segment of the single models' test cost hull",
        "n_budgets": int(len(budgets)),
        "budgets_raised_to_validation_floor": int(np.sum(budgets < floor)),
        "budgets_raised_to_policy_floor": {
            m: int(sum(p.max_expected_cost > b for p, b in zip(policies[m], fit_budgets, strict=True)))
            for m in methods
        },
        "cost_unit": f"{table.cost_unit} per query",
        **scale_record,
        **extra,
        "fit_s": fit_s,
        "test_s": test_s,
        "n_jobs": n_jobs,
        "total_s": time.perf_counter() - started,
    }
    return {"auc": auc, "ci": ci, "points": points, "policy_choice": choice, "settings": record}


def _split(n_queries: int, settings: ProtocolSettings) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """The paper's validation/test split (scikit-learn's, seeded as the reference seeds it)."""
    val, test = train_test_split(np.arange(n_queries), test_size=settings.test_size, random_state=settings.split_seed)
    if len(val) == 0 or len(test) == 0:
        raise ValueError(f"the split left an empty side ({len(val)} validation, {len(test)} test rows)")
    return val, test


def _scale_uncertainty(
    est_val: _SplittableSource, q_val: FloatArray, settings: ProtocolSettings
) -> tuple[ScaledUncertainty, dict[str, Any]]:
    """The validation source with its uncertainty scaled by the factor fitted on the validation rows (or the
    settings' fixed one), and what the record says about it.

    Only validation estimates and validation ground truth reach the fit, so the test rows cannot move it
    (``tests/evaluation/test_protocol_uncertainty_scale.py`` poisons them to check).
    """
    if settings.uncertainty_scale is not None:
        return ScaledUncertainty(est_val, float(settings.uncertainty_scale)), {
            "uncertainty_scale": float(settings.uncertainty_scale), "uncertainty_scale_fit": None}
    fit = fit_uncertainty_scale(est_val, q_val)
    return ScaledUncertainty(est_val, fit.scale), {"uncertainty_scale": fit.scale,
                                                   "uncertainty_scale_fit": fit.as_dict()}


def _estimate_source(
    table: QueryModelTable, settings: ProtocolSettings, val: NDArray[np.intp], estimator_table: QueryModelTable | None,
    estimator_params: dict[str, Any] | None, progress: Progress | None,
) -> tuple[_SplittableSource, dict[str, Any]]:
    """Simulated estimates calibrated on the validation rows, or estimators trained on ``estimator_table``;
    and what the settings record should add about them."""
    quality, cost = np.asarray(table.quality), np.asarray(table.cost)
    if settings.estimators == "simulated":
        if estimator_table is not None or estimator_params is not None:
            raise ValueError("estimator_table and estimator_params are for estimators='trained'; simulated "
                             "estimators calibrate on the validation split")
        assert settings.noise is not None  # ProtocolSettings guarantees it
        signals = draw_noise(quality, cost, settings.noise, seed=settings.seed)
        return simulated_estimates(signals, quality, cost, fit_rows=val, shrinkage=settings.calibration_shrinkage), {}
    t_est = time.perf_counter()
    if progress is not None:
        progress("train estimators", 0, 1)
    estimates, extra = _trained_source(table, estimator_table, settings, estimator_params or {})
    extra["estimator_fit_s"] = time.perf_counter() - t_est
    if progress is not None:
        progress("train estimators", 1, 1)
    return estimates, extra


def _curves(
    models: tuple[str, ...], model_cost: FloatArray, model_quality: FloatArray, budgets: FloatArray,
    per_query_q: dict[str, FloatArray], per_query_c: dict[str, FloatArray], methods: tuple[str, ...],
) -> tuple[dict[str, float], dict[str, Any]]:
    """AUC x100 and the (budget, cost, quality) points of every method, the single models and their
    linear interpolation, over the single models' cost range."""
    rng_area = auc_range(model_cost, model_quality)
    area = {"x_min": rng_area.x_min, "x_max": rng_area.x_max, "y_base": rng_area.y_base}
    lin_c, lin_q = linear_interpolation_curve(model_cost, model_quality)
    auc: dict[str, float] = {"linear": 100 * area_under_curve(lin_c, lin_q, **area)}
    points: dict[str, Any] = {
        "single_models": {"model": list(models), "cost": model_cost.tolist(), "quality": model_quality.tolist()},
        "linear": {"cost": lin_c.tolist(), "quality": lin_q.tolist()},
    }
    for method in methods:
        mean_c, mean_q = per_query_c[method].mean(axis=1), per_query_q[method].mean(axis=1)
        auc[method] = 100 * area_under_curve(mean_c, mean_q, **area)
        points[method] = {"budget": budgets.tolist(), "cost": mean_c.tolist(), "quality": mean_q.tolist()}
    return auc, points


def _trained_source(
    table: QueryModelTable, estimator_table: QueryModelTable | None, settings: ProtocolSettings,
    params: dict[str, Any],
) -> tuple[_SplittableSource, dict[str, Any]]:
    """Fit the trained estimators on ``estimator_table``; their source over ``table`` (models as sorted)."""
    from estimators.trained_quality import TrainedQualityEstimator

    if estimator_table is None:
        raise ValueError("estimators='trained' needs estimator_table: the rows to train the estimators on")
    shared = set(table.sample_ids) & set(estimator_table.sample_ids)
    if shared:
        raise ValueError(
            f"{len(shared)} sample_id(s) are both in the evaluation rows and in estimator_table (e.g. "
            f"{sorted(shared)[:3]}): an estimator must never train on a scored query"
        )
    if "uncertainty_scale" in params:
        raise ValueError("estimator_params may not set uncertainty_scale: the protocol fits the factor on the "
                         "validation rows (ProtocolSettings.uncertainty_scale fixes it instead)")
    train = estimator_table.select_models(table.models)
    # The estimator serves its covariance unscaled (factor 1) and the protocol scales it by the factor fitted
    # on the validation rows, as for every other source. Its own training-time "auto" factor stays the
    # default for standalone use (no validation rows at hand); applying both would compound two fits of the
    # same quantity. The validation rows win because they are what the multipliers are fitted on and come
    # from the distribution being served, while the "auto" fit reads cross-fitted training predictions,
    # whose models saw fewer rows than the final one.
    estimator = (TrainedQualityEstimator(random_state=settings.seed).set_params(**params, uncertainty_scale=1.0)
                 .fit(train))
    info = {
        "estimator_rows": "estimator_table (RouterBench: *_train.csv rows whose sample_id is in no *_test.csv); "
        "validation and test split the other rows (*_test.csv); no sample_id in both",
        "n_estimator_training": int(train.n_queries),
        "estimator_params": {k: v for k, v in estimator.get_params().items()
                             if k not in ("random_state", "uncertainty_scale")},
    }
    return estimator.estimate_source(table), info


def _bootstrap(
    per_query_q: dict[str, FloatArray],
    per_query_c: dict[str, FloatArray],
    q_test: FloatArray,
    c_test: FloatArray,
    settings: ProtocolSettings,
    methods: tuple[str, ...],
    *,
    keep_samples: bool = False,
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
    if keep_samples:
        out["samples"] = {m: np.round(v, 4).tolist() for m, v in samples.items()}
    return out


# -- work split across processes -------------------------------------------------------------------
# Workers report progress through a queue inherited at fork; in-process runs call the callback.
_progress_sink: Callable[[tuple[str, int, int]], None] | None = None


def _init_worker(queue: Any) -> None:
    global _progress_sink
    _progress_sink = queue.put


def _report(stage: str, done: int, total: int) -> None:
    if _progress_sink is not None:
        _progress_sink((stage, done, total))


def _fit_method(
    method: str,
    fit_budgets: FloatArray,
    settings: ProtocolSettings,
    est_val: _SplittableSource,
    q_val: FloatArray,
    c_val: FloatArray,
) -> tuple[float, list[Policy], Outcomes]:
    """Fit one method at every budget, and score each fit on the validation rows (the policy choice reads
    them); the budgets share one memo of validation states."""
    t0 = time.perf_counter()
    memos: StateMemos = {}
    policies = []
    val_q, val_c = np.empty((len(fit_budgets), q_val.shape[0])), np.empty((len(fit_budgets), q_val.shape[0]))
    for b, budget in enumerate(fit_budgets):
        try:
            policy = _make_policy(method, float(budget), settings).fit(est_val, q_val, c_val, memos=memos)
        except BudgetUnreachableError as exc:
            # Even at lambda -> infinity the estimated costs pick a dearer model on a few queries, so the
            # policy's cheapest setting costs a little more than the cheapest model: fit at that cost, as
            # the reference's bracketing does when it gives up (spec §1.4).
            policy = _make_policy(method, exc.cheapest_cost, settings).fit(est_val, q_val, c_val, memos=memos)
        policies.append(policy)
        result = rollout(policy, est_val, q_val, c_val, rng=np.random.default_rng([settings.seed, _VALIDATION_STREAM]),
                         memos=memos)
        val_q[b], val_c[b] = result.quality, result.cost
        _report(f"fit {method}", b + 1, len(fit_budgets))
    return time.perf_counter() - t0, policies, Outcomes(quality=val_q, cost=val_c)


def _score_chunk(
    chunk: int,
    rows: NDArray[np.intp],
    policies: dict[str, list[Policy]],
    est_test: _SplittableSource,
    q_test: FloatArray,
    c_test: FloatArray,
    seed: int,
) -> dict[str, tuple[FloatArray, FloatArray]]:
    """Per-query quality and cost of every fitted policy on one chunk of the test split."""
    memos: StateMemos = {}
    est, quality, cost = est_test.subset(rows), q_test[rows], c_test[rows]
    out = {}
    for method, fitted in policies.items():
        qs, cs = np.empty((len(fitted), rows.shape[0])), np.empty((len(fitted), rows.shape[0]))
        for b, policy in enumerate(fitted):
            result = rollout(policy, est, quality, cost, rng=np.random.default_rng([seed, chunk]), memos=memos)
            qs[b], cs[b] = result.quality, result.cost
            _report(f"test {method}", b + 1, len(fitted))
        out[method] = (qs, cs)
    return out


def _run_tasks(
    tasks: list[tuple[Callable[..., Any], tuple[Any, ...]]], n_jobs: int, progress: Progress | None
) -> list[Any]:
    """Run ``tasks`` in order (n_jobs = 1) or on a fork pool, relaying progress; results in order."""
    global _progress_sink
    totals: dict[str, list[int]] = {}

    def relay(message: tuple[str, int, int]) -> None:
        stage, done, total = message
        # Chunks of the test split report separately: add them up per stage.
        counts = totals.setdefault(stage, [0, 0])
        counts[0] += 1
        counts[1] = max(counts[1], total * (_TEST_CHUNKS if stage.startswith("test") else 1))
        if progress is not None:
            progress(stage, counts[0], counts[1])

    if n_jobs == 1:
        _progress_sink = relay
        try:
            return [fn(*args) for fn, args in tasks]
        finally:
            _progress_sink = None
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    with ProcessPoolExecutor(max_workers=n_jobs, mp_context=ctx, initializer=_init_worker, initargs=(queue,)) as pool:
        futures = [pool.submit(fn, *args) for fn, args in tasks]
        while not all(f.done() for f in futures):
            try:
                relay(queue.get(timeout=0.2))
            except Empty:
                pass
        while not queue.empty():
            relay(queue.get())
        return [f.result() for f in futures]


def _fit_all(
    methods: tuple[str, ...],
    fit_budgets: FloatArray,
    settings: ProtocolSettings,
    est_val: _SplittableSource,
    q_val: FloatArray,
    c_val: FloatArray,
    n_jobs: int,
    progress: Progress | None,
) -> tuple[dict[str, float], dict[str, list[Policy]], dict[str, Outcomes]]:
    # The dearest fits first, so two workers finish together.
    order = sorted(methods, key=lambda m: -_FIT_WEIGHT.get(m, 0))
    results = dict(zip(order, _run_tasks(
        [(_fit_method, (m, fit_budgets, settings, est_val, q_val, c_val)) for m in order], n_jobs, progress
    ), strict=True))
    return ({m: results[m][0] for m in methods}, {m: results[m][1] for m in methods},
            {m: results[m][2] for m in methods})


def _score_all(
    policies: dict[str, list[Policy]],
    est_test: _SplittableSource,
    q_test: FloatArray,
    c_test: FloatArray,
    seed: int,
    n_jobs: int,
    progress: Progress | None,
) -> tuple[dict[str, FloatArray], dict[str, FloatArray]]:
    chunks = np.array_split(np.arange(q_test.shape[0]), _TEST_CHUNKS)
    results = _run_tasks(
        [(_score_chunk, (i, rows, policies, est_test, q_test, c_test, seed)) for i, rows in enumerate(chunks)],
        n_jobs,
        progress,
    )
    per_query_q = {m: np.concatenate([r[m][0] for r in results], axis=1) for m in policies}
    per_query_c = {m: np.concatenate([r[m][1] for r in results], axis=1) for m in policies}
    return per_query_q, per_query_c


# Rough relative cost of fitting each method (orders the work on the pool).
_FIT_WEIGHT = {"cascade_routing": 3, "optimal_cascade": 2, "threshold_cascade": 1, "routing": 0}
