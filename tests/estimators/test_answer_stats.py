"""Answer signals of calibration tables: final-answer agreement, the engine's answer statistics, and the
QueryModelTable fields that carry them (``answer_stats``, ``answer_kinds``)."""

from __future__ import annotations

import numpy as np
import pytest

from estimators.answer_signals import answer_signals, answer_stats, final_answer
from estimators.table import ANSWER_KINDS, ANSWER_STATS, QueryModelTable

# -- final answers ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("The answer is 42.", "42", True),
        ("The answer is 42.", "\\boxed{42}", True),
        ("So 6*7 = \\boxed{42}", "#### 42", True),
        ("42.0", "42", True),
        ("1,234 apples", "1234", True),
        ("\\frac{1}{2}", "0.5", True),
        ("The answer is 42.", "41", False),
        ("The answer is 42.", "The answer is -42.", False),
        ("Paris", "  paris. ", True),
        ("Paris", "Lyon", False),
    ],
)
def test_final_answers_compare_numbers_by_value(a: str, b: str, same: bool) -> None:
    fa, fb = final_answer(a), final_answer(b)
    assert fa is not None and fb is not None
    assert (fa == fb) is same


@pytest.mark.parametrize("empty", ["", "   \n", "..."])
def test_empty_answer_is_not_extracted(empty: str) -> None:
    assert final_answer(empty) is None


def test_final_kind_agreement_and_extraction() -> None:
    prompts = ["What is 6*7?", "Capital of France?"]
    responses = [["The answer is 42.", "\\boxed{42}", "41", ""], ["Paris", "paris", "", "Lyon"]]
    sig = answer_signals(prompts, responses, kinds=["final", "final"])
    assert sig.extracted.tolist() == [[True, True, True, False], [True, True, False, True]]
    expected0 = np.zeros((4, 4))
    expected0[0, 1] = expected0[1, 0] = 1.0  # 42 == 42; 41 differs; the empty answer agrees with nothing
    np.testing.assert_array_equal(sig.agreement[0], expected0)
    expected1 = np.zeros((4, 4))
    expected1[0, 1] = expected1[1, 0] = 1.0
    np.testing.assert_array_equal(sig.agreement[1], expected1)
    # Two empty answers do not "agree" either.
    both_empty = answer_signals(["q"], [["", ""]], kinds=["final"])
    assert not both_empty.extracted.any() and not both_empty.agreement.any()


def test_kinds_override_prompt_detection() -> None:
    """Without kinds, a non-choice prompt is compared as code (no function, nothing extracted)."""
    responses = [["42", "42"]]
    assert not answer_signals(["What is 6*7?"], responses).agreement.any()
    assert answer_signals(["What is 6*7?"], responses, kinds=["final"]).agreement[0, 0, 1] == 1.0


def test_choice_kind_on_a_routerbench_prompt_matches_the_default() -> None:
    prompt = 'Q?\nA) red\nB) blue\nPrint only a single choice from "A" or "B" without explanation.\nAnswer:'
    responses = [["A", "(A)", "B"]]
    default = answer_signals([prompt], responses)
    explicit = answer_signals([prompt], responses, kinds=["choice"])
    np.testing.assert_array_equal(default.agreement, explicit.agreement)
    assert explicit.agreement[0, 0, 1] == 1.0 and explicit.agreement[0, 0, 2] == 0.0


def test_choice_kind_compares_letters_of_any_multiple_choice_prompt() -> None:
    """``calibration.GRADER_KINDS`` maps the ``choice`` grader to kind "choice" so answers are compared as the
    grader reads them; the grader needs no option list, so neither should the agreement."""
    sig = answer_signals(["Which is blue?\nA) sky\nB) grass"], [["A", "(A)", "B"]], kinds=["choice"])
    assert sig.extracted[0].tolist() == [True, True, True]
    assert sig.agreement[0, 0, 1] == 1.0 and sig.agreement[0, 0, 2] == 0.0


def test_kinds_length_is_checked() -> None:
    with pytest.raises(ValueError, match="kinds has 1 entries, prompts has 2"):
        answer_signals(["a", "b"], [["x"], ["y"]], kinds=["final"])


# -- stats pass-through ----------------------------------------------------------------------------


def test_stats_pass_through_and_default_to_no_columns() -> None:
    stats = np.arange(2 * 3 * 4, dtype=float).reshape(2, 3, 4)
    sig = answer_signals(["a", "b"], [["1", "2", "3"], ["4", "5", "6"]], kinds=["final"] * 2, stats=stats)
    np.testing.assert_array_equal(sig.stats, stats)
    np.testing.assert_array_equal(sig.take(np.array([1])).stats, stats[[1]])
    assert answer_signals(["a"], [["1", "2"]]).stats.shape == (1, 2, 0)


@pytest.mark.parametrize("shape", [(2, 3), (2, 2, 4), (3, 3, 4), (2, 3, 4, 1)])
def test_stats_shape_is_checked(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="stats has shape"):
        answer_signals(["a", "b"], [["1", "2", "3"], ["4", "5", "6"]], stats=np.zeros(shape))


# -- answer_stats --------------------------------------------------------------------------------


def test_answer_stats_columns() -> None:
    lp = [-0.1, -0.2, -0.3, -0.4, -5.0]
    out = answer_stats(lp, "stop")
    assert out.shape == (len(ANSWER_STATS),)
    np.testing.assert_allclose(out, [np.mean(lp), -5.0, np.quantile(lp, 0.1), 0.0])
    assert answer_stats(lp, "length")[3] == 1.0
    assert answer_stats(lp, None)[3] == 0.0


def test_answer_stats_floor_and_empty_answer() -> None:
    out = answer_stats([-1.0, -np.inf, -1e4], "stop")
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out[:3], [(-1.0 - 30.0 - 30.0) / 3, -30.0, np.quantile([-1.0, -30.0, -30.0], 0.1)])
    np.testing.assert_array_equal(answer_stats([], "length"), [-30.0, -30.0, -30.0, 1.0])
    np.testing.assert_array_equal(answer_stats((), "stop"), [-30.0, -30.0, -30.0, 0.0])


# -- QueryModelTable fields --------------------------------------------------------------------------


def _table(n: int = 4, **extra: object) -> QueryModelTable:
    return QueryModelTable(
        sample_ids=tuple(f"s{i}" for i in range(n)), prompts=tuple(f"p{i}" for i in range(n)),
        eval_names=("t",) * n, models=("a", "b", "c"),
        quality=np.zeros((n, 3)), cost=np.tile([3.0, 1.0, 2.0], (n, 1)),
        responses=tuple((f"a{i}", f"b{i}", f"c{i}") for i in range(n)), **extra,  # type: ignore[arg-type]
    )


def _stats(n: int = 4) -> np.ndarray:
    return np.arange(n * 3 * 4, dtype=float).reshape(n, 3, 4)


def test_table_fields_default_to_none_and_are_frozen_copies() -> None:
    plain = _table()
    assert plain.answer_stats is None and plain.answer_kinds is None
    source = _stats()
    table = _table(answer_stats=source, answer_kinds=["final", "choice", "code", "final"])
    assert table.answer_kinds == ("final", "choice", "code", "final")
    source[0, 0, 0] = 99.0
    assert table.answer_stats is not None and table.answer_stats[0, 0, 0] == 0.0  # copied
    with pytest.raises(ValueError):
        table.answer_stats[0, 0, 0] = 1.0  # read-only


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"answer_stats": np.zeros((4, 3, 3))}, r"answer_stats has shape \(4, 3, 3\), expected \(4, 3, 4\)"),
        ({"answer_stats": np.zeros((4, 2, 4))}, "answer_stats has shape"),
        ({"answer_stats": np.full((4, 3, 4), np.nan)}, "answer_stats contains non-finite values"),
        ({"answer_stats": np.full((4, 3, 4), -np.inf)}, "answer_stats contains non-finite values"),
        ({"answer_kinds": ("final",) * 3}, "answer_kinds must be 4 values"),
        ({"answer_kinds": ("final", "final", "final", "essay")}, r"\['essay'\]"),
    ],
)
def test_table_fields_are_validated(extra: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _table(**extra)


def test_answer_kinds_are_the_documented_set() -> None:
    assert set(ANSWER_KINDS) == {"choice", "code", "final"}
    for kind in ANSWER_KINDS:
        assert _table(answer_kinds=(kind,) * 4).answer_kinds == (kind,) * 4


def test_take_select_models_and_sorted_by_cost_carry_the_fields() -> None:
    stats = _stats()
    kinds = ("final", "choice", "code", "final")
    table = _table(answer_stats=stats, answer_kinds=kinds)

    taken = table.take([3, 1])
    assert taken.answer_kinds == ("final", "choice")
    np.testing.assert_array_equal(taken.answer_stats, stats[[3, 1]])

    picked = table.select_models(["c", "a"])
    assert picked.answer_kinds == kinds  # per query: unchanged by a column selection
    np.testing.assert_array_equal(picked.answer_stats, stats[:, [2, 0]])

    ordered = table.sorted_by_cost()
    assert ordered.models == ("b", "c", "a")
    np.testing.assert_array_equal(ordered.answer_stats, stats[:, [1, 2, 0]])
    assert ordered.responses is not None and ordered.responses[0] == ("b0", "c0", "a0")
    assert ordered.answer_kinds == kinds

    bare = _table().take([0]).select_models(["a"])
    assert bare.answer_stats is None and bare.answer_kinds is None
