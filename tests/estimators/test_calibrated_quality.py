"""Trained quality estimates from calibration tables (final answers + the engine's answer statistics), and
their live adapter ``CalibratedQuality``."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from estimators.answer_signals import answer_stats
from estimators.calibrated_quality import SERVING_TASK, CalibratedQuality
from estimators.stage import QueryInfo, StageResult
from estimators.table import ANSWER_STATS, QueryModelTable
from estimators.trained_quality import TrainedQualityEstimator

MODELS = ("small", "medium", "large")
ACCURACY = (0.45, 0.65, 0.85)
FAST = {"cv": 3, "n_text_features": 2**10, "random_state": 0}


def _logprobs(correct: bool, rng: np.random.Generator, n_tokens: int = 6) -> list[float]:
    """Token log-probabilities: a confident answer when right, a hesitant one when wrong."""
    centre = -0.15 if correct else -1.6
    return list(np.minimum(rng.normal(centre, 0.35, size=n_tokens), 0.0))


def calibration_table(n: int, *, seed: int, with_stats: bool = True) -> QueryModelTable:
    """Arithmetic prompts answered with numbers; model j is right with ``ACCURACY[j]`` shifted by a per-query
    difficulty, wrong answers are scattered values (so agreement of two answers means they are right), and
    the mean token log-probability of an answer tells right from wrong."""
    rng = np.random.default_rng(seed)
    k = len(MODELS)
    prompts, responses = [], []
    quality = np.zeros((n, k))
    stats = np.zeros((n, k, len(ANSWER_STATS)))
    for r in range(n):
        a, b = (int(x) for x in rng.integers(2, 99, size=2))
        prompts.append(f"Question {seed}.{r}: what is {a} plus {b}? Reply with the number.")
        difficulty = rng.normal(0.0, 1.0)
        row = []
        for j, acc in enumerate(ACCURACY):
            ok = bool(rng.random() < 1.0 / (1.0 + np.exp(-(np.log(acc / (1 - acc)) - difficulty))))
            quality[r, j] = float(ok)
            value = a + b if ok else a + b + int(rng.choice([-1, 1])) * int(rng.integers(1, 40))
            row.append(f"The answer is {value}." if rng.random() < 0.5 else f"\\boxed{{{value}}}")
            stats[r, j] = answer_stats(_logprobs(ok, rng), "stop")
        responses.append(tuple(row))
    cost = np.tile([1.0, 3.0, 9.0], (n, 1)) * rng.uniform(0.9, 1.1, size=(n, k))
    return QueryModelTable(
        sample_ids=tuple(f"{seed}.{r}" for r in range(n)), prompts=tuple(prompts),
        eval_names=(SERVING_TASK,) * n, models=MODELS, quality=quality, cost=cost,
        responses=tuple(responses), answer_stats=stats if with_stats else None, answer_kinds=("final",) * n,
    )


def _without_stats(table: QueryModelTable) -> QueryModelTable:
    return QueryModelTable(
        sample_ids=table.sample_ids, prompts=table.prompts, eval_names=table.eval_names, models=table.models,
        quality=table.quality, cost=table.cost, responses=table.responses, answer_kinds=table.answer_kinds,
    )


@pytest.fixture(scope="module")
def tables() -> tuple[QueryModelTable, QueryModelTable]:
    return calibration_table(300, seed=1), calibration_table(300, seed=2)


@pytest.fixture(scope="module")
def fitted(tables: tuple[QueryModelTable, QueryModelTable]) -> TrainedQualityEstimator:
    return TrainedQualityEstimator(**FAST).fit(tables[0])


@pytest.fixture(scope="module")
def fitted_without_stats(tables: tuple[QueryModelTable, QueryModelTable]) -> TrainedQualityEstimator:
    return TrainedQualityEstimator(**FAST).fit(_without_stats(tables[0]))


def _auc_alone(est: TrainedQualityEstimator, table: QueryModelTable, i: int) -> float:
    """AUC of model i's post-hoc estimate, when it is the only model that answered, against its correctness."""
    n = table.n_queries
    answered = np.zeros((n, table.n_models), dtype=bool)
    answered[:, i] = True
    q = est.predict_quality(est.prepare(table), np.arange(n), answered)
    return float(roc_auc_score(table.quality[:, i], q[:, i]))


# -- the trained estimator with answer statistics ----------------------------------------------------


def test_answer_stats_sharpen_the_post_hoc_estimate(
    tables: tuple[QueryModelTable, QueryModelTable], fitted: TrainedQualityEstimator,
    fitted_without_stats: TrainedQualityEstimator,
) -> None:
    test = tables[1]
    for i in range(len(MODELS)):
        with_stats = _auc_alone(fitted, test, i)
        without = _auc_alone(fitted_without_stats, _without_stats(test), i)
        assert with_stats > 0.85, (MODELS[i], with_stats)
        assert with_stats > without + 0.15, (MODELS[i], with_stats, without)


def test_final_answer_agreement_is_a_signal_without_stats(
    tables: tuple[QueryModelTable, QueryModelTable], fitted_without_stats: TrainedQualityEstimator,
) -> None:
    """Agreeing numeric answers ("The answer is 42." / "\\boxed{42}") make the small model's answer look right."""
    test = _without_stats(tables[1])
    n = test.n_queries
    prepared = fitted_without_stats.prepare(test)
    everyone = fitted_without_stats.predict_quality(prepared, np.arange(n), np.ones((n, 3), dtype=bool))
    alone = _auc_alone(fitted_without_stats, test, 0)
    assert roc_auc_score(test.quality[:, 0], everyone[:, 0]) > alone + 0.15


def test_stats_change_only_the_answered_models_features(
    tables: tuple[QueryModelTable, QueryModelTable], fitted: TrainedQualityEstimator,
) -> None:
    """A model's own statistics enter its post-hoc block only: before it answers they are ignored."""
    test = tables[1].take(np.arange(20))
    flipped = QueryModelTable(
        sample_ids=test.sample_ids, prompts=test.prompts, eval_names=test.eval_names, models=test.models,
        quality=test.quality, cost=test.cost, responses=test.responses,
        answer_stats=np.full_like(test.answer_stats, -5.0), answer_kinds=test.answer_kinds,
    )
    rows = np.arange(20)
    none = np.zeros((20, 3), dtype=bool)
    np.testing.assert_allclose(fitted.predict_quality(fitted.prepare(test), rows, none),
                               fitted.predict_quality(fitted.prepare(flipped), rows, none))
    small = none.copy()
    small[:, 0] = True
    before = fitted.predict_quality(fitted.prepare(test), rows, small)[:, 0]
    after = fitted.predict_quality(fitted.prepare(flipped), rows, small)[:, 0]
    assert np.all(after <= before + 1e-12) and np.mean(after) < np.mean(before) - 0.1


# -- CalibratedQuality -----------------------------------------------------------------------------


def _stage(model: str, text: str, logprobs: tuple[float, ...], finish_reason: str | None = "stop") -> StageResult:
    return StageResult(model=model, prompt_tokens=12, completion_tokens=len(logprobs), token_logprobs=logprobs,
                       queue_s=0.0, prefill_s=0.01, decode_s=0.02, text=text, finish_reason=finish_reason)


QUERY = QueryInfo(text="Question 9.1: what is 17 plus 25? Reply with the number.", prompt_tokens=15, max_tokens=32)


def _one_row(est: TrainedQualityEstimator, stages: dict[str, StageResult]) -> np.ndarray:
    """What the estimator says for the same query and answers, built by hand as a calibration table row."""
    stats = np.zeros((1, 3, len(ANSWER_STATS)))
    for j, m in enumerate(MODELS):
        if m in stages:
            stats[0, j] = answer_stats(stages[m].token_logprobs, stages[m].finish_reason)
    table = QueryModelTable(
        sample_ids=("q",), prompts=(QUERY.text,), eval_names=(SERVING_TASK,), models=MODELS,
        quality=np.zeros((1, 3)), cost=np.zeros((1, 3)),
        responses=(tuple(stages[m].text if m in stages else "" for m in MODELS),),
        answer_stats=stats, answer_kinds=("final",),
    )
    answered = np.array([[m in stages for m in MODELS]])
    return est.predict_quality(est.prepare(table), np.zeros(1, dtype=np.intp), answered)[0]


@pytest.mark.parametrize(
    "stages",
    [
        {},
        {"small": _stage("small", "The answer is 42.", (-0.1, -0.2, -0.05))},
        {"small": _stage("small", "41", (-2.0, -1.5)), "medium": _stage("medium", "\\boxed{42}", (-0.1,), "length")},
        {"small": _stage("small", "42", (-0.3,)), "medium": _stage("medium", "42", (-0.2,)),
         "large": _stage("large", "The answer is 42.", (-0.1, -0.1))},
    ],
    ids=["none", "small", "small+medium", "all"],
)
def test_adapter_matches_the_estimator_on_an_equivalent_row(
    fitted: TrainedQualityEstimator, stages: dict[str, StageResult],
) -> None:
    adapter = CalibratedQuality(fitted)
    mean, var = adapter.predict(QUERY, list(MODELS), stages)
    np.testing.assert_allclose(mean, _one_row(fitted, stages), rtol=1e-12)
    answered = np.array([m in stages for m in MODELS])
    np.testing.assert_allclose(var, np.diag(fitted.subset_covariance(answered)))
    assert mean.shape == var.shape == (3,)
    assert np.all((mean >= 0) & (mean <= 1)) and np.all(var >= 0)


def test_adapter_returns_estimates_in_the_order_asked(fitted: TrainedQualityEstimator) -> None:
    adapter = CalibratedQuality(fitted)
    stages = {"small": _stage("small", "The answer is 42.", (-0.1,))}
    mean, var = adapter.predict(QUERY, list(MODELS), stages)
    sub_mean, sub_var = adapter.predict(QUERY, ["large", "small"], stages)
    np.testing.assert_allclose(sub_mean, mean[[2, 0]])
    np.testing.assert_allclose(sub_var, var[[2, 0]])
    assert adapter.models == MODELS


def test_adapter_has_no_live_statistic_a_client_could_drag(fitted: TrainedQualityEstimator) -> None:
    """Issue 12: it learns only from the next calibration, so a hundred certain answers change nothing."""
    adapter = CalibratedQuality(fitted)
    before = adapter.predict(QUERY, list(MODELS), {})
    for _ in range(100):
        adapter.observe(QUERY, _stage("small", "The answer is 4.", (0.0,) * 8))
    after = adapter.predict(QUERY, list(MODELS), {})
    np.testing.assert_array_equal(before[0], after[0])
    np.testing.assert_array_equal(before[1], after[1])


def test_adapter_reads_the_answers_log_probabilities(fitted: TrainedQualityEstimator) -> None:
    sure = CalibratedQuality(fitted).predict(QUERY, list(MODELS), {"small": _stage("small", "42", (-0.05,) * 4)})
    unsure = CalibratedQuality(fitted).predict(QUERY, list(MODELS), {"small": _stage("small", "42", (-2.0,) * 4)})
    assert sure[0][0] > unsure[0][0] + 0.2


def test_adapter_rejects_an_uncalibrated_model(fitted: TrainedQualityEstimator) -> None:
    with pytest.raises(ValueError, match="model 'huge' was not calibrated"):
        CalibratedQuality(fitted).predict(QUERY, ["small", "huge"], {})


def test_adapter_cache_does_not_reuse_estimates_for_other_answer_statistics(
    fitted: TrainedQualityEstimator,
) -> None:
    """The first call (no stages) caches a row with all answers empty; a model that then answers with an empty
    text must still get its own statistics, as must the same text answered with other log-probabilities."""
    adapter = CalibratedQuality(fitted)
    adapter.predict(QUERY, list(MODELS), {})
    empty = {"small": _stage("small", "", (-3.0, -3.0), "length")}
    np.testing.assert_allclose(adapter.predict(QUERY, list(MODELS), empty)[0], _one_row(fitted, empty))
    adapter.predict(QUERY, list(MODELS), {"small": _stage("small", "42", (-0.05,))})
    unsure = {"small": _stage("small", "42", (-2.5,))}
    np.testing.assert_allclose(adapter.predict(QUERY, list(MODELS), unsure)[0], _one_row(fitted, unsure))


def test_prepare_refuses_tables_whose_answer_statistics_differ_from_the_fit() -> None:
    with_stats = TrainedQualityEstimator(**FAST).fit(calibration_table(60, seed=3))
    without = TrainedQualityEstimator(**FAST).fit(calibration_table(60, seed=3, with_stats=False))
    new = calibration_table(10, seed=4)
    with pytest.raises(ValueError, match="answer statistics"):
        with_stats.prepare(_without_stats(new))
    with pytest.raises(ValueError, match="answer statistics"):
        without.prepare(new)
