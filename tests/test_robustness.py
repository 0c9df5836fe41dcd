"""The robustness harness (experiments/robustness.py): its tables come from the cells'
summary.json files, finished cells are not run again, and the verdict is computed.

The fast tests write summary files by hand; the slow one runs two real cells (2 rounds, tiny
data) on the session's SuperLink.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from common.config import parse_run_config
from experiments import robustness as rb
from experiments import robustness_report as rr
from experiments.kit.runner import Timings

BASE = {
    "num-clients": 4,
    "num-server-rounds": 2,
    "samples-per-client": 60,
    "local-epochs": 1,
    "hidden": 32,
}
SIGN_FLIP = rb.Attack("sign-flip", 10.0)


def fake_summary(
    cell: rb.Cell,
    results_dir: Path,
    accuracy: dict[int, float],
    val: dict[int, float] | None = None,
    round_seconds: tuple[float, ...] = (4.0, 2.0),
    wall_s: float = 30.0,
    base: dict[str, Any] = BASE,
) -> None:
    """A completed run whose client `c` has test accuracy `accuracy[c]` (validation accuracy
    `val[c]`, the test one if not given) on every task it holds (clients 0/1 are the
    attackers); its rounds took `round_seconds`, the whole cell `wall_s` (in the grid's
    timings) on 16 CPUs."""
    val = val or accuracy
    per_client = {
        str(c): {
            t: {"test/accuracy": a, "val/accuracy": val[c], "test/loss": 1.0}
            for t in ("left", "parity")
        }
        | {"sum": {"test/mae": 2.0, "val/mae": 2.0}}
        for c, a in accuracy.items()
    }
    overrides = cell.overrides(base, results_dir)
    config = parse_run_config(overrides).to_dict() | {"results-dir": overrides["results-dir"]}
    run = results_dir / cell.run_name
    run.mkdir(parents=True, exist_ok=True)
    summary = {
        "status": "completed",
        "config": config,
        "per_client": per_client,
        "final_round": len(round_seconds),
    }
    (run / "summary.json").write_text(json.dumps(summary | {"wall_time_s": 3.0}))
    timings = Timings(results_dir / "timings.json")
    timings.cells[cell.run_name] = wall_s
    timings.invocations = [{"started": "2026-01-01T00:00:00", "ran": 1, "cpus": 16}]
    timings.save()
    rejected = [{"node": 1, "client": "0", "reason": "update norm"}] if cell.attack else []
    rows = [{"round": i + 1, "seconds": x} for i, x in enumerate(round_seconds)]
    rows[0]["rejected"] = rejected
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_honest_accuracy_leaves_the_attackers_out() -> None:
    summary = {
        "per_client": {
            "0": {"left": {"test/accuracy": 0.0}},
            "1": {"left": {"test/accuracy": 0.0}},
            "2": {"left": {"test/accuracy": 0.8}, "parity": {"test/accuracy": 0.6}},
            "3": {"left": {"test/accuracy": 0.6}, "sum": {"test/mae": 3.0}},
        }
    }
    # left: mean(0.8, 0.6) = 0.7; parity: 0.6; over tasks: 0.65
    assert rr.honest_accuracy(summary, attackers=2) == pytest.approx(0.65)
    assert rr.honest_accuracy(summary, attackers=2, split="val") is None  # no val metrics
    assert rr.honest_accuracy({"per_client": {}}, attackers=2) is None


def test_the_table_is_computed_from_the_summary_files(tmp_path: Path) -> None:
    cells = rb.grid(["fedavg", "fedmedian"], [SIGN_FLIP], seeds=[0, 1])
    honest = {
        ("fedavg", "clean"): [0.80, 0.82],
        ("fedavg", SIGN_FLIP.key): [0.40, 0.50],
        ("fedmedian", "clean"): [0.79, 0.81],
        ("fedmedian", SIGN_FLIP.key): [0.785, 0.805],
    }
    for cell in cells:
        a = honest[(cell.defence, cell.column)][cell.seed]
        fake_summary(cell, tmp_path, {0: 0.0, 1: 0.0, 2: a, 3: a})
    results = rr.collect(cells, BASE, tmp_path)
    assert all(r.status == "completed" for r in results)
    text = rr.render(results, [SIGN_FLIP], [0, 1], BASE, "cmd", None, tmp_path / "R.md")
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if "±" in line}
    assert "| 81.0 ± 1.4 | 45.0 ± 7.1 | -36.0 |" in rows["fedavg"]
    assert "| 80.0 ± 1.4 | 79.5 ± 1.4 | -0.5 |" in rows["fedmedian"]
    assert re.search(
        r"best defence on validation \*\*fedmedian\*\*.*test 79\.5 %.*\*\*met\*\*", text
    )
    assert "plain FedAvg under attack 45.0 % (-36.0 points)" in text
    # rejection counts come from metrics.jsonl: one attacker update per attacked run
    assert "| fedavg | 0 of 8 / 0 of 8 | 2 of 8 / 0 of 8 |" in text  # 2 seeds x 2 rounds


def test_the_best_defence_is_chosen_on_validation_and_reported_on_test(tmp_path: Path) -> None:
    """fedtrimmedavg is best on test, fedmedian on validation: the verdict names fedmedian
    and reports its test accuracy, never the higher test number of the other."""
    cells = rb.grid(["fedavg", "fedmedian", "fedtrimmedavg"], [SIGN_FLIP], seeds=[0, 1])
    test_val = {
        "fedavg": (0.80, 0.80),
        "fedmedian": (0.77, 0.85),
        "fedtrimmedavg": (0.83, 0.75),
    }
    for cell in cells:
        test, val = test_val[cell.defence] if cell.attack else (0.80, 0.80)
        fake_summary(cell, tmp_path, {2: test, 3: test}, val={2: val, 3: val})
    text = rr.render(
        rr.collect(cells, BASE, tmp_path), [SIGN_FLIP], [0, 1], BASE, "cmd", None, tmp_path / "R.md"
    )
    line = next(x for x in text.splitlines() if x.startswith("- **sign-flip"))
    assert "best defence on validation **fedmedian** (85.0 % on validation): test 77.0 %" in line
    assert "fedtrimmedavg" not in line
    assert "(-3.0 points)" in line and "**not met**" in line
    assert "highest mean **validation** accuracy" in text and "**test** accuracy" in text


def test_a_defence_without_validation_metrics_is_not_a_candidate(tmp_path: Path) -> None:
    cells = rb.grid(["fedavg", "fedmedian"], [SIGN_FLIP], seeds=[0])
    for cell in cells:
        fake_summary(cell, tmp_path, {2: 0.8, 3: 0.8})
    path = tmp_path / cells[-1].run_name / "summary.json"  # fedmedian under attack
    summary = json.loads(path.read_text())
    for tasks in summary["per_client"].values():
        for metrics in tasks.values():
            metrics.pop("val/accuracy", None)
    path.write_text(json.dumps(summary))
    text = rr.render(
        rr.collect(cells, BASE, tmp_path), [SIGN_FLIP], [0], BASE, "cmd", None, tmp_path / "R.md"
    )
    assert "not enough completed cells for a verdict" in text


def test_the_prose_follows_the_config_and_the_run_files(tmp_path: Path) -> None:
    """Numbers the report used to type (10 clients, 2 of 10 cut, Bulyan's f ≤ 1 with 10
    clients, a 2-core machine, about a second a round) come from the config and the cells'
    files: here 15 clients, 16 CPUs, rounds of 4 and 2 s in a 30 s cell."""
    base = {**BASE, "num-clients": 15}
    cells = rb.grid(["fedavg", "fedtrimmedavg", "bulyan"], [SIGN_FLIP], seeds=[0])
    for cell in cells:
        fake_summary(cell, tmp_path, {c: 0.8 for c in range(2, 15)}, base=base)
    text = rr.render(
        rr.collect(cells, base, tmp_path), [SIGN_FLIP], [0], base, "cmd", None, tmp_path / "R.md"
    )
    assert "`trim-beta = 0.2` (3 of 15 cut at each end)" in text
    assert "allows at most f = 3 with 15 clients" in text
    assert "10 clients" not in text and "2-core" not in text and "about a second" not in text
    default_ratio = parse_run_config({}).max_update_ratio
    assert f"default reply check `max-update-ratio = {default_ratio:g}`" in text
    assert (
        "Per cell (median) on 16-CPU machine(s): 30 s in all, of which 6 s are the rounds" in text
    )
    assert "(median round 3.00 s)" in text
    assert "commit" not in text
    # Grids run before timings.json kept each cell's wall time and CPUs in its cell.json.
    (tmp_path / "timings.json").unlink()
    for cell in cells:
        (tmp_path / cell.run_name / "cell.json").write_text(json.dumps({"wall_s": 30, "cpus": 16}))
    legacy = rr.render(
        rr.collect(cells, base, tmp_path), [SIGN_FLIP], [0], base, "cmd", None, tmp_path / "R.md"
    )
    assert legacy == text


def test_lost_honest_clients_are_counted_and_disqualify_a_defence(tmp_path: Path) -> None:
    """A client whose model went non-finite has no final evaluation: it is counted as lost,
    and a defence that lost one is not the verdict's best, however good its survivors."""
    cells = rb.grid(["fedavg", "fedmedian", "fedtrimmedavg"], [SIGN_FLIP], seeds=[0])
    for cell in cells:
        honest = {2: 0.8, 3: 0.8}
        if cell.defence == "fedtrimmedavg" and cell.attack:
            honest = {2: 0.95}  # client 3 lost: the survivor looks great
        if cell.defence == "fedmedian" and cell.attack:
            honest = {2: 0.79, 3: 0.79}
        fake_summary(cell, tmp_path, {0: 0.1, 1: 0.1, **honest})
    results = rr.collect(cells, BASE, tmp_path)
    assert [r.lost for r in results] == [0, 0, 0, 0, 0, 1]
    text = rr.render(results, [SIGN_FLIP], [0], BASE, "cmd", None, tmp_path / "R.md")
    assert "| 95.0 ± 0.0 (1 lost) |" in text
    assert "best defence on validation **fedmedian** (79.0 % on validation): test 79.0 %" in text


def test_missing_failed_and_diverged_cells_are_shown_not_hidden(tmp_path: Path) -> None:
    attacks = [SIGN_FLIP, rb.Attack("scale", 10.0)]
    cells = rb.grid(["fedavg", "fedmedian"], attacks, seeds=[0, 1])
    for cell in cells:
        fake_summary(cell, tmp_path, {2: 0.8, 3: 0.8})
    by_name = {c.run_name: c for c in cells}
    diverged, failed, missing = (
        by_name["fedavg-sign-flip-x10-s0"],
        by_name["fedavg-scale-x10-s0"],
        by_name["fedavg-scale-x10-s1"],
    )
    errors = {
        diverged: "RoundFailed: round 7: 1 usable training replies of 4; client 0: "
        "'encoder.blocks.0.0.weight' has non-finite values",
        failed: "RuntimeError: Ray actor died",
    }
    for cell, error in errors.items():
        path = tmp_path / cell.run_name / "summary.json"
        changes = {"status": "failed", "error": error}
        path.write_text(json.dumps(json.loads(path.read_text()) | changes))
    (tmp_path / missing.run_name / "summary.json").unlink()
    results = rr.collect(cells, BASE, tmp_path)
    status = {r.cell: r.status for r in results}
    assert (status[diverged], status[failed], status[missing]) == ("diverged", "failed", "missing")
    assert rb.is_done(diverged, BASE, tmp_path)  # the attack's outcome: not rerun
    assert not rb.is_done(failed, BASE, tmp_path)  # a harness failure: rerun
    text = rr.render(results, attacks, [0, 1], BASE, "cmd", None, tmp_path / "R.md")
    row = next(line for line in text.splitlines() if line.startswith("| fedavg | no defence"))
    assert "| 80.0 ± 0.0 | 80.0 ± 0.0 (1 diverged) | – (1 failed) (1 missing) |" in row
    assert "plain FedAvg under attack **diverged** in 1 of 2 seeds" in text
    assert "9 of 12 cells completed" in text
    overrides = [x for k, v in BASE.items() for x in ("-c", f"{k}={v}")]
    argv = ["--report-only", "--seeds", "0", "1", "--defences", "fedavg", "fedmedian"]
    argv += ["--attacks", "sign-flip:10", "scale:10", "--results-dir", str(tmp_path)]
    argv += ["--out", str(tmp_path / "R.md"), "--plot", "", *overrides]
    assert rb.main(argv) == 1  # a failed and a missing cell: not finished


def test_a_cell_is_done_only_when_completed_under_the_same_config(tmp_path: Path) -> None:
    cell = rb.Cell("fedmedian", SIGN_FLIP, 0)
    assert not rb.is_done(cell, BASE, tmp_path)
    fake_summary(cell, tmp_path, {2: 0.5})
    assert rb.is_done(cell, BASE, tmp_path)
    assert not rb.is_done(cell, {**BASE, "num-server-rounds": 3}, tmp_path)
    path = tmp_path / cell.run_name / "summary.json"
    summary = json.loads(path.read_text())

    def stored(**changes: Any) -> None:
        path.write_text(json.dumps(summary | changes))

    stored(config={**summary["config"], "lr": 0.5})  # a default changed since: rerun
    assert not rb.is_done(cell, BASE, tmp_path)
    stored(config={k: v for k, v in summary["config"].items() if k != "tau"})  # a key added
    assert rb.is_done(cell, BASE, tmp_path)
    stored(config={**summary["config"], "fraction-evaluate": 0.3})  # reporting only
    assert rb.is_done(cell, BASE, tmp_path)
    stored(final_round=1, stopped_early="stop condition")  # before the final round
    assert not rb.is_done(cell, BASE, tmp_path)
    stored(status="failed")
    assert not rb.is_done(cell, BASE, tmp_path)


def test_attack_specs_are_checked_against_the_run_config() -> None:
    assert rb.parse_attack("sign-flip:10") == SIGN_FLIP
    assert rb.parse_attack("label-flip") == rb.Attack("label-flip", 1.0)
    with pytest.raises(ValueError, match="'attack'"):
        rb.parse_attack("flip-sign")
    with pytest.raises(ValueError, match="'attack-scale'"):
        rb.parse_attack("noise:-1")


def test_every_default_cell_is_a_valid_run_config() -> None:
    """Bulyan's n ≥ 4f + 3 and Krum's n ≥ 2f + 3 hold for the default 10 clients."""
    for cell in rb.grid(rb.DEFENCES, [rb.parse_attack(a) for a in rb.DEFAULT_ATTACKS], [0]):
        parse_run_config(cell.overrides(rb.BASE, Path("results")))


def test_report_only_writes_the_doc_and_the_plot(tmp_path: Path) -> None:
    cells = rb.grid(["fedavg"], [SIGN_FLIP], seeds=[0])
    for cell in cells:
        fake_summary(cell, tmp_path, {2: 0.7, 3: 0.7})
    out, plot = tmp_path / "ROBUSTNESS.md", tmp_path / "fig" / "acc.png"
    overrides = [x for k, v in BASE.items() for x in ("-c", f"{k}={v}")]
    argv = ["--seeds", "0", "--defences", "fedavg", "--attacks", "sign-flip:10"]
    argv += ["--results-dir", str(tmp_path), *overrides]
    argv += ["--out", str(out), "--plot", str(plot), "--report-only"]
    assert rb.main(argv) == 0
    text = out.read_text()
    assert text.startswith("# Robustness to Byzantine clients")
    assert "Written by `python -m experiments.robustness --seeds 0" in text
    assert "--report-only" not in text
    assert "![accuracy per defence](fig/acc.png)" in text
    assert plot.stat().st_size > 1000


def _reply(client: int, update: float, num_examples: float) -> Any:
    """A training reply as the server receives it: arrays = sent + `update`."""
    import numpy as np
    from flwr.app import Array, ArrayRecord, ConfigRecord, MessageType, MetricRecord, RecordDict
    from flwr.app.message.message import make_message
    from flwr.common import Metadata

    metadata = Metadata(
        run_id=1,
        message_id="",
        src_node_id=client + 1,
        dst_node_id=0,
        reply_to_message_id="m",
        group_id="1",
        created_at=0.0,
        ttl=60.0,
        message_type=MessageType.TRAIN,
    )
    content = RecordDict(
        {
            "arrays": ArrayRecord({"w": Array(np.full(4, update, np.float32))}),
            "metrics": MetricRecord({"num-examples": num_examples, "train-loss": 1.0}),
            "task-metrics": ConfigRecord({"client-id": client, "tasks": "left"}),
        }
    )
    return make_message(metadata, content=content)


def test_claimed_weights_are_bounded() -> None:
    import numpy as np
    from flwr.app import Array, ArrayRecord

    from server.validation import ReplyValidator

    sent = ArrayRecord({"w": Array(np.zeros(4, np.float32))})
    replies = [_reply(0, -1.0, 10**12), _reply(1, 1.0, 100), _reply(2, 1.0, 100)]
    replies += [_reply(3, 1.0, 120), _reply(4, 1.0, -50)]
    _, rejected = ReplyValidator(["left"], max_update_ratio=3.0).check_train(1, replies, sent)
    assert sorted(r.client for r in rejected) == ["0", "4"]
    assert all("num-examples" in r.reason for r in rejected)


@pytest.mark.slow
def test_two_real_cells_produce_the_table_and_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.helpers import engine

    cells = rb.grid(["fedavg"], [SIGN_FLIP], seeds=[0])
    rb.run_grid(cells, BASE, tmp_path, engine=engine())
    assert "2 to run" in capsys.readouterr().out
    summaries: list[dict[str, Any]] = []
    for cell in cells:
        summary = json.loads((tmp_path / cell.run_name / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["rounds"] == 2
        assert summary["config"]["attack"] == (cell.attack.name if cell.attack else "none")
        summaries.append(summary)
    results = rr.collect(cells, BASE, tmp_path)

    def by_hand(summary: dict[str, Any], split: str) -> float:
        """Mean over tasks of the mean over honest clients (ids 2, 3, ...) holding it."""
        per_task: dict[str, list[float]] = {}
        for client, tasks in summary["per_client"].items():
            if int(client) >= 2:
                for task, metrics in tasks.items():
                    if f"{split}/accuracy" in metrics:
                        per_task.setdefault(task, []).append(metrics[f"{split}/accuracy"])
        assert per_task and set(per_task) <= {"left", "right", "parity", "equal"}
        return sum(sum(v) / len(v) for v in per_task.values()) / len(per_task)

    expected = [by_hand(s, "test") for s in summaries]
    assert [r.accuracy for r in results] == pytest.approx(expected, abs=1e-12)
    assert [r.val_accuracy for r in results] == pytest.approx(
        [by_hand(s, "val") for s in summaries], abs=1e-12
    )
    text = rr.render(results, [SIGN_FLIP], [0], BASE, "cmd", None, tmp_path / "R.md")
    row = next(line for line in text.splitlines() if line.startswith("| fedavg |"))
    assert f"| {100 * expected[0]:.1f} ± 0.0 | {100 * expected[1]:.1f} ± 0.0 |" in row
    rb.run_grid(cells, BASE, tmp_path, engine=engine())  # resume: nothing left to run
    assert "2 done earlier (skipped), 0 to run" in capsys.readouterr().out
