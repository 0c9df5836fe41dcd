"""The algorithm axis (run-config key `algorithm`), described once and without torch: what
each federated training schedule shares, how a client trains, which run-config keys only it
reads. `common.config` derives its choices and its compatibility checks (privacy, SecAgg+)
from this table; `client.train.SCHEDULES` maps each `schedule` name to its function."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Algorithm:
    """What travels and how a client trains.

    share_encoder: the encoder (or its first `shared-layers` blocks) is federated.
    share_heads: task heads are federated too, each averaged over the clients holding the task.
    global_heads: a generic head per task, federated per task, added to the private head.
    schedule: the local training, a name in `client.train.SCHEDULES`: `joint` (encoder and
      heads together), `fedrep` (heads with the encoder frozen, then the encoder), `ditto`
      (global track + a personal model pulled toward it), `fedrod` (generic heads on the
      global objective, private heads on the detached features).
    finetune_heads: fine-tune the heads locally before each evaluation (fedavg-ft).
    personal_model: the client keeps a whole personal model besides the federated one, and
      evaluates it (ditto).
    keys: the run-config keys that only this algorithm reads.
    """

    name: str
    share_encoder: bool
    share_heads: bool = False
    global_heads: bool = False
    schedule: str = "joint"
    finetune_heads: bool = False
    personal_model: bool = False
    keys: tuple[str, ...] = ()
    paper: str = ""

    @property
    def sends_heads(self) -> bool:
        """Per-task arrays travel besides the encoder. Central/local DP and SecAgg+ act on
        the encoder update only, so heads would leave the client without their protection."""
        return self.share_heads or self.global_heads

    @property
    def runs_under_dp_sgd(self) -> bool:
        """DP-SGD (`client.dp`) replaces the local schedule by one joint loop under the
        accountant: an algorithm with other phases, a personal model or a fine-tuning would
        train outside it."""
        return self.schedule == "joint" and not self.finetune_heads and not self.personal_model


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
            keys=("finetune-epochs",),
            paper="FedAvg + local fine-tuning of the heads",
        ),
        Algorithm(
            "fedrep",
            True,
            schedule="fedrep",
            keys=("fedrep-head-epochs", "fedrep-body-epochs", "fedrep-max-grad-norm"),
            paper="Collins et al. 2021, FedRep",
        ),
        Algorithm(
            "ditto",
            True,
            schedule="ditto",
            personal_model=True,
            keys=("ditto-lambda",),
            paper="Li et al. 2021, Ditto",
        ),
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
