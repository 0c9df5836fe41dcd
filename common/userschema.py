"""The JSON task schema of datasets `user` and `hf`: what the inputs are, which columns are
tasks, how clients are grouped and split.

The schema is metadata, not private: the server reads it (run-config key `schema-file`) to
learn the input shape and build the encoder before any client has answered. Every task that
two schemas name must have the same spec (kind, classes, offset, scale) so that the heads of a
task have one shape everywhere. The format is in `common.userdata`'s docstring (CSV/NPZ) and
`common.hfdata`'s (image inputs, a data set's own splits).

Every error names the schema file and the key, with the valid choices.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.tasks import TaskSpec

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
        raise UserDataError(f"{where}: missing required key 'kind'; valid kinds: {list(TASK_KEYS)}")
    if kind not in TASK_KEYS:
        raise UserDataError(f"{where}: unknown kind {kind!r}; valid kinds: {list(TASK_KEYS)}")
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
