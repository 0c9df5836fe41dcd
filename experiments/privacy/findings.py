"""What the privacy report concludes, read off its tables so the text cannot drift from the
numbers: the findings, the privacy goal at ε = GOAL_EPSILON, and the ε accounting check."""

from __future__ import annotations

from typing import Any

import numpy as np

from common.datasets import MULTIDIGITS_TASKS
from experiments.privacy.grid import INVERSION_TASK, Cell, Settings
from experiments.privacy.records import accuracy_drops, group_values, ms

GOAL_EPSILON, GOAL_AUC, GOAL_DROP = 3.0, 0.55, 8.0  # the privacy goal the report checks


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
            f"| {g[0]} | {'on' if g[2] else 'off'} | {ms(m1)} | {ms(m2)} | {ms(drop, 1)} | "
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
