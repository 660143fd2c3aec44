"""Tests for evaluation.routerbench: loading RouterBench wide CSVs (fixture and, when present, real data)."""

from __future__ import annotations

import ast
import csv
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest

from evaluation.routerbench import (
    MODEL_SETS,
    ROUTERBENCH_MODELS,
    QueryModelTable,
    load_routerbench,
)

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "routerbench_tiny"
# The shared data folder sits beside the repository root; a fresh clone elsewhere lacks it.
REAL_DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "routerbench"
real_data = pytest.mark.skipif(not REAL_DATA.is_dir(), reason=f"no real RouterBench data at {REAL_DATA}")

TWIN_ID = "arc-challenge.val.136"  # split over two rows in the fixture, like the real data's ARC twins
LONE_ID = "winogrande.dev.949"  # lacks the mistral-7b score, with no twin


def _rows(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        return header, list(reader)


def _write(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def tiny() -> QueryModelTable:
    return load_routerbench(FIXTURE)


def test_model_constants_match_fixture_header():
    header, _ = _rows(FIXTURE / "tiny_train.csv")
    assert tuple(header[4:15]) == ROUTERBENCH_MODELS
    assert MODEL_SETS[11] == ROUTERBENCH_MODELS
    for models in MODEL_SETS.values():
        assert set(models) <= set(ROUTERBENCH_MODELS)
        assert len(set(models)) == len(models)
    assert [len(MODEL_SETS[k]) for k in (3, 5, 11)] == [3, 5, 11]


def test_load_fixture_directory(tiny):
    """120 rows, 119 sample ids; the lone incomplete row goes, the twin pair becomes one row."""
    assert tiny.models == ROUTERBENCH_MODELS
    assert tiny.n_queries == 118
    assert tiny.n_models == 11
    assert tiny.quality.shape == tiny.cost.shape == (118, 11)
    assert len(set(tiny.sample_ids)) == 118
    assert LONE_ID not in tiny.sample_ids
    assert set(tiny.eval_names) == {"arc-challenge", "mbpp", "winogrande"}
    assert set(np.unique(tiny.quality)) <= {0.0, 1.0}
    assert np.all(tiny.cost > 0)
    assert tiny.responses is not None and len(tiny.responses) == 118
    assert all(len(r) == 11 for r in tiny.responses)


def test_rows_follow_sorted_filename_order(tiny):
    _, test_rows = _rows(FIXTURE / "tiny_test.csv")
    _, train_rows = _rows(FIXTURE / "tiny_train.csv")
    # tiny_test.csv sorts before tiny_train.csv, so its first row comes first.
    assert tiny.sample_ids[0] == test_rows[0][1]
    assert tiny.sample_ids[-1] == train_rows[-1][1]


def test_twin_rows_are_merged_when_responses_match(tiny):
    """The twin's only score (gpt-3.5) fills the gap; prompt and costs come from the complete-most row."""
    _, train_rows = _rows(FIXTURE / "tiny_train.csv")
    _, test_rows = _rows(FIXTURE / "tiny_test.csv")
    (base,) = [r for r in train_rows if r[1] == TWIN_ID]
    (twin,) = [r for r in test_rows if r[1] == TWIN_ID]
    i = tiny.sample_ids.index(TWIN_ID)
    gpt35 = ROUTERBENCH_MODELS.index("gpt-3.5-turbo-1106")
    assert base[4 + gpt35] == ""
    assert tiny.quality[i, gpt35] == float(twin[4 + gpt35])
    assert tiny.cost[i, gpt35] == pytest.approx(float(twin[26]) / 2)  # the twin's costs are doubled
    assert tiny.prompts[i] == ast.literal_eval(base[2])[0]  # one copy of the prompt, not the twin's two


def test_twin_score_not_taken_when_responses_differ(tmp_path):
    header, rows = _rows(FIXTURE / "tiny_train.csv")
    _, test_rows = _rows(FIXTURE / "tiny_test.csv")
    twin = next(r for r in test_rows if r[1] == TWIN_ID)
    twin[header.index("gpt-3.5-turbo-1106|model_response")] = "['something else']"
    _write(tmp_path / "a.csv", header, rows)
    _write(tmp_path / "b.csv", header, [twin])
    table = load_routerbench(tmp_path)
    assert TWIN_ID not in table.sample_ids
    assert table.n_queries == 78  # 80 train rows, less the lone and the (now unrepaired) twin base


def test_prompt_list_is_joined_and_raw_text_kept(tiny):
    assert not any(p.startswith("['") for p in tiny.prompts)
    raw = [p for p in tiny.prompts if "pairs(xs)" in p]
    assert raw == ['Write a function "pairs(xs)",\nreturning adjacent pairs: [1, 2, 3] -> [(1, 2), (2, 3)].']
    assert all(not r.startswith("[") for row in tiny.responses for r in row)


def test_load_single_csv_file():
    table = load_routerbench(FIXTURE / "tiny_train.csv")
    assert table.n_queries == 78  # 80 rows less the lone row and the twin base (its twin is elsewhere)
    assert table.models == ROUTERBENCH_MODELS


def test_models_argument_selects_and_orders_columns(tiny):
    table = load_routerbench(FIXTURE, models=MODEL_SETS[3])
    assert table.models == MODEL_SETS[3]
    assert table.n_queries == tiny.n_queries + 1  # the lone row lacks a score of a model not in the set
    rows = [table.sample_ids.index(s) for s in tiny.sample_ids]
    np.testing.assert_array_equal(table.take(rows).quality, tiny.select_models(MODEL_SETS[3]).quality)
    np.testing.assert_array_equal(table.take(rows).cost, tiny.select_models(MODEL_SETS[3]).cost)


def test_rows_dropped_only_for_selected_models():
    """The lone row lacks only mistral-7b's score, so it stays when that model is not selected."""
    assert LONE_ID in load_routerbench(FIXTURE, models=["claude-v2"]).sample_ids
    assert LONE_ID not in load_routerbench(FIXTURE, models=["mistralai/mistral-7b-chat"]).sample_ids


def test_select_models_reorders_columns(tiny):
    names = ("gpt-4-1106-preview", "WizardLM/WizardLM-13B-V1.2")
    sub = tiny.select_models(names)
    assert sub.models == names
    j = [ROUTERBENCH_MODELS.index(m) for m in names]
    np.testing.assert_array_equal(sub.quality, tiny.quality[:, j])
    np.testing.assert_array_equal(sub.cost, tiny.cost[:, j])
    assert sub.responses[5] == tuple(tiny.responses[5][k] for k in j)
    assert sub.sample_ids == tiny.sample_ids


def test_select_models_unknown_name(tiny):
    with pytest.raises(ValueError, match=r"unknown model\(s\) \['gpt-5'\].*known models: \['WizardLM"):
        tiny.select_models(["gpt-4-1106-preview", "gpt-5"])


def test_sorted_by_cost_orders_models_by_mean_cost(tiny):
    by_cost = tiny.sorted_by_cost()
    assert set(by_cost.models) == set(tiny.models)
    assert np.all(np.diff(by_cost.cost.mean(axis=0)) >= 0)
    assert by_cost.models[0] == "mistralai/mistral-7b-chat"
    assert by_cost.models[-1] == "gpt-4-1106-preview"


def test_take_restricts_rows(tiny):
    part = tiny.take([3, 0])
    assert part.sample_ids == (tiny.sample_ids[3], tiny.sample_ids[0])
    np.testing.assert_array_equal(part.quality, tiny.quality[[3, 0]])


def test_table_arrays_are_read_only(tiny):
    with pytest.raises(ValueError, match="read-only"):
        tiny.quality[0, 0] = 0.5


def test_table_pickle_round_trip(tiny):
    back = pickle.loads(pickle.dumps(tiny))
    assert back.sample_ids == tiny.sample_ids
    np.testing.assert_array_equal(back.cost, tiny.cost)


def test_table_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"quality has shape \(2, 1\), expected \(1, 1\)"):
        QueryModelTable(("a",), ("p",), ("e",), ("m",), np.zeros((2, 1)), np.zeros((1, 1)))


def test_unknown_model_argument():
    with pytest.raises(ValueError, match=r"unknown model\(s\) \['gpt-5'\] in .*tiny_test\.csv; known models"):
        load_routerbench(FIXTURE, models=["gpt-4-1106-preview", "gpt-5"])


def test_duplicate_model_argument():
    with pytest.raises(ValueError, match="models must be unique"):
        load_routerbench(FIXTURE, models=["claude-v2", "claude-v2"])


def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="RouterBench data not found"):
        load_routerbench(tmp_path / "nope")


def test_directory_without_csv(tmp_path):
    with pytest.raises(ValueError, match="contains no .csv files"):
        load_routerbench(tmp_path)


def test_unsupported_suffix(tmp_path):
    path = tmp_path / "data.json"
    path.write_text("{}")
    with pytest.raises(ValueError, match="expected a directory, a .csv file or a .pkl file"):
        load_routerbench(path)


def test_non_numeric_score_names_file_row_and_column(tmp_path):
    header, rows = _rows(FIXTURE / "tiny_train.csv")
    rows[2][header.index("claude-v2")] = "yes"
    path = _write(tmp_path / "bad.csv", header, rows)
    with pytest.raises(ValueError, match=r"bad\.csv: row 3 \(line 4\), column 'claude-v2': score 'yes'"):
        load_routerbench(path)


def test_score_outside_unit_interval(tmp_path):
    header, rows = _rows(FIXTURE / "tiny_train.csv")
    rows[0][header.index("claude-v1")] = "2.0"
    path = _write(tmp_path / "bad.csv", header, rows)
    with pytest.raises(ValueError, match=r"row 1 \(line 2\), column 'claude-v1': score 2.0 is outside \[0,"):
        load_routerbench(path)


def test_negative_cost_names_file_row_and_column(tmp_path):
    header, rows = _rows(FIXTURE / "tiny_train.csv")
    rows[4][header.index("gpt-4-1106-preview|total_cost")] = "-0.001"
    path = _write(tmp_path / "bad.csv", header, rows)
    with pytest.raises(
        ValueError, match=r"bad\.csv: row 5 \(line 6\), column 'gpt-4-1106-preview\|total_cost': cost -0.001"
    ):
        load_routerbench(path)


@pytest.mark.parametrize("value", ["inf", "1e999"])
def test_non_finite_cost(tmp_path, value):
    header, rows = _rows(FIXTURE / "tiny_train.csv")
    rows[1][header.index("claude-v1|total_cost")] = value
    path = _write(tmp_path / "bad.csv", header, rows)
    with pytest.raises(ValueError, match=r"row 2 \(line 3\), column 'claude-v1\|total_cost'.*must be finite"):
        load_routerbench(path)


def test_missing_cost_for_scored_model(tmp_path):
    header, rows = _rows(FIXTURE / "tiny_train.csv")
    rows[1][header.index("claude-v1|total_cost")] = ""
    path = _write(tmp_path / "bad.csv", header, rows)
    with pytest.raises(ValueError, match=r"row 2 \(line 3\), column 'claude-v1\|total_cost': cost is miss"):
        load_routerbench(path)


def test_line_number_counts_multiline_fields(tmp_path):
    """A prompt spanning two lines shifts the line number of later rows, not their row number."""
    header, rows = _rows(FIXTURE / "tiny_train.csv")
    rows[0][header.index("prompt")] = "first line,\nsecond line"
    rows[1][header.index("claude-v2")] = "x"
    path = _write(tmp_path / "bad.csv", header, rows)
    with pytest.raises(ValueError, match=r"row 2 \(line 4\), column 'claude-v2'"):
        load_routerbench(path)


def test_row_with_wrong_field_count(tmp_path):
    header, rows = _rows(FIXTURE / "tiny_train.csv")
    rows[3] = rows[3][:-2]
    path = _write(tmp_path / "bad.csv", header, rows)
    with pytest.raises(ValueError, match=r"bad\.csv: row 4 \(line 5\): has 36 fields, the header has 38"):
        load_routerbench(path)


def test_missing_required_column(tmp_path):
    header, rows = _rows(FIXTURE / "tiny_train.csv")
    j = header.index("eval_name")
    path = _write(tmp_path / "bad.csv", header[:j] + header[j + 1 :], [r[:j] + r[j + 1 :] for r in rows])
    with pytest.raises(ValueError, match=r"bad\.csv: missing column\(s\) \['eval_name'\]"):
        load_routerbench(path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("")
    with pytest.raises(ValueError, match=r"empty\.csv: empty file"):
        load_routerbench(path)


def test_no_complete_row(tmp_path):
    header, rows = _rows(FIXTURE / "tiny_train.csv")
    for r in rows:
        r[header.index("claude-v2")] = ""
    path = _write(tmp_path / "holes.csv", header, rows)
    with pytest.raises(ValueError, match="no row has a score for every selected model"):
        load_routerbench(path)


def test_duplicate_sample_id_keeps_first(tmp_path):
    header, rows = _rows(FIXTURE / "tiny_test.csv")
    copy = list(rows[5])
    copy[header.index("claude-v2")] = "0.0" if rows[5][header.index("claude-v2")] == "1.0" else "1.0"
    path = _write(tmp_path / "dup.csv", header, [*rows[:10], copy])
    table = load_routerbench(path)
    i = table.sample_ids.index(rows[5][1])
    assert table.n_queries == 10
    j = header.index("claude-v2")
    assert table.quality[i, ROUTERBENCH_MODELS.index("claude-v2")] == float(rows[5][j])


def test_pickle_without_pandas_raises_import_error(tmp_path, monkeypatch):
    path = tmp_path / "routerbench_0shot.pkl"
    path.write_bytes(b"not read")
    monkeypatch.setitem(sys.modules, "pandas", None)  # makes `import pandas` raise ImportError
    with pytest.raises(ImportError, match="needs pandas"):
        load_routerbench(path)


def test_pickle_matches_csv(tmp_path, tiny):
    """The original RouterBench pickle layout: a DataFrame with list-valued prompts and responses."""
    pd = pytest.importorskip("pandas")
    frames = [pd.read_csv(FIXTURE / name, index_col=0, keep_default_na=False) for name in
              ("tiny_test.csv", "tiny_train.csv")]
    df = pd.concat(frames)
    for col in ["prompt", *(m + "|model_response" for m in ROUTERBENCH_MODELS)]:
        df[col] = [ast.literal_eval(v) if v.startswith("[") else v for v in df[col]]
    for m in ROUTERBENCH_MODELS:
        df[m] = pd.to_numeric(df[m].replace("", np.nan))
    path = tmp_path / "routerbench_0shot.pkl"
    df.to_pickle(path)
    table = load_routerbench(path)
    assert table.sample_ids == tiny.sample_ids
    assert table.prompts == tiny.prompts
    assert table.responses == tiny.responses
    np.testing.assert_array_equal(table.quality, tiny.quality)
    np.testing.assert_array_equal(table.cost, tiny.cost)


@pytest.mark.data
@real_data
@pytest.mark.parametrize("models", [None, MODEL_SETS[3], MODEL_SETS[5]], ids=["11", "3", "5"])
def test_real_data_row_count(models):
    """3,178 rows; the 14 split ARC twins merge into one row each, whichever models are selected."""
    table = load_routerbench(REAL_DATA, models=models)
    assert table.n_queries == 3164
    assert table.models == (ROUTERBENCH_MODELS if models is None else models)


@pytest.mark.data
@real_data
def test_real_data_statistics():
    table = load_routerbench(REAL_DATA)
    assert not np.isnan(table.quality).any()
    assert table.models == ROUTERBENCH_MODELS
    assert table.n_queries == 3164
    accuracy = table.quality.mean(axis=0)
    assert accuracy.min() == pytest.approx(0.55, abs=0.01)  # claude-v2 (0.551), below WizardLM-13B (0.568)
    assert accuracy.max() == pytest.approx(0.88, abs=0.005)  # gpt-4-1106-preview
    assert ROUTERBENCH_MODELS[int(np.argmax(accuracy))] == "gpt-4-1106-preview"
    assert table.quality.max(axis=1).mean() == pytest.approx(0.975, abs=0.001)  # the oracle
    mean_cost = table.cost.mean(axis=0)
    assert table.sorted_by_cost().models[0] == "mistralai/mistral-7b-chat"
    assert mean_cost.min() == pytest.approx(8.1e-5, rel=0.05)
    assert mean_cost.max() == pytest.approx(5.0e-3, rel=0.05)
    assert sorted(set(table.eval_names)) == ["arc-challenge", "mbpp", "winogrande"]
    assert sum(e == "arc-challenge" for e in table.eval_names) == 1484 - 14
