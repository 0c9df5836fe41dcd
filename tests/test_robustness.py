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

BASE = {
    "num-clients": 4,
    "num-server-rounds": 2,
    "samples-per-client": 60,
    "local-epochs": 1,
    "hidden": 32,
}
SIGN_FLIP = rb.Attack("sign-flip", 10.0)


def fake_summary(cell: rb.Cell, results_dir: Path, accuracy: dict[int, float]) -> None:
    """A completed run whose client `c` has test accuracy `accuracy[c]` on every task it
    holds (clients 0/1 are the attackers)."""
    per_client = {
        str(c): {t: {"test/accuracy": a, "test/loss": 1.0} for t in ("left", "parity")}
        | {"sum": {"test/mae": 2.0}}
        for c, a in accuracy.items()
    }
    overrides = cell.overrides(BASE, results_dir)
    config = parse_run_config(overrides).to_dict() | {"results-dir": overrides["results-dir"]}
    run = results_dir / cell.run_name
    run.mkdir(parents=True, exist_ok=True)
    summary = {"status": "completed", "config": config, "per_client": per_client}
    (run / "summary.json").write_text(json.dumps(summary | {"wall_time_s": 3.0}))
    rejected = [{"node": 1, "client": "0", "reason": "update norm"}] if cell.attack else []
    (run / "metrics.jsonl").write_text(json.dumps({"round": 1, "rejected": rejected}) + "\n")


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
    assert rb.honest_accuracy(summary, attackers=2) == pytest.approx(0.65)
    assert rb.honest_accuracy({"per_client": {}}, attackers=2) is None


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
    results = rb.collect(cells, tmp_path)
    assert all(r.status == "completed" for r in results)
    text = rb.render(results, [SIGN_FLIP], [0, 1], BASE, "cmd", None, tmp_path / "R.md")
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if "±" in line}
    assert "| 81.0 ± 1.4 | 45.0 ± 7.1 | -36.0 |" in rows["fedavg"]
    assert "| 80.0 ± 1.4 | 79.5 ± 1.4 | -0.5 |" in rows["fedmedian"]
    assert re.search(r"best defence \*\*fedmedian\*\* 79\.5 %.*\*\*met\*\*", text)
    assert "plain FedAvg under attack 45.0 % (-36.0 points)" in text
    # rejection counts come from metrics.jsonl: one attacker update per attacked run
    assert "| fedavg | 0 of 8 / 0 of 8 | 2 of 8 / 0 of 8 |" in text  # 2 seeds x 2 rounds


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
    results = rb.collect(cells, tmp_path)
    assert [r.lost for r in results] == [0, 0, 0, 0, 0, 1]
    text = rb.render(results, [SIGN_FLIP], [0], BASE, "cmd", None, tmp_path / "R.md")
    assert "| 95.0 ± 0.0 (1 lost) |" in text
    assert "best defence **fedmedian** 79.0 %" in text


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
    results = rb.collect(cells, tmp_path)
    status = {r.cell: r.status for r in results}
    assert (status[diverged], status[failed], status[missing]) == ("diverged", "failed", "missing")
    assert rb.is_done(diverged, BASE, tmp_path)  # the attack's outcome: not rerun
    assert not rb.is_done(failed, BASE, tmp_path)  # a harness failure: rerun
    text = rb.render(results, attacks, [0, 1], BASE, "cmd", None, tmp_path / "R.md")
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
    from tests.conftest import engine

    cells = rb.grid(["fedavg"], [SIGN_FLIP], seeds=[0])
    rb.run_grid(cells, BASE, tmp_path, engine=engine())
    assert "2 to run" in capsys.readouterr().out
    summaries: list[dict[str, Any]] = []
    for cell in cells:
        summary = json.loads((tmp_path / cell.run_name / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["rounds"] == 2
        assert summary["config"]["attack"] == (cell.attack.name if cell.attack else "none")
        summaries.append(summary)
    results = rb.collect(cells, tmp_path)
    expected = [rb.honest_accuracy(s, rb.ATTACKERS) for s in summaries]
    assert [r.accuracy for r in results] == expected
    text = rb.render(results, [SIGN_FLIP], [0], BASE, "cmd", None, tmp_path / "R.md")
    row = next(line for line in text.splitlines() if line.startswith("| fedavg |"))
    assert f"| {100 * expected[0]:.1f} ± 0.0 | {100 * expected[1]:.1f} ± 0.0 |" in row
    rb.run_grid(cells, BASE, tmp_path, engine=engine())  # resume: nothing left to run
    assert "2 already done, 0 to run" in capsys.readouterr().out
