"""The Flower ClientApp.

train: load the encoder from the message, restore the private part (heads, ...) from the
client's state, train locally, store the private part back, reply with exactly the keys
received. evaluate: the same restore, then per-task metrics on validation and test.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.state import PrivateStore
from client.train import build_model, build_weighting, evaluate, local_round
from common.algorithms import get_algorithm
from common.config import ConfigError, RunConfig, parse_run_config
from common.datasets import dataset_tasks
from common.federation import ClientData, load_client_data
from common.models import MultiTaskModel
from common.records import arrays_from_model, load_arrays, model_shared_keys
from common.weighting import Weighting

app = ClientApp()


@lru_cache(maxsize=8)
def _parse(items: tuple) -> RunConfig:
    return parse_run_config(dict(items))


@dataclass
class ClientSession:
    """Everything one handler call works with."""

    cfg: RunConfig
    data: ClientData
    model: MultiTaskModel
    weighting: Weighting
    store: PrivateStore
    shared: list[str]
    meta: dict

    def private_arrays(self) -> dict[str, np.ndarray]:
        return {
            k: v.detach().cpu().numpy()
            for k, v in self.model.state_dict().items()
            if k not in self.shared
        }

    def private_digest(self) -> str:
        h = hashlib.sha256()
        for key, value in sorted(self.private_arrays().items()):
            h.update(key.encode())
            h.update(np.ascontiguousarray(value).tobytes())
        return h.hexdigest()[:16]

    def save(self, server_round: int) -> None:
        private = self.private_arrays()
        self.meta.update(round=server_round, weighting=self.weighting.state_dict())
        self.store.save(private, self.meta)


def open_session(msg: Message, context: Context) -> ClientSession:
    torch.set_num_threads(1)  # one thread per virtual client: actors already fill the cores
    cfg = _parse(tuple(sorted(context.run_config.items())))
    node = context.node_config
    try:
        client_id = int(node.get("client-id", node["partition-id"]))
        num_partitions = int(node["num-partitions"])
    except KeyError as err:
        raise ConfigError(
            f"node config lacks {err}; start the node with --node-config "
            "'partition-id=<i> num-partitions=<n>'"
        ) from None
    data = load_client_data(cfg, client_id, num_partitions)
    algorithm = get_algorithm(cfg.algorithm)
    model = build_model(cfg, data.tasks, data.input_shape)
    weighting = build_weighting(cfg, data.task_names, dataset_tasks(cfg), client_id)
    store = PrivateStore(
        context, client_id, str(node.get("state-dir", cfg.state_dir)), cfg.federation_name
    )
    private, meta = store.load()
    if private:
        state = model.state_dict()
        for key, value in private.items():
            state[key].copy_(torch.from_numpy(value))
        weighting.load_state_dict(meta.get("weighting", {}))
    shared = model_shared_keys(model, algorithm)
    received = msg.content["arrays"]
    if set(received) != set(shared):
        raise ConfigError(
            f"client {client_id}: the server sent {len(received)} arrays but this client shares "
            f"{len(shared)} (algorithm '{cfg.algorithm}'); server and client configs disagree"
        )
    load_arrays(model, received, what=f"client {client_id}: arrays from the server")
    return ClientSession(cfg, data, model, weighting, store, shared, meta)


@app.train()
def train(msg: Message, context: Context) -> Message:
    s = open_session(msg, context)
    server_round = int(msg.content["config"]["server-round"])
    audit = {"private-at-start": s.private_digest()} if s.cfg.audit_received else {}
    stats = local_round(s.model, s.data, s.weighting, s.cfg, server_round)
    s.save(server_round)
    if s.cfg.audit_received:
        # Digests (not values) of the private state let a test check, from the server side,
        # that a client starts each round with the heads it ended the previous one with.
        audit["private-at-end"] = s.private_digest()
    task_metrics = {f"train/{t}/loss": v for t, v in stats.task_loss.items()}
    reply = RecordDict(
        {
            # Exactly the keys received, in the order received: never a private key.
            "arrays": arrays_from_model(s.model, list(msg.content["arrays"].keys())),
            "metrics": MetricRecord({"num-examples": stats.num_examples, "train-loss": stats.loss}),
            "task-metrics": ConfigRecord(
                {
                    "client-id": s.data.client_id,
                    "tasks": ",".join(s.data.task_names),
                    **task_metrics,
                    **audit,
                }
            ),
        }
    )
    return Message(reply, reply_to=msg)


@app.evaluate()
def evaluate_handler(msg: Message, context: Context) -> Message:
    s = open_session(msg, context)
    record: dict = {"client-id": s.data.client_id, "tasks": ",".join(s.data.task_names)}
    losses = {}
    for split_name, split in (("val", s.data.val), ("test", s.data.test)):
        results = evaluate(s.model, split, s.data.tasks)
        losses[split_name] = sum(r["loss"] for r in results.values())
        for task, metrics in results.items():
            for name, value in metrics.items():
                record[f"{split_name}/{task}/{name}"] = value
            record[f"{split_name}/{task}/n"] = len(split)
    reply = RecordDict(
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
    return Message(reply, reply_to=msg)
