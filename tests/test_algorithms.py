"""Every algorithm, strategy and weighting through a real Flower simulation, plus unit tests
of the pieces whose behaviour has a known answer (task-aware head averaging, FedRep's frozen
encoder)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

from client.train import build_model, round_generator, train_heads
from common.config import CHOICES, parse_run_config
from common.datasets import MULTIDIGITS_TASKS
from common.federation import load_client_data
from common.records import TASK_ARRAYS
from server.task_heads import aggregate_task_arrays
from tests.conftest import simulate

# Each real simulation covers one algorithm, one strategy and one weighting at once.
COMBOS = [
    ("fedper", "fedprox", "uw", "hps", {}),
    ("local", "fedadam", "dwa", "mmoe", {}),
    ("fedavg", "fedyogi", "rlw", "hps", {}),
    ("fedavg-ft", "fedadagrad", "gradnorm", "mmoe", {}),
    ("fedrep", "fedavgm", "pcgrad", "hps", {}),
    ("ditto", "fedmedian", "mgda", "hps", {}),
    ("fedrod", "fedtrimmedavg", "cagrad", "mmoe", {}),
    ("fedper", "krum", "nash", "hps", {"shared-layers": 1}),
    ("fedper", "multikrum", "static", "mmoe", {"static-weights": "1,1,0.5,1,2", "krum-select": 2}),
    ("fedavg", "bulyan", "ew", "mmoe", {}),
    ("fedrep", "fedavg", "ew", "mmoe", {}),
    ("ditto", "fedavg", "ew", "mmoe", {}),
]


def test_combos_cover_every_name() -> None:
    assert {c[0] for c in COMBOS} == set(CHOICES["algorithm"])
    assert {c[1] for c in COMBOS} == set(CHOICES["strategy"])
    assert {c[2] for c in COMBOS} == set(CHOICES["weighting"])


@pytest.mark.slow
@pytest.mark.parametrize(("algorithm", "strategy", "weighting", "architecture", "extra"), COMBOS)
def test_simulation_completes(
    tmp_path, algorithm, strategy, weighting, architecture, extra
) -> None:
    outcome = simulate(
        tmp_path,
        algorithm=algorithm,
        strategy=strategy,
        weighting=weighting,
        architecture=architecture,
        **{"audit-received": True, **extra},
    )
    summary = outcome.summary
    assert summary["status"] == "completed" and summary["rounds"] == 2
    assert len(summary["per_client"]) == 3
    for client, tasks in summary["per_client"].items():
        for task, metrics in tasks.items():
            value = metrics.get("test/accuracy", metrics.get("test/mae"))
            assert value is not None and np.isfinite(value), (client, task)
    lines = (outcome.results_dir / "received.jsonl").read_text().splitlines()
    entries = [e for e in map(json.loads, lines) if e["phase"] == "train"]
    for e in entries:
        keys = e["keys"]["arrays"]
        # What the server receives: the encoder (or its first blocks / experts) only.
        assert all(k.startswith("encoder.") for k in keys)
        assert not any(k.startswith(("personal.", "gates.")) for k in keys)
        heads = e["keys"].get(TASK_ARRAYS, [])
        if algorithm in ("fedavg", "fedavg-ft"):
            assert heads and all(k.startswith("heads.") for k in heads)
        elif algorithm == "fedrod":
            assert heads and all(k.startswith("global_heads.") for k in heads)
        else:
            assert e["records"] == ["arrays"]
        if algorithm == "local":
            assert keys == []
        if extra.get("shared-layers") == 1:
            assert keys and all(k.startswith("encoder.blocks.0.") for k in keys)
        if architecture == "mmoe" and algorithm != "local":
            assert keys and all(k.startswith("encoder.experts.") for k in keys)


def _reply(heads: dict[str, np.ndarray], n: int) -> RecordDict:
    return RecordDict(
        {
            TASK_ARRAYS: ArrayRecord({k: Array(v) for k, v in heads.items()}),
            "metrics": MetricRecord({"num-examples": n}),
        }
    )


def test_head_is_averaged_only_over_its_holders() -> None:
    replies = [
        _reply({"heads.left.w": np.array([1.0, 1.0]), "heads.sum.w": np.array([10.0])}, 1),
        _reply({"heads.left.w": np.array([4.0, 7.0])}, 2),
        _reply({"heads.sum.w": np.array([20.0]), "heads.parity.w": np.array([5.0])}, 3),
    ]
    out = aggregate_task_arrays(replies)
    assert np.allclose(out["heads.left.w"].numpy(), [3.0, 5.0])  # (1*1 + 2*4)/3, (1 + 14)/3
    assert np.allclose(out["heads.sum.w"].numpy(), [17.5])  # (1*10 + 3*20)/4
    assert np.allclose(out["heads.parity.w"].numpy(), [5.0])  # one holder: its own head


def test_fedrep_head_phase_leaves_the_encoder_unchanged() -> None:
    cfg = parse_run_config({"samples-per-client": 100})
    data = load_client_data(cfg, 0, 6)
    model = build_model(cfg, data.tasks, data.input_shape)
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    heads_before = {k: v.clone() for k, v in model.heads.state_dict().items()}
    train_heads(model, data, cfg, 2, round_generator(cfg, 0, 1))
    assert all(torch.equal(before[k], v) for k, v in model.encoder.state_dict().items())
    assert any(not torch.equal(heads_before[k], v) for k, v in model.heads.state_dict().items())
    assert all(p.requires_grad for p in model.encoder.parameters()), "encoder left frozen"


def test_fedrep_body_phase_clips_the_encoder_gradient() -> None:
    from client.train import fedrep_body_hook

    cfg = parse_run_config({"samples-per-client": 100, "fedrep-max-grad-norm": 0.5})
    data = load_client_data(cfg, 0, 6)
    model = build_model(cfg, data.tasks, data.input_shape)
    out = model(torch.from_numpy(data.train.x))
    (1e3 * sum(o.square().mean() for o in out.values())).backward()  # a steep loss

    def grad_norm() -> float:
        norms = [p.grad.norm() for p in model.encoder.parameters()]
        return float(torch.linalg.vector_norm(torch.stack(norms)))

    assert grad_norm() > 0.5
    hook = fedrep_body_hook(model, cfg, None)
    assert hook is not None
    hook()
    assert grad_norm() == pytest.approx(0.5, rel=1e-4)
    off = parse_run_config({"fedrep-max-grad-norm": 0.0})
    assert fedrep_body_hook(model, off, None) is None


def test_mmoe_gates_are_private_and_experts_shared() -> None:
    from common.algorithms import get_algorithm
    from common.records import model_shared_keys, model_task_keys

    cfg = parse_run_config({"architecture": "mmoe"})
    model = build_model(cfg, MULTIDIGITS_TASKS[:2], (8, 16))
    shared = model_shared_keys(model, get_algorithm("fedavg"))
    assert shared and all(k.startswith("encoder.experts.") for k in shared)
    assert not any(
        k.startswith("gates.") for k in shared + model_task_keys(model, get_algorithm("fedavg"))
    )
    out = model(torch.zeros(2, 8, 16))
    assert out["left"].shape == (2, 10)


@pytest.mark.parametrize("name", CHOICES["strategy"])
def test_every_strategy_builds_from_its_config_keys(name: str) -> None:
    from flwr.serverapp.strategy import Strategy

    from server.strategies import build_strategy

    strategy = build_strategy(parse_run_config({"strategy": name, "num-clients": 10}))
    assert isinstance(strategy, Strategy)
    assert type(strategy).__name__.lower() == name


def test_invalid_combinations_fail_at_start() -> None:
    from common.config import ConfigError

    with pytest.raises(ConfigError, match="'krum' with num-malicious = 2 needs at least 7"):
        parse_run_config({"strategy": "krum", "num-malicious": 2, "num-clients": 6})
    with pytest.raises(ConfigError, match="'bulyan' with num-malicious = 1 needs at least 7"):
        parse_run_config({"strategy": "bulyan", "num-malicious": 1, "num-clients": 6})
    with pytest.raises(ConfigError, match="'shared-layers' = 3 exceeds 'num-blocks' = 2"):
        parse_run_config({"shared-layers": 3})
