"""Evaluation in chunks sized by activation memory: fewer examples per pass where one
example's activations are large, the same metrics whatever the chunk."""

from __future__ import annotations

import pytest

import client.train as train
from client.train import build_model, eval_rows, evaluate
from common.config import parse_run_config
from common.federation import load_client_data
from common.tasks import TaskSpec


def test_large_activations_get_fewer_examples_per_pass() -> None:
    cfg = parse_run_config({"encoder": "resnet"})
    digits = build_model(cfg, [TaskSpec("a", "binary", 2)], (8, 16))
    faces = build_model(cfg, [TaskSpec("a", "binary", 2)], (3, 64, 64))
    assert eval_rows(digits, (8, 16)) == train.EVAL_CHUNK  # 8x16: small, unchanged
    rows = eval_rows(faces, (3, 64, 64))
    # the stem's output alone is 16 channels x 64 x 64 float32 = 256 KiB per example
    assert rows <= train.EVAL_ACTIVATION_BYTES // (16 * 64 * 64 * 4)
    assert rows >= 1


def test_the_chunk_size_changes_memory_not_the_metrics(monkeypatch) -> None:
    cfg = parse_run_config(
        {
            "dataset": "scenes",
            "encoder": "cnn",
            "partitioner": "natural",
            "num-clients": 3,
            "samples-per-client": 60,
        }
    )
    data = load_client_data(cfg, 0, 3)
    model = build_model(cfg, data.tasks, data.input_shape)
    whole = evaluate(model, data.test, data.tasks)
    monkeypatch.setattr(train, "EVAL_ACTIVATION_BYTES", 1)  # one example per pass
    train._EVAL_ROWS.clear()  # the size was measured for this model under the old limit
    assert eval_rows(model, data.input_shape) == 1
    single = evaluate(model, data.test, data.tasks)
    assert whole.keys() == single.keys()
    for task, metrics in whole.items():
        for name, value in metrics.items():
            assert single[task][name] == pytest.approx(value, rel=1e-5, abs=1e-6), (task, name)


def test_a_model_is_probed_once_per_input_shape() -> None:
    """The probe is a forward pass: a warm client evaluating twice per round pays it once."""
    cfg = parse_run_config({"encoder": "cnn"})
    model = build_model(cfg, [TaskSpec("a", "binary", 2)], (8, 16))
    calls = []
    model.register_forward_pre_hook(lambda *_: calls.append(1))
    first = eval_rows(model, (8, 16))
    assert eval_rows(model, (8, 16)) == first and len(calls) == 1
    eval_rows(model, (16, 16))  # another input shape is measured
    assert len(calls) == 2
