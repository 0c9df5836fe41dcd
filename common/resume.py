"""What the server tells clients about their private state, and the words a client's refusal
carries back, so that private state lost on a restart or a resume is never lost silently.

The server records in its checkpoint which clients have trained. Every training message
names them (`TRAINED_CLIENTS`); a listed client that finds no private state (heads, personal
model, weighting state, DP-SGD history) refuses the round with an error containing
`STATE_MISSING`, and the server stops the run with that message, unless the run config
says `resume-without-private-state = true`.
"""

from __future__ import annotations

from collections.abc import Iterable

TRAINED_CLIENTS = "trained-clients"  # train-config key: "0,1,2", the clients that trained
STATE_MISSING = "private state missing"  # in a client's refusal; the server looks for it


def encode_clients(clients: Iterable[str | int]) -> str:
    """Client ids as a config value (ConfigRecord and legacy configs both take a string)."""
    return ",".join(str(c) for c in sorted({int(c) for c in clients}))


def decode_clients(value: object) -> set[int]:
    """Inverse of `encode_clients`; an absent or empty value names no client."""
    return {int(c) for c in str(value or "").split(",") if c.strip()}
