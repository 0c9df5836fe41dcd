"""Every place a user or a node supplies something fails with a message that names the
problem: the run-config key, the node-config key, the schema entry, the file, column and row.

A site fixes its own config or file from the message alone, without reading our code; these
tests pin that.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Context, RecordDict

from client.app import client_identity
from common.config import ConfigError, parse_run_config
from common.federation import load_client_data, parse_plan
from common.userdata import UserDataError, load_schema, load_user_pool
from deploy.runs import parse_overrides

SCHEMA: dict[str, Any] = {
    "inputs": ["a", "b"],
    "tasks": [
        {"name": "diagnosis", "kind": "multiclass", "column": "dx", "num_classes": 3},
        {"name": "flag", "kind": "binary"},
        {"name": "los", "kind": "regression", "offset": 5, "scale": 2},
    ],
}
HEADER = "a,b,dx,flag,los"
ROWS = ["1.0,2.0,0,1,3.5", "0.5,-1,2,0,7", "3,4,1,1,1.25"]


def raises_naming(exc: type[Exception], fn: Any, *args: Any, needles: list[str]) -> str:
    with pytest.raises(exc) as err:
        fn(*args)
    message = str(err.value)
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    return message


# ------------------------------------------------------------------------------ run config


@pytest.mark.parametrize(
    ("raw", "needles"),
    [
        # names
        ({"partitioner": "random"}, ["'partitioner'", "'random'", "iid", "dirichlet"]),
        ({"privacy": "dp"}, ["'privacy'", "dp-sgd", "central-dp", "local-dp"]),
        ({"attack": "evil"}, ["'attack'", "sign-flip", "label-flip"]),
        ({"compression": "zip"}, ["'compression'", "fp16", "int8"]),
        ({"cdp-clipping": "x"}, ["'cdp-clipping'", "fixed-server"]),
        ({"num-client": 3}, ["'num-client'", "valid keys", "num-clients"]),
        # types
        ({"seed": 1.5}, ["'seed'", "integer", "1.5"]),
        ({"num-clients": True}, ["'num-clients'", "integer", "True"]),
        ({"lr": "0.1"}, ["'lr'", "number", "'0.1'"]),
        ({"resume": 1}, ["'resume'", "true or false"]),
        ({"dataset": 3}, ["'dataset'", "string"]),
        ({"plan": ["left"]}, ["'plan'", "string"]),
        # ranges
        ({"seed": -1}, ["'seed'", ">= 0", "-1"]),
        ({"samples-per-client": 5}, ["'samples-per-client'", ">= 10"]),
        ({"momentum": 1.0}, ["'momentum'", "<= 0.999"]),
        ({"trim-beta": 0.5}, ["'trim-beta'", "<= 0.49"]),
        ({"fraction-train": 0.0}, ["'fraction-train'", "> 0"]),
        ({"dp-delta": 0.5}, ["'dp-delta'", "<= 0.1"]),
        ({"attack-scale": -1.0}, ["'attack-scale'", ">= 0"]),
        ({"max-update-ratio": -1.0}, ["'max-update-ratio'", ">= 0"]),
        # keys that only make sense together
        ({"shared-layers": 3}, ["'shared-layers'", "'num-blocks'"]),
        ({"min-nodes": 7}, ["'min-nodes'", "6 clients"]),
        (
            {"strategy": "krum", "num-malicious": 2},
            ["'krum'", "num-malicious = 2", "at least 7", "6 of 6"],
        ),
        (
            {"strategy": "bulyan", "num-malicious": 2, "num-clients": 10},
            ["'bulyan'", "at least 11", "10 of 10"],
        ),
        ({"strategy": "multikrum", "krum-select": 9}, ["'krum-select' = 9", "6 sampled"]),
        ({"secagg": True, "strategy": "krum"}, ["secagg", "'krum'", "'fedavg'"]),
        ({"secagg": True, "compression": "int8"}, ["secagg", "compression 'int8'"]),
        ({"privacy": "dp-sgd", "weighting": "uw"}, ["'uw'", "dp-sgd", "valid under dp-sgd"]),
        # DWA's weights are ratios of raw epoch losses: data the DP noise never touched.
        ({"privacy": "dp-sgd", "weighting": "dwa"}, ["'dwa'", "raw losses", "valid under dp-sgd"]),
        (
            {"privacy": "central-dp", "algorithm": "fedavg"},
            ["'central-dp'", "'fedavg'", "heads"],
        ),
        ({"weighting": "static", "static-weights": "1,x,1,1,1"}, ["'static-weights'", "number"]),
        ({"weighting": "static", "static-weights": "1,2"}, ["'static-weights'", "2 values"]),
    ],
)
def test_bad_run_config_names_the_key(raw: dict[str, Any], needles: list[str]) -> None:
    raises_naming(ConfigError, parse_run_config, raw, needles=needles)


@pytest.mark.parametrize("key", ["lr", "max-update-ratio", "clipping-norm"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_numbers_are_refused(key: str, value: float) -> None:
    raises_naming(ConfigError, parse_run_config, {key: value}, needles=[f"'{key}'", "finite"])


@pytest.mark.parametrize(
    ("plan", "needles"),
    [
        ("", ["'plan'", "no tasks"]),
        (" ; ", ["'plan'", "no tasks"]),
        ("left;colour,sum", ["'plan'", "entry 1", "['colour']", "valid tasks"]),
        ("left,left", ["'plan'", "entry 0", "repeats"]),
    ],
)
def test_bad_plan_names_the_entry(plan: str, needles: list[str]) -> None:
    raises_naming(ConfigError, parse_plan, plan, ["left", "right", "sum"], 3, needles=needles)


def test_launcher_override_without_value_is_named() -> None:
    with pytest.raises(SystemExit, match="key=value, got 'num-clients'"):
        parse_overrides(["num-clients"])
    # A value TOML cannot read stays a string, and the run config then names the key.
    raises_naming(
        ConfigError,
        parse_run_config,
        parse_overrides(["num-clients=ten"]),
        needles=["'num-clients'", "integer", "'ten'"],
    )


def test_natural_partitioner_on_a_dataset_without_sites() -> None:
    cfg = parse_run_config({"partitioner": "natural", "num-clients": 2, "samples-per-client": 20})
    raises_naming(
        ConfigError, load_client_data, cfg, 0, 2, needles=["'natural'", "'multidigits'", "iid"]
    )


# ----------------------------------------------------------------------------- node config


def node(**config: Any) -> Context:
    return Context(run_id=1, node_id=1, node_config=config, state=RecordDict(), run_config={})


@pytest.mark.parametrize(
    ("config", "missing"),
    [({}, "'partition-id'"), ({"partition-id": 0}, "'num-partitions'")],
)
def test_node_config_missing_key_is_named(config: dict[str, Any], missing: str) -> None:
    raises_naming(
        ConfigError,
        client_identity,
        node(**config),
        needles=[missing, "--node-config", "partition-id=<i>"],
    )


def test_partition_id_outside_the_partitions_is_named() -> None:
    raises_naming(
        ConfigError,
        client_identity,
        node(**{"partition-id": 2, "num-partitions": 2}),
        needles=["'partition-id' = 2", "0..1"],
    )


def test_node_task_set_with_an_unknown_task_is_named() -> None:
    cfg = parse_run_config({"num-clients": 2, "samples-per-client": 20})
    raises_naming(
        ConfigError,
        load_client_data,
        cfg,
        0,
        2,
        0,
        "left,colour",
        needles=["node config 'tasks'", "['colour']", "valid tasks"],
    )


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"partition-id": "abc", "num-partitions": 2}, "'partition-id'"),
        ({"partition-id": 0, "num-partitions": "x"}, "'num-partitions'"),
        ({"partition-id": 0, "num-partitions": 2, "client-id": "z"}, "'client-id'"),
        ({"partition-id": 1.5, "num-partitions": 3}, "'partition-id'"),
        ({"partition-id": True, "num-partitions": 2}, "'partition-id'"),
        ({"partition-id": 0, "num-partitions": 0}, "'num-partitions'"),
    ],
)
def test_node_config_bad_values_name_the_key(config: dict[str, Any], key: str) -> None:
    raises_naming(ConfigError, client_identity, node(**config), needles=[key])


# ----------------------------------------------------------------------------- task schema


def schema_file(tmp_path: Path, schema: Any) -> Path:
    path = tmp_path / "site.schema.json"
    path.write_text(schema if isinstance(schema, str) else json.dumps(schema))
    return path


def task(**entry: Any) -> dict[str, Any]:
    return {**SCHEMA, "tasks": [entry]}


@pytest.mark.parametrize(
    ("schema", "needles"),
    [
        ({"inputs": ["a"]}, ["missing required keys", "'tasks'"]),
        ({**SCHEMA, "target": "dx"}, ["unknown keys", "'target'", "valid keys"]),
        ({**SCHEMA, "tasks": []}, ["'tasks'", "non-empty list"]),
        ({**SCHEMA, "inputs": []}, ["'inputs'", "non-empty list"]),
        ({**SCHEMA, "tasks": ["dx"]}, ["tasks[0]", "JSON object"]),
        (task(kind="binary"), ["tasks[0]", "'name'"]),
        (task(name="dx"), ["tasks[0]", "('dx')", "'kind'", "multiclass"]),
        (task(name="dx", kind="ordinal"), ["('dx')", "'ordinal'", "valid kinds"]),
        (task(name="dx", kind="multiclass"), ["('dx')", "'num_classes'"]),
        (task(name="dx", kind="multiclass", num_classes=1), ["'num_classes'", ">= 2", "1"]),
        (task(name="dx", kind="multiclass", num_classes="3"), ["'num_classes'", "'3'"]),
        (task(name="flag", kind="binary", num_classes=3), ["('flag')", "num_classes 2", "3"]),
        (task(name="los", kind="regression", scale=0), ["('los')", "'scale' > 0"]),
        (task(name="los", kind="regression", offset="5"), ["('los')", "'offset'", "number"]),
        (task(name="a", kind="binary"), ["('a')", "column 'a'", "also an input"]),
        (
            {**SCHEMA, "tasks": [SCHEMA["tasks"][1], SCHEMA["tasks"][1]]},
            ["tasks[1]", "'flag'", "twice"],
        ),
        ({**SCHEMA, "inputs": {"array": "x", "shape": [0, 3]}}, ["'inputs.shape'", "[0, 3]"]),
        ({**SCHEMA, "partition_by": 3}, ["'partition_by'", "column name"]),
        ({**SCHEMA, "inputs": [{"column": "a", "scale": -1}]}, ["inputs[0]", "'scale' > 0"]),
    ],
)
def test_bad_schema_names_file_entry_and_key(
    tmp_path: Path, schema: dict[str, Any], needles: list[str]
) -> None:
    path = schema_file(tmp_path, schema)
    raises_naming(UserDataError, load_schema, path, needles=["site.schema.json", *needles])


def test_missing_schema_names_the_run_config_key(tmp_path: Path) -> None:
    from common.datasets import input_shape

    raises_naming(UserDataError, load_schema, tmp_path / "none.json", needles=["'schema-file'"])
    cfg = parse_run_config({"dataset": "user"})
    raises_naming(ConfigError, input_shape, cfg, needles=["'schema-file'", "dataset 'user'"])


# ------------------------------------------------------------------------------ data files


def data_file(tmp_path: Path, lines: list[str], schema: dict[str, Any] | None = None) -> tuple:
    path = tmp_path / "site.csv"
    path.write_text("\n".join(lines) + "\n")
    return path, schema_file(tmp_path, SCHEMA if schema is None else schema)


@pytest.mark.parametrize(
    ("lines", "schema", "needles"),
    [
        # wrong columns
        (["a,b,dx,flag", *(r.rsplit(",", 1)[0] for r in ROWS)], None, ["column 'los'", "missing"]),
        (["a,B,dx,flag,los", *ROWS], None, ["column 'b'", "(input)", "columns in the file"]),
        (["a,a,dx,flag,los", *ROWS], None, ["header", "['a']", "more than once"]),
        # NaN / missing / non-numeric, each with the row
        ([HEADER, *ROWS, "nan,1,0,1,1"], None, ["column 'a'", "row 4 (line 5)", "missing value"]),
        ([HEADER, *ROWS, "1,,0,1,1"], None, ["column 'b'", "row 4", "missing value"]),
        ([HEADER, *ROWS, "1,2,0,1,NA"], None, ["column 'los'", "task 'los'", "missing"]),
        ([HEADER, "1,2,0,1,x", *ROWS], None, ["column 'los'", "row 1", "non-numeric", "'x'"]),
        # labels out of range
        ([HEADER, *ROWS, "1,2,3,1,1"], None, ["column 'dx'", "row 4", "out of range", "0..2"]),
        ([HEADER, *ROWS, "1,2,0,2,1"], None, ["column 'flag'", "row 4", "0 or 1"]),
        ([HEADER, "1,2,0.5,1,1"], None, ["column 'dx'", "row 1", "not an integer"]),
        # empty partition
        ([HEADER], None, ["no data rows", "empty partition"]),
        ([""], None, ["empty partition"]),
        # optional columns the schema names
        ([HEADER, *ROWS], {**SCHEMA, "partition_by": "site"}, ["column 'site'", "partition_by"]),
        (
            ["site,a,b,dx,flag,los", "s0,1,2,0,1,1", ",1,2,0,1,1"],
            {**SCHEMA, "group_by": "site"},
            ["column 'site'", "group_by", "row 2", "missing value"],
        ),
    ],
)
def test_bad_data_file_names_file_column_and_row(
    tmp_path: Path, lines: list[str], schema: dict[str, Any] | None, needles: list[str]
) -> None:
    data, schema_path = data_file(tmp_path, lines, schema)
    raises_naming(UserDataError, load_user_pool, data, schema_path, needles=["site.csv", *needles])


def test_missing_and_unreadable_data_files_are_named(tmp_path: Path) -> None:
    schema = schema_file(tmp_path, SCHEMA)
    raises_naming(
        UserDataError,
        load_user_pool,
        tmp_path / "gone.csv",
        schema,
        needles=["gone.csv", "does not exist", "'data-file'"],
    )
    text = tmp_path / "strings.npz"
    np.savez(text, a=np.array(["x", "y"]), b=np.ones(2), dx=np.zeros(2), flag=np.zeros(2))
    raises_naming(
        UserDataError,
        load_user_pool,
        text,
        schema,
        needles=["strings.npz", "array 'a'", "row 1", "non-numeric", "'x'"],
    )


def test_corrupt_npz_is_named(tmp_path: Path) -> None:
    schema = schema_file(tmp_path, SCHEMA)
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"PK\x03\x04 not really a zip")
    try:
        load_user_pool(corrupt, schema)
    except UserDataError as err:
        assert "corrupt.npz" in str(err) and "not a readable" in str(err)
    except Exception as err:
        raise AssertionError(f"{type(err).__name__}: {err}") from None
    else:
        raise AssertionError("a corrupt NPZ loaded")


def test_empty_partition_names_the_client(monkeypatch: pytest.MonkeyPatch) -> None:
    import common.federation as federation

    cfg = parse_run_config({"num-clients": 2, "samples-per-client": 20})
    monkeypatch.setattr(
        federation, "partition_indices", lambda cfg, n: (np.arange(0), np.arange(40))
    )
    raises_naming(
        ConfigError, load_client_data, cfg, 0, 2, 7, needles=["client 7", "'multidigits'", "empty"]
    )


@pytest.mark.parametrize("partitioner", ["iid", "dirichlet", "shards"])
def test_more_clients_than_examples_is_named(tmp_path: Path, partitioner: str) -> None:
    data, schema = data_file(tmp_path, [HEADER, *ROWS])
    cfg = parse_run_config(
        {
            "dataset": "user",
            "data-file": str(data),
            "schema-file": str(schema),
            "partitioner": partitioner,
            "num-clients": 5,
        }
    )
    try:
        load_client_data(cfg, 0, 5)
    except ConfigError as err:
        assert "3 examples" in str(err) and "5 clients" in str(err), err
    except Exception as err:
        raise AssertionError(f"{type(err).__name__}: {err}") from None
