"""DP-SGD: ε is Opacus's, cumulative over rounds, survives a restart, and the budget holds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from opacus.accountants import RDPAccountant

from client.dp import PrivacyBudgetExhausted, dp_round, epsilon, noise_multiplier
from client.state import read_state_files
from client.train import build_model, build_weighting
from common.config import ConfigError, parse_run_config
from common.federation import load_client_data
from tests.helpers import simulate


def _client(**overrides):
    cfg = parse_run_config(
        {
            "privacy": "dp-sgd",
            "samples-per-client": 150,
            "local-epochs": 1,
            "dp-noise-multiplier": 1.1,
            "dp-epsilon": 50.0,
            **overrides,
        }
    )
    data = load_client_data(cfg, 0, 6)
    model = build_model(cfg, data.tasks, data.input_shape)
    return cfg, data, model, build_weighting(cfg, data.task_names, data.task_names)


def test_epsilon_is_cumulative_and_equals_opacus_accountant() -> None:
    cfg, data, model, weighting = _client()
    history, eps = [], []
    reference = RDPAccountant()
    for rnd in (1, 2, 3):
        before = [p.detach().clone() for p in model.parameters()]
        _, history, e = dp_round(model, data, weighting, cfg, rnd, history)
        eps.append(e)
        sigma, q, steps = history[-1]
        for _ in range(steps):
            reference.step(noise_multiplier=sigma, sample_rate=q)
        assert e == pytest.approx(reference.get_epsilon(cfg.dp_delta), rel=1e-9)
        assert any(not p.detach().equal(b) for p, b in zip(model.parameters(), before, strict=True))
    assert eps[0] < eps[1] < eps[2]
    assert not any(
        hasattr(p, "grad_sample") and p.grad_sample is not None for p in model.parameters()
    )


def test_heads_are_trained_under_dp_too() -> None:
    cfg, data, model, weighting = _client()
    head = [p.detach().clone() for p in model.heads.parameters()]
    dp_round(model, data, weighting, cfg, 1, [])
    assert any(not p.detach().equal(h) for p, h in zip(model.heads.parameters(), head, strict=True))


def test_round_past_the_budget_is_refused() -> None:
    cfg, data, model, weighting = _client(**{"dp-epsilon": 1.0, "dp-noise-multiplier": 0.8})
    with pytest.raises(PrivacyBudgetExhausted, match=r"past its budget dp-epsilon = 1.0"):
        history = []
        for rnd in range(1, 50):
            _, history, _ = dp_round(model, data, weighting, cfg, rnd, history)
    assert epsilon(history, cfg.dp_delta) <= 1.0


def test_noise_from_budget_spends_about_the_budget() -> None:
    cfg, data, *_ = _client(**{"dp-noise-multiplier": 0.0, "dp-epsilon": 3.0})
    sigma = noise_multiplier(cfg, len(data.train))
    q = cfg.batch_size / len(data.train)
    steps = cfg.num_server_rounds * cfg.local_epochs * -(-len(data.train) // cfg.batch_size)
    assert epsilon([(sigma, q, steps)], cfg.dp_delta) == pytest.approx(3.0, rel=0.02)


@pytest.mark.parametrize("weighting", ["pcgrad", "mgda", "cagrad", "gradnorm", "uw", "nash"])
def test_multi_backward_weightings_are_refused_under_dp(weighting: str) -> None:
    with pytest.raises(ConfigError, match=rf"'{weighting}' cannot run under privacy 'dp-sgd'.*ew"):
        parse_run_config({"privacy": "dp-sgd", "weighting": weighting})


@pytest.mark.slow
def test_epsilon_survives_a_client_restart(tmp_path: Path) -> None:
    state = tmp_path / "state"
    common = {
        "privacy": "dp-sgd",
        "dp-noise-multiplier": 1.0,
        "dp-epsilon": 100.0,
        "state-dir": str(state),
        "run-name": "dp",
    }
    first = simulate(tmp_path, **{**common, "num-server-rounds": 2})
    rows = [json.loads(x) for x in (first.results_dir / "metrics.jsonl").read_text().splitlines()]
    assert set(rows[0]["dp_epsilon"]) == {"0", "1", "2"}
    for c in rows[0]["dp_epsilon"]:
        assert rows[0]["dp_epsilon"][c] < rows[1]["dp_epsilon"][c]
    # A new run (fresh processes, empty context.state) resumes from the state dir.
    second = simulate(tmp_path, **{**common, "num-server-rounds": 3, "resume": True})
    rows2 = [json.loads(x) for x in (second.results_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows2] == [1, 2, 3]
    for c, eps3 in rows2[2]["dp_epsilon"].items():
        _, meta = read_state_files(state / "default" / f"client-{c}")
        assert len(meta["dp_history"]) == 3
        assert eps3 == pytest.approx(epsilon(meta["dp_history"], 1e-5), rel=1e-9)
        assert eps3 > rows[1]["dp_epsilon"][c]
    assert set(rows2[2]["dp_epsilon"]) == set(rows[0]["dp_epsilon"])  # every client resumed


@pytest.mark.slow
@pytest.mark.parametrize("clipping", ["fixed-server", "adaptive-client"])
def test_central_dp_reports_cumulative_client_level_epsilon(tmp_path: Path, clipping: str) -> None:
    from opacus.accountants import RDPAccountant as Reference

    outcome = simulate(
        tmp_path,
        **{
            "privacy": "central-dp",
            "cdp-clipping": clipping,
            "cdp-noise-multiplier": 2.0,
            "cdp-clipped-count-stddev": 5.0,
            "dp-epsilon": 50.0,
            # A reply the norm check rejects leaves the wrapper short of its fixed sample:
            # no release, no ε spent that round (correct, but not what this test measures).
            "max-update-ratio": 0.0,
            # reported beside the conservative ε (fixed clipping only)
            "cdp-amplification": "without-replacement" if clipping == "fixed-server" else "none",
        },
    )
    rows = [json.loads(x) for x in (outcome.results_dir / "metrics.jsonl").read_text().splitlines()]
    eps = [r["central_dp"]["epsilon"] for r in rows]
    assert eps[0] < eps[1]
    # All 3 clients each round, no amplification (q = 1), the configured σ = 2 in both
    # cases (adaptive clipping splits it between the sum and the clipped-count query).
    ref = Reference()
    ref.history = [(2.0, 1.0, 2)]
    assert eps[1] == pytest.approx(ref.get_epsilon(1e-5), rel=1e-6)
    if clipping == "fixed-server":
        # The sample is the whole population (q = 1): nothing to amplify, and under
        # replace-one the sum's sensitivity doubles, so the noise counts as σ/2 = 1.
        ref.history = [(1.0, 1.0, 2)]
        amplified = [r["central_dp"]["epsilon_amplified"] for r in rows]
        assert amplified[1] == pytest.approx(ref.get_epsilon(1e-5), rel=1e-6)
        assert amplified[1] > eps[1]
    else:
        assert "epsilon_amplified" not in rows[1]["central_dp"]
    if clipping != "fixed-server":
        assert rows[1]["central_dp"]["clipping_norm"] != rows[0]["central_dp"]["clipping_norm"]


def test_amplified_epsilon_is_the_subsampled_gaussian_without_replacement() -> None:
    """Against dp_accounting itself: σ/2 (replace-one sensitivity 2C) in its
    sampled-without-replacement event; a smaller sample of a larger population spends less,
    and a full sample spends what the plain Gaussian at σ/2 spends."""
    import dp_accounting

    from server.privacy import amplified_epsilon

    def reference(sigma: float, sampled: int, population: int, releases: int) -> float:
        acc = dp_accounting.rdp.RdpAccountant(
            neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE
        )
        gaussian = dp_accounting.GaussianDpEvent(sigma / 2)
        event = dp_accounting.SampledWithoutReplacementDpEvent(population, sampled, gaussian)
        acc.compose(event, releases)
        return acc.get_epsilon(1e-5)

    for sigma, m, n in [(4.0, 10, 100), (2.0, 10, 1000), (1.0, 50, 100)]:
        got = amplified_epsilon(sigma, m, n, 30, 1e-5)
        assert got == pytest.approx(reference(sigma, m, n, 30), rel=1e-9)
    full = dp_accounting.rdp.RdpAccountant()
    full.compose(dp_accounting.GaussianDpEvent(2.0), 30)
    assert amplified_epsilon(4.0, 100, 100, 30, 1e-5) == pytest.approx(full.get_epsilon(1e-5))
    eps = [amplified_epsilon(4.0, 10, n, 30, 1e-5) for n in (10, 100, 1000)]
    assert eps[0] > eps[1] > eps[2]
    assert amplified_epsilon(4.0, 10, 100, 0, 1e-5) == 0.0


def test_amplification_draws_the_client_sample_from_os_entropy() -> None:
    """Two servers with the same seed sample the same clients, unless ε is amplified by the
    sample, which then must be secret."""
    import random

    from server.app import seed_node_sampling

    def samples(extra: dict) -> list[list[int]]:
        cfg = parse_run_config({"seed": 3, "algorithm": "fedper", **extra})
        seed_node_sampling(cfg)
        return [random.sample(range(1000), 10) for _ in range(3)]

    assert samples({}) == samples({})
    amplified = {"privacy": "central-dp", "cdp-amplification": "without-replacement"}
    assert samples(amplified) != samples(amplified)


def test_amplification_samples_from_the_whole_population() -> None:
    """The bound is for a sample of the whole population: the strategy waits until every
    client is connected before it samples (otherwise it samples among `min-nodes`)."""
    from server.strategies import build_strategy

    base = {"privacy": "central-dp", "algorithm": "fedper", "num-clients": 8, "min-nodes": 2}
    plain = build_strategy(parse_run_config(base))
    amplified = build_strategy(
        parse_run_config({**base, "cdp-amplification": "without-replacement"})
    )
    assert (plain.min_available_nodes, amplified.min_available_nodes) == (2, 8)


def test_central_dp_refuses_settings_that_break_its_accounting() -> None:
    with pytest.raises(ConfigError, match="needs cdp-clipped-count-stddev > 1"):
        parse_run_config(
            {
                "privacy": "central-dp",
                "cdp-clipping": "adaptive-server",
                "cdp-noise-multiplier": 2.0,
            }
        )
    with pytest.raises(ConfigError, match="accounts ε only for FedAvg"):
        parse_run_config({"privacy": "central-dp", "strategy": "fedmedian"})
    with pytest.raises(ConfigError, match="heads, which would travel without noise"):
        parse_run_config({"privacy": "central-dp", "algorithm": "fedavg"})
    for extra in (
        {"privacy": "dp-sgd"},
        {"privacy": "central-dp", "cdp-clipping": "adaptive-server", "cdp-noise-multiplier": 0.1},
        {"privacy": "central-dp", "cdp-clipping": "fixed-client", "secagg": True},
    ):
        with pytest.raises(ConfigError, match="cdp-amplification 'without-replacement' needs"):
            parse_run_config({**extra, "cdp-amplification": "without-replacement"})


@pytest.mark.slow
def test_local_dp_runs_through_flowers_mod(tmp_path: Path) -> None:
    outcome = simulate(tmp_path, **{"privacy": "local-dp", "ldp-epsilon": 5.0})
    log = outcome.log_path.read_text()
    assert "LocalDpMod: parameters are clipped" in log
    assert outcome.summary["status"] == "completed"


def test_dp_sgd_trains_the_resnet_on_a_small_image_set() -> None:
    """Opacus computes per-sample gradients through convolutions, GroupNorm and the residual
    additions of the ResNet encoder (no BatchNorm, which it refuses)."""
    import numpy as np

    from common.federation import ClientData, Split
    from common.tasks import TaskSpec

    cfg = parse_run_config(
        {
            "privacy": "dp-sgd",
            "encoder": "resnet",
            "num-blocks": 2,
            "resnet-depth": 1,
            "resnet-width": 4,
            "hidden": 16,
            "local-epochs": 1,
            "batch-size": 8,
            "dp-noise-multiplier": 1.0,
            "dp-epsilon": 100.0,
        }
    )
    rng = np.random.default_rng(0)
    tasks = (TaskSpec("a", "binary", 2), TaskSpec("b", "multiclass", 3))

    def split(n: int) -> Split:
        x = rng.standard_normal((n, 3, 32, 32), dtype=np.float32)
        return Split(x, {"a": rng.integers(0, 2, n), "b": rng.integers(0, 3, n)})

    data = ClientData(0, tasks, split(24), split(4), split(4), (3, 32, 32))
    model = build_model(cfg, tasks, data.input_shape)
    weighting = build_weighting(cfg, data.task_names, data.task_names)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stats, history, eps = dp_round(model, data, weighting, cfg, 1, [])
    assert eps > 0 and history[0][2] == stats.steps > 0
    changed = [k for k, v in model.state_dict().items() if not v.equal(before[k])]
    assert any(k.startswith("encoder.blocks.1.units.0.norm") for k in changed)
    assert any(k.startswith("heads.") for k in changed)
