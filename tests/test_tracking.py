"""Experiment tracking (run config `tracking`): what TensorBoard and MLflow receive, read back
from what they wrote, equals what metrics.jsonl and summary.json hold, and nothing per client."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path
from typing import Any

import pytest

from common.config import ConfigError, parse_run_config
from server.results import RunResults, read_metrics
from server.tracking import mlflow_uri, round_scalars, summary_scalars
from tests.helpers import simulate


def read_events(logdir: Path) -> tuple[dict[str, dict[int, float]], dict[str, str]]:
    """Scalars {tag: {step: value}} and texts {tag: text} of TensorBoard event files, read
    as TFRecords (length, its CRC, an Event protobuf, its CRC)."""
    from tensorboardX.proto import event_pb2

    scalars: dict[str, dict[int, float]] = {}
    texts: dict[str, str] = {}
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        data, pos = path.read_bytes(), 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
            pos += 12 + length + 4
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    scalars.setdefault(value.tag, {})[event.step] = value.simple_value
                elif value.HasField("tensor"):
                    texts[value.tag] = value.tensor.string_val[0].decode()
    return scalars, texts


def _row(rnd: int, accuracy: float) -> dict[str, Any]:
    """A metrics.jsonl row as the round loop writes it (per-client values included)."""
    stats = {"weighted": accuracy, "mean": accuracy - 0.01, "std": 0.1, "worst10": 0.2}
    return {
        "round": rnd,
        "clients": 3,
        "failures": 0,
        "train_loss": 1.0 / rnd,
        "per_task": {"left": {"test/accuracy": {**stats, "clients": 3}}},
        "per_client": {"0": {"left": {"test/accuracy": 0.123456}}},
        "dp_epsilon": {"0": 0.5 * rnd, "1": 0.7 * rnd},
        "bytes_up": 1000 * rnd,
        "bytes_down": 2000 * rnd,
        "seconds": 0.5,
    }


def _run(directory: Path, kind: str, rounds: range, **overrides: Any) -> RunResults:
    cfg = parse_run_config({"tracking": kind, **overrides})
    results = RunResults(directory, {**cfg.to_dict(), "run-name": "t", "digest": cfg.digest()})
    results.keep_rounds_until(rounds.start - 1)
    for rnd in rounds:
        results.log_round(_row(rnd, 0.5 + 0.1 * rnd))
    return results


def test_tensorboard_receives_each_round_and_the_summary_as_metrics_jsonl_has_them(
    tmp_path: Path,
) -> None:
    _run(tmp_path, "tensorboard", range(1, 3)).finish("completed")
    scalars, texts = read_events(tmp_path / "tb")
    rows = read_metrics(tmp_path / "metrics.jsonl")
    expected: dict[str, dict[int, float]] = {}
    for row in rows:
        for tag, value in round_scalars(row).items():
            expected.setdefault(tag, {})[row["round"]] = value
    summary = json.loads((tmp_path / "summary.json").read_text())
    for tag, value in summary_scalars(summary).items():
        expected.setdefault(tag, {})[summary["final_round"]] = value
    assert scalars.keys() == expected.keys()
    for tag, steps in expected.items():
        assert scalars[tag] == pytest.approx(steps, rel=1e-6), tag
    assert scalars["left/test/accuracy/mean"] == pytest.approx({1: 0.59, 2: 0.69})
    assert scalars["left/test/accuracy/std"] == pytest.approx({1: 0.1, 2: 0.1})
    assert scalars["privacy/dp_epsilon_max"] == pytest.approx({1: 0.7, 2: 1.4})
    assert scalars["round/bytes_up"] == {1: 1000.0, 2: 2000.0}
    assert "final/left/test/accuracy/last5_mean" in scalars
    assert not any("per_client" in t or t.startswith("0/") for t in scalars)
    assert json.loads(texts["config/text_summary"].strip("`\n"))["tracking"] == "tensorboard"
    assert '"status": "completed"' in texts["summary/text_summary"]


def test_mlflow_records_the_run_in_a_sqlite_store_under_the_results_and_resumes_it(
    tmp_path: Path,
) -> None:
    from mlflow.tracking import MlflowClient

    _run(tmp_path, "mlflow", range(1, 2)).finish("failed", error="interrupted")
    # The same run resumed after round 1: the MLflow run goes on, at later steps.
    _run(tmp_path, "mlflow", range(2, 3), resume=True).finish("completed")

    client = MlflowClient(tracking_uri=mlflow_uri(tmp_path))
    (experiment,) = [e for e in client.search_experiments() if e.name == "fedmtl"]
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "t"
    assert run.data.params["tracking"] == "mlflow" and run.data.params["encoder"] == "mlp"
    history = {
        m.step: m.value for m in client.get_metric_history(run.info.run_id, "round/train_loss")
    }
    assert history == pytest.approx({1: 1.0, 2: 0.5})
    accuracy = client.get_metric_history(run.info.run_id, "left/test/accuracy/weighted")
    assert {m.step: m.value for m in accuracy} == pytest.approx({1: 0.6, 2: 0.7})
    summary = json.loads((tmp_path / "summary.json").read_text())
    for key, value in summary_scalars(summary).items():
        assert run.data.metrics[key] == pytest.approx(value), key
    assert not any(k.startswith("per_client") for k in run.data.metrics)
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id)]
    assert artifacts == ["summary.json"]
    assert (tmp_path / "mlflow.db").exists() and (tmp_path / "mlartifacts").is_dir()


def test_a_missing_tracking_package_fails_the_run_at_its_start_saying_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # `import tensorboardX` fails
    with pytest.raises(ConfigError, match=r"'tracking' = 'tensorboard' needs .*fedmtl\[tracking\]"):
        _run(tmp_path, "tensorboard", range(1, 1))


@pytest.mark.slow
def test_a_resnet_run_with_tensorboard_logs_what_metrics_jsonl_holds(tmp_path: Path) -> None:
    """A real simulation: the ResNet encoder on MultiDigits' 8×16 images, tracked with
    TensorBoard from the ServerApp."""
    outcome = simulate(
        tmp_path,
        **{
            "encoder": "resnet",
            "num-blocks": 2,
            "resnet-depth": 1,
            "resnet-width": 8,
            "tracking": "tensorboard",
            "run-name": "resnet-tb",
        },
    )
    assert outcome.summary["status"] == "completed"
    scalars, _ = read_events(outcome.results_dir / "tb")
    rows = read_metrics(outcome.results_dir / "metrics.jsonl")
    assert [r["round"] for r in rows] == [1, 2]
    for row in rows:
        for tag, value in round_scalars(row).items():
            assert scalars[tag][row["round"]] == pytest.approx(value, rel=1e-6), tag
    assert "left/test/accuracy/mean" in scalars
    shared = json.loads((outcome.results_dir / "config.json").read_text())
    assert shared["encoder"] == "resnet"
