"""The study kit (experiments/kit): the one finished-cell rule, the runner's scheduling and
records, the statistics and the shared formatting."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from scipy import stats as sp

from common.config import parse_run_config
from experiments.bench.report import ORDER as BENCH_SECTIONS
from experiments.kit.cells import finished, read_record
from experiments.kit.report import command
from experiments.kit.runner import Job, Timings, run_jobs
from experiments.kit.stats import mean_ci, mean_std, paired, paired_verdict, pm
from experiments.kit.tables import md_table

CONFIG = {"num-clients": 3, "num-server-rounds": 4, "samples-per-client": 60, "hidden": 32}


def summary(config: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """A summary.json as the ServerApp writes it: completed, every round run."""
    cfg = parse_run_config(config)
    return {
        "status": "completed",
        "final_round": cfg.num_server_rounds,
        "config": cfg.to_dict() | {"digest": cfg.digest()},
        **fields,
    }


def test_a_finished_cell_is_completed_trained_the_same_and_at_its_final_round() -> None:
    cfg = parse_run_config(CONFIG)
    assert finished(summary(CONFIG), cfg)
    assert not finished(None, cfg)
    assert not finished(summary(CONFIG, status="failed"), cfg)
    # The same digest but stopped before the final round (a stop condition, a resumed run
    # that has not caught up): not finished.
    assert not finished(summary(CONFIG, final_round=3, stopped_early="stop condition"), cfg)
    # Another training config: not finished.
    assert not finished(summary({**CONFIG, "lr": 0.2}), cfg)
    # More rounds asked than the run had (the digest leaves the round count out).
    assert not finished(summary(CONFIG), parse_run_config({**CONFIG, "num-server-rounds": 5}))
    # Another evaluation cadence: the per-round metrics differ.
    assert not finished(summary(CONFIG), parse_run_config({**CONFIG, "eval-every": 2}))
    # Keys a run recorded before they existed count as their defaults; paths do not matter.
    old = summary(CONFIG)
    del old["config"]["tau"]
    old["config"]["results-dir"] = "/elsewhere"
    assert finished(old, cfg)
    # A record of work done in one piece says how far it got instead of `final_round`.
    piece = {k: v for k, v in summary(CONFIG).items() if k != "final_round"}
    assert not finished(piece, cfg)
    assert finished(piece, cfg, reached=cfg.num_server_rounds)


def test_a_torn_record_reads_as_absent(tmp_path: Path) -> None:
    path = tmp_path / "summary.json"
    assert read_record(path) is None
    path.write_text('{"status": "compl')
    assert read_record(path) is None
    path.write_text(json.dumps({"status": "completed"}))
    assert read_record(path) == {"status": "completed"}


def _ok(name: str, log: list[str]) -> dict[str, Any]:
    log.append(name)
    return {"status": "completed"}


def _flower_ok(engine: object, name: str, log: list[str]) -> dict[str, Any]:
    assert engine == "engine"  # flower jobs get the grid's engine first
    return _ok(name, log)


def _flower_fails(engine: object, name: str, log: list[str]) -> dict[str, Any]:
    log.append(name)
    raise RuntimeError("the SuperLink went away")


def test_the_runner_goes_on_after_a_failure_and_orders_dependent_work(tmp_path: Path) -> None:
    """A failed cell (an exception) fails itself and the work that needs it, not the grid;
    work that needs a successful cell runs after it; every cell gets a progress line and
    its wall time lands in timings.json with the invocation."""
    log: list[str] = []
    jobs = [
        Job("ref", "reference", _ok, ("ref", log), flower=False),
        Job("adapt-a", "transfer", _ok, ("adapt-a", log), flower=False, after="fed-a"),
        Job("adapt-b", "transfer", _ok, ("adapt-b", log), flower=False, after="fed-b"),
        Job("fed-a", "flower", _flower_ok, ("fed-a", log), detail=lambda: "acc 0.5 "),
        Job("fed-b", "flower", _flower_fails, ("fed-b", log)),
    ]
    lines: list[str] = []
    run = run_jobs("study", jobs, total=7, results_dir=tmp_path, engine="engine", out=lines.append)  # type: ignore[arg-type]
    assert log == ["ref", "fed-a", "adapt-a", "fed-b"]  # adapt-b never ran
    assert run.ran == 5 and run.skipped == 2 and run.failed == ["fed-b", "adapt-b"]
    assert lines[0].startswith("study: 7 cells, 2 done earlier (skipped), 5 to run")
    progress = lines[1:]
    assert len(progress) == 5 and all("| ETA " in line for line in progress)
    assert progress[-1].startswith("[   7/7]")
    assert "acc 0.5" in next(line for line in progress if " fed-a " in line)
    assert "RuntimeError: the SuperLink went away" in next(x for x in progress if " fed-b " in x)
    assert "fed-b failed" in next(line for line in progress if " adapt-b " in line)
    timings = Timings(tmp_path / "timings.json")
    assert set(timings.cells) == {"ref", "fed-a", "fed-b", "adapt-a", "adapt-b"}
    (inv,) = timings.invocations
    assert inv["ran"] == 5 and inv["failed"] == 2 and inv["skipped"] == 2 and inv["finished"]


def test_nothing_to_run_starts_nothing(tmp_path: Path) -> None:
    lines: list[str] = []
    run = run_jobs("study", [], total=3, results_dir=tmp_path, out=lines.append)
    assert run.ran == 0 and run.skipped == 3 and len(lines) == 1
    assert not (tmp_path / "timings.json").exists()


def test_mean_std_and_ci_follow_scipy() -> None:
    values = [0.71, 0.74, None, 0.69, math.nan, 0.80]
    clean = [0.71, 0.74, 0.69, 0.80]
    m, s, n = mean_std(values)
    assert n == 4 and m == pytest.approx(sum(clean) / 4)
    assert s == pytest.approx(sp.tstd(clean))
    low, high = sp.t.interval(0.95, 3, loc=m, scale=sp.sem(clean))
    ci = mean_ci(values)
    assert ci.mean == pytest.approx(m) and ci.spread == pytest.approx((high - low) / 2)
    assert math.isnan(mean_ci([0.5]).spread) and mean_std([0.5]).spread == 0.0
    assert mean_std([]).n == 0


def test_paired_differences_and_their_tests_follow_scipy() -> None:
    a, b = [0.80, 0.83, 0.79, 0.85, 0.82], [0.78, 0.80, 0.79, 0.81, 0.77]
    p = paired(a, b)
    assert p.diffs == pytest.approx([0.02, 0.03, 0.0, 0.04, 0.05])
    assert p.stat.mean == pytest.approx(0.028) and p.stat.n == 5
    assert p.t_p == pytest.approx(sp.ttest_rel(a, b).pvalue)
    assert p.wilcoxon_p == pytest.approx(
        sp.wilcoxon([x - y for x, y in zip(a, b, strict=True)]).pvalue
    )
    assert math.isnan(paired([1.0], [0.0]).t_p)
    with pytest.raises(ValueError, match="same seeds"):
        paired([1.0, 2.0], [1.0])


def test_a_paired_verdict_is_the_t_test_at_alpha_with_the_t_interval() -> None:
    a, b = [0.80, 0.83, 0.79, 0.85, 0.82], [0.78, 0.80, 0.79, 0.81, 0.77]
    v = paired_verdict(a, b)
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    low, high = sp.t.interval(0.95, 4, loc=sum(diffs) / 5, scale=sp.sem(diffs))
    assert (v.low, v.high) == (pytest.approx(low), pytest.approx(high))
    assert v.p == pytest.approx(sp.ttest_rel(a, b).pvalue) and v.p < 0.05
    assert v.verdict == "better at α = 0.05"
    assert paired_verdict(b, a).verdict == "worse at α = 0.05"
    assert paired_verdict(a, b, higher_is_better=False).verdict == "worse at α = 0.05"
    noisy = paired_verdict([0.80, 0.60, 0.75], [0.70, 0.71, 0.72])
    assert noisy.p > 0.05 and noisy.verdict == "no difference at α = 0.05"
    assert noisy.low < 0 < noisy.high  # the interval holds 0 when the test does not reject
    assert paired_verdict([0.9], [0.1]).verdict == "n/a"
    assert "95 % CI" in v.text() and "better" in v.text()


def test_mean_pm_std_formatting() -> None:
    assert pm(mean_std([0.81, 0.82]), 1, scale=100) == "81.5 ± 0.7"
    assert pm(mean_std([]), 1) == "–"
    assert pm(mean_std([0.1234]), 3, bare_single=True) == "0.123"
    assert pm(mean_std([0.1234]), 3) == "0.123 ± 0.000"
    assert pm(mean_std([-0.0001, 0.0]), 2, empty="—") == "0.00 ± 0.00"  # no '-0.00'


def test_tables_and_the_reproducing_command() -> None:
    assert md_table(["a", "b"], [[1, "x"]]) == ["| a | b |", "| --- | --- |", "| 1 | x |"]
    argv = ["--seeds", "0", "--report-only", "-c", "lr=0.1", "--out", "a b.md"]
    assert (
        command("experiments.x", argv)
        == "python -m experiments.x --seeds 0 -c lr=0.1 --out 'a b.md'"
    )
    assert command("experiments.x", ["--dry-run"]) == "python -m experiments.x"


# --- every study resumes and reports by the one rule ---

TINY_RUN = {"num-clients": 4, "num-server-rounds": 2, "samples-per-client": 60, "hidden": 32}


def _write(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))


def _finished_by_study(study: str, tmp_path: Path) -> tuple[Any, dict[str, Any], Path]:
    """(is the cell finished?, its config, where its summary.json goes) for one cell of
    each study, on a grid of TINY_RUN."""
    if study == "compare":
        from experiments.compare.grid import Grid, dirichlet_setting

        setting = dirichlet_setting("multidigits", 0.5)
        grid = Grid("t", [setting], ["fedper"], ["ew"], ["fedavg"], [0], dict(TINY_RUN))
        grid.grid_dir = tmp_path
        (cell,) = grid.cells()
        return lambda: grid.finished(cell), grid.overrides(cell), grid.cell_dir(cell)
    if study == "robustness":
        from experiments import robustness as rb

        cell = rb.Cell("fedmedian", None, 0)
        overrides = cell.overrides(TINY_RUN, tmp_path)
        return lambda: rb.is_done(cell, TINY_RUN, tmp_path), overrides, tmp_path / cell.run_name
    if study == "weighting":
        from experiments import weighting_study as ws

        settings = ws.StudySettings(base=dict(TINY_RUN), results_dir=tmp_path)
        cell = (0.1, "ew", 0)
        overrides = ws.overrides(settings, *cell)
        done = lambda: ws.finished_summary(settings, cell) is not None  # noqa: E731
        return done, overrides, tmp_path / ws.run_name(*cell)
    from experiments.privacy.grid import Cell, Settings
    from experiments.privacy.sweep import finished_record

    settings = Settings(base=dict(TINY_RUN), results_dir=tmp_path)
    cell = Cell("fedper", None, False, 0)
    _write(tmp_path / cell.name / "privacy.json", {"attack_key": settings.attack_key()})
    done = lambda: finished_record(cell, settings) is not None  # noqa: E731
    return done, cell.overrides(settings.base, tmp_path), tmp_path / cell.name


@pytest.mark.parametrize("study", ["compare", "robustness", "weighting", "privacy"])
def test_every_study_finishes_a_cell_by_the_kit_rule(study: str, tmp_path: Path) -> None:
    """A summary that says completed but comes from another training config, or from a run
    that stopped before its final round, is not a finished cell in any study."""
    done, overrides, run_dir = _finished_by_study(study, tmp_path)
    assert not done()
    _write(run_dir / "summary.json", summary(overrides))
    assert done()
    _write(run_dir / "summary.json", summary(overrides, final_round=1, stopped_early="stop"))
    assert not done()
    other = summary({**overrides, "local-epochs": 2})
    _write(run_dir / "summary.json", other)
    assert not done()


def test_no_study_defines_a_finished_cell_of_its_own() -> None:
    """Only experiments/kit/cells.py compares a recorded config with the grid's."""
    root = Path(__file__).resolve().parents[1] / "experiments"
    users = [
        str(p.relative_to(root))
        for p in root.rglob("*.py")
        if "same_training" in p.read_text() and p != root / "kit" / "cells.py"
    ]
    assert users == []


def test_no_module_is_over_600_lines() -> None:
    """Product and study modules stay small enough to read in one sitting."""
    root = Path(__file__).resolve().parents[1]
    long = {
        str(p.relative_to(root)): n
        for room in ("common", "client", "server", "deploy", "experiments")
        for p in (root / room).rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 600
    }
    assert long == {}


@pytest.mark.parametrize(
    ("module", "argv", "cells"),
    [
        (
            "experiments.compare",
            [
                "--datasets",
                "multidigits",
                "--alphas",
                "0.5",
                "--algorithms",
                "local",
                "--seeds",
                "0",
                "1",
                "--no-transfer",
                "--grid-dir",
            ],
            2,
        ),
        (
            "experiments.robustness",
            ["--seeds", "0", "--defences", "fedavg", "--attacks", "sign-flip:10", "--results-dir"],
            2,
        ),
        ("experiments.weighting_study", ["--methods", "ew", "--seeds", "0", "--results-dir"], 1),
        (
            "experiments.privacy.sweep",
            ["--algorithms", "fedavg", "--epsilons", "none", "--seeds", "0", "--results-dir"],
            2,
        ),
        ("experiments.bench.__main__", ["--out-dir"], len(BENCH_SECTIONS)),
    ],
)
def test_every_study_lists_its_cells_with_dry_run(
    module: str, argv: list[str], cells: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--dry-run lists every cell (nothing is run, nothing is written)."""
    import importlib

    main = importlib.import_module(module).main
    assert main([*argv, str(tmp_path / "results"), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == cells
    assert all(line.startswith(("todo ", "n/a ")) for line in lines), lines
    assert not (tmp_path / "results").exists()
