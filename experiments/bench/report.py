"""docs/PERFORMANCE.md and its plots, from the sections' measurements (JSON under
results/bench/). Pure formatting: it measures nothing, so it can be tested on made-up numbers
and re-run on saved ones."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from deploy.runs import REPO
from experiments.bench import gpu, hfmemory
from experiments.bench.render_overhead import render_overhead
from experiments.bench.render_sections import (
    render_aggregation,
    render_communication,
    render_deployment,
    render_scale,
)
from experiments.bench.text import fmt, table
from experiments.kit import plots
from experiments.kit.report import written_by

DOC = REPO / "docs" / "PERFORMANCE.md"
PLOTS = REPO / "docs" / "performance"
ORDER = ("overhead", "scale", "aggregation", "communication", "deployment", "gpu", "hfmemory")
COMMANDS = {
    "all": "python -m experiments.bench            # every section, rewrites docs/PERFORMANCE.md",
    "some": "python -m experiments.bench --only scale aggregation   # re-run some, keep the rest",
    "report": "python -m experiments.bench --report-only   # re-render from results/bench/*.json",
    "quick": "python -m experiments.bench --quick --no-doc   # smoke test of the harness",
}
BENCH_MINUTES = 30.0  # target: all sections together


def targets_table(sections: dict[str, dict[str, Any]]) -> list[str]:
    rows = []
    for name in ORDER:
        for t in sections.get(name, {}).get("targets", []):
            unit = t.get("unit", "×")
            sign = "≥" if t.get("higher_is_better") else "≤"
            rows.append(
                [
                    name,
                    t["name"],
                    fmt(t["measured"], 2, f" {unit}" if unit != "×" else "×"),
                    f"{sign} {fmt(t['limit'], 1)}{'×' if unit == '×' else ' ' + unit}",
                    "**met**" if t["met"] else "**not met**",
                    t.get("note", ""),
                ]
            )
    if all(name in sections for name in ORDER):
        minutes = sum(sections[n].get("seconds", 0.0) for n in ORDER) / 60
        loads = [sections[n].get("load_avg_after", [float("nan")])[0] for n in ORDER]
        rows.append(
            [
                "bench",
                "`python -m experiments.bench`: all sections (sum of their durations)",
                fmt(minutes, 1, " min"),
                f"≤ {BENCH_MINUTES:g} min",
                "**met**" if minutes <= BENCH_MINUTES else "**not met**",
                f"1-min load average after each section: {', '.join(fmt(x, 1) for x in loads)}",
            ]
        )
    return table(["section", "target", "measured", "target", "status", "note"], rows)


# --- sections ---


RENDERERS: dict[str, Callable[[dict[str, Any], dict[str, Any]], list[str]]] = {
    "overhead": render_overhead,
    "scale": render_scale,
    "aggregation": render_aggregation,
    "communication": render_communication,
    "deployment": render_deployment,
    "gpu": gpu.render,
    "hfmemory": hfmemory.render,
}


def render(
    sections: dict[str, dict[str, Any]],
    machine: dict[str, Any],
    *,
    quick: bool = False,
    command: str = "python -m experiments.bench",
) -> str:
    """The whole document; `command` is the one that wrote it."""
    lines = [
        "# Performance",
        "",
        written_by(command),
        "",
        "**Timings come from a shared machine** (other engineers' experiments were running): "
        "absolute seconds vary from run to run, so every comparison below is a ratio of two "
        "numbers measured in the same bench run, close together in time (interleaved where "
        "possible), and repeated measurements are summarised by their median or minimum.",
        "",
    ]
    if quick:
        lines += ["**Quick mode: smoke-test sizes, not the targets' configurations.**", ""]
    lines += ["## Machine", ""]
    lines += table(
        ["item", "value"],
        [
            ["CPU", machine.get("cpu", "?")],
            ["cores", machine.get("cores", "?")],
            ["RAM", f"{machine.get('ram_gib', '?')} GiB"],
            ["load average at start (1, 5, 15 min)", machine.get("load_avg", "?")],
            ["OS", machine.get("os", "?")],
            ["Python", machine.get("python", "?")],
            ["torch", machine.get("torch", "?")],
            ["flwr", machine.get("flwr", "?")],
            ["ray", machine.get("ray", "?")],
            ["numpy", machine.get("numpy", "?")],
            ["commit", machine.get("commit", "?")],
            ["date", machine.get("date", "?")],
        ],
    )
    lines += ["## Targets", "", *targets_table(sections)]
    for name in ORDER:
        if name in sections:
            lines += RENDERERS[name](sections[name], machine)
    lines += ["## Commands", "", "```", *list(COMMANDS.values()), "```", ""]
    rows = [
        [
            name,
            fmt(sections[name].get("seconds"), 0),
            sections[name].get("measured_at", ""),
            sections[name].get("load_avg_after", ""),
        ]
        for name in ORDER
        if name in sections
    ]
    total = sum(sections[n].get("seconds", 0.0) for n in ORDER if n in sections)
    rows.append(["**total**", fmt(total, 0), "", ""])
    lines += [
        "Section durations (s) and the machine's load average when each ended:",
        "",
        *table(["section", "seconds", "measured at", "load average after"], rows),
    ]
    return "\n".join(lines)


def plot(sections: dict[str, dict[str, Any]], directory: Path = PLOTS) -> list[Path]:
    """Per-round times (Flower vs bare) and time per round vs sampled clients."""
    plt = plots.pyplot()
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    ov = sections.get("overhead", {})
    if ov.get("flower") and ov.get("bare"):
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for tag, f in ov["flower"].items():
            ax.plot(
                range(1, len(f["round_seconds"]) + 1),
                f["round_seconds"],
                marker=".",
                label=f"Flower {tag}",
            )
        b = [r["seconds"] for r in ov["bare"]["rounds"]]
        ax.plot(range(1, len(b) + 1), b, marker=".", label="bare loop")
        ax.set_yscale("log")
        ax.set_xlabel("round")
        ax.set_ylabel("seconds")
        ax.set_title("Round time, `make run` config")
        ax.legend()
        ax.grid(alpha=0.3)
        written.append(plots.save(fig, directory / "overhead_rounds.png", dpi=90))
    sc = sections.get("scale", {})
    if sc.get("points"):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        xs = [p[0] for p in sc["points"]]
        ys = [p[1] for p in sc["points"]]
        ax.plot(xs, ys, "o", label="measured (warm median)")
        fit = sc.get("fit", {})
        if fit:
            ax.plot(
                xs, [fit["slope"] * x + fit["intercept"] for x in xs], "-", label="least squares"
            )
        ax.set_xlabel("clients sampled per round")
        ax.set_ylabel("training round, s")
        ax.set_title(f"{sc.get('clients')} clients, SynthCorr")
        ax.legend()
        ax.grid(alpha=0.3)
        written.append(plots.save(fig, directory / "scale_rounds.png", dpi=90))
    return written
