"""The server-aggregation axis (run-config key `aggregation`), described once and without
torch or Flower: how the server combines the clients' shared-encoder updates before the
strategy (`strategy`) applies them, the run-config keys only it reads, and the strategies it
composes with. `common.config` derives its choices and per-method keys from this table;
`server.conflict_averse.AGGREGATION_RULES` implements the rules under the same names.

A rule other than `mean` needs every client's own update: it is refused with SecAgg+ (which
shows the server only the sum) and with central DP (one client's update would change how
the others' are combined, which the noise calibration does not allow for).
"""

from __future__ import annotations

from dataclasses import dataclass

# The strategies whose server step is a weighted mean of the updates (then, for FedAvgM,
# server momentum): a rule that rewrites each update composes with them exactly.
MEAN_STRATEGIES = ("fedavg", "fedprox", "fedavgm")


@dataclass(frozen=True)
class AggregationSpec:
    """One server aggregation rule.

    keys: the run-config keys that only this rule reads.
    strategies: the strategies it composes with; None: every strategy.
    """

    name: str
    keys: tuple[str, ...] = ()
    strategies: tuple[str, ...] | None = MEAN_STRATEGIES
    paper: str = ""


AGGREGATIONS: dict[str, AggregationSpec] = {
    s.name: s
    for s in (
        AggregationSpec("mean", strategies=None),
        AggregationSpec("pcgrad", paper="Yu et al. 2020, applied to client updates"),
        AggregationSpec(
            "hca", ("hca-c", "hca-alpha-init", "hca-lr"), paper="Lu et al. 2024 (FedHCA²)"
        ),
    )
}
