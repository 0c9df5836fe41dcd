"""Dataset `user`: a site brings its own data as a CSV or NPZ file plus a JSON task schema.

The data file is private and stays on its node; the schema is metadata, not private: the
server reads it (run-config key `schema-file`) to learn the input shape and build the encoder
before any client has answered. Every task that two schemas name must have the same spec
(kind, classes, offset, scale) so that the heads of a task have one shape everywhere.

Schema (JSON object):

    {
      "inputs": ["age", {"column": "systolic_bp", "offset": 130, "scale": 20}],
                   # CSV columns / NPZ 1-D arrays, fed as (value - offset) / scale, or
      "inputs": {"array": "x", "shape": [8, 16]},   # (NPZ only) one (n, *shape) array
      "tasks": [
        {"name": "diagnosis", "kind": "multiclass", "column": "dx", "num_classes": 3},
        {"name": "readmitted", "kind": "binary"},          # column defaults to the name
        {"name": "los", "kind": "regression", "column": "length_of_stay",
         "offset": 5.0, "scale": 3.0}                      # learned as (y - offset) / scale
      ],
      "partition_by": "dx",    # optional: label that dirichlet/shards skew and splits stratify
      "group_by": "site",      # optional: natural clients in a shared file (partitioner natural)
      "split_by": "split",     # optional: a column of train / val / test (predefined splits)
      "description": "..."     # optional, free text
    }

Dataset `hf` (`common.hfdata`) reads the same schema, with two more forms:

      "inputs": {"image": "image", "size": [64, 64], "channels": 3,
                 "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},   # one image column
      "splits": {"train": "train", "val": "valid", "test": "test"},  # the data set's splits

Boolean columns are binary labels (false 0, true 1), in a data set and in a CSV.

Offsets and scales live in the shared schema, not computed from each site's data: every site
must map inputs and targets the same way for a shared encoder and shared heads to make sense.

Everything is checked when the data are loaded, and every error names the file, the column
(or array) and the row, so that a site can fix its file without reading code.
"""

from __future__ import annotations

import csv
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from common.tasks import TaskSpec
from common.userschema import SPLIT_NAMES, UserDataError, UserSchema, load_schema

if TYPE_CHECKING:
    from common.config import RunConfig
    from common.datasets import Pool

DATA_SUFFIXES: tuple[str, ...] = (".csv", ".npz")
MISSING_TOKENS: frozenset[str] = frozenset({"", "na", "nan", "n/a", "null", "none"})


# --------------------------------------------------------------------------- data files


@dataclass
class Columns:
    """Raw columns of a data source plus how to name it and a row in an error message."""

    source: str  # "data file 'site.csv'", "data set 'flwrlabs/celeba'"
    n: int
    get: Callable[[str, str], np.ndarray]  # (column, role) -> raw values (n,) or (n, ...)
    row: Callable[[int], str]
    kind: str  # "column" (CSV, data set) or "array" (NPZ)


def load_user_pool(data_file: str | Path, schema_file: str | Path) -> Pool:
    """One site's data as a `Pool`, validated against its schema.

    Inputs become float32 features; classification labels int64 in 0..num_classes-1;
    regression targets float32 in their own units (the spec's offset/scale normalise the loss);
    a `split_by` column fixes every row's split.
    """
    schema = load_schema(schema_file)
    if schema.image is not None or schema.splits is not None:
        key = "inputs.image" if schema.image is not None else "splits"
        raise UserDataError(
            f"schema file '{schema.path}': '{key}' is read by dataset 'hf' (a data set that "
            "datasets.load_dataset reads, local or on the Hub); a CSV/NPZ file has numeric "
            "'inputs' and its predefined splits in a 'split_by' column"
        )
    path = Path(data_file)
    if not path.is_file():
        raise UserDataError(f"data file '{path}' does not exist (run/node-config key 'data-file')")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        cols = _read_csv(path)
    elif suffix == ".npz":
        cols = _read_npz(path, schema)
    else:
        raise UserDataError(
            f"data file '{path}': unsupported type '{suffix}'; valid: {list(DATA_SUFFIXES)}"
        )
    return pool_from_columns(cols, schema, numeric_inputs(cols, schema))


def numeric_inputs(cols: Columns, schema: UserSchema) -> np.ndarray:
    """The schema's numeric inputs (columns or one array) as float32 rows."""
    if schema.input_array is not None:
        x = _numeric(cols, schema.input_array, cols.get(schema.input_array, "input"), "input")
        if x.shape[1:] != schema.input_shape:
            raise UserDataError(
                f"{cols.source}: {cols.kind} '{schema.input_array}' holds examples of shape "
                f"{list(x.shape[1:])}, the schema says {list(schema.input_shape or ())}"
            )
    else:
        x = np.stack([_numeric(cols, c, cols.get(c, "input"), "input") for c in schema.inputs], 1)
        x = (x - np.array(schema.input_offset)) / np.array(schema.input_scale)
    return x.astype(np.float32)


def pool_from_columns(cols: Columns, schema: UserSchema, x: Any) -> Pool:
    """A `Pool` of the rows in `cols`: labels, partitioning columns and predefined splits read
    and checked against the schema; `x` are the inputs, read by the caller (numeric columns
    here, images in `common.hfdata`)."""
    from common.datasets import Pool

    y = {}
    for task in schema.tasks:
        column = schema.columns[task.name]
        role = f"task '{task.name}'"
        raw = cols.get(column, role)
        if task.kind == "binary":
            raw = _booleans(raw)
        y[task.name] = _labels(cols, column, task, _numeric(cols, column, raw, role))

    if schema.partition_by is not None:
        partition_by, _ = _categories(cols, schema.partition_by, "partition_by")
    else:
        # Default: skew and stratify by the first classification task, if there is one.
        first = next((t.name for t in schema.tasks if t.is_classification), None)
        partition_by = y[first] if first else np.zeros(cols.n, np.int64)
    natural_group, group_names = None, []
    if schema.group_by is not None:
        natural_group, group_names = _categories(cols, schema.group_by, "group_by")
    fixed_split = split_marks(cols, schema.split_by) if schema.split_by is not None else None
    return Pool(
        x=x,
        y=y,
        tasks=list(schema.tasks),
        partition_by=np.asarray(partition_by, np.int64),
        fixed_split=fixed_split,
        natural_group=natural_group,
        group_names=group_names,
    )


def _read_csv(path: Path) -> Columns:
    file = f"data file '{path}'"
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None or not any(h.strip() for h in header):
                raise UserDataError(f"{file} is empty (no header line): empty partition")
            header = [h.strip() for h in header]
            dupes = sorted({h for h in header if header.count(h) > 1})
            if dupes:
                raise UserDataError(f"{file}: the header names columns {dupes} more than once")
            rows, lines = [], []
            for fields in reader:
                if not fields or all(not f.strip() for f in fields):
                    continue  # blank line
                if len(fields) != len(header):
                    raise UserDataError(
                        f"{file}, row {len(rows) + 1} (line {reader.line_num}): "
                        f"{len(fields)} fields, the header has {len(header)}"
                    )
                rows.append(fields)
                lines.append(reader.line_num)
    except UnicodeDecodeError as err:
        raise UserDataError(
            f"{file} is not UTF-8 text (byte {err.start}); save it as a UTF-8 CSV"
        ) from None
    except csv.Error as err:
        raise UserDataError(f"{file} is not a readable CSV ({err})") from None
    if not rows:
        raise UserDataError(f"{file} has a header but no data rows: empty partition")
    index = {h: i for i, h in enumerate(header)}

    def get(column: str, role: str) -> np.ndarray:
        if column not in index:
            raise UserDataError(
                f"{file}: column '{column}' ({role}) is missing; columns in the file: {header}"
            )
        j = index[column]
        return np.array([r[j].strip() for r in rows], dtype=object)

    return Columns(
        source=file,
        n=len(rows),
        get=get,
        row=lambda i: f"row {i + 1} (line {lines[i]})",
        kind="column",
    )


def _read_npz(path: Path, schema: UserSchema) -> Columns:
    file = f"data file '{path}'"
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise UserDataError(f"{file} is not a readable NPZ archive ({err})") from None
    first = schema.input_array or schema.inputs[0]
    if first not in arrays:
        raise UserDataError(
            f"{file}: array '{first}' (input) is missing; arrays in the file: {sorted(arrays)}"
        )
    n = len(arrays[first]) if arrays[first].ndim else 0
    if n == 0:
        raise UserDataError(f"{file}: array '{first}' has no rows: empty partition")

    def get(name: str, role: str) -> np.ndarray:
        if name not in arrays:
            raise UserDataError(
                f"{file}: array '{name}' ({role}) is missing; arrays in the file: {sorted(arrays)}"
            )
        a = arrays[name]
        if a.ndim == 0 or len(a) != n:
            rows = len(a) if a.ndim else "no"
            raise UserDataError(
                f"{file}: array '{name}' ({role}) has {rows} rows but array '{first}' has {n}; "
                "every array must have one row per example"
            )
        if name != schema.input_array and a.ndim != 1:
            raise UserDataError(
                f"{file}: array '{name}' ({role}) must be 1-D (one value per row), "
                f"got shape {list(a.shape)}"
            )
        return a

    return Columns(
        source=file, n=n, get=get, row=lambda i: f"row {i + 1} (index {i})", kind="array"
    )


def _numeric(cols: Columns, name: str, raw: np.ndarray, role: str) -> np.ndarray:
    """Float64 values of a column; the first missing, non-numeric or infinite value fails."""
    where = f"{cols.source}, {cols.kind} '{name}' ({role})"
    if raw.dtype.kind in "biuf":
        values = raw.astype(np.float64)
    elif raw.dtype.kind in "OUS":
        try:
            values = raw.astype(np.float64)  # fast path; the loop below only locates errors
        except (TypeError, ValueError):
            values = _numeric_by_cell(cols, where, raw)
    else:
        raise UserDataError(f"{where}: values of type {raw.dtype} are not numbers")
    per_row = values.reshape(cols.n, -1)
    finite = np.isfinite(per_row)
    if not finite.all():
        i = int(np.argmin(finite.all(axis=1)))
        value = per_row[i][~finite[i]][0]
        what = "missing value (NaN)" if np.isnan(value) else f"non-finite value {value}"
        raise UserDataError(f"{where}, {cols.row(i)}: {what}; fill or drop it")
    return values


def _numeric_by_cell(cols: Columns, where: str, raw: np.ndarray) -> np.ndarray:
    """Cell-by-cell conversion: slow, but it names the row of the first bad cell."""
    values = np.empty(raw.shape, np.float64)
    per_row, out = raw.reshape(cols.n, -1), values.reshape(cols.n, -1)
    for i, cells in enumerate(per_row):
        for j, cell in enumerate(cells):
            text = cell.decode() if isinstance(cell, bytes) else str(cell)
            if text.strip().lower() in MISSING_TOKENS:
                raise UserDataError(
                    f"{where}, {cols.row(i)}: missing value ({text!r}); fill or drop it"
                )
            try:
                out[i, j] = float(text)
            except ValueError:
                raise UserDataError(f"{where}, {cols.row(i)}: non-numeric value {text!r}") from None
    return values


def _labels(cols: Columns, name: str, task: TaskSpec, values: np.ndarray) -> np.ndarray:
    """Targets of one task in the dtype the heads expect, range-checked for classification."""
    if task.kind == "regression":
        return values.astype(np.float32)
    where = f"{cols.source}, {cols.kind} '{name}' (task '{task.name}')"
    valid = "0 or 1 (binary task)" if task.kind == "binary" else f"0..{task.num_classes - 1}"
    bad = (values != np.round(values)) | (values < 0) | (values > task.num_classes - 1)
    if bad.any():
        i = int(np.argmax(bad))
        v = values[i]
        shown = int(v) if v == round(v) else float(v)
        reason = "not an integer class" if v != round(v) else "label out of range"
        raise UserDataError(f"{where}, {cols.row(i)}: {reason}: {shown}; valid labels: {valid}")
    return values.astype(np.int64)


def _booleans(raw: np.ndarray) -> np.ndarray:
    """Text 'true'/'false' (any case) as '1'/'0': a boolean column is a binary label.
    Numbers and real booleans pass unchanged."""
    if raw.dtype.kind not in "OUS":
        return raw
    text = np.array([_text(v).strip().lower() for v in raw.tolist()], dtype=object)
    return np.where(text == "true", "1", np.where(text == "false", "0", raw))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def split_marks(cols: Columns, name: str) -> np.ndarray:
    """TRAIN, VAL or TEST of every row, from a column of 'train' / 'val' / 'test' (any case)."""
    from common.datasets import TEST, TRAIN, VAL

    raw = cols.get(name, "schema 'split_by'")
    where = f"{cols.source}, {cols.kind} '{name}' (schema 'split_by')"
    if raw.ndim != 1:
        raise UserDataError(f"{where}: must be 1-D, got shape {list(raw.shape)}")
    text = np.array([_text(v).strip().lower() for v in raw.tolist()], dtype=object)
    marks = np.full(cols.n, -1, np.int8)
    for mark, value in zip((TRAIN, VAL, TEST), SPLIT_NAMES, strict=True):
        marks[text == value] = mark
    if (marks < 0).any():
        i = int(np.argmax(marks < 0))
        raise UserDataError(
            f"{where}, {cols.row(i)}: unknown split {_text(raw[i])!r}; valid values: "
            f"{list(SPLIT_NAMES)}"
        )
    return marks


def _categories(cols: Columns, name: str, key: str) -> tuple[np.ndarray, list[str]]:
    """Integer codes (sorted order) of a categorical column such as a site or a label."""
    raw = cols.get(name, f"schema '{key}'")
    where = f"{cols.source}, {cols.kind} '{name}' (schema '{key}')"
    if raw.ndim != 1:
        raise UserDataError(f"{where}: must be 1-D, got shape {list(raw.shape)}")
    text = np.array([_text(v) for v in raw.tolist()])
    for i, value in enumerate(text):
        if value.strip().lower() in MISSING_TOKENS:
            raise UserDataError(f"{where}, {cols.row(i)}: missing value ({value!r})")
    names, codes = np.unique(text, return_inverse=True)
    return codes.astype(np.int64), [str(v) for v in names]


# ------------------------------------------------------------------------- run config glue


def _path(cfg: RunConfig, key: str) -> str:
    from common.config import ConfigError

    value = cfg.data_file if key == "data-file" else cfg.schema_file
    if not value:
        raise ConfigError(
            f"dataset '{cfg.dataset}' needs run-config key '{key}' (a path; a node's own "
            f"'{key}' in its node config takes precedence in a deployment)"
        )
    return value


def user_pool(cfg: RunConfig) -> Pool:
    """The `user` dataset: the whole of one data file (one node's data, or a shared file that
    simulation partitions with `partitioner`)."""
    return load_user_pool(_path(cfg, "data-file"), _path(cfg, "schema-file"))


def user_schema(cfg: RunConfig) -> UserSchema:
    """The configured schema alone (datasets `user` and `hf`): what the server needs, without
    any data."""
    return load_schema(_path(cfg, "schema-file"))
