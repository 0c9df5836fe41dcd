"""Federated training schedules (the `algorithm` key): what each one shares and how a client
trains locally. `ALGORITHMS` is the only map from config names to these specs."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Algorithm:
    """What travels and how a client trains.

    share_encoder: the encoder (or its first `shared-layers` blocks) is federated.
    share_heads: task heads are federated too, each averaged over the clients holding the task.
    schedule: `joint` trains encoder and heads together every epoch.
    """

    name: str
    share_encoder: bool
    share_heads: bool = False
    schedule: str = "joint"


ALGORITHMS: dict[str, Algorithm] = {
    a.name: a
    for a in (
        Algorithm("fedper", share_encoder=True),
        Algorithm("local", share_encoder=False),
    )
}


def get_algorithm(name: str) -> Algorithm:
    if name not in ALGORITHMS:
        raise ValueError(f"algorithm '{name}' is unknown; valid: {sorted(ALGORITHMS)}")
    return ALGORITHMS[name]
