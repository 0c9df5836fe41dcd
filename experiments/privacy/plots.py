"""The privacy sweep's plots, from the cells' privacy.json records only."""

from __future__ import annotations

from typing import Any

import numpy as np

from common.config import parse_run_config
from experiments.kit import plots
from experiments.privacy.findings import GOAL_AUC
from experiments.privacy.grid import Cell, Settings
from experiments.privacy.records import group_values


def write_plots(records: dict[Cell, dict[str, Any]], settings: Settings) -> None:
    plt = plots.pyplot()
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
    plots.save(fig, settings.plots / "utility_vs_epsilon.png", dpi=100)

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
    plots.save(fig, settings.plots / "attacks_vs_epsilon.png", dpi=100)

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
    plots.save(fig, settings.plots / "reconstruction_vs_epsilon.png", dpi=100)

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
    plots.save(fig, settings.plots / "epsilon_per_round.png", dpi=100)
