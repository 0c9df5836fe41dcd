"""Datasets, partitioners, plans and splits."""

from __future__ import annotations

import numpy as np
import pytest

from common.config import parse_run_config
from common.federation import load_client_data, partition_indices


@pytest.mark.parametrize("partitioner", ["iid", "dirichlet", "shards"])
def test_partitions_cover_every_example_once_and_are_deterministic(partitioner: str) -> None:
    cfg = parse_run_config({"partitioner": partitioner, "samples-per-client": 100})
    parts = partition_indices(cfg, 6)
    allidx = np.concatenate(parts)
    assert len(allidx) == len(set(allidx.tolist()))
    if partitioner != "shards":  # shards may drop a remainder that does not fill a shard
        assert len(allidx) == 600
    again = partition_indices.__wrapped__(cfg, 6)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))


def test_dirichlet_skews_labels_more_at_small_alpha() -> None:
    from common.federation import cached_pool

    def skew(alpha: float) -> float:
        cfg = parse_run_config({"dirichlet-alpha": alpha, "samples-per-client": 200})
        pool = cached_pool(cfg, 6)
        shares = []
        for idx in partition_indices(cfg, 6):
            counts = np.bincount(pool.partition_by[idx], minlength=10) / len(idx)
            shares.append(counts.max())
        return float(np.mean(shares))

    assert skew(0.1) > skew(5.0) + 0.2


def test_clients_hold_heterogeneous_task_sets_with_disjoint_splits() -> None:
    cfg = parse_run_config({})
    datas = [load_client_data(cfg, i, 6) for i in range(6)]
    task_sets = {tuple(d.task_names) for d in datas}
    assert len(task_sets) >= 3
    kinds = {t.kind for d in datas for t in d.tasks}
    assert {"multiclass", "regression"} <= kinds
    for d in datas:
        rows = [tuple(map(bytes, s.x.reshape(len(s.x), -1))) for s in (d.train, d.val, d.test)]
        assert len(d.train) > 0 and len(d.val) > 0 and len(d.test) > 0
        assert not set(rows[0]) & set(rows[2]), "a training example reappears in test"


def test_multidigits_labels_are_consistent() -> None:
    from common.datasets import multidigits

    pool = multidigits(500, seed=3)
    assert np.array_equal(pool.y["sum"], pool.y["left"] + pool.y["right"])
    assert np.array_equal(pool.y["parity"], (pool.y["left"] + pool.y["right"]) % 2)
    assert 0.03 < pool.y["equal"].mean() < 0.3
    assert pool.x.shape == (500, 8, 16)


def test_synthcorr_correlation_parameter_controls_task_relatedness() -> None:
    from common.datasets import synthcorr

    def corr(rho: float) -> float:
        pool = synthcorr(4000, seed=0, num_tasks=4, correlation=rho)
        return float(np.corrcoef(pool.y["t0"], pool.y["t2"])[0, 1])

    assert corr(0.9) > corr(0.1) + 0.3


def _digit_image_ids(x: np.ndarray) -> set[int]:
    """Indices, in scikit-learn's digits set, of the left and right images of every pair
    (the set has no two identical images, so pixels identify an image)."""
    from sklearn.datasets import load_digits

    images = (load_digits().images / 16.0).astype(np.float32)
    index = {image.tobytes(): i for i, image in enumerate(images)}
    halves = np.concatenate([x[:, :, :8], x[:, :, 8:]])
    return {index[np.ascontiguousarray(half).tobytes()] for half in halves}


def test_multidigits_train_validation_and_test_share_no_digit_image() -> None:
    """Validation pairs are built from their own digit images, like test pairs: model
    selection on validation never scores an image that any client trains on."""
    cfg = parse_run_config({"samples-per-client": 200})
    datas = [load_client_data(cfg, i, 6) for i in range(6)]
    for d in datas:
        train, val, test = (_digit_image_ids(s.x) for s in (d.train, d.val, d.test))
        assert not train & val, f"client {d.client_id}: training images reappear in validation"
        assert not train & test, f"client {d.client_id}: training images reappear in test"
        assert not val & test, f"client {d.client_id}: validation images reappear in test"
    # Across the federation too: the shared encoder trains on every client's training images.
    train = set().union(*(_digit_image_ids(d.train.x) for d in datas))
    held = set().union(*(_digit_image_ids(np.concatenate([d.val.x, d.test.x])) for d in datas))
    assert not train & held


@pytest.mark.parametrize("partitioner", ["dirichlet", "shards"])
def test_multidigits_splits_keep_each_clients_label_mix(partitioner: str) -> None:
    """Every client's validation and test splits hold about 15 % of each of its left digits
    (to within two pairs), however label-skewed the client is."""
    cfg = parse_run_config(
        {"partitioner": partitioner, "samples-per-client": 300, "plan": "left,right"}
    )
    for i in range(6):
        d = load_client_data(cfg, i, 6)
        labels = np.concatenate([d.train.y["left"], d.val.y["left"], d.test.y["left"]])
        held_labels = np.unique(labels)
        counts = np.bincount(labels, minlength=10)
        assert 0.62 < len(d.train) / len(labels) < 0.78
        for name, split in (("val", d.val), ("test", d.test)):
            got = np.bincount(split.y["left"], minlength=10)
            off = np.abs(got - 0.15 * counts)[held_labels]
            assert off.max() <= 2.0, f"client {i} {name}: {got.tolist()} of {counts.tolist()}"
