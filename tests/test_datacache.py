"""A client's prepared data on disk (common.datacache): a fresh process reads it back,
memory-mapped, without building anything; a damaged, stale or foreign entry is rebuilt, never
used; the cache key covers every config key the data builders read."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from common import datacache
from common.config import RunConfig, parse_run_config
from common.datacache import DATA_KEYS, MANIFEST, client_data, data_key, digest
from common.federation import ClientData, cached_pool, load_client_data, partition_indices

REPO = Path(__file__).resolve().parent.parent
SMALL = {"num-clients": 3, "samples-per-client": 60}
SAMPLE = REPO / "deploy" / "sample-data"


def _clear_caches() -> None:
    """Forget everything this process built or read: the next call is a fresh process's."""
    for fn in (datacache._cached, load_client_data, cached_pool, partition_indices):
        fn.cache_clear()


def _same(a: ClientData, b: ClientData) -> None:
    assert a.client_id == b.client_id and a.tasks == b.tasks and a.input_shape == b.input_shape
    for split in ("train", "val", "test"):
        x, y = getattr(a, split), getattr(b, split)
        assert x.x.dtype == y.x.dtype and np.array_equal(x.x, y.x)
        assert x.y.keys() == y.y.keys()
        for task in x.y:
            assert x.y[task].dtype == y.y[task].dtype and np.array_equal(x.y[task], y.y[task])


def _entry(cache: Path) -> Path:
    entries = [p for p in cache.iterdir() if not p.name.startswith(".")]
    assert len(entries) == 1, entries
    return entries[0]


def _load(cfg: RunConfig, cache: Path, partition: int = 1) -> ClientData:
    _clear_caches()
    return client_data(cfg, partition, cfg.num_clients, cache_dir=cache)


def _fresh(cfg: RunConfig, partition: int = 1) -> ClientData:
    _clear_caches()
    return load_client_data(cfg, partition, cfg.num_clients)


FRESH_PROCESS = """
import json, sys
import numpy as np
from pathlib import Path
from common.config import parse_run_config
from common.datacache import client_data
cfg = parse_run_config(json.loads(sys.argv[1]))
data = client_data(cfg, 1, cfg.num_clients, cache_dir=Path(sys.argv[2]))
heavy = sorted(m for m in ("sklearn", "datasets", "flwr_datasets") if m in sys.modules)
print(json.dumps({
    "memmap": isinstance(data.train.x, np.memmap),
    "heavy": heavy,
    "x": float(np.asarray(data.train.x, dtype=np.float64).sum()),
}))
"""


def test_a_fresh_process_reads_the_cached_data_memory_mapped_without_building(
    tmp_path: Path,
) -> None:
    cfg = parse_run_config(SMALL)
    built = _load(cfg, tmp_path)
    assert (_entry(tmp_path) / MANIFEST).exists()
    out = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, json.dumps(SMALL), str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    got = json.loads(out.stdout.strip().splitlines()[-1])
    # Built here, it would have imported scikit-learn (digits) and flwr-datasets (partitions).
    assert got == {"memmap": True, "heavy": [], "x": float(built.train.x.sum(dtype=np.float64))}


@pytest.mark.parametrize("damage", ["truncate", "flip-a-byte", "extra-file", "no-manifest"])
def test_a_damaged_entry_is_rebuilt_never_used(tmp_path: Path, damage: str) -> None:
    cfg = parse_run_config(SMALL)
    truth = _fresh(cfg)
    _load(cfg, tmp_path)
    entry = _entry(tmp_path)
    target = entry / "train.x.npy"
    raw = bytearray(target.read_bytes())
    if damage == "truncate":
        target.write_bytes(raw[: len(raw) - 64])
    elif damage == "flip-a-byte":  # same size, one value changed: only the hash sees it
        raw[-5] ^= 0xFF
        target.write_bytes(bytes(raw))
    elif damage == "extra-file":
        (entry / "train.y9.npy").write_bytes(b"stray")
    else:
        (entry / MANIFEST).unlink()
    _same(_load(cfg, tmp_path), truth)
    # Rebuilt in place: the entry reads back whole again.
    assert datacache.read_entry(entry, json.loads((entry / MANIFEST).read_text())["key"])


def test_a_manifest_for_another_key_is_not_used(tmp_path: Path) -> None:
    """An entry whose manifest names another key (a copied directory, a digest clash) is
    stale for this one."""
    cfg = parse_run_config(SMALL)
    other = parse_run_config({**SMALL, "seed": 1})
    _load(other, tmp_path)
    entry = _entry(tmp_path)
    mine = tmp_path / digest(data_key(cfg, 1, cfg.num_clients, None, ""))
    entry.rename(mine)
    _same(_load(cfg, tmp_path), _fresh(cfg))


def test_a_changed_config_key_or_partition_gets_its_own_entry(tmp_path: Path) -> None:
    cfg = parse_run_config(SMALL)
    _load(cfg, tmp_path)
    for changed in ({"seed": 3}, {"dirichlet-alpha": 5.0}, {"samples-per-client": 80}):
        other = parse_run_config({**SMALL, **changed})
        _same(_load(other, tmp_path), _fresh(other))
    _same(_load(cfg, tmp_path, partition=2), _fresh(cfg, partition=2))
    assert len([p for p in tmp_path.iterdir() if not p.name.startswith(".")]) == 5
    # Keys that do not decide the data share the entry.
    _load(parse_run_config({**SMALL, "lr": 0.5, "local-epochs": 9}), tmp_path)
    assert len([p for p in tmp_path.iterdir() if not p.name.startswith(".")]) == 5


def test_a_changed_data_file_is_read_anew(tmp_path: Path) -> None:
    data = tmp_path / "site.csv"
    rows = (SAMPLE / "site-a.csv").read_text().splitlines()
    data.write_text("\n".join(rows) + "\n")
    overrides = {
        "dataset": "user",
        "num-clients": 1,
        "min-nodes": 1,
        "partitioner": "iid",
        "data-file": str(data),
        "schema-file": str(SAMPLE / "site-a.schema.json"),
    }
    cfg = parse_run_config(overrides)
    cache = tmp_path / "cache"
    first = _load(cfg, cache, partition=0)
    _same(first, _fresh(cfg, partition=0))
    data.write_text("\n".join(rows[: len(rows) - 5]) + "\n")  # five rows fewer
    second = _load(cfg, cache, partition=0)
    _same(second, _fresh(cfg, partition=0))
    assert len(second.train) + len(second.val) + len(second.test) == len(rows) - 1 - 5


def _read_keys(cfg: RunConfig, partitions: int) -> set[str]:
    """Run-config keys that building every partition of `cfg` reads (data builders only)."""
    seen: set[str] = set()
    builders = {str(Path(datacache.__file__).parent / name) for name in datacache.SOURCES}
    fields = set(RunConfig.__dataclass_fields__)
    plain = object.__getattribute__

    def recording(self: RunConfig, name: str):  # type: ignore[no-untyped-def]
        caller = sys._getframe(1).f_code.co_filename
        if name in fields and caller in builders:
            seen.add(name.replace("_", "-"))
        return plain(self, name)

    _clear_caches()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(RunConfig, "__getattribute__", recording)
        for partition in range(partitions):
            load_client_data(cfg, partition, partitions)
    _clear_caches()
    return seen


def test_the_cache_key_holds_every_config_key_the_data_builders_read() -> None:
    user = {
        "dataset": "user",
        "data-file": str(SAMPLE / "site-a.csv"),
        "schema-file": str(SAMPLE / "site-a.schema.json"),
    }
    configs = [
        ({"partitioner": "dirichlet", "plan": "left;right,sum"}, 3),
        ({"partitioner": "iid"}, 3),
        ({"partitioner": "shards"}, 3),
        ({"dataset": "synthcorr", "synth-correlation": 0.2}, 3),
        ({"dataset": "penguins", "partitioner": "natural"}, 3),
        ({**user, "partitioner": "iid"}, 1),
    ]
    read: set[str] = set()
    for overrides, partitions in configs:
        read |= _read_keys(parse_run_config({**SMALL, **overrides}), partitions)
    assert {"dataset", "seed", "partitioner", "data-file"} <= read  # the recorder works
    assert read <= set(DATA_KEYS), f"the cache key misses {sorted(read - set(DATA_KEYS))}"
    assert set(DATA_KEYS) <= set(RunConfig().to_dict())
