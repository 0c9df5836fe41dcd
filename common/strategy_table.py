"""The strategy axis (run-config key `strategy`), described once and without torch or Flower:
each aggregation rule on the shared arrays, the run-config keys only it reads, and how many
clients a Byzantine-robust rule needs. `common.config` derives its choices, its per-method keys
and the client-count check from this table; `server.strategies.STRATEGY_BUILDERS` builds the
Flower strategy under the same name, and a test checks that a builder reads exactly its keys.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StrategySpec:
    """One Flower strategy.

    keys: the run-config keys that only this strategy reads.
    robust: (a, b) for a Byzantine-robust rule that needs at least a·f + b updates per round
      to tolerate f = `num-malicious` attackers; None for the others.
    """

    name: str
    keys: tuple[str, ...] = ()
    robust: tuple[int, int] | None = None
    paper: str = ""


_FEDOPT = ("fedopt-eta", "tau")
_BETAS = ("beta-1", "beta-2")

STRATEGIES: dict[str, StrategySpec] = {
    s.name: s
    for s in (
        StrategySpec("fedavg", paper="McMahan et al. 2017"),
        StrategySpec("fedprox", ("proximal-mu",), paper="Li et al. 2020"),
        StrategySpec("fedadam", _FEDOPT + _BETAS, paper="Reddi et al. 2021"),
        StrategySpec("fedyogi", _FEDOPT + _BETAS, paper="Reddi et al. 2021"),
        StrategySpec("fedadagrad", _FEDOPT, paper="Reddi et al. 2021"),
        StrategySpec("fedavgm", ("server-lr", "server-momentum"), paper="Hsu et al. 2019"),
        StrategySpec("fedmedian", paper="Yin et al. 2018"),
        StrategySpec("fedtrimmedavg", ("trim-beta",), paper="Yin et al. 2018"),
        StrategySpec("krum", ("num-malicious",), robust=(2, 3), paper="Blanchard et al. 2017"),
        StrategySpec(
            "multikrum",
            ("num-malicious", "krum-select"),
            robust=(2, 3),
            paper="Blanchard et al. 2017",
        ),
        StrategySpec("bulyan", ("num-malicious",), robust=(4, 3), paper="El Mhamdi et al. 2018"),
    )
}
