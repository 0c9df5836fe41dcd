"""What is shared is defined in one place; heads start identical for clients of a task."""

from __future__ import annotations

import torch

from client.train import build_model
from common.algorithms import get_algorithm
from common.config import parse_run_config
from common.datasets import MULTIDIGITS_TASKS
from common.records import model_shared_keys


def test_fedper_shares_exactly_the_encoder_and_local_shares_nothing() -> None:
    cfg = parse_run_config({})
    model = build_model(cfg, MULTIDIGITS_TASKS[:3], (8, 16))
    keys = model_shared_keys(model, get_algorithm("fedper"))
    assert keys and all(k.startswith("encoder.") for k in keys)
    assert set(keys) == {k for k in model.state_dict() if k.startswith("encoder.")}
    assert model_shared_keys(model, get_algorithm("local")) == []


def test_same_task_head_starts_identical_on_every_client() -> None:
    cfg = parse_run_config({})
    a = build_model(cfg, [MULTIDIGITS_TASKS[0], MULTIDIGITS_TASKS[2]], (8, 16))
    b = build_model(cfg, [MULTIDIGITS_TASKS[2]], (8, 16))
    for key, value in b.heads["sum"].state_dict().items():
        assert torch.equal(value, a.heads["sum"].state_dict()[key])
    assert not torch.equal(a.heads["left"][0].weight[:, :5], a.heads["sum"][0].weight[:, :5])


def test_outputs_per_task_have_the_task_width() -> None:
    cfg = parse_run_config({"encoder": "cnn"})
    model = build_model(cfg, MULTIDIGITS_TASKS, (8, 16))
    out = model(torch.zeros(4, 8, 16))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "left": (4, 10),
        "right": (4, 10),
        "sum": (4, 1),
        "parity": (4, 1),
        "equal": (4, 1),
    }
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
