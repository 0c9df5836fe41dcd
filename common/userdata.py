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
import json
import math
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from common.tasks import TASK_KINDS, TaskSpec

if TYPE_CHECKING:
    from common.config import RunConfig
    from common.datasets import Pool

DATA_SUFFIXES: tuple[str, ...] = (".csv", ".npz")
SCHEMA_KEYS: tuple[str, ...] = (
    "inputs",
    "tasks",
    "partition_by",
    "group_by",
    "split_by",
    "splits",
    "description",
)
ARRAY_INPUT_KEYS: tuple[str, ...] = ("array", "shape")
IMAGE_INPUT_KEYS: tuple[str, ...] = ("image", "size", "channels", "mean", "std")
IMAGE_CHANNELS: tuple[int, ...] = (1, 3)  # grey (PIL mode L) or RGB
# Values of a `split_by` column (case-insensitive), and the splits `splits` may name.
SPLIT_NAMES: tuple[str, ...] = ("train", "val", "test")
INPUT_KEYS: tuple[str, ...] = ("column", "offset", "scale")
TASK_KEYS: dict[str, tuple[str, ...]] = {
    "multiclass": ("name", "kind", "column", "num_classes"),
    "binary": ("name", "kind", "column", "num_classes"),
    "regression": ("name", "kind", "column", "offset", "scale"),
}
# Cell values read as "missing" in a CSV (case-insensitive, after stripping blanks).
MISSING_TOKENS: frozenset[str] = frozenset({"", "na", "nan", "n/a", "null", "none"})


class UserDataError(ValueError):
    """A user data file or schema is invalid; the message names the file, column and row."""


@dataclass(frozen=True)
class ImageInput:
    """One image column, decoded to float32 (channels, H, W) in [0, 1], then (v - mean) / std
    per channel. `size` (H, W) resizes every image; without it every image must have the
    size of the data set's first image."""

    column: str
    size: tuple[int, int] | None
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass(frozen=True)
class _Inputs:
    names: tuple[str, ...]
    array: str | None
    shape: tuple[int, ...] | None
    offsets: tuple[float, ...]
    scales: tuple[float, ...]
    image: ImageInput | None = None


@dataclass(frozen=True)
class UserSchema:
    """A validated task schema. `inputs` lists columns/arrays, each fed to the model as
    (value - offset) / scale; `input_array` is the NPZ array form (then `inputs` is empty and
    `input_shape` comes from the schema); `image` is the image form (dataset `hf`), whose
    `input_shape` is None when the schema gives no `size` (the data decide it).
    `split_by` names a column of train/val/test; `splits` maps train/val/test to a Hugging
    Face data set's own splits."""

    path: Path
    inputs: tuple[str, ...]
    input_offset: tuple[float, ...]
    input_scale: tuple[float, ...]
    input_array: str | None
    input_shape: tuple[int, ...] | None
    tasks: tuple[TaskSpec, ...]
    columns: dict[str, str]  # task name -> column (CSV) or array (NPZ)
    partition_by: str | None
    group_by: str | None
    image: ImageInput | None = None
    split_by: str | None = None
    splits: dict[str, str] | None = None

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]


def load_schema(schema_file: str | Path) -> UserSchema:
    """Read and validate a task schema; it needs no data file (the server has none)."""
    path = Path(schema_file)
    where = f"schema file '{path}'"
    if not path.is_file():
        raise UserDataError(f"{where} does not exist (run-config key 'schema-file')")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise UserDataError(f"{where} is not UTF-8 text (byte {err.start})") from None
    except json.JSONDecodeError as err:
        raise UserDataError(
            f"{where} is not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}"
        ) from None
    if not isinstance(raw, dict):
        raise UserDataError(f"{where}: the top level must be a JSON object with 'inputs', 'tasks'")
    _check_keys(raw, SCHEMA_KEYS, where, required=("inputs", "tasks"))

    spec_in = _parse_inputs(raw["inputs"], where)
    inputs, input_array = spec_in.names, spec_in.array
    image_column = spec_in.image.column if spec_in.image else None
    tasks_raw = raw["tasks"]
    if not isinstance(tasks_raw, list) or not tasks_raw:
        raise UserDataError(f"{where}: 'tasks' must be a non-empty list of task objects")
    tasks, columns = [], {}
    for i, entry in enumerate(tasks_raw):
        spec, column = _parse_task(entry, f"{where}, tasks[{i}]")
        if spec.name in columns:
            raise UserDataError(f"{where}, tasks[{i}]: task name '{spec.name}' appears twice")
        if column in inputs or column in (input_array, image_column):
            raise UserDataError(
                f"{where}, tasks[{i}] ('{spec.name}'): column '{column}' is also an input; "
                "a target must not be fed to the model"
            )
        tasks.append(spec)
        columns[spec.name] = column
    optional = {}
    for key in ("partition_by", "group_by", "split_by"):
        value = raw.get(key)
        if value is not None and (not isinstance(value, str) or not value):
            raise UserDataError(f"{where}: '{key}' must be a column name (string), got {value!r}")
        optional[key] = value
    splits = _parse_splits(raw.get("splits"), where)
    if splits is not None and optional["split_by"] is not None:
        raise UserDataError(
            f"{where}: give 'split_by' (a column of train/val/test) or 'splits' (the data "
            "set's own splits), not both"
        )
    return UserSchema(
        path=path,
        inputs=inputs,
        input_offset=spec_in.offsets,
        input_scale=spec_in.scales,
        input_array=input_array,
        input_shape=spec_in.shape,
        tasks=tuple(tasks),
        columns=columns,
        partition_by=optional["partition_by"],
        group_by=optional["group_by"],
        image=spec_in.image,
        split_by=optional["split_by"],
        splits=splits,
    )


def _parse_splits(raw: Any, where: str) -> dict[str, str] | None:
    """`splits`: {"train": <split>, "test": <split>, "val": <split> (optional)}, naming a
    Hugging Face data set's splits; without `val`, each client carves it from its train rows."""
    if raw is None:
        return None
    at = f"{where}, 'splits'"
    if not isinstance(raw, dict):
        raise UserDataError(
            f'{at} must map train/val/test to the data set\'s splits, e.g. {{"train": "train", '
            f'"val": "valid", "test": "test"}}, got {raw!r}'
        )
    _check_keys(raw, SPLIT_NAMES, at, required=("train", "test"))
    for key, value in raw.items():
        if not isinstance(value, str) or not value:
            raise UserDataError(f"{at}: '{key}' must be a split name (string), got {value!r}")
    if len(set(raw.values())) != len(raw):
        raise UserDataError(f"{at}: names one split twice ({raw}); each must be its own split")
    return {k: raw[k] for k in SPLIT_NAMES if k in raw}


def _check_keys(raw: dict, valid: Sequence[str], where: str, required: Sequence[str]) -> None:
    unknown = sorted(set(raw) - set(valid))
    if unknown:
        raise UserDataError(f"{where}: unknown keys {unknown}; valid keys: {list(valid)}")
    missing = [k for k in required if k not in raw]
    if missing:
        raise UserDataError(f"{where}: missing required keys {missing}")


def _parse_inputs(raw: Any, where: str) -> _Inputs:
    if isinstance(raw, dict) and "image" in raw:
        image = _parse_image(raw, f"{where}, 'inputs'")
        shape = (image.channels, *image.size) if image.size else None
        return _Inputs((), None, shape, (), (), image)
    if isinstance(raw, dict):
        _check_keys(raw, ARRAY_INPUT_KEYS, f"{where}, 'inputs'", required=ARRAY_INPUT_KEYS)
        name, shape = raw["array"], raw["shape"]
        if not isinstance(name, str) or not name:
            raise UserDataError(f"{where}: 'inputs.array' must be an array name (string)")
        if (
            not isinstance(shape, list)
            or not shape
            or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)
        ):
            raise UserDataError(
                f"{where}: 'inputs.shape' must be a list of positive integers (the shape of one "
                f"example, e.g. [8, 16]), got {shape!r}"
            )
        return _Inputs((), name, tuple(shape), (), ())
    if not isinstance(raw, list) or not raw:
        raise UserDataError(
            f"{where}: 'inputs' must be a non-empty list of columns, "
            '{"array": name, "shape": [...]} or {"image": column, "size": [H, W]}'
        )
    names, offsets, scales = [], [], []
    for i, entry in enumerate(raw):
        at = f"{where}, inputs[{i}]"
        if isinstance(entry, dict):
            _check_keys(entry, INPUT_KEYS, at, required=("column",))
            column = entry["column"]
            offset, scale = _offset_scale(entry, at)
        else:
            column, offset, scale = entry, 0.0, 1.0
        if not isinstance(column, str) or not column:
            raise UserDataError(
                f"{at}: an input is a column name or "
                f'{{"column": name, "offset": o, "scale": s}}, got {entry!r}'
            )
        names.append(column)
        offsets.append(offset)
        scales.append(scale)
    dupes = sorted({c for c in names if names.count(c) > 1})
    if dupes:
        raise UserDataError(f"{where}: 'inputs' lists columns {dupes} more than once")
    return _Inputs(tuple(names), None, (len(names),), tuple(offsets), tuple(scales))


def _parse_image(raw: dict, where: str) -> ImageInput:
    """`{"image": column, "size": [H, W], "channels": 1 or 3, "mean": m, "std": s}`; `mean`
    and `std` are one number or one per channel (defaults 0 and 1: pixels in [0, 1])."""
    _check_keys(raw, IMAGE_INPUT_KEYS, where, required=("image",))
    column = raw["image"]
    if not isinstance(column, str) or not column:
        raise UserDataError(f"{where}: 'image' must be a column name (string), got {column!r}")
    size = raw.get("size")
    if size is not None and not (
        isinstance(size, list)
        and len(size) == 2
        and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in size)
    ):
        raise UserDataError(
            f"{where}: 'size' must be [height, width] in pixels (positive integers), got {size!r}"
        )
    channels = raw.get("channels", 3)
    if channels not in IMAGE_CHANNELS or isinstance(channels, bool):
        raise UserDataError(
            f"{where}: 'channels' must be one of {list(IMAGE_CHANNELS)} (grey or RGB), "
            f"got {channels!r}"
        )
    stats = {}
    for key, default in (("mean", 0.0), ("std", 1.0)):
        value = raw.get(key, default)
        values = value if isinstance(value, list) else [value] * channels
        if len(values) != channels or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            for v in values
        ):
            raise UserDataError(
                f"{where}: '{key}' must be a number or a list of {channels} numbers (one per "
                f"channel), got {value!r}"
            )
        stats[key] = tuple(float(v) for v in values)
    if min(stats["std"]) <= 0:
        raise UserDataError(f"{where}: every 'std' must be > 0, got {list(stats['std'])}")
    return ImageInput(column, tuple(size) if size else None, channels, stats["mean"], stats["std"])


def _offset_scale(raw: dict, where: str) -> tuple[float, float]:
    """`offset` (default 0) and `scale` (default 1, > 0) of an input or regression target."""
    offset, scale = raw.get("offset", 0.0), raw.get("scale", 1.0)
    for key, value in (("offset", offset), ("scale", scale)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserDataError(f"{where}: '{key}' must be a number, got {value!r}")
    if not (math.isfinite(offset) and math.isfinite(scale) and scale > 0):
        raise UserDataError(
            f"{where}: needs a finite 'offset' and a finite 'scale' > 0, got {offset}, {scale}"
        )
    return float(offset), float(scale)


def _parse_task(raw: Any, where: str) -> tuple[TaskSpec, str]:
    if not isinstance(raw, dict):
        raise UserDataError(f"{where}: a task must be a JSON object, got {raw!r}")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise UserDataError(f"{where}: missing required key 'name' (a non-empty string)")
    where = f"{where} ('{name}')"
    kind = raw.get("kind")
    if kind is None:
        raise UserDataError(
            f"{where}: missing required key 'kind'; valid kinds: {list(TASK_KINDS)}"
        )
    if kind not in TASK_KEYS:
        raise UserDataError(f"{where}: unknown kind {kind!r}; valid kinds: {list(TASK_KINDS)}")
    _check_keys(raw, TASK_KEYS[kind], where, required=("name", "kind"))
    column = raw.get("column", name)
    if not isinstance(column, str) or not column:
        raise UserDataError(f"{where}: 'column' must be a column name (string), got {column!r}")
    if kind == "regression":
        offset, scale = _offset_scale(raw, where)
        return TaskSpec(name, "regression", offset=offset, scale=scale), column
    default = 2 if kind == "binary" else None
    k = raw.get("num_classes", default)
    if k is None:
        raise UserDataError(f"{where}: missing required key 'num_classes' (an integer >= 2)")
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise UserDataError(f"{where}: 'num_classes' must be an integer >= 2, got {k!r}")
    if kind == "binary" and k != 2:
        raise UserDataError(f"{where}: a binary task has num_classes 2, got {k}")
    return TaskSpec(name, kind, k), column


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
