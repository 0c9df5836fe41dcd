"""docs/PRIVACY.md, from the cells' privacy.json records only."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from common.algorithms import get_algorithm
from common.config import RunConfig, parse_run_config
from common.datasets import dataset_tasks, input_shape
from experiments.kit.report import task_counts, training_text, write, written_by
from experiments.kit.runner import Timings
from experiments.privacy.findings import epsilon_section, findings_section, goal_section
from experiments.privacy.grid import PSNR_CAP_DB, REPORTED_FPR, Cell, Settings
from experiments.privacy.plots import write_plots
from experiments.privacy.records import accuracy_drops, group_values, ms


def write_report(
    records: dict[Cell, dict[str, Any]], na: dict[Cell, str], settings: Settings
) -> str:
    """docs/PRIVACY.md and plots, from the per-cell records (and the grid's timings) only."""
    groups = sorted(
        {c.group for c in list(records) + list(na)},
        key=lambda g: (settings.algorithms.index(g[0]), g[2], -(g[1] or math.inf)),
    )
    seeds = sorted({c.seed for c in records})
    cfg = parse_run_config(settings.base)
    members, nonmembers = _split_sizes(records)
    heads = len(dataset_tasks(cfg))
    plan = " or ".join(map(str, task_counts(cfg)))
    lines = [
        "# Privacy: utility and attacks vs ε, private vs shared heads, secure aggregation",
        "",
        written_by(settings.command),
        "",
        f"{len(records)} Flower simulations (+ {len(na)} n/a cells). Recorded per cell: "
        f"{sum(r.get('run_wall_time_s') or 0 for r in records.values()) / 60:.0f} min of "
        "server-side run time (excluding Flower's start-up) and "
        f"{sum(r.get('attack_seconds') or 0 for r in records.values()) / 60:.0f} min of "
        f"attacks{_invocations(settings)} (finished cells are resumed).",
        "",
        "## Settings",
        "",
        "- Run config: "
        + ", ".join(f"`{k}={v}`" for k, v in settings.base.items())
        + f"; everything else at its default (resolved: {training_text(cfg)}, weighting "
        f"{cfg.weighting}). Evaluated every "
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
            f"{ms(group_values(records, g, 'utility.mean_acc'))} | "
            f"{'–' if eps is None else ms(accuracy_drops(records, g), 1)} | "
            f"{ms(group_values(records, g, 'utility.sum_mae'), 2)} | "
            f"{ms(group_values(records, g, 'epsilon.final_max'), 2)} | "
            f"{ms(group_values(records, g, 'membership.m1_auc'))} | "
            f"{ms(group_values(records, g, 'membership.m1_advantage'))} | "
            f"{ms(group_values(records, g, 'membership.m2_auc'))} | "
            f"{ms(group_values(records, g, 'membership.m2_tpr_at_1pct_fpr'))} | "
            + (
                f"{ms(group_values(records, g, 'm3.round1.auc'))} ({m3v}) | "
                f"{ms(group_values(records, g, 'm3.final.auc'))} |"
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
                ms(group_values(records, g, f"r2.{k}"), 2)
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
        f"federated on {plan} tasks. Shadow pairs never equal a candidate pair, but "
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
    write(settings.out, text)
    write_plots(records, settings)
    return text


def _invocations(settings: Settings) -> str:
    """The grid's invocations' wall time in all, from its timings.json."""
    ran = Timings(Path(settings.results_dir) / "timings.json").ran()
    return (
        f"; the grid's invocations took {sum(i['wall_s'] for i in ran) / 60:.1f} min" if ran else ""
    )


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


def _digit_images() -> int:
    """How many images sklearn's bundled digits hold (every MultiDigits pair reuses them)."""
    from sklearn.datasets import load_digits

    return len(load_digits().images)


def _secagg_step(cfg: RunConfig) -> float:
    """Flower's SecAgg+ quantisation step per weight: the clipping interval over the levels."""
    return 2 * cfg.secagg_clipping_range / cfg.secagg_quantization_range
