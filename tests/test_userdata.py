"""Dataset `user`: the sample loads, every bad file fails naming file/column/row, and any valid
CSV or NPZ round-trips."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.config import ConfigError, parse_run_config
from common.userdata import UserDataError, load_schema, load_user_pool

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "deploy" / "sample-data" / "site-a.csv"
SAMPLE_SCHEMA = ROOT / "deploy" / "sample-data" / "site-a.schema.json"

SCHEMA: dict[str, Any] = {
    "inputs": ["a", "b"],
    "tasks": [
        {"name": "diagnosis", "kind": "multiclass", "column": "dx", "num_classes": 3},
        {"name": "flag", "kind": "binary"},
        {"name": "los", "kind": "regression", "offset": 5, "scale": 2},
    ],
}
GOOD_ROWS = ["a,b,dx,flag,los", "1.0,2.0,0,1,3.5", "0.5,-1,2,0,7", "3,4,1,1,1.25"]


def write(tmp: Path, lines: list[str] | str, schema: Any = None, name: str = "site.csv") -> tuple:
    data, schema_path = tmp / name, tmp / "site.schema.json"
    data.write_text(lines if isinstance(lines, str) else "\n".join(lines) + "\n")
    text = schema if isinstance(schema, str) else json.dumps(SCHEMA if schema is None else schema)
    schema_path.write_text(text)
    return data, schema_path


def fails(data: Path, schema: Path, *needles: str) -> str:
    with pytest.raises(UserDataError) as err:
        load_user_pool(data, schema)
    message = str(err.value)
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    return message


def test_the_sample_loads_with_its_tasks_and_kinds() -> None:
    pool = load_user_pool(SAMPLE, SAMPLE_SCHEMA)
    assert pool.x.shape == (60, 4) and pool.x.dtype == np.float32
    assert pool.input_shape == (4,)
    assert pool.task_names == ["diagnosis", "readmitted", "length_of_stay"]
    assert [t.kind for t in pool.tasks] == ["multiclass", "binary", "regression"]
    assert pool.tasks[0].num_classes == 3
    assert set(np.unique(pool.y["diagnosis"])) == {0, 1, 2}
    assert set(np.unique(pool.y["readmitted"])) == {0, 1}
    assert pool.y["length_of_stay"].dtype == np.float32 and pool.y["length_of_stay"].min() > 0
    assert np.array_equal(pool.partition_by, pool.y["diagnosis"])  # partition_by = "dx"
    # Inputs go through the schema's fixed offsets/scales: about unit scale, no huge values.
    assert np.abs(pool.x).max() < 5


def test_sample_runs_through_the_run_config_and_a_single_node_partition() -> None:
    from common.datasets import dataset_tasks, input_shape
    from common.federation import load_client_data

    cfg = parse_run_config(
        {"dataset": "user", "data-file": str(SAMPLE), "schema-file": str(SAMPLE_SCHEMA)}
    )
    data = load_client_data(cfg, 0, 1)  # one node, its whole file
    assert len(data.train) + len(data.val) + len(data.test) == 60
    assert data.task_names == ["diagnosis", "readmitted", "length_of_stay"]
    assert input_shape(cfg) == (4,)
    assert dataset_tasks(cfg) == data.task_names


def test_server_learns_shape_and_tasks_from_the_schema_alone() -> None:
    from common.datasets import dataset_tasks, input_shape

    cfg = parse_run_config(
        {
            "dataset": "user",
            "data-file": "/nonexistent/private.csv",
            "schema-file": str(SAMPLE_SCHEMA),
        }
    )
    assert input_shape(cfg) == (4,)
    assert dataset_tasks(cfg) == ["diagnosis", "readmitted", "length_of_stay"]


def test_missing_paths_in_the_run_config_name_the_key() -> None:
    from common.datasets import build_pool

    with pytest.raises(ConfigError, match="'data-file'"):
        build_pool(parse_run_config({"dataset": "user", "schema-file": str(SAMPLE_SCHEMA)}), 1)
    with pytest.raises(ConfigError, match="'schema-file'"):
        from common.datasets import input_shape

        input_shape(parse_run_config({"dataset": "user"}))


def test_missing_data_file(tmp_path: Path) -> None:
    _, schema = write(tmp_path, GOOD_ROWS)
    fails(tmp_path / "nope.csv", schema, "nope.csv", "does not exist", "data-file")


def test_missing_schema_file(tmp_path: Path) -> None:
    data, _ = write(tmp_path, GOOD_ROWS)
    fails(data, tmp_path / "nope.json", "nope.json", "does not exist", "schema-file")


def test_missing_column(tmp_path: Path) -> None:
    data, schema = write(tmp_path, ["a,b,flag,los", "1,2,1,3"])
    fails(data, schema, "site.csv", "column 'dx'", "task 'diagnosis'", "is missing", "'flag'")


def test_missing_input_column(tmp_path: Path) -> None:
    data, schema = write(tmp_path, ["a,dx,flag,los", "1,0,1,3"])
    fails(data, schema, "site.csv", "column 'b'", "input", "is missing")


def test_label_out_of_range(tmp_path: Path) -> None:
    data, schema = write(tmp_path, [*GOOD_ROWS[:2], "0.5,-1,3,0,7"])
    fails(data, schema, "site.csv", "column 'dx'", "row 2 (line 3)", "out of range", "3", "0..2")


def test_negative_and_fractional_labels(tmp_path: Path) -> None:
    data, schema = write(tmp_path, [*GOOD_ROWS[:2], "0.5,-1,-1,0,7"])
    fails(data, schema, "column 'dx'", "row 2", "-1", "0..2")
    data, schema = write(tmp_path, [*GOOD_ROWS[:2], "0.5,-1,1.5,0,7"])
    fails(data, schema, "column 'dx'", "row 2", "not an integer", "1.5")


def test_binary_label_must_be_0_or_1(tmp_path: Path) -> None:
    data, schema = write(tmp_path, [*GOOD_ROWS, "1,1,1,2,1"])
    fails(data, schema, "site.csv", "column 'flag'", "row 4 (line 5)", "2", "0 or 1")


@pytest.mark.parametrize("cell", ["", "NA", "nan", "NaN", "null"])
def test_missing_value(tmp_path: Path, cell: str) -> None:
    data, schema = write(tmp_path, [*GOOD_ROWS[:3], f"{cell},4,1,1,1.25"])
    fails(data, schema, "site.csv", "column 'a'", "row 3 (line 4)", "missing value")


def test_missing_value_in_a_target(tmp_path: Path) -> None:
    data, schema = write(tmp_path, [*GOOD_ROWS[:2], "0.5,-1,2,0,"])
    fails(data, schema, "site.csv", "column 'los'", "task 'los'", "row 2", "missing value")


def test_non_numeric_value(tmp_path: Path) -> None:
    data, schema = write(tmp_path, [*GOOD_ROWS, "1,abc,1,1,1"])
    fails(data, schema, "site.csv", "column 'b'", "row 4 (line 5)", "non-numeric", "'abc'")


def test_infinite_value(tmp_path: Path) -> None:
    data, schema = write(tmp_path, [*GOOD_ROWS, "inf,1,1,1,1"])
    fails(data, schema, "column 'a'", "row 4", "non-finite")


def test_empty_partition(tmp_path: Path) -> None:
    data, schema = write(tmp_path, GOOD_ROWS[:1])
    fails(data, schema, "site.csv", "no data rows", "empty partition")
    data, schema = write(tmp_path, "")
    fails(data, schema, "site.csv", "empty partition")


def test_wrong_field_count(tmp_path: Path) -> None:
    data, schema = write(tmp_path, [*GOOD_ROWS[:2], "1,2,3"])
    fails(data, schema, "site.csv", "row 2 (line 3)", "3 fields", "header has 5")


def test_not_utf8(tmp_path: Path) -> None:
    data, schema = write(tmp_path, GOOD_ROWS)
    data.write_bytes("a,b,dx,flag,los\n1,2,0,1,3\nä,2,0,1,3\n".encode("latin-1"))
    fails(data, schema, "site.csv", "not UTF-8")


def test_unknown_kind_lists_the_valid_kinds(tmp_path: Path) -> None:
    schema = {"inputs": ["a"], "tasks": [{"name": "dx", "kind": "ordinal"}]}
    data, schema_path = write(tmp_path, GOOD_ROWS, schema)
    fails(
        data,
        schema_path,
        "site.schema.json",
        "tasks[0]",
        "'dx'",
        "unknown kind 'ordinal'",
        "multiclass",
        "binary",
        "regression",
    )


@pytest.mark.parametrize(
    ("schema", "needles"),
    [
        ({"tasks": SCHEMA["tasks"]}, ["missing required keys ['inputs']"]),
        ({"inputs": ["a"]}, ["missing required keys ['tasks']"]),
        ({"inputs": ["a"], "tasks": []}, ["'tasks' must be a non-empty list"]),
        ({**SCHEMA, "labels": "x"}, ["unknown keys ['labels']", "valid keys"]),
        (
            {"inputs": ["a"], "tasks": [{"name": "dx", "kind": "multiclass"}]},
            ["tasks[0]", "'num_classes'"],
        ),
        (
            {"inputs": ["a"], "tasks": [{"name": "dx", "kind": "binary", "num_classes": 3}]},
            ["tasks[0]", "binary", "num_classes 2"],
        ),
        (
            {"inputs": ["a"], "tasks": [{"name": "y", "kind": "regression", "scale": 0}]},
            ["tasks[0]", "'scale' > 0"],
        ),
        (
            {"inputs": ["a"], "tasks": [{"name": "y", "kind": "regression", "num_classes": 3}]},
            ["tasks[0]", "unknown keys ['num_classes']", "valid keys"],
        ),
        ({"inputs": ["a"], "tasks": [{"kind": "binary"}]}, ["tasks[0]", "'name'"]),
        ({"inputs": ["a"], "tasks": [{"name": "flag"}]}, ["tasks[0]", "'kind'", "valid kinds"]),
        (
            {"inputs": ["a", "flag"], "tasks": [{"name": "flag", "kind": "binary"}]},
            ["column 'flag' is also an input"],
        ),
        ({"inputs": ["a", "a"], "tasks": SCHEMA["tasks"]}, ["more than once"]),
        ({"inputs": [{"col": "a"}], "tasks": SCHEMA["tasks"]}, ["inputs[0]", "unknown keys"]),
        ({"inputs": {"array": "x"}, "tasks": SCHEMA["tasks"]}, ["missing required keys"]),
        ([1, 2], ["JSON object"]),
        ("{not json", ["not valid JSON", "line 1"]),
    ],
)
def test_malformed_schema_names_the_file_and_the_problem(
    tmp_path: Path, schema: Any, needles: list[str]
) -> None:
    text = schema if isinstance(schema, str) else json.dumps(schema)
    data, schema_path = write(tmp_path, GOOD_ROWS, text)
    fails(data, schema_path, "site.schema.json", *needles)


def test_input_offsets_and_scales_apply(tmp_path: Path) -> None:
    schema = {**SCHEMA, "inputs": [{"column": "a", "offset": 1, "scale": 2}, "b"]}
    data, schema_path = write(tmp_path, GOOD_ROWS, schema)
    pool = load_user_pool(data, schema_path)
    assert np.allclose(pool.x[:, 0], (np.array([1.0, 0.5, 3.0]) - 1) / 2)
    assert np.allclose(pool.x[:, 1], [2.0, -1.0, 4.0])
    assert pool.tasks[2].offset == 5.0 and pool.tasks[2].scale == 2.0


def test_group_by_gives_natural_clients(tmp_path: Path) -> None:
    lines = ["site,a,b,dx,flag,los", *[f"s{i % 2},1,2,{i % 3},1,3" for i in range(6)]]
    data, schema_path = write(tmp_path, lines, {**SCHEMA, "group_by": "site"})
    pool = load_user_pool(data, schema_path)
    assert pool.group_names == ["s0", "s1"]
    assert pool.natural_group.tolist() == [0, 1, 0, 1, 0, 1]


def test_iid_clients_of_a_label_sorted_file_hold_the_files_label_mix(tmp_path: Path) -> None:
    """A shared file sorted by label: `iid` shuffles with the seed before Flower's contiguous
    IidPartitioner, so every client gets about a third of each label, not one label."""
    from common.federation import partition_indices

    lines = ["a,b,dx,flag,los", *[f"{i},1,{i // 100},{i % 2},3" for i in range(300)]]
    data, schema_path = write(tmp_path, lines, {**SCHEMA, "partition_by": "dx"})
    cfg = parse_run_config(
        {
            "dataset": "user",
            "data-file": str(data),
            "schema-file": str(schema_path),
            "partitioner": "iid",
            "num-clients": 3,
        }
    )
    for i, part in enumerate(partition_indices(cfg, 3)):
        counts = np.bincount(np.asarray(part) // 100, minlength=3)  # row r has label r // 100
        assert counts.min() >= 20, f"client {i} holds {counts.tolist()} rows of labels 0, 1, 2"


def test_npz_inputs_array_and_length_mismatch(tmp_path: Path) -> None:
    schema = {
        "inputs": {"array": "x", "shape": [2, 3]},
        "tasks": [{"name": "digit", "kind": "multiclass", "num_classes": 4}],
    }
    _, schema_path = write(tmp_path, GOOD_ROWS, schema)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 2, 3)).astype(np.float32)
    good = tmp_path / "site.npz"
    np.savez(good, x=x, digit=np.array([0, 1, 2, 3, 0]))
    pool = load_user_pool(good, schema_path)
    assert pool.input_shape == (2, 3) and np.array_equal(pool.x, x)
    bad = tmp_path / "short.npz"
    np.savez(bad, x=x, digit=np.array([0, 1, 2]))
    fails(bad, schema_path, "short.npz", "array 'digit'", "3 rows", "'x' has 5")
    shape = tmp_path / "shape.npz"
    np.savez(shape, x=x.reshape(5, 6), digit=np.array([0, 1, 2, 3, 0]))
    fails(shape, schema_path, "shape.npz", "array 'x'", "[6]", "[2, 3]")
    nan = tmp_path / "nan.npz"
    x_nan = x.copy()
    x_nan[3, 1, 2] = np.nan
    np.savez(nan, x=x_nan, digit=np.array([0, 1, 2, 3, 0]))
    fails(nan, schema_path, "nan.npz", "array 'x'", "row 4 (index 3)", "missing value (NaN)")
    empty = tmp_path / "empty.npz"
    np.savez(empty, x=x[:0], digit=np.array([], dtype=np.int64))
    fails(empty, schema_path, "empty.npz", "empty partition")


def test_unsupported_file_type(tmp_path: Path) -> None:
    data, schema = write(tmp_path, GOOD_ROWS, name="site.xlsx")
    fails(data, schema, "site.xlsx", "'.xlsx'", ".csv", ".npz")


def test_schema_alone_gives_shape_and_tasks(tmp_path: Path) -> None:
    _, schema_path = write(tmp_path, GOOD_ROWS)
    schema = load_schema(schema_path)
    assert schema.input_shape == (2,)
    assert schema.task_names == ["diagnosis", "flag", "los"]


# ----------------------------------------------------------------------- property test

NAMES = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,7}", fullmatch=True)
FLOATS = st.floats(allow_nan=False, allow_infinity=False, width=32)


@st.composite
def datasets(draw: st.DrawFn) -> tuple[dict, dict[str, list]]:
    """A valid schema and its columns: 1-4 inputs, 1-3 tasks of any kind, 1-25 rows."""
    n_inputs = draw(st.integers(1, 4))
    n_tasks = draw(st.integers(1, 3))
    names = draw(
        st.lists(
            NAMES, min_size=n_inputs + n_tasks, max_size=n_inputs + n_tasks, unique_by=str.lower
        )
    )
    n = draw(st.integers(1, 25))
    columns: dict[str, list] = {}
    for name in names[:n_inputs]:
        columns[name] = draw(st.lists(FLOATS, min_size=n, max_size=n))
    tasks = []
    for name in names[n_inputs:]:
        kind = draw(st.sampled_from(["multiclass", "binary", "regression"]))
        task: dict[str, Any] = {"name": name, "kind": kind}
        if kind == "regression":
            columns[name] = draw(st.lists(FLOATS, min_size=n, max_size=n))
        else:
            k = draw(st.integers(2, 12)) if kind == "multiclass" else 2
            if kind == "multiclass":
                task["num_classes"] = k
            columns[name] = draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n))
        tasks.append(task)
    return {"inputs": names[:n_inputs], "tasks": tasks}, columns


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(datasets(), st.booleans())
def test_valid_data_round_trips(case: tuple[dict, dict[str, list]], as_npz: bool) -> None:
    schema, columns = case
    names = list(columns)
    with tempfile.TemporaryDirectory() as tmp:
        schema_path = Path(tmp) / "s.json"
        schema_path.write_text(json.dumps(schema))
        if as_npz:
            data = Path(tmp) / "d.npz"
            np.savez(data, **{c: np.array(v) for c, v in columns.items()})
        else:
            data = Path(tmp) / "d.csv"
            rows = zip(*(columns[c] for c in names), strict=True)
            data.write_text(
                "\n".join([",".join(names), *(",".join(map(repr, r)) for r in rows)]) + "\n"
            )
        pool = load_user_pool(data, schema_path)
    expected_x = np.array([columns[c] for c in schema["inputs"]], dtype=np.float32).T
    assert np.array_equal(pool.x, expected_x)
    assert pool.task_names == [t["name"] for t in schema["tasks"]]
    for task in schema["tasks"]:
        got = pool.y[task["name"]]
        if task["kind"] == "regression":
            assert got.dtype == np.float32
            assert np.array_equal(got, np.array(columns[task["name"]], dtype=np.float32))
        else:
            assert got.dtype == np.int64
            assert got.tolist() == columns[task["name"]]


# ------------------------------------------------------------------ predefined splits

SPLITS = ["train"] * 12 + ["val"] * 3 + ["test"] * 5  # rows 0-11, 12-14, 15-19


def split_file(tmp: Path, splits: list[str], extra: dict | None = None) -> tuple[Path, Path]:
    """A CSV whose first input is the row's index, so a split's rows are known by identity."""
    lines = ["rid,b,dx,flag,los,split"]
    lines += [f"{i},0.5,{i % 3},{i % 2},3,{s}" for i, s in enumerate(splits)]
    schema = {**SCHEMA, "inputs": ["rid", "b"], "split_by": "split", **(extra or {})}
    return write(tmp, lines, schema)


def split_config(data: Path, schema: Path, clients: int) -> Any:
    return parse_run_config(
        {
            "dataset": "user",
            "data-file": str(data),
            "schema-file": str(schema),
            "partitioner": "iid",
            "num-clients": clients,
            "min-nodes": 1,
        }
    )


def rows(split: Any) -> list[int]:
    return sorted(split.x[:, 0].astype(int).tolist())


def test_a_split_column_fixes_the_train_val_and_test_rows(tmp_path: Path) -> None:
    """One node with its whole file: it trains on exactly the 'train' rows, selects on the
    'val' rows and reports on exactly the 'test' rows (rows known by their index input)."""
    from common.federation import load_client_data

    data, schema = split_file(tmp_path, SPLITS)
    mine = load_client_data(split_config(data, schema, 1), 0, 1)
    assert rows(mine.train) == list(range(12))
    assert rows(mine.val) == [12, 13, 14]
    assert rows(mine.test) == [15, 16, 17, 18, 19]
    assert mine.train.y["diagnosis"].tolist() == [i % 3 for i in range(12)]


def test_partitioned_clients_keep_each_rows_split(tmp_path: Path) -> None:
    """A shared file split among clients: every row stays in its split, so the clients' test
    rows together are exactly the file's test rows (the test set other frameworks use)."""
    from common.federation import load_client_data

    data, schema = split_file(tmp_path, SPLITS)
    cfg = split_config(data, schema, 2)
    clients = [load_client_data(cfg, i, 2) for i in range(2)]
    assert sorted(r for c in clients for r in rows(c.test)) == [15, 16, 17, 18, 19]
    assert sorted(r for c in clients for r in rows(c.train) + rows(c.val)) == list(range(15))


def test_without_val_rows_validation_is_carved_from_train(tmp_path: Path) -> None:
    from common.federation import load_client_data

    data, schema = split_file(tmp_path, ["train"] * 15 + ["test"] * 5)
    mine = load_client_data(split_config(data, schema, 1), 0, 1)
    assert rows(mine.test) == [15, 16, 17, 18, 19]
    assert len(mine.val) >= 2 and len(mine.train) >= 10
    assert sorted(rows(mine.train) + rows(mine.val)) == list(range(15))


def test_unknown_split_value_names_file_column_row_value_and_the_valid_ones(
    tmp_path: Path,
) -> None:
    data, schema = split_file(tmp_path, ["train", "train", "Train", "validation", "test"])
    fails(
        data,
        schema,
        "site.csv",
        "column 'split'",
        "row 4 (line 5)",
        "'validation'",
        "['train', 'val', 'test']",
    )


def test_missing_split_column_is_named(tmp_path: Path) -> None:
    data, schema = write(tmp_path, GOOD_ROWS, {**SCHEMA, "split_by": "fold"})
    fails(data, schema, "site.csv", "column 'fold'", "split_by", "is missing")


def test_true_false_text_is_a_binary_label(tmp_path: Path) -> None:
    lines = ["a,b,dx,flag,los", "1,2,0,true,3", "1,2,1,False,3", "1,2,2,TRUE,3"]
    data, schema = write(tmp_path, lines)
    assert load_user_pool(data, schema).y["flag"].tolist() == [1, 0, 1]
    data, schema = write(tmp_path, [*lines, "1,2,0,maybe,3"])
    fails(data, schema, "column 'flag'", "row 4", "'maybe'")


@pytest.mark.parametrize(
    ("extra", "needles"),
    [
        ({"splits": {"train": "train", "test": "test"}}, ["'split_by'", "'splits'", "not both"]),
        ({"split_by": 3}, ["'split_by'", "column name"]),
    ],
)
def test_malformed_split_keys_are_named(tmp_path: Path, extra: dict, needles: list[str]) -> None:
    data, schema = split_file(tmp_path, SPLITS, extra)
    fails(data, schema, "site.schema.json", *needles)


def test_image_inputs_and_splits_are_for_dataset_hf(tmp_path: Path) -> None:
    image = {**SCHEMA, "inputs": {"image": "photo", "size": [8, 8]}}
    data, schema = write(tmp_path, GOOD_ROWS, image)
    fails(data, schema, "'inputs.image'", "dataset 'hf'")
    splits = {**SCHEMA, "splits": {"train": "train", "test": "test"}}
    data, schema = write(tmp_path, GOOD_ROWS, splits)
    fails(data, schema, "'splits'", "dataset 'hf'", "split_by")


@pytest.mark.parametrize(
    ("inputs", "needles"),
    [
        ({"image": "img", "size": [32]}, ["'size'", "[height, width]"]),
        ({"image": "img", "channels": 4}, ["'channels'", "[1, 3]"]),
        ({"image": "img", "mean": [0.5, 0.5]}, ["'mean'", "3 numbers"]),
        ({"image": "img", "std": 0}, ["'std'", "> 0"]),
        ({"image": "img", "resize": True}, ["unknown keys ['resize']"]),
    ],
)
def test_malformed_image_inputs_are_named(tmp_path: Path, inputs: dict, needles: list[str]) -> None:
    path = tmp_path / "s.json"
    path.write_text(json.dumps({**SCHEMA, "inputs": inputs}))
    with pytest.raises(UserDataError) as err:
        load_schema(path)
    for needle in ["s.json", *needles]:
        assert needle in str(err.value), f"{needle!r} not in {err.value}"
