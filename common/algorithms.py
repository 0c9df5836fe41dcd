"""Federated training schedules (the `algorithm` key): what each one shares and how a client
trains locally. `ALGORITHMS` is the only map from config names to these specs."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Algorithm:
    """What travels and how a client trains.

    share_encoder: the encoder (or its first `shared-layers` blocks) is federated.
    share_heads: task heads are federated too, each averaged over the clients holding the task.
    global_heads: a generic head per task, federated per task, added to the private head.
    schedule: `joint` (encoder and heads together), `fedrep` (heads with the encoder frozen,
      then the encoder), `ditto` (global track + a personal model pulled toward it), `fedrod`
      (generic heads on the global objective, private heads on the detached features).
    finetune_heads: fine-tune the heads locally before each evaluation (fedavg-ft).
    """

    name: str
    share_encoder: bool
    share_heads: bool = False
    global_heads: bool = False
    schedule: str = "joint"
    finetune_heads: bool = False
    paper: str = ""


ALGORITHMS: dict[str, Algorithm] = {
    a.name: a
    for a in (
        Algorithm("fedper", True, paper="Arivazhagan et al. 2019, FedPer"),
        Algorithm("local", False, paper="no federation (baseline)"),
        Algorithm("fedavg", True, share_heads=True, paper="McMahan et al. 2017, FedAvg"),
        Algorithm(
            "fedavg-ft",
            True,
            share_heads=True,
            finetune_heads=True,
            paper="FedAvg + local fine-tuning of the heads",
        ),
        Algorithm("fedrep", True, schedule="fedrep", paper="Collins et al. 2021, FedRep"),
        Algorithm("ditto", True, schedule="ditto", paper="Li et al. 2021, Ditto"),
        Algorithm(
            "fedrod",
            True,
            global_heads=True,
            schedule="fedrod",
            paper="Chen & Chao 2022, FedRoD (generic + personalized heads)",
        ),
    )
}


def get_algorithm(name: str) -> Algorithm:
    if name not in ALGORITHMS:
        raise ValueError(f"algorithm '{name}' is unknown; valid: {sorted(ALGORITHMS)}")
    return ALGORITHMS[name]
