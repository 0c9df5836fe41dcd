"""Penguins: islands as natural clients, each with its own task subset; complete rows only."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from common.config import ConfigError, RunConfig, parse_run_config
from common.datasets import PENGUINS_TASKS, dataset_tasks, input_shape, penguins
from common.federation import load_client_data, partition_indices

# Client order is the sorted island names: Biscoe, Dream, Torgersen. Torgersen has only Adelie
# penguins, so species is no task there.
PLAN = "species,sex,body_mass;species,body_mass;sex,body_mass"


def natural_cfg() -> RunConfig:
    return parse_run_config(
        {"dataset": "penguins", "partitioner": "natural", "num-clients": 3, "plan": PLAN}
    )


def test_three_islands_each_with_a_different_task_subset() -> None:
    cfg = natural_cfg()
    datas = [load_client_data(cfg, i, 3) for i in range(3)]
    assert [d.task_names for d in datas] == [
        ["species", "sex", "body_mass"],
        ["species", "body_mass"],
        ["sex", "body_mass"],
    ]
    sizes = [len(d.train) + len(d.val) + len(d.test) for d in datas]
    assert sizes == [163, 123, 47]  # Biscoe, Dream, Torgersen after dropping incomplete rows
    for d in datas:
        assert d.input_shape == (3,)
        assert min(len(d.train), len(d.val), len(d.test)) > 0


def test_natural_partition_is_the_islands() -> None:
    pool = penguins()
    assert pool.group_names == ["Biscoe", "Dream", "Torgersen"]
    parts = partition_indices(natural_cfg(), 3)
    for i, idx in enumerate(parts):
        assert set(pool.natural_group[idx].tolist()) == {i}
    assert set(pool.y["species"][parts[2]].tolist()) == {0}  # Torgersen: Adelie only


def test_natural_partition_needs_three_clients() -> None:
    cfg = parse_run_config({"dataset": "penguins", "partitioner": "natural", "num-clients": 4})
    with pytest.raises(ConfigError, match="3 natural clients"):
        partition_indices(cfg, 4)


def test_no_missing_values_and_valid_labels() -> None:
    pool = penguins()
    assert len(pool) == 333
    assert pool.x.dtype == np.float32 and np.isfinite(pool.x).all()
    assert np.isfinite(pool.y["body_mass"]).all()
    assert set(pool.y["species"].tolist()) == {0, 1, 2}
    assert set(pool.y["sex"].tolist()) == {0, 1}
    # Fixed standardisation constants give inputs of about zero mean and unit spread.
    assert np.abs(pool.x.mean(axis=0)).max() < 0.2
    assert np.all((pool.x.std(axis=0) > 0.8) & (pool.x.std(axis=0) < 1.2))


def test_sex_is_kept_as_an_attribute_target_for_every_row() -> None:
    pool = penguins()
    assert np.array_equal(pool.extra["sex"], pool.y["sex"])
    cfg = natural_cfg()
    dream = partition_indices(cfg, 3)[1]
    assert "sex" not in load_client_data(cfg, 1, 3).task_names  # Dream does not train sex
    assert set(pool.extra["sex"][dream].tolist()) == {0, 1}  # but an attacker can target it


def test_body_mass_is_learned_normalised_and_reported_in_grams() -> None:
    spec = next(t for t in PENGUINS_TASKS if t.name == "body_mass")
    data = load_client_data(natural_cfg(), 0, 3)
    grams = data.test.y["body_mass"]
    assert grams.min() > 2500 and grams.max() < 6500
    # The normalised target is O(1), so its loss sits beside the classification losses.
    normalised = (grams - spec.offset) / spec.scale
    assert np.abs(normalised).max() < 3.5
    # A perfect normalised output predicts grams exactly; a constant one is off by hundreds.
    exact = spec.predict(torch.tensor(normalised).unsqueeze(-1))
    assert np.allclose(exact, grams, atol=0.5)
    constant = spec.predict(torch.zeros(len(grams), 1))
    mae = spec.metrics(grams, constant)["mae"]
    assert 200 < mae < 1500


def test_shape_and_tasks_are_known_without_reading_the_csv(monkeypatch: pytest.MonkeyPatch) -> None:
    import common.datasets

    monkeypatch.setattr(common.datasets, "penguins", lambda: pytest.fail("read the CSV"))
    cfg = parse_run_config({"dataset": "penguins"})
    assert input_shape(cfg) == (3,)
    assert dataset_tasks(cfg) == ["species", "sex", "body_mass"]


def test_reads_the_bundled_csv_without_pkg_resources(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pkg_resources", None)  # import would fail
    assert len(penguins()) == 333


@pytest.mark.parametrize("partitioner", ["iid", "dirichlet"])
def test_other_partitioners_split_by_species(partitioner: str) -> None:
    cfg = parse_run_config({"dataset": "penguins", "partitioner": partitioner, "plan": PLAN})
    parts = partition_indices(cfg, 6)
    assert sum(len(p) for p in parts) == 333
    assert len(np.unique(np.concatenate(parts))) == 333


def label_mix_distance(labels: np.ndarray, part: np.ndarray, num_classes: int) -> float:
    """Total variation distance between one client's label mix and the pool's."""
    pool_mix = np.bincount(labels, minlength=num_classes) / len(labels)
    client_mix = np.bincount(labels[part], minlength=num_classes) / len(part)
    return float(0.5 * np.abs(client_mix - pool_mix).sum())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_iid_clients_hold_the_pools_species_mix(seed: int) -> None:
    """The CSV is sorted by species; `iid` shuffles with the seed before Flower's
    IidPartitioner cuts contiguous shards, so no client gets one species only."""
    cfg = parse_run_config(
        {"dataset": "penguins", "partitioner": "iid", "num-clients": 3, "seed": seed}
    )
    species = penguins().y["species"]
    for i, part in enumerate(partition_indices(cfg, 3)):
        assert set(species[part].tolist()) == {0, 1, 2}, f"client {i}"
        assert label_mix_distance(species, part, 3) < 0.15, f"client {i}"
