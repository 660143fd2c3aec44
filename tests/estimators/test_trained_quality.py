"""Trained estimators: text features, answer signals, the per-model classifier, the trained quality
estimator and its estimate source, and the train/test row discipline of the protocol."""

from __future__ import annotations

import pickle
from pathlib import Path

import joblib
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.utils.estimator_checks import (
    parametrize_with_checks,
)

import estimators.trained_quality as trained_quality
from estimators.answer_signals import answer_signals, choice_options, code_tokens, extract_choice
from estimators.per_model_classifier import PerModelClassifier
from estimators.table import QueryModelTable
from estimators.text_features import PromptFeatures
from estimators.trained_estimates import TrainedEstimates
from estimators.trained_quality import TrainedQualityEstimator
from evaluation.protocol import ProtocolSettings, run_protocol
from evaluation.routerbench import MODEL_SETS, load_routerbench, split_by_file
from routing import DEFAULT_SCALE_GRID, Estimates, EstimateSource

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "routerbench_tiny"
SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "routerbench"
FAST_ESTIMATOR = {"cv": 3, "n_text_features": 2**10}


# -- synthetic multiple-choice data ----------------------------------------------------------------


def synthetic_table(n: int, *, seed: int, accuracy: tuple[float, ...] = (0.5, 0.65, 0.85)) -> QueryModelTable:
    """Four-option questions; a model is right with its accuracy shifted by a per-query difficulty and
    answers a uniformly drawn wrong letter otherwise, so agreement between answers carries signal."""
    rng = np.random.default_rng(seed)
    k = len(accuracy)
    letters = "ABCD"
    prompts, responses, quality = [], [], np.zeros((n, k))
    for r in range(n):
        correct = int(rng.integers(4))
        words = " ".join(rng.choice(["rock", "water", "plant", "light", "heat", "cell", "gas"], size=6))
        prompts.append(f"Question {r}: which is about {words}?\n" + "\n".join(f"{c}) option {c}" for c in letters)
                       + '\nPrint only a single choice  from "A" or "B" or "C" or "D" without explanation.\nAnswer:')
        difficulty = rng.normal(0.0, 1.0)
        row = []
        for j, acc in enumerate(accuracy):
            ok = rng.random() < 1.0 / (1.0 + np.exp(-(np.log(acc / (1 - acc)) - difficulty)))
            quality[r, j] = float(ok)
            choice = correct if ok else (correct + 1 + int(rng.integers(3))) % 4
            row.append(letters[choice])
        responses.append(tuple(row))
    cost = np.outer(np.ones(n), [1e-4, 4e-4, 4e-3]) * rng.uniform(0.8, 1.2, size=(n, k))
    return QueryModelTable(
        sample_ids=tuple(f"{seed}.{r}" for r in range(n)),
        prompts=tuple(prompts),
        eval_names=("arc-challenge",) * n,
        models=tuple(f"m{j}" for j in range(k)),
        quality=quality,
        cost=cost,
        responses=tuple(responses),
    )


@pytest.fixture(scope="module")
def synthetic() -> tuple[QueryModelTable, QueryModelTable, TrainedQualityEstimator]:
    train, test = synthetic_table(240, seed=1), synthetic_table(120, seed=2)
    return train, test, TrainedQualityEstimator(random_state=0, **FAST_ESTIMATOR).fit(train)


@pytest.fixture(scope="module")
def tiny() -> tuple[QueryModelTable, QueryModelTable]:
    table = load_routerbench(FIXTURE).select_models(MODEL_SETS[3]).sorted_by_cost()
    return split_by_file(table, FIXTURE)


def all_states(n: int, k: int) -> list[np.ndarray]:
    """Every answered subset, each as an (n, k) bool array."""
    return [np.broadcast_to(((m >> np.arange(k)) & 1).astype(bool), (n, k)).copy() for m in range(2**k)]


# -- scikit-learn contract ---------------------------------------------------------------------------


@parametrize_with_checks([PerModelClassifier()])
def test_per_model_classifier_passes_sklearn_checks(estimator: PerModelClassifier, check: object) -> None:
    check(estimator)  # type: ignore[operator]


def test_per_model_classifier_two_d_target_gives_one_probability_per_model() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    y = np.column_stack([x[:, 0] > 0, np.ones(200), np.zeros(200)]).astype(int)
    clf = PerModelClassifier().fit(x, y)
    p = clf.predict_proba(x)
    assert p.shape == (200, 3)
    assert np.all((p > 0) & (p < 1))
    # Single-label columns get the Laplace-smoothed rate, so logits stay finite.
    assert p[0, 1] == pytest.approx(201 / 202) and p[0, 2] == pytest.approx(1 / 202)
    assert np.all(np.isfinite(clf.decision_function(x)))
    assert clf.estimators_[1] is None and clf.estimators_[0] is not None


def test_per_model_classifier_rejects_multiclass_and_non_binary_columns() -> None:
    x = np.zeros((6, 2))
    with pytest.raises(ValueError, match="Only binary classification"):
        PerModelClassifier().fit(x, [0, 1, 2, 0, 1, 2])
    with pytest.raises(ValueError, match="Only binary classification"):
        PerModelClassifier().fit(x, np.array([[0, 2]] * 3 + [[1, 0]] * 3))


# -- text features -------------------------------------------------------------------------------------


def test_prompt_features_are_deterministic_sparse_and_stateless() -> None:
    prompts = ["Which gas do plants take in?", "Write a function to add two numbers.", ""]
    a = PromptFeatures().fit(prompts).transform(prompts)
    b = clone(PromptFeatures()).fit(["something else"]).transform(prompts)
    assert a.shape == (3, 2**16) and a.format == "csr"
    assert (a != b).nnz == 0  # hashing: nothing learned from the fitted prompts
    norms = np.sqrt(np.asarray(a.multiply(a).sum(axis=1))).ravel()
    assert norms[0] == pytest.approx(np.sqrt(2)) and norms[2] == 0.0  # two unit blocks; empty prompt is zero
    # Only the tail of a long prompt counts.
    tail = PromptFeatures(tail_chars=10).fit(["x"])
    assert (tail.transform(["A" * 500 + " the question"]) != tail.transform(["B" * 80 + " the question"])).nnz == 0


def test_prompt_features_shape_block_sees_the_size_of_numbers_not_their_values() -> None:
    features = PromptFeatures(n_word_features=2**8, n_char_features=2**8, n_shape_features=2**8)
    x = features.fit(["x"]).transform(["What is 47+385?", "What is 12+907?", "What is 4+3?"])
    assert x.shape == (3, 3 * 2**8) and features.n_features_out_ == 3 * 2**8
    word_char, shape = x[:, : 2**9], x[:, 2**9 :]
    assert (shape[0] != shape[1]).nnz == 0  # same shape: 2-digit + 3-digit
    assert (shape[0] != shape[2]).nnz > 0 and (word_char[0] != word_char[1]).nnz > 0
    assert PromptFeatures().fit(["x"]).transform(["What is 47+385?"]).shape == (1, 2**16)  # off by default
    assert list(features.get_feature_names_out()[-1:]) == [f"shape{2**8 - 1}"]


@pytest.mark.parametrize(
    ("params", "x", "message"),
    [
        ({"n_word_features": 0}, ["a"], "n_word_features must be a positive int"),
        ({"char_ngram_range": (5, 4)}, ["a"], "char_ngram_range must be a tuple"),
        ({"tail_chars": -1}, ["a"], "tail_chars must be a positive int or None"),
        ({"n_shape_features": -1}, ["a"], "n_shape_features must be a non-negative int"),
        ({"shape_ngram_range": (0, 3)}, ["a"], "shape_ngram_range must be a tuple"),
        ({}, "one string", "not a single string|got a single string"),
        ({}, ["ok", 3], "only strings"),
        ({}, [], "X is empty"),
    ],
)
def test_prompt_features_bad_input(params: dict[str, object], x: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PromptFeatures(**params).fit(x)  # type: ignore[arg-type]


def test_prompt_features_are_stateless_and_still_validate_without_fit() -> None:
    prompts = ["Which gas do plants take in?"]
    assert (PromptFeatures().transform(prompts) != PromptFeatures().fit(["x"]).transform(prompts)).nnz == 0
    with pytest.raises(ValueError, match="n_char_features must be a positive int"):
        PromptFeatures(n_char_features=0).transform(prompts)


# -- answer signals ------------------------------------------------------------------------------------

ARC = 'Q?\nA) red\nB) blue\nC) green\nD) Logan\nPrint only a single choice  from "A" or "B" or "C" or "D".\nAnswer:'


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("A", "A"), ("B\n", "B"), (" C) green", "C"), ("(D)", "D"), ("A.", "A"), ("D (because)", "D"),
        ("The answer is B.", "B"), ("Answer: C", "C"), ("Logan", "D"), ("blue", "B"),
        ("A hypothesis is needed", None), ("I do not have enough context.", None), ("E", None), ("", None),
    ],
)
def test_extract_choice(response: str, expected: str | None) -> None:
    options = choice_options(ARC)
    assert options is not None and set(options) == set("ABCD") and options["D"] == "Logan"
    assert extract_choice(response, options) == expected


def test_choice_options_reads_the_last_question_and_rejects_open_prompts() -> None:
    few_shot = 'A) x\nB) y\nPrint only a single choice  from "A" or "B"\nB\n\nA) cat\nB) dog\n' \
               'Print only a single choice  from "A" or "B" without explanation. Answer:'
    assert choice_options(few_shot) == {"A": "cat", "B": "dog"}
    assert choice_options("Write a python function to add numbers.") is None


def test_code_tokens_and_agreement_matrix() -> None:
    assert code_tokens("no code here") is None
    fenced = code_tokens("Here:\n```python\ndef f(a):\n    return a + 1\n```\nExplanation")
    assert fenced is not None and {"def", "f", "return", "+", "1"} <= fenced and "Explanation" not in fenced
    prompts = [ARC, "Write a function to add one."]
    responses = [
        ("A", "A", "B", "I cannot"),
        ("```python\ndef f(a):\n    return a + 1\n```", "def f(a):\n    return a + 1", "def g(b): pass", "no"),
    ]
    s = answer_signals(prompts, responses)
    assert s.agreement.shape == (2, 4, 4)
    assert np.array_equal(s.agreement, s.agreement.transpose(0, 2, 1))
    assert np.all(np.diagonal(s.agreement, axis1=1, axis2=2) == 0)
    assert s.agreement[0, 0, 1] == 1 and s.agreement[0, 0, 2] == 0 and s.agreement[0, 0, 3] == 0
    assert s.agreement[1, 0, 1] == pytest.approx(1.0) and 0 < s.agreement[1, 0, 2] < 1 and s.agreement[1, 0, 3] == 0
    assert s.extracted.tolist() == [[True, True, True, False], [True, True, True, False]]
    assert s.log_length[0, 0] == pytest.approx(np.log(2))


def test_answer_signals_bad_shapes() -> None:
    with pytest.raises(ValueError, match="responses has 1 rows"):
        answer_signals(["a", "b"], [("x",)])
    with pytest.raises(ValueError, match="same positive number"):
        answer_signals(["a", "b"], [("x",), ("x", "y")])


# -- the trained estimator ---------------------------------------------------------------------------


def test_fit_returns_self_keeps_params_and_sets_fitted_attributes(
    synthetic: tuple[QueryModelTable, QueryModelTable, TrainedQualityEstimator],
) -> None:
    train, _, _ = synthetic
    est = TrainedQualityEstimator(random_state=3, **FAST_ESTIMATOR)
    before = joblib.hash(est.get_params())
    assert est.fit(train) is est
    assert joblib.hash(est.get_params()) == before
    assert est.models_ == train.models and est.tasks_ == ("arc-challenge",)
    assert est.post_coef_.shape[:3] == (3, 2, 3)  # (models, ran or not, size buckets = min(5, 3))
    assert np.bincount(est.fold_of_).tolist() == [80, 80, 80]
    assert est.uncertainty_scale_ in DEFAULT_SCALE_GRID


def test_unfitted_estimator_raises() -> None:
    with pytest.raises(NotFittedError):
        TrainedQualityEstimator().subset_covariance(np.zeros(3, dtype=bool))


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"ante_C": 0.0}, "ante_C must be a positive"),
        ({"post_C": float("inf")}, "post_C must be a positive"),
        ({"cv": 1}, "cv must be an int >= 2"),
        ({"n_size_buckets": 0}, "n_size_buckets must be an int >= 1"),
        ({"uncertainty": "full"}, "uncertainty must be one of"),
        ({"uncertainty_scale": -1.0}, "uncertainty_scale must be"),
        ({"uncertainty_scale": "big"}, "uncertainty_scale must be"),
    ],
)
def test_bad_parameters_raise_in_fit(params: dict[str, object], message: str) -> None:
    est = TrainedQualityEstimator(**params)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=message):
        est.fit(synthetic_table(20, seed=0))


def test_bad_tables_raise() -> None:
    table = synthetic_table(20, seed=0)
    no_responses = QueryModelTable(table.sample_ids, table.prompts, table.eval_names, table.models,
                                    table.quality, table.cost, None)
    with pytest.raises(ValueError, match="no responses"):
        TrainedQualityEstimator(**FAST_ESTIMATOR).fit(no_responses)
    graded = QueryModelTable(table.sample_ids, table.prompts, table.eval_names, table.models,
                              table.quality * 0.5, table.cost, table.responses)
    with pytest.raises(ValueError, match="0/1 correctness"):
        TrainedQualityEstimator(**FAST_ESTIMATOR).fit(graded)
    with pytest.raises(ValueError, match="QueryModelTable"):
        TrainedQualityEstimator(**FAST_ESTIMATOR).fit(np.zeros((20, 3)))  # type: ignore[arg-type]
    fitted = TrainedQualityEstimator(**FAST_ESTIMATOR).fit(table)
    with pytest.raises(ValueError, match="differ from the fitted"):
        fitted.prepare(table.select_models(("m2", "m1", "m0")))


def test_estimates_have_the_right_shapes_and_are_finite(
    synthetic: tuple[QueryModelTable, QueryModelTable, TrainedQualityEstimator],
) -> None:
    _, test, est = synthetic
    source = est.estimate_source(test)
    assert isinstance(source, EstimateSource)
    assert (source.n_queries, source.n_models) == (120, 3)
    rows = np.arange(120)
    for answered in all_states(120, 3):
        e = source.estimate(rows, answered)
        assert isinstance(e, Estimates)
        assert e.q_mean.shape == e.cost.shape == (120, 3)
        assert np.all((e.q_mean > 0) & (e.q_mean < 1))
        # Measured cost for models that ran, the ex-ante regression (non-negative) otherwise.
        assert np.array_equal(e.cost[answered], np.asarray(test.cost)[answered])
        assert np.all(e.cost >= 0) and np.all(np.isfinite(e.cost))
        if e.q_var is not None:
            assert e.q_var.shape == (120, 3) and np.all(e.q_var >= 0) and np.all(np.isfinite(e.q_var))


def test_same_seed_same_estimates_and_batching_does_not_matter(
    synthetic: tuple[QueryModelTable, QueryModelTable, TrainedQualityEstimator],
) -> None:
    train, test, est = synthetic
    again = TrainedQualityEstimator(random_state=0, **FAST_ESTIMATOR).fit(train)
    a, b = est.estimate_source(test), again.estimate_source(test)
    rng = np.random.default_rng(0)
    answered = rng.random((120, 3)) < 0.5
    rows = np.arange(120)
    ea = a.estimate(rows, answered)
    eb = b.estimate(rows, answered)
    assert np.array_equal(ea.q_mean, eb.q_mean) and np.array_equal(ea.q_var, eb.q_var)
    # Row by row, through a subset, and after the cache is warm: bit-identical.
    fresh = est.estimate_source(test)
    one_by_one = np.vstack([fresh.subset(np.array([r])).estimate(np.array([0]), answered[r : r + 1]).q_mean
                            for r in rows[::-1]])[::-1]
    assert np.array_equal(one_by_one, ea.q_mean)
    assert np.array_equal(a.estimate(rows, answered).q_mean, ea.q_mean)


def test_post_hoc_estimate_is_closer_to_the_truth_than_ex_ante(
    synthetic: tuple[QueryModelTable, QueryModelTable, TrainedQualityEstimator],
) -> None:
    """Once a model answered, agreement with the other answers tells whether it is right."""
    _, test, est = synthetic
    source = est.estimate_source(test)
    q = np.asarray(test.quality)
    rows = np.arange(test.n_queries)
    ante = source.estimate(rows, np.zeros((120, 3), dtype=bool)).q_mean
    post = source.estimate(rows, np.ones((120, 3), dtype=bool)).q_mean
    for i in range(3):
        assert np.mean(np.abs(post[:, i] - q[:, i])) < np.mean(np.abs(ante[:, i] - q[:, i]))
    # Also with just one other answer to compare with.
    pair = np.zeros((120, 3), dtype=bool)
    pair[:, [0, 1]] = True
    two = source.estimate(rows, pair).q_mean
    for i in (0, 1):
        assert np.mean((two[:, i] - q[:, i]) ** 2) < np.mean((ante[:, i] - q[:, i]) ** 2)


def addition_table(n: int, *, digits: str, seed: int) -> QueryModelTable:
    """Sums of 1-3 digit numbers written with ``digits`` only; model j is right when no operand has more
    than j + 1 digits, so difficulty follows the size of the numbers, never their values."""
    rng = np.random.default_rng(seed)
    prompts, responses, quality = [], [], np.zeros((n, 3))
    for r in range(n):
        a, b = ("".join(rng.choice(list(digits), size=int(rng.integers(1, 4)))) for _ in range(2))
        size = max(len(a), len(b))
        prompts.append(f"What is {a}+{b}?")
        quality[r] = [float(size <= j + 1) for j in range(3)]
        right = str(int(a) + int(b))
        responses.append(tuple(right if ok else right + "1" for ok in quality[r]))
    return QueryModelTable(
        sample_ids=tuple(f"{digits}.{r}" for r in range(n)), prompts=tuple(prompts), eval_names=("add",) * n,
        models=("m0", "m1", "m2"), quality=quality, cost=np.tile([1.0, 2.0, 8.0], (n, 1)),
        responses=tuple(responses), answer_kinds=("final",) * n,
    )


def test_masked_digit_features_predict_difficulty_of_numbers_never_seen() -> None:
    """Training numbers use the digits 1-5, test numbers 6-9 only: word and character n-grams of the
    test prompts were never seen, their digit-masked shape was."""
    from sklearn.metrics import roc_auc_score

    train, test = addition_table(300, digits="12345", seed=0), addition_table(150, digits="6789", seed=1)
    rows, none = np.arange(test.n_queries), np.zeros((test.n_queries, 3), dtype=bool)
    auc = {}
    for shape in (0, 2**8):
        est = TrainedQualityEstimator(random_state=0, n_shape_features=shape, **FAST_ESTIMATOR).fit(train)
        ante = est.estimate_source(test).estimate(rows, none).q_mean
        auc[shape] = [roc_auc_score(test.quality[:, j], ante[:, j]) for j in (0, 1)]
    assert min(auc[2**8]) > 0.97
    # Without the block the prompt's length still tells 1 digit from more (normalised n-gram weights
    # shrink with length), but 2 digits from 3 far worse.
    assert auc[0][1] < 0.85


def test_uncertainty_is_fitted_on_held_out_predictions(
    synthetic: tuple[QueryModelTable, QueryModelTable, TrainedQualityEstimator],
) -> None:
    """Zero once everything answered; larger held-out than in-sample (fold models never saw the row)."""
    train, _, est = synthetic
    k = 3
    assert np.allclose(est._raw_covariance(np.ones(k, dtype=bool)), 0.0)
    cov = est._raw_covariance(np.zeros(k, dtype=bool))
    assert cov.shape == (k, k) and np.allclose(cov, cov.T) and np.all(np.linalg.eigvalsh(cov) >= -1e-12)
    assert np.all(np.diag(cov) > 0)
    # The same statistic from the full model on its own training rows is smaller.
    rows = np.arange(train.n_queries)
    prepared_in_sample = trained_quality.PreparedQueries(
        z_ante=np.asarray(est.ante_.decision_function(est._ante_features(train.prompts, est.train_.task))),
        task=est.train_.task, signals=est.train_.signals,
    )
    none, full = np.zeros((len(rows), k), dtype=bool), np.ones((len(rows), k), dtype=bool)
    diff = est.predict_quality(prepared_in_sample, rows, none) - est.predict_quality(prepared_in_sample, rows, full)
    assert np.trace(cov) > np.trace(np.cov(diff, rowvar=False, bias=True))


def test_correlated_and_zero_uncertainty_modes(
    synthetic: tuple[QueryModelTable, QueryModelTable, TrainedQualityEstimator],
) -> None:
    train, test, _ = synthetic
    rows = np.arange(test.n_queries)
    answered = np.zeros((test.n_queries, 3), dtype=bool)
    answered[:, 0] = True
    corr = TrainedQualityEstimator(random_state=0, uncertainty="correlated", uncertainty_scale=1.0,
                                   **FAST_ESTIMATOR).fit(train)
    e = corr.estimate_source(test).estimate(rows, answered)
    assert e.q_var is None and e.q_cov is not None and e.q_cov.shape == (120, 3, 3)
    assert np.allclose(e.q_cov, e.q_cov.transpose(0, 2, 1))
    assert np.allclose(e.q_cov[0], corr._raw_covariance(answered[0]))
    none = TrainedQualityEstimator(random_state=0, uncertainty_scale=0.0, **FAST_ESTIMATOR).fit(train)
    e0 = none.estimate_source(test).estimate(rows, answered)
    assert e0.q_var is None and e0.q_cov is None


def test_estimator_pickles_with_identical_estimates(
    synthetic: tuple[QueryModelTable, QueryModelTable, TrainedQualityEstimator],
) -> None:
    _, test, est = synthetic
    copy = pickle.loads(pickle.dumps(est))
    answered = np.ones((120, 3), dtype=bool)
    answered[:, 2] = False
    rows = np.arange(120)
    assert np.array_equal(copy.estimate_source(test).estimate(rows, answered).q_mean,
                          est.estimate_source(test).estimate(rows, answered).q_mean)


def test_source_validates_its_input(
    synthetic: tuple[QueryModelTable, QueryModelTable, TrainedQualityEstimator],
) -> None:
    _, test, est = synthetic
    source = est.estimate_source(test)
    with pytest.raises(ValueError, match="answered has shape"):
        source.estimate(np.arange(3), np.zeros((3, 2), dtype=bool))
    with pytest.raises(ValueError, match="rows must be"):
        source.subset(np.array([120]))
    with pytest.raises(ValueError, match="cost_ante has shape"):
        TrainedEstimates(est, source.prepared, np.zeros((2, 3)), source.cost_post)


# -- train/test row discipline ---------------------------------------------------------------------


def test_split_by_file_is_disjoint_and_puts_shared_ids_on_the_test_side(tmp_path: Path) -> None:
    for name in ("tiny_train.csv", "tiny_test.csv"):
        (tmp_path / name).write_text((FIXTURE / name).read_text())
    # Repeat a train row in the test file: it must count as test, never as estimator training.
    lines = (FIXTURE / "tiny_train.csv").read_text().splitlines(keepends=True)
    moved = next(line for line in lines[1:] if "mbpp.dev" in line)
    with open(tmp_path / "tiny_test.csv", "a") as fh:
        fh.write(moved)
    table = load_routerbench(tmp_path)
    train, test = split_by_file(table, tmp_path)
    assert not set(train.sample_ids) & set(test.sample_ids)
    moved_id = moved.split(",")[1]
    assert moved_id in test.sample_ids and moved_id not in train.sample_ids
    assert train.n_queries + test.n_queries == table.n_queries


def test_split_by_file_needs_both_kinds_of_file(tmp_path: Path) -> None:
    (tmp_path / "tiny_train.csv").write_text((FIXTURE / "tiny_train.csv").read_text())
    with pytest.raises(ValueError, match=r"no \*_test.csv file"):
        split_by_file(load_routerbench(tmp_path), tmp_path)
    with pytest.raises(ValueError, match="needs a folder"):
        split_by_file(load_routerbench(tmp_path), tmp_path / "tiny_train.csv")


def test_protocol_trains_estimators_only_on_rows_it_never_scores(
    tiny: tuple[QueryModelTable, QueryModelTable], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Spy on fit: the estimator must see exactly the estimator rows, none of validation or test."""
    train, test = tiny
    seen: list[tuple[str, ...]] = []
    fit = TrainedQualityEstimator.fit

    def spy(self: TrainedQualityEstimator, X: QueryModelTable, y: None = None) -> TrainedQualityEstimator:
        seen.append(X.sample_ids)
        return fit(self, X, y)

    monkeypatch.setattr(TrainedQualityEstimator, "fit", spy)
    settings = ProtocolSettings(models=3, estimators="trained", noise=None, per_segment=2, n_bootstrap=0, n_search=2)
    result = run_protocol(test, settings, estimator_table=train, estimator_params={"n_shape_features": 2**6})
    assert seen == [train.sample_ids]
    assert not set(seen[0]) & set(test.sample_ids)
    s = result["settings"]
    assert s["estimators"] == "trained" and s["noise"] is None
    assert s["n_estimator_training"] == train.n_queries
    # The estimator serves its unscaled covariance; the protocol's validation fit sets the factor.
    assert s["uncertainty_scale"] in DEFAULT_SCALE_GRID
    assert s["uncertainty_scale_fit"]["n_rows"] == s["n_validation"]
    assert "uncertainty_scale" not in s["estimator_params"]
    assert s["estimator_params"]["n_shape_features"] == 2**6
    assert s["n_validation"] + s["n_test"] == test.n_queries


def test_protocol_refuses_overlapping_estimator_rows(tiny: tuple[QueryModelTable, QueryModelTable]) -> None:
    train, test = tiny
    settings = ProtocolSettings(models=3, estimators="trained", noise=None, per_segment=2, n_bootstrap=0)
    leaky = test.take(np.arange(5))
    with pytest.raises(ValueError, match="never train on a scored query"):
        run_protocol(test, settings, estimator_table=leaky)
    with pytest.raises(ValueError, match="needs estimator_table"):
        run_protocol(test, settings)
    with pytest.raises(ValueError, match="estimator_table and estimator_params are for estimators='trained'"):
        run_protocol(test, ProtocolSettings(models=3, per_segment=2, n_bootstrap=0), estimator_table=train)
    with pytest.raises(ValueError, match="estimator_table and estimator_params are for estimators='trained'"):
        run_protocol(test, ProtocolSettings(models=3, per_segment=2, n_bootstrap=0),
                     estimator_params={"n_shape_features": 8})
    with pytest.raises(ValueError, match="Invalid parameter 'n_shape_feature'"):
        run_protocol(test, settings, estimator_table=train, estimator_params={"n_shape_feature": 8})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"estimators": "trained"}, "noise applies only to simulated"),
        ({"estimators": "simulated", "noise": None}, "need a noise level"),
        ({"estimators": "oracle"}, "estimators must be one of"),
    ],
)
def test_protocol_settings_for_estimators(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ProtocolSettings(**kwargs)  # type: ignore[arg-type]


# -- real data -----------------------------------------------------------------------------------------


@pytest.mark.data
@pytest.mark.slow
@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data/routerbench is absent")
def test_real_data_post_hoc_beats_ex_ante_and_the_uncertainty_is_calibrated_down() -> None:
    """On the real train files, tested on the test files: agreement makes the all-answered estimate much
    better than the query-only one for every model, and the unscaled covariance overstates E[max]."""
    train, test = split_by_file(load_routerbench(SHARED).select_models(MODEL_SETS[3]).sorted_by_cost(), SHARED)
    est = TrainedQualityEstimator(random_state=0).fit(train)
    source = est.estimate_source(test)
    q = np.asarray(test.quality)
    rows = np.arange(test.n_queries)
    ante = source.estimate(rows, np.zeros(q.shape, dtype=bool)).q_mean
    post = source.estimate(rows, np.ones(q.shape, dtype=bool)).q_mean
    brier_ante, brier_post = np.mean((ante - q) ** 2, axis=0), np.mean((post - q) ** 2, axis=0)
    assert np.all(brier_post < brier_ante)
    assert np.all(brier_ante < np.mean((q - q.mean(axis=0)) ** 2, axis=0) + 0.005)  # no worse than base rates
    assert est.uncertainty_scale_ < 1.0


def test_auto_scale_and_a_validation_fitted_factor_share_one_criterion(
    tiny: tuple[QueryModelTable, QueryModelTable],
) -> None:
    """"auto" is routing.fit_uncertainty_scale on the cross-fitted training queries; a factor fitted on
    validation rows of the unscaled source is then served by set_uncertainty_scale."""
    from routing import fit_uncertainty_scale

    train, test = tiny
    raw = TrainedQualityEstimator(random_state=0, uncertainty_scale=1.0, **FAST_ESTIMATOR).fit(train)
    auto = TrainedQualityEstimator(random_state=0, **FAST_ESTIMATOR).fit(train)
    assert auto.uncertainty_scale_ == raw._calibrate_scale(np.asarray(train.quality))
    fit = fit_uncertainty_scale(raw.estimate_source(test), np.asarray(test.quality))
    answered = np.zeros(raw.post_coef_.shape[0], dtype=bool)
    unscaled = raw.subset_covariance(answered)
    assert raw.set_uncertainty_scale(fit.scale) is raw
    assert np.allclose(raw.subset_covariance(answered), fit.scale * unscaled)
    with pytest.raises(ValueError, match="factor must be"):
        raw.set_uncertainty_scale(-1.0)
