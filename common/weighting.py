"""Multi-task loss weighting and gradient methods behind one interface.

Every method gets the per-task losses of a batch and the shared (encoder) parameters and sets
`.grad` on every parameter that takes part: heads always receive their own task's gradient,
the method decides what the shared parameters receive. `WEIGHTING_CLASSES` maps config names
to classes; it is the only place that does. What each method is and needs (its run-config keys,
one backward per task, parameters of its own) is said once, in `common.weighting_table`; a
method's options default to what a default run config passes (RunConfig is the one place that
states the defaults).
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from common.config import CHOICES, RunConfig


def default_options(name: str) -> dict[str, Any]:
    """The options a default run config gives weighting `name` (client 0): its keys from the
    weighting table at their RunConfig defaults, and `seed`."""
    return RunConfig(weighting=name).weighting_options(client_id=0)


class Weighting:
    """Base class. Subclasses set `name` (their row in the weighting table) and override
    `backward` (and `task_weights` for loss weighting).

    `options` holds the method's options (snake_case run-config keys, plus `seed`); those not
    given take their RunConfig defaults, and an option the table does not list is refused.
    """

    name: ClassVar[str] = ""

    def __init__(self, task_names: Sequence[str], options: dict[str, Any] | None = None) -> None:
        self.task_names = list(task_names)
        self.options = default_options(self.name)
        unknown = sorted(set(options or {}) - set(self.options))
        if unknown:
            raise ValueError(
                f"weighting '{self.name}': unknown options {unknown}; valid: {sorted(self.options)}"
            )
        self.options.update(options or {})

    def parameters(self) -> list[torch.nn.Parameter]:
        """Learnable parameters of the method itself (e.g. UW's log-variances)."""
        return []

    def task_weights(self, losses: dict[str, torch.Tensor]) -> dict[str, torch.Tensor | float]:
        """Weights α_i of L = Σ α_i L_i for single-backward methods."""
        return {t: 1.0 for t in losses}

    def backward(
        self, losses: dict[str, torch.Tensor], shared_params: Sequence[torch.Tensor]
    ) -> dict[str, float]:
        """Backpropagate the weighted loss; returns the weights used (for logging)."""
        weights = self.task_weights(losses)
        active = _active(losses)
        if active:
            # Unit weights are skipped, not multiplied, and the sum starts at the first term:
            # the same values, two kernels fewer per task (on a GPU, launches add up).
            terms = [
                loss if isinstance(weights[t], float) and weights[t] == 1.0 else weights[t] * loss
                for t, loss in active.items()
            ]
            functools.reduce(operator.add, terms).backward()
        return {t: float(w) for t, w in weights.items()}

    def end_epoch(self, epoch_losses: dict[str, float]) -> None:
        """Called after each local epoch with the mean loss per task (DWA uses it)."""

    def state_dict(self) -> dict[str, Any]:
        """State that must survive across rounds (kept with the client's private state)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""


class EqualWeighting(Weighting):
    """Equal weighting: L = Σ L_i (the usual MTL baseline)."""

    name = "ew"


class StaticWeighting(Weighting):
    """Static weights from the config: L = Σ α_i L_i, α given per task (`static-weights`)."""

    name = "static"

    def __init__(self, task_names: Sequence[str], options: dict[str, Any] | None = None) -> None:
        super().__init__(task_names, options)
        alphas: dict[str, float] = dict(self.options["static_weights"] or {})
        missing = [t for t in self.task_names if t not in alphas]
        if missing:
            raise ValueError(f"weighting 'static': no α given for tasks {missing}")
        self.alphas = {t: float(alphas[t]) for t in self.task_names}

    def task_weights(self, losses: dict[str, torch.Tensor]) -> dict[str, torch.Tensor | float]:
        return {t: self.alphas[t] for t in losses}


# --- helpers shared by the methods below -------------------------------------------------------


def _active(losses: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The losses that can be backpropagated; the others are skipped."""
    return {t: loss for t, loss in losses.items() if loss.requires_grad}


def _gram(grads: torch.Tensor) -> np.ndarray:
    """Gram matrix G_ij = g_i·g_j of the rows of `grads`, in float64 numpy."""
    g = grads.detach().double()
    return (g @ g.T).cpu().numpy()


def task_gradients(
    losses: dict[str, torch.Tensor], params: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, list[bool]]:
    """Per-task gradients of `params`, flattened into a [T, n] matrix (rows in `losses` order).

    Also returns, per param, whether any task reaches it (unreached params keep their `.grad`).
    """
    rows, used = [], [False] * len(params)
    for loss in losses.values():
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        used = [u or g is not None for u, g in zip(used, grads, strict=True)]
        flat = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]
        rows.append(torch.cat([g.reshape(-1) for g in flat]))
    return torch.stack(rows), used


def _backward_with_direction(
    losses: dict[str, torch.Tensor],
    params: Sequence[torch.Tensor],
    direction: torch.Tensor,
    used: Sequence[bool],
) -> None:
    """Heads get Σ_i ∇L_i (plain backward); shared params get their earlier `.grad` + direction."""
    previous = [p.grad for p in params]
    for p in params:
        p.grad = None
    sum(losses.values()).backward()
    offset = 0
    for p, before, reached in zip(params, previous, used, strict=True):
        d = direction[offset : offset + p.numel()].view_as(p).to(p.dtype)
        offset += p.numel()
        p.grad = before if not reached else d.clone() if before is None else before + d


def _segment_min(aa: float, ab: float, bb: float) -> float:
    """γ ∈ [0, 1] minimising ‖γa + (1−γ)b‖², from the inner products a·a, a·b, b·b."""
    denominator = aa + bb - 2 * ab
    return 0.5 if denominator <= 1e-20 else float(np.clip((bb - ab) / denominator, 0.0, 1.0))


def min_norm_weights(gram: np.ndarray, iters: int = 250, tol: float = 1e-8) -> np.ndarray:
    """Simplex weights w minimising ‖Σ w_i g_i‖² given the Gram matrix of the g_i.

    Exact (closed form) for two tasks; Frank–Wolfe with exact line search otherwise
    (Sener & Koltun 2018, Algorithm 2).
    """
    n = len(gram)
    if n == 2:
        gamma = _segment_min(gram[0, 0], gram[0, 1], gram[1, 1])
        return np.array([gamma, 1.0 - gamma])
    w = np.full(n, 1.0 / n)
    for _ in range(iters):
        gw = gram @ w
        t = int(np.argmin(gw))
        gamma = _segment_min(float(w @ gw), float(gw[t]), float(gram[t, t]))
        new = gamma * w
        new[t] += 1.0 - gamma
        if np.abs(new - w).sum() < tol:
            return new
        w = new
    return w


def pcgrad_project(grads: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """PCGrad's surgery on [T, n] task gradients: each g_i loses its component along every
    (original) g_j it conflicts with (g_i·g_j < 0), the j's visited in a random order per i."""
    projected = grads.clone()
    squared_norms = (grads * grads).sum(1)
    for i in range(len(grads)):
        for j in torch.randperm(len(grads), generator=generator).tolist():
            dot = projected[i] @ grads[j]
            if j != i and dot < 0:
                projected[i] -= dot / squared_norms[j] * grads[j]
    return projected


class _SeededSteps(Weighting):
    """Mixin: one generator per step, seeded from option `seed` and the step count,
    so the state is just the counter and a resumed run draws what an unbroken one would."""

    def __init__(self, task_names: Sequence[str], options: dict[str, Any] | None = None) -> None:
        super().__init__(task_names, options)
        self.seed = int(self.options["seed"])
        self.step = 0

    def next_generator(self) -> torch.Generator:
        self.step += 1
        return torch.Generator().manual_seed(self.seed * 1_000_003 + self.step)

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state.get("step", 0))


class GradientMethod(Weighting):
    """Base of the methods that combine the per-task gradients of the shared parameters.

    Subclasses implement `combine`; the heads get the plain Σ_i ∇L_i (each head its own task's
    gradient). With fewer than two tasks that require grad this is a plain backward.
    """

    def combine(
        self, grads: torch.Tensor, losses: torch.Tensor
    ) -> tuple[torch.Tensor, list[float]]:
        """Direction for the shared params from the [T, n] task gradients (and the [T] loss
        values), and per-task weights to log."""
        raise NotImplementedError

    def backward(
        self, losses: dict[str, torch.Tensor], shared_params: Sequence[torch.Tensor]
    ) -> dict[str, float]:
        active = _active(losses)
        params = [p for p in shared_params if p.requires_grad]
        if len(active) < 2 or not params:
            return super().backward(losses, shared_params)
        grads, used = task_gradients(active, params)
        values = torch.stack([loss.detach().reshape(()) for loss in active.values()])
        direction, weights = self.combine(grads, values.to(grads))
        _backward_with_direction(active, params, direction, used)
        return {t: 0.0 for t in losses} | dict(zip(active, weights, strict=True))


# --- loss weighting (one backward) -------------------------------------------------------------


class UncertaintyWeighting(Weighting):
    """Uncertainty weighting, "Multi-Task Learning Using Uncertainty to Weigh Losses for Scene
    Geometry and Semantics" (Kendall, Gal, Cipolla, CVPR 2018).

    L = Σ_i exp(−s_i) L_i + s_i with learnable s_i = log σ_i² (initially 0), the common form
    (as in LibMTL). The paper has ½exp(−s)L + ½s for regression (twice smaller, same optimum) and
    exp(−s)L + ½s for classification (optimum weight halved). `parameters()` returns s: the
    client must add it to its optimizer. Logged weights are exp(−s_i).
    """

    name = "uw"

    def __init__(self, task_names: Sequence[str], options: dict[str, Any] | None = None) -> None:
        super().__init__(task_names, options)
        self.log_vars = torch.nn.Parameter(torch.zeros(len(self.task_names)))

    def parameters(self) -> list[torch.nn.Parameter]:
        return [self.log_vars]

    def backward(
        self, losses: dict[str, torch.Tensor], shared_params: Sequence[torch.Tensor]
    ) -> dict[str, float]:
        s = {t: self.log_vars[i] for i, t in enumerate(self.task_names)}
        active = _active(losses)
        if active:
            terms = [(s[t].to(loss.device), loss) for t, loss in active.items()]
            sum(torch.exp(-si) * loss + si for si, loss in terms).backward()
        return {t: math.exp(-float(s[t].detach())) for t in losses}

    def state_dict(self) -> dict[str, Any]:
        return {"log_vars": dict(zip(self.task_names, self.log_vars.tolist(), strict=True))}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("log_vars", {})
        with torch.no_grad():
            self.log_vars.copy_(torch.tensor([float(saved.get(t, 0.0)) for t in self.task_names]))


class DynamicWeightAverage(Weighting):
    """DWA, "End-to-End Multi-Task Learning with Attention" (Liu, Johns, Davison, CVPR 2019).

    w_i = T·softmax_i(r_i / temperature), r_i = L̄_i(e−1) / L̄_i(e−2) the ratio of the last two
    epochs' mean losses (given to `end_epoch`); weights sum to T. Equal weights (1) until two
    epochs are known; a task missing from either epoch gets r_i = 1. Option `dwa_temperature`.
    The two epochs are kept in the state, so DWA carries on across rounds.
    """

    name = "dwa"

    def __init__(self, task_names: Sequence[str], options: dict[str, Any] | None = None) -> None:
        super().__init__(task_names, options)
        self.temperature = float(self.options["dwa_temperature"])
        self.previous: dict[str, float] = {}
        self.last: dict[str, float] = {}

    def task_weights(self, losses: dict[str, torch.Tensor]) -> dict[str, torch.Tensor | float]:
        if not self.previous:
            return {t: 1.0 for t in losses}
        ok = {t for t in losses if t in self.last and self.previous.get(t, 0.0) > 0.0}
        r = torch.tensor([self.last[t] / self.previous[t] if t in ok else 1.0 for t in losses])
        weights = len(losses) * torch.softmax(r / self.temperature, dim=0)
        return dict(zip(losses, weights.tolist(), strict=True))

    def end_epoch(self, epoch_losses: dict[str, float]) -> None:
        self.previous, self.last = self.last, {t: float(v) for t, v in epoch_losses.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"previous": dict(self.previous), "last": dict(self.last)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.previous = {t: float(v) for t, v in state.get("previous", {}).items()}
        self.last = {t: float(v) for t, v in state.get("last", {}).items()}


class RandomLossWeighting(_SeededSteps):
    """RLW, "Reasonable Effectiveness of Random Weighting: A Litmus Test for Multi-Task
    Learning" (Lin et al., TMLR 2022).

    Each step w = softmax(z), z ~ N(0, I): positive weights summing to 1 (as in the paper, so
    the loss is on the scale of the mean, not of ew's sum). Reproducible from option `seed`.
    """

    name = "rlw"

    def task_weights(self, losses: dict[str, torch.Tensor]) -> dict[str, torch.Tensor | float]:
        z = torch.randn(len(losses), generator=self.next_generator(), dtype=torch.float64)
        return dict(zip(losses, torch.softmax(z, dim=0).tolist(), strict=True))


class GradNorm(Weighting):
    """GradNorm, "Gradient Normalization for Adaptive Loss Balancing in Deep Multitask
    Networks" (Chen et al., ICML 2018).

    The network gets ∇(Σ w_i L_i) with the current weights. Then the weights take one gradient
    step of their own (lr `gradnorm_lr`) on L_grad = Σ_i |G_i − Ḡ·r_i^α|, where
    G_i = w_i‖∇_W L_i‖, Ḡ = mean_i G_i, r_i = L̃_i / mean_j L̃_j with L̃_i = L_i / L_i(0), the
    target held constant; α is `gradnorm_alpha`. The weights are then kept positive and
    renormalised to sum to T. W, the "last shared layer", is the last tensor in `shared_params`
    with ≥ 2 dims (the last shared weight matrix or kernel; biases and norm scales are skipped).
    L_i(0) is the first loss seen for task i; it is kept in the state, so across rounds.
    """

    name = "gradnorm"

    def __init__(self, task_names: Sequence[str], options: dict[str, Any] | None = None) -> None:
        super().__init__(task_names, options)
        self.alpha = float(self.options["gradnorm_alpha"])
        self.lr = float(self.options["gradnorm_lr"])
        self.weights = {t: 1.0 for t in self.task_names}
        self.initial_losses: dict[str, float] = {}

    def task_weights(self, losses: dict[str, torch.Tensor]) -> dict[str, torch.Tensor | float]:
        return {t: self.weights.get(t, 1.0) for t in losses}

    def backward(
        self, losses: dict[str, torch.Tensor], shared_params: Sequence[torch.Tensor]
    ) -> dict[str, float]:
        active = _active(losses)
        layer = next((p for p in reversed(shared_params) if p.requires_grad and p.dim() >= 2), None)
        if len(active) < 2 or layer is None:
            return super().backward(losses, shared_params)
        norms = []
        for loss in active.values():
            (g,) = torch.autograd.grad(loss, layer, retain_graph=True, allow_unused=True)
            norms.append(0.0 if g is None else float(g.norm()))
        used = super().backward(losses, shared_params)
        names = list(active)
        values = np.array([float(active[t].detach()) for t in names])
        for t, v in zip(names, values, strict=True):
            self.initial_losses.setdefault(t, float(v))
        ratios = values / np.maximum([self.initial_losses[t] for t in names], 1e-12)
        r = ratios / max(ratios.mean(), 1e-12)
        w, n = np.array([self.weights.get(t, 1.0) for t in names]), np.array(norms)
        target = (w * n).mean() * r**self.alpha
        w = np.maximum(w - self.lr * np.sign(w * n - target) * n, 1e-6)  # ∂L_grad/∂w_i
        self.weights.update(zip(names, (w * len(w) / w.sum()).tolist(), strict=True))
        return used

    def state_dict(self) -> dict[str, Any]:
        return {"weights": dict(self.weights), "initial_losses": dict(self.initial_losses)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.weights.update({t: float(v) for t, v in state.get("weights", {}).items()})
        self.initial_losses = {t: float(v) for t, v in state.get("initial_losses", {}).items()}


# --- gradient methods (one backward per task) --------------------------------------------------


class PCGrad(_SeededSteps, GradientMethod):
    """PCGrad, "Gradient Surgery for Multi-Task Learning" (Yu et al., NeurIPS 2020).

    Every task gradient is projected onto the normal plane of each other task gradient it
    conflicts with, in a random order (generator seeded from option `seed`); the shared
    parameters get the sum of the projected gradients. Logged weights are nominal 1s.
    """

    name = "pcgrad"

    def combine(
        self, grads: torch.Tensor, losses: torch.Tensor
    ) -> tuple[torch.Tensor, list[float]]:
        return pcgrad_project(grads, self.next_generator()).sum(0), [1.0] * len(grads)


class MGDA(GradientMethod):
    """MGDA, "Multi-Task Learning as Multi-Objective Optimization" (Sener & Koltun, NeurIPS
    2018).

    The shared parameters get the min-norm point Σ w_i g_i of the convex hull of the task
    gradients (w on the simplex; exact for two tasks, Frank–Wolfe otherwise), computed on the
    full shared gradient rather than the MGDA-UB representation bound. Option `mgda_normalize`:
    "none", "l2" (g_i/‖g_i‖), "loss" (g_i/L_i) or "loss+" (g_i/(L_i‖g_i‖)); as in the
    paper's code, w is found on the normalised gradients and applied to the raw ones.
    """

    name = "mgda"

    def __init__(self, task_names: Sequence[str], options: dict[str, Any] | None = None) -> None:
        super().__init__(task_names, options)
        self.normalize = str(self.options["mgda_normalize"])
        if self.normalize not in CHOICES["mgda-normalize"]:
            raise ValueError(
                f"mgda_normalize '{self.normalize}' is not one of {list(CHOICES['mgda-normalize'])}"
            )

    def combine(
        self, grads: torch.Tensor, losses: torch.Tensor
    ) -> tuple[torch.Tensor, list[float]]:
        norms = grads.norm(dim=1)
        scale = {"none": torch.ones_like(norms), "l2": norms, "loss": losses}.get(
            self.normalize, losses * norms
        )
        w = min_norm_weights(_gram(grads / scale.clamp_min(1e-12).unsqueeze(1)))
        return torch.as_tensor(w).to(grads) @ grads, w.tolist()


class CAGrad(GradientMethod):
    """CAGrad, "Conflict-Averse Gradient Descent for Multi-task Learning" (Liu et al., NeurIPS
    2021).

    d = g0 + (c‖g0‖ / ‖g_w‖)·g_w with g0 the mean task gradient and w the solution over the
    simplex of the dual min_w g_w·g0 + c‖g0‖‖g_w‖ (scipy SLSQP, as in the reference code); d
    maximises the worst task's rate min_i g_i·d in the ball ‖d − g0‖ ≤ c‖g0‖, and c = 0 gives g0.
    Options: `cagrad_c`; `cagrad_rescale` (1: d/(1+c²) as the reference, 0: d, 2: d/(1+c)).
    The scale is the mean's, as in the paper (ew sums).
    """

    name = "cagrad"

    def __init__(self, task_names: Sequence[str], options: dict[str, Any] | None = None) -> None:
        super().__init__(task_names, options)
        self.c = float(self.options["cagrad_c"])
        rescale = int(self.options["cagrad_rescale"])
        self.divisor = {0: 1.0, 1: 1.0 + self.c**2, 2: 1.0 + self.c}[rescale]

    def combine(
        self, grads: torch.Tensor, losses: torch.Tensor
    ) -> tuple[torch.Tensor, list[float]]:
        gram, n = _gram(grads), len(grads)
        mean = np.full(n, 1.0 / n)
        phi = self.c * math.sqrt(max(float(gram.mean()), 0.0))  # c‖g0‖
        coef = mean.copy()
        if phi > 0:
            from scipy.optimize import minimize  # seconds to import: only when CAGrad runs

            res = minimize(
                lambda x: x @ gram @ mean + phi * math.sqrt(max(x @ gram @ x, 0.0) + 1e-8),
                mean,
                bounds=[(0.0, 1.0)] * n,
                constraints={"type": "eq", "fun": lambda x: 1.0 - x.sum()},
            )
            gw_norm = math.sqrt(max(float(res.x @ gram @ res.x), 0.0))
            coef = coef + (phi / gw_norm if gw_norm > 1e-12 else 0.0) * res.x
        coef = coef / self.divisor
        return torch.as_tensor(coef).to(grads) @ grads, coef.tolist()


class NashMTL(GradientMethod):
    """Nash-MTL, "Multi-Task Learning as a Bargaining Game" (Navon et al., ICML 2022).

    d = Σ α_i g_i with α > 0 solving Gα = 1/α, G the Gram matrix of the task gradients divided
    by its Frobenius norm (as in the reference code). Instead of the reference's sequence of
    cvxpy problems, α minimises the strictly convex ½αᵀGα − Σ log α_i, whose stationarity
    condition is exactly Gα = 1/α (L-BFGS-B; α is boxed to [1e-6, 1e4] because with cancelling
    gradients no solution exists). Option `nash_max_norm` (the reference uses 1, 0 disables):
    the direction's norm is clipped to it. Unlike the reference, heads are not weighted by α.
    """

    name = "nash"

    def __init__(self, task_names: Sequence[str], options: dict[str, Any] | None = None) -> None:
        super().__init__(task_names, options)
        self.max_norm = float(self.options["nash_max_norm"])

    def combine(
        self, grads: torch.Tensor, losses: torch.Tensor
    ) -> tuple[torch.Tensor, list[float]]:
        gram = _gram(grads)
        scale = float(np.linalg.norm(gram))
        if scale <= 1e-20:
            return grads.sum(0), [1.0] * len(grads)
        gram /= scale
        from scipy.optimize import minimize  # seconds to import: only when Nash-MTL runs

        res = minimize(
            lambda a: (0.5 * a @ gram @ a - np.log(a).sum(), gram @ a - 1.0 / a),
            np.ones(len(grads)),
            jac=True,
            method="L-BFGS-B",
            bounds=[(1e-6, 1e4)] * len(grads),
        )
        direction = torch.as_tensor(res.x).to(grads) @ grads
        norm = float(direction.norm())
        if 0 < self.max_norm < norm:
            direction = direction * (self.max_norm / norm)
        return direction, res.x.tolist()


WEIGHTING_CLASSES: dict[str, type[Weighting]] = {
    cls.name: cls
    for cls in (
        EqualWeighting,
        StaticWeighting,
        UncertaintyWeighting,
        DynamicWeightAverage,
        RandomLossWeighting,
        GradNorm,
        PCGrad,
        MGDA,
        CAGrad,
        NashMTL,
    )
}


def make_weighting(
    name: str, task_names: Sequence[str], options: dict[str, Any] | None = None
) -> Weighting:
    """Build the weighting method `name` for a client's tasks."""
    if name not in WEIGHTING_CLASSES:
        raise ValueError(f"weighting '{name}' is unknown; valid: {sorted(WEIGHTING_CLASSES)}")
    return WEIGHTING_CLASSES[name](task_names, options)
