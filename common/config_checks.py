"""Cross-key checks of a run config: the combinations that the training, the privacy
accounting, secure aggregation or the hardware cannot honour, each refused at parse time with
the keys involved and the valid choices. Single keys (types, ranges, choices) are checked in
`common.config`, which calls `check_combinations` on every parsed config.
"""

from __future__ import annotations

import re

from common.aggregation_table import AGGREGATIONS
from common.algorithms import ALGORITHMS
from common.config import CHOICES, ConfigError, RunConfig, sampled_per_round
from common.strategy_table import STRATEGIES
from common.weighting_table import WEIGHTINGS


def check_combinations(cfg: RunConfig) -> None:
    """Every cross-key check, in the order a user can act on them."""
    check_strategy_fits(cfg, cfg.num_clients)
    check_privacy_fits(cfg)
    check_device_fits(cfg)


def check_amplification_fits(cfg: RunConfig) -> None:
    """Amplified ε is reported for fixed clipping only: its noise is σ·C on a sum whose
    replace-one sensitivity is 2C, the case the subsampled-Gaussian bound covers. SecAgg+
    rounds sample through Flower's legacy client manager, which this path does not seed."""
    fits = cfg.privacy == "central-dp" and cfg.cdp_clipping.startswith("fixed") and not cfg.secagg
    if not fits:
        raise ConfigError(
            f"cdp-amplification '{cfg.cdp_amplification}' needs privacy 'central-dp' with "
            "cdp-clipping 'fixed-server' or 'fixed-client' and secagg = false (here privacy "
            f"'{cfg.privacy}', cdp-clipping '{cfg.cdp_clipping}', secagg = "
            f"{str(cfg.secagg).lower()}); valid cdp-amplification: "
            f"{', '.join(CHOICES['cdp-amplification'])}"
        )


def check_strategy_fits(cfg: RunConfig, available: int) -> None:
    """Byzantine-robust rules need enough clients per round for their guarantee."""
    n, f = sampled_per_round(cfg, available), cfg.num_malicious
    if n > available:
        raise ConfigError(
            f"run config 'min-nodes' = {cfg.min_nodes} exceeds the {available} clients"
        )
    robust = STRATEGIES[cfg.strategy].robust
    need = robust[0] * f + robust[1] if robust else None
    if need is not None and n < need:
        raise ConfigError(
            f"strategy '{cfg.strategy}' with num-malicious = {f} needs at least {need} clients "
            f"per round; this run samples {n} of {available} (raise num-clients or "
            "fraction-train, or lower num-malicious)"
        )
    if cfg.strategy == "multikrum" and cfg.krum_select > n:
        raise ConfigError(f"run config 'krum-select' = {cfg.krum_select} exceeds the {n} sampled")
    check_aggregation_fits(cfg)


def check_aggregation_fits(cfg: RunConfig) -> None:
    """A rule that rewrites each client's update needs the updates one by one and a strategy
    whose step is their weighted mean."""
    if cfg.aggregation == "mean":
        return
    composes = AGGREGATIONS[cfg.aggregation].strategies
    if composes is not None and cfg.strategy not in composes:
        raise ConfigError(
            f"aggregation '{cfg.aggregation}' rewrites each update before a weighted mean; "
            f"strategy '{cfg.strategy}' does not average: use {_names(list(composes))}"
        )
    if cfg.secagg:
        raise ConfigError(
            f"aggregation '{cfg.aggregation}' needs each client's own update, which secure "
            "aggregation hides from the server (it sees only the sum); use secagg = false or "
            "aggregation = 'mean'"
        )
    if cfg.privacy == "central-dp":
        raise ConfigError(
            f"aggregation '{cfg.aggregation}' lets one client's update change how the others' "
            "are combined, so central DP's noise, sized for one clipped update, would not "
            "bound a client's influence; use aggregation = 'mean' with central-dp"
        )


# Under DP-SGD: one backward pass per step (Opacus's per-sample hooks and Poisson sampling
# assume it), no parameters outside the model (UW's, GradNorm's) that see the data, and no
# local training outside the accountant.
DP_SGD_WEIGHTINGS = tuple(n for n, w in WEIGHTINGS.items() if w.runs_under_dp_sgd)
DP_SGD_ALGORITHMS = tuple(n for n, a in ALGORITHMS.items() if a.runs_under_dp_sgd)
# Central/local DP and SecAgg+ act on the encoder update only.
ENCODER_ONLY_ALGORITHMS = tuple(n for n, a in ALGORITHMS.items() if not a.sends_heads)


def _names(names: list[str]) -> str:
    """'a, b or c'."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def check_privacy_fits(cfg: RunConfig) -> None:
    if cfg.secagg:
        check_secagg_fits(cfg)
    if cfg.task_affinity and cfg.privacy != "none":
        raise ConfigError(
            f"task-affinity = true sends numbers computed from each client's data outside the "
            f"DP mechanism of privacy '{cfg.privacy}', which does not account for them; "
            "measure affinity in a run with privacy = 'none'"
        )
    if cfg.cdp_amplification != "none":
        check_amplification_fits(cfg)
    if cfg.privacy in ("central-dp", "local-dp"):
        if ALGORITHMS[cfg.algorithm].sends_heads:
            raise ConfigError(
                f"privacy '{cfg.privacy}' clips and noises the encoder update only; algorithm "
                f"'{cfg.algorithm}' also sends heads, which would travel without noise; use "
                f"{_names(list(ENCODER_ONLY_ALGORITHMS))} (or privacy 'dp-sgd')"
            )
        adaptive = cfg.privacy == "central-dp" and cfg.cdp_clipping.startswith("adaptive")
        stddev = cfg.cdp_clipped_count_stddev or sampled_per_round(cfg, cfg.num_clients) / 20
        if adaptive and cfg.cdp_noise_multiplier >= 2 * stddev:
            raise ConfigError(
                f"cdp-clipping '{cfg.cdp_clipping}' splits cdp-noise-multiplier = "
                f"{cfg.cdp_noise_multiplier} between the update and the clipped-count query, "
                f"which needs cdp-clipped-count-stddev > {cfg.cdp_noise_multiplier / 2:g} "
                f"(it is {stddev:g}); raise it or lower cdp-noise-multiplier"
            )
        fixed = cfg.privacy == "central-dp" and cfg.cdp_clipping.startswith("fixed")
        if fixed and cfg.strategy != "fedavg":
            raise ConfigError(
                f"privacy 'central-dp' with cdp-clipping '{cfg.cdp_clipping}' accounts ε "
                f"only for FedAvg's aggregation; strategy '{cfg.strategy}' is not valid "
                "here (use strategy 'fedavg', or an adaptive cdp-clipping)"
            )
        return
    if cfg.privacy != "dp-sgd":
        return
    if cfg.max_grad_norm > 0:
        raise ConfigError(
            f"max-grad-norm = {cfg.max_grad_norm:g} clips the batch gradient, which DP-SGD "
            "replaces with per-example clipping: under privacy 'dp-sgd' set dp-max-grad-norm "
            "instead and max-grad-norm = 0"
        )
    if cfg.weighting not in DP_SGD_WEIGHTINGS:
        spec = WEIGHTINGS[cfg.weighting]
        why = (
            "it needs one backward pass per task"
            if spec.per_task_backward
            else "it trains parameters outside the model"
            if spec.own_parameters
            else "its task weights are computed from the raw losses"
        )
        raise ConfigError(
            f"weighting '{cfg.weighting}' cannot run under privacy 'dp-sgd': {why}, which "
            "Opacus's per-sample clipping and noise do not cover; valid under dp-sgd: "
            f"{list(DP_SGD_WEIGHTINGS)}"
        )
    if cfg.algorithm not in DP_SGD_ALGORITHMS:
        raise ConfigError(
            f"algorithm '{cfg.algorithm}' is not supported under privacy 'dp-sgd' (its extra "
            "local training would run outside the accountant); valid under dp-sgd: "
            f"{list(DP_SGD_ALGORITHMS)}"
        )


# `device` values; whether the node has that device is checked where it trains
# (`common.device.resolve_device`), since the server's machine may differ from a client's.
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?|mps")
# fp16's loss scaling multiplies every gradient by one factor: right for methods whose
# gradient is a fixed combination of the task gradients, wrong for those that normalise,
# project or learn from the gradients themselves.
FP16_WEIGHTINGS = tuple(
    n for n, w in WEIGHTINGS.items() if not (w.per_task_backward or w.own_parameters)
)


def check_device_fits(cfg: RunConfig) -> None:
    """`device` is well-formed and `amp` fits it, the weighting and the privacy setting."""
    if not DEVICE_PATTERN.fullmatch(cfg.device):
        raise ConfigError(
            f"run config 'device' = '{cfg.device}' is not valid; valid: 'auto', 'cpu', "
            "'cuda', 'cuda:N' (N a GPU index), 'mps'"
        )
    if cfg.amp == "none":
        return
    if cfg.privacy == "dp-sgd":
        raise ConfigError(
            f"run config 'amp' = '{cfg.amp}' cannot run under privacy 'dp-sgd': Opacus's "
            "per-sample gradients and clipping are not verified under autocast; use amp = 'none'"
        )
    if cfg.amp == "fp16" and (cfg.device == "cpu" or cfg.device == "mps"):
        raise ConfigError(
            f"run config 'amp' = 'fp16' needs CUDA (a gradient scaler); device is "
            f"'{cfg.device}': use amp = 'bf16' or 'none', or device = 'cuda'"
        )
    if cfg.amp == "bf16" and cfg.device == "mps":
        raise ConfigError("run config 'amp' = 'bf16' is not supported on device 'mps'; use 'none'")
    if cfg.amp == "fp16" and cfg.weighting not in FP16_WEIGHTINGS:
        raise ConfigError(
            f"run config 'amp' = 'fp16' scales the loss before backward, which weighting "
            f"'{cfg.weighting}' (it works on the gradients themselves) does not undo; valid "
            f"with fp16: {list(FP16_WEIGHTINGS)} (or amp = 'bf16', which needs no scaling)"
        )


def check_secagg_fits(cfg: RunConfig) -> None:
    """SecAgg+ sums one vector per client: the same keys everywhere, FedAvg's weighting."""
    algorithm = ALGORITHMS[cfg.algorithm]
    if algorithm.sends_heads or not algorithm.share_encoder:
        valid = [n for n in ENCODER_ONLY_ALGORITHMS if ALGORITHMS[n].share_encoder]
        raise ConfigError(
            f"secagg = true aggregates the shared encoder only; algorithm '{cfg.algorithm}' "
            f"federates per-task heads or nothing at all; use {_names(valid)}"
        )
    if cfg.strategy != "fedavg":
        raise ConfigError(
            f"secagg = true computes FedAvg's weighted mean; strategy '{cfg.strategy}' needs "
            "individual updates, which secure aggregation hides; use strategy 'fedavg'"
        )
    if cfg.privacy == "local-dp" or (
        cfg.privacy == "central-dp" and cfg.cdp_clipping != "fixed-client"
    ):
        raise ConfigError(
            "secagg = true composes with privacy 'dp-sgd' or 'central-dp' with cdp-clipping "
            "'fixed-client' (clipped on the client, noised on the sum); not with "
            f"privacy '{cfg.privacy}'"
            + (f" / cdp-clipping '{cfg.cdp_clipping}'" if cfg.privacy == "central-dp" else "")
        )
    if sampled_per_round(cfg, cfg.num_clients) < 2:
        raise ConfigError("secagg = true needs at least 2 clients per round")
    if cfg.compression != "none":
        raise ConfigError(
            f"secagg = true quantises updates itself; compression '{cfg.compression}' cannot "
            "be combined with it (use compression = 'none')"
        )
