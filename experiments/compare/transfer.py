"""Knowledge transfer to clients that never took part in training.

Design (why it is done this way): partition ids are fixed by the number of partitions, and a
simulated federation trains every client it has. So the federation is simulated with
`num-clients = N − h` (its own partitioning of the pool that `N − h` clients generate), and
the h new clients are partitions N−h .. N−1 of the N-client partitioning of the same dataset,
loaded with `load_client_data(cfg, pid, N)` exactly as a ClientApp would. Same generator and
seed, so the same distribution; none of the new clients' examples is in the federation, and on
MultiDigits the image-level train/test split is fixed by the seed, so a new client's test
images were never in any federation client's training data (a test checks that no test input
of a new client occurs in the federation's training inputs).

Each new client then trains, on 10 %, 25 % or 100 % of its own training split (a seeded
subset, the same for both arms), for the same budget (rounds × local-epochs epochs, same
optimizer):
- **frozen global encoder**: the federation's final `shared_arrays.npz` loaded into its model,
  encoder frozen, its own fresh heads trained (`train_heads`);
- **from scratch**: the same model from its seeded initialisation, encoder and heads trained
  locally (`train_epochs`).
Both are scored on the client's full validation and test splits after the last epoch.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from client.train import build_model, evaluate, round_generator, train_epochs, train_heads
from common.config import RunConfig, parse_run_config
from common.federation import ClientData, Split, load_client_data
from common.storage import atomic_write_json
from common.weighting import EqualWeighting

FRACTIONS = (0.1, 0.25, 1.0)
ARMS = ("frozen", "scratch")


def federation_overrides(overrides: dict[str, Any], holdout: int) -> dict[str, Any]:
    """Run config of the federation that leaves the last `holdout` clients out."""
    n = int(parse_run_config(overrides).num_clients)
    if not 0 < holdout < n - 1:
        raise ValueError(f"transfer holdout must be in 1..{n - 2} for {n} clients, got {holdout}")
    return {**overrides, "num-clients": n - holdout}


def new_clients(cfg: RunConfig, holdout: int) -> list[ClientData]:
    """The held-out clients: the last `holdout` partitions of the full N-client split."""
    n = cfg.num_clients
    return [load_client_data(cfg, pid, n) for pid in range(n - holdout, n)]


def subsample(split: Split, fraction: float, seed: int) -> Split:
    """A seeded subset of a split (at least 2 examples), the same for both arms."""
    n = len(split)
    k = max(2, min(n, round(fraction * n)))
    idx = np.sort(np.random.default_rng(seed).permutation(n)[:k])
    return Split(x=split.x[idx], y={t: v[idx] for t, v in split.y.items()})


def load_shared(path: Path) -> dict[str, torch.Tensor]:
    with np.load(path) as arrays:
        return {k: torch.from_numpy(np.array(arrays[k])) for k in arrays.files}


def adapt_client(
    cfg: RunConfig, data: ClientData, shared: dict[str, torch.Tensor], fraction: float
) -> dict[str, Any]:
    """Both arms for one new client and one data fraction; per-task val/test metrics."""
    epochs = cfg.num_server_rounds * cfg.local_epochs
    sub = subsample(data.train, fraction, cfg.seed * 7_919 + data.client_id)
    few = dataclasses.replace(data, train=sub)
    out: dict[str, Any] = {"train_examples": len(sub)}
    for arm in ARMS:
        torch.manual_seed(cfg.seed * 7_919 + data.client_id * 31 + 17)
        model = build_model(cfg, data.tasks, data.input_shape)
        gen = round_generator(cfg, data.client_id, 0, stream=3)
        if arm == "frozen":
            missing = [k for k in shared if k not in model.state_dict()]
            if missing:
                raise ValueError(f"shared arrays {missing[:3]} do not fit the new client's model")
            model.load_state_dict(shared, strict=False)
            train_heads(model, few, cfg, epochs, gen)
        else:
            train_epochs(
                model, sub, EqualWeighting(data.task_names), cfg, epochs=epochs, generator=gen
            )
        out[arm] = {
            split_name: evaluate(model, split, data.tasks)
            for split_name, split in (("val", data.val), ("test", data.test))
        }
    return out


def run_adaptation(
    overrides: dict[str, Any],
    holdout: int,
    federation_dir: str,
    out_path: str,
    fractions: tuple[float, ...] = FRACTIONS,
) -> dict[str, Any]:
    """Entry point for the grid (also in a worker process): adapts every new client at every
    fraction and writes `out_path` (JSON, with the config, for resuming)."""
    t0 = time.perf_counter()
    torch.set_num_threads(1)
    cfg = parse_run_config(overrides)
    record: dict[str, Any] = {
        "config": {**cfg.to_dict(), "digest": cfg.digest()},
        "holdout": holdout,
        "fractions": list(fractions),
        "federation": str(federation_dir),
    }
    try:
        shared = load_shared(Path(federation_dir) / "shared_arrays.npz")
        clients = {}
        for data in new_clients(cfg, holdout):
            clients[str(data.client_id)] = {
                "tasks": data.task_names,
                "by_fraction": {f"{f:g}": adapt_client(cfg, data, shared, f) for f in fractions},
            }
        record.update(status="completed", clients=clients)
    except Exception as err:  # reported per cell; the grid goes on
        record.update(status="failed", error=f"{type(err).__name__}: {err}")
    record["wall_time_s"] = round(time.perf_counter() - t0, 3)
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(out_path), record)
    return {
        "status": record["status"],
        "wall_s": record["wall_time_s"],
        "error": record.get("error"),
    }
