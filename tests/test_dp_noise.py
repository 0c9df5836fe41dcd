"""DP noise is unpredictable to the server: it knows the run config and seed, each client's id,
the round and the arrays it sent, and still cannot regenerate a client's DP-SGD noise, Poisson
sampling or local-DP noise. Only the explicit insecure switch makes them replayable, and
then every round says so."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from client.dp import dp_round
from client.train import build_model, build_weighting
from common.config import parse_run_config
from common.federation import load_client_data
from common.randomness import SEEDED_NOISE_WARNING
from tests.clientapp_round import arrays_of, sent_arrays, train_reply
from tests.helpers import TINY, simulate

DP_SGD = {"privacy": "dp-sgd", "dp-noise-multiplier": 1.0, "dp-epsilon": 100.0}
LOCAL_DP = {"privacy": "local-dp", "ldp-epsilon": 5.0}
INSECURE = {"dp-insecure-seeded-noise": True}
ROUND_1 = {"server-round": 1, "lr": 0.05, "local-epochs": 1}


def _release_and_replay(tmp_path: Path, overrides: dict[str, Any]) -> list[dict[str, np.ndarray]]:
    """Client 1's round-1 release, then the server's replay of it: the same ClientApp called
    with everything the server knows (run config, seed, client id, round, the arrays sent)."""
    sent = sent_arrays(**overrides)
    return [
        arrays_of(train_reply(tmp_path / who, sent, ROUND_1, partition=1, **overrides))
        for who in ("client", "server-replay")
    ]


def _max_abs_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, float]:
    assert a.keys() == b.keys()
    return {k: float(np.abs(a[k].astype(np.float64) - b[k]).max()) for k in a}


def test_a_server_replay_of_a_dp_sgd_round_misses_the_released_update(tmp_path: Path) -> None:
    released, replayed = _release_and_replay(tmp_path, DP_SGD)
    diff = _max_abs_diff(released, replayed)
    assert all(d > 1e-4 for d in diff.values()), diff  # noise on every array of the encoder


def test_the_insecure_switch_replays_dp_sgd_exactly_and_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The control for the test above: the replay has every input, bar the noise's source."""
    with caplog.at_level(logging.WARNING, logger="flwr"):
        released, replayed = _release_and_replay(tmp_path, {**DP_SGD, **INSECURE})
    assert all(d == 0.0 for d in _max_abs_diff(released, replayed).values())
    warnings = [r.getMessage() for r in caplog.records if SEEDED_NOISE_WARNING in r.getMessage()]
    assert len(warnings) == 2 and all("client 1, round 1" in w for w in warnings)


@pytest.mark.parametrize(
    ("source", "overrides", "factor"),
    [
        # Sample rate 1 (a batch larger than the data): every batch is the whole split, so
        # only the Gaussian noise can tell two runs apart.
        ("noise", {"batch-size": 10_000}, 0.1),
        # σ so small that the noise cannot tell two runs apart; the Poisson batches can.
        ("sampling", {"dp-noise-multiplier": 1e-3, "dp-epsilon": 1e9}, 30.0),
    ],
)
def test_dp_sgd_draws_do_not_follow_the_seed(
    source: str, overrides: dict[str, Any], factor: float
) -> None:
    """Two runs of the same round from the same model, data and seed train differently: the
    server, which knows all three, cannot regenerate the noise or the batches."""
    cfg = parse_run_config({**TINY, **DP_SGD, "momentum": 0.0, **overrides})
    data = load_client_data(cfg, 0, cfg.num_clients)
    updates = []
    for _ in range(2):
        model = build_model(cfg, data.tasks, data.input_shape)
        start = [p.detach().clone() for p in model.encoder.parameters()]
        weighting = build_weighting(cfg, data.task_names, data.task_names)
        _, history, _ = dp_round(model, data, weighting, cfg, 1, [])
        encoder = model.encoder.parameters()
        updates.append([p.detach() - s for p, s in zip(encoder, start, strict=True)])
    # The noise on one parameter over the round: lr · σ · C / (expected batch) per step.
    sigma, q, steps = history[0]
    noise = cfg.lr * sigma * cfg.dp_max_grad_norm / (q * len(data.train)) * steps**0.5
    gap = max(float((a - b).abs().max()) for a, b in zip(*updates, strict=True))
    assert gap > factor * noise, (source, gap, noise)


def test_local_dp_noise_ignores_numpys_global_seed(tmp_path: Path) -> None:
    """`LocalDpMod` draws from NumPy's global RNG; any code in the client's process may seed
    it (here: with the run seed) and its noise must still not follow."""
    sent = sent_arrays(**LOCAL_DP)
    releases = []
    for who in ("client", "server-replay"):
        np.random.seed(0)
        releases.append(arrays_of(train_reply(tmp_path / who, sent, ROUND_1, **LOCAL_DP)))
    assert all(d > 1e-4 for d in _max_abs_diff(*releases).values())
    insecure = []
    for who in ("insecure-client", "insecure-replay"):
        np.random.seed(int(np.random.default_rng().integers(2**32)))  # whatever the process did
        reply = train_reply(tmp_path / who, sent, ROUND_1, **LOCAL_DP, **INSECURE)
        insecure.append(arrays_of(reply))
    assert all(d == 0.0 for d in _max_abs_diff(*insecure).values())


def _final_and_round_one(outcome: Any) -> dict[str, np.ndarray]:
    """What the server aggregated from the clients' releases: after round 1 and at the end."""
    out = dict(np.load(outcome.results_dir / "shared_arrays.npz"))
    with np.load(outcome.results_dir / "checkpoints" / "checkpoint-00001.npz") as first:
        out |= {f"round1/{k}": first[k] for k in first.files if k.startswith("shared::")}
    return out


@pytest.mark.slow
def test_dp_sgd_runs_with_the_same_seed_release_different_updates(tmp_path: Path) -> None:
    runs = [simulate(tmp_path / f"run{i}", **DP_SGD, **{"num-server-rounds": 1}) for i in (0, 1)]
    a, b = (_final_and_round_one(r) for r in runs)
    diff = _max_abs_diff(a, b)
    assert all(d > 1e-4 for d in diff.values()), diff
    for r in runs:
        assert r.summary["insecure_seeded_dp_noise"] is False
        assert SEEDED_NOISE_WARNING not in r.log_path.read_text()


@pytest.mark.slow
def test_insecure_seeded_noise_repeats_runs_and_says_so_every_round(tmp_path: Path) -> None:
    runs = [simulate(tmp_path / f"run{i}", **DP_SGD, **INSECURE) for i in (0, 1)]
    a, b = (_final_and_round_one(r) for r in runs)
    assert all(d == 0.0 for d in _max_abs_diff(a, b).values())
    for r in runs:
        assert r.summary["insecure_seeded_dp_noise"] is True
        log = [line for line in r.log_path.read_text().splitlines() if SEEDED_NOISE_WARNING in line]
        for rnd in range(1, TINY["num-server-rounds"] + 1):
            assert any(f"fedmtl | round {rnd}:" in line for line in log), rnd  # the server
            for c in range(TINY["num-clients"]):
                assert any(f"client {c}, round {rnd}:" in line for line in log), (c, rnd)
