"""Dataset `hf`: a Hugging Face data set, local or on the Hub, partitioned by Flower Datasets.

Run config: `hf-dataset` (a Hub name such as `flwrlabs/celeba`, or a local folder or file that
`datasets.load_dataset` reads: parquet, arrow, csv, json, an image folder), `hf-subset` (the
data set's config name), `schema-file` (the task schema of `common.userschema`, whose inputs may
be one image column) and `partitioner`:

- `natural`: one client per value of the schema's `group_by` column (`NaturalIdPartitioner`).
  Flower Datasets numbers them in sorted order of the value: client i holds the i-th smallest
  id. A `num-clients` below the number of ids takes the first `num-clients` of them.
- `dirichlet` / `shards`: label skew on the schema's `partition_by` column (default: the first
  classification task's column).
- `iid`: the rows shuffled with the run seed, then cut into equal shares.

Splits: the schema's `splits` maps train/val/test to the data set's own splits (the rows of
every other split are not used); `split_by` names a column of train/val/test; with neither,
all splits of the data set are pooled and each client splits its own rows (70/15/15,
stratified). A client without val rows carves them from its train rows.

What a client holds: `FederatedDataset.load_partition` gives its rows of the memory-mapped
data set (datasets' Arrow cache, shared by every process on the machine); the client reads
their labels, and decodes its images once, when its splits are taken (resized to `size`,
float32 channels × H × W in [0, 1], then (v - mean) / std). The decoded arrays are the
client's `ClientData`, which the per-process cache and the on-disk data cache
(`common.datacache`, keyed by the data set's files through `data_stamp`) keep, so that a
partition's images are decoded once; nothing else stays. The server reads only the schema
(and, for an image input without `size`, the data set's first image).

`experiments.celeba_like` writes a small data set in `flwrlabs/celeba`'s layout for a run
without internet access.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from common.config import ConfigError, RunConfig
from common.datasets import TEST, TRAIN, VAL, Pool
from common.userdata import Columns, numeric_inputs, pool_from_columns, user_schema
from common.userschema import ImageInput, UserDataError, UserSchema

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict
    from flwr_datasets import FederatedDataset
    from flwr_datasets.partitioner import Partitioner

POOL = "pool"  # the one split the data set's splits are pooled into
SPLIT_COLUMN = "__split__"  # per row: position of its split among the splits used
INDEX_COLUMN = "__index__"  # per row: position in the pool before any shuffling
# `hf-dataset` naming one file: the datasets builder that reads it.
FILE_BUILDERS: dict[str, str] = {
    ".parquet": "parquet",
    ".arrow": "arrow",
    ".csv": "csv",
    ".json": "json",
    ".jsonl": "json",
}
DECODE_BATCH = 64  # images read from Arrow per step: the raw bytes held at once stay small
MIN_DIRICHLET_SIZE = 10  # rows per client that DirichletPartitioner must reach


# --------------------------------------------------------------------------- configuration


def hf_schema(cfg: RunConfig) -> UserSchema:
    """The task schema of an `hf` run; its inputs are one image column or numeric columns."""
    schema = user_schema(cfg)
    if schema.input_array is not None:
        raise UserDataError(
            f"schema file '{schema.path}': 'inputs.array' is for NPZ files (dataset 'user'); "
            'a data set gives {"image": column, "size": [H, W]} or a list of numeric columns'
        )
    return schema


def source(cfg: RunConfig) -> tuple[str, dict[str, str]]:
    """`datasets.load_dataset`'s `path` and extra arguments for `hf-dataset`: a local folder
    or a Hub name as they are, one local file through the builder of its type. A local data
    set gets an Arrow cache of its own, named by its files' sizes and times (`data_stamp`):
    datasets names the cache of a folder whose README declares its configs after the folder
    name and config alone, so two such folders (or a rewritten one) would share a cache."""
    name = cfg.hf_dataset
    if not name:
        raise ConfigError(
            "dataset 'hf' needs run-config key 'hf-dataset': a Hugging Face Hub name (e.g. "
            "flwrlabs/celeba) or a local folder or file that datasets.load_dataset reads"
        )
    path = Path(name).expanduser()
    if path.is_file():
        builder = FILE_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise UserDataError(
                f"data set '{name}': unsupported file type '{path.suffix}'; valid: "
                f"{sorted(FILE_BUILDERS)} (or a folder, or a Hub name)"
            )
        return builder, {"data_files": str(path.resolve()), "cache_dir": _local_cache(cfg)}
    if path.is_dir():
        return str(path.resolve()), {"cache_dir": _local_cache(cfg)}
    if name.startswith(("/", ".", "~")):
        raise UserDataError(f"data set '{name}' (run-config key 'hf-dataset') does not exist")
    return name, {}


def _local_cache(cfg: RunConfig) -> str:
    """datasets' cache folder for this version of a local data set (safe to delete)."""
    from datasets import config

    key = json.dumps(data_stamp(cfg), sort_keys=True).encode()
    return str(
        Path(config.HF_DATASETS_CACHE) / "fedmtl-local" / hashlib.sha256(key).hexdigest()[:16]
    )


def label(cfg: RunConfig) -> str:
    """How messages name the data set."""
    subset = f", subset '{cfg.hf_subset}'" if cfg.hf_subset else ""
    return f"data set '{cfg.hf_dataset}'{subset}"


def data_stamp(cfg: RunConfig) -> dict[str, Any]:
    """What identifies the data of an `hf` run for a cache of prepared client data: for a
    local folder or file, every data file's path, size and modification time; for a Hub name,
    the name and subset (a new revision on the Hub is not seen: clear the cache then)."""
    path = Path(cfg.hf_dataset).expanduser()
    stamp: dict[str, Any] = {"hf-dataset": cfg.hf_dataset, "hf-subset": cfg.hf_subset}
    if path.exists():
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        stamp["files"] = [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    return stamp


# ------------------------------------------------------------------------ the federated set


class _Pooler:
    """`FederatedDataset`'s preprocessor: the splits in use, each row tagged with its split
    and position, pooled into one split (`POOL`) that the partitioner divides; checked
    against the schema before any row is read. `iid` shuffles here, after the tagging, so
    that error messages still name a row by its place in its split."""

    def __init__(self, cfg: RunConfig, schema: UserSchema, shuffle: bool) -> None:
        self.cfg, self.schema, self.shuffle = cfg, schema, shuffle
        self.names: list[str] = []  # the splits used, in pool order
        self.offsets: list[int] = []  # where each starts in the pool (before shuffling)

    def __call__(self, data: DatasetDict) -> DatasetDict:
        from datasets import DatasetDict, concatenate_datasets

        where = label(self.cfg)
        available = list(data)
        wanted = list(self.schema.splits.values()) if self.schema.splits else available
        for key, split in (self.schema.splits or {}).items():
            if split not in data:
                raise UserDataError(
                    f"{where}: schema 'splits' maps '{key}' to split '{split}', which the data "
                    f"set does not have; its splits: {available}"
                )
        parts, offset = [], 0
        for position, split in enumerate(wanted):
            part = data[split]
            part = part.add_column(SPLIT_COLUMN, np.full(len(part), position, np.int8))
            part = part.add_column(INDEX_COLUMN, np.arange(offset, offset + len(part)))
            self.offsets.append(offset)
            offset += len(part)
            parts.append(part)
        self.names = wanted
        try:
            pool = concatenate_datasets(parts)
        except ValueError as err:
            raise UserDataError(
                f"{where}: its splits {wanted} have different columns and cannot be pooled "
                f"({err}); name the splits to use in the schema's 'splits'"
            ) from None
        if len(pool) == 0:
            raise UserDataError(f"{where}: no rows in splits {wanted}: empty data set")
        check_columns(pool, self.schema, self.cfg, where)
        if self.shuffle:
            pool = pool.shuffle(seed=self.cfg.seed)
        return DatasetDict({POOL: pool})

    def marks(self) -> np.ndarray:
        """TRAIN, VAL or TEST for every split position (`splits` in the schema)."""
        split_of = {name: key for key, name in (self.schema.splits or {}).items()}
        mark = {"train": TRAIN, "val": VAL, "test": TEST}
        return np.array([mark[split_of[name]] for name in self.names], np.int8)


def check_columns(pool: Dataset, schema: UserSchema, cfg: RunConfig, where: str) -> None:
    """Every column the schema names exists, and the image column holds images."""
    from datasets import Image, Value

    roles: dict[str, str] = {}
    if schema.image is not None:
        roles[schema.image.column] = "input image"
    roles.update({c: "input" for c in schema.inputs})
    roles.update({schema.columns[t.name]: f"task '{t.name}'" for t in schema.tasks})
    for key in ("partition_by", "group_by", "split_by"):
        column = getattr(schema, key)
        if column is not None:
            roles.setdefault(column, f"schema '{key}'")
    columns = [c for c in pool.column_names if c not in (SPLIT_COLUMN, INDEX_COLUMN)]
    for column, role in roles.items():
        if column not in columns:
            raise UserDataError(
                f"{where}: column '{column}' ({role}) is missing; columns in the data set: "
                f"{columns}"
            )
    if schema.image is not None:
        feature = pool.features[schema.image.column]
        encoded = isinstance(feature, Value) and feature.dtype in ("binary", "large_binary")
        if not (isinstance(feature, Image) or encoded):
            raise UserDataError(
                f"{where}: column '{schema.image.column}' (input image) holds {feature}, not "
                "images; an image column has the datasets Image() feature (or encoded bytes)"
            )


@lru_cache(maxsize=4)
def federated(cfg: RunConfig, num_partitions: int) -> tuple[FederatedDataset, _Pooler]:
    """The run's `FederatedDataset` (one per process and partitioning; the data set itself is
    memory-mapped, so this holds little) and its pooler."""
    from flwr_datasets import FederatedDataset

    schema = hf_schema(cfg)
    path, kwargs = source(cfg)
    pooler = _Pooler(cfg, schema, shuffle=cfg.partitioner == "iid" and num_partitions > 1)
    fds = FederatedDataset(
        dataset=path,
        subset=cfg.hf_subset or None,
        partitioners={POOL: _partitioner(cfg, schema, num_partitions)},
        preprocessor=pooler,
        shuffle=False,  # the pooler shuffles for iid, after tagging each row
        **kwargs,
    )
    try:
        fds.load_split(POOL)  # load now, so that a missing or unreadable set fails here
    except (UserDataError, ConfigError):
        raise
    except Exception as err:  # datasets raises many kinds: not found, offline, bad files
        raise UserDataError(
            f"{label(cfg)} (run-config key 'hf-dataset') could not be loaded by "
            f"datasets.load_dataset: {type(err).__name__}: {err}"
        ) from err
    return fds, pooler


def _partitioner(cfg: RunConfig, schema: UserSchema, num_partitions: int) -> Partitioner | int:
    from flwr_datasets.partitioner import (
        DirichletPartitioner,
        NaturalIdPartitioner,
        ShardPartitioner,
    )

    if num_partitions == 1:
        return 1  # one node, all of the data set: nothing to partition
    if cfg.partitioner == "natural":
        if schema.group_by is None:
            raise ConfigError(
                f"partitioner 'natural' needs the schema's 'group_by' (the column of natural "
                f"client ids, e.g. celeb_id); schema file '{schema.path}' has none"
            )
        return NaturalIdPartitioner(partition_by=schema.group_by)
    if cfg.partitioner == "iid":
        return num_partitions  # Flower Datasets' IidPartitioner, on the shuffled pool
    column = schema.partition_by or next(
        (schema.columns[t.name] for t in schema.tasks if t.is_classification), None
    )
    if column is None:
        raise ConfigError(
            f"partitioner '{cfg.partitioner}' skews a label: give the schema a 'partition_by' "
            "column (it has no classification task to default to)"
        )
    if cfg.partitioner == "dirichlet":
        return DirichletPartitioner(
            num_partitions=num_partitions,
            partition_by=column,
            alpha=cfg.dirichlet_alpha,
            min_partition_size=MIN_DIRICHLET_SIZE,
            self_balancing=True,
            seed=cfg.seed,
        )
    return ShardPartitioner(
        num_partitions=num_partitions,
        partition_by=column,
        num_shards_per_partition=cfg.shards_per_client,
        seed=cfg.seed,
    )


def _rows_of(cfg: RunConfig, partition_id: int, num_partitions: int) -> Dataset:
    """One partition's rows of the pool (all of it for a single partition)."""
    fds, _ = federated(cfg, num_partitions)
    if num_partitions == 1:
        return fds.load_split(POOL)
    partitioner = fds.partitioners[POOL]
    available = partitioner.num_partitions
    if cfg.partitioner == "natural" and num_partitions > available:
        raise ConfigError(
            f"{label(cfg)} has {available} natural clients (distinct values of "
            f"'{hf_schema(cfg).group_by}'); num-clients = {num_partitions} is more"
        )
    try:
        return fds.load_partition(partition_id)
    except ValueError as err:  # e.g. Dirichlet cannot reach its minimum partition size
        raise ConfigError(
            f"partitioner '{cfg.partitioner}' cannot make {num_partitions} partitions of "
            f"{label(cfg)}: {err}"
        ) from None


# ------------------------------------------------------------------------------ the pools


def client_pool(cfg: RunConfig, partition_id: int, num_partitions: int) -> Pool:
    """One client's partition as a `Pool`: labels and splits read, images decoded only when
    indexed (`ImageRows`)."""
    return _pool(cfg, _rows_of(cfg, partition_id, num_partitions), num_partitions)


def hf_pool(cfg: RunConfig) -> Pool:
    """The whole data set as one `Pool` (a node whose data set is all its own data). Its
    images are decoded only when indexed."""
    return _pool(cfg, _rows_of(cfg, 0, 1), 1)


def partition_rows(cfg: RunConfig, num_partitions: int) -> tuple[np.ndarray, ...]:
    """Every partition's rows as indices into `hf_pool`, read from the pool's index column:
    the same partitions that `client_pool` loads."""
    if num_partitions == 1:
        return (np.arange(len(_rows_of(cfg, 0, 1))),)
    return tuple(
        np.asarray(_rows_of(cfg, i, num_partitions).with_format("numpy")[INDEX_COLUMN][:])
        for i in range(num_partitions)
    )


def _pool(cfg: RunConfig, rows: Dataset, num_partitions: int) -> Pool:
    schema = hf_schema(cfg)
    _, pooler = federated(cfg, num_partitions)
    cols = _columns(rows, label(cfg), pooler)
    if schema.image is not None:
        x: Any = ImageRows(rows, schema.image, image_size(cfg), cols)
    else:
        x = numeric_inputs(cols, schema)
    # Natural clients come from the partitioner; the pool needs no group codes of its own.
    pool = pool_from_columns(cols, dataclasses.replace(schema, group_by=None), x)
    if schema.splits is not None:
        pool.fixed_split = pooler.marks()[cols.get(SPLIT_COLUMN, "split")]
    return pool


def _columns(rows: Dataset, where: str, pooler: _Pooler) -> Columns:
    """The rows' columns for `common.userdata`'s checks; a row is named by its split and its
    index there, as `datasets` numbers it."""
    tags = rows.select_columns([SPLIT_COLUMN, INDEX_COLUMN]).with_format("numpy")[:]
    split, index = tags[SPLIT_COLUMN], tags[INDEX_COLUMN]
    table = rows.with_format("arrow")

    def get(column: str, role: str) -> np.ndarray:
        if column not in rows.column_names:
            raise UserDataError(
                f"{where}: column '{column}' ({role}) is missing; columns in the data set: "
                f"{rows.column_names}"
            )
        return table[column].to_numpy(zero_copy_only=False)

    def row(i: int) -> str:
        s = int(split[i])
        return f"split '{pooler.names[s]}', row {int(index[i]) - pooler.offsets[s]}"

    return Columns(source=where, n=len(rows), get=get, row=row, kind="column")


# ----------------------------------------------------------------------------- the images


class ImageRows:
    """The images of some rows, decoded when indexed: `images[idx]` is float32
    (len(idx), channels, H, W), each image converted to grey/RGB, resized to `size` (or
    checked against the data set's first image), scaled to [0, 1] and normalised."""

    def __init__(
        self, rows: Dataset, image: ImageInput, size: tuple[int, int], cols: Columns
    ) -> None:
        from datasets import Image

        self._rows = rows.select_columns([image.column]).cast_column(
            image.column, Image(decode=False)
        )
        self._image, self._size, self._cols = image, size, cols
        self.shape = (len(rows), image.channels, *size)
        self._mean = np.array(image.mean, np.float32).reshape(-1, 1, 1)
        self._std = np.array(image.std, np.float32).reshape(-1, 1, 1)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx, np.int64)
        out = np.empty((len(idx), *self.shape[1:]), np.float32)
        for start in range(0, len(idx), DECODE_BATCH):
            chunk = idx[start : start + DECODE_BATCH]
            cells = self._rows[chunk.tolist()][self._image.column]
            for j, (i, cell) in enumerate(zip(chunk.tolist(), cells, strict=True)):
                out[start + j] = self._decode(i, cell)
        return out

    def _decode(self, i: int, cell: dict | None) -> np.ndarray:
        where = f"{self._cols.source}, {self._cols.row(i)}, column '{self._image.column}'"
        pixels = decode_image(cell, self._image, self._size, where)
        return (pixels - self._mean) / self._std


def decode_image(
    cell: dict | None, image: ImageInput, size: tuple[int, int], where: str
) -> np.ndarray:
    """One stored image ({"bytes", "path"}) as float32 (channels, H, W) in [0, 1]: resized to
    `size` when the schema gives one, else checked against it."""
    import PIL.Image

    img = _open_image(cell, image.channels, where)
    height, width = size
    if image.size is not None:
        img = img.resize((width, height), PIL.Image.Resampling.BILINEAR)
    elif img.size != (width, height):
        raise UserDataError(
            f"{where}: the image is {img.size[1]}x{img.size[0]} (HxW) but the data set's "
            f"first image is {height}x{width}; images of different sizes need 'size': "
            "[H, W] in the schema's inputs (every image is resized to it)"
        )
    pixels = np.asarray(img, np.float32) / 255.0
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def _open_image(cell: dict | None, channels: int, where: str) -> Any:
    """A stored image as a PIL image in grey (1 channel) or RGB (3)."""
    import PIL.Image

    data = cell.get("bytes") if cell else None
    path = cell.get("path") if cell else None
    if data is None and not path:
        raise UserDataError(f"{where}: missing image; fill or drop the row")
    try:
        with PIL.Image.open(io.BytesIO(data) if data is not None else path) as img:
            return img.convert("RGB" if channels == 3 else "L")
    except (OSError, SyntaxError, ValueError) as err:  # what PIL raises for a bad image
        raise UserDataError(f"{where}: not a readable image ({err})") from None


def image_size(cfg: RunConfig) -> tuple[int, int]:
    """(H, W) of every decoded image: the schema's `size`, else the first image's size."""
    image = hf_schema(cfg).image
    assert image is not None
    return image.size if image.size is not None else _first_image_size(cfg)


@lru_cache(maxsize=4)
def _first_image_size(cfg: RunConfig) -> tuple[int, int]:
    """(H, W) of the first image of the first split used, read by streaming that one row:
    how the server learns the input shape when the schema gives no `size`."""
    from datasets import Image, load_dataset

    schema = hf_schema(cfg)
    assert schema.image is not None
    column = schema.image.column
    path, kwargs = source(cfg)
    try:
        stream = load_dataset(path, name=cfg.hf_subset or None, streaming=True, **kwargs)
        split = schema.splits["train"] if schema.splits else next(iter(stream))
        rows = stream[split].select_columns([column]).cast_column(column, Image(decode=False))
        cell = next(iter(rows))[column]
    except Exception as err:  # not found, offline, no such column or split, empty
        raise UserDataError(
            f"{label(cfg)}: the schema's image input has no 'size', so the input shape is "
            f"read from the data set's first image, which failed ({type(err).__name__}: "
            f"{err}); set 'size': [H, W] in the schema's inputs"
        ) from err
    where = f"{label(cfg)}, split '{split}', row 0, column '{column}'"
    width, height = _open_image(cell, schema.image.channels, where).size
    return height, width


def hf_input_shape(cfg: RunConfig) -> tuple[int, ...]:
    """The input shape from the schema: (channels, H, W) for images, else (columns,)."""
    schema = hf_schema(cfg)
    if schema.image is not None:
        return (schema.image.channels, *image_size(cfg))
    return (len(schema.inputs),)
