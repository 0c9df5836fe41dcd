"""Run configuration: the one place that lists every run-config key, its type, default and
valid values. `pyproject.toml`'s `[tool.flwr.app.config]` carries the same defaults (a test
keeps them equal); the ServerApp, the ClientApp and the experiments all parse through here.
The method axes (algorithm, weighting, strategy, aggregation) come from their tables, and so
do the keys only one method reads and which methods a privacy setting refuses.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from common.aggregation_table import AGGREGATIONS
from common.algorithms import ALGORITHMS
from common.strategy_table import STRATEGIES
from common.weighting_table import WEIGHTINGS

# The method tables, one per axis: the config's choices, per-method keys and compatibility
# checks below all follow from them.
METHOD_TABLES: dict[str, Mapping[str, Any]] = {
    "algorithm": ALGORITHMS,
    "weighting": WEIGHTINGS,
    "strategy": STRATEGIES,
    "aggregation": AGGREGATIONS,
}

# Valid names for every key that selects an implementation. The factories that turn these
# names into objects (the weighting classes, schedules, strategy builders, DATASETS) are
# checked against them by a test, so a name cannot be valid here and missing there.
CHOICES: dict[str, tuple[str, ...]] = {
    "dataset": ("multidigits", "synthcorr", "penguins", "scenes", "user", "hf"),
    **{selector: tuple(table) for selector, table in METHOD_TABLES.items()},
    "mgda-normalize": ("none", "l2", "loss", "loss+"),
    "architecture": ("hps", "mmoe", "mtan", "cross-stitch"),
    "encoder": ("mlp", "cnn", "resnet"),
    "partitioner": ("iid", "dirichlet", "shards", "natural"),
    "privacy": ("none", "dp-sgd", "central-dp", "local-dp"),
    "cdp-clipping": ("fixed-server", "fixed-client", "adaptive-server", "adaptive-client"),
    "cdp-amplification": ("none", "without-replacement"),
    "compression": ("none", "fp16", "int8"),
    "amp": ("none", "bf16", "fp16"),
    "tracking": ("none", "tensorboard", "mlflow"),
    "attack": (
        "none",
        "sign-flip",
        "scale",
        "noise",
        "label-flip",
        "nan",
        "malformed-keys",
        "malformed-shape",
        "malformed-dtype",
        "mixed",
        "head-shape",
        "head-missing",
        "head-scale",
        "head-nan",
        "eval-range",
        "eval-spoof-id",
        "eval-tasks",
        "mixed-task",
    ),
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
    aggregation: str = _key("mean", doc="encoder updates combined: mean, pcgrad, hca (FedHCA²)")
    hca_c: float = _key(0.4, low=0.0, doc="hca: radius of the conflict-averse step (× ‖mean‖)")
    hca_alpha_init: float = _key(0.1, low=0.0, high=1.0, doc="hca: first weight of the step")
    hca_lr: float = _key(0.01, low=0.0, doc="hca: learning rate of the per-client weights")
    task_affinity: bool = _key(False, doc="measure inter-task affinity (cosine, TAG) each round")
    affinity_batches: int = _key(4, low=1, doc="task-affinity: batches measured per round")
    architecture: str = _key(
        "hps",
        doc="mmoe: experts built like the `encoder`, a gate per task; mtan: the encoder as a "
        "shared trunk, private attention masks per task and block; cross-stitch: a column "
        "per task mixed after every block (all shared)",
    )
    encoder: str = _key("mlp", doc="cnn, resnet (GroupNorm ResNet): images (H, W) or (C, H, W)")
    seed: int = _key(0, low=0)
    results_dir: str = _key("results")
    run_name: str = _key("", doc="results/<run-name>/; empty: derived from the config")
    num_clients: int = _key(6, low=1, doc="simulated clients (federation size)")
    samples_per_client: int = _key(500, low=10)
    data_file: str = _key("", doc="dataset 'user': CSV/NPZ data file (node config overrides)")
    schema_file: str = _key("", doc="dataset 'user'/'hf': task schema (JSON) for the data")
    hf_dataset: str = _key(
        "",
        doc="dataset 'hf': a Hugging Face Hub name (flwrlabs/celeba) or a local folder/file "
        "that datasets.load_dataset reads (parquet, arrow, csv, json, an image folder); a "
        "node's own 'hf-dataset' (node config) takes precedence in a deployment",
    )
    hf_subset: str = _key("", doc="dataset 'hf': the data set's subset (config name)")
    partitioner: str = _key("dirichlet")
    dirichlet_alpha: float = _key(0.5, low=0.0, low_open=True)
    shards_per_client: int = _key(2, low=1)
    plan: str = _key("", doc="task sets per client: 'a,b;c' (client i gets entry i mod n)")
    static_weights: str = _key("", doc="α per dataset task, comma separated")
    local_epochs: int = _key(3, low=1)
    batch_size: int = _key(32, low=1)
    lr: float = _key(0.05, low=0.0, low_open=True)
    momentum: float = _key(0.9, low=0.0, high=0.999)
    max_grad_norm: float = _key(
        0.0, low=0.0, doc="clip each local step's gradient norm (all trainable parameters); 0: off"
    )
    hidden: int = _key(64, low=1)
    num_blocks: int = _key(
        2, low=1, doc="encoder blocks: Linear+ReLU (mlp), conv (cnn), stage (resnet)"
    )
    resnet_depth: int = _key(2, low=1, doc="resnet: residual blocks per stage")
    resnet_width: int = _key(16, low=1, doc="resnet: channels of the first stage (x2 per stage)")
    num_experts: int = _key(4, low=1)
    dwa_temperature: float = _key(2.0, low=0.0, low_open=True, doc="DWA (Liu et al. 2019)")
    gradnorm_alpha: float = _key(1.5, low=0.0, doc="GradNorm asymmetry (Chen et al. 2018)")
    gradnorm_lr: float = _key(0.025, low=0.0, low_open=True)
    mgda_normalize: str = _key("none")
    cagrad_c: float = _key(0.5, low=0.0, doc="CAGrad c (Liu et al. 2021)")
    cagrad_rescale: int = _key(1, low=0, high=2)
    nash_max_norm: float = _key(1.0, low=0.0, low_open=True)
    shared_layers: int = _key(0, low=0, doc="share only the first k encoder blocks; 0: all")
    fedrep_head_epochs: int = _key(2, low=0, doc="fedrep: head epochs, encoder frozen")
    fedrep_body_epochs: int = _key(
        3, low=0, doc="fedrep: encoder epochs, heads frozen (local-epochs' default: same budget)"
    )
    fedrep_max_grad_norm: float = _key(
        1.0, low=0.0, doc="fedrep: clip the encoder's gradient norm in the body phase; 0: off"
    )
    finetune_epochs: int = _key(2, low=1, doc="fedavg-ft: head fine-tuning before evaluation")
    ditto_lambda: float = _key(0.1, low=0.0, doc="ditto: pull of the personal encoder")
    proximal_mu: float = _key(0.01, low=0.0, doc="fedprox: proximal term μ/2‖w−w_g‖²")
    server_lr: float = _key(1.0, low=0.0, low_open=True, doc="fedavgm: server learning rate")
    fedopt_eta: float = _key(0.01, low=0.0, low_open=True, doc="fedadam/yogi/adagrad: server η")
    server_momentum: float = _key(0.9, low=0.0, high=1.0, doc="fedavgm")
    beta_1: float = _key(0.9, low=0.0, high=1.0, doc="fedadam/fedyogi")
    beta_2: float = _key(0.99, low=0.0, high=1.0, doc="fedadam/fedyogi")
    tau: float = _key(1e-3, low=0.0, low_open=True, doc="FedOpt adaptivity")
    trim_beta: float = _key(0.2, low=0.0, high=0.49, doc="fedtrimmedavg: cut fraction each end")
    num_malicious: int = _key(0, low=0, doc="krum/multikrum/bulyan: tolerated attackers")
    krum_select: int = _key(2, low=1, doc="multikrum: updates averaged")
    fraction_train: float = _key(1.0, low=0.0, low_open=True, high=1.0)
    fraction_evaluate: float = _key(
        0.0, low=0.0, high=1.0, doc="sampled evaluation in rounds without a full one; 0: none"
    )
    min_nodes: int = _key(2, low=1, doc="minimum clients per round")
    eval_every: int = _key(1, low=1, doc="full evaluation of every client every k rounds")
    state_dir: str = _key(
        "",
        doc="client state dir; empty: the launcher uses <results-dir>/<run-name>/client-state "
        "(simulation), a node without one in its node config keeps its state in memory only",
    )
    federation_name: str = _key("default")
    privacy: str = _key("none")
    secagg: bool = _key(False, doc="SecAgg+ on the encoder (Flower's workflow)")
    secagg_shares: float = _key(1.0, low=0.0, low_open=True, doc="SecAgg+ shares (≤1: fraction)")
    secagg_threshold: float = _key(0.5, low=0.0, low_open=True, doc="SecAgg+ reconstruction")
    secagg_clipping_range: float = _key(8.0, low=0.0, low_open=True, doc="SecAgg+ clip |w|")
    secagg_quantization_range: int = _key(4194304, low=2, doc="SecAgg+ levels (2^22)")
    dp_epsilon: float = _key(8.0, low=0.0, low_open=True, doc="dp-sgd: ε budget per client")
    dp_delta: float = _key(1e-5, low=0.0, low_open=True, high=0.1)
    dp_noise_multiplier: float = _key(0.0, low=0.0, doc="σ; 0: the σ that spends dp-epsilon")
    dp_max_grad_norm: float = _key(1.0, low=0.0, low_open=True, doc="per-example clipping C")
    cdp_clipping: str = _key("fixed-server", doc="central-dp: Flower wrapper")
    cdp_noise_multiplier: float = _key(1.0, low=0.0, low_open=True, doc="central-dp: σ")
    cdp_clipped_count_stddev: float = _key(
        0.0, low=0.0, doc="adaptive clipping: σ_b of the clipped-count query; 0: Flower's n/20"
    )
    cdp_amplification: str = _key(
        "none",
        doc="central-dp: also report ε amplified by the server's secret uniform sampling of "
        "clients (without-replacement; replace-one neighbours; the sample then comes from OS "
        "entropy, not `seed`)",
    )
    clipping_norm: float = _key(1.0, low=0.0, low_open=True, doc="update clipping (central/local)")
    ldp_epsilon: float = _key(10.0, low=0.0, low_open=True, doc="local-dp: ε of each release")
    dp_insecure_seeded_noise: bool = _key(
        False,
        doc="INSECURE: draw dp-sgd / local-dp noise from `seed` (exact replays, tests); the "
        "server could subtract it, so no ε guarantee holds; warned every round",
    )
    max_update_ratio: float = _key(
        10.0, low=0.0, doc="reject weights and update norms above this × their median; 0: off"
    )
    attack: str = _key("none", doc="simulated Byzantine clients (robustness experiments)")
    attackers: int = _key(0, low=0, doc="the first k clients attack")
    attack_scale: float = _key(1.0, low=0.0, doc="sign-flip/scale/head-scale factor, noise std")
    compression: str = _key("none", doc="update compression sent up: fp16 or int8")
    resume: bool = _key(False, doc="continue from the last complete round's checkpoint")
    resume_without_private_state: bool = _key(
        False,
        doc="let a client that trained before but lost its private state (heads, DP-SGD "
        "history) go on with fresh state; false: it refuses and the run stops",
    )
    round_timeout: float = _key(600.0, low=0.0, low_open=True, doc="seconds to wait for replies")
    grid_pull_interval: float = _key(
        0.01,
        low=0.0,
        low_open=True,
        high=1.0,
        doc="simulation: seconds between the ServerApp's looks for replies (Flower's "
        "InMemoryGrid; its default 0.1 s adds half of that to every message wave); a "
        "deployment's grid has its own",
    )
    audit_received: bool = _key(False, doc="write received.jsonl: what the server got, per reply")
    device: str = _key(
        "auto", doc="where clients train: auto (CUDA when available), cpu, cuda, cuda:N, mps"
    )
    amp: str = _key("none", doc="mixed precision of the training step: bf16, fp16 (CUDA)")
    tracking: str = _key(
        "none", doc="also log metrics to tensorboard (<run>/tb) or mlflow (<run>/mlflow.db)"
    )
    piggyback_evaluation: bool = _key(
        True,
        doc="clients evaluate round r's model at the start of round r+1's training and send "
        "the metrics with the training reply (one message wave per round; the last round, "
        "sampled evaluations and SecAgg+ runs keep a separate wave); false: always separate",
    )
    data_cache_dir: str = _key(
        "",
        doc="clients keep their prepared data here (memory-mapped, checked); a node's "
        "state-dir (node config) takes precedence; empty and no state-dir: no disk cache",
    )
    synth_tasks: int = _key(4, low=2)
    synth_correlation: float = _key(0.5, low=0.0, high=1.0)

    def to_dict(self) -> dict[str, Any]:
        """Kebab-case dict, as in pyproject and `--run-config`."""
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in dataclasses.fields(self)}

    def digest(self) -> str:
        """Hash of what determines the training; a checkpoint resumes only under the same.
        Names, paths, the round count (a resumed run may go further) and reporting are out,
        and so are the settings of methods (algorithms, weightings, strategies) the config does
        not select."""
        ignored = (
            "run-name",
            "results-dir",
            "resume",
            "num-server-rounds",
            "round-timeout",
            "grid-pull-interval",
            "audit-received",
            "piggyback-evaluation",
            "data-cache-dir",
            "eval-every",
            "fraction-evaluate",
            "state-dir",
            "resume-without-private-state",
            "device",  # state is device-independent: a run may resume on another device
            "tracking",
            "task-affinity",  # measured beside training, which it leaves as it is
            "affinity-batches",
        )
        values = self.to_dict()
        skip = set(ignored) | inactive_method_keys(values)
        if self.encoder != "resnet":
            skip |= {"resnet-depth", "resnet-width"}
        # Keys added later, at the value that behaves as before they existed: older
        # checkpoints resume. Amplification counts: the client sample's randomness changes.
        for key, before in (
            ("aggregation", "mean"),
            ("cdp-amplification", "none"),
            ("max-grad-norm", 0.0),
        ):
            if values[key] == before:
                skip.add(key)
        d = {k: v for k, v in values.items() if k not in skip}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def name(self) -> str:
        return self.run_name or f"{self.dataset}-{self.algorithm}-{self.weighting}-s{self.seed}"

    def weighting_options(self, client_id: int) -> dict[str, Any]:
        """Options of the selected weighting: its keys in the weighting table (snake_case),
        and a seed per client."""
        attrs = [k.replace("-", "_") for k in WEIGHTINGS[self.weighting].keys]
        return {a: getattr(self, a) for a in attrs} | {"seed": self.seed * 10_007 + client_id}

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


def _method_keys() -> dict[str, set[tuple[str, str]]]:
    """Per method-specific key, the (selector key, method) pairs that read it."""
    readers: dict[str, set[tuple[str, str]]] = {}
    for selector, table in METHOD_TABLES.items():
        for name, method in table.items():
            for key in method.keys:
                readers.setdefault(key, set()).add((selector, name))
    return readers


# Keys that only some algorithms, weightings or strategies read, with the methods that do.
_METHOD_KEYS = _method_keys()


def inactive_method_keys(values: Mapping[str, Any]) -> set[str]:
    """The method-specific keys that the selected algorithm, weighting and strategy never
    read, so a new or changed FedRep setting does not make a finished FedPer run look
    different."""
    return {
        key
        for key, readers in _METHOD_KEYS.items()
        if not any(values.get(selector) == name for selector, name in readers)
    }


def same_training(recorded: Mapping[str, Any], cfg: RunConfig) -> bool:
    """Whether a run recorded with config `recorded` (summary.json's `config`, written by
    any earlier version) trained as `cfg` would: both read by today's code, keys it no
    longer knows dropped, keys added since at their defaults; compared by `digest`."""
    known = {k: v for k, v in recorded.items() if k in _FIELDS}
    try:
        return parse_run_config(known).digest() == cfg.digest()
    except ConfigError:
        return False


STRING_KEYS = frozenset(k for k, f in _FIELDS.items() if isinstance(f.default, str))


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
    if cfg.shared_layers > cfg.num_blocks:
        raise ConfigError(
            f"run config 'shared-layers' = {cfg.shared_layers} exceeds 'num-blocks' = "
            f"{cfg.num_blocks} (0 shares the whole encoder)"
        )
    # The cross-key checks read the method tables and this module's types; imported here, as
    # `common.config_checks` imports this module.
    from common.config_checks import check_combinations

    check_combinations(cfg)
    if cfg.weighting == "static":
        from common.datasets import dataset_tasks

        cfg.static_alphas(dataset_tasks(cfg))
    return cfg


def sampled_per_round(cfg: RunConfig, available: int) -> int:
    """How many clients a training round samples (Flower's rule: fraction, at least min)."""
    return max(int(available * cfg.fraction_train), cfg.min_nodes)


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
        if not math.isfinite(value):
            raise ConfigError(f"run config '{key}' must be a finite number, got {value}")
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
