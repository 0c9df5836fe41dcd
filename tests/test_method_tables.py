"""The method tables (algorithms, weightings, strategies, aggregations) against what
implements them: the weighting classes, the schedules, the strategy and aggregation
builders, RunConfig and pyproject. Adding a method is its class or function, one table line,
its config field(s) and its pyproject line; these tests keep the four in step."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import torch

import common.weighting
from client.train import SCHEDULES, build_weighting
from common.aggregation_table import AGGREGATIONS
from common.algorithms import ALGORITHMS
from common.config import ConfigError, RunConfig, parse_run_config
from common.strategy_table import STRATEGIES
from common.weighting import WEIGHTING_CLASSES, Weighting, make_weighting
from common.weighting_table import WEIGHTINGS
from server.conflict_averse import AGGREGATION_RULES
from server.strategies import STRATEGY_BUILDERS

ROOT = Path(__file__).resolve().parent.parent
TABLES = {
    "algorithm": ALGORITHMS,
    "weighting": WEIGHTINGS,
    "strategy": STRATEGIES,
    "aggregation": AGGREGATIONS,
}
TASKS = ["a", "b"]
# Values for keys whose default does not build the method (static has no α by default).
REQUIRED = {"static-weights": "0.3,2"}


def attr(key: str) -> str:
    return key.replace("-", "_")


def test_config_and_tables_import_without_torch() -> None:
    """The server's config checks, the launcher and the studies' planning read the tables
    without paying for torch (seconds to import)."""
    modules = (
        "common.config, common.algorithms, common.weighting_table, common.strategy_table, "
        "common.aggregation_table"
    )
    code = f"import sys, {modules}; print(sorted(m for m in sys.modules if m == 'torch'))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_every_weighting_in_the_table_has_its_class_and_no_class_is_missing_from_it() -> None:
    assert list(WEIGHTING_CLASSES) == list(WEIGHTINGS)
    for name, cls in WEIGHTING_CLASSES.items():
        assert cls.name == name


def test_every_schedule_an_algorithm_names_exists() -> None:
    assert {a.schedule for a in ALGORITHMS.values()} == set(SCHEDULES)


def test_every_strategy_in_the_table_has_its_builder() -> None:
    assert set(STRATEGY_BUILDERS) == set(STRATEGIES)


def test_every_aggregation_in_the_table_has_its_rule() -> None:
    assert list(AGGREGATION_RULES) == list(AGGREGATIONS)
    for name, spec in AGGREGATIONS.items():
        for strategy in spec.strategies or ():
            assert strategy in STRATEGIES, f"aggregation '{name}': unknown '{strategy}'"


def test_table_keys_are_run_config_keys_with_their_pyproject_line() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    table = pyproject["tool"]["flwr"]["app"]["config"]
    defaults = RunConfig().to_dict()
    for selector, methods in TABLES.items():
        for spec in methods.values():
            for key in spec.keys:
                assert key in defaults, f"{selector} '{spec.name}': '{key}' is not in RunConfig"
                assert table.get(key) == defaults[key], f"pyproject: '{key}'"
                assert key not in TABLES, f"{selector} '{spec.name}': '{key}' selects a method"


# --- weightings: the class does what its table line says ------------------------------------


class Recording(dict):
    """An options dict that remembers which options were read."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> Any:
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return super().get(key, default)


def config_for(name: str, **changes: Any) -> RunConfig:
    keys = WEIGHTINGS[name].keys
    required = {attr(k): v for k, v in REQUIRED.items() if k in keys}
    return dataclasses.replace(RunConfig(), weighting=name, **required, **changes)


def trace(method: Weighting) -> list[float]:
    """The weights and shared gradients `method` produces over three epochs of two steps on
    a small two-task model (so epoch-level state such as DWA's takes effect)."""
    gen = torch.Generator().manual_seed(0)
    encoder = torch.nn.Linear(3, 4)
    heads = torch.nn.ModuleDict({t: torch.nn.Linear(4, 1) for t in TASKS})
    params = [*encoder.parameters(), *heads.parameters()]
    with torch.no_grad():
        for p in params:
            p.copy_(torch.randn(p.shape, generator=gen))
    x = torch.randn(8, 3, generator=gen)
    y = {t: torch.randn(8, 1, generator=gen) for t in TASKS}
    optimizer = torch.optim.SGD([*params, *method.parameters()], lr=0.05)
    out: list[float] = []
    for _ in range(3):
        for _ in range(2):
            optimizer.zero_grad()
            z = torch.tanh(encoder(x))
            losses = {t: ((h(z) - y[t]) ** 2).mean() for t, h in heads.items()}
            weights = method.backward(losses, list(encoder.parameters()))
            out += [weights[t] for t in TASKS]
            out += [float(v) for p in encoder.parameters() for v in p.grad.reshape(-1)]
            optimizer.step()
        method.end_epoch({t: float(v.detach()) for t, v in losses.items()})
    return out


@pytest.mark.parametrize("name", list(WEIGHTINGS))
def test_a_weighting_reads_exactly_the_keys_its_table_line_lists(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A class reading an option its line does not list would never get the config's value
    (and keep a default of its own); a listed key it never reads would do nothing."""
    recorded: list[Recording] = []
    defaults = common.weighting.default_options

    def recording(method: str) -> Recording:
        recorded.append(Recording(defaults(method)))
        return recorded[-1]

    monkeypatch.setattr(common.weighting, "default_options", recording)
    cfg = config_for(name)
    trace(build_weighting(cfg, TASKS, TASKS))
    (options,) = recorded
    assert options.read - {"seed"} == {attr(k) for k in WEIGHTINGS[name].keys}


@pytest.mark.parametrize("name", [n for n, w in WEIGHTINGS.items() if set(w.keys) - set(REQUIRED)])
def test_a_weighting_built_without_options_is_the_default_configs(name: str) -> None:
    """The class's defaults are RunConfig's (and pyproject's): built bare, as tests and
    studies do, it behaves as the weighting a default run config builds."""
    bare = trace(make_weighting(name, TASKS))
    assert bare == trace(build_weighting(config_for(name), TASKS, TASKS))


def test_static_has_no_default_weights_in_the_config_or_the_class() -> None:
    with pytest.raises(ConfigError, match="'static-weights' has 0 values"):
        parse_run_config({"weighting": "static"})
    with pytest.raises(ValueError, match="no α given"):
        make_weighting("static", TASKS)


def backward_passes(method: Weighting) -> int:
    """How often the gradient flows through the same task loss in one `backward` call."""
    encoder, head = torch.nn.Linear(3, 4), torch.nn.Linear(4, 1)
    z = torch.tanh(encoder(torch.randn(8, 3, generator=torch.Generator().manual_seed(1))))
    losses = {t: (head(z) * (i + 1)).square().mean() for i, t in enumerate(TASKS)}
    passes = [0]

    def count(grad: torch.Tensor) -> None:
        passes[0] += 1

    losses["a"].register_hook(count)
    method.backward(losses, list(encoder.parameters()))
    return passes[0]


@pytest.mark.parametrize("name", list(WEIGHTINGS))
def test_the_table_flags_say_what_the_class_does(name: str) -> None:
    """DP-SGD's refusal follows these flags: a method that backpropagates once per task or
    trains parameters of its own must say so in its line."""
    spec = WEIGHTINGS[name]
    method = build_weighting(config_for(name), TASKS, TASKS)
    assert (backward_passes(method) > 1) == spec.per_task_backward
    if method.parameters():
        assert spec.own_parameters
    assert weights_follow_losses(method) == spec.loss_driven


def weights_follow_losses(method: Weighting) -> bool:
    """Whether the weights a method uses depend on the losses it saw in earlier epochs
    (random weightings draw from a seeded stream: compare two copies fed different losses)."""
    import copy

    twins = [method, copy.deepcopy(method)]
    for epoch in range(3):
        for twin, scale in zip(twins, (1.0, 5.0), strict=True):
            twin.end_epoch(
                {
                    t: scale * (epoch + 1 + i) ** (-1.0 if scale > 1 else 1.0)
                    for i, t in enumerate(TASKS)
                }
            )
    probe = {t: torch.tensor(1.0) for t in TASKS}
    weights = [{t: float(w) for t, w in twin.task_weights(probe).items()} for twin in twins]
    return weights[0] != weights[1]


# --- strategies: the builder reads its table keys -------------------------------------------


class ReadsOf:
    """A RunConfig stand-in that records which keys are read."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg, self.read = cfg, set()

    def __getattr__(self, name: str) -> Any:
        self.read.add(name.replace("_", "-"))
        return getattr(self.cfg, name)


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_a_strategy_builder_reads_exactly_its_table_keys(name: str) -> None:
    """A key a builder reads but its line omits would be left out of the run's digest."""
    cfg = ReadsOf(parse_run_config({"strategy": name, "num-clients": 10}))
    STRATEGY_BUILDERS[name](cfg, {})  # type: ignore[arg-type]
    # FedOpt's client learning rate η_l is `lr`, which every run reads.
    assert cfg.read - {"lr"} == set(STRATEGIES[name].keys)
