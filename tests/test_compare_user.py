"""The comparison on a user's own data file (`--datasets user`), in a module of its own so
that the test runner can schedule it apart from the built-in suite's tests."""

from __future__ import annotations

import csv
import functools
from pathlib import Path

import pytest

from experiments.compare import main
from experiments.compare.cli import build_grid, parse_args
from tests.helpers import TINY, engine, user_federation


@pytest.mark.slow
def test_compare_runs_on_the_users_own_data_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--datasets user --data-file F --schema-file S`: the same rows on a generated CSV, the
    CSV, table and plots, no targets (they speak of the suite's data sets), and a second
    invocation resumes (runs nothing)."""
    import experiments.compare.cli as compare_cli

    data, schema = user_federation(tmp_path)
    grid_dir = tmp_path / "grid"
    argv = [
        "--datasets", "user", "--data-file", str(data), "--schema-file", str(schema),
        "--algorithms", "local", "fedavg", "fedper",
        "--seeds", "0",
        "--grid-dir", str(grid_dir),
        *[f"-c{k}={v}" for k, v in TINY.items()],
    ]  # fmt: skip
    session = functools.partial(compare_cli.run_grid, engine=engine())
    monkeypatch.setattr(compare_cli, "run_grid", lambda grid, **kw: session(grid, **kw))
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "ran 3 cells" in out and "target [" not in out
    with open(grid_dir / "compare.csv") as f:
        rows = list(csv.DictReader(f))
    assert {(r["method"], r["seed"]) for r in rows} == {
        (m, "0") for m in ("local", "fedavg", "fedper")
    }
    assert {r["task"] for r in rows} == {"diagnosis", "flag", "los"}  # one row per task
    assert {r["dataset"] for r in rows} == {"user"}
    assert all(r["mean_cls_acc"] not in ("", "nan") for r in rows)
    table = (grid_dir / "table.md").read_text()
    for label in ("Local", "FedAvg", "FedPer"):
        assert f"| {label} |" in table, table
    assert "user" in table
    assert list((grid_dir / "plots").glob("*.png"))
    assert main(argv) == 0
    assert "ran 0 cells" in capsys.readouterr().out


def test_compare_on_user_data_needs_both_files(tmp_path: Path) -> None:
    data, _ = user_federation(tmp_path)
    with pytest.raises(SystemExit, match="--schema-file"):
        build_grid(parse_args(["--datasets", "user", "--data-file", str(data)]))
