"""What a comparison writes: the CSV, table.md (grid dir), the plots and, when asked,
RESULTS.md with the setup, the targets, wall time, tables and transfer, all from the result
files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from common.config import RunConfig, parse_run_config
from experiments.compare.collect import Aggregate, Collected, RowKey, aggregate, collect, write_csv
from experiments.compare.grid import LABELS, Grid
from experiments.compare.plots import write_plots
from experiments.compare.tables import (
    efficiency_table,
    tables_markdown,
    transfer_summary,
    transfer_table,
)
from experiments.compare.targets import (
    CENTRALIZED_MARGIN,
    FED_MTL,
    HEADLINE_SETTING,
    PRIVATE_HEADS,
    SUITE_MINUTES,
    Target,
    _alpha_name,
    check_targets,
    suite_wall_time,
)
from experiments.kit.report import relpath, write, written_by
from experiments.kit.runner import hms
from experiments.kit.tables import md_header, md_row


def write_reports(
    grid: Grid,
    *,
    plots_dir: Path,
    docs_path: Path | None = None,
    command: str = "python -m experiments.compare",
    out: Callable[[str], None] = print,
) -> list[Path]:
    """CSV, table.md (grid dir), plots and, when asked, RESULTS.md; returns the paths."""
    collected = collect(grid)
    agg = aggregate(collected.rows)
    written = [write_csv(collected.rows, grid.grid_dir / "compare.csv")]
    plots = write_plots(collected, agg, plots_dir)
    written += list(plots.values())
    table_path = grid.grid_dir / "table.md"
    lines = [f"# Comparison grid `{grid.name}`", ""]
    lines += tables_markdown(collected, agg, plots, lambda p: relpath(p, table_path.parent))
    tsum = transfer_summary(collected)
    if tsum:
        lines += ["## Transfer to new clients", "", *transfer_table(grid, tsum), ""]
    write(table_path, "\n".join(lines) + "\n")
    written.append(table_path)
    targets = check_targets(collected, agg)
    for t in targets:
        out(f"target [{t.status}] {t.name}: {t.detail}")
    if docs_path is not None:
        write(docs_path, results_markdown(collected, agg, plots, targets, tsum, docs_path, command))
        written.append(docs_path)
    if collected.missing:
        out(
            f"report: {len(collected.missing)} cells have no finished result: "
            + ", ".join(collected.missing[:8])
            + (" …" if len(collected.missing) > 8 else "")
        )
    return written


SETUP = """\
- Rows: **Local** (`algorithm=local` through Flower, nothing shared), **Local single-task**
  (one model per client and task, in-process, same budget), FedAvg, FedAvg-FT, FedPer, FedRep,
  Ditto, FedRoD (through the Flower Simulation Engine), **Centralized** (all clients' training
  data pooled, one model with every task, same architecture, optimizer and epochs; evaluated on
  every client's own test split). The references use `load_client_data` for the same splits and
  `build_model` / `local_round` / `train_epochs` for the same model and training code.
- Metric: final-round test metric per client (accuracy for classification, MAE for
  regression, mIoU for segmentation, abs-rel for depth), mean over the clients holding the
  task; mean ± std (sample std) over seeds.
  *mean cls acc* = mean over the classification tasks. Δm (%) = mean over tasks of the
  per-task mean over clients of (−1)^{{higher-is-better}}·(M − M_single-task)/M_single-task·100,
  against local single-task with the same seed (lower is better).
- Selection: no model or round selection; the headline is the final round. Where a target
  names the *best* federated MTL algorithm ({fed_mtl}), it is chosen on the validation splits'
  mean classification accuracy, never on test. FedAvg-FT and FedRoD send task heads to the
  server (FedRoD its generic heads); a supplementary target repeats the {headline} check over
  the algorithms whose heads never leave the client ({private_heads}). Centralized, which the
  best federated MTL must come within {margin:g} points of, is the one with its lr chosen on
  validation; Centralized at the federation's lr is shown for information only.
- Parameters: per client, mean over clients. *Shared* = what travels each round (encoder;
  heads under FedAvg; generic heads under FedRoD); *private* = what a client keeps (its heads;
  Ditto's whole personal model; FedAvg-FT's fine-tuned heads are a throw-away copy). Bytes per
  round: `summary.json` bytes_up / bytes_down ÷ rounds, all clients together (down includes
  the arrays sent for evaluation).
"""

TRANSFER = """\
Setting `{setting}`: the federation is simulated with {fed} clients (`num-clients={fed}`);
clients {held} of the {n}-client partitioning never take part. Same generator and seed, so the
same distribution; on MultiDigits the digit images are split into train/test pools by the
seed, so a new client's test images were never in any federation client's training data.
Each new client trains on {fractions} of its training split (a seeded subset), for rounds ×
local epochs = {epochs} epochs: either its own heads on the frozen global encoder
(`shared_arrays.npz` of the federation's last round) or the whole model from scratch. Scored
on its full test split; per seed the mean over the new clients holding the task, then mean ±
std over seeds.
"""


def results_markdown(
    collected: Collected,
    agg: dict[RowKey, Aggregate],
    plots: dict[str, Path],
    targets: list[Target],
    tsum: dict[str, Any],
    docs_path: Path,
    command: str,
) -> str:
    grid = collected.grid
    rel = lambda p: relpath(p, docs_path.parent)  # noqa: E731
    total, inv = suite_wall_time(grid)
    cfg = parse_run_config({**grid.common, **grid.settings[0].config})
    settings = ", ".join(f"`{s.label}`" for s in grid.settings)
    lines = [
        "# Results: federated multi-task learning, all algorithms against the references",
        "",
        written_by(command),
        "Every number below is read from the runs' result files: rerun the command instead.",
        "",
        "## How to reproduce",
        "",
        "```bash",
        "make venv   # or: python3 -m venv .venv && .venv/bin/pip install -e '.[dev]'",
        f".venv/bin/{command}",
        "```",
        "",
        "It resumes: a cell whose `summary.json` says completed with the same config is skipped",
        f"(`--dry-run` lists what is done). Results: `{relpath(grid.grid_dir, Path.cwd())}/`",
        "(`runs/<cell>/` per run, `compare.csv` one row per cell × task, `table.md`,",
        "`timings.json`).",
        "",
        "## Setup",
        "",
        f"- Settings: {settings}; seeds {', '.join(map(str, grid.seeds))}; weighting "
        f"{', '.join(grid.weightings)}; Flower strategy {', '.join(grid.strategies)}.",
        f"- Budget, the same for every row: {cfg.num_server_rounds} rounds × {cfg.local_epochs} "
        f"local epochs (references: the same number of epochs), batch {cfg.batch_size}, SGD lr "
        f"{cfg.lr:g}, momentum {cfg.momentum:g}. Overrides of the run-config defaults for all "
        f"cells: {', '.join(f'`{k}={v}`' for k, v in grid.common.items()) or 'none'}. "
        f"Each setting's own keys, which hold for all of its rows: {setting_keys(grid)}."
        + (f" Why: {note}" if grid.name == "default" and (note := suite_note(grid, inv)) else ""),
        SETUP.format(
            fed_mtl=", ".join(LABELS[m] for m in FED_MTL),
            private_heads=", ".join(LABELS[m] for m in PRIVATE_HEADS),
            headline=_alpha_name(HEADLINE_SETTING) or HEADLINE_SETTING,
            margin=CENTRALIZED_MARGIN,
        ),
        "## Targets",
        "",
        *md_header("target", "status", "numbers"),
        *[md_row(t.name, f"**{t.status}**", t.detail) for t in targets],
        "",
        "## Wall time",
        "",
        f"Total for this grid: **{hms(total)}** (h:mm:ss) on {_cpu_note(inv)}, measured by the",
        "command itself (sum over the invocations that ran cells; the machine is shared, so",
        "timings are noisy).",
        "",
        *[
            f"- {i['started']}: {hms(i['wall_s'])}, {i['ran']} cells run, "
            f"{i['skipped']} skipped, {i.get('failed', 0)} failed; mean 1-minute load average "
            f"{i.get('mean_load') or '?'} on {i.get('cpus', '?')} cores (other work included)"
            + ("" if i.get("finished", True) else " — interrupted")
            + (f". {i['note']}" if i.get("note") else "")
            for i in inv
        ],
        "",
        "## Results per setting",
        "",
        "Final-round test metric (client mean), mean ± std over seeds. KiB/round: all clients.",
        "",
        *tables_markdown(collected, agg, plots, rel),
    ]
    if "delta_m" in plots:
        lines += ["## Δm per algorithm", "", f"![Δm per algorithm]({rel(plots['delta_m'])})", ""]
    lines += ["## Parameter efficiency", "", *efficiency_table(grid, agg), ""]
    if tsum and grid.transfer:
        t = grid.transfer
        adapt = next(c for c in grid.cells() if c.kind == "transfer")
        n = parse_run_config(grid.overrides(adapt)).num_clients
        text = TRANSFER.format(
            setting=t.setting,
            fed=n - t.holdout,
            held=", ".join(str(i) for i in range(n - t.holdout, n)),
            n=n,
            fractions=", ".join(f"{100 * f:g} %" for f in t.fractions),
            epochs=cfg.num_server_rounds * cfg.local_epochs,
        )
        lines += ["## Knowledge transfer to new clients", "", text, *transfer_table(grid, tsum), ""]
        for alg in tsum:
            if f"transfer-{alg}" in plots:
                lines += [f"![transfer, {alg}]({rel(plots[f'transfer-{alg}'])})", ""]
    if collected.missing:
        lines += ["## Missing cells", "", *[f"- `{m}`" for m in collected.missing], ""]
    return "\n".join(lines) + "\n"


def _cpu_note(invocations: list[dict[str, Any]]) -> str:
    """The CPU count the invocations recorded (the machine that ran them, not this one)."""
    cpus = sorted({i["cpus"] for i in invocations if i.get("cpus")})
    return (
        f"{'/'.join(map(str, cpus))} CPU cores"
        if cpus
        else "a machine whose CPUs were not recorded"
    )


# Keys that locate a setting's files: machine-specific, so not printed.
FILE_KEYS = ("hf-dataset", "schema-file", "data-file")


def setting_keys(grid: Grid) -> str:
    """Every setting's own run-config keys (its files' locations left out)."""
    return "; ".join(
        f"`{s.label}`: " + ", ".join(f"`{k}={v}`" for k, v in s.overrides if k not in FILE_KEYS)
        for s in grid.settings
    )


def suite_note(grid: Grid, invocations: list[dict[str, Any]]) -> str:
    """Why the default suite's budget differs from the run-config defaults, with the numbers
    taken from RunConfig, the grid and the invocations' records."""
    default = RunConfig().num_server_rounds
    rounds = parse_run_config(grid.common).num_server_rounds
    if rounds == default:
        return ""
    cpus = sorted({i["cpus"] for i in invocations if i.get("cpus")})
    on = f" on {'/'.join(map(str, cpus))} cores" if cpus else ""
    return (
        f"the run-config default is {default} rounds; the default suite runs {rounds} for every "
        f"row alike to fit the {SUITE_MINUTES:g}-minute target{on} (a Flower cell's cost is "
        "mostly fixed start-up, so fewer rounds is the cut that keeps every row and seed)."
    )
