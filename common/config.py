"""Run configuration: the one place that lists every run-config key, its type, default and
valid values. `pyproject.toml`'s `[tool.flwr.app.config]` carries the same defaults (a test
keeps them equal); the ServerApp, the ClientApp and the experiments all parse through here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Valid names for every key that selects an implementation. The factories that turn these
# names into objects (WEIGHTINGS, ALGORITHMS, STRATEGIES, DATASETS) are checked against
# this table by a test, so a name cannot be valid here and missing there.
CHOICES: dict[str, tuple[str, ...]] = {
    "dataset": ("multidigits", "synthcorr", "penguins", "user"),
    "algorithm": ("fedper", "local"),
    "weighting": (
        "ew",
        "static",
        "uw",
        "dwa",
        "rlw",
        "gradnorm",
        "pcgrad",
        "mgda",
        "cagrad",
        "nash",
    ),
    "mgda-normalize": ("none", "l2", "loss", "loss+"),
    "strategy": ("fedavg",),
    "architecture": ("hps",),
    "encoder": ("mlp", "cnn"),
    "partitioner": ("iid", "dirichlet", "shards", "natural"),
    "privacy": ("none",),
}


def _key(
    default: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    doc: str = "",
) -> Any:
    return field(
        default=default, metadata={"low": low, "high": high, "low_open": low_open, "doc": doc}
    )


@dataclass(frozen=True)
class RunConfig:
    """Typed, validated run config. Attribute `foo_bar` is run-config key `foo-bar`."""

    num_server_rounds: int = _key(20, low=1, doc="federated rounds")
    dataset: str = _key("multidigits")
    algorithm: str = _key("fedper")
    weighting: str = _key("ew")
    strategy: str = _key("fedavg")
    architecture: str = _key("hps")
    encoder: str = _key("mlp")
    seed: int = _key(0, low=0)
    results_dir: str = _key("results")
    run_name: str = _key("", doc="results/<run-name>/; empty: derived from the config")
    num_clients: int = _key(6, low=1, doc="simulated clients (federation size)")
    samples_per_client: int = _key(500, low=10)
    partitioner: str = _key("dirichlet")
    dirichlet_alpha: float = _key(0.5, low=0.0, low_open=True)
    shards_per_client: int = _key(2, low=1)
    plan: str = _key("", doc="task sets per client: 'a,b;c' (client i gets entry i mod n)")
    static_weights: str = _key("", doc="α per dataset task, comma separated")
    local_epochs: int = _key(3, low=1)
    batch_size: int = _key(32, low=1)
    lr: float = _key(0.05, low=0.0, low_open=True)
    momentum: float = _key(0.9, low=0.0, high=0.999)
    hidden: int = _key(64, low=1)
    num_blocks: int = _key(2, low=1)
    num_experts: int = _key(4, low=1)
    dwa_temperature: float = _key(2.0, low=0.0, low_open=True, doc="DWA (Liu et al. 2019)")
    gradnorm_alpha: float = _key(1.5, low=0.0, doc="GradNorm asymmetry (Chen et al. 2018)")
    gradnorm_lr: float = _key(0.025, low=0.0, low_open=True)
    mgda_normalize: str = _key("none")
    cagrad_c: float = _key(0.5, low=0.0, doc="CAGrad c (Liu et al. 2021)")
    cagrad_rescale: int = _key(1, low=0, high=2)
    nash_max_norm: float = _key(1.0, low=0.0, low_open=True)
    eval_every: int = _key(1, low=1)
    state_dir: str = _key("", doc="client state dir (simulation); deployment: node config")
    federation_name: str = _key("default")
    privacy: str = _key("none")
    secagg: bool = _key(False)
    audit_received: bool = _key(False, doc="write received.jsonl: what the server got, per reply")
    synth_tasks: int = _key(4, low=2)
    synth_correlation: float = _key(0.5, low=0.0, high=1.0)

    def to_dict(self) -> dict[str, Any]:
        """Kebab-case dict, as in pyproject and `--run-config`."""
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in dataclasses.fields(self)}

    def digest(self) -> str:
        """Hash of the config (minus names that do not change the computation)."""
        d = {k: v for k, v in self.to_dict().items() if k not in ("run-name", "results-dir")}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def name(self) -> str:
        return self.run_name or f"{self.dataset}-{self.algorithm}-{self.weighting}-s{self.seed}"

    def weighting_options(self, client_id: int) -> dict[str, Any]:
        """Options of the weighting methods (snake_case), seeded per client."""
        keys = (
            "dwa_temperature",
            "gradnorm_alpha",
            "gradnorm_lr",
            "mgda_normalize",
            "cagrad_c",
            "cagrad_rescale",
            "nash_max_norm",
        )
        return {k: getattr(self, k) for k in keys} | {"seed": self.seed * 10_007 + client_id}

    def static_alphas(self, task_names: list[str]) -> dict[str, float]:
        """α per task from `static-weights`, checked against the dataset's task list."""
        values = [v for v in self.static_weights.replace(" ", "").split(",") if v]
        if len(values) != len(task_names):
            raise ConfigError(
                f"run config 'static-weights' has {len(values)} values but dataset "
                f"'{self.dataset}' has {len(task_names)} tasks {task_names}; give one α per task"
            )
        try:
            return {t: float(v) for t, v in zip(task_names, values, strict=True)}
        except ValueError as err:
            raise ConfigError(f"run config 'static-weights': not a number ({err})") from None


class ConfigError(ValueError):
    """A run-config or node-config value is invalid; the message names the key."""


_FIELDS = {f.name.replace("_", "-"): f for f in dataclasses.fields(RunConfig)}


def parse_run_config(raw: Mapping[str, Any]) -> RunConfig:
    """Validate a (partial) kebab-case mapping and fill in defaults."""
    unknown = sorted(set(raw) - set(_FIELDS))
    if unknown:
        raise ConfigError(f"unknown run-config keys {unknown}; valid keys: {sorted(_FIELDS)}")
    values = {}
    for key, value in raw.items():
        f = _FIELDS[key]
        values[f.name] = _check_value(key, value, type(f.default), f.metadata)
    cfg = RunConfig(**values)
    if cfg.weighting == "static":
        from common.datasets import dataset_tasks

        cfg.static_alphas(dataset_tasks(cfg))
    return cfg


def _check_value(key: str, value: Any, kind: type, meta: Mapping[str, Any]) -> Any:
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"run config '{key}' must be true or false, got {value!r}")
        return value
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise ConfigError(f"run config '{key}' must be an integer, got {value!r}")
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"run config '{key}' must be a number, got {value!r}")
        value = float(value)
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"run config '{key}' must be a string, got {value!r}")
        if key in CHOICES and value not in CHOICES[key]:
            raise ConfigError(
                f"run config '{key}' = '{value}' is not valid; valid values: {list(CHOICES[key])}"
            )
        return value
    low, high = meta.get("low"), meta.get("high")
    if low is not None and (value <= low if meta.get("low_open") else value < low):
        bound = f"> {low}" if meta.get("low_open") else f">= {low}"
        raise ConfigError(f"run config '{key}' must be {bound}, got {value}")
    if high is not None and value > high:
        raise ConfigError(f"run config '{key}' must be <= {high}, got {value}")
    return value
