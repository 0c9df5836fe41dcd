"""Privacy sweep: utility and attacks vs ε, private vs shared heads, SecAgg on/off.

    python -m experiments.privacy.sweep            # the full sweep, resumes finished cells
    python -m experiments.privacy.sweep --help     # smaller grids, other settings

Grid: {fedper, fedavg, local} × {no DP, ε = 8, 3, 1 (dp-sgd, σ calibrated to spend ε over the
run)} × {secagg off, on} × seeds, on MultiDigits, every cell a real Flower simulation through
one `SimulationEngine`. SecAgg+ is refused for fedavg (it would have to aggregate per-task
heads) and local (nothing is shared): those cells are recorded as n/a, not run.

After each run, every client's deployed model is rebuilt outside Flower from the run's own
outputs — the encoder from `shared_arrays.npz`, the heads from the client's state dir
(`state.npz`) or, for fedavg, the server's averaged heads (`task_arrays.npz`), which is what
the run evaluated — and attacked:

- M1 loss threshold and M2 LiRA-offline (shadow models trained with the client training code
  on an attacker's own MultiDigits pool) on each client's deployed model; members = its train
  split, non-members = its test split.
- M3 from an encoder update, in the server's view: one client's update (secagg off) or only
  the aggregate (secagg on). Round 1 is replayed exactly with the client code (same seeds;
  DP runs therefore draw their noise from the seed: `dp-insecure-seeded-noise = true`);
  a further round from the final state shows the trained model's update.
- R2 gradient inversion and label recovery on single examples and a small batch of a client's
  `left` task: head unknown for fedper (private heads: only encoder gradients reach the
  server), head known plus label recovery from the head gradient for fedavg.

Each cell writes `privacy.json` next to its run; `docs/PRIVACY.md` and the plots under
`docs/privacy/` are generated from those files only.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import functools
import hashlib
import itertools
import json
import math
import os
import platform
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from client.state import read_state_files
from client.train import build_model, build_weighting, evaluate, local_round
from common.algorithms import get_algorithm
from common.config import ConfigError, RunConfig, parse_run_config, same_training
from common.datasets import MULTIDIGITS_TASKS, dataset_tasks, input_shape, multidigits
from common.federation import ClientData, Split, client_tasks, load_client_data
from common.models import MultiTaskModel
from common.storage import atomic_write_json, read_arrays
from common.tasks import TaskSpec
from deploy.runs import REPO
from deploy.simulation import SimulationEngine
from experiments.privacy.membership import (
    flat_update,
    lira_offline_mia,
    logit_confidence,
    loss_threshold_mia,
    per_example_gradients,
    update_mia,
)
from experiments.privacy.metrics import psnr, ssim
from experiments.privacy.reconstruction import (
    best_match_psnr,
    gradient_inversion,
    label_accuracy,
    random_head,
    recover_label,
    recover_labels,
)

ALGORITHMS = ("fedper", "fedavg", "local")
EPSILONS: tuple[float | None, ...] = (None, 8.0, 3.0, 1.0)
SEEDS = (0, 1, 2)
# Sized for the shared 2-core box: four clients (plan entries 0-3: four different task sets),
# 5 rounds of 3 local epochs, ~210 training pairs per client; only the final round is
# evaluated. Rounds are the expensive part under DP: each client's accountant recomputes ε
# over its whole history every round (about 0.1-0.8 s per history entry here).
BASE: dict[str, Any] = {
    "dataset": "multidigits",
    "num-clients": 4,
    "num-server-rounds": 5,
    "samples-per-client": 300,
    "local-epochs": 3,
    "eval-every": 5,
    "fraction-evaluate": 0.0,
}
NA_REASON = {
    "fedavg": "n/a (secure aggregation of per-task heads)",
    "local": "n/a (nothing shared)",
}
INVERSION_TASK = "left"  # the 10-class task R2 and label recovery attack
GOAL_EPSILON, GOAL_AUC, GOAL_DROP = 3.0, 0.55, 8.0
PSNR_CAP_DB = 99.0  # an exact reconstruction's infinite PSNR counts as this in the means
REPORTED_FPR = 0.01  # the membership tables' TPR@FPR column (`tpr_at_1pct_fpr`)


@dataclass(frozen=True)
class Cell:
    """One point of the grid; `epsilon` None means no DP."""

    algorithm: str
    epsilon: float | None
    secagg: bool
    seed: int

    @property
    def privacy_label(self) -> str:
        return "no DP" if self.epsilon is None else f"ε={self.epsilon:g}"

    @property
    def group(self) -> tuple[str, float | None, bool]:
        """Cells that differ only in the seed."""
        return (self.algorithm, self.epsilon, self.secagg)

    @property
    def name(self) -> str:
        eps = "nodp" if self.epsilon is None else f"eps{self.epsilon:g}"
        return f"{self.algorithm}-{eps}-sa{int(self.secagg)}-s{self.seed}"

    def overrides(self, base: dict[str, Any], root: Path) -> dict[str, Any]:
        out = {
            **base,
            "algorithm": self.algorithm,
            "seed": self.seed,
            "secagg": self.secagg,
            "run-name": self.name,
            "results-dir": str(root),
            "state-dir": str(root / "state" / self.name),
        }
        if self.epsilon is not None:
            out |= {"privacy": "dp-sgd", "dp-epsilon": self.epsilon, "dp-noise-multiplier": 0.0}
            # M3 replays round 1 exactly (`replay_round`), noise included; the product draws
            # DP noise from OS entropy, which no replay can repeat. None of the attacks uses
            # the seed to remove noise, so their numbers hold for unseeded noise as well.
            out["dp-insecure-seeded-noise"] = True
        return out


@dataclass
class Settings:
    """What the sweep runs and how hard the attacks try."""

    algorithms: tuple[str, ...] = ALGORITHMS
    epsilons: tuple[float | None, ...] = EPSILONS
    secagg: tuple[bool, ...] = (False, True)
    seeds: tuple[int, ...] = SEEDS
    base: dict[str, Any] = field(default_factory=lambda: dict(BASE))
    shadows: int = 4
    r2_singles: int = 3
    r2_batch: int = 4
    r2_steps: int = 300
    results_dir: Path = REPO / "results" / "privacy-sweep"
    out: Path = REPO / "docs" / "PRIVACY.md"
    plots: Path = REPO / "docs" / "privacy"
    command: str = "python -m experiments.privacy.sweep"

    def cells(self) -> list[Cell]:
        return [
            Cell(a, e, s, seed)
            for a in self.algorithms
            for e in self.epsilons
            for s in self.secagg
            for seed in self.seeds
        ]

    def attack_key(self) -> str:
        """Hash of what the attack numbers depend on besides the run itself."""
        d = {k: getattr(self, k) for k in ("shadows", "r2_singles", "r2_batch", "r2_steps")}
        return hashlib.sha256(json.dumps([d, VERSION]).encode()).hexdigest()[:12]


VERSION = 2  # bump when the attack code changes what privacy.json holds


def not_applicable(cell: Cell, base: dict[str, Any], root: Path) -> str | None:
    """The n/a reason when the run config refuses the cell (SecAgg+ without a shared-only
    encoder), else None. The refusal comes from `parse_run_config` itself, not a copy of it."""
    try:
        parse_run_config(cell.overrides(base, root))
    except ConfigError as err:
        return NA_REASON.get(cell.algorithm, f"n/a ({err})")
    return None


# ---------------------------------------------------------------- rebuilding client models


@contextlib.contextmanager
def cached_accounting() -> Iterator[None]:
    """Memoise `client.dp.noise_multiplier` and `client.dp.epsilon` while attacks replay
    DP-SGD rounds: the σ search and the RDP accountant cost up to seconds per call on this box
    and are pure functions of their arguments, so every value is unchanged."""
    import client.dp as dp

    sigma, eps = dp.noise_multiplier, dp.epsilon

    @functools.cache
    def eps_of(history: tuple, delta: float) -> float:
        return eps(history, delta)

    dp.noise_multiplier = functools.lru_cache(maxsize=None)(sigma)
    dp.epsilon = lambda history, delta: eps_of(tuple(map(tuple, history)), delta)
    try:
        yield
    finally:
        dp.noise_multiplier, dp.epsilon = sigma, eps


@dataclass
class ClientModel:
    data: ClientData
    model: MultiTaskModel


def client_models(run_dir: Path, cfg: RunConfig) -> list[ClientModel]:
    """Every client's deployed model, rebuilt from what the run wrote.

    Start from `build_model` (the seeded init), load the client's private state from
    `<state-dir>/<federation>/client-<id>/state.npz` (for `local` that is the whole model),
    then the final shared encoder (`shared_arrays.npz`) and, where heads are federated, the
    server's averaged heads (`task_arrays.npz`): the same loading order as the ClientApp's
    evaluation."""
    algorithm = get_algorithm(cfg.algorithm)
    shared = read_arrays(run_dir / "shared_arrays.npz")
    heads_path = run_dir / "task_arrays.npz"
    heads = read_arrays(heads_path) if heads_path.exists() else {}
    out = []
    for cid in range(cfg.num_clients):
        data = load_client_data(cfg, cid, cfg.num_clients)
        model = build_model(cfg, data.tasks, data.input_shape, global_heads=algorithm.global_heads)
        private, _ = read_state_files(Path(cfg.state_dir) / cfg.federation_name / f"client-{cid}")
        state = model.state_dict()
        loaded = {**private, **shared, **{k: v for k, v in heads.items() if k in state}}
        unknown = sorted(set(loaded) - set(state))
        if unknown:
            raise ValueError(f"client {cid}: arrays {unknown[:3]} are not in its model")
        model.load_state_dict(
            {k: torch.from_numpy(np.asarray(v)) for k, v in loaded.items()}, strict=False
        )
        model.eval()
        out.append(ClientModel(data, model))
    return out


def reconstruction_check(clients: Sequence[ClientModel], summary: dict[str, Any]) -> float:
    """Largest |difference| between the rebuilt models' test metrics and the run's own
    `per_client` entries: 0 means the attacks target exactly the models the run evaluated."""
    worst = 0.0
    for c in clients:
        reported = summary["per_client"][str(c.data.client_id)]
        for task, metrics in evaluate(c.model, c.data.test, c.data.tasks).items():
            for name in ("accuracy", "mae"):
                if name in metrics:
                    worst = max(worst, abs(metrics[name] - reported[task][f"test/{name}"]))
    return worst


# ---------------------------------------------------------------- losses and confidences


def stack_targets(split: Split, tasks: Sequence[TaskSpec]) -> Tensor:
    """(N, T) float targets, one column per task, so attack helpers can slice them by row."""
    return torch.stack([torch.from_numpy(split.y[t.name]).double() for t in tasks], dim=1)


class FlatOutputs(nn.Module):
    """A client model whose output is one (N, Σ output sizes) tensor in its task order: the
    attack library expects tensor outputs with one row per example."""

    def __init__(self, model: MultiTaskModel, tasks: Sequence[TaskSpec]) -> None:
        super().__init__()
        self.model = model
        self.names = [t.name for t in tasks]

    def forward(self, x: Tensor) -> Tensor:
        out = self.model(x)
        return torch.cat([out[t] for t in self.names], dim=1)


def multitask_loss_fn(tasks: Sequence[TaskSpec]):
    """Per-example loss of a client on `FlatOutputs`: the sum of its tasks' losses (its EW
    training loss)."""
    widths = np.cumsum([0] + [t.output_size for t in tasks])

    def loss_fn(out: Tensor, y: Tensor) -> Tensor:
        return sum(
            t.per_example_loss(out[:, widths[i] : widths[i + 1]], y[:, i])
            for i, t in enumerate(tasks)
        )

    return loss_fn


@torch.no_grad()
def confidence(model: nn.Module, split: Split, tasks: Sequence[TaskSpec]) -> np.ndarray:
    """LiRA statistic of a multi-task client: Σ over its tasks of the logit-scaled true-class
    confidence (classification) or −loss (regression). Non-finite outputs (a diverged model)
    count as maximally unconfident."""
    model.eval()
    out = model(torch.from_numpy(split.x))
    phi = torch.zeros(len(split), dtype=torch.float64)
    for t in tasks:
        y = torch.from_numpy(split.y[t.name])
        if t.is_classification:
            phi += logit_confidence(out[t.name].double(), y).double()
        else:
            phi -= t.per_example_loss(out[t.name], y).double()
    return np.nan_to_num(phi.numpy(), nan=-1e6, posinf=1e6, neginf=-1e6)


def headline(metrics: dict[str, Any]) -> dict[str, Any]:
    """The ROC numbers a report needs (drops the counts and the unresolvable 0.1 % FPR)."""
    return {k: v for k, v in metrics.items() if k in ("auc", "advantage", "tpr_at_1pct_fpr")}


# ---------------------------------------------------------------- M1, M2


def shadow_models(
    cfg: RunConfig, n_train: int, settings: Settings, root: Path
) -> list[MultiTaskModel]:
    """The attacker's reference models for one (seed, privacy) setting, cached on disk.

    Trained with the client code itself (`local_round`, or `dp_round` at the same ε and
    σ rule) for the run's rounds, on `n_train` pairs of the attacker's own MultiDigits pool
    (another seed), with all five heads; each client's candidates are scored through its own
    tasks' heads. They never see a candidate pair (pairs reuse sklearn's 1797 digit images,
    so single digit images do recur)."""
    from client.dp import dp_round

    tag = "nodp" if cfg.privacy == "none" else f"eps{cfg.dp_epsilon:g}"
    recipe = dataclasses.replace(cfg, algorithm="local", secagg=False).digest()
    directory = root / "shadows" / f"s{cfg.seed}-{tag}-n{n_train}-{recipe}"
    pool = multidigits(max(4 * n_train, 1000), seed=100_000 + cfg.seed)
    tasks = list(pool.tasks)
    models = []
    for k in range(settings.shadows):
        shadow_cfg = dataclasses.replace(cfg, seed=1000 + 10 * cfg.seed + k, algorithm="local")
        model = build_model(shadow_cfg, tasks, pool.input_shape)
        path = directory / f"shadow-{k}.npz"
        if path.exists():
            model.load_state_dict({k2: torch.from_numpy(v) for k2, v in read_arrays(path).items()})
            models.append(model.eval())
            continue
        rng = np.random.default_rng(shadow_cfg.seed)
        idx = np.sort(rng.choice(len(pool), size=n_train, replace=False))
        split = Split(pool.x[idx], {t.name: pool.y[t.name][idx] for t in tasks})
        empty = Split(pool.x[:0], {t.name: pool.y[t.name][:0] for t in tasks})
        data = ClientData(1000 + k, tuple(tasks), split, empty, empty, pool.input_shape)
        weighting = build_weighting(shadow_cfg, data.task_names, dataset_tasks(cfg), data.client_id)
        for rnd in range(1, cfg.num_server_rounds + 1):
            if cfg.privacy == "dp-sgd":
                # Each round's mechanism (σ, q, steps) is the target's; the shadow keeps no
                # accountant history (it has no budget to enforce), which keeps ε lookups cached.
                dp_round(model, data, weighting, shadow_cfg, rnd, [])
            else:
                local_round(model, data, weighting, shadow_cfg, rnd, get_algorithm("local"))
        directory.mkdir(parents=True, exist_ok=True)
        np.savez(path, **{k2: v.detach().numpy() for k2, v in model.state_dict().items()})
        models.append(model.eval())
    return models


def membership_attacks(
    clients: Sequence[ClientModel], shadows: Sequence[nn.Module]
) -> dict[str, Any]:
    """M1 and M2 on every client's deployed model; the mean over clients is the cell's."""
    per_client: dict[str, Any] = {}
    for c in clients:
        d, tasks = c.data, list(c.data.tasks)
        loss_fn = multitask_loss_fn(tasks)
        x_m, x_n = torch.from_numpy(d.train.x), torch.from_numpy(d.test.x)
        m1 = loss_threshold_mia(
            FlatOutputs(c.model, tasks),
            loss_fn,
            x_m,
            stack_targets(d.train, tasks),
            x_n,
            stack_targets(d.test, tasks),
        )
        cand = Split(
            np.concatenate([d.train.x, d.test.x]),
            {t.name: np.concatenate([d.train.y[t.name], d.test.y[t.name]]) for t in tasks},
        )
        member = np.r_[np.ones(len(d.train), bool), np.zeros(len(d.test), bool)]
        target = confidence(c.model, cand, tasks)
        refs = np.stack([confidence(s, cand, tasks) for s in shadows])
        m2 = lira_offline_mia(target, refs, member, fix_variance=True)
        per_client[str(d.client_id)] = {
            "m1": headline(m1),
            "m2": headline(m2),
            "members": len(d.train),
            "nonmembers": len(d.test),
        }
    return {
        "per_client": per_client,
        **{
            f"{a}_{k}": float(np.mean([v[a][k] for v in per_client.values()]))
            for a in ("m1", "m2")
            for k in ("auc", "advantage", "tpr_at_1pct_fpr")
        },
    }


# ---------------------------------------------------------------- M3


def _train_one_round(model: MultiTaskModel, data: ClientData, cfg: RunConfig, rnd: int) -> int:
    """One round of the client's own training code on `model` (in place); returns its
    FedAvg weight. Under DP the round starts from an empty accountant history: the
    mechanism of one round is what the server observes, the budget is not at stake here."""
    from client.dp import dp_round

    weighting = build_weighting(cfg, data.task_names, dataset_tasks(cfg), data.client_id)
    model.train()  # as a fresh model in the ClientApp (Opacus refuses eval mode)
    if cfg.privacy == "dp-sgd":
        stats, _, _ = dp_round(model, data, weighting, cfg, rnd, [])
    else:
        stats = local_round(model, data, weighting, cfg, rnd, get_algorithm(cfg.algorithm))
    return stats.num_examples


def replay_round(
    cfg: RunConfig, starts: Sequence[ClientModel], rnd: int
) -> tuple[list[Tensor], list[int], list[MultiTaskModel]]:
    """Every client's encoder update for one round started from `starts` (copied), with
    their FedAvg weights and the start models (for the attacker's per-example gradients)."""
    updates, weights, before = [], [], []
    for c in starts:
        start = copy.deepcopy(c.model)
        model = copy.deepcopy(c.model)
        weights.append(_train_one_round(model, c.data, cfg, rnd))
        updates.append(flat_update(model.encoder.parameters(), start.encoder.parameters()))
        before.append(start)
    return updates, weights, before


def initial_clients(cfg: RunConfig) -> list[ClientModel]:
    """Every client's model as round 1 starts: the seeded init (private state is empty)."""
    algorithm = get_algorithm(cfg.algorithm)
    out = []
    for cid in range(cfg.num_clients):
        data = load_client_data(cfg, cid, cfg.num_clients)
        out.append(
            ClientModel(
                data,
                build_model(cfg, data.tasks, data.input_shape, global_heads=algorithm.global_heads),
            )
        )
    return out


def update_attack(
    cfg: RunConfig, starts: Sequence[ClientModel], rnd: int, *, aggregate: bool
) -> dict[str, Any]:
    """M3: score each client's train (members) and test (non-members) examples by the cosine
    of their negative gradient with what the server sees: that client's encoder update, or
    under SecAgg only the FedAvg aggregate of all updates. The attacker is given the client's
    heads at the start of the round to form per-example gradients (exact at round 1, where
    heads are the public seeded init; an upper bound later for private heads)."""
    updates, weights, before = replay_round(cfg, starts, rnd)
    total = float(sum(weights))
    agg = sum(w / total * u for w, u in zip(weights, updates, strict=True))
    per_client = {}
    for c, u, model in zip(starts, updates, before, strict=True):
        d, tasks = c.data, list(c.data.tasks)
        loss_fn = multitask_loss_fn(tasks)
        params = list(model.encoder.parameters())
        flat = FlatOutputs(model, tasks)
        g_m = per_example_gradients(
            flat, params, loss_fn, torch.from_numpy(d.train.x), stack_targets(d.train, tasks)
        )
        g_n = per_example_gradients(
            flat, params, loss_fn, torch.from_numpy(d.test.x), stack_targets(d.test, tasks)
        )
        per_client[str(d.client_id)] = headline(update_mia(agg if aggregate else u, g_m, g_n))
    return {
        "view": "aggregate" if aggregate else "individual",
        "round": rnd,
        "per_client": per_client,
        "auc": float(np.mean([v["auc"] for v in per_client.values()])),
        "advantage": float(np.mean([v["advantage"] for v in per_client.values()])),
        "aggregate": np.asarray(agg.detach().numpy()) if rnd == 1 else None,
    }


# ---------------------------------------------------------------- R2 and label recovery


def observed_gradients(
    net: nn.Module,
    params: Sequence[Tensor],
    x: Tensor,
    y: Tensor,
    sigma: float | None,
    clip: float,
    seed: int,
) -> list[Tensor]:
    """What the server sees when the client takes one step on (x, y): the batch-mean gradient,
    or under DP-SGD the clipped per-example gradients' sum plus N(0, σ²C²), over the batch."""
    if sigma is None:
        return list(torch.autograd.grad(F.cross_entropy(net(x), y), list(params)))
    rows = []
    for i in range(len(x)):
        g = torch.autograd.grad(F.cross_entropy(net(x[i : i + 1]), y[i : i + 1]), list(params))
        norm = torch.sqrt(sum(gi.pow(2).sum() for gi in g))
        rows.append([gi * min(1.0, clip / (float(norm) + 1e-12)) for gi in g])
    gen = torch.Generator().manual_seed(seed)
    return [
        (sum(r[j] for r in rows) + sigma * clip * torch.randn(p.shape, generator=gen)) / len(x)
        for j, p in enumerate(params)
    ]


def inversion_attacks(
    cfg: RunConfig, clients: Sequence[ClientModel], settings: Settings, *, head_known: bool
) -> dict[str, Any] | None:
    """R2 (+ label recovery) on the first client holding the `left` task: `r2_singles` single
    examples and one batch of `r2_batch`. Head known (fedavg: the server sent and receives the
    head): invert encoder + head gradients, labels from the head's last-layer gradient (iDLG /
    LLG-style counts). Head unknown (fedper): only encoder gradients, a guessed Linear head
    optimised alongside, labels optimised jointly (DLG). The loss is that task's alone."""
    from client.dp import noise_multiplier

    victim = next((c for c in clients if INVERSION_TASK in c.data.task_names), None)
    if victim is None:
        return None
    d = victim.data
    spec = victim.model.tasks[INVERSION_TASK]
    encoder = copy.deepcopy(victim.model.encoder).double()
    head = copy.deepcopy(victim.model.heads[INVERSION_TASK]).double()
    net = nn.Sequential(encoder, head)
    sigma = noise_multiplier(cfg, len(d.train)) if cfg.privacy == "dp-sgd" else None
    x_all = torch.from_numpy(d.train.x).double()
    y_all = torch.from_numpy(d.train.y[INVERSION_TASK]).long()
    mean_image = x_all.mean(0)
    prior = float(np.mean([psnr(x, mean_image, 1.0) for x in x_all]))
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(len(x_all))
    groups = [order[i : i + 1] for i in range(settings.r2_singles)]
    groups.append(order[settings.r2_singles : settings.r2_singles + settings.r2_batch])
    results = []
    for g_i, idx in enumerate(groups):
        x, y = x_all[idx], y_all[idx]
        params = list(net.parameters()) if head_known else list(encoder.parameters())
        target = observed_gradients(
            net, params, x, y, sigma, cfg.dp_max_grad_norm, seed=cfg.seed * 97 + g_i
        )
        seed = cfg.seed * 131 + g_i
        if head_known:
            gw, gb = target[-2], target[-1]  # the head's last Linear layer
            labels = (
                torch.tensor([recover_label(gw, gb)])
                if len(idx) == 1
                else recover_labels(gw, len(idx), gb)
            )
            label_acc = label_accuracy(y.numpy(), labels.numpy())
            res = gradient_inversion(
                net,
                target,
                tuple(d.input_shape),
                spec.output_size,
                params=params,
                batch_size=len(idx),
                labels=labels,
                steps=settings.r2_steps,
                lr=0.1,
                seed=seed,
            )
        else:
            guess = random_head(encoder.output_dim, spec.output_size, seed=seed).double()
            res = gradient_inversion(
                encoder,
                target,
                tuple(d.input_shape),
                spec.output_size,
                params=params,
                batch_size=len(idx),
                head=guess,
                learn_head=True,
                steps=settings.r2_steps,
                lr=0.1,
                seed=seed,
            )
            label_acc = label_accuracy(y.numpy(), res.labels.numpy())
        psnrs = best_match_psnr(x, res.x, 1.0)
        match = [
            int(
                np.argmax(
                    [
                        best_match_psnr(x[i : i + 1], res.x[j : j + 1], 1.0)[0]
                        for j in range(len(idx))
                    ]
                )
            )
            for i in range(len(idx))
        ]
        ssims = [ssim(x[i].numpy(), res.x[j].numpy(), 1.0) for i, j in enumerate(match)]
        results.append(
            {
                "batch": len(idx),
                "psnr": float(np.mean(np.minimum(psnrs, PSNR_CAP_DB))),
                "ssim": float(np.mean(ssims)),
                "label_acc": float(label_acc),
            }
        )
    singles = [r for r in results if r["batch"] == 1]
    batch = [r for r in results if r["batch"] > 1]
    return {
        "client": d.client_id,
        "head": "known" if head_known else "unknown",
        "labels_from": "head gradient" if head_known else "DLG (joint)",
        "sigma": sigma,
        "prior_psnr": prior,
        "single_psnr": float(np.mean([r["psnr"] for r in singles])),
        "single_ssim": float(np.mean([r["ssim"] for r in singles])),
        "single_label_acc": float(np.mean([r["label_acc"] for r in singles])),
        "batch_psnr": float(np.mean([r["psnr"] for r in batch])) if batch else None,
        "batch_ssim": float(np.mean([r["ssim"] for r in batch])) if batch else None,
        "batch_label_acc": float(np.mean([r["label_acc"] for r in batch])) if batch else None,
        "runs": results,
    }


# ---------------------------------------------------------------- per-cell results


def utility(summary: dict[str, Any]) -> dict[str, float | None]:
    """Mean over classification tasks of the client-mean final test accuracy; sum's MAE."""
    per_task = summary["per_task"]
    accs = [m["test/accuracy"]["mean"] for m in per_task.values() if "test/accuracy" in m]
    mae = per_task.get("sum", {}).get("test/mae", {}).get("mean")
    return {"mean_acc": float(np.mean(accs)) if accs else None, "sum_mae": mae}


def cumulative_epsilons(history: Sequence[Sequence[float]], delta: float) -> list[float]:
    """ε after each round of an accountant history, as `client.dp.epsilon(history[:r])` gives
    it (Opacus's RDP accountant), but with each distinct entry's RDP computed once: RDP adds
    up over entries, and recomputing the whole history per round costs seconds here."""
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis import rdp as analysis

    orders = RDPAccountant.DEFAULT_ALPHAS
    per_entry: dict[tuple[float, float, int], np.ndarray] = {}
    total: Any = 0.0
    out = []
    for s, q, n in history:
        key = (float(s), float(q), int(n))
        if key not in per_entry:
            per_entry[key] = np.asarray(
                analysis.compute_rdp(q=key[1], noise_multiplier=key[0], steps=key[2], orders=orders)
            )
        total = total + per_entry[key]
        eps, _ = analysis.get_privacy_spent(orders=orders, rdp=total, delta=delta)
        out.append(float(eps))
    return out


def epsilon_trace(run_dir: Path, cfg: RunConfig) -> dict[str, Any] | None:
    """Cumulative ε per client per round: as the server logged it (`metrics.jsonl`), and as
    recomputed from each client's own accountant history in its state dir (`state.npz`), which
    also covers SecAgg+ runs, whose legacy replies carry no ε. Monotone? Within budget?"""
    if cfg.privacy != "dp-sgd":
        return None
    rows = [
        json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()
    ]
    logged: dict[str, list[float]] = {}
    for r in rows:
        for c, e in (r.get("dp_epsilon") or {}).items():
            logged.setdefault(c, []).append(float(e))
    state: dict[str, list[float]] = {}
    for cid in range(cfg.num_clients):
        _, meta = read_state_files(Path(cfg.state_dir) / cfg.federation_name / f"client-{cid}")
        history = meta.get("dp_history", [])
        state[str(cid)] = cumulative_epsilons(history, cfg.dp_delta)
    gap = max(
        (abs(a - b) for c, v in logged.items() for a, b in zip(v, state[c], strict=False)),
        default=None,
    )
    return {
        "per_client": state,
        "logged_in_metrics": bool(logged),
        "logged_vs_state_max_abs_diff": gap,
        "monotone": all(all(b >= a for a, b in itertools.pairwise(v)) for v in state.values()),
        "rounds_reported": min(len(v) for v in state.values()),
        "final_max": max(v[-1] for v in state.values()),
    }


def attack_cell(
    cell: Cell,
    cfg: RunConfig,
    run_dir: Path,
    summary: dict[str, Any],
    settings: Settings,
    root: Path,
) -> dict[str, Any]:
    """Everything privacy.json holds for one finished run."""
    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()
    with cached_accounting():
        clients = client_models(run_dir, cfg)
        check = reconstruction_check(clients, summary)
        n_train = int(np.median([len(c.data.train) for c in clients]))
        shadows = shadow_models(cfg, n_train, settings, root)
        record: dict[str, Any] = {
            "cell": dataclasses.asdict(cell),
            "attack_key": settings.attack_key(),
            "utility": utility(summary),
            "reconstruction_max_abs_diff": check,
            "epsilon": epsilon_trace(run_dir, cfg),
            "membership": membership_attacks(clients, shadows),
            "m3": None,
            "r2": None,
            "run_wall_time_s": summary.get("wall_time_s"),
        }
        if get_algorithm(cfg.algorithm).share_encoder:
            first = update_attack(cfg, initial_clients(cfg), 1, aggregate=cfg.secagg)
            agg = first.pop("aggregate")
            final = update_attack(cfg, clients, cfg.num_server_rounds + 1, aggregate=cfg.secagg)
            final.pop("aggregate")
            record["m3"] = {"round1": first, "final": final}
            np.save(run_dir / "m3_round1_aggregate.npy", agg)
            record["r2"] = inversion_attacks(
                cfg, clients, settings, head_known=get_algorithm(cfg.algorithm).share_heads
            )
    record["attack_seconds"] = round(time.perf_counter() - t0, 1)
    return record


def run_cell(engine: SimulationEngine | None, cell: Cell, settings: Settings) -> dict[str, Any]:
    """Run (unless a completed run with this config is there) and attack one cell. Without
    an engine (--report-only) a cell without a current privacy.json is an error."""
    root = Path(settings.results_dir).resolve()
    overrides = cell.overrides(settings.base, root)
    cfg = parse_run_config(overrides)
    run_dir = root / cell.name
    summary_path, record_path = run_dir / "summary.json", run_dir / "privacy.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
    fresh = (
        summary is not None
        and summary.get("status") == "completed"
        and same_training(summary["config"], cfg)
        and summary.get("final_round") == cfg.num_server_rounds
    )
    if fresh and record_path.exists():
        record = json.loads(record_path.read_text())
        if record.get("attack_key") == settings.attack_key():
            return record
    if engine is None:
        raise SystemExit(f"--report-only: no current {record_path}; run the sweep without it")
    if not fresh:
        # A stale state dir would hand the new run old heads and a spent DP budget.
        shutil.rmtree(cfg.state_dir, ignore_errors=True)
        record_path.unlink(missing_ok=True)
        outcome = engine.run(overrides, echo=False)
        if not outcome.ok:
            err = (outcome.summary or {}).get("error", f"see {outcome.log_path}")
            raise RuntimeError(
                f"{cell.name} failed ({outcome.status}/{outcome.flower_status}): {err}"
            )
        summary = outcome.summary
    assert summary is not None
    record = attack_cell(cell, cfg, run_dir, summary, settings, root)
    atomic_write_json(record_path, record)
    return record


def run_sweep(
    settings: Settings, engine: SimulationEngine | None = None, *, report_only: bool = False
) -> dict[str, Any]:
    """All cells (resuming finished ones), then the report. Returns what the report used.
    With `report_only` nothing runs: every applicable cell must be on disk."""
    root = Path(settings.results_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # a shared 2-core box: the simulation's actors need the rest
    cells = settings.cells()
    na = {c: r for c in cells if (r := not_applicable(c, settings.base, root))}
    todo = [c for c in cells if c not in na]
    records: dict[Cell, dict[str, Any]] = {}
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if engine is None and not report_only:
            engine = stack.enter_context(SimulationEngine())
        for i, cell in enumerate(todo, 1):
            tc = time.perf_counter()
            records[cell] = run_cell(engine, cell, settings)
            r = records[cell]
            done = time.perf_counter() - t0
            eta = done / i * (len(todo) - i)
            print(
                f"[{i}/{len(todo)}] {cell.name}: acc {r['utility']['mean_acc']:.3f} "
                f"M1 {r['membership']['m1_auc']:.3f} M2 {r['membership']['m2_auc']:.3f} "
                f"({time.perf_counter() - tc:.0f}s; elapsed {done / 60:.1f} min, "
                f"eta {eta / 60:.1f} min)",
                flush=True,
            )
    wall = time.perf_counter() - t0
    report = write_report(records, na, settings, wall)
    return {"records": records, "na": na, "report": report, "wall_s": wall}


# ---------------------------------------------------------------- report


def _ms(values: Sequence[float | None], digits: int = 3) -> str:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return "–"
    if len(vals) == 1:
        return f"{vals[0]:.{digits}f}"
    return f"{np.mean(vals):.{digits}f} ± {np.std(vals, ddof=1):.{digits}f}"


def _get(record: dict[str, Any], path: str) -> Any:
    value: Any = record
    for part in path.split("."):
        if value is None:
            return None
        value = value.get(part) if isinstance(value, dict) else None
    return value


def group_values(records: dict[Cell, dict[str, Any]], group: tuple, path: str) -> list[Any]:
    return [
        _get(r, path)
        for c, r in sorted(records.items(), key=lambda kv: kv[0].seed)
        if c.group == group
    ]


def accuracy_drops(records: dict[Cell, dict[str, Any]], group: tuple) -> list[float]:
    """Paired by seed: no-DP accuracy minus this group's, in points (same algorithm/secagg)."""
    alg, _, sa = group
    base = {c.seed: r for c, r in records.items() if c.group == (alg, None, sa)}
    out = []
    for c, r in records.items():
        if c.group == group and c.seed in base:
            out.append(100 * (base[c.seed]["utility"]["mean_acc"] - r["utility"]["mean_acc"]))
    return out


def write_report(
    records: dict[Cell, dict[str, Any]], na: dict[Cell, str], settings: Settings, wall_s: float
) -> str:
    """docs/PRIVACY.md and plots, from the per-cell records only."""
    settings.out.parent.mkdir(parents=True, exist_ok=True)
    settings.plots.mkdir(parents=True, exist_ok=True)
    groups = sorted(
        {c.group for c in list(records) + list(na)},
        key=lambda g: (settings.algorithms.index(g[0]), g[2], -(g[1] or math.inf)),
    )
    seeds = sorted({c.seed for c in records})
    cfg = parse_run_config(settings.base)
    members, nonmembers = _split_sizes(records)
    heads = len(dataset_tasks(cfg))
    lines = [
        "# Privacy: utility and attacks vs ε, private vs shared heads, secure aggregation",
        "",
        "Generated by `experiments/privacy/sweep.py`; reproduce with",
        "",
        "```bash",
        settings.command,
        "```",
        "",
        f"Written {time.strftime('%Y-%m-%d %H:%M')} on {platform.machine()} "
        f"(Python {platform.python_version()}, {os.cpu_count()} CPU cores), {len(records)} "
        f"Flower simulations (+ {len(na)} n/a cells). Recorded per cell: "
        f"{sum(r.get('run_wall_time_s') or 0 for r in records.values()) / 60:.0f} min of "
        "server-side run time (excluding Flower's start-up) and "
        f"{sum(r.get('attack_seconds') or 0 for r in records.values()) / 60:.0f} min of "
        f"attacks; this invocation took {wall_s / 60:.1f} min (finished cells are resumed).",
        "",
        "## Settings",
        "",
        "- Run config: "
        + ", ".join(f"`{k}={v}`" for k, v in settings.base.items())
        + f"; everything else at its default (resolved: {_config_text(cfg)}). Evaluated every "
        f"{cfg.eval_every} round(s) and in the last; `fraction-evaluate = "
        f"{cfg.fraction_evaluate:g}`.",
        f"- Grid: algorithms {list(settings.algorithms)} × "
        f"{['no DP' if e is None else f'ε={e:g}' for e in settings.epsilons]} × secagg "
        f"{list(settings.secagg)} × seeds {seeds}. DP is sample-level DP-SGD (Opacus) on each "
        "client's whole model with `dp-noise-multiplier=0`: σ is calibrated per client to spend "
        f"`dp-epsilon` over all rounds (δ = {cfg.dp_delta:g}, C = {cfg.dp_max_grad_norm:g}).",
        "- Numbers are mean ± std over seeds (sample std); within a seed, attack metrics are the "
        "mean over clients.",
        f"- M1: loss threshold on the sum of the client's task losses. M2: LiRA-offline (global "
        f"variance) with {settings.shadows} shadow models per (seed, ε), trained with the client "
        "code (`local_round` / `dp_round`, same rounds, epochs, ε) on the attacker's own "
        f"MultiDigits pool (another seed; all {heads} heads, scored through the client's "
        "tasks). Members: the client's train split; non-members: its test split "
        f"({_count(nonmembers)} pairs per client, median"
        + (
            f", so TPR at {REPORTED_FPR:.0%} FPR is really TPR at 0 FPR"
            if nonmembers and nonmembers * REPORTED_FPR < 1
            else ""
        )
        + "; AUC is the headline).",
        "- M3: cosine between an example's negative encoder gradient and what the server sees: "
        "the client's own encoder update (secagg off) or only the FedAvg aggregate (secagg on). "
        "Round 1 is replayed exactly with the client code (same seeds; the initial heads are "
        "the public seeded init, so the server can form these gradients); for that, DP runs "
        "set `dp-insecure-seeded-noise = true` (noise from the seed; no attack here uses it "
        "to remove noise). `final` is one more "
        "round from the final models, with the attacker given the client's heads (an upper "
        "bound for private heads).",
        f"- R2: gradient inversion (Adam, {settings.r2_steps} steps, cosine gradient distance) "
        f"on {settings.r2_singles} single examples and a batch of {settings.r2_batch} of the "
        "first client holding `left`, one step of that task's loss on the final model; under "
        "DP the observed gradient is clipped per example and noised with the client's σ. fedper "
        "(head private): encoder gradients only, a guessed Linear head learned jointly, labels "
        "by DLG. fedavg (head shared): encoder + head gradients, labels recovered from the "
        "head's last-layer gradient first. PSNR over "
        f"{'×'.join(map(str, input_shape(cfg)))} images in [0, 1] (best match per "
        "example); `prior` is the PSNR of the mean training image, a no-attack baseline.",
        "",
    ]
    check = max((r["reconstruction_max_abs_diff"] for r in records.values()), default=0.0)
    lines += [
        f"Rebuilt client models reproduce the runs' own per-client test metrics to within "
        f"{check:.1e} (max over all cells, clients and tasks).",
        "",
        "## Utility and membership inference",
        "",
        "| algorithm | secagg | privacy | mean test acc | acc drop vs no DP (pts) | sum MAE | "
        "final ε (max client) | M1 AUC | M1 adv. | M2 AUC | M2 TPR@1%FPR | M3 AUC round 1 | "
        "M3 AUC final |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for g in groups:
        alg, eps, sa = g
        label = "no DP" if eps is None else f"ε={eps:g}"
        reason = next((r for c, r in na.items() if c.group == g), None)
        if reason:
            lines.append(f"| {alg} | {'on' if sa else 'off'} | {label} | {reason} |" + " |" * 9)
            continue
        m3v = "individual" if not sa else "aggregate"
        lines.append(
            f"| {alg} | {'on' if sa else 'off'} | {label} | "
            f"{_ms(group_values(records, g, 'utility.mean_acc'))} | "
            f"{'–' if eps is None else _ms(accuracy_drops(records, g), 1)} | "
            f"{_ms(group_values(records, g, 'utility.sum_mae'), 2)} | "
            f"{_ms(group_values(records, g, 'epsilon.final_max'), 2)} | "
            f"{_ms(group_values(records, g, 'membership.m1_auc'))} | "
            f"{_ms(group_values(records, g, 'membership.m1_advantage'))} | "
            f"{_ms(group_values(records, g, 'membership.m2_auc'))} | "
            f"{_ms(group_values(records, g, 'membership.m2_tpr_at_1pct_fpr'))} | "
            + (
                f"{_ms(group_values(records, g, 'm3.round1.auc'))} ({m3v}) | "
                f"{_ms(group_values(records, g, 'm3.final.auc'))} |"
                if get_algorithm(alg).share_encoder
                else "n/a (nothing sent) | n/a |"
            )
        )
    lines += [
        "",
        "## Reconstruction: private heads (fedper) vs shared heads (fedavg)",
        "",
        "| algorithm | server's view of the head | privacy | PSNR single (dB) | SSIM single | "
        "label acc single | PSNR batch (dB) | label acc batch | prior PSNR (dB) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for g in groups:
        alg, eps, sa = g
        if sa or alg == "local" or not any(c.group == g for c in records):
            continue
        label = "no DP" if eps is None else f"ε={eps:g}"
        head = (
            "known (+ label recovery from its gradient)"
            if alg == "fedavg"
            else "unknown (DLG labels)"
        )
        lines.append(
            f"| {alg} | {head} | {label} | "
            + " | ".join(
                _ms(group_values(records, g, f"r2.{k}"), 2)
                for k in (
                    "single_psnr",
                    "single_ssim",
                    "single_label_acc",
                    "batch_psnr",
                    "batch_label_acc",
                    "prior_psnr",
                )
            )
            + " |"
        )
    lines += ["", "local: nothing leaves the client, so there is no server view to invert.", ""]
    lines += findings_section(records, settings)
    lines += goal_section(records, settings)
    lines += epsilon_section(records, int(settings.base["num-server-rounds"]))
    lines += [
        "## Caveats",
        "",
        f"- Small data ({_count(members)} training pairs per client, median) makes DP-SGD "
        f"expensive in utility: the noise on a {cfg.batch_size}-example batch dwarfs the "
        "clipped signal at these σ.",
        f"- M2's shadows are trained locally on all {heads} tasks; the targets were trained "
        f"federated on {_plan_sizes(cfg)}. Shadow pairs never equal a candidate pair, but "
        f"MultiDigits pairs reuse sklearn's {_digit_images()} digit images.",
        "- M3 `final` and the per-example gradients at later rounds give the attacker the "
        "client's heads: an upper bound for fedper. Round 1 needs no such assumption.",
        "- R2 attacks one step of one task's loss (what a server sees from a client that takes "
        "a single step on a small batch); real rounds of several local steps over the whole "
        "split are harder to invert. An exact reconstruction has infinite PSNR, counted as "
        f"{PSNR_CAP_DB:g} dB in the means.",
        "- SecAgg+ runs are not bit-reproducible: Flower's quantisation rounds stochastically "
        "with numpy's unseeded global RNG (steps of 2 × `secagg-clipping-range` / "
        f"`secagg-quantization-range` = {_secagg_step(cfg):.1g} per weight here). A perturbation "
        "of that size per round moves this short training's final accuracy by a few points, "
        "so secagg on/off utility differences should be read against the seed std.",
        "- Not done: the canary-based empirical ε lower bound (ε_lb = ln((TPR − δ)/FPR)); with "
        f"{_count(nonmembers)} non-members per client the ROC cannot resolve the small FPRs it "
        "needs.",
        "",
        "Plots: `docs/privacy/utility_vs_epsilon.png`, `docs/privacy/attacks_vs_epsilon.png`, "
        "`docs/privacy/reconstruction_vs_epsilon.png`, `docs/privacy/epsilon_per_round.png`.",
        "",
    ]
    text = "\n".join(lines)
    settings.out.write_text(text)
    write_plots(records, settings)
    return text


def _split_sizes(records: dict[Cell, dict[str, Any]]) -> tuple[float | None, float | None]:
    """Median members (train split) and non-members (test split) per client, from what the
    membership attacks recorded."""
    clients = [
        c
        for r in records.values()
        for c in (r.get("membership") or {}).get("per_client", {}).values()
    ]
    if not clients:
        return None, None
    return (
        float(np.median([c["members"] for c in clients])),
        float(np.median([c["nonmembers"] for c in clients])),
    )


def _count(value: float | None) -> str:
    return "?" if value is None else f"{value:.0f}"


def _config_text(cfg: RunConfig) -> str:
    partition = cfg.partitioner + (
        f" α={cfg.dirichlet_alpha:g}" if cfg.partitioner == "dirichlet" else ""
    )
    return (
        f"partitioner {partition}, batch {cfg.batch_size}, lr {cfg.lr:g}, hidden {cfg.hidden}, "
        f"weighting {cfg.weighting}"
    )


def _plan_sizes(cfg: RunConfig) -> str:
    """'2 or 3 tasks': how many tasks the federation's clients hold (the task plan)."""
    sizes = sorted(
        {
            len(client_tasks(cfg, dataset_tasks(cfg), c, cfg.num_clients))
            for c in range(cfg.num_clients)
        }
    )
    return " or ".join(map(str, sizes)) + " tasks"


def _digit_images() -> int:
    """How many images sklearn's bundled digits hold (every MultiDigits pair reuses them)."""
    from sklearn.datasets import load_digits

    return len(load_digits().images)


def _secagg_step(cfg: RunConfig) -> float:
    """Flower's SecAgg+ quantisation step per weight: the clipping interval over the levels."""
    return 2 * cfg.secagg_clipping_range / cfg.secagg_quantization_range


def _chance(task: str) -> float:
    """Chance accuracy of guessing a class of `task` uniformly."""
    spec = next(t for t in MULTIDIGITS_TASKS if t.name == task)
    return 1.0 / spec.output_size


def _mean(records: dict[Cell, dict[str, Any]], group: tuple, path: str) -> float | None:
    vals = [v for v in group_values(records, group, path) if v is not None]
    return float(np.mean(vals)) if vals else None


def findings_section(records: dict[Cell, dict[str, Any]], settings: Settings) -> list[str]:
    """Plain comparisons read off the tables (means over seeds), so the text cannot drift
    from the numbers when the sweep is rerun."""
    out = ["## Findings (means over seeds, read off the tables above)", ""]
    eps_levels = [e for e in settings.epsilons if e is not None]
    for alg in settings.algorithms:
        base = _mean(records, (alg, None, False), "utility.mean_acc")
        if base is None:
            continue
        drops = [
            f"ε={e:g}: {np.mean(d):.1f}"
            for e in eps_levels
            if (d := accuracy_drops(records, (alg, e, False)))
        ]
        m1 = [_mean(records, (alg, e, False), "membership.m1_auc") for e in settings.epsilons]
        m2 = [_mean(records, (alg, e, False), "membership.m2_auc") for e in settings.epsilons]
        aucs = [v for v in m1 + m2 if v is not None]
        out.append(
            f"- {alg}: accuracy {base:.3f} without DP; drop in points {', '.join(drops) or '–'}. "
            f"Black-box MIA AUC (M1, M2) spans {min(aucs):.3f}–{max(aucs):.3f} over all ε."
        )
    fp = {
        k: _mean(records, ("fedper", None, False), f"r2.{k}")
        for k in ("single_psnr", "batch_psnr", "single_label_acc", "batch_label_acc", "prior_psnr")
    }
    fa = {k: _mean(records, ("fedavg", None, False), f"r2.{k}") for k in fp}
    if fp["single_psnr"] is not None and fa["single_psnr"] is not None:
        out.append(
            f"- Private vs shared heads, no DP: gradient inversion recovers single inputs from "
            f"the encoder gradient alone ({fp['single_psnr']:.1f} dB with the head private vs "
            f"{fa['single_psnr']:.1f} dB with it shared; batch of {settings.r2_batch}: "
            f"{fp['batch_psnr']:.1f} vs {fa['batch_psnr']:.1f} dB; mean-image prior "
            f"{fp['prior_psnr']:.1f} dB): the first encoder layer's gradient carries the input, "
            f"so private heads do not hide inputs. They do hide labels: recovered from the "
            f"shared head's gradient {fa['single_label_acc']:.2f} (single) / "
            f"{fa['batch_label_acc']:.2f} (batch) vs {fp['single_label_acc']:.2f} / "
            f"{fp['batch_label_acc']:.2f} by DLG through a guessed head (whose class indices "
            f"carry no meaning; what is above {_chance(INVERSION_TASK):.2g}, chance for "
            f"`{INVERSION_TASK}`, is the client's label skew and luck)."
        )
        dp_psnr = [
            v
            for e in eps_levels
            for a in ("fedper", "fedavg")
            if (v := _mean(records, (a, e, False), "r2.single_psnr")) is not None
        ]
        if dp_psnr:
            out.append(
                f"- Under DP-SGD (any ε here) single-example inversion reaches at most "
                f"{max(dp_psnr):.1f} dB, against the {fp['prior_psnr']:.1f} dB of the mean "
                "image: the noise on a one-example gradient hides the input."
            )
    for e in [None, *eps_levels]:
        off = _mean(records, ("fedper", e, False), "m3.final.auc")
        on = _mean(records, ("fedper", e, True), "m3.final.auc")
        r1_off = _mean(records, ("fedper", e, False), "m3.round1.auc")
        r1_on = _mean(records, ("fedper", e, True), "m3.round1.auc")
        if None not in (off, on, r1_off, r1_on):
            label = "no DP" if e is None else f"ε={e:g}"
            out.append(
                f"- M3 (server-side, fedper, {label}): AUC from one client's update "
                f"{r1_off:.3f} (round 1) / {off:.3f} (final) vs from the SecAgg+ aggregate "
                f"{r1_on:.3f} / {on:.3f}."
            )
    out.append("")
    return out


def goal_section(records: dict[Cell, dict[str, Any]], settings: Settings) -> list[str]:
    """The privacy goal at ε = GOAL_EPSILON: MIA AUC ≤ GOAL_AUC with an accuracy drop of at
    most GOAL_DROP points."""
    lines = [
        f"## Goal check (ε ≈ {GOAL_EPSILON:g}: M1/M2 AUC ≤ {GOAL_AUC:g} at an accuracy drop ≤ "
        f"{GOAL_DROP:g} points)",
        "",
    ]
    groups = sorted({c.group for c in records if c.epsilon == GOAL_EPSILON}, key=str)
    if not groups:
        return [*lines, f"ε = {GOAL_EPSILON:g} was not part of this sweep.", ""]
    lines += [
        "| algorithm | secagg | M1 AUC | M2 AUC | acc drop (pts) | AUC goal | utility goal |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for g in groups:
        m1 = group_values(records, g, "membership.m1_auc")
        m2 = group_values(records, g, "membership.m2_auc")
        drop = accuracy_drops(records, g)
        auc_ok = max(np.mean(m1), np.mean(m2)) <= GOAL_AUC
        drop_ok = bool(drop) and np.mean(drop) <= GOAL_DROP
        lines.append(
            f"| {g[0]} | {'on' if g[2] else 'off'} | {_ms(m1)} | {_ms(m2)} | {_ms(drop, 1)} | "
            f"{'met' if auc_ok else 'missed'} | {'met' if drop_ok else 'missed' if drop else '–'} |"
        )
    lines.append("")
    return lines


def epsilon_section(records: dict[Cell, dict[str, Any]], rounds: int) -> list[str]:
    dp = [r for c, r in records.items() if c.epsilon is not None and r.get("epsilon")]
    if not dp:
        return []
    mono = all(r["epsilon"]["monotone"] for r in dp)
    within = all(r["epsilon"]["final_max"] <= r["cell"]["epsilon"] * (1 + 1e-6) for r in dp)
    full = all(r["epsilon"]["rounds_reported"] == rounds for r in dp)
    logged = [r for r in dp if r["epsilon"]["logged_in_metrics"]]
    unlogged = sorted(
        {
            r["cell"]["algorithm"] + (" + secagg" if r["cell"]["secagg"] else "")
            for r in dp
            if not r["epsilon"]["logged_in_metrics"]
        }
    )
    gap = max((r["epsilon"]["logged_vs_state_max_abs_diff"] or 0.0 for r in logged), default=0.0)
    return [
        "## ε accounting",
        "",
        f"- Cumulative ε per client per round (each client's accountant history in its state "
        f"dir, replayed through `client.dp.epsilon`) is non-decreasing in "
        f"{'all' if mono else 'NOT all'} {len(dp)} DP runs; the final ε stays within the "
        f"budget in {'all' if within else 'NOT all'} of them"
        + (f", and every client has all {rounds} rounds." if full else "."),
        f"- The server's per-round `dp_epsilon` in `metrics.jsonl` ({len(logged)} runs) equals "
        f"those values to within {gap:.1e}."
        + (
            f" Runs with SecAgg+ ({', '.join(unlogged)}) log no `dp_epsilon`: the legacy "
            "FitRes replies of the SecAgg+ workflow carry only `train-loss`, so their ε is "
            "known only from the clients' state."
            if unlogged
            else ""
        ),
        "- `final ε` in the table is the largest client's after the last round: σ is "
        "calibrated so that each client ends just under its budget.",
        "",
    ]


def write_plots(records: dict[Cell, dict[str, Any]], settings: Settings) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    eps_order = [e for e in settings.epsilons if e is not None]
    eps_order = sorted(eps_order) + ([None] if None in settings.epsilons else [])
    xs = list(range(len(eps_order)))
    ticks = ["∞ (no DP)" if e is None else f"{e:g}" for e in eps_order]
    groups = sorted({(c.algorithm, c.secagg) for c in records})

    def series(alg: str, sa: bool, path: str) -> tuple[list[int], list[float], list[float]]:
        px, mu, sd = [], [], []
        for x, e in zip(xs, eps_order, strict=True):
            vals = [v for v in group_values(records, (alg, e, sa), path) if v is not None]
            if vals:
                px.append(x)
                mu.append(float(np.mean(vals)))
                sd.append(float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0)
        return px, mu, sd

    def label(alg: str, sa: bool) -> str:
        return f"{alg}{' + secagg' if sa else ''}"

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for alg, sa in groups:
        px, mu, sd = series(alg, sa, "utility.mean_acc")
        ax.errorbar(
            px, mu, yerr=sd, marker="o", capsize=3, label=label(alg, sa), ls="--" if sa else "-"
        )
    ax.set_xticks(xs, ticks)
    ax.set_xlabel(f"ε (δ = {parse_run_config(settings.base).dp_delta:g})")
    ax.set_ylabel("mean test accuracy (classification tasks)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(settings.plots / "utility_vs_epsilon.png", dpi=100)
    plt.close(fig)

    metrics = [
        ("membership.m1_auc", "M1 AUC (loss threshold)"),
        ("membership.m2_auc", "M2 AUC (LiRA-offline)"),
        ("m3.round1.auc", "M3 AUC (encoder update, round 1)"),
        ("m3.final.auc", "M3 AUC (update, final model)"),
    ]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.0 * len(metrics), 3.6), squeeze=False)
    for ax, (path, title) in zip(axes[0], metrics, strict=True):
        for alg, sa in groups:
            px, mu, sd = series(alg, sa, path)
            if px:
                ax.errorbar(
                    px,
                    mu,
                    yerr=sd,
                    marker="o",
                    capsize=3,
                    label=label(alg, sa),
                    ls="--" if sa else "-",
                )
        ax.axhline(0.5, color="grey", lw=0.8)
        ax.axhline(GOAL_AUC, color="red", lw=0.8, ls=":")
        ax.set_xticks(xs, ticks)
        ax.set_xlabel("ε")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(settings.plots / "attacks_vs_epsilon.png", dpi=100)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for alg, sa in groups:
        if sa or alg == "local":
            continue
        for ax, path, title in (
            (axes[0], "r2.single_psnr", "R2 PSNR, single example (dB)"),
            (axes[1], "r2.single_label_acc", "label accuracy, single example"),
        ):
            px, mu, sd = series(alg, sa, path)
            if px:
                head = "head shared" if alg == "fedavg" else "head private"
                ax.errorbar(px, mu, yerr=sd, marker="o", capsize=3, label=f"{alg} ({head})")
            ax.set_title(title, fontsize=9)
            ax.set_xticks(xs, ticks)
            ax.set_xlabel("ε")
            ax.grid(alpha=0.3)
    px, mu, _ = series("fedper", False, "r2.prior_psnr")
    if px:
        axes[0].plot(px, mu, color="grey", ls=":", label="prior (mean image)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(settings.plots / "reconstruction_vs_epsilon.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for c, r in sorted(records.items(), key=lambda kv: kv[0].name):
        if c.epsilon is None or not r.get("epsilon") or c.seed != min(settings.seeds) or c.secagg:
            continue
        color = None
        for v in r["epsilon"]["per_client"].values():
            (line,) = ax.plot(
                range(1, len(v) + 1),
                v,
                marker=".",
                lw=0.8,
                color=color,
                label=None if color else f"{c.algorithm} ε={c.epsilon:g}",
            )
            color = line.get_color()
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_title(f"one line per client, seed {min(settings.seeds)}, secagg off", fontsize=9)
    ax.set_xlabel("round")
    ax.set_ylabel("cumulative ε per client")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(settings.plots / "epsilon_per_round.png", dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------- CLI


def _eps(value: str) -> float | None:
    return None if value.lower() in ("none", "inf", "nodp") else float(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS), choices=ALGORITHMS)
    parser.add_argument(
        "--epsilons", nargs="+", type=_eps, default=list(EPSILONS), help="'none' = no DP"
    )
    parser.add_argument("--secagg", nargs="+", choices=("off", "on"), default=["off", "on"])
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument(
        "-c",
        "--run-config",
        action="append",
        default=[],
        help="override a base run-config key: -c key=value",
    )
    parser.add_argument("--shadows", type=int, default=4)
    parser.add_argument("--r2-steps", type=int, default=300)
    parser.add_argument("--results-dir", type=Path, default=Settings.results_dir)
    parser.add_argument("--out", type=Path, default=Settings.out)
    parser.add_argument("--plots", type=Path, default=Settings.plots)
    parser.add_argument("--report-only", action="store_true", help="no runs: report from disk")
    given = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(given)
    from deploy.runs import parse_overrides

    settings = Settings(
        algorithms=tuple(args.algorithms),
        epsilons=tuple(args.epsilons),
        secagg=tuple(s == "on" for s in args.secagg),
        seeds=tuple(args.seeds),
        base={**BASE, **parse_overrides(args.run_config)},
        shadows=args.shadows,
        r2_steps=args.r2_steps,
        results_dir=args.results_dir,
        out=args.out,
        plots=args.plots,
        command=" ".join(
            ["python -m experiments.privacy.sweep", *[a for a in given if a != "--report-only"]]
        ),
    )
    out = run_sweep(settings, report_only=args.report_only)
    print(f"wrote {settings.out} and plots under {settings.plots} ({out['wall_s'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
