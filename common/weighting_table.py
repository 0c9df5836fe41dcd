"""The weighting axis (run-config key `weighting`), described once and without torch: each
multi-task loss weighting or gradient method, the run-config keys only it reads, and what it
needs from training. `common.config` derives its choices, its per-method keys and the DP-SGD
check from this table; `common.weighting.WEIGHTING_CLASSES` holds the classes under the same
names, and a test keeps the two (and the keys, RunConfig and pyproject) in step.

A method's options are its keys in snake_case (`dwa-temperature` -> `dwa_temperature`); their
defaults are RunConfig's, the only place that states them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WeightingSpec:
    """One weighting method.

    keys: the run-config keys that only this method reads (its options).
    per_task_backward: it backpropagates once per task (gradient methods, GradNorm).
    own_parameters: it trains parameters outside the model from the data (UW's
      log-variances, GradNorm's loss weights).
    loss_driven: its task weights are computed from the losses it saw (DWA's ratios of
      epoch losses): a function of the private data that DP-SGD's noise does not cover.
    """

    name: str
    keys: tuple[str, ...] = ()
    per_task_backward: bool = False
    own_parameters: bool = False
    loss_driven: bool = False
    paper: str = ""

    @property
    def runs_under_dp_sgd(self) -> bool:
        """Opacus's per-sample hooks and Poisson sampling assume one backward pass per step,
        and its clipping and noise cover the model's parameters only: weights computed from
        the raw losses would carry the data past the noise."""
        return not (self.per_task_backward or self.own_parameters or self.loss_driven)


WEIGHTINGS: dict[str, WeightingSpec] = {
    w.name: w
    for w in (
        WeightingSpec("ew", paper="equal weights, L = Σ L_i"),
        WeightingSpec("static", ("static-weights",), paper="L = Σ α_i L_i, α from the config"),
        WeightingSpec("uw", own_parameters=True, paper="Kendall, Gal & Cipolla 2018"),
        WeightingSpec(
            "dwa", ("dwa-temperature",), loss_driven=True, paper="Liu, Johns & Davison 2019"
        ),
        WeightingSpec("rlw", paper="Lin et al. 2022"),
        WeightingSpec(
            "gradnorm",
            ("gradnorm-alpha", "gradnorm-lr"),
            per_task_backward=True,
            own_parameters=True,
            paper="Chen et al. 2018",
        ),
        WeightingSpec("pcgrad", per_task_backward=True, paper="Yu et al. 2020"),
        WeightingSpec(
            "mgda", ("mgda-normalize",), per_task_backward=True, paper="Sener & Koltun 2018"
        ),
        WeightingSpec(
            "cagrad",
            ("cagrad-c", "cagrad-rescale"),
            per_task_backward=True,
            paper="Liu et al. 2021",
        ),
        WeightingSpec(
            "nash", ("nash-max-norm",), per_task_backward=True, paper="Navon et al. 2022"
        ),
    )
}
