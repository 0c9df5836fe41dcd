"""From a dataset pool to one client's data: partitioning, the task plan, and splits.

Partitioning uses Flower Datasets' partitioners on an index column, so the same partitioner
objects users know from `FederatedDataset` decide which example goes where. Results are cached
per process and per partitioning: virtual clients that share an actor reuse them read-only.
Dataset `hf` goes through `FederatedDataset` itself: a client loads only its own partition
(`common.hfdata`), never the whole data set.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from common.config import ConfigError, RunConfig
from common.datasets import TEST, TRAIN, VAL, Pool, build_pool
from common.tasks import TaskSpec

# Default task sets per dataset: heterogeneous, mixing classification and regression.
DEFAULT_PLANS: dict[str, str] = {
    "multidigits": (
        "left,right,sum;left,parity;right,sum,equal;left,right;sum,parity,equal;left,sum"
    ),
    "synthcorr": "t0,t1;t1,t2,t3;t0,t2;t0,t1,t3;t2,t3;t0,t3",
    # Biscoe, Dream, Torgersen (sorted); Torgersen has only Adelie penguins: no species task.
    "penguins": "species,sex,body_mass;species,body_mass;sex,body_mass",
    # Dense and image-level tasks mixed; every task on at least two clients.
    "scenes": (
        "segmentation,depth,count;segmentation,circle,square,triangle;depth,count,circle;"
        "segmentation,depth;count,square,triangle;segmentation,depth,count,circle"
    ),
}


@dataclass(frozen=True)
class Split:
    x: np.ndarray
    y: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.x)


@dataclass(frozen=True)
class ClientData:
    """One client's tasks and its train/validation/test splits (made before any training)."""

    client_id: int
    tasks: tuple[TaskSpec, ...]
    train: Split
    val: Split
    test: Split
    input_shape: tuple[int, ...]

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]


def parse_plan(
    plan: str, task_names: list[str], num_clients: int, source: str = "run config 'plan'"
) -> list[list[str]]:
    """Task set of every client from a plan string 'a,b;c;...' (client i gets entry i mod n)."""
    entries = [[t.strip() for t in part.split(",") if t.strip()] for part in plan.split(";")]
    entries = [e for e in entries if e]
    if not entries:
        raise ConfigError(f"{source} names no tasks")
    for i, entry in enumerate(entries):
        unknown = [t for t in entry if t not in task_names]
        if unknown:
            raise ConfigError(
                f"{source} entry {i} names unknown tasks {unknown}; valid tasks: {task_names}"
            )
        if len(set(entry)) != len(entry):
            raise ConfigError(f"{source} entry {i} repeats a task: {entry}")
    return [entries[i % len(entries)] for i in range(num_clients)]


def client_tasks(
    cfg: RunConfig, pool_tasks: list[str], client_id: int, num_clients: int
) -> list[str]:
    plan = cfg.plan or DEFAULT_PLANS.get(cfg.dataset, ",".join(pool_tasks))
    return parse_plan(plan, pool_tasks, num_clients)[client_id]


@lru_cache(maxsize=4)
def cached_pool(cfg: RunConfig, num_partitions: int) -> Pool:
    return build_pool(cfg, num_partitions)


@lru_cache(maxsize=4)
def partition_indices(cfg: RunConfig, num_partitions: int) -> tuple[np.ndarray, ...]:
    """Example indices of every partition, from Flower Datasets' partitioners."""
    if cfg.dataset == "hf":
        from common.hfdata import partition_rows

        return partition_rows(cfg, num_partitions)
    pool = cached_pool(cfg, num_partitions)
    if len(pool) < num_partitions:
        raise ConfigError(
            f"dataset '{cfg.dataset}' has {len(pool)} examples, fewer than the {num_partitions} "
            "clients (num-clients / num-partitions); every client needs at least one"
        )
    if num_partitions == 1:  # a node whose data file is all its own data
        return (np.arange(len(pool)),)
    if cfg.partitioner == "natural":
        if pool.natural_group is None:
            raise ConfigError(
                f"run config 'partitioner' = 'natural' needs a dataset with natural clients; "
                f"'{cfg.dataset}' has none (use iid, dirichlet or shards)"
            )
        groups = np.unique(pool.natural_group)
        if len(groups) != num_partitions:
            raise ConfigError(
                f"dataset '{cfg.dataset}' has {len(groups)} natural clients; run with that many "
                f"(num-clients = {len(groups)}), got {num_partitions}"
            )
        return tuple(np.flatnonzero(pool.natural_group == g) for g in groups)
    from datasets import Dataset
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, ShardPartitioner

    table = Dataset.from_dict({"idx": np.arange(len(pool)), "label": pool.partition_by})
    if cfg.partitioner == "iid":
        # IidPartitioner cuts contiguous shards, and files are often sorted (Penguins' CSV is
        # by species): shuffle with the run seed first, as `FederatedDataset` does by default.
        table = table.shuffle(seed=cfg.seed)
        partitioner = IidPartitioner(num_partitions=num_partitions)
    elif cfg.partitioner == "dirichlet":
        partitioner = DirichletPartitioner(
            num_partitions=num_partitions,
            partition_by="label",
            alpha=cfg.dirichlet_alpha,
            min_partition_size=min(10, len(pool) // num_partitions),
            self_balancing=True,
            seed=cfg.seed,
        )
    else:
        partitioner = ShardPartitioner(
            num_partitions=num_partitions,
            partition_by="label",
            num_shards_per_partition=cfg.shards_per_client,
            seed=cfg.seed,
        )
    partitioner.dataset = table
    # `[:]` reads the column at once; datasets 4 returns a lazy column that numpy would walk
    # row by row (about 9x slower: seconds per process for 1000 partitions).
    return tuple(
        np.asarray(partitioner.load_partition(i)["idx"][:], dtype=np.int64)
        for i in range(num_partitions)
    )


@lru_cache(maxsize=64)
def load_client_data(
    cfg: RunConfig,
    partition_id: int,
    num_partitions: int,
    client_id: int | None = None,
    tasks: str = "",
) -> ClientData:
    """The data and tasks of one client (cached per process). `client_id` (default: the
    partition id) picks the task set from the plan and seeds the split; in a deployment where
    each node's file is all its data, every node loads partition 0 of 1 under its own client
    id. `tasks` ('a,b', a node's own task set) overrides the plan."""
    if not 0 <= partition_id < num_partitions:
        raise ConfigError(f"partition-id {partition_id} is outside 0..{num_partitions - 1}")
    client_id = partition_id if client_id is None else client_id
    pool, idx = _client_rows(cfg, partition_id, num_partitions)
    if len(idx) == 0:
        raise ConfigError(f"client {client_id}: its partition of '{cfg.dataset}' is empty")
    if tasks:
        names = parse_plan(tasks, pool.task_names, 1, source="node config 'tasks'")[0]
    else:
        names = client_tasks(cfg, pool.task_names, client_id, max(num_partitions, client_id + 1))
    tasks = tuple(t for t in pool.tasks if t.name in names)
    train_idx, val_idx, test_idx = split_indices(pool, idx, cfg.seed + client_id)
    if len(train_idx) == 0:
        raise ConfigError(
            f"client {client_id}: its partition of '{cfg.dataset}' holds no train rows "
            f"({len(val_idx)} val, {len(test_idx)} test); every client needs train rows"
        )
    return ClientData(
        client_id=client_id,
        tasks=tasks,
        train=_take(pool, train_idx, names),
        val=_take(pool, val_idx, names),
        test=_take(pool, test_idx, names),
        input_shape=pool.input_shape,
    )


def _client_rows(cfg: RunConfig, partition_id: int, num_partitions: int) -> tuple[Pool, np.ndarray]:
    """The pool a client's examples come from and their indices in it. For `hf` the pool is
    the client's own partition (`FederatedDataset.load_partition`), its images decoded only
    when the splits take them, and not kept: the client's splits are all that stays."""
    if cfg.dataset == "hf":
        from common.hfdata import client_pool

        pool = client_pool(cfg, partition_id, num_partitions)
        return pool, np.arange(len(pool))
    return cached_pool(cfg, num_partitions), partition_indices(cfg, num_partitions)[partition_id]


def split_indices(
    pool: Pool, idx: np.ndarray, seed: int, val_fraction: float = 0.15, test_fraction: float = 0.15
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train/validation/test split of one client's examples, stratified where possible.

    Where the dataset fixes each example's split (MultiDigits: one pool of digit images per
    split; a `split_by` column or a data set's own splits), the client's examples keep it; a
    client without validation rows carves them from its train rows (stratified, the share
    `val_fraction` would have of train + val). MultiDigits spreads the splits evenly within
    each label so that partitions get about the configured shares.
    """
    rng = np.random.default_rng(seed)
    val_share = val_fraction / (1.0 - test_fraction)
    if pool.fixed_split is not None:
        marks = pool.fixed_split[idx]
        train, val, test = idx[marks == TRAIN], idx[marks == VAL], idx[marks == TEST]
        if len(val) == 0 and len(train) > 0:
            train, val = _stratified_split(train, pool.partition_by[train], val_share, rng)
        return train, val, test
    rest, test = _stratified_split(idx, pool.partition_by[idx], test_fraction, rng)
    train, val = _stratified_split(rest, pool.partition_by[rest], val_share, rng)
    return train, val, test


def _stratified_split(
    idx: np.ndarray, labels: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Per label, move round(fraction * count) examples (at least one when a label has 3 or
    more) into the second part; both parts keep the label mix of the client."""
    first, second = [], []
    for label in np.unique(labels):
        members = rng.permutation(idx[labels == label])
        n = round(fraction * len(members))
        if n == 0 and len(members) >= 3:
            n = 1
        second.append(members[:n])
        first.append(members[n:])
    return np.sort(np.concatenate(first)), np.sort(np.concatenate(second))


def _take(pool: Pool, idx: np.ndarray, names: list[str]) -> Split:
    return Split(x=pool.x[idx], y={t: pool.y[t][idx] for t in names})
