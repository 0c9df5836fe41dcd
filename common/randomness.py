"""Randomness that nobody may predict from the run config: the noise of differential privacy.

Everything else in fedmtl is a function of `seed` (data, partition, initialisation, batch
order), so that a run can be replayed. DP noise must not be: the server chooses the seed and
learns the client ids, so noise drawn from a seeded stream could be regenerated and
subtracted, and the ε guarantee would be void. DP code therefore draws from generators seeded
with fresh entropy from the operating system, never from `seed`.

`torch.Generator` and NumPy's global RNG are not cryptographic generators; seeded with 64 bits
of OS entropy per client and round, their streams cannot be guessed from anything a party in
the threat model knows (docs/SECURITY.md says what this does and does not cover).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch


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
    saved = np.random.get_state()
    np.random.seed(np.frombuffer(os.urandom(16), dtype=np.uint32))
    try:
        yield
    finally:
        np.random.set_state(saved)
