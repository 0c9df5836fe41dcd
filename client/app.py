"""The Flower ClientApp.

train: load the shared arrays from the message, restore the private part (heads, gates,
private encoder blocks, Ditto's personal model) from the client's state, train locally, store
the private part back, reply with exactly the shared keys received (plus, for algorithms that
federate heads, this client's own heads). evaluate: the same restore, then per-task metrics
on validation and test. A training message that names an `evaluate-round` gets both: the
client first evaluates what it received (the previous round's model, exactly what that
round's evaluation message would have carried), then trains, and replies once.

Imports are what the handlers use: scikit-learn, flwr-datasets, SciPy and Opacus are
imported where they are needed (building a dataset that is not cached, CAGrad / Nash-MTL,
DP-SGD), since a deployment starts a fresh process for every message.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import os
import time
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import flwr.compat.common.recorddict_compat as compat
import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.client.mod import fixedclipping_mod as legacy_fixedclipping_mod
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import LocalDpMod, adaptiveclipping_mod, fixedclipping_mod
from flwr.clientapp.typing import Mod
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays

from client.affinity import measure_affinity
from client.byzantine import (
    attack_heads,
    attack_of,
    attack_update,
    flip_labels,
    forge_evaluation,
    is_attacker,
)
from client.state import PrivateStore
from client.train import (
    build_weighting,
    evaluate,
    local_round,
    round_generator,
    train_heads,
)
from client.warm import fresh_model, placement
from common.algorithms import Algorithm, get_algorithm
from common.compression import RECORD as COMPRESSION
from common.compression import compress
from common.config import ConfigError, RunConfig, parse_run_config
from common.datacache import cache_dir_for, client_data
from common.datasets import dataset_tasks
from common.device import check_amp, resolve_device
from common.federation import ClientData
from common.models import MultiTaskModel
from common.randomness import dp_noise_seed, noise_numpy, warn_seeded_noise
from common.records import (
    EVALUATE_ROUND,
    EVALUATION_METRICS,
    EVALUATION_TASKS,
    TASK_ARRAYS,
    TIMING,
    arrays_from_model,
    load_arrays,
    model_shared_keys,
    model_task_keys,
)
from common.resume import TRAINED_CLIENTS, decode_clients
from common.weighting import Weighting

app = ClientApp()
PERSONAL = "personal."  # prefix of Ditto's personal model in the private state
# Node-config keys that name a node's own data, taking precedence over the run config's.
NODE_PATHS: tuple[str, ...] = ("data-file", "schema-file", "hf-dataset")


def process_start_time() -> float | None:
    """When this process started (Unix seconds, to 10 ms), from /proc; None without /proc.
    A deployment starts a process per message: start -> handler ready is its fixed cost."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: starttime, in ticks
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return time.time() - (uptime - started)


PROCESS_START = process_start_time()


@lru_cache(maxsize=8)
def _parse(items: tuple) -> RunConfig:
    return parse_run_config(dict(items))


class DivergedError(RuntimeError):
    """Local training produced non-finite weights; names the client, round and arrays."""


@dataclass
class ClientSession:
    """Everything one handler call works with."""

    cfg: RunConfig
    algorithm: Algorithm
    data: ClientData
    model: MultiTaskModel
    personal: MultiTaskModel | None
    weighting: Weighting
    store: PrivateStore
    shared: list[str]
    task_shared: list[str]
    meta: dict
    received: ArrayRecord

    def private_arrays(self) -> dict[str, np.ndarray]:
        """Everything that never leaves the client (task-shared heads are kept too, so a
        client evaluates with its own latest heads until the next round brings new ones)."""
        out = {
            k: v.detach().cpu().numpy()
            for k, v in self.model.state_dict().items()
            if k not in self.shared
        }
        if self.personal is not None:
            out |= {
                PERSONAL + k: v.detach().cpu().numpy()
                for k, v in self.personal.state_dict().items()
            }
        return out

    def private_digest(self) -> str:
        h = hashlib.sha256()
        for key, value in sorted(self.private_arrays().items()):
            h.update(key.encode())
            h.update(np.ascontiguousarray(value).tobytes())
        return h.hexdigest()[:16]

    def save(self, server_round: int) -> None:
        self.meta.update(round=server_round, weighting=self.weighting.state_dict())
        self.store.save(self.private_arrays(), self.meta)

    def keep_finite(self, server_round: int, before: dict[str, np.ndarray]) -> None:
        """Refuse a round whose local training went non-finite: saving it would lose the
        client for the rest of the run (every later update and evaluation is NaN too). The
        private state it started the round with is kept, the DP-SGD history still counts the
        round (its data were used), and the raised error becomes this round's failed reply."""
        bad = [
            k
            for k, v in self.model.state_dict().items()
            if v.is_floating_point() and not bool(torch.isfinite(v).all())
        ]
        if self.personal is not None:
            bad += [
                PERSONAL + k
                for k, v in self.personal.state_dict().items()
                if v.is_floating_point() and not bool(torch.isfinite(v).all())
            ]
        if not bad:
            return
        self.store.save(before, self.meta)
        raise DivergedError(
            f"client {self.data.client_id}: local training in round {server_round} produced "
            f"non-finite values in {len(bad)} arrays ({', '.join(bad[:3])}"
            f"{', …' if len(bad) > 3 else ''}); the update is withheld and the private state "
            f"of round {self.meta.get('round', 0)} is kept (lower 'lr' or set 'max-grad-norm', "
            "e.g. 1.0)"
        )

    def reply_arrays(self, server_round: int) -> dict[str, ArrayRecord | ConfigRecord]:
        # Exactly the shared keys received, in the order received: never a private key.
        sent = self.received
        arrays = arrays_from_model(self.model, list(sent.keys()))
        cfg, cid = self.cfg, self.data.client_id
        kind = attack_of(cid, cfg.attack) if is_attacker(cid, cfg.attack, cfg.attackers) else ""
        if kind:
            seed = cfg.seed * 10_007 + cid * 101 + server_round
            arrays = attack_update(kind, sent, arrays, cfg.attack_scale, seed)
        out = {"arrays": arrays}
        if self.task_shared:
            heads = arrays_from_model(self.model, self.task_shared)
            out["task-arrays"] = attack_heads(kind, heads, cfg.attack_scale) if kind else heads
        return out


def client_identity(context: Context) -> tuple[int, int, int]:
    """(client id, partition id, number of partitions) from the node config."""
    node = context.node_config
    for key in ("partition-id", "num-partitions"):
        if key not in node:
            raise ConfigError(
                f"node config lacks '{key}'; start the node with "
                "--node-config 'partition-id=<i> num-partitions=<n>'"
            )
    partition = _node_int(node, "partition-id", 0)
    count = _node_int(node, "num-partitions", 1)
    client = _node_int(node, "client-id", 0) if "client-id" in node else partition
    if partition >= count:
        raise ConfigError(
            f"node config 'partition-id' = {partition} is outside 0..{count - 1} "
            f"('num-partitions' = {count})"
        )
    return client, partition, count


def _node_int(node: Any, key: str, low: int) -> int:
    value = node[key]
    if isinstance(value, bool) or not (
        isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit())
    ):
        raise ConfigError(f"node config '{key}' must be an integer >= {low}, got {value!r}")
    if int(value) < low:
        raise ConfigError(f"node config '{key}' must be an integer >= {low}, got {value!r}")
    return int(value)


def open_session(
    context: Context,
    received: ArrayRecord | Sequence[np.ndarray],
    task_arrays: ArrayRecord | None = None,
    config: Mapping[str, Any] | None = None,
) -> ClientSession:
    """Build the client's model, restore its private state and load what the server sent.

    `received` is the shared record (keyed), or — in the legacy layout SecAgg+ uses — the
    shared arrays in this client's key order. `config` is the message's config: it names
    the clients that trained before, which must find their private state."""
    torch.set_num_threads(1)  # one thread per virtual client: the actors already fill the cores
    cfg = _parse(tuple(sorted(context.run_config.items())))
    node = context.node_config
    # A node's own data (deployment) overrides the run config's.
    paths = {k.replace("-", "_"): str(node[k]) for k in NODE_PATHS if k in node}
    if paths:
        cfg = dataclasses.replace(cfg, **paths)
    client_id, partition_id, num_partitions = client_identity(context)
    tasks = str(node.get("tasks", ""))  # a node's own task set (deployment), else the plan
    cache = cache_dir_for(node, cfg)
    data = client_data(cfg, partition_id, num_partitions, client_id, tasks, cache)
    if cfg.attack == "label-flip" and is_attacker(client_id, cfg.attack, cfg.attackers):
        data = flip_labels(data)
    algorithm = get_algorithm(cfg.algorithm)
    device = resolve_device(cfg.device)  # this node's device; state loads onto it below
    check_amp(cfg.amp, device)
    model = fresh_model(
        cfg, data.tasks, data.input_shape, global_heads=algorithm.global_heads, device=device
    )
    personal = copy.deepcopy(model) if algorithm.personal_model else None
    weighting = build_weighting(cfg, data.task_names, dataset_tasks(cfg), client_id)
    state_dir = str(context.node_config.get("state-dir", cfg.state_dir))
    store = PrivateStore(context, client_id, state_dir, cfg.federation_name)
    store.warn_if_memory_only()
    private, meta = store.load()
    if not private:
        trained = decode_clients((config or {}).get(TRAINED_CLIENTS))
        store.require_state(client_id, trained, cfg.resume_without_private_state)
    if private:
        own = {k: torch.from_numpy(v) for k, v in private.items() if not k.startswith(PERSONAL)}
        model.load_state_dict(own, strict=False)
        if personal is not None:
            mine = {
                k[len(PERSONAL) :]: torch.from_numpy(v)
                for k, v in private.items()
                if k.startswith(PERSONAL)
            }
            personal.load_state_dict(mine, strict=False)
        weighting.load_state_dict(meta.get("weighting", {}))
    shared = model_shared_keys(model, algorithm, cfg.shared_layers)
    if not isinstance(received, ArrayRecord):
        if len(received) != len(shared):
            raise ConfigError(
                f"client {client_id}: the server sent {len(received)} arrays, this client "
                f"shares {len(shared)}; server and client configs disagree"
            )
        received = ArrayRecord(
            {k: Array(np.asarray(v)) for k, v in zip(shared, received, strict=True)}
        )
    if set(received) != set(shared):
        raise ConfigError(
            f"client {client_id}: the server sent {len(received)} shared arrays but this client "
            f"shares {len(shared)} (algorithm '{cfg.algorithm}', shared-layers "
            f"{cfg.shared_layers}); server and client configs disagree"
        )
    load_arrays(model, received, what=f"client {client_id}: arrays from the server")
    task_shared = model_task_keys(model, algorithm)
    if task_arrays is not None:
        # The server sends every task's federated head; take those of this client's tasks
        # (a task nobody has trained yet keeps its seeded initialisation).
        mine = ArrayRecord({k: task_arrays[k] for k in task_shared if k in task_arrays})
        load_arrays(model, mine, what=f"client {client_id}: task arrays from the server")
    return ClientSession(
        cfg,
        algorithm,
        data,
        model,
        personal,
        weighting,
        store,
        shared,
        task_shared,
        meta,
        received,
    )


def session_for(msg: Message, context: Context) -> ClientSession:
    arrays = msg.content.array_records
    config = msg.content.config_records.get("config")
    return open_session(context, arrays["arrays"], arrays.get(TASK_ARRAYS), config)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train, through Flower's mods where the config asks for them: SecAgg+ (legacy layout),
    client-side clipping for central DP, local DP. They are applied per message because they
    depend on the run config. Compression comes last: the mods clip and noise weights, and
    the server decompresses before it validates and aggregates."""
    cfg = _parse(tuple(sorted(context.run_config.items())))
    if cfg.secagg:
        inner = legacy_train_step
        if cfg.privacy == "central-dp":
            inner = partial(legacy_fixedclipping_mod, call_next=legacy_train_step)
        return secaggplus_mod(msg, context, inner)
    mod = update_mod(cfg)
    if mod is None:
        reply = train_step(msg, context)
    else:
        with local_dp_noise(msg, context, cfg):
            reply = mod(msg, context, train_step)
    return compressed(reply, msg.content["arrays"], cfg.compression)


def local_dp_noise(msg: Message, context: Context, cfg: RunConfig) -> AbstractContextManager:
    """Where `LocalDpMod`'s noise comes from: it draws from NumPy's global RNG, which any code
    in the process may have seeded, so the draw runs on OS entropy (or, under the insecure
    switch, on a seed the server can compute, with a warning)."""
    if cfg.privacy != "local-dp":
        return nullcontext()
    client_id = client_identity(context)[0]
    server_round = int(msg.content["config"]["server-round"])
    seed = dp_noise_seed(cfg, client_id, server_round)
    if seed is not None:
        warn_seeded_noise(f"client {client_id}, round {server_round}")
    return noise_numpy(seed)


def update_mod(cfg: RunConfig) -> Mod | None:
    """The Flower mod that clips (and, for local DP, noises) this client's update, if any."""
    if cfg.privacy == "central-dp" and cfg.cdp_clipping == "fixed-client":
        return fixedclipping_mod
    if cfg.privacy == "central-dp" and cfg.cdp_clipping == "adaptive-client":
        return adaptiveclipping_mod
    if cfg.privacy == "local-dp":
        return LocalDpMod(cfg.clipping_norm, cfg.clipping_norm, cfg.ldp_epsilon, cfg.dp_delta)
    return None


def compressed(reply: Message, sent: ArrayRecord, method: str) -> Message:
    """The reply with its shared arrays replaced by the compressed update Δ = w − w_sent."""
    if method == "none" or reply.has_error():
        return reply
    reply.content["arrays"], reply.content[COMPRESSION] = compress(
        reply.content["arrays"], sent, method
    )
    return reply


def train_step(msg: Message, context: Context) -> Message:
    """Train; first evaluate what was received when the message names `evaluate-round`."""
    handler = time.time()
    config = msg.content["config"]
    s = session_for(msg, context)
    ready = time.time()
    evaluation = None
    if EVALUATE_ROUND in config:
        evaluation = evaluate_session(s, int(config[EVALUATE_ROUND]))
    reply = train_session(s, int(config["server-round"]), float(config.get("proximal-mu", 0.0)))
    if evaluation is not None:
        reply[EVALUATION_METRICS] = ConfigRecord(dict(evaluation["metrics"]))
        reply[EVALUATION_TASKS] = evaluation["task-metrics"]
    if s.cfg.audit_received:
        reply[TIMING] = timing(msg, handler, ready)
    return Message(reply, reply_to=msg)


def timing(msg: Message, handler: float, ready: float) -> ConfigRecord:
    """When the server created the message, this process started, the handler was entered,
    the session was ready (data, model, private state) and the reply was built."""
    stamps = {"sent": msg.metadata.created_at, "handler": handler, "ready": ready}
    if PROCESS_START is not None:
        stamps["process-start"] = PROCESS_START
    return ConfigRecord({**stamps, "reply": time.time()})


def legacy_train_step(msg: Message, context: Context) -> Message:
    """The same training for SecAgg+'s legacy layout: FitIns in, FitRes out."""
    fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
    s = open_session(context, parameters_to_ndarrays(fitins.parameters), config=fitins.config)
    reply = train_session(s, int(fitins.config["server-round"]), 0.0)
    arrays = reply["arrays"]
    fitres = FitRes(
        status=Status(Code.OK, ""),
        parameters=ndarrays_to_parameters([a.numpy() for a in arrays.values()]),
        num_examples=int(reply["metrics"]["num-examples"]),
        metrics={
            "train-loss": float(reply["metrics"]["train-loss"]),
            "client-id": s.data.client_id,  # the server records who holds private state
        },
    )
    return Message(compat.fitres_to_recorddict(fitres, keep_input=True), reply_to=msg)


def train_session(s: ClientSession, server_round: int, proximal_mu: float) -> RecordDict:
    """Local training under the configured algorithm and privacy; the reply's records."""
    audit: dict[str, Any] = {}
    if s.cfg.audit_received:  # where it ran, and the private state it starts from
        audit = {**placement(), "private-at-start": s.private_digest()}
    before = {k: v.copy() for k, v in s.private_arrays().items()}  # training is in place
    privacy = {}
    affinity: dict[str, float | int] = {}
    if s.cfg.privacy == "dp-sgd":
        from client.dp import dp_round  # Opacus costs seconds to import: only when used

        history = [tuple(h) for h in s.meta.get("dp_history", [])]
        stats, history, eps = dp_round(s.model, s.data, s.weighting, s.cfg, server_round, history)
        s.meta["dp_history"] = history
        privacy = {"dp-epsilon": eps, "dp-delta": s.cfg.dp_delta}
    else:
        if s.cfg.task_affinity:  # at the round's starting point, before training moves it
            affinity = measure_affinity(
                s.model,
                s.data.train,
                batches=s.cfg.affinity_batches,
                batch_size=s.cfg.batch_size,
                lr=s.cfg.lr,
                generator=round_generator(s.cfg, s.data.client_id, server_round, 3),
            )
        stats = local_round(
            s.model,
            s.data,
            s.weighting,
            s.cfg,
            server_round,
            s.algorithm,
            personal=s.personal,
            proximal_mu=proximal_mu,
        )
    s.keep_finite(server_round, before)
    s.save(server_round)
    if s.cfg.audit_received:
        # Digests (not values) of the private state let a test check, from the server side,
        # that a client starts each round with the state it ended the previous one with.
        audit["private-at-end"] = s.private_digest()
    task_metrics = {f"train/{t}/loss": v for t, v in stats.task_loss.items()}
    # Client-level DP accounting needs equal weights: every client counts once.
    weight = 1 if s.cfg.privacy == "central-dp" else stats.num_examples
    return RecordDict(
        {
            **s.reply_arrays(server_round),
            "metrics": MetricRecord({"num-examples": weight, "train-loss": stats.loss}),
            "task-metrics": ConfigRecord(
                {
                    "client-id": s.data.client_id,
                    "tasks": ",".join(s.data.task_names),
                    **task_metrics,
                    **privacy,
                    **affinity,
                    **audit,
                }
            ),
        }
    )


@app.evaluate()
def evaluate_handler(msg: Message, context: Context) -> Message:
    handler = time.time()
    s = session_for(msg, context)
    ready = time.time()
    reply = evaluate_session(s, int(msg.content["config"].get("server-round", 0)))
    if s.cfg.audit_received:
        reply[TIMING] = timing(msg, handler, ready)
    return Message(reply, reply_to=msg)


def evaluate_session(s: ClientSession, server_round: int) -> RecordDict:
    """Per-task metrics on validation and test of the client's model as the algorithm
    defines it, after the round's training and aggregation (the session holds the aggregated
    shared arrays and the private state the client ended its last training with): the joint
    model, Ditto's personal model, or for FedAvg-FT a copy whose heads were first fine-tuned
    on the local training data (nothing of the fine-tuning is kept)."""
    model = s.personal if s.personal is not None else s.model
    if s.algorithm.finetune_heads:
        model = copy.deepcopy(s.model)
        gen = round_generator(s.cfg, s.data.client_id, server_round, 2)
        train_heads(model, s.data, s.cfg, s.cfg.finetune_epochs, gen)
    record: dict = {"client-id": s.data.client_id, "tasks": ",".join(s.data.task_names)}
    losses = {}
    for split_name, split in (("val", s.data.val), ("test", s.data.test)):
        results = evaluate(model, split, s.data.tasks)
        losses[split_name] = sum(r["loss"] for r in results.values())
        for task, metrics in results.items():
            for name, value in metrics.items():
                record[f"{split_name}/{task}/{name}"] = value
            record[f"{split_name}/{task}/n"] = len(split)
    cfg, cid = s.cfg, s.data.client_id
    if is_attacker(cid, cfg.attack, cfg.attackers):
        kind = attack_of(cid, cfg.attack)
        record = forge_evaluation(kind, record, dataset_tasks(cfg), cfg.num_clients)
    return RecordDict(
        {
            "metrics": MetricRecord(
                {
                    "num-examples": len(s.data.test),
                    "val-loss": losses["val"],
                    "test-loss": losses["test"],
                }
            ),
            "task-metrics": ConfigRecord(record),
        }
    )
