"""One client's prepared data on disk, so that a fresh ClientApp process loads it in
milliseconds instead of rebuilding the pool and re-partitioning it (a deployment starts a
new process for every message).

An entry is a directory `<cache-dir>/<key>/` of `.npy` files (opened memory-mapped,
copy-on-write) and a `manifest.json` that lists every file with its size and SHA-256. The
key is a digest of everything that decides the client's data (`data_key`): the run-config
keys in `DATA_KEYS`, the partition, the number of partitions, the client id and task set,
the size and modification time of the data and schema files, the source of the modules that
build the data and the versions of the libraries they call. An entry is written in a
temporary directory (manifest last) and renamed into place, so a reader sees a whole entry
or none. Every load checks the manifest against the key and every file against its size and
hash; an entry that fails (truncated, altered, stale, half-written) is rebuilt, never used.

Where: a node's `state-dir` (node config) holds its cache under `data-cache/`; otherwise the
run-config key `data-cache-dir`; neither: no disk cache (the in-process cache remains), except
for dataset `hf`, whose decoded images are worth keeping: they go under the Hugging Face
datasets cache (`HF_DATASETS_CACHE`, `fedmtl-clients/`), next to the data set's own Arrow
files, so a partition's images are decoded once per machine. The directory can be deleted at
any time.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import shutil
import tempfile
from dataclasses import asdict
from functools import lru_cache
from importlib import metadata
from logging import WARNING
from pathlib import Path
from typing import Any

import numpy as np
from flwr.common.logger import log

from common.config import RunConfig
from common.federation import ClientData, Split, load_client_data
from common.tasks import TaskSpec

FORMAT = 1
MANIFEST = "manifest.json"
SUBDIR = "data-cache"  # under a node's state dir
HF_SUBDIR = "fedmtl-clients"  # dataset hf without a cache dir: under the datasets cache
# Run-config keys that the data builders read (tests/test_datacache.py checks the list
# against what building every dataset actually reads).
DATA_KEYS: tuple[str, ...] = (
    "dataset",
    "seed",
    "samples-per-client",
    "data-file",
    "schema-file",
    "hf-dataset",
    "hf-subset",
    "partitioner",
    "dirichlet-alpha",
    "shards-per-client",
    "plan",
    "synth-tasks",
    "synth-correlation",
)
# The modules whose code decides the data, and the libraries they call.
SOURCES: tuple[str, ...] = (
    "datasets.py",
    "federation.py",
    "scenes.py",
    "userdata.py",
    "userschema.py",
    "hfdata.py",
    "tasks.py",
)
LIBRARIES: tuple[str, ...] = (
    "numpy",
    "scikit-learn",
    "flwr-datasets",
    "palmerpenguins",
    "datasets",
    "pillow",
)
SPLITS: tuple[str, ...] = ("train", "val", "test")


def cache_dir_for(node_config: Any, cfg: RunConfig) -> Path | None:
    """Where this client's data cache lives: under the node's state dir, else the run
    config's `data-cache-dir`, else (dataset `hf`) under the Hugging Face datasets cache,
    else nowhere."""
    state_dir = str(node_config.get("state-dir", "") or "")
    if state_dir:
        return Path(state_dir) / SUBDIR
    if cfg.data_cache_dir:
        return Path(cfg.data_cache_dir)
    if cfg.dataset == "hf":
        from datasets import config

        return Path(config.HF_DATASETS_CACHE) / HF_SUBDIR
    return None


def client_data(
    cfg: RunConfig,
    partition_id: int,
    num_partitions: int,
    client_id: int | None = None,
    tasks: str = "",
    cache_dir: Path | None = None,
) -> ClientData:
    """`common.federation.load_client_data`, through the disk cache in `cache_dir`."""
    if cache_dir is None:
        return load_client_data(cfg, partition_id, num_partitions, client_id, tasks)
    return _cached(cfg, partition_id, num_partitions, client_id, tasks, str(cache_dir))


@lru_cache(maxsize=64)
def _cached(
    cfg: RunConfig,
    partition_id: int,
    num_partitions: int,
    client_id: int | None,
    tasks: str,
    cache_dir: str,
) -> ClientData:
    key = data_key(cfg, partition_id, num_partitions, client_id, tasks)
    entry = Path(cache_dir) / digest(key)
    data = read_entry(entry, key)
    if data is None:
        data = load_client_data(cfg, partition_id, num_partitions, client_id, tasks)
        write_entry(entry, key, data)
    return data


def data_key(
    cfg: RunConfig, partition_id: int, num_partitions: int, client_id: int | None, tasks: str
) -> dict[str, Any]:
    """Everything the client's data depends on, as JSON-able values."""
    values = cfg.to_dict()
    return {
        "format": FORMAT,
        "config": {k: values[k] for k in DATA_KEYS},
        "partition-id": partition_id,
        "num-partitions": num_partitions,
        "client-id": partition_id if client_id is None else client_id,
        "tasks": tasks,
        "files": {k: _file_stamp(values[k]) for k in ("data-file", "schema-file") if values[k]},
        "hf-data": _hf_stamp(cfg),
        "code": _code_stamp(),
    }


def digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


def _hf_stamp(cfg: RunConfig) -> dict[str, Any] | None:
    """Dataset `hf`: every file of a local data set (path, size, modification time), so that
    a rewritten set gets new entries; a Hub name stands for itself."""
    if cfg.dataset != "hf":
        return None
    from common.hfdata import data_stamp

    return data_stamp(cfg)


def _file_stamp(path: str) -> dict[str, Any]:
    """Size and modification time of a data file (a changed file gets a new entry)."""
    try:
        st = os.stat(path)
    except OSError:
        return {"path": path, "missing": True}  # the build reports the missing file
    return {"path": str(Path(path).resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


@lru_cache(maxsize=1)
def _code_stamp() -> dict[str, str]:
    here = Path(__file__).parent
    h = hashlib.sha256()
    for name in SOURCES:
        h.update((here / name).read_bytes())
    stamp = {"sources": h.hexdigest()[:16]}
    for lib in LIBRARIES:
        try:
            stamp[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            stamp[lib] = "absent"
    return stamp


# --- one entry ---


def _arrays(data: ClientData) -> dict[str, np.ndarray]:
    """File stem -> array; targets are named by task position (task names are free text)."""
    out = {}
    for split in SPLITS:
        part: Split = getattr(data, split)
        out[f"{split}.x"] = part.x
        out |= {f"{split}.y{i}": part.y[t.name] for i, t in enumerate(data.tasks)}
    return out


def write_entry(entry: Path, key: dict[str, Any], data: ClientData) -> None:
    """Write `data` as the entry `entry` (arrays, then the manifest, then one rename). A
    failure to write leaves no entry behind and is not an error: the data are in memory."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
    try:
        files = {}
        for name, array in _arrays(data).items():
            path = tmp / f"{name}.npy"
            np.save(path, np.ascontiguousarray(array), allow_pickle=False)
            files[path.name] = {"size": path.stat().st_size, "sha256": _file_hash(path)}
        manifest = {
            "key": key,
            "client_id": data.client_id,
            "tasks": [asdict(t) for t in data.tasks],
            "input_shape": list(data.input_shape),
            "files": files,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, sort_keys=True))
        if entry.exists():  # a bad entry (read_entry refused it) or one a peer just wrote
            shutil.rmtree(entry, ignore_errors=True)
        os.rename(tmp, entry)
    except OSError as err:
        log(WARNING, "fedmtl | data cache %s not written (%s); the data stay in memory", entry, err)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_entry(entry: Path, key: dict[str, Any]) -> ClientData | None:
    """The entry's data when its manifest matches `key` and every file its size and hash;
    None otherwise (missing, stale or damaged)."""
    try:
        manifest = json.loads((entry / MANIFEST).read_text())
        if manifest["key"] != key:
            return None
        files = manifest["files"]
        on_disk = {p.name for p in entry.iterdir()} - {MANIFEST}
        if on_disk != set(files):
            return None
        for name, expected in files.items():
            path = entry / name
            if path.stat().st_size != expected["size"] or _file_hash(path) != expected["sha256"]:
                return None
        arrays = {name[: -len(".npy")]: _load(entry / name) for name in files}
        return _client_data(manifest, arrays)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _client_data(manifest: dict[str, Any], arrays: dict[str, np.ndarray]) -> ClientData:
    tasks = tuple(TaskSpec(**spec) for spec in manifest["tasks"])
    splits = {
        split: Split(
            x=arrays[f"{split}.x"], y={t.name: arrays[f"{split}.y{i}"] for i, t in enumerate(tasks)}
        )
        for split in SPLITS
    }
    return ClientData(
        client_id=int(manifest["client_id"]),
        tasks=tasks,
        input_shape=tuple(manifest["input_shape"]),
        **splits,
    )


def _load(path: Path) -> np.ndarray:
    """Memory-mapped copy-on-write: writable (torch wants that), writes private to this
    process, pages read on first use."""
    return np.load(path, mmap_mode="c", allow_pickle=False)


def _file_hash(path: Path) -> str:
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return hashlib.sha256(b"").hexdigest()
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as view:
            return hashlib.sha256(view).hexdigest()
