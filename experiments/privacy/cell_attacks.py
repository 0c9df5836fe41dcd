"""The attacks on one finished cell (`attack_cell`, what privacy.json holds): M1 and M2
membership inference on the deployed models, M3 on the encoder updates the server sees, R2
gradient inversion with label recovery, and the ε each client spent."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from client.state import read_state_files
from client.train import build_model, build_weighting, local_round
from common.algorithms import get_algorithm
from common.config import RunConfig
from common.datasets import dataset_tasks, multidigits
from common.federation import ClientData, Split
from common.models import MultiTaskModel
from common.storage import read_arrays
from experiments.kit.scores import mean_classification_accuracy
from experiments.privacy.grid import INVERSION_TASK, PSNR_CAP_DB, Cell, Settings
from experiments.privacy.membership import (
    flat_update,
    lira_offline_mia,
    loss_threshold_mia,
    per_example_gradients,
    update_mia,
)
from experiments.privacy.metrics import psnr, ssim
from experiments.privacy.models import (
    ClientModel,
    FlatOutputs,
    cached_accounting,
    client_models,
    confidence,
    headline,
    initial_clients,
    multitask_loss_fn,
    reconstruction_check,
    stack_targets,
)
from experiments.privacy.reconstruction import (
    best_match_psnr,
    gradient_inversion,
    label_accuracy,
    random_head,
    recover_label,
    recover_labels,
)

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
    acc = mean_classification_accuracy(summary)
    mae = summary["per_task"].get("sum", {}).get("test/mae", {}).get("mean")
    return {"mean_acc": acc if math.isfinite(acc) else None, "sum_mae": mae}


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
