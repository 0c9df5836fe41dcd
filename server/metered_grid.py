"""A Grid wrapper that measures what actually crosses the wire and, on request, records
what the ServerApp receives (for audits and tests: e.g. that no head and, under secure
aggregation, no individual encoder update ever reaches the server), with the time each reply
was pulled.

It also waits for replies itself: Flower's deployment grid (`HttpGrid.send_and_receive`)
sleeps 3 s between pulls, a fixed cost on every message wave; this one pulls every
`pull_interval` seconds (0.1 s, as Flower's in-memory grid does) through the grid's own
`push_messages` / `pull_messages`."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

from flwr.app import Message
from flwr.serverapp import Grid

from common.records import payload_bytes
from server.validation import client_of

PULL_INTERVAL = 0.1  # seconds between pulls while replies are outstanding


class MeteredGrid(Grid):
    def __init__(
        self, inner: Grid, audit_path: str | None = None, pull_interval: float = PULL_INTERVAL
    ) -> None:
        self.inner = inner
        self.audit_path = audit_path
        self.pull_interval = pull_interval
        self.round = 0
        self.bytes_down = 0
        self.bytes_up = 0

    # Counting, auditing and waiting happen here; everything else is the wrapped grid's.
    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Push, then pull until every reply is in or `timeout` seconds have passed (the
        contract of `Grid.send_and_receive`)."""
        outstanding = {i for i in self.push_messages(messages) if i}  # failed pushes: None
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while outstanding:
            got = list(self.pull_messages(outstanding))
            if self.audit_path:
                self._audit(got)
            replies += got
            outstanding -= {m.metadata.reply_to_message_id for m in got}
            if not outstanding or (deadline is not None and time.monotonic() >= deadline):
                break
            time.sleep(self.pull_interval)
        return replies

    def take_counts(self) -> tuple[int, int]:
        """(bytes up, bytes down) since the last call."""
        counts = (self.bytes_up, self.bytes_down)
        self.bytes_up = self.bytes_down = 0
        return counts

    def _audit(self, replies: list[Message]) -> None:
        pulled = time.time()
        with open(self.audit_path, "a", encoding="utf-8") as f:
            for m in replies:
                entry: dict[str, Any] = {
                    "round": self.round,
                    "phase": m.metadata.message_type,
                    "node": m.metadata.src_node_id,
                    "client": client_of(m),
                    "pulled": pulled,
                }
                if not m.has_error():
                    entry["records"] = sorted(m.content.array_records.keys())
                    entry["keys"] = {n: list(r.keys()) for n, r in m.content.array_records.items()}
                    entry["config"] = {
                        n: {k: v for k, v in r.items() if not isinstance(v, (bytes, list))}
                        for n, r in m.content.config_records.items()
                    }
                f.write(json.dumps(entry) + "\n")

    def set_run(self, run: Any) -> None:
        self.inner.set_run(run)

    @property
    def run(self) -> Any:
        return self.inner.run

    def create_message(self, *args: Any, **kwargs: Any) -> Message:
        return self.inner.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:
        return self.inner.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        self.bytes_down += sum(payload_bytes(m.content) for m in messages)
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        replies = list(self.inner.pull_messages(message_ids))
        self.bytes_up += sum(payload_bytes(m.content) for m in replies if not m.has_error())
        return replies
