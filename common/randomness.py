"""Randomness that nobody may predict from the run config: the noise of differential privacy.

Everything else in fedmtl is a function of `seed` (data, partition, initialisation, batch
order), so that a run can be replayed. DP noise must not be: the server chooses the seed and
learns the client ids, so noise drawn from a seeded stream could be regenerated and
subtracted, and the ε guarantee would be void. DP code therefore draws from generators seeded
with fresh entropy from the operating system, never from `seed`.

`torch.Generator` and NumPy's global RNG are not cryptographic generators; seeded with 63
(torch) or 128 (NumPy) bits of OS entropy per client and round, their streams cannot be
guessed from anything a party in the threat model knows (docs/SECURITY.md says what this
does and does not cover).

The run-config switch `dp-insecure-seeded-noise` (tests, exact replays) draws the same noise
from the run seed instead; every round then warns that no ε guarantee holds.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from logging import WARNING
from typing import TYPE_CHECKING

import numpy as np
import torch
from flwr.common.logger import log

if TYPE_CHECKING:
    from common.config import RunConfig

SEEDED_NOISE_WARNING = (
    "dp-insecure-seeded-noise = true: DP noise and sampling are drawn from the run seed, so "
    "the server can regenerate and subtract the noise and NO ε guarantee holds (use it for "
    "tests and exact replays only)"
)


def warn_seeded_noise(where: str) -> None:
    """Log `SEEDED_NOISE_WARNING` for `where` (e.g. "client 2, round 3")."""
    log(WARNING, "fedmtl | %s: %s", where, SEEDED_NOISE_WARNING)


def os_entropy_seed() -> int:
    """63 bits from the operating system's entropy source (a valid torch seed)."""
    return int.from_bytes(os.urandom(8), "little") >> 1


def fresh_generator(device: str | torch.device = "cpu") -> torch.Generator:
    """A torch generator seeded from OS entropy."""
    generator = torch.Generator(device=device)
    generator.manual_seed(os_entropy_seed())
    return generator


@contextmanager
def unpredictable_numpy() -> Iterator[None]:
    """Run a block whose draws from NumPy's *global* RNG must be unpredictable.

    Flower's DP code (server-side noise, adaptive clipping's count query, `LocalDpMod`) draws
    from `np.random`, which any code in the process may have seeded. The global state is
    reseeded from OS entropy for the block and restored afterwards, so seeded code around it
    stays reproducible.
    """
    with _global_numpy_seeded(np.frombuffer(os.urandom(16), dtype=np.uint32)):
        yield


def dp_noise_seed(cfg: RunConfig, client_id: int, server_round: int) -> int | None:
    """None (noise from OS entropy) unless the run asked for insecure seeded noise; then a
    seed that everyone who knows the run config, the client id and the round can compute."""
    if not cfg.dp_insecure_seeded_noise:
        return None
    return cfg.seed * 7919 + client_id * 31 + server_round


def noise_generator(seed: int | None, device: str | torch.device = "cpu") -> torch.Generator:
    """The generator DP noise is drawn from, on the device the noise is added on (Opacus
    draws with it there): fresh OS entropy, or `seed` (see `dp_noise_seed`)."""
    if seed is None:
        return fresh_generator(device)
    return torch.Generator(device=device).manual_seed(seed)


@contextmanager
def noise_numpy(seed: int | None) -> Iterator[None]:
    """`unpredictable_numpy`, or NumPy's global RNG seeded with `seed` (see `dp_noise_seed`)."""
    if seed is None:
        with unpredictable_numpy():
            yield
    else:
        with _global_numpy_seeded(seed % 2**32):
            yield


@contextmanager
def _global_numpy_seeded(seed: int | np.ndarray) -> Iterator[None]:
    saved = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(saved)
