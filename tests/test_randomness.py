"""DP noise sources: unpredictable from the seed, and invisible to the seeded code around them."""

from __future__ import annotations

import numpy as np
import torch

from common.randomness import fresh_generator, unpredictable_numpy


def test_numpy_draws_inside_the_block_do_not_follow_the_global_seed() -> None:
    draws = []
    for _ in range(2):
        np.random.seed(0)  # whoever knows the seed would replay this stream
        with unpredictable_numpy():
            draws.append(np.random.normal(size=16))
    assert not np.allclose(draws[0], draws[1])
    np.random.seed(0)
    assert not np.allclose(draws[0], np.random.normal(size=16))


def test_the_global_numpy_stream_resumes_where_it_was() -> None:
    np.random.seed(7)
    with unpredictable_numpy():
        np.random.normal(size=5)
    after = np.random.normal(size=4)
    np.random.seed(7)
    assert np.array_equal(after, np.random.normal(size=4))


def test_fresh_generators_differ_and_ignore_the_global_torch_seed() -> None:
    torch.manual_seed(0)
    a = torch.randn(16, generator=fresh_generator())
    torch.manual_seed(0)
    b = torch.randn(16, generator=fresh_generator())
    assert not torch.allclose(a, b)
