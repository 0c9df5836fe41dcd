"""Compare algorithms on a grid of (dataset, α, algorithm, weighting, strategy, seed).

Federated cells run through the Flower Simulation Engine (one SuperLink for the whole grid,
one `run-name` per cell, results under `<grid-dir>/runs/`); the two references (centralized
MTL, local single-task) and the new-client transfer run in-process on the same splits and
model code, in a worker process alongside the simulations. A finished cell (the kit's rule,
`Grid.finished`) is skipped, so an interrupted grid resumes. At the end it writes a CSV, a
Markdown table, plots and, for the default suite, docs/RESULTS.md.

Modules: `grid` (settings, rows, cells), `run` (through the kit's runner), `references` and
`transfer` (the in-process work), `collect` (rows from the result files), `tables`,
`targets`, `plots` and `page` (what is written), `cli`.

    python -m experiments.compare                          # the default suite -> docs/RESULTS.md
    python -m experiments.compare --datasets multidigits --alphas 0.5 \\
        --algorithms local fedper single-task --seeds 0 1 -c num-server-rounds=5
    python -m experiments.compare --datasets user --data-file F --schema-file S \\
        --algorithms local fedavg fedper --seeds 0 1   # your own CSV/NPZ: no targets
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    """`python -m experiments.compare` and `fedmtl-compare` (imported on call: the grid
    modules do not need the command line)."""
    from experiments.compare.cli import main as run

    return run(argv)
