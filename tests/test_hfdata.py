"""Dataset `hf`: a Hugging Face data set (here generated in `flwrlabs/celeba`'s layout, offline)
partitioned by Flower Datasets; clients load only their own rows and decode their images once.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import pyarrow.parquet as pq
import pytest

from common.config import ConfigError, RunConfig, parse_run_config
from common.datasets import dataset_tasks, input_shape
from common.federation import load_client_data, partition_indices
from common.userdata import UserDataError, load_schema
from experiments.celeba_like import (
    CELEBA_ATTRIBUTES,
    CELEBA_LIKE_ATTRIBUTES,
    CELEBA_SUBSET,
    celeba_like_schema,
    write_celeba_like,
)

ROOT = Path(__file__).resolve().parent.parent
IDENTITIES, IMAGES = 6, 40


def write_schema(folder: Path, schema: dict[str, Any], name: str = "schema.json") -> Path:
    path = folder / name
    path.write_text(json.dumps(schema))
    return path


def hf_config(data: Path | str, schema: Path, **extra: Any) -> RunConfig:
    subset = {"hf-subset": CELEBA_SUBSET} if (Path(data) / "README.md").exists() else {}
    return parse_run_config(
        {
            "dataset": "hf",
            "hf-dataset": str(data),
            "schema-file": str(schema),
            "partitioner": "natural",
            "num-clients": IDENTITIES,
            "encoder": "cnn",
            "min-nodes": 1,
            **subset,
            **extra,
        }
    )


@pytest.fixture(scope="module")
def celeba(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A CelebA-like set (6 identities x 40 images, 32x32 RGB, 5 attributes) and its schema."""
    folder = tmp_path_factory.mktemp("celeba")
    data = write_celeba_like(folder / "data", IDENTITIES, IMAGES, seed=3)
    return data, write_schema(folder, celeba_like_schema())


def parquet_rows(data: Path, split: str = "train") -> dict[str, list]:
    return pq.read_table(data / CELEBA_SUBSET / f"{split}-00000-of-00001.parquet").to_pydict()


def decoded(cell: dict) -> np.ndarray:
    """An image as the client should see it: RGB, [0, 1], channels first."""
    pixels = np.asarray(PIL.Image.open(io.BytesIO(cell["bytes"])).convert("RGB"), np.float32)
    return (pixels / 255.0).transpose(2, 0, 1)


def row_keys(x: np.ndarray) -> list[bytes]:
    """Each row of decoded images as bytes: a row's identity, whatever the order."""
    return sorted(np.ascontiguousarray(r).tobytes() for r in x)


def all_rows(data: Any) -> np.ndarray:
    return np.concatenate([data.train.x, data.val.x, data.test.x])


# ------------------------------------------------------------------ partitions and images


def test_natural_clients_are_the_identities_in_sorted_order(celeba: tuple[Path, Path]) -> None:
    """Client i holds every image of the i-th smallest celeb_id (Flower Datasets sorts the
    ids; the file holds them interleaved), decoded exactly (RGB, [0, 1], channels first)."""
    data, schema = celeba
    cfg = hf_config(data, schema)
    rows = parquet_rows(data)
    ids = np.array(rows["celeb_id"])
    assert ids[0] != ids.min(), "the generated rows should not start with the smallest id"
    for client, celeb in enumerate(sorted(set(ids.tolist()))):
        expected = [decoded(rows["image"][i]) for i in np.flatnonzero(ids == celeb)]
        mine = load_client_data(cfg, client, IDENTITIES)
        assert mine.input_shape == (3, 32, 32) and mine.train.x.dtype == np.float32
        assert row_keys(all_rows(mine)) == row_keys(np.stack(expected))
        assert mine.task_names == list(CELEBA_LIKE_ATTRIBUTES)
        assert set(mine.train.y["Male"].tolist()) == {rows["Male"][ids.tolist().index(celeb)]}


@pytest.mark.parametrize(("partitioner", "clients"), [("iid", 3), ("dirichlet", 2)])
def test_partitions_cover_every_row_once(
    celeba: tuple[Path, Path], partitioner: str, clients: int
) -> None:
    data, schema = celeba
    cfg = hf_config(data, schema, partitioner=partitioner, **{"num-clients": clients})
    parts = partition_indices(cfg, clients)
    assigned = np.sort(np.concatenate(parts))
    assert np.array_equal(assigned, np.arange(IDENTITIES * IMAGES))
    sizes = [len(all_rows(load_client_data(cfg, i, clients))) for i in range(clients)]
    assert sizes == [len(p) for p in parts]


def test_a_subset_of_identities_is_the_first_ones(celeba: tuple[Path, Path]) -> None:
    """num-clients below the number of identities: the first identities, in id order."""
    data, schema = celeba
    full, part = hf_config(data, schema), hf_config(data, schema, **{"num-clients": 2})
    for client in range(2):
        assert row_keys(all_rows(load_client_data(part, client, 2))) == row_keys(
            all_rows(load_client_data(full, client, IDENTITIES))
        )


def test_local_sets_in_same_named_folders_and_rewritten_sets_are_read_afresh(
    tmp_path: Path,
) -> None:
    """datasets names the Arrow cache of a folder whose README declares its configs after
    the folder name and config alone; each local data set gets a cache of its own."""
    schema = write_schema(tmp_path, celeba_like_schema())
    first = write_celeba_like(tmp_path / "a" / "data", 2, 6, seed=1)
    second = write_celeba_like(tmp_path / "b" / "data", 2, 6, seed=2)

    def images(data: Path) -> list[bytes]:
        cfg = hf_config(data, schema, **{"num-clients": 1})
        return row_keys(all_rows(load_client_data(cfg, 0, 1)))

    def expected(data: Path) -> list[bytes]:
        return row_keys(np.stack([decoded(c) for c in parquet_rows(data)["image"]]))

    assert images(first) == expected(first)
    assert images(second) == expected(second)
    write_celeba_like(first, 2, 6, seed=3)  # rewritten in place
    load_client_data.cache_clear()
    from common.hfdata import federated

    federated.cache_clear()
    assert images(first) == expected(first)


def forget_everything() -> None:
    """Clear every in-process cache of the data path: the next load is a fresh process's."""
    from common import datacache, hfdata
    from common.federation import cached_pool

    for fn in (datacache._cached, load_client_data, cached_pool, partition_indices):
        fn.cache_clear()
    hfdata.federated.cache_clear()
    hfdata._first_image_size.cache_clear()


def identity_images(data: Path, k: int) -> list[bytes]:
    """The decoded images of the k-th smallest identity: natural client k's rows."""
    rows = parquet_rows(data)
    celeb = sorted(set(rows["celeb_id"]))[k]
    chosen = [
        decoded(c) for c, i in zip(rows["image"], rows["celeb_id"], strict=True) if i == celeb
    ]
    return row_keys(np.stack(chosen))


def test_the_data_cache_decodes_a_partition_once_and_sees_a_rewritten_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through `common.datacache`: a fresh process reads a client's decoded images from disk
    without decoding any image; a data set rewritten in place gets a new entry, never the
    old images."""
    from common import datacache, hfdata

    data = write_celeba_like(tmp_path / "data", 2, 8, seed=1)
    cfg = hf_config(data, write_schema(tmp_path, celeba_like_schema()), **{"num-clients": 2})
    cache = tmp_path / "cache"

    def load() -> Any:
        forget_everything()
        return datacache.client_data(cfg, 1, 2, cache_dir=cache)

    first = load()
    assert row_keys(all_rows(first)) == identity_images(data, 1)
    with monkeypatch.context() as patch:
        patch.setattr(hfdata, "decode_image", lambda *a: pytest.fail("an image was decoded"))
        again = load()
    assert isinstance(again.train.x, np.memmap)
    assert row_keys(all_rows(again)) == row_keys(all_rows(first))
    write_celeba_like(data, 2, 8, seed=2)  # the same folder, other images
    assert row_keys(all_rows(load())) == identity_images(data, 1) != row_keys(all_rows(first))


def test_hf_clients_cache_on_disk_without_a_configured_cache_dir(
    celeba: tuple[Path, Path], tmp_path: Path
) -> None:
    """A node's state-dir, then data-cache-dir, then (dataset hf only) the datasets cache."""
    from datasets import config

    from common.datacache import cache_dir_for

    data, schema = celeba
    cfg = hf_config(data, schema)
    assert cache_dir_for({}, cfg) == Path(config.HF_DATASETS_CACHE) / "fedmtl-clients"
    assert cache_dir_for({"state-dir": str(tmp_path)}, cfg) == tmp_path / "data-cache"
    own = hf_config(data, schema, **{"data-cache-dir": str(tmp_path / "c")})
    assert cache_dir_for({}, own) == tmp_path / "c"
    assert cache_dir_for({}, parse_run_config({"min-nodes": 1})) is None


def test_the_cache_key_holds_every_config_key_the_hf_builders_read(
    celeba: tuple[Path, Path],
) -> None:
    from common.datacache import DATA_KEYS
    from tests.test_datacache import _read_keys

    data, schema = celeba
    read: set[str] = set()
    for partitioner, clients in (("natural", IDENTITIES), ("dirichlet", 2), ("iid", 2)):
        forget_everything()
        cfg = hf_config(data, schema, partitioner=partitioner, **{"num-clients": clients})
        read |= _read_keys(cfg, clients)
    assert {"hf-dataset", "hf-subset", "schema-file", "partitioner"} <= read
    assert read <= set(DATA_KEYS), f"the cache key misses {sorted(read - set(DATA_KEYS))}"


def test_a_nodes_own_hf_dataset_takes_precedence(celeba: tuple[Path, Path], tmp_path: Path) -> None:
    """A deployed node names its own copy of the data set in its node config: the client
    trains on it, whatever the run config's `hf-dataset` says."""
    from flwr.app import Context, RecordDict

    from client.app import open_session
    from common.algorithms import get_algorithm
    from common.records import arrays_from_model, model_shared_keys
    from server.app import initial_model

    data, schema = celeba
    elsewhere = str(tmp_path / "not-on-this-node")
    cfg = hf_config(data, schema, **{"hf-dataset": elsewhere, "data-cache-dir": str(tmp_path)})
    model = initial_model(cfg)
    received = arrays_from_model(model, model_shared_keys(model, get_algorithm(cfg.algorithm)))
    node = {"partition-id": 0, "num-partitions": IDENTITIES, "hf-dataset": str(data)}
    context = Context(
        run_id=1, node_id=1, node_config=node, state=RecordDict(), run_config=cfg.to_dict()
    )
    session = open_session(context, received)
    assert row_keys(all_rows(session.data)) == identity_images(data, 0)


def test_the_server_learns_shape_and_tasks_from_the_schema_alone(tmp_path: Path) -> None:
    """No data set behind the name: reading it would fail, the schema suffices."""
    schema = write_schema(tmp_path, celeba_like_schema(size=(24, 20)))
    cfg = hf_config("nobody/no-such-data-set", schema)
    assert input_shape(cfg) == (3, 24, 20)
    assert dataset_tasks(cfg) == list(CELEBA_LIKE_ATTRIBUTES)


def test_the_shipped_celeba_schema_fits_the_generated_set(celeba: tuple[Path, Path]) -> None:
    """deploy/sample-data/celeba.schema.json: CelebA's 40 attributes as binary tasks over
    images resized to 64x64, clients the celebrities; the generated set has every column it
    names, so the offline run uses the same schema as the real one."""
    shipped = ROOT / "deploy" / "sample-data" / "celeba.schema.json"
    schema = load_schema(shipped)
    assert schema.task_names == list(CELEBA_ATTRIBUTES)
    assert all(t.kind == "binary" for t in schema.tasks)
    assert schema.image is not None and schema.image.column == "image"
    assert schema.group_by == "celeb_id"
    data, _ = celeba
    mine = load_client_data(hf_config(data, shipped), 0, IDENTITIES)
    assert mine.input_shape == (3, 64, 64) and mine.train.x.shape[1:] == (3, 64, 64)
    assert mine.task_names == list(CELEBA_ATTRIBUTES)
    assert float(all_rows(mine).min()) < -0.5  # mean/std 0.5 map [0, 1] to [-1, 1]


def test_without_size_the_shape_is_the_first_images(celeba: tuple[Path, Path]) -> None:
    data, _ = celeba
    no_size = celeba_like_schema()
    del no_size["inputs"]["size"]
    cfg = hf_config(data, write_schema(data.parent, no_size, "no-size.json"))
    assert input_shape(cfg) == (3, 32, 32)
    assert load_client_data(cfg, 0, IDENTITIES).train.x.shape[1:] == (3, 32, 32)


def test_size_resizes_and_mean_std_normalise(celeba: tuple[Path, Path]) -> None:
    data, _ = celeba
    schema = celeba_like_schema(size=(16, 8))
    schema["inputs"].update({"mean": [0.5, 0.5, 0.5], "std": 0.25})
    cfg = hf_config(data, write_schema(data.parent, schema, "small.json"))
    x = all_rows(load_client_data(cfg, 0, IDENTITIES))
    assert x.shape[1:] == (3, 16, 8)
    assert x.min() >= -2.0 - 1e-6 and x.max() <= 2.0 + 1e-6 and x.min() < -1.0


# -------------------------------------------------------------------------- splits


@pytest.fixture(scope="module")
def celeba_splits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The CelebA-like set with its own train/valid/test splits (per identity 70/15/15)."""
    folder = tmp_path_factory.mktemp("celeba-splits")
    return write_celeba_like(folder / "data", IDENTITIES, 20, seed=5, splits=(0.7, 0.15, 0.15))


def rows_of(data: Path, split: str, celeb: int) -> np.ndarray:
    rows = parquet_rows(data, split)
    chosen = [i for i, c in enumerate(rows["celeb_id"]) if c == celeb]
    return np.stack([decoded(rows["image"][i]) for i in chosen])


def test_the_data_sets_own_splits_are_used_as_they_are(celeba_splits: Path) -> None:
    """schema 'splits' = {train, val: valid, test}: every client trains on exactly its rows
    of 'train', selects on 'valid' and reports on 'test'."""
    data = celeba_splits
    schema = write_schema(data.parent, celeba_like_schema(splits=True), "splits.json")
    cfg = hf_config(data, schema)
    ids = sorted(set(parquet_rows(data)["celeb_id"]))
    for client, celeb in enumerate(ids):
        mine = load_client_data(cfg, client, IDENTITIES)
        assert row_keys(mine.train.x) == row_keys(rows_of(data, "train", celeb))
        assert row_keys(mine.val.x) == row_keys(rows_of(data, "valid", celeb))
        assert row_keys(mine.test.x) == row_keys(rows_of(data, "test", celeb))


def test_without_a_val_split_each_client_carves_it_from_train(celeba_splits: Path) -> None:
    data = celeba_splits
    schema = celeba_like_schema()
    schema["splits"] = {"train": "train", "test": "test"}
    cfg = hf_config(data, write_schema(data.parent, schema, "no-val.json"))
    celeb = min(parquet_rows(data)["celeb_id"])
    mine = load_client_data(cfg, 0, IDENTITIES)
    assert row_keys(mine.test.x) == row_keys(rows_of(data, "test", celeb))
    assert len(mine.val) > 0
    assert row_keys(np.concatenate([mine.train.x, mine.val.x])) == row_keys(
        rows_of(data, "train", celeb)
    )


def write_table(path: Path, columns: dict[str, list], image: str | None = None) -> Path:
    """One parquet file of the given columns (`image`: a column of PNG bytes, as Image())."""
    from datasets import Dataset, Image

    table = Dataset.from_dict(columns)
    if image is not None:
        table = table.cast_column(image, Image())
    table.to_parquet(path)
    return path


def test_one_file_with_numeric_inputs_and_a_split_column(tmp_path: Path) -> None:
    """A single parquet file, numeric inputs, a split column and boolean labels: the client
    trains on exactly the 'train' rows and reports on exactly the 'test' rows."""
    n = 30
    split = ["train"] * 18 + ["val"] * 4 + ["test"] * 8
    file = write_table(
        tmp_path / "site.parquet",
        {"rid": list(range(n)), "a": [0.5] * n, "flag": [i % 2 == 0 for i in range(n)]}
        | {"fold": split},
    )
    schema = {
        "inputs": ["rid", "a"],
        "tasks": [{"name": "flag", "kind": "binary"}],
        "split_by": "fold",
    }
    cfg = hf_config(file, write_schema(tmp_path, schema), **{"num-clients": 1})
    mine = load_client_data(cfg, 0, 1)
    assert mine.input_shape == (2,)
    for part, name in ((mine.train, "train"), (mine.val, "val"), (mine.test, "test")):
        expected = [i for i in range(n) if split[i] == name]
        assert sorted(part.x[:, 0].astype(int).tolist()) == expected
        assert part.y["flag"].tolist() == [int(i % 2 == 0) for i in sorted(expected)]


def test_an_image_folder_with_class_subfolders(tmp_path: Path) -> None:
    """datasets' image folder: one subfolder per class gives the `label` column; grey images
    (channels 1) of another size are resized to the schema's `size`."""
    folder = tmp_path / "shapes"
    for label, shade in (("dark", 20), ("light", 230)):
        (folder / label).mkdir(parents=True)
        for i in range(6):
            PIL.Image.new("L", (12, 10), shade + i).save(folder / label / f"{i}.png")
    schema = {
        "inputs": {"image": "image", "size": [8, 8], "channels": 1},
        "tasks": [{"name": "label", "kind": "multiclass", "num_classes": 2}],
    }
    cfg = hf_config(folder, write_schema(tmp_path, schema), **{"num-clients": 1})
    mine = load_client_data(cfg, 0, 1)
    x, y = all_rows(mine), np.concatenate([s.y["label"] for s in (mine.train, mine.val, mine.test)])
    assert x.shape == (12, 1, 8, 8)
    assert sorted(y.tolist()) == [0] * 6 + [1] * 6
    dark = x.reshape(12, -1).mean(axis=1) < 0.5
    assert np.array_equal(dark, y == 0)  # class 0 is 'dark', sorted as datasets names them


# ------------------------------------------------------------------------ bad input


def png(size: tuple[int, int] = (32, 32)) -> dict:
    buffer = io.BytesIO()
    PIL.Image.new("RGB", (size[1], size[0]), (200, 10, 10)).save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def image_set(tmp_path: Path, images: list[Any], **schema_extra: Any) -> RunConfig:
    """A one-file image data set (as Image() unless the values are not dicts) + schema."""
    n = len(images)
    columns = {"image": images, "celeb_id": [1] * n, "Smiling": [i % 2 == 0 for i in range(n)]}
    file = write_table(
        tmp_path / "faces.parquet", columns, "image" if isinstance(images[0], dict) else None
    )
    schema = {
        "inputs": {"image": "image", "size": [32, 32]},
        "tasks": [{"name": "Smiling", "kind": "binary"}],
    } | schema_extra
    return hf_config(file, write_schema(tmp_path, schema), **{"num-clients": 1})


def fails(exc: type[Exception], cfg: RunConfig, *needles: str, clients: int = 1) -> str:
    with pytest.raises(exc) as err:
        load_client_data(cfg, 0, clients)
    message = str(err.value)
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    return message


def test_a_schema_naming_a_missing_column_names_it(celeba: tuple[Path, Path]) -> None:
    data, _ = celeba
    schema = celeba_like_schema()
    schema["tasks"].append({"name": "Freckles", "kind": "binary"})
    cfg = hf_config(data, write_schema(data.parent, schema, "freckles.json"))
    fails(
        UserDataError,
        cfg,
        "column 'Freckles'",
        "task 'Freckles'",
        "missing",
        "'Smiling'",
        clients=6,
    )


def test_a_non_image_column_is_named(tmp_path: Path) -> None:
    cfg = image_set(tmp_path, [7, 8, 9])
    fails(UserDataError, cfg, "faces.parquet", "column 'image'", "int64", "not images")


def test_a_value_that_is_not_an_image_names_its_row(tmp_path: Path) -> None:
    images = [png(), png(), {"bytes": b"not a picture", "path": None}, png()]
    cfg = image_set(tmp_path, images)
    fails(UserDataError, cfg, "split 'train', row 2", "column 'image'", "not a readable image")


def test_a_missing_image_names_its_row(tmp_path: Path) -> None:
    cfg = image_set(tmp_path, [png(), png(), png(), None])
    fails(UserDataError, cfg, "split 'train', row 3", "column 'image'", "missing image")


def test_mixed_image_sizes_without_size_name_the_row_and_the_sizes(tmp_path: Path) -> None:
    images = [png(), png(), png(), png((28, 30)), png()]
    cfg = image_set(tmp_path, images, inputs={"image": "image"})
    assert input_shape(cfg) == (3, 32, 32)  # the first image's
    fails(UserDataError, cfg, "split 'train', row 3", "28x30", "32x32", "'size'")


def test_unknown_split_values_name_the_column_row_value_and_valid_ones(tmp_path: Path) -> None:
    file = write_table(
        tmp_path / "site.parquet",
        {"a": [1.0, 2.0, 3.0], "flag": [True, False, True], "fold": ["train", "tset", "test"]},
    )
    schema = {"inputs": ["a"], "tasks": [{"name": "flag", "kind": "binary"}], "split_by": "fold"}
    cfg = hf_config(file, write_schema(tmp_path, schema), **{"num-clients": 1})
    fails(UserDataError, cfg, "site.parquet", "'fold'", "row 1", "'tset'", "'train', 'val'")


def test_splits_naming_a_split_the_data_set_lacks(celeba: tuple[Path, Path]) -> None:
    data, _ = celeba
    schema = celeba_like_schema(splits=True)
    cfg = hf_config(data, write_schema(data.parent, schema, "bad-splits.json"))
    fails(UserDataError, cfg, "'valid'", "does not have", "['train']", clients=6)


def test_run_config_mistakes_are_named(celeba: tuple[Path, Path], tmp_path: Path) -> None:
    data, schema = celeba
    no_data = parse_run_config({"dataset": "hf", "schema-file": str(schema), "min-nodes": 1})
    fails(ConfigError, no_data, "'hf-dataset'", "flwrlabs/celeba")
    fails(UserDataError, hf_config(tmp_path / "nothing-here", schema), "does not exist")
    fails(ConfigError, hf_config(data, schema, **{"num-clients": 7}), "6 natural", clients=7)
    no_group = celeba_like_schema()
    del no_group["group_by"]
    cfg = hf_config(data, write_schema(tmp_path, no_group))
    fails(ConfigError, cfg, "'natural'", "'group_by'", clients=6)


def test_a_client_without_train_rows_is_named(tmp_path: Path) -> None:
    """Predefined splits that give a natural client only test rows leave it nothing to train
    on (CelebA's official splits are not made per celebrity: pool them instead)."""
    fold = ["train", "train", "test", "test", "test"]
    file = write_table(
        tmp_path / "site.parquet",
        {"a": [1.0] * 5, "flag": [True, False] * 2 + [True], "site": [1, 1, 1, 2, 2]}
        | {"fold": fold},
    )
    schema = {
        "inputs": ["a"],
        "tasks": [{"name": "flag", "kind": "binary"}],
        "split_by": "fold",
        "group_by": "site",
    }
    cfg = hf_config(file, write_schema(tmp_path, schema), **{"num-clients": 2})
    assert len(load_client_data(cfg, 0, 2).train) == 2
    with pytest.raises(ConfigError, match=r"client 1: .* no train rows"):
        load_client_data(cfg, 1, 2)


# ------------------------------------------------------------------------------- memory


def measure_load(
    cfg: RunConfig, partition_id: int, num_partitions: int, warm_partition: int
) -> dict[str, int]:
    """What `load_client_data(cfg, partition_id, num_partitions)` allocates (tracemalloc
    peak, bytes) after `warm_partition` was loaded, as a second virtual client in an actor
    would; with the client's decoded arrays (`decoded`) and row count."""
    import tracemalloc

    load_client_data(cfg, warm_partition, num_partitions)
    tracemalloc.start()
    data = load_client_data(cfg, partition_id, num_partitions)
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    splits = (data.train, data.val, data.test)
    return {
        "rows": sum(len(s) for s in splits),
        "decoded": sum(s.x.nbytes + sum(v.nbytes for v in s.y.values()) for s in splits),
        "traced_peak": traced_peak,
    }


def test_a_client_holds_its_partition_not_the_data_set(tmp_path: Path) -> None:
    """Loading one partition of eight allocates at most twice its decoded size, a fraction
    of the whole set's decoded size (tracemalloc, as a second virtual client in an actor:
    the first loaded before the measurement)."""
    data = write_celeba_like(tmp_path / "data", 8, 60, seed=1)
    cfg = hf_config(data, write_schema(tmp_path, celeba_like_schema()), **{"num-clients": 8})
    one = measure_load(cfg, 1, 8, warm_partition=0)
    assert one["rows"] == 60
    assert one["traced_peak"] <= 2 * one["decoded"], one
    assert one["traced_peak"] * 3 < 8 * one["decoded"], one  # the whole set, decoded


# --------------------------------------------------------------------- a real simulation

# A small config that learns the visible attributes: 28 train images per client, batches of
# 8 at lr 0.02, 3 rounds of 3 local epochs, one full evaluation at the end.
CELEBA_RUN: dict[str, Any] = {
    "num-server-rounds": 3,
    "local-epochs": 3,
    "batch-size": 8,
    "lr": 0.02,
    "hidden": 32,
    "eval-every": 3,
    "audit-received": True,
}


@pytest.fixture(scope="module")
def celeba_run(celeba: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Any:
    from tests.helpers import simulate

    data, schema = celeba
    config = hf_config(data, schema).to_dict()
    keys = ("dataset", "hf-dataset", "hf-subset", "schema-file", "partitioner", "encoder")
    overrides = {k: config[k] for k in keys} | {"num-clients": IDENTITIES} | CELEBA_RUN
    return simulate(tmp_path_factory.mktemp("celeba-run"), **overrides)


@pytest.mark.slow
def test_a_celeba_like_simulation_learns_the_visible_attributes(celeba_run: Any) -> None:
    """Natural clients (6 identities), 5 attribute tasks on 32x32 RGB: every client reports
    every attribute, and the attributes the image shows are learned."""
    summary = celeba_run.summary
    assert summary is not None and summary["status"] == "completed"
    per_client = summary["per_client"]
    assert sorted(per_client) == [str(c) for c in range(IDENTITIES)]
    for client, tasks in per_client.items():
        assert sorted(tasks) == sorted(CELEBA_LIKE_ATTRIBUTES), client
        for task, metrics in tasks.items():
            assert "test/accuracy" in metrics and "val/accuracy" in metrics, (client, task)
    for visible in ("Smiling", "Eyeglasses"):
        accuracy = np.mean([per_client[c][visible]["test/accuracy"] for c in per_client])
        assert accuracy >= 0.8, f"{visible}: mean test accuracy {accuracy:.2f}"


@pytest.mark.slow
def test_no_head_leaves_a_client_on_the_hf_path(celeba_run: Any) -> None:
    lines = (celeba_run.results_dir / "received.jsonl").read_text().splitlines()
    entries = [e for e in map(json.loads, lines) if e["phase"] == "train"]
    assert {e["round"] for e in entries} == set(range(1, CELEBA_RUN["num-server-rounds"] + 1))
    assert len({e["client"] for e in entries}) == IDENTITIES
    for e in entries:
        assert e["records"] == ["arrays"]
        assert all(k.startswith("encoder.") for k in e["keys"]["arrays"]), e["keys"]
