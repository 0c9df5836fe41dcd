"""The round loop: Flower's strategy decides whom to send what and how to aggregate; this
loop adds what a long-running federation needs around it: reply checks, failure counts,
byte counts, evaluation cadence, a metrics line and the saved arrays every round."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from logging import INFO, WARNING

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from common.config import RunConfig
from common.records import record_bytes
from server.metrics import TASK_RECORD, per_client, per_task
from server.results import RunResults, headline


class RoundFailed(RuntimeError):
    """No usable replies were left in a round."""


def client_of(msg: Message) -> str:
    cr = msg.content.config_records.get(TASK_RECORD)
    return str(cr["client-id"]) if cr is not None else f"node-{msg.metadata.src_node_id}"


def check_replies(
    server_round: int, replies: Iterable[Message], sent: ArrayRecord | None
) -> tuple[list[Message], list[str]]:
    """Split replies into usable ones and reasons for the rest. A training reply must carry
    exactly the array keys and shapes that were sent, all finite."""
    good, problems = [], []
    for msg in replies:
        who = f"node {msg.metadata.src_node_id}"
        if msg.has_error():
            problems.append(f"{who}: error {msg.error.reason}")
            continue
        if sent is not None:
            arrays = msg.content.array_records.get("arrays")
            if arrays is None:
                problems.append(f"{who} ({client_of(msg)}): no 'arrays' record")
                continue
            if list(arrays.keys()) != list(sent.keys()):
                extra = sorted(set(arrays) - set(sent))[:3]
                problems.append(
                    f"{who} ({client_of(msg)}): keys differ from those sent (extra {extra})"
                )
                continue
            bad = [
                k
                for k, a in arrays.items()
                if a.shape != sent[k].shape or not np.isfinite(a.numpy()).all()
            ]
            if bad:
                problems.append(
                    f"{who} ({client_of(msg)}): wrong shape or non-finite values in {bad[:3]}"
                )
                continue
        good.append(msg)
    for p in problems:
        log(WARNING, "fedmtl | round %d: rejected reply from %s", server_round, p)
    # Aggregate in client order so that the same seed gives the same floating-point sums.
    good.sort(key=lambda m: client_of(m).zfill(12))
    return good, problems


def run_rounds(
    grid: Grid,
    strategy: Strategy,
    arrays: ArrayRecord,
    cfg: RunConfig,
    results: RunResults,
    *,
    start_round: int = 1,
    audit_path: str | None = None,
) -> ArrayRecord:
    total = cfg.num_server_rounds
    for rnd in range(start_round, total + 1):
        t0 = time.perf_counter()
        config = ConfigRecord({"lr": cfg.lr, "local-epochs": cfg.local_epochs})
        messages = list(strategy.configure_train(rnd, arrays, config, grid))
        sent = arrays
        bytes_down = sum(record_bytes(m.content["arrays"]) for m in messages)
        replies = list(grid.send_and_receive(messages))
        good, problems = check_replies(rnd, replies, sent)
        if not good:
            raise RoundFailed(f"round {rnd}: no usable training replies; " + "; ".join(problems))
        bytes_up = sum(record_bytes(m.content["arrays"]) for m in good)
        if audit_path:
            _audit(audit_path, rnd, good)
        new_arrays, train_metrics = strategy.aggregate_train(rnd, good)
        if new_arrays is not None:
            arrays = new_arrays
        t_train = time.perf_counter() - t0

        row: dict = {
            "round": rnd,
            "clients": len(good),
            "failures": len(problems),
            "train_loss": float(train_metrics["train-loss"]) if train_metrics else None,
            "bytes_up": bytes_up,
            "bytes_down": bytes_down,
        }
        if rnd % cfg.eval_every == 0 or rnd == total:
            eval_msgs = list(strategy.configure_evaluate(rnd, arrays, ConfigRecord(), grid))
            row["bytes_down"] += sum(record_bytes(m.content["arrays"]) for m in eval_msgs)
            eval_good, eval_problems = check_replies(rnd, grid.send_and_receive(eval_msgs), None)
            row["failures"] += len(eval_problems)
            if eval_good:
                strategy.aggregate_evaluate(rnd, eval_good)
                clients = per_client([m.content for m in eval_good])
                row["per_task"] = per_task(clients)
                row["per_client"] = clients
        row["seconds"] = round(time.perf_counter() - t0, 3)
        row["train_seconds"] = round(t_train, 3)
        results.log_round(row)
        results.save_arrays(arrays)
        log(INFO, "fedmtl | %s", round_line(row, total))
    return arrays


def round_line(row: dict, total: int) -> str:
    parts = [f"round {row['round']:>3}/{total}"]
    if row.get("train_loss") is not None:
        parts.append(f"train loss {row['train_loss']:.3f}")
    for task, metrics in row.get("per_task", {}).items():
        h = headline(metrics)
        if h:
            parts.append(f"{task} {h[0][:3]} {h[1]:.3f}")
    if row.get("failures"):
        parts.append(f"{row['failures']} failed")
    parts.append(f"{row['seconds']:.1f}s")
    return " | ".join(parts)


def _audit(path: str, rnd: int, replies: list[Message]) -> None:
    """What the server actually received, per reply (for tests and audits)."""
    with open(path, "a", encoding="utf-8") as f:
        for m in replies:
            entry = {
                "round": rnd,
                "client": client_of(m),
                "node": m.metadata.src_node_id,
                "records": sorted(m.content.array_records.keys()),
                "keys": {name: list(rec.keys()) for name, rec in m.content.array_records.items()},
                "config": {name: dict(rec) for name, rec in m.content.config_records.items()},
            }
            f.write(json.dumps(entry) + "\n")
