"""Run-config parsing: defaults, types, ranges, names; every error names the key."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from common.config import CHOICES, ConfigError, RunConfig, parse_run_config
from common.datasets import DATASETS

ROOT = Path(__file__).resolve().parent.parent


def test_pyproject_defaults_equal_runconfig_defaults() -> None:
    table = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert table == RunConfig().to_dict()


def test_choices_match_the_factories() -> None:
    """(The method axes: tests/test_method_tables.py.)"""
    assert set(DATASETS) <= set(CHOICES["dataset"])


@pytest.mark.parametrize(
    ("raw", "needles"),
    [
        ({"dataset": "mnist"}, ["'dataset'", "multidigits", "synthcorr"]),
        ({"algorithm": "fedfoo"}, ["'algorithm'", "fedper", "local"]),
        ({"weighting": "magic"}, ["'weighting'", "ew", "static"]),
        ({"strategy": "nope"}, ["'strategy'", "fedavg"]),
        ({"num-server-rounds": 0}, ["'num-server-rounds'", ">= 1"]),
        ({"num-server-rounds": -3}, ["'num-server-rounds'"]),
        ({"num-server-rounds": "ten"}, ["'num-server-rounds'", "integer"]),
        ({"lr": 0.0}, ["'lr'", "> 0"]),
        ({"dirichlet-alpha": -1.0}, ["'dirichlet-alpha'"]),
        ({"secagg": "yes"}, ["'secagg'", "true or false"]),
        ({"no-such-key": 1}, ["no-such-key", "valid keys"]),
    ],
)
def test_bad_values_name_the_key_and_valid_values(raw: dict, needles: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        parse_run_config(raw)
    for needle in needles:
        assert needle in str(err.value)


def test_static_weights_length_must_match_the_tasks() -> None:
    with pytest.raises(ConfigError, match=r"'static-weights' has 2 values .* 5 tasks"):
        parse_run_config({"weighting": "static", "static-weights": "1,2"})
    cfg = parse_run_config({"weighting": "static", "static-weights": "1,1,0.5,2,1"})
    assert cfg.static_alphas(["left", "right", "sum", "parity", "equal"])["sum"] == 0.5


def test_unknown_task_in_plan_is_named() -> None:
    from common.federation import parse_plan

    with pytest.raises(ConfigError, match=r"unknown tasks \['colour'\].*valid tasks"):
        parse_plan("left;colour,sum", ["left", "right", "sum"], 3)


def test_launcher_refuses_bad_config_before_starting_anything(capsys) -> None:
    from deploy.cli import main

    assert main(["-c", "algorithm=fedfoo"]) == 2
    assert "valid values" in capsys.readouterr().err


def test_digest_ignores_names_but_not_hyperparameters() -> None:
    a = parse_run_config({"run-name": "x"})
    assert a.digest() == parse_run_config({"run-name": "y"}).digest()
    assert a.digest() != parse_run_config({"lr": 0.01}).digest()


def test_digest_ignores_settings_of_methods_the_config_does_not_select() -> None:
    """A FedRep or CAGrad setting changed later does not make a finished FedPer run stale."""
    base = parse_run_config({"algorithm": "fedper", "weighting": "ew"})
    for key, value in (("fedrep-body-epochs", 7), ("cagrad-c", 0.9), ("ditto-lambda", 2.0)):
        assert parse_run_config({"algorithm": "fedper", key: value}).digest() == base.digest()
    fedrep = parse_run_config({"algorithm": "fedrep"})
    assert parse_run_config({"algorithm": "fedrep", "fedrep-body-epochs": 7}).digest() != (
        fedrep.digest()
    )
    cagrad = parse_run_config({"weighting": "cagrad"})
    assert parse_run_config({"weighting": "cagrad", "cagrad-c": 0.9}).digest() != cagrad.digest()


def test_digest_ignores_settings_of_strategies_the_config_does_not_select() -> None:
    base = parse_run_config({"strategy": "fedavg"})
    for key, value in (("proximal-mu", 0.5), ("tau", 0.1), ("num-malicious", 1)):
        assert parse_run_config({"strategy": "fedavg", key: value}).digest() == base.digest()
    fedprox = parse_run_config({"strategy": "fedprox"})
    changed = parse_run_config({"strategy": "fedprox", "proximal-mu": 0.5})
    assert changed.digest() != fedprox.digest()
    fedadam = parse_run_config({"strategy": "fedadam"})
    assert parse_run_config({"strategy": "fedadam", "tau": 0.1}).digest() != fedadam.digest()


def test_the_mean_aggregation_keeps_the_digests_of_runs_made_before_the_key_existed() -> None:
    """Checkpoints store the digest: a run checkpointed before `aggregation` existed resumes.
    The digests below are what the code before the key computed for these configs."""
    assert RunConfig().digest() == "c88ffb0daf25a477"
    old = {"algorithm": "fedrep", "strategy": "fedavgm", "num-clients": 4}
    assert parse_run_config(old).digest() == "f4f55ee0bceb2c17"
    hca = parse_run_config({**old, "aggregation": "hca"})
    assert hca.digest() != parse_run_config(old).digest()
    changed = parse_run_config({**old, "aggregation": "hca", "hca-c": 0.8})
    assert changed.digest() != hca.digest()
    # Amplified ε assumes a secret client sample from round 1: a run cannot switch to it.
    central = {**old, "algorithm": "fedper", "strategy": "fedavg", "privacy": "central-dp"}
    amplified = {**central, "cdp-amplification": "without-replacement"}
    assert parse_run_config(amplified).digest() != parse_run_config(central).digest()


def test_same_training_reads_a_recorded_config_with_todays_keys() -> None:
    from common.config import same_training

    cfg = parse_run_config({"lr": 0.02, "run-name": "a"})
    recorded = {**cfg.to_dict(), "digest": "old", "a-key-removed-since": 1}
    del recorded["tau"]  # a key added since: its default
    assert same_training(recorded, cfg)
    assert same_training({**recorded, "results-dir": "/elsewhere"}, cfg)
    assert not same_training({**recorded, "lr": 0.05}, cfg)
    assert not same_training({**recorded, "lr": -1}, cfg)  # invalid today: not the same
