"""Datasets: each builder returns a `Pool` — all examples of a federation, with the
labels of every task, the column that partitioners split by, and the task specs.

Everything but `hf` is generated or read from disk (scikit-learn's digits, the CSV that
`palmerpenguins` ships, generated scenes for the dense tasks, a site's own file for `user`);
nothing is downloaded. `hf` reads a
Hugging Face data set (`common.hfdata`), local or from the Hub; its clients load only their
own partition. Builders are pure functions of their seed and files.
"""

from __future__ import annotations

import csv
import importlib.resources
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

from common.tasks import TaskSpec

if TYPE_CHECKING:
    from common.config import RunConfig


class Rows(Protocol):
    """Inputs that are read when indexed: `rows[idx]` is a float32 array of those rows (the
    images of an `hf` data set are decoded only for the rows a client takes)."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    def __len__(self) -> int: ...

    def __getitem__(self, idx: np.ndarray) -> np.ndarray: ...


@dataclass
class Pool:
    """All examples of a dataset before partitioning.

    `partition_by` is the label that Dirichlet/shard partitioners skew (e.g. the left digit);
    `fixed_split`, where a dataset decides it, is the split of every example (TRAIN, VAL or
    TEST): MultiDigits builds each split's pairs from its own pool of digit images, so no
    image is in two splits; `natural_group` is a natural client id where the data have one
    (Penguins' islands). `x` is an array, or `Rows` read on indexing.
    """

    x: np.ndarray | Rows
    y: dict[str, np.ndarray]
    tasks: list[TaskSpec]
    partition_by: np.ndarray
    fixed_split: np.ndarray | None = None
    natural_group: np.ndarray | None = None
    group_names: list[str] = field(default_factory=list)
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def __len__(self) -> int:
        return len(self.x)


# Values of `Pool.fixed_split`.
TRAIN, VAL, TEST = 0, 1, 2
SYNTH_INPUT_DIM = 16
MULTIDIGITS_TASKS = [
    TaskSpec("left", "multiclass", 10),
    TaskSpec("right", "multiclass", 10),
    TaskSpec("sum", "regression", offset=9.0, scale=4.0),
    TaskSpec("parity", "binary", 2),
    TaskSpec("equal", "binary", 2),
]


def multidigits(
    num_examples: int, seed: int, val_fraction: float = 0.15, test_fraction: float = 0.15
) -> Pool:
    """Pairs of 8x8 digits side by side on an 8x16 canvas.

    The digit images are split into train, validation and test pools first (stratified by
    digit, fixed by the seed alone), and each pair is built within one pool and keeps that
    pool's split, so no image is in two splits: selection on validation never sees a
    training image, and test images are unseen by both. Each left digit gets its split shares
    (about 70/15/15). Tasks: left digit, right digit, sum (regression), parity of the sum,
    and whether both digits are equal (imbalanced, about 19 % positive).
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)
    labels = digits.target.astype(np.int64)
    image_split = _split_images(labels, val_fraction, test_fraction, seed)
    rng = np.random.default_rng(seed)
    left = rng.choice(labels, size=num_examples)  # the digit frequencies of the image set
    split = _stratified_marks(left, val_fraction, test_fraction, rng)
    order = _spread_splits(left, split, rng)
    left, split = left[order], split[order]
    a = np.empty(num_examples, np.int64)
    b = np.empty(num_examples, np.int64)
    for mark in (TRAIN, VAL, TEST):
        rows = np.flatnonzero(split == mark)
        a[rows], b[rows] = _digit_pairs(
            labels, np.flatnonzero(image_split == mark), left[rows], rng
        )
    right = labels[b]
    return Pool(
        x=np.concatenate([images[a], images[b]], axis=2),  # (n, 8, 16)
        y={
            "left": left,
            "right": right,
            "sum": (left + right).astype(np.float32),
            "parity": (left + right) % 2,
            "equal": (left == right).astype(np.int64),
        },
        tasks=list(MULTIDIGITS_TASKS),
        partition_by=left,
        fixed_split=split,
    )


def _split_images(
    labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> np.ndarray:
    """TRAIN, VAL or TEST for every digit image, stratified by digit. A function of the seed
    alone (not of the pool size), so federations of any size built with one seed share it."""
    from sklearn.model_selection import train_test_split

    ids = np.arange(len(labels))
    held_fraction = val_fraction + test_fraction
    _, held = train_test_split(ids, test_size=held_fraction, stratify=labels, random_state=seed)
    _, test = train_test_split(
        held, test_size=test_fraction / held_fraction, stratify=labels[held], random_state=seed
    )
    split = np.full(len(labels), TRAIN, np.int8)
    split[held] = VAL
    split[test] = TEST
    return split


def _stratified_marks(
    label: np.ndarray, val_fraction: float, test_fraction: float, rng: np.random.Generator
) -> np.ndarray:
    """TRAIN, VAL or TEST for every pair: each label gets its rounded validation and test
    shares."""
    split = np.full(len(label), TRAIN, np.int8)
    for value in np.unique(label):
        members = rng.permutation(np.flatnonzero(label == value))
        n_val, n_test = round(val_fraction * len(members)), round(test_fraction * len(members))
        split[members[:n_val]] = VAL
        split[members[n_val : n_val + n_test]] = TEST
    return split


def _spread_splits(label: np.ndarray, split: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An order of the pairs in which each label's train, validation and test pairs are spread
    evenly (and the labels interleaved).

    Flower's Dirichlet and shard partitioners give a client contiguous runs of each label's
    examples in pool order; with each split evenly spaced along every label, any run holds the
    split shares to within about one pair per split, so every client gets about 70/15/15 of
    each of its labels. Each (label, split) group is shuffled and placed at evenly spaced
    positions in [0, 1) with a random phase; sorting by position merges the groups.
    """
    position = np.empty(len(label))
    for value, mark in np.unique(np.stack([label, split], axis=1), axis=0):
        members = rng.permutation(np.flatnonzero((label == value) & (split == mark)))
        position[members] = (np.arange(len(members)) + rng.random()) / len(members)
    return np.argsort(position, kind="stable")


def _digit_pairs(
    labels: np.ndarray, ids: np.ndarray, left: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Image indices, within the image pool `ids`, of pairs whose left digits are `left`."""
    a = np.empty(len(left), np.int64)
    b = rng.choice(ids, size=len(left))
    # One pair in ten is forced to show the same digit twice (and about one in ten of the rest
    # matches by chance), so `equal` is learnable but rare.
    same = rng.random(len(left)) < 0.1
    for digit in np.unique(left):
        of_digit = ids[labels[ids] == digit]
        rows = left == digit
        a[rows] = rng.choice(of_digit, size=int(rows.sum()))
        b[rows & same] = rng.choice(of_digit, size=int((rows & same).sum()))
    return a, b


def synthcorr(
    num_examples: int,
    seed: int,
    num_tasks: int = 4,
    correlation: float = 0.5,
    input_dim: int = SYNTH_INPUT_DIM,
    num_clusters: int = 10,
) -> Pool:
    """MMoE-style synthetic tasks with controlled relatedness (Ma et al. 2018, sec. 4).

    Task weight vectors w_t = c(√ρ·u_0 + √(1-ρ)·u_t) with orthonormal u's have pairwise cosine
    ρ = `correlation`; y_t = w_tᵀx + Σ_k sin(a_k w_tᵀx + b_k) + noise. Even-numbered tasks are
    regression, odd-numbered ones binary (y_t above its median). Inputs come from a mixture of
    Gaussian clusters; the cluster id is what Dirichlet partitioning skews.
    """
    if not 0.0 <= correlation <= 1.0:
        raise ValueError(f"synth-correlation must be in [0, 1], got {correlation}")
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.normal(size=(input_dim, num_tasks + 1)))
    c = 1.0
    w = [
        c * (np.sqrt(correlation) * basis[:, 0] + np.sqrt(1 - correlation) * basis[:, t + 1])
        for t in range(num_tasks)
    ]
    centers = rng.normal(scale=1.0, size=(num_clusters, input_dim))
    cluster = rng.integers(0, num_clusters, size=num_examples)
    x = (centers[cluster] + rng.normal(size=(num_examples, input_dim))).astype(np.float32)
    a, b = rng.normal(size=10), rng.normal(size=10)
    tasks, y = [], {}
    for t in range(num_tasks):
        proj = x @ w[t]
        value = (
            proj + np.sin(np.outer(proj, a) + b).sum(axis=1) + rng.normal(scale=0.1, size=len(x))
        )
        name = f"t{t}"
        if t % 2 == 0:
            tasks.append(
                TaskSpec(name, "regression", offset=float(value.mean()), scale=float(value.std()))
            )
            y[name] = value.astype(np.float32)
        else:
            tasks.append(TaskSpec(name, "binary", 2))
            y[name] = (value > np.median(value)).astype(np.int64)
    return Pool(x=x, y=y, tasks=tasks, partition_by=cluster)


PENGUINS_TASKS = [
    TaskSpec("species", "multiclass", 3),
    TaskSpec("sex", "binary", 2),
    # Body mass is learned as (grams - 4200) / 800 (about the pool's mean and std, rounded),
    # so its MSE is O(1) like the classification losses; predictions and metrics are in grams.
    TaskSpec("body_mass", "regression", offset=4200.0, scale=800.0),
]
PENGUIN_SPECIES = ("Adelie", "Chinstrap", "Gentoo")
PENGUIN_SEXES = ("female", "male")  # label 0, 1
PENGUIN_ISLANDS = ("Biscoe", "Dream", "Torgersen")  # sorted: natural client 0, 1, 2
PENGUIN_INPUTS = ("bill_length_mm", "bill_depth_mm", "flipper_length_mm")
# Fixed standardisation constants, rounded from the whole pool once and written down here.
# They are not recomputed from any split, so no test statistics flow into training at run
# time; a fixed affine map per feature is only a reparametrisation of the first layer.
PENGUIN_INPUT_CENTER = (44.0, 17.0, 200.0)
PENGUIN_INPUT_SCALE = (5.5, 2.0, 14.0)


def penguins() -> Pool:
    """Palmer penguins (333 complete rows): clients are islands, inputs three body measurements.

    Read from the CSV that the `palmerpenguins` package bundles, via `importlib.resources`
    (its own loader needs `pkg_resources`, which recent setuptools no longer ships). Rows with
    a missing measurement (2) or a missing sex (9) are dropped, so every task has a label on
    every row. `sex` is also kept in `extra` as an attribute-inference target for clients that
    do not train it. Dirichlet/shard partitioners and splits stratify by species.
    """
    source = importlib.resources.files("palmerpenguins") / "data" / "penguins.csv"
    with source.open("r", encoding="utf-8", newline="") as fh:
        rows = [
            r
            for r in csv.DictReader(fh)
            if all(r[c] not in ("", "NA") for c in (*PENGUIN_INPUTS, "body_mass_g", "sex"))
        ]
    x = np.array([[float(r[c]) for c in PENGUIN_INPUTS] for r in rows])
    x = (x - np.array(PENGUIN_INPUT_CENTER)) / np.array(PENGUIN_INPUT_SCALE)
    species = np.array([PENGUIN_SPECIES.index(r["species"]) for r in rows], dtype=np.int64)
    sex = np.array([PENGUIN_SEXES.index(r["sex"]) for r in rows], dtype=np.int64)
    return Pool(
        x=x.astype(np.float32),
        y={
            "species": species,
            "sex": sex,
            "body_mass": np.array([float(r["body_mass_g"]) for r in rows], dtype=np.float32),
        },
        tasks=list(PENGUINS_TASKS),
        partition_by=species,
        natural_group=np.array([PENGUIN_ISLANDS.index(r["island"]) for r in rows], dtype=np.int64),
        group_names=list(PENGUIN_ISLANDS),
        extra={"sex": sex.copy()},
    )


# Datasets whose input shape and tasks come from a schema file: the server has no data.
SCHEMA_DATASETS: tuple[str, ...] = ("user", "hf")


def input_shape(cfg: RunConfig) -> tuple[int, ...]:
    """Input shape of the configured dataset (the server builds the encoder from it).

    Known without building the data: for `user` and `hf` it comes from the schema file
    (an `hf` image input without `size`: from the data set's first image alone).
    """
    if cfg.dataset == "multidigits":
        return (8, 16)
    if cfg.dataset == "synthcorr":
        return (SYNTH_INPUT_DIM,)
    if cfg.dataset == "penguins":
        return (len(PENGUIN_INPUTS),)
    if cfg.dataset == "scenes":
        from common.scenes import SCENE_SIZE

        return (3, SCENE_SIZE, SCENE_SIZE)
    if cfg.dataset == "user":
        from common.userdata import user_schema

        return user_schema(cfg).input_shape
    if cfg.dataset == "hf":
        from common.hfdata import hf_input_shape

        return hf_input_shape(cfg)
    return build_pool(cfg, 1).input_shape


def task_specs(cfg: RunConfig) -> list[TaskSpec]:
    """Every task of the configured dataset, as the clients' specs have it; from the schema
    alone for `user` and `hf`."""
    if cfg.dataset == "multidigits":
        return list(MULTIDIGITS_TASKS)
    if cfg.dataset == "penguins":
        return list(PENGUINS_TASKS)
    if cfg.dataset == "scenes":
        from common.scenes import SCENES_TASKS

        return list(SCENES_TASKS)
    if cfg.dataset in SCHEMA_DATASETS:
        from common.userdata import user_schema

        return list(user_schema(cfg).tasks)
    return build_pool(cfg, 1).tasks


def dataset_tasks(cfg: RunConfig) -> list[str]:
    """Task names of the configured dataset, without building its data."""
    if cfg.dataset == "synthcorr":
        return [f"t{t}" for t in range(cfg.synth_tasks)]
    return [t.name for t in task_specs(cfg)]


def build_pool(cfg: RunConfig, num_partitions: int) -> Pool:
    """The configured dataset's pool: `samples-per-client` examples per partition for the
    generated datasets; Penguins, `user` and `hf` are fixed data (all of it, whatever the
    count; `hf` reads its images only when indexed, and its clients never build this pool:
    they load their own partition)."""
    if cfg.dataset not in DATASETS:
        raise ValueError(f"dataset '{cfg.dataset}' is unknown; valid: {sorted(DATASETS)}")
    return DATASETS[cfg.dataset](cfg, num_partitions)


def _user(cfg: RunConfig, num_partitions: int) -> Pool:
    # One file is one pool: a node's own data in a deployment (partition 0 of 1), or a shared
    # file that simulation splits with `partitioner` (`natural` uses the schema's `group_by`).
    from common.userdata import user_pool

    return user_pool(cfg)


def _scenes(cfg: RunConfig, num_partitions: int) -> Pool:
    # One scene style per partition: with `partitioner = natural` each client gets its own
    # lighting and shape frequencies.
    from common.scenes import scenes

    return scenes(cfg.samples_per_client * num_partitions, cfg.seed, num_groups=num_partitions)


def _hf(cfg: RunConfig) -> Pool:
    from common.hfdata import hf_pool

    return hf_pool(cfg)


DATASETS: dict[str, Callable[[RunConfig, int], Pool]] = {
    "multidigits": lambda cfg, n: multidigits(cfg.samples_per_client * n, cfg.seed),
    "synthcorr": lambda cfg, n: synthcorr(
        cfg.samples_per_client * n,
        cfg.seed,
        num_tasks=cfg.synth_tasks,
        correlation=cfg.synth_correlation,
    ),
    "penguins": lambda cfg, n: penguins(),
    "scenes": _scenes,
    "user": _user,
    "hf": lambda cfg, n: _hf(cfg),
}
