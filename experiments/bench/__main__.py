"""`python -m experiments.bench`: run the benchmark sections, save each one's measurements
(results/bench/<section>.json), and rewrite docs/PERFORMANCE.md from all saved sections.

    python -m experiments.bench                      # everything (< 30 min on 2 cores)
    python -m experiments.bench --only aggregation   # one section; the others come from disk
    python -m experiments.bench --report-only        # re-render the document
    python -m experiments.bench --dry-run            # which sections are saved
    python -m experiments.bench --quick --no-doc     # smoke test of the harness
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from experiments.bench.harness import BenchContext, machine_info
from experiments.bench.report import DOC, ORDER, PLOTS, plot, render
from experiments.kit import cli
from experiments.kit.report import command, write


def load_saved(out_dir: Path) -> dict[str, dict[str, Any]]:
    """Sections measured earlier (full-size only: quick results never reach the document)."""
    found = {}
    for name in ORDER:
        path = out_dir / f"{name}.json"
        if path.exists():
            found[name] = json.loads(path.read_text())
    return found


def main(argv: list[str] | None = None) -> int:
    cli.stop_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=ORDER, help="sections to run")
    parser.add_argument("--quick", action="store_true", help="smoke-test sizes")
    parser.add_argument("--no-doc", action="store_true", help="do not write docs/")
    parser.add_argument("--out-dir", type=Path, default=None, help="default results/bench")
    parser.add_argument("--doc", type=Path, default=DOC, help="default docs/PERFORMANCE.md")
    parser.add_argument("--plots-dir", type=Path, default=PLOTS, help="default docs/performance")
    cli.add_modes(parser)
    given = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(given)

    ctx = BenchContext(quick=args.quick)
    if args.out_dir is not None:
        ctx.out_dir = args.out_dir
    elif args.quick:
        ctx.out_dir = ctx.out_dir.parent / "bench-quick"
    if args.dry_run:
        saved = load_saved(ctx.out_dir)
        return cli.dry_run(("section", name, name in saved) for name in args.only or ORDER)
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    machine_path = ctx.out_dir / "machine.json"
    failed = []
    if not args.report_only:
        # The report describes the machine that measured, not the one that re-renders it.
        machine_path.write_text(json.dumps(machine, indent=1))
        for name in args.only or ORDER:
            ctx.log(f"=== section {name} ===")
            t0 = time.perf_counter()
            try:
                module = importlib.import_module(f"experiments.bench.{name}")
                result = module.run(ctx)
            except Exception:
                traceback.print_exc()
                failed.append(name)
                continue
            result["measured_at"] = time.strftime("%Y-%m-%d %H:%M")
            result["load_avg_after"] = machine_info()["load_avg"]
            (ctx.out_dir / f"{name}.json").write_text(json.dumps(result, indent=1))
            ctx.log(f"=== section {name} done in {time.perf_counter() - t0:.0f}s ===")
            for t in result.get("targets", []):
                ctx.log(
                    f"target: {t['name']}: {t['measured']:.3g} (limit {t['limit']}) "
                    f"{'met' if t['met'] else 'NOT met'}"
                )
    sections = load_saved(ctx.out_dir)
    if machine_path.exists():
        machine = json.loads(machine_path.read_text())
    if not args.no_doc and sections:
        text = render(sections, machine, quick=args.quick, command=_command(given))
        write(args.doc, text + "\n")
        plot(sections, args.plots_dir)
        ctx.log(f"wrote {args.doc}")
    ctx.log(f"total {time.perf_counter() - ctx.started:.0f}s; failed sections: {failed or 'none'}")
    return 1 if failed else 0


def _command(argv: list[str]) -> str:
    """The command that wrote the document: the sections it holds are whichever were saved,
    so `--only` and its names are not part of it."""
    kept, skipping = [], False
    for arg in argv:
        skipping = arg == "--only" or (skipping and not arg.startswith("-"))
        if not skipping:
            kept.append(arg)
    return command("experiments.bench", kept)


if __name__ == "__main__":
    sys.exit(main())
