"""Probe app: a ClientApp that echoes what it receives, a ServerApp that times waves of
messages. No torch, no data: whatever a wave costs here is Flower's own dispatch cost
(link state, Ray actor round trip, pickling of message and context), which the benchmark
subtracts nowhere and compares with the real app's rounds."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

server = ServerApp()
client = ClientApp()


@client.train()
def echo(msg: Message, context: Context) -> Message:
    """Reply with the arrays received (an update of the same size) and the actor's pid."""
    t0 = time.perf_counter()
    reply = RecordDict(
        {
            "arrays": msg.content["arrays"],
            "metrics": MetricRecord(
                {"pid": os.getpid(), "handler-s": time.perf_counter() - t0, "num-examples": 1}
            ),
        }
    )
    return Message(reply, reply_to=msg)


def _wait_for_nodes(grid: Grid, expected: int, timeout: float = 120.0) -> list[int]:
    """Simulated nodes are registered while the ServerApp thread already runs."""
    deadline = time.monotonic() + timeout
    nodes = sorted(grid.get_node_ids())
    while len(nodes) < expected and time.monotonic() < deadline:
        time.sleep(0.05)
        nodes = sorted(grid.get_node_ids())
    return nodes


@server.main()
def main(grid: Grid, context: Context) -> None:
    started = time.time()
    cfg = context.run_config
    if hasattr(grid, "pull_interval"):  # Flower's InMemoryGrid: how often it looks for replies
        grid.pull_interval = float(cfg["pull-interval"])
    waves = [int(w) for w in str(cfg["waves"]).split(",") if w.strip()]
    repeats = int(cfg["repeats"])
    arrays = ArrayRecord({"w": Array(np.zeros(int(cfg["payload"]), dtype=np.float32))})
    nodes = _wait_for_nodes(grid, int(cfg["nodes"]))
    offset = 0

    def wave(k: int) -> dict:
        nonlocal offset
        targets = [nodes[(offset + i) % len(nodes)] for i in range(k)]
        offset += k
        msgs = [
            Message(
                RecordDict({"arrays": arrays, "config": ConfigRecord({"k": k})}),
                dst_node_id=n,
                message_type=MessageType.TRAIN,
            )
            for n in targets
        ]
        t0 = time.perf_counter()
        replies = list(grid.send_and_receive(msgs, timeout=900))
        seconds = time.perf_counter() - t0
        good = [r for r in replies if not r.has_error()]
        return {
            "k": k,
            "seconds": seconds,
            "replies": len(good),
            "errors": len(replies) - len(good),
            "actors": len({int(r.content["metrics"]["pid"]) for r in good}),
        }

    # The first wave pays the actors' start (Ray workers, imports); keep it apart.
    cold = wave(min(len(nodes), 8))
    rows = [wave(k) for k in waves if k <= len(nodes) for _ in range(repeats)]
    out = {
        "server_started_unix": started,
        "nodes": len(nodes),
        "cold": cold,
        "waves": rows,
        "finished_unix": time.time(),
    }
    Path(str(cfg["out"])).write_text(json.dumps(out, indent=1))
