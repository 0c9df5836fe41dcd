"""Property-based tests (hypothesis): run-config parsing, partitioning, record conversions and
the checkpoint's strategy state, over generated inputs rather than a few hand-picked ones.

Example counts stay small: a partitioning builds a dataset and a partitioner each time, and
the suite shares a 2-core machine.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from common.config import CHOICES, ConfigError, RunConfig, parse_run_config
from common.federation import cached_pool, partition_indices
from common.records import arrays_from_model, load_arrays
from server.checkpoint import (
    load_checkpoint,
    restore_strategy_state,
    save_checkpoint,
    strategy_state,
)

FIELDS = {f.name.replace("_", "-"): f for f in dataclasses.fields(RunConfig)}
# Keys whose valid values depend on other keys (checked across keys by parse_run_config);
# they get their own constrained generators or stay out of the many-keys property.
COUPLED = {
    "algorithm",
    "strategy",
    "privacy",
    "secagg",
    "weighting",
    "static-weights",
    "cdp-clipping",
    "compression",
    "num-clients",
    "min-nodes",
    "fraction-train",
    "shared-layers",
    "num-blocks",
    "num-malicious",
    "krum-select",
}
FAST = settings(max_examples=40, deadline=None)


def valid_value(key: str) -> st.SearchStrategy[Any]:
    """Any value `key` accepts on its own (other keys at their defaults)."""
    f = FIELDS[key]
    kind, meta = type(f.default), f.metadata
    low, high, low_open = meta.get("low"), meta.get("high"), meta.get("low_open")
    if key == "weighting":
        return st.sampled_from([w for w in CHOICES[key] if w != "static"])
    if key == "num-clients":  # min-nodes defaults to 2
        return st.integers(2, 10_000)
    if key == "min-nodes":  # at most the 6 default clients
        return st.integers(1, 6)
    if key == "shared-layers":  # at most num-blocks (2)
        return st.integers(0, 2)
    if key == "num-malicious":  # strategy fedavg ignores it
        return st.integers(0, 10_000)
    if key == "device":  # a device name, or cuda:N
        named = st.sampled_from(["auto", "cpu", "cuda", "mps"])
        return st.one_of(named, st.integers(0, 64).map(lambda n: f"cuda:{n}"))
    if key in CHOICES:
        return st.sampled_from(CHOICES[key])
    if kind is bool:
        return st.booleans()
    if kind is str:
        return st.text(max_size=20)
    if kind is int:
        lo = int(low) + (1 if low_open else 0) if low is not None else -(10**6)
        return st.integers(lo, int(high) if high is not None else 10**9)
    return st.floats(
        min_value=low if low is not None else -1e6,
        max_value=high if high is not None else 1e9,
        exclude_min=bool(low_open),
        allow_nan=False,
        allow_infinity=False,
    )


@st.composite
def one_valid_key(draw: st.DrawFn) -> tuple[str, Any]:
    key = draw(st.sampled_from(sorted(FIELDS)))
    return key, draw(valid_value(key))


@FAST
@given(one_valid_key())
def test_any_valid_value_parses_and_round_trips(item: tuple[str, Any]) -> None:
    key, value = item
    cfg = parse_run_config({key: value})
    assert cfg.to_dict()[key] == value
    assert parse_run_config(cfg.to_dict()) == cfg


@FAST
@given(
    st.dictionaries(
        st.sampled_from(sorted(set(FIELDS) - COUPLED)), st.none(), min_size=2, max_size=12
    ).flatmap(lambda d: st.fixed_dictionaries({k: valid_value(k) for k in d}))
)
def test_independent_keys_together_parse_and_round_trip(raw: dict[str, Any]) -> None:
    cfg = parse_run_config(raw)
    assert {k: cfg.to_dict()[k] for k in raw} == raw
    again = parse_run_config(cfg.to_dict())
    assert again == cfg and again.digest() == cfg.digest()


@st.composite
def one_invalid_key(draw: st.DrawFn) -> tuple[str, Any]:
    """A key and a value of the wrong type, out of range, or not among the valid names."""
    key = draw(st.sampled_from(sorted(FIELDS)))
    f = FIELDS[key]
    kind, meta = type(f.default), f.metadata
    low, high = meta.get("low"), meta.get("high")
    options = []
    if kind is bool:
        options.append(st.one_of(st.integers(), st.text(max_size=5)))
    elif kind is str:
        options.append(st.one_of(st.integers(), st.floats(allow_nan=False), st.booleans()))
        if key in CHOICES:
            options.append(st.text(max_size=12).filter(lambda s: s not in CHOICES[key]))
    else:
        options.append(st.one_of(st.text(max_size=5), st.booleans(), st.none()))
        if kind is int:
            options.append(
                st.floats(allow_nan=False, allow_infinity=False).filter(
                    lambda x: not x.is_integer()
                )
            )
        below = low - 1 if kind is int else low - 1e-3
        if low is not None and meta.get("low_open"):
            options.append(st.just(kind(low)))
        if low is not None:
            options.append(st.just(kind(below)))
        if high is not None:
            options.append(st.just(kind(high + 1) if kind is int else high + 1e-3))
    return key, draw(st.one_of(*options))


@FAST
@given(one_invalid_key())
def test_any_invalid_value_raises_config_error_naming_the_key(item: tuple[str, Any]) -> None:
    key, value = item
    with pytest.raises(ConfigError) as err:
        parse_run_config({key: value})
    assert f"'{key}'" in str(err.value)


@FAST
@given(st.text(min_size=1, max_size=20).filter(lambda k: k not in FIELDS), st.integers())
def test_unknown_key_is_named(key: str, value: int) -> None:
    with pytest.raises(ConfigError, match="unknown run-config keys") as err:
        parse_run_config({key: value})
    assert repr(key) in str(err.value)


# ----------------------------------------------------------------------------- partitioning


def _fresh_partition(cfg: RunConfig, n: int) -> tuple[np.ndarray, ...]:
    """Recompute, bypassing the per-process caches, to test determinism for real."""
    cached_pool.cache_clear()
    partition_indices.cache_clear()
    return partition_indices(cfg, n)


PARTITION = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PARTITION
@given(
    partitioner=st.sampled_from(["iid", "dirichlet"]),
    samples=st.integers(20, 40),
    clients=st.integers(2, 5),
    seed=st.integers(0, 10_000),
    alpha=st.sampled_from([0.3, 0.5, 1.0, 10.0]),
)
def test_every_sample_is_assigned_exactly_once_and_deterministically(
    partitioner: str, samples: int, clients: int, seed: int, alpha: float
) -> None:
    cfg = parse_run_config(
        {
            "partitioner": partitioner,
            "samples-per-client": samples,
            "num-clients": clients,
            "seed": seed,
            "dirichlet-alpha": alpha,
        }
    )
    parts = _fresh_partition(cfg, clients)
    assert len(parts) == clients
    assigned = np.concatenate(parts)
    assert np.array_equal(np.sort(assigned), np.arange(len(cached_pool(cfg, clients))))
    again = _fresh_partition(cfg, clients)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))


@PARTITION
@given(
    samples=st.integers(10, 40),
    clients=st.integers(2, 5),
    shards=st.integers(1, 3),
    seed=st.integers(0, 10_000),
)
def test_shards_assign_no_sample_twice_and_drop_only_the_remainder(
    samples: int, clients: int, shards: int, seed: int
) -> None:
    """Flower's ShardPartitioner cuts N examples into shards of ⌊N / (clients·shards)⌋ and
    leaves the remainder unassigned: documented here, not hidden."""
    cfg = parse_run_config(
        {
            "partitioner": "shards",
            "samples-per-client": samples,
            "num-clients": clients,
            "shards-per-client": shards,
            "seed": seed,
        }
    )
    parts = _fresh_partition(cfg, clients)
    assigned = np.concatenate(parts)
    total = len(cached_pool(cfg, clients))
    assert len(np.unique(assigned)) == len(assigned)
    assert set(assigned.tolist()) <= set(range(total))
    assert total - len(assigned) < clients * shards
    again = _fresh_partition(cfg, clients)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))


def test_natural_partition_is_the_sites() -> None:
    cfg = parse_run_config({"dataset": "penguins", "partitioner": "natural", "num-clients": 3})
    parts = _fresh_partition(cfg, 3)
    pool = cached_pool(cfg, 3)
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(len(pool)))
    for part in parts:
        assert len(np.unique(pool.natural_group[part])) == 1


# ------------------------------------------------------------------------- record conversions


@st.composite
def models(draw: st.DrawFn) -> torch.nn.Module:
    dims = draw(st.lists(st.integers(1, 6), min_size=2, max_size=4))
    layers: list[torch.nn.Module] = []
    for a, b in itertools.pairwise(dims):
        layers += [torch.nn.Linear(a, b), torch.nn.LayerNorm(b)]
    return torch.nn.Sequential(*layers)


def _randomised(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.state_dict().values():
            p.copy_(torch.randn(p.shape, generator=g))
    return model


@FAST
@given(models(), st.data())
def test_arrays_from_model_and_load_arrays_round_trip(
    model: torch.nn.Module, data: st.DataObject
) -> None:
    import copy

    source = _randomised(copy.deepcopy(model), 1)
    target = _randomised(copy.deepcopy(model), 2)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    all_keys = list(source.state_dict())
    keys = data.draw(st.permutations(all_keys).flatmap(lambda p: st.just(p[: len(p) // 2 + 1])))
    record = arrays_from_model(source, keys)
    assert list(record.keys()) == keys  # exactly these keys, in this order
    load_arrays(target, record)
    for key, value in target.state_dict().items():
        expected = source.state_dict()[key] if key in keys else before[key]
        assert torch.equal(value, expected), key


@FAST
@given(models())
def test_load_arrays_names_unknown_keys_and_wrong_shapes(model: torch.nn.Module) -> None:
    key, value = next(iter(model.state_dict().items()))
    with pytest.raises(ValueError, match=r"keys \['nope'\] do not exist"):
        load_arrays(model, ArrayRecord({"nope": Array(np.zeros(1, np.float32))}), what="x")
    wrong = np.zeros((*value.shape, 2), np.float32)
    with pytest.raises(ValueError, match=f"'{key}' has shape"):
        load_arrays(model, ArrayRecord({key: Array(wrong)}))


# ----------------------------------------------------------------- checkpoint strategy state

KEYS = st.text(
    alphabet=st.characters(whitelist_categories=("Ll", "Lu", "Nd"), whitelist_characters="._-"),
    min_size=1,
    max_size=12,
)
SHAPES = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)
ARRAYS = st.one_of(
    hnp.arrays(np.float32, SHAPES, elements=st.floats(width=32, allow_nan=False)),
    hnp.arrays(np.float64, SHAPES, elements=st.floats(allow_nan=False)),
    hnp.arrays(np.int64, SHAPES),
)


class FakeStrategy:
    """Attributes of the kinds `strategy_state` keeps, and a wrapped inner strategy."""

    def __init__(self, inner: FakeStrategy | None = None) -> None:
        self.current_arrays: ArrayRecord | None = None
        self.m_t: dict[str, np.ndarray] | None = None
        self.history: list[np.ndarray] = []
        self.clipping_norm: float = 1.0
        self.name = "fake"  # a string: not state, left alone
        if inner is not None:
            self.inner = inner

    def aggregate_train(self) -> None:  # what marks a wrapped strategy
        raise NotImplementedError


@st.composite
def strategies_with_state(draw: st.DrawFn) -> FakeStrategy:
    def fill(s: FakeStrategy) -> FakeStrategy:
        s.current_arrays = ArrayRecord(
            {k: Array(draw(ARRAYS)) for k in draw(st.lists(KEYS, max_size=3, unique=True))}
        )
        s.m_t = {k: draw(ARRAYS) for k in draw(st.lists(KEYS, min_size=1, max_size=3, unique=True))}
        s.history = draw(st.lists(ARRAYS, min_size=1, max_size=3))
        s.clipping_norm = draw(st.floats(allow_nan=False, allow_infinity=False))
        return s

    inner = fill(FakeStrategy()) if draw(st.booleans()) else None
    return fill(FakeStrategy(inner))


def assert_same_state(a: FakeStrategy, b: FakeStrategy) -> None:
    assert list(a.current_arrays.keys()) == list(b.current_arrays.keys())
    for k in a.current_arrays:
        x, y = a.current_arrays[k].numpy(), b.current_arrays[k].numpy()
        assert x.dtype == y.dtype and np.array_equal(x, y), k
    assert a.m_t.keys() == b.m_t.keys()
    assert all(np.array_equal(a.m_t[k], b.m_t[k]) for k in a.m_t)
    assert len(a.history) == len(b.history)
    assert all(np.array_equal(x, y) for x, y in zip(a.history, b.history, strict=True))
    assert a.clipping_norm == b.clipping_norm or (
        math.isnan(a.clipping_norm) and math.isnan(b.clipping_norm)
    )
    assert hasattr(a, "inner") == hasattr(b, "inner")
    if hasattr(a, "inner"):
        assert_same_state(a.inner, b.inner)


@FAST
@given(strategies_with_state())
def test_strategy_state_round_trips_in_memory(strategy: FakeStrategy) -> None:
    fresh = FakeStrategy(FakeStrategy() if hasattr(strategy, "inner") else None)
    restore_strategy_state(fresh, strategy_state(strategy))
    assert_same_state(strategy, fresh)
    assert fresh.name == "fake"


@settings(max_examples=20, deadline=None)
@given(strategies_with_state(), st.integers(1, 10_000))
def test_strategy_state_round_trips_through_a_checkpoint_file(
    strategy: FakeStrategy, rnd: int
) -> None:
    shared = ArrayRecord({"encoder.w": Array(np.arange(6, dtype=np.float32).reshape(2, 3))})
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(Path(tmp), rnd, "digest", shared, strategy)
        ckpt = load_checkpoint(Path(tmp), "digest")
    assert ckpt is not None and ckpt.round == rnd
    assert np.array_equal(ckpt.arrays["encoder.w"].numpy(), shared["encoder.w"].numpy())
    fresh = FakeStrategy(FakeStrategy() if hasattr(strategy, "inner") else None)
    restore_strategy_state(fresh, ckpt.strategy_state)
    assert_same_state(strategy, fresh)


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],  # monkeypatch: constants only
)
@given(
    st.sampled_from(["fedadam", "fedyogi", "fedadagrad", "fedavgm", "fedavg"]),
    st.integers(0, 10_000),
    st.integers(1, 2),
)
def test_real_strategy_resumes_from_a_checkpoint_as_if_never_stopped(
    monkeypatch: pytest.MonkeyPatch, name: str, seed: int, rounds_before: int
) -> None:
    """Flower's own strategies build their state (FedOpt's m_t/v_t, FedAvgM's momentum) in
    real `aggregate_train` calls; after a checkpoint and a restore into a fresh strategy,
    the next round aggregates to exactly what the uninterrupted strategy computes."""
    from server.checkpoint import restore_strategy
    from server.strategies import build_strategy
    from tests.helpers import act_as_serverapp, record, strategy_round

    act_as_serverapp(monkeypatch)
    cfg = parse_run_config({"strategy": name, "num-clients": 4})
    rng = np.random.default_rng(seed)
    weights = [int(w) for w in rng.integers(1, 50, size=4)]

    def updates(x: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
        return [{k: v + rng.normal(size=v.shape) for k, v in x.items()} for _ in weights]

    strategy = build_strategy(cfg)
    x = {"encoder.w": rng.normal(size=(2, 3)), "encoder.b": rng.normal(size=3)}
    for rnd in range(1, rounds_before + 1):
        x = strategy_round(strategy, rnd, x, updates(x), weights)
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(Path(tmp), rounds_before, "digest", record(x), strategy)
        ckpt = load_checkpoint(Path(tmp), "digest")
    assert ckpt is not None and ckpt.round == rounds_before
    resumed_from = {k: v.numpy() for k, v in ckpt.arrays.items()}
    fresh = build_strategy(cfg)
    restore_strategy(fresh, ckpt)

    nxt, replies = rounds_before + 1, updates(x)
    want = strategy_round(strategy, nxt, x, replies, weights)
    got = strategy_round(fresh, nxt, resumed_from, replies, weights)
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=f"{name}: {k}")
    if name != "fedavg":  # the state matters: without it the next round differs
        blank = strategy_round(build_strategy(cfg), nxt, resumed_from, replies, weights)
        assert any(not np.allclose(blank[k], want[k]) for k in want)
