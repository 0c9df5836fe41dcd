"""The kit every study is built from: grid → run → report.

- `cells`: when a cell is finished (the one rule: completed, trained as the grid asks, up to
  its final round), reading result files.
- `runner`: runs the cells that are not finished on one SimulationEngine (local work in
  worker processes), one progress/ETA line per cell, timings in `timings.json`.
- `stats`: mean ± std, mean ± 95 % CI, paired differences and tests (scipy).
- `scores`: the numbers read off a run's summary (headline metrics, Δm).
- `tables`, `plots`, `report`: Markdown tables, matplotlib figures, the "Written by" header.
- `cli`: the options every study shares (--seeds, -c, --dry-run, --report-only).

A study module holds what is particular to it: its cells, its base config, what a cell
runs, and what its report says.
"""
