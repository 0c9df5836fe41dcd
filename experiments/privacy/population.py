"""Client-level central DP where it can make sense: many clients, a secret sample per round.

With 4–6 clients, client-level DP must hide one whole client among a handful, and the noise
on the mean update (σ·C / clients per round) drowns it. This study runs SynthCorr with 1000
clients, 100 sampled per round (q = 0.1), FedPer (heads private; the encoder's update is
clipped and noised by the server, `cdp-clipping = fixed-server`), at each σ and without DP,
over seeds; every run is a real Flower simulation through the kit's runner (finished runs
are resumed).

Per σ it reports the utility (mean test accuracy of the classification tasks, the MAE of
the regression ones, each paired by seed against no DP) and two ε at δ = 1e-5:
- Flower's accountant (no amplification, add/remove neighbours), the ε the run enforces;
- ε amplified by the secret uniform sample (`cdp-amplification = "without-replacement"`,
  replace-one neighbours; `server.privacy.amplified_epsilon`).

    python -m experiments.privacy.population                   # seeds 0 1 2
    python -m experiments.privacy.population --sigmas 1 2 4 --seeds 0 1 2 3 4

Written to docs/privacy/population.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from common.config import parse_run_config, sampled_per_round
from deploy.runs import REPO, parse_overrides
from experiments.kit import cli
from experiments.kit.cells import finished, read_record
from experiments.kit.report import command, training_text, write, written_by
from experiments.kit.runner import Job, Timings, flower_run, run_jobs
from experiments.kit.scores import final_metrics, mean_classification_accuracy
from experiments.kit.stats import mean_std, paired_verdict, pm
from experiments.kit.tables import md_header, md_row
from server.results import read_metrics

SEEDS = (0, 1, 2)
SIGMAS = (2.0, 4.0)  # cdp-noise-multiplier; 0 in a cell is the no-DP row
CLIENTS, SAMPLED = 1000, 100
BASE: dict[str, Any] = {
    "dataset": "synthcorr",
    "algorithm": "fedper",
    "num-clients": CLIENTS,
    "samples-per-client": 100,
    "fraction-train": SAMPLED / CLIENTS,
    "num-server-rounds": 30,
    # only the final round evaluates, on every client
    "eval-every": 10_000,
    "fraction-evaluate": 0.0,
    "dp-epsilon": 1000.0,  # a report of ε over the whole budget, not a run stopped by it
}
RESULTS_DIR = REPO / "results" / "privacy-population"
OUT = REPO / "docs" / "privacy" / "population.md"
CELL_TIMEOUT_S = 3600.0
_MODULE = "experiments.privacy.population"  # the command a report names

Cell = tuple[float, int]  # (σ, 0 for no DP; seed)


def run_name(sigma: float, seed: int) -> str:
    return f"population-{'nodp' if sigma == 0 else f'sigma{sigma:g}'}-s{seed}"


def overrides(base: dict[str, Any], results_dir: Path, sigma: float, seed: int) -> dict:
    dp = (
        {
            "privacy": "central-dp",
            "cdp-clipping": "fixed-server",
            "cdp-noise-multiplier": sigma,
            "cdp-amplification": "without-replacement",
        }
        if sigma > 0
        else {}
    )
    return {
        **base,
        **dp,
        "seed": seed,
        "run-name": run_name(sigma, seed),
        "results-dir": str(Path(results_dir).resolve()),
    }


def summary_of(base: dict[str, Any], results_dir: Path, cell: Cell) -> dict[str, Any] | None:
    cfg = parse_run_config(overrides(base, results_dir, *cell))
    summary = read_record(Path(results_dir) / cfg.name / "summary.json")
    return summary if finished(summary, cfg) else None


def outcome(summary: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """What a finished run contributes: utility and, under DP, both ε after its last round
    and the rounds that released nothing."""
    rows = read_metrics(run_dir / "metrics.jsonl")
    dp = next((r["central_dp"] for r in reversed(rows) if "central_dp" in r), None)
    return {
        "accuracy": 100 * mean_classification_accuracy(summary),
        "tasks": final_metrics(summary),
        "epsilon": dp["epsilon"] if dp else None,
        "epsilon_amplified": dp.get("epsilon_amplified") if dp else None,
        "skipped": sum(1 for r in rows if r.get("skipped")),
    }


def report(
    results: dict[Cell, dict[str, Any]],
    sigmas: tuple[float, ...],
    seeds: tuple[int, ...],
    base: dict[str, Any],
    cmd: str,
    wall_s: float,
) -> str:
    cfg = parse_run_config(base)
    sampled = sampled_per_round(cfg, cfg.num_clients)
    rows = (0.0, *sigmas)
    lines = [
        f"# Client-level central DP with {cfg.num_clients} clients",
        "",
        written_by(cmd),
        "",
        f"{len(rows)} rows × {len(seeds)} seeds as real Flower simulations; the cells took "
        f"{wall_s / 60:.1f} min in all (wall time per cell, summed).",
        "",
        f"Setting: SynthCorr, {cfg.num_clients} clients with {cfg.samples_per_client} examples "
        f"each, {sampled} sampled per round (q = {sampled / cfg.num_clients:g}), "
        f"{cfg.num_server_rounds} rounds, {cfg.algorithm} (heads private), {training_text(cfg)}"
        f"; under DP the server clips each encoder update to C = {cfg.clipping_norm:g} and "
        f"adds N(0, (σC)²) to their sum (`cdp-clipping = fixed-server`). Only the final round "
        "evaluates, on every client.",
        "",
        "ε at δ = 1e-5 after the last round, two ways:",
        "- *Flower*: Flower's RDP accountant, no amplification, add/remove neighbours; the run "
        "enforces its budget on this one (Flower's fixed-clipping wrappers accept no other "
        "sampling method).",
        "- *amplified*: the same releases as a uniform sample without replacement of "
        f"{sampled} of {cfg.num_clients} (Wang, Balle and Kasiviswanathan 2019), under replace-one "
        "neighbours (the population size is public), where the clipped sum's sensitivity is "
        "2C. It holds because the sample is secret (drawn from OS entropy) and drawn from "
        "every client.",
        "",
        "Utility: mean test accuracy over the classification tasks (client mean, final round) "
        "and the difference from no DP paired by seed, 95 % t interval and paired t-test.",
        "",
        *md_header(
            "σ", "mean accuracy %", "vs no DP", "ε (Flower)", "ε (amplified)", "rounds skipped"
        ),
    ]
    base_acc = [results[(0.0, s)]["accuracy"] for s in seeds]
    for sigma in rows:
        res = [results[(sigma, s)] for s in seeds]
        acc = [r["accuracy"] for r in res]
        verdict = paired_verdict(acc, base_acc).text() if sigma else "–"
        eps = [r["epsilon"] for r in res if r["epsilon"] is not None]
        amp = [r["epsilon_amplified"] for r in res if r["epsilon_amplified"] is not None]
        lines.append(
            md_row(
                f"{sigma:g}" if sigma else "no DP",
                pm(mean_std(acc), 1),
                verdict,
                pm(mean_std(eps), 2, bare_single=True) if eps else "∞",
                pm(mean_std(amp), 2, bare_single=True) if amp else "∞",
                ", ".join(str(r["skipped"]) for r in res),
            )
        )
    tasks = sorted(results[(0.0, seeds[0])]["tasks"])
    lines += ["", "Final test metric per task (client mean; mean ± std over seeds):", ""]
    lines += md_header("task", "metric", *(f"σ = {s:g}" if s else "no DP" for s in rows))
    for task in tasks:
        metric = results[(0.0, seeds[0])]["tasks"][task][0]
        values = [pm(mean_std(results[(s, k)]["tasks"][task][1] for k in seeds), 3) for s in rows]
        lines.append(md_row(task, metric, *values))
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    cli.stop_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cli.add_study_options(parser, seeds=SEEDS)
    parser.add_argument("--sigmas", nargs="+", type=float, default=list(SIGMAS))
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--out", type=Path, default=OUT)
    given = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(given)
    if any(s <= 0 for s in args.sigmas):
        parser.error("--sigmas are noise multipliers > 0 (the no-DP row is always run)")
    sigmas, seeds = tuple(args.sigmas), tuple(args.seeds)
    base = {**BASE, **parse_overrides(args.run_config)}
    cells = [(sigma, seed) for seed in seeds for sigma in (0.0, *sigmas)]
    if args.dry_run:
        return cli.dry_run(
            (f"σ={c[0]:g}", run_name(*c), summary_of(base, args.results_dir, c) is not None)
            for c in cells
        )
    if not args.report_only:
        todo = [c for c in cells if summary_of(base, args.results_dir, c) is None]
        jobs = [
            Job(
                run_name(*c),
                "flower",
                flower_run,
                (overrides(base, args.results_dir, *c), CELL_TIMEOUT_S),
            )
            for c in todo
        ]
        run_jobs("population", jobs, total=len(cells), results_dir=Path(args.results_dir).resolve())
    summaries = {c: summary_of(base, args.results_dir, c) for c in cells}
    missing = [run_name(*c) for c, s in summaries.items() if s is None]
    if missing:
        print(f"population: no finished run for {', '.join(missing)}", file=sys.stderr)
        return 1
    results = {
        c: outcome(s, Path(args.results_dir) / run_name(*c))  # type: ignore[arg-type]
        for c, s in summaries.items()
    }
    per_cell = Timings(Path(args.results_dir) / "timings.json").cells
    wall = sum(per_cell.get(run_name(*c), 0.0) for c in cells)
    write(args.out, report(results, sigmas, seeds, base, command(_MODULE, given), wall))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
