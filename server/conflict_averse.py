"""Conflict-averse server aggregation of the shared encoder, as a Flower strategy wrapper.

Clients with different task sets pull the shared encoder in different directions: their
updates Δ_i = θ_i − θ can conflict (negative inner products), and their plain mean can undo
one client's progress to serve another's. The wrapper rewrites each accepted reply's
encoder to θ + Δ'_i and lets the wrapped strategy (FedAvg, FedProx or FedAvgM: a weighted
mean, then for FedAvgM server momentum) do the rest, so the rules compose with those
strategies exactly:

- `pcgrad` (Yu et al. 2020, applied to client updates): Δ'_i is Δ_i with its component
  along every other client's update Δ_j removed where the two conflict (⟨Δ_i, Δ_j⟩ < 0),
  the other clients taken in a seeded random order per round.
- `hca` (FedHCA², Lu et al. 2024, its encoder aggregation): the conflict-averse direction
  d of CAGrad over the client updates (the step within c·‖ḡ‖ of the mean update ḡ that
  most improves the worst-served client), added with a learned weight per client:
  Δ'_i = Δ_i + α_i·d, so the new encoder is θ + ḡ + Σ_i w_i α_i d. FedHCA² personalises
  the encoder per client (θ_i + Δ̄_group + α_i d); with fedmtl's one shared encoder the
  per-client terms meet in the weighted mean, and its group means reduce to the mean
  update. Each α_i starts at `hca-alpha-init` and is learned as FedHCA² learns it: the
  client's next update is taken as the negative gradient at the point the step led to, so
  α_i grows when the client keeps going where d pointed (SGD, momentum 0.9, weight decay
  1e-4, kept in [0, 1]).

Only floating-point arrays are rewritten, in float64, and cast back. The per-client weights,
their momentum and the last direction are the strategy's state: checkpoints keep them, so a
resumed run continues with the weights it had.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from scipy.optimize import minimize

from common.config import RunConfig
from server.validation import client_of

HYPER_MOMENTUM = 0.9  # FedHCA²'s optimiser for the aggregation weights
HYPER_WEIGHT_DECAY = 1e-4


def pcgrad_updates(deltas: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each row of `deltas` (one client update per row) with its conflicts with the other
    rows projected out, the others taken in a random order. Projections only shorten a row."""
    out = deltas.copy()
    norms2 = np.einsum("ij,ij->i", deltas, deltas)
    for i in range(len(deltas)):
        others = [j for j in range(len(deltas)) if j != i]
        for j in rng.permutation(others):
            dot = float(out[i] @ deltas[j])
            if dot < 0 and norms2[j] > 0:
                out[i] -= dot / norms2[j] * deltas[j]
    return out


def conflict_averse_direction(deltas: np.ndarray, weights: np.ndarray, c: float) -> np.ndarray:
    """CAGrad's direction over client updates (rows of `deltas`, mean weights `weights`):
    d = ḡ + λ·g_w, with g_w = Σ_i w*_i Δ_i for the simplex weights w* that minimise
    g_wᵀḡ + c‖ḡ‖·‖g_w‖, and λ = c‖ḡ‖ / ‖g_w‖ — the step within c‖ḡ‖ of the mean update ḡ
    that maximises the smallest ⟨Δ_i, d⟩; rescaled by 1/(1 + c²) as FedHCA² does."""
    gram = deltas @ deltas.T
    g0_norm = float(np.sqrt(max(weights @ gram @ weights, 0.0) + 1e-8))
    radius = c * g0_norm + 1e-8
    gram_b = gram @ weights
    n = len(weights)

    def objective(w: np.ndarray) -> float:
        return float(w @ gram_b + radius * np.sqrt(max(w @ gram @ w, 0.0) + 1e-8))

    found = minimize(
        objective,
        np.full(n, 1.0 / n),
        bounds=[(0.0, 1.0)] * n,
        constraints=({"type": "eq", "fun": lambda w: np.sum(w) - 1.0},),
        method="SLSQP",
    )
    w = np.clip(found.x, 0.0, None)
    w = w / w.sum() if w.sum() > 0 else np.full(n, 1.0 / n)
    g_w = w @ deltas
    lam = radius / (float(np.linalg.norm(g_w)) + 1e-8)
    return (weights @ deltas + lam * g_w) / (1.0 + c**2)


class ConflictAverseAggregation(Strategy):
    """Wraps FedAvg / FedProx / FedAvgM: each accepted reply's encoder update is rewritten by
    `rule` ('pcgrad' or 'hca') before the wrapped strategy averages them."""

    def __init__(self, inner: Strategy, cfg: RunConfig) -> None:
        self.inner = inner
        self.rule = cfg.aggregation
        self.c, self.alpha_init, self.lr = cfg.hca_c, cfg.hca_alpha_init, cfg.hca_lr
        self.seed = cfg.seed
        # hca's state (checkpointed: dicts of arrays): per client its weight α and the
        # momentum of its optimiser, and the last direction d sent out.
        self.alpha: dict[str, np.ndarray] = {}
        self.velocity: dict[str, np.ndarray] = {}
        self.direction: dict[str, np.ndarray] = {}
        self._sent: tuple[ArrayRecord, ...] = ()  # this round's global arrays (not state)

    def summary(self) -> None:
        self.inner.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._sent = (arrays,)
        return self.inner.configure_train(server_round, arrays, config, grid)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return self.inner.aggregate_evaluate(server_round, replies)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        good = [m for m in replies if not m.has_error()]
        if self._sent and len(good) > 1:
            self._rewrite(server_round, good, self._sent[0])
        return self.inner.aggregate_train(server_round, replies)

    def _rewrite(self, server_round: int, good: list[Message], sent: ArrayRecord) -> None:
        keys = [k for k, a in sent.items() if np.issubdtype(np.dtype(a.dtype), np.floating)]
        base = _flat(sent, keys)
        deltas = np.stack([_flat(m.content["arrays"], keys) - base for m in good])
        weight_key = getattr(self.inner, "weighted_by_key", "num-examples")
        counts = np.array([float(m.content["metrics"][weight_key]) for m in good])
        weights = counts / counts.sum()
        if self.rule == "pcgrad":
            rng = np.random.default_rng([self.seed, server_round])
            new = pcgrad_updates(deltas, rng)
        else:
            clients = [client_of(m) for m in good]
            self._learn_alphas(clients, deltas)
            d = conflict_averse_direction(deltas, weights, self.c)
            self.direction = {"d": d}
            alphas = np.array([float(self.alpha[c]) for c in clients])
            new = deltas + alphas[:, None] * d[None, :]
        for msg, row in zip(good, new, strict=True):
            _write(msg, keys, base + row)

    def _learn_alphas(self, clients: list[str], deltas: np.ndarray) -> None:
        """One SGD step per client that reports again, on ⟨d_prev, −Δ_i⟩ (its update taken
        as the negative gradient where the last step led); new clients start at α_init."""
        d_prev = self.direction.get("d")
        for client, delta in zip(clients, deltas, strict=True):
            if client not in self.alpha:
                self.alpha[client] = np.asarray(self.alpha_init)
                self.velocity[client] = np.asarray(0.0)
                continue
            if d_prev is None or d_prev.shape != delta.shape:
                continue
            alpha = float(self.alpha[client])
            grad = -float(d_prev @ delta) + HYPER_WEIGHT_DECAY * alpha
            v = HYPER_MOMENTUM * float(self.velocity[client]) + grad
            self.velocity[client] = np.asarray(v)
            self.alpha[client] = np.asarray(min(max(alpha - self.lr * v, 0.0), 1.0))


def _flat(arrays: ArrayRecord, keys: list[str]) -> np.ndarray:
    """`keys` of `arrays`, flattened in that order, in float64."""
    return np.concatenate([arrays[k].numpy().ravel().astype(np.float64) for k in keys])


def _write(msg: Message, keys: list[str], flat: np.ndarray) -> None:
    """Put `flat` back into the reply's encoder arrays, each in its own shape and dtype."""
    arrays = msg.content["arrays"]
    out = ArrayRecord(dict(arrays.items()))
    start = 0
    for k in keys:
        old = arrays[k].numpy()
        part = flat[start : start + old.size].reshape(old.shape).astype(old.dtype)
        out[k] = Array(np.ascontiguousarray(part))
        start += old.size
    msg.content["arrays"] = out


AGGREGATION_RULES: dict[str, Callable[[Strategy, RunConfig], Strategy] | None] = {
    "mean": None,  # the strategy's own step
    "pcgrad": ConflictAverseAggregation,
    "hca": ConflictAverseAggregation,
}


def wrap_aggregation(strategy: Strategy, cfg: RunConfig) -> Strategy:
    """`strategy`, wrapped by the configured aggregation rule (unchanged for 'mean')."""
    wrapper = AGGREGATION_RULES[cfg.aggregation]
    return strategy if wrapper is None else wrapper(strategy, cfg)
