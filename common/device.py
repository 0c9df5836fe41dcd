"""Where training runs: the run-config keys `device` and `amp`, resolved on the node that
trains (the server's machine may have no GPU while a client's has one, and the other way
round). Torch only: the GPU benchmark imports this without Flower.

Everything that leaves a model (records, the private state on disk) is moved to the CPU
first, so state written on a GPU node loads on a CPU node; loading copies into the model's
parameters wherever they live, so it lands on the configured device.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager, nullcontext

import torch

from common.config import ConfigError
from common.config_checks import DEVICE_PATTERN

# Which device types each `amp` setting runs on. fp16 needs CUDA's GradScaler to keep small
# gradients from flushing to zero; bf16 has fp32's exponent range and needs no scaler, and
# PyTorch autocasts to it on CPU too (slow without AMX, but correct: CI exercises it there).
AMP_DEVICE_TYPES: dict[str, tuple[str, ...]] = {"bf16": ("cuda", "cpu"), "fp16": ("cuda",)}
AMP_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}


def available_devices() -> list[str]:
    """The devices this process can train on, in `device`'s spelling."""
    found = ["cpu"]
    if torch.cuda.is_available():
        found += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        found.append("mps")
    return found


def resolve_device(name: str) -> torch.device:
    """The torch device for run-config `device` on this node: `auto` is CUDA when available,
    else the CPU; a device this node lacks is a ConfigError that names what it has."""
    if not DEVICE_PATTERN.fullmatch(name):
        raise ConfigError(
            f"run config 'device' = '{name}' is not valid; valid: 'auto', 'cpu', 'cuda', "
            "'cuda:N', 'mps'"
        )
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in available_devices():
        reason = (
            "CUDA is not available"
            if name.startswith("cuda") and not torch.cuda.is_available()
            else "MPS is not available"
            if name == "mps"
            else f"this node has {torch.cuda.device_count()} CUDA device(s)"
        )
        raise ConfigError(
            f"run config 'device' = '{name}' but {reason} on this node (torch "
            f"{torch.__version__}); available here: {available_devices()} (or 'auto')"
        )
    return torch.device(name)


def check_amp(amp: str, device: torch.device) -> None:
    """Refuse mixed precision where the device cannot run it (fp16 off CUDA)."""
    if amp != "none" and device.type not in AMP_DEVICE_TYPES[amp]:
        raise ConfigError(
            f"run config 'amp' = '{amp}' does not run on device '{device}' (it runs on "
            f"{', '.join(AMP_DEVICE_TYPES[amp])}); use amp = 'none'"
            + (" or 'bf16'" if device.type == "cpu" else "")
        )


def autocast(amp: str, device: torch.device) -> AbstractContextManager:
    """The forward pass's autocast context for `amp` on `device` (a no-op for 'none')."""
    if amp == "none":
        return nullcontext()
    check_amp(amp, device)
    return torch.autocast(device.type, dtype=AMP_DTYPES[amp])


def grad_scaler(amp: str, device: torch.device) -> torch.amp.GradScaler | None:
    """fp16's loss scaler (None otherwise): fp16 gradients below ~6e-8 flush to zero."""
    return torch.amp.GradScaler(device.type) if amp == "fp16" else None


def default_gpus_per_client(device: str, num_clients: int, cpus_per_client: float = 1) -> float:
    """The fraction of a GPU each simulated client asks Ray for (`client-resources-num-gpus`):
    0 unless `device` resolves to CUDA here; else the GPUs shared by the clients that the CPUs
    let run at once, so the GPU never limits concurrency below what the CPUs allow."""
    try:
        if resolve_device(device).type != "cuda":
            return 0.0
    except ConfigError:
        return 0.0
    concurrent = max(1, min(num_clients, int((os.cpu_count() or 1) // max(cpus_per_client, 1))))
    return min(1.0, torch.cuda.device_count() / concurrent)
