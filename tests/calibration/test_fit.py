"""Calibration from a replay: grading into a table, the seeded split, and the constant-lambda curves a budget
picks its lambda from."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection

import numpy as np
import pytest

from calibration.fit import (
    GRADER_KINDS,
    build_table,
    lambda_curves,
    lambda_grid,
    split_rows,
)
from calibration.prompt_set import PromptRow
from calibration.replay import ReplayRecord
from estimators.answer_signals import answer_stats
from estimators.artifacts import lambda_for_budget
from estimators.calibrated_quality import SERVING_TASK
from estimators.stage import StageResult
from routing import CONSTANT_LAMBDA_POLICIES, BudgetUnreachableError, TableEstimates

# -- grader hooks, imported by name as a prompt file names them ------------------------------------


def raising_grader(answer: str, reference: str) -> float:
    raise RuntimeError(f"grader crashed on {answer!r}")


def half_grader(answer: str, reference: str) -> float:
    """0.5 for any non-empty answer: on the threshold, which counts as correct."""
    return 0.5 if answer else 0.4


HOOKS = __name__  # the module name pytest imported this file under


# -- build_table -------------------------------------------------------------------------------------

# Per model: GPU seconds per answer and whether it answers the arithmetic rows right.
GPU_S = {"big": 0.5, "small": 0.05}


def _rows() -> list[PromptRow]:
    rows = [
        PromptRow(id=f"n{i}", answer=str(i * 3), grader="numeric", task="math", max_tokens=32,
                  messages=(("user", f"What is {i}*3?"),))
        for i in range(8)
    ]
    rows += [
        PromptRow(id="cap", answer="Paris", grader="exact_match", task="geo", max_tokens=8,
                  prompt="The capital of France is"),
        PromptRow(id="mc", answer="B", grader="choice", task="mc", max_tokens=8, prompt="Blue?\nA) grass\nB) sky"),
        PromptRow(id="crash", answer="1", grader=f"{HOOKS}:raising_grader", task="hook", max_tokens=8, prompt="x"),
        PromptRow(id="half", answer="1", grader=f"{HOOKS}:half_grader", task="hook", max_tokens=8, prompt="y"),
        PromptRow(id="gone", answer="1", grader="numeric", task="math", max_tokens=8, prompt="z"),
    ]
    return rows


def _answer(row: PromptRow, model: str) -> str:
    if row.id.startswith("n"):
        i = int(row.id[1:])
        right = model == "big" or i % 2 == 0  # small gets the odd ones wrong
        return f"The answer is {i * 3 if right else i * 3 + 1}."
    return {"cap": "paris." if model == "big" else "Lyon", "mc": "(B)" if model == "big" else "A"}.get(row.id, "1")


def _records(rows: list[PromptRow], *, skip: Collection[tuple[str, str]] = ()) -> dict[tuple[str, str], ReplayRecord]:
    out = {}
    for row in rows:
        for model, gpu_s in GPU_S.items():
            if (row.id, model) in skip:
                continue
            lp = (-0.1, -0.2) if model == "big" else (-1.0, -3.0, -0.5)
            out[(row.id, model)] = ReplayRecord(prompt_id=row.id, model=model, fingerprint="fp", stage=StageResult(
                model=model, text=_answer(row, model), finish_reason="length" if model == "small" else "stop",
                prompt_tokens=10, completion_tokens=len(lp), token_logprobs=lp, queue_s=1.0, prefill_s=gpu_s / 5,
                decode_s=gpu_s * 4 / 5,
            ))
    return out


def test_build_table_grades_sorts_by_cost_and_drops_unanswered_prompts() -> None:
    rows = _rows()
    progress: list[tuple[str, int, int]] = []
    graded = build_table(rows, ["big", "small"], _records(rows, skip={("gone", "big")}),
                         progress=lambda *a: progress.append(a))
    table = graded.table
    assert graded.missing == ["gone"]
    assert table.sample_ids == tuple(r.id for r in rows if r.id != "gone")
    assert table.models == ("small", "big")  # cheapest first, whatever order the caller gave
    assert table.eval_names == (SERVING_TASK,) * 12
    assert graded.tasks == ("math",) * 8 + ("geo", "mc", "hook", "hook")
    q = dict(zip(table.sample_ids, table.quality.tolist(), strict=True))
    assert [q[f"n{i}"] for i in range(8)] == [[1.0, 1.0] if i % 2 == 0 else [0.0, 1.0] for i in range(8)]
    assert q["cap"] == [0.0, 1.0] and q["mc"] == [0.0, 1.0]
    assert q["half"] == [1.0, 1.0]  # a score of 0.5 counts as correct
    np.testing.assert_allclose(table.cost, np.tile([0.05, 0.5], (12, 1)))  # GPU-s, queueing excluded
    assert table.responses is not None and table.responses[8] == ("Lyon", "paris.")
    assert table.answer_stats is not None
    np.testing.assert_allclose(table.answer_stats[0, 0], answer_stats((-1.0, -3.0, -0.5), "length"))
    np.testing.assert_allclose(table.answer_stats[0, 1], answer_stats((-0.1, -0.2), "stop"))
    assert table.answer_kinds == ("final",) * 9 + ("choice", "final", "final")
    assert progress[-1] == ("grade", 24, 24) and len(progress) == 24


def test_a_failed_call_counts_as_no_answer() -> None:
    rows = _rows()
    records = _records(rows)
    records[("gone", "big")] = ReplayRecord("gone", "big", "fp", error="HTTP 500: engine died")
    graded = build_table(rows, ["big", "small"], records)
    assert graded.missing == ["gone"] and "gone" not in graded.table.sample_ids


def test_a_failing_grader_keeps_the_row_and_records_the_problem() -> None:
    rows = _rows()
    graded = build_table(rows, ["big", "small"], _records(rows))
    crash = graded.table.sample_ids.index("crash")
    np.testing.assert_array_equal(graded.table.quality[crash], [0.0, 0.0])
    assert sorted(p["model"] for p in graded.grade_problems) == ["big", "small"]
    for problem in graded.grade_problems:
        assert problem["id"] == "crash" and problem["status"] == "error"
        assert "RuntimeError: grader crashed on '1'" in problem["detail"]
    assert graded.missing == []


def test_build_table_needs_ten_fully_answered_prompts() -> None:
    rows = _rows()
    skip = {(r.id, "small") for r in rows[:4]}  # 13 prompts, 4 without small's answer: 9 left
    with pytest.raises(ValueError, match="only 9 prompts have an answer from every model; .* at least 10"):
        build_table(rows, ["big", "small"], _records(rows, skip=skip))
    skip = {(r.id, "small") for r in rows[:3]}
    assert build_table(rows, ["big", "small"], _records(rows, skip=skip)).table.n_queries == 10


def test_an_unknown_grader_fails_before_grading() -> None:
    rows = [*_rows(), PromptRow(id="bad", answer="1", grader=f"{HOOKS}:no_such_grader", task="t", max_tokens=8,
                                prompt="q")]
    with pytest.raises(ValueError, match="no_such_grader"):
        build_table(rows, ["big", "small"], _records(rows))


def test_grader_kinds_cover_the_builtin_graders() -> None:
    from calibration.graders import GRADERS

    assert set(GRADER_KINDS) == set(GRADERS)


# -- split_rows ----------------------------------------------------------------------------------------


def test_split_rows_is_seeded_disjoint_and_sized() -> None:
    train, held = split_rows(100, held_out=0.3, seed=7)
    assert len(held) == 30 and len(train) == 70
    assert np.all(np.diff(train) > 0) and np.all(np.diff(held) > 0)  # sorted
    assert set(train).isdisjoint(held) and set(train) | set(held) == set(range(100))
    again = split_rows(100, held_out=0.3, seed=7)
    np.testing.assert_array_equal(again[0], train)
    np.testing.assert_array_equal(again[1], held)
    assert not np.array_equal(split_rows(100, held_out=0.3, seed=8)[1], held)


@pytest.mark.parametrize(("n", "held_out", "sizes"), [(25, 0.1, (15, 10)), (20, 0.9, (10, 10)), (40, 0.5, (20, 20))])
def test_split_rows_keeps_ten_on_each_side(n: int, held_out: float, sizes: tuple[int, int]) -> None:
    train, held = split_rows(n, held_out=held_out, seed=0)
    assert (len(train), len(held)) == sizes


@pytest.mark.parametrize(("n", "held_out", "message"), [
    (19, 0.5, "19 prompts cannot be split"),
    (100, 0.0, "held_out must be a fraction in"),
    (100, 1.0, "held_out must be a fraction in"),
    (100, float("nan"), "held_out must be a fraction in"),
])
def test_split_rows_errors(n: int, held_out: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        split_rows(n, held_out=held_out, seed=0)


# -- lambda grid and curves ----------------------------------------------------------------------------


def test_lambda_grid() -> None:
    threshold = lambda_grid("threshold_cascade", 123.0)
    assert len(threshold) == 25 and threshold[0] == 0.0 and threshold[-1] == 1.0
    assert np.all(np.diff(threshold) > 0)
    for policy in ("routing", "optimal_cascade", "cascade_routing"):
        grid = lambda_grid(policy, 0.2, n=11)
        assert len(grid) == 11 and grid[0] == 0.0 and np.all(np.diff(grid) > 0)
        # Scaled by the mean cost: quality per GPU-second from 1e-3 to 1e2 per mean cost.
        assert grid[1] == pytest.approx(1e-3 / 0.2) and grid[-1] == pytest.approx(1e2 / 0.2)
    assert all(math.isfinite(x) for x in lambda_grid("cascade_routing", 0.0))


def _table_source(n: int = 120, seed: int = 0) -> tuple[TableEstimates, np.ndarray, np.ndarray]:
    """Three models of rising accuracy and cost; post-hoc estimates are informative but noisy."""
    rng = np.random.default_rng(seed)
    accuracy = np.array([0.4, 0.6, 0.85])
    quality = (rng.random((n, 3)) < accuracy).astype(float)
    cost = np.tile([0.1, 0.4, 1.6], (n, 1)) * rng.uniform(0.8, 1.2, size=(n, 3))
    q_ante = np.tile(accuracy, (n, 1))
    q_post = np.clip(0.8 * quality + 0.1 + rng.normal(0, 0.05, size=(n, 3)), 0.01, 0.99)
    source = TableEstimates(q_ante=q_ante, q_post=q_post, var_ante=np.full((n, 3), 0.04),
                            var_post=np.full((n, 3), 1e-4), cost_ante=cost, cost_post=cost)
    return source, quality, cost


@pytest.fixture(scope="module")
def curves() -> tuple[dict[str, list[dict[str, float]]], np.ndarray, np.ndarray]:
    source, quality, cost = _table_source()
    return lambda_curves(source, quality, cost, max_depth=3), quality, cost


def test_lambda_curves_cover_every_policy_and_lambda(
    curves: tuple[dict[str, list[dict[str, float]]], np.ndarray, np.ndarray],
) -> None:
    out, quality, cost = curves
    assert list(out) == list(CONSTANT_LAMBDA_POLICIES)
    for name, points in out.items():
        assert [p["lambda"] for p in points] == lambda_grid(name, float(cost.mean()))
        for p in points:
            assert set(p) == {"lambda", "cost", "cost_se", "quality"}
            assert p["cost_se"] >= 0.0
            assert 0.0 <= p["quality"] <= 1.0
            assert cost[:, 0].mean() - 1e-12 <= p["cost"] <= cost.sum(axis=1).mean() + 1e-12


def test_cost_falls_as_lambda_rises(curves: tuple[dict[str, list[dict[str, float]]], np.ndarray, np.ndarray]) -> None:
    """Routing and the threshold cascade are monotone by construction. Cascade routing is not, pointwise: at
    some lambdas it goes straight to the best model where a smaller lambda tried the cheap one first (it
    prices a supermodel whole), so only the trend is asserted; lambda_for_budget does not assume monotone
    curves."""
    out, quality, cost = curves
    for name in ("routing", "threshold_cascade"):
        costs = np.array([p["cost"] for p in out[name]])
        assert np.all(np.diff(costs) <= 1e-9), (name, costs)
    for name in CONSTANT_LAMBDA_POLICIES:
        costs = np.array([p["cost"] for p in out[name]])
        assert costs[0] > costs[-1] + 0.5, name
        assert np.max(costs[len(costs) // 2 :]) < costs[0], name
        assert np.corrcoef(np.arange(len(costs)), costs)[0, 1] < -0.5, name
    # The extremes: lambda 0 runs cascade routing to the best; the largest lambda stays on the cheapest.
    cr = out["cascade_routing"]
    assert cr[0]["quality"] > 0.9 and cr[0]["cost"] > cost[:, 2].mean()
    assert cr[-1]["cost"] == pytest.approx(cost[:, 0].mean())
    assert cr[-1]["quality"] == pytest.approx(quality[:, 0].mean())
    tc = out["threshold_cascade"]
    assert tc[0]["cost"] == pytest.approx(cost.sum(axis=1).mean())  # threshold 1: every model runs
    assert tc[0]["quality"] == pytest.approx(quality[:, 2].mean())  # and the last answer is returned
    assert tc[-1]["cost"] == pytest.approx(cost[:, 0].mean())  # threshold 0: the first model only
    assert tc[-1]["quality"] == pytest.approx(quality[:, 0].mean())
    ro = out["routing"]
    assert ro[0]["cost"] == pytest.approx(cost[:, 2].mean())  # one model per query: the best ex ante
    assert ro[0]["quality"] == pytest.approx(quality[:, 2].mean())


def test_max_depth_limits_the_curves() -> None:
    source, quality, cost = _table_source()
    out = lambda_curves(source, quality, cost, max_depth=1, policies=["cascade_routing", "threshold_cascade"])
    assert list(out) == ["cascade_routing", "threshold_cascade"]
    for points in out.values():
        assert max(p["cost"] for p in points) <= cost.mean(axis=0).max() + 1e-9


def test_curves_with_the_trained_estimators_source() -> None:
    """The calibration path: a TrainedQualityEstimator's estimate source on held-out rows."""
    from estimators.trained_quality import TrainedQualityEstimator

    rows = _rows()
    rows = [*rows[:8], *(PromptRow(id=f"x{i}", answer=str(i), grader="numeric", task="t", max_tokens=8,
                                   prompt=f"Say {i}.") for i in range(30))]
    records = _records(rows)
    for i in range(30):  # small says the number right on every third prompt
        rec = records[(f"x{i}", "small")]
        assert rec.stage is not None
        stage = dataclasses.replace(rec.stage, text=str(i if i % 3 == 0 else i + 1))
        records[(f"x{i}", "small")] = dataclasses.replace(rec, stage=stage)
    table = build_table(rows, ["small", "big"], records).table
    est = TrainedQualityEstimator(cv=3, n_text_features=2**8, random_state=0).fit(table)
    source = est.estimate_source(table)
    out = lambda_curves(source, table.quality, table.cost, max_depth=2, policies=["cascade_routing"])
    costs = [p["cost"] for p in out["cascade_routing"]]
    assert costs[0] > costs[-1] and costs[-1] == pytest.approx(table.cost[:, 0].mean())
    assert out["cascade_routing"][0]["quality"] >= out["cascade_routing"][-1]["quality"]


# -- lambda_for_budget ---------------------------------------------------------------------------------

CURVE = [
    {"lambda": 0.0, "cost": 2.0, "quality": 0.9},
    {"lambda": 1.0, "cost": 1.0, "quality": 0.8},
    {"lambda": 2.0, "cost": 0.7, "quality": 0.8},
    {"lambda": 3.0, "cost": 0.5, "quality": 0.6},
    {"lambda": 4.0, "cost": 0.5, "quality": 0.55},
]


@pytest.mark.parametrize(("budget", "expected"), [(5.0, 0.0), (2.0, 0.0), (1.5, 2.0), (0.8, 2.0), (0.6, 3.0),
                                                  (0.5, 3.0)])
def test_lambda_for_budget_takes_the_best_quality_within_budget(budget: float, expected: float) -> None:
    """Ties in quality go to the cheaper point (lambda 2 over lambda 1 at quality 0.8)."""
    assert lambda_for_budget(CURVE, budget)["lambda"] == expected


def test_lambda_for_budget_below_the_cheapest_is_a_clear_error() -> None:
    with pytest.raises(BudgetUnreachableError,
                       match=r"budget 0\.4 GPU-s per query is below the cheapest setting \(0\.5 GPU-s") as err:
        lambda_for_budget(CURVE, 0.4)
    assert err.value.cheapest_cost == 0.5  # what `cascade calibrate` tells the user to ask for instead
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="the budget must be a positive number"):
            lambda_for_budget(CURVE, bad)
