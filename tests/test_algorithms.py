"""Every algorithm, strategy and weighting through a real Flower simulation, plus unit tests
of the pieces whose behaviour has a known answer (task-aware head averaging, FedRep's frozen
encoder)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import scipy.stats
import torch
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

from client.train import build_model, round_generator, train_heads
from common.algorithms import get_algorithm
from common.config import CHOICES, parse_run_config
from common.datasets import MULTIDIGITS_TASKS
from common.federation import load_client_data
from common.records import TASK_ARRAYS, arrays_from_model, model_shared_keys
from common.storage import read_arrays
from server.app import initial_model
from server.results import headline
from server.task_heads import aggregate_task_arrays
from tests.helpers import act_as_serverapp, simulate, strategy_round

# The generated scenes with their dense tasks (segmentation, depth) on the CNN.
SCENES: dict[str, Any] = {"dataset": "scenes", "encoder": "cnn", "partitioner": "natural"}
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
    ("fedavg", "fedavgm", "ew", "mtan", {"encoder": "cnn"}),
    ("fedper", "fedavg", "mgda", "mtan", {}),
    ("fedper", "fedprox", "ew", "cross-stitch", {"encoder": "cnn"}),
    ("fedavg", "fedavg", "ew", "mtan", SCENES),
    ("fedper", "fedavg", "dwa", "hps", SCENES),
]


def test_combos_cover_every_name() -> None:
    assert {c[0] for c in COMBOS} == set(CHOICES["algorithm"])
    assert {c[1] for c in COMBOS} == set(CHOICES["strategy"])
    assert {c[2] for c in COMBOS} == set(CHOICES["weighting"])
    assert {c[3] for c in COMBOS} == set(CHOICES["architecture"])


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
            value = headline(metrics)
            assert value is not None and np.isfinite(value[1]), (client, task)
    lines = (outcome.results_dir / "received.jsonl").read_text().splitlines()
    entries = [e for e in map(json.loads, lines) if e["phase"] == "train"]
    for e in entries:
        keys = e["keys"]["arrays"]
        # What the server receives: the encoder (or its first blocks / experts) only.
        assert all(k.startswith("encoder.") for k in keys)
        assert not any(k.startswith(("personal.", "gates.", "attention.")) for k in keys)
        heads = e["keys"].get(TASK_ARRAYS, [])
        assert not any(k.startswith("attention.") for k in heads)
        if algorithm in ("fedavg", "fedavg-ft"):
            assert heads and all(k.startswith("heads.") for k in heads)
        elif algorithm == "fedrod":
            assert heads and all(k.startswith("global_heads.") for k in heads)
        else:
            assert e["records"] == ["arrays"]
        if algorithm == "local":
            assert keys == []
        if extra.get("dataset") == "scenes" and algorithm == "fedavg":
            # dense heads are heads: they travel under fedavg as the others do (each of
            # the three clients holds segmentation or depth)
            assert any(k.startswith(("heads.segmentation.", "heads.depth.")) for k in heads)
        if extra.get("shared-layers") == 1:
            assert keys and all(k.startswith("encoder.blocks.0.") for k in keys)
        if architecture == "mmoe" and algorithm != "local":
            assert keys and all(k.startswith("encoder.experts.") for k in keys)
    # The strategy moved the shared arrays: what the server saved after the last round is not
    # the seeded initial encoder it started from (a strategy returning its input would be).
    cfg = parse_run_config({k: v for k, v in summary["config"].items() if k != "digest"})
    model = initial_model(cfg)
    keys = model_shared_keys(model, get_algorithm(cfg.algorithm), cfg.shared_layers)
    initial = {k: v.numpy() for k, v in arrays_from_model(model, keys).items()}
    saved = read_arrays(outcome.results_dir / "shared_arrays.npz")
    assert set(saved) == set(initial)
    if algorithm != "local":
        assert any(not np.array_equal(saved[k], initial[k]) for k in initial), "not aggregated"


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


def test_mtan_attention_is_private_per_task_and_shapes_only_its_own_task() -> None:
    from common.records import model_task_keys

    for encoder in ("mlp", "cnn", "resnet"):
        cfg = parse_run_config({"architecture": "mtan", "encoder": encoder, "hidden": 16})
        model = build_model(cfg, MULTIDIGITS_TASKS[:3], (8, 16))
        fedavg = get_algorithm("fedavg")
        shared = model_shared_keys(model, fedavg)
        assert shared and all(k.startswith("encoder.trunk.") for k in shared)
        assert not any(k.startswith("attention.") for k in shared + model_task_keys(model, fedavg))
        names = [t.name for t in MULTIDIGITS_TASKS[:3]]
        assert sorted(model.attention) == sorted(names)
        assert len(model.attention[names[0]]) == len(model.encoder.trunk.blocks)
        x = torch.randn(4, 8, 16)
        before = model(x)
        # A task's masks change that task's output only: the trunk is untouched.
        with torch.no_grad():
            for p in model.attention[names[0]].parameters():
                p.add_(0.5)
        after = model(x)
        assert not torch.allclose(before[names[0]], after[names[0]])
        for t in names[1:]:
            assert torch.equal(before[t], after[t])


def test_cross_stitch_mixes_task_columns_and_shares_them_all() -> None:
    cfg = parse_run_config({"architecture": "cross-stitch", "hidden": 16})
    model = build_model(cfg, MULTIDIGITS_TASKS[:2], (8, 16))
    encoder = model.encoder
    assert encoder.tasks == [t.name for t in MULTIDIGITS_TASKS]  # a column per data-set task
    shared = model_shared_keys(model, get_algorithm("fedper"))
    assert set(shared) == {k for k in model.state_dict() if k.startswith("encoder.")}
    assert "encoder.stitch.0.weight" in shared
    n = len(encoder.tasks)
    unit = encoder.stitch[0].weight.detach()
    assert torch.allclose(unit.diagonal(), torch.full((n,), 0.9))
    assert torch.allclose(unit.sum(dim=1), torch.ones(n))
    x = torch.randn(3, 8, 16)
    left, right = MULTIDIGITS_TASKS[0].name, MULTIDIGITS_TASKS[1].name
    # Identity units: each task sees exactly its own column, run alone.
    with torch.no_grad():
        for u in encoder.stitch:
            u.weight.copy_(torch.eye(n))
    alone = encoder.columns[0](x)
    assert torch.allclose(model.features(x)[left], alone)
    # Mixing units: another task's column changes this task's features.
    with torch.no_grad():
        for u in encoder.stitch:
            u.weight.copy_(torch.full((n, n), 1.0 / n))
        before = model.features(x)[left]
        for p in encoder.columns[1].parameters():
            p.add_(0.1)
    assert not torch.allclose(before, model.features(x)[left])
    assert right in model.features(x)


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


# --- each Flower strategy, through build_strategy, against an independent computation ---

N_REPLIES = 7  # Bulyan with num-malicious = 1 needs 4f + 3
WEIGHTS = [3, 5, 4, 6, 2, 7, 5]  # num-examples per reply


def _replies_around(x: dict[str, np.ndarray], seed: int) -> list[dict[str, np.ndarray]]:
    """Five honest updates near `x` and two far outliers, all distinct (no ties)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(N_REPLIES):
        scale = 10.0 if i >= 5 else 0.1
        out.append({k: v + scale * rng.standard_normal(v.shape) for k, v in x.items()})
    return out


def _weighted_mean(updates: list[dict], weights: list[int]) -> dict[str, np.ndarray]:
    w = np.asarray(weights, float) / sum(weights)
    return {k: np.tensordot(w, np.stack([u[k] for u in updates]), axes=1) for k in updates[0]}


def _stack(updates: list[dict], key: str) -> np.ndarray:
    return np.stack([u[key] for u in updates])


def _krum_scores(updates: list[dict], f: int) -> np.ndarray:
    """Blanchard et al. 2017: sum of squared distances to the n − f − 2 closest others."""
    flat = np.stack([np.concatenate([u[k].ravel() for k in sorted(u)]) for u in updates])
    d = ((flat[:, None, :] - flat[None, :, :]) ** 2).sum(-1)
    m = len(updates) - f - 2
    return np.array([np.sort(np.delete(row, i))[:m].sum() for i, row in enumerate(d)])


def _bulyan(updates: list[dict], weights: list[int], f: int) -> dict[str, np.ndarray]:
    """El Mhamdi et al. 2018 with Krum selection: θ = n − 2f by Krum score, then per
    coordinate the mean of the β = θ − 2f values closest to the selection's median."""
    theta = len(updates) - 2 * f
    chosen = [updates[i] for i in np.argsort(_krum_scores(updates, f))[:theta]]
    beta = theta - 2 * f
    out = {}
    for k in updates[0]:
        values = _stack(chosen, k)
        order = np.argsort(np.abs(values - np.median(values, axis=0)), axis=0)[:beta]
        out[k] = np.take_along_axis(values, order, axis=0).mean(axis=0)
    return out


def _multikrum(updates: list[dict], weights: list[int], f: int, m: int) -> dict:
    best = np.argsort(_krum_scores(updates, f))[:m]
    return _weighted_mean([updates[i] for i in best], [weights[i] for i in best])


AGGREGATES = {
    "fedavg": ({}, _weighted_mean),
    "fedprox": ({"proximal-mu": 0.3}, _weighted_mean),  # μ acts on the clients only
    "fedmedian": ({}, lambda u, w: {k: np.median(_stack(u, k), axis=0) for k in u[0]}),
    "fedtrimmedavg": (
        {"trim-beta": 0.3},
        lambda u, w: {k: scipy.stats.trim_mean(_stack(u, k), 0.3, axis=0) for k in u[0]},
    ),
    "krum": ({"num-malicious": 1}, lambda u, w: u[int(np.argmin(_krum_scores(u, 1)))]),
    "multikrum": ({"num-malicious": 1, "krum-select": 3}, lambda u, w: _multikrum(u, w, 1, 3)),
    "bulyan": ({"num-malicious": 1}, lambda u, w: _bulyan(u, w, 1)),
}


def _fedavgm(cfg: Any, x: dict, avg: dict, state: dict, rnd: int) -> dict:
    """SGD with server momentum on the pseudo-gradient x − avg (Hsu et al. 2019)."""
    pg = {k: x[k] - avg[k] for k in x}
    if cfg.server_momentum > 0:
        mv = state.get("momentum")
        pg = state["momentum"] = (
            pg if mv is None else {k: cfg.server_momentum * mv[k] + pg[k] for k in pg}
        )
    return {k: x[k] - cfg.server_lr * pg[k] for k in x}


def _fedopt(rule: str) -> Any:
    """FedAdam / FedYogi / FedAdagrad (Reddi et al. 2021) on Δ = avg − x."""

    def step(cfg: Any, x: dict, avg: dict, state: dict, rnd: int) -> dict:
        b1 = 0.0 if rule == "adagrad" else cfg.beta_1
        d = {k: avg[k] - x[k] for k in x}
        m = state.setdefault("m", {k: np.zeros_like(v) for k, v in x.items()})
        v = state.setdefault("v", {k: np.zeros_like(v) for k, v in x.items()})
        for k in x:
            m[k] = b1 * m[k] + (1 - b1) * d[k]
            if rule == "adam":
                v[k] = cfg.beta_2 * v[k] + (1 - cfg.beta_2) * d[k] ** 2
            elif rule == "yogi":
                v[k] = v[k] - (1 - cfg.beta_2) * d[k] ** 2 * np.sign(v[k] - d[k] ** 2)
            else:
                v[k] = v[k] + d[k] ** 2
        eta = cfg.fedopt_eta
        if rule == "adam":  # Flower's bias-corrected step size (Kingma & Ba, before 2.1)
            eta *= np.sqrt(1 - cfg.beta_2 ** (rnd + 1)) / (1 - cfg.beta_1 ** (rnd + 1))
        return {k: x[k] + eta * m[k] / (np.sqrt(v[k]) + cfg.tau) for k in x}

    return step


# Server-optimiser settings away from the defaults, so a wrong wiring shows.
SERVER_OPTIMISERS = {
    "fedavgm": ({"server-lr": 0.7, "server-momentum": 0.5}, _fedavgm),
    "fedadam": ({"fedopt-eta": 0.03, "beta-1": 0.8, "beta-2": 0.95, "tau": 0.01}, _fedopt("adam")),
    "fedyogi": ({"fedopt-eta": 0.03, "beta-1": 0.8, "beta-2": 0.95, "tau": 0.01}, _fedopt("yogi")),
    "fedadagrad": ({"fedopt-eta": 0.03, "tau": 0.01}, _fedopt("adagrad")),
}
START = {"a": np.array([0.5, -1.0, 2.0]), "b": np.array([[1.0, 0.0], [-0.5, 0.25]])}


def test_every_strategy_has_an_aggregation_test() -> None:
    assert set(AGGREGATES) | set(SERVER_OPTIMISERS) == set(CHOICES["strategy"])


@pytest.mark.parametrize("name", sorted(AGGREGATES))
def test_strategy_aggregates_the_replies_as_it_defines(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """build_strategy's strategy, fed hand-built replies, returns what its rule computes
    (weighted mean, coordinate median, trimmed mean, Krum's pick, Multi-Krum, Bulyan)."""
    from server.strategies import build_strategy

    act_as_serverapp(monkeypatch)
    extra, expected = AGGREGATES[name]
    cfg = parse_run_config({"strategy": name, "num-clients": N_REPLIES, **extra})
    updates = _replies_around(START, seed=1)
    got = strategy_round(build_strategy(cfg), 1, START, updates, WEIGHTS)
    want = expected(updates, WEIGHTS)
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-6, atol=1e-9, err_msg=f"{name} {k}")
    if name in ("fedmedian", "fedtrimmedavg", "krum", "multikrum", "bulyan"):
        plain = _weighted_mean(updates, WEIGHTS)  # the outliers drag the plain mean away
        assert not np.allclose(got["a"], plain["a"], atol=1e-3)


@pytest.mark.parametrize("name", sorted(SERVER_OPTIMISERS))
def test_server_optimiser_follows_its_update_rule_over_two_rounds(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Round 2 depends on the state round 1 left (momentum, m_t, v_t): both rounds match
    the paper's update with the configured parameters."""
    from server.strategies import build_strategy

    act_as_serverapp(monkeypatch)
    extra, step = SERVER_OPTIMISERS[name]
    cfg = parse_run_config({"strategy": name, "num-clients": N_REPLIES, **extra})
    strategy = build_strategy(cfg)
    x, state = dict(START), {}
    for rnd in (1, 2):
        updates = _replies_around(x, seed=rnd)
        got = strategy_round(strategy, rnd, x, updates, WEIGHTS)
        want = step(cfg, x, _weighted_mean(updates, WEIGHTS), state, rnd)
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-6, err_msg=f"{name} round {rnd}")
        assert not np.allclose(got["a"], x["a"])
        x = got
