"""Tests of the multi-task weighting and gradient methods in `common/weighting.py`."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from common.weighting import (
    WEIGHTING_CLASSES,
    Weighting,
    make_weighting,
    min_norm_weights,
    pcgrad_project,
)
from common.weighting_table import WEIGHTINGS

TASKS = ["a", "b"]
STATIC = {"static_weights": {"a": 0.3, "b": 2.0}}
ALL = sorted(WEIGHTING_CLASSES)


class TwoHeads(torch.nn.Module):
    """A shared linear encoder and one linear head per task."""

    def __init__(self, tasks: list[str] = TASKS) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.encoder = torch.nn.Linear(3, 4)
        self.heads = torch.nn.ModuleDict({t: torch.nn.Linear(4, 1) for t in tasks})
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen))
        self.x = torch.randn(8, 3, generator=gen)
        self.y = {t: torch.randn(8, 1, generator=gen) for t in tasks}

    def losses(self) -> dict[str, torch.Tensor]:
        z = torch.tanh(self.encoder(self.x))
        return {t: ((h(z) - self.y[t]) ** 2).mean() for t, h in self.heads.items()}

    def shared(self) -> list[torch.nn.Parameter]:
        return list(self.encoder.parameters())


def linear_losses(
    vectors: list[list[float]], offset: float = 0.0
) -> tuple[torch.nn.Parameter, dict[str, torch.Tensor]]:
    """A shared parameter w and losses L_i = g_i·w + offset, so ∇_w L_i = g_i exactly."""
    w = torch.nn.Parameter(torch.ones(1, len(vectors[0]), dtype=torch.float64))
    gs = torch.tensor(vectors, dtype=torch.float64)
    return w, {f"t{i}": (w * g).sum() + offset for i, g in enumerate(gs)}


def shared_direction(method: Weighting, vectors: list[list[float]]) -> torch.Tensor:
    w, losses = linear_losses(vectors)
    method.backward(losses, [w])
    assert w.grad is not None
    return w.grad.reshape(-1)


def options_for(name: str) -> dict[str, object]:
    return dict(STATIC) if name == "static" else {}


# --- all methods --------------------------------------------------------------------------------


def test_registry_and_unknown_name() -> None:
    for name in ALL:
        method = make_weighting(name, TASKS, options_for(name))
        assert method.name == name
        json.dumps(method.state_dict())
    with pytest.raises(ValueError, match="unknown"):
        make_weighting("nope", TASKS)


def test_an_option_the_method_does_not_have_is_refused() -> None:
    """A misspelt or foreign option is an error naming the valid ones, not silently unused."""
    with pytest.raises(ValueError, match=r"'dwa': unknown options \['dwa_temprature'\].*"):
        make_weighting("dwa", TASKS, {"dwa_temprature": 1.0})
    with pytest.raises(
        ValueError, match=r"'ew': unknown options \['cagrad_c'\]; valid: \['seed'\]"
    ):
        make_weighting("ew", TASKS, {"cagrad_c": 0.5})


@pytest.mark.parametrize("name", ALL)
def test_heads_get_their_own_task_gradient(name: str) -> None:
    model = TwoHeads()
    method = make_weighting(name, TASKS, options_for(name))
    if name == "uw":  # non-trivial weights exp(-s)
        method.load_state_dict({"log_vars": {"a": 0.5, "b": -0.7}})
    weights = method.backward(model.losses(), model.shared())
    for t in TASKS:
        head = model.heads[t].weight
        (alone,) = torch.autograd.grad(model.losses()[t], head)
        scale = 1.0 if WEIGHTINGS[name].per_task_backward else weights[t]
        assert head.grad is not None
        torch.testing.assert_close(head.grad, scale * alone)
    other = model.heads["b"].weight
    (wrong,) = torch.autograd.grad(model.losses()["a"], model.heads["a"].weight)
    assert not torch.allclose(other.grad, wrong)


@pytest.mark.parametrize("name", ALL)
def test_single_task_and_no_grad_task_reduce_to_plain_backward(name: str) -> None:
    model = TwoHeads()
    method = make_weighting(name, TASKS, options_for(name))
    losses = model.losses()
    losses["b"] = losses["b"].detach()  # e.g. a task without labels in this batch
    weights = method.backward(losses, model.shared())
    expected = torch.autograd.grad(model.losses()["a"], model.shared())
    for p, g in zip(model.shared(), expected, strict=True):
        assert p.grad is not None
        torch.testing.assert_close(p.grad, weights["a"] * g)  # the weight it reports for "a"
    assert model.heads["b"].weight.grad is None


@pytest.mark.parametrize("name", [n for n in ALL if WEIGHTINGS[n].per_task_backward])
def test_gradient_methods_accumulate_onto_existing_grads(name: str) -> None:
    model = TwoHeads()
    fresh = make_weighting(name, TASKS)
    fresh.backward(model.losses(), model.shared())
    once = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=False)
    for p in model.parameters():
        p.grad.fill_(1.0)
    make_weighting(name, TASKS).backward(model.losses(), model.shared())
    for p, g in zip(model.parameters(), once, strict=True):
        torch.testing.assert_close(p.grad, g + 1.0)


# --- loss weighting ------------------------------------------------------------------------------


def test_ew_and_static_weights_and_shared_gradient() -> None:
    for name, alphas in (("ew", {"a": 1.0, "b": 1.0}), ("static", STATIC["static_weights"])):
        model = TwoHeads()
        weights = make_weighting(name, TASKS, options_for(name)).backward(
            model.losses(), model.shared()
        )
        assert weights == pytest.approx(alphas)
        losses = model.losses()
        total = sum(alphas[t] * losses[t] for t in TASKS)
        for p, g in zip(model.shared(), torch.autograd.grad(total, model.shared()), strict=True):
            torch.testing.assert_close(p.grad, g)
    with pytest.raises(ValueError, match="no α"):
        make_weighting("static", TASKS, {"static_weights": {"a": 1.0}})


def test_uw_log_variances_get_gradients_and_move() -> None:
    model = TwoHeads()
    method = make_weighting("uw", TASKS)
    (log_vars,) = method.parameters()
    optimizer = torch.optim.SGD([*model.parameters(), *method.parameters()], lr=0.1)
    losses = model.losses()
    values = torch.stack([losses[t].detach() for t in TASKS])
    method.backward(losses, model.shared())
    # d/ds [exp(-s) L + s] = 1 - exp(-s) L, at s = 0: 1 - L
    torch.testing.assert_close(log_vars.grad, 1.0 - values)
    before = log_vars.detach().clone()
    optimizer.step()
    assert not torch.allclose(log_vars, before)
    state = method.state_dict()
    assert state["log_vars"]["a"] == pytest.approx(float(log_vars[0].detach()))


def test_dwa_follows_loss_ratio_formula() -> None:
    for temperature in (2.0, 0.5):
        method = make_weighting("dwa", TASKS, {"dwa_temperature": temperature})
        dummy = {t: torch.tensor(1.0) for t in TASKS}
        assert method.task_weights(dummy) == {"a": 1.0, "b": 1.0}
        method.end_epoch({"a": 1.0, "b": 2.0})
        assert method.task_weights(dummy) == {"a": 1.0, "b": 1.0}  # still only one epoch
        method.end_epoch({"a": 0.5, "b": 1.8})
        r = np.array([0.5 / 1.0, 1.8 / 2.0])
        expected = 2 * np.exp(r / temperature) / np.exp(r / temperature).sum()
        got = method.task_weights(dummy)
        assert [got["a"], got["b"]] == pytest.approx(expected.tolist())
        assert sum(got.values()) == pytest.approx(2.0)
        assert got["b"] > got["a"]  # the slower-decreasing task gets more weight
        method.end_epoch({"a": 0.25, "b": 0.9})  # only the last two epochs count: ratios 0.5/0.5
        assert method.task_weights(dummy) == pytest.approx({"a": 1.0, "b": 1.0})


def test_rlw_weights_positive_sum_to_one_and_reproducible() -> None:
    def draws(method: Weighting, n: int) -> list[list[float]]:
        dummy = {t: torch.tensor(1.0) for t in ["a", "b", "c"]}
        return [list(method.task_weights(dummy).values()) for _ in range(n)]

    first = draws(make_weighting("rlw", ["a", "b", "c"], {"seed": 7}), 6)
    assert first == draws(make_weighting("rlw", ["a", "b", "c"], {"seed": 7}), 6)
    assert first != draws(make_weighting("rlw", ["a", "b", "c"], {"seed": 8}), 6)
    assert len({tuple(w) for w in first}) == 6  # a new draw each step
    for w in first:
        assert min(w) > 0 and sum(w) == pytest.approx(1.0)
    resumed = make_weighting("rlw", ["a", "b", "c"], {"seed": 7})
    half = make_weighting("rlw", ["a", "b", "c"], {"seed": 7})
    draws(half, 3)
    resumed.load_state_dict(json.loads(json.dumps(half.state_dict())))
    assert draws(resumed, 3) == first[3:]


def test_gradnorm_balances_weighted_gradient_norms() -> None:
    method = make_weighting("gradnorm", TASKS, {"gradnorm_lr": 0.01})
    ratios = []
    for _ in range(100):
        w, losses = linear_losses([[1.0, 1.0], [4.0, 4.0]], offset=1.0)  # norms √2 and 4√2
        weights = method.backward({"a": losses["t0"], "b": losses["t1"]}, [w])
        torch.testing.assert_close(
            w.grad.reshape(-1),
            torch.tensor([1.0, 1.0]).double() * (weights["a"] + 4 * weights["b"]),
        )
        ratios.append(4 * method.weights["b"] / method.weights["a"])  # G_b / G_a
        assert sum(method.weights.values()) == pytest.approx(2.0)
        assert min(method.weights.values()) > 0
    assert ratios[0] < 4.0  # the first update already moves towards balance
    assert abs(math.log(ratios[-1])) < 0.1 * math.log(4.0)  # from 4x imbalance to nearly equal


# --- gradient methods ----------------------------------------------------------------------------


def test_pcgrad_two_conflicting_gradients_closed_form() -> None:
    g = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=torch.float64)  # g1·g2 = -1
    projected = pcgrad_project(g, torch.Generator().manual_seed(0))
    # g1 - (g1·g2)/|g2|² g2 = (0.5, 0.5);  g2 - (g2·g1)/|g1|² g1 = (0, 1)
    torch.testing.assert_close(projected, torch.tensor([[0.5, 0.5], [0.0, 1.0]]).double())
    assert projected[0] @ g[1] >= 0 and projected[1] @ g[0] >= 0
    direction = shared_direction(make_weighting("pcgrad", ["t0", "t1"]), g.tolist())
    torch.testing.assert_close(direction, torch.tensor([0.5, 1.5]).double())


def test_pcgrad_removes_all_conflicts_for_two_tasks_and_keeps_agreeing_ones() -> None:
    gen = torch.Generator().manual_seed(1)
    conflicts = 0
    for _ in range(50):
        g = torch.randn(2, 6, generator=gen, dtype=torch.float64)
        p = pcgrad_project(g, gen)
        assert p[0] @ g[1] >= -1e-12 and p[1] @ g[0] >= -1e-12
        if g[0] @ g[1] < 0:
            conflicts += 1
        else:
            torch.testing.assert_close(p, g)
    assert conflicts > 5
    g = [[1.0, 0.2, 0.0], [0.5, 1.0, 0.1], [0.1, 0.1, 1.0]]  # no conflict: plain sum
    torch.testing.assert_close(
        shared_direction(make_weighting("pcgrad", ["t0", "t1", "t2"]), g),
        torch.tensor(g).double().sum(0),
    )


def test_pcgrad_random_order_is_seeded() -> None:
    g = torch.randn(4, 5, generator=torch.Generator().manual_seed(3)).tolist()
    tasks = ["t0", "t1", "t2", "t3"]
    runs = [shared_direction(make_weighting("pcgrad", tasks, {"seed": 5}), g) for _ in range(2)]
    torch.testing.assert_close(runs[0], runs[1])


@pytest.mark.parametrize(
    "g",
    [
        [[1.0, 0.0, 2.0], [-1.0, 1.0, 0.5]],
        [[3.0, -1.0, 0.0], [-2.0, 0.5, 1.0]],
        [[1.0, 0.0, 0.0], [2.0, 0.0, 0.0]],  # γ clips to 1: direction g1
        [[2.0, 0.0, 0.0], [1.0, 0.1, 0.0]],  # γ clips to 0: direction g2
    ],
)
def test_mgda_two_tasks_equals_closed_form(g: list[list[float]]) -> None:
    g1, g2 = np.array(g[0]), np.array(g[1])
    gamma = np.clip((g2 - g1) @ g2 / ((g1 - g2) @ (g1 - g2)), 0.0, 1.0)
    expected = gamma * g1 + (1 - gamma) * g2
    direction = shared_direction(make_weighting("mgda", ["t0", "t1"]), g)
    torch.testing.assert_close(direction, torch.from_numpy(expected))


def test_mgda_many_tasks_satisfies_min_norm_optimality() -> None:
    g = np.random.default_rng(0).normal(size=(4, 6))
    w = min_norm_weights(g @ g.T, iters=5000)
    d = w @ g
    assert w.min() >= 0 and w.sum() == pytest.approx(1.0)
    # d is the min-norm point of the hull iff g_i·d ≥ |d|² for every i
    assert (g @ d).min() >= d @ d - 1e-4
    direction = shared_direction(make_weighting("mgda", ["t0", "t1", "t2", "t3"]), g.tolist())
    assert float(direction @ direction) == pytest.approx(d @ d, rel=1e-3)


def test_mgda_l2_normalisation_weights_the_raw_gradients() -> None:
    g = [[10.0, 0.0], [0.0, 1.0]]
    direction = shared_direction(make_weighting("mgda", ["t0", "t1"], {"mgda_normalize": "l2"}), g)
    torch.testing.assert_close(direction, torch.tensor([5.0, 0.5]).double())  # γ = 1/2
    with pytest.raises(ValueError):
        make_weighting("mgda", TASKS, {"mgda_normalize": "bogus"})


def test_cagrad_c_zero_is_mean_gradient() -> None:
    g = [[3.0, 0.0, 1.0], [-1.0, 0.5, 2.0], [0.0, 1.0, -1.0]]
    direction = shared_direction(make_weighting("cagrad", ["t0", "t1", "t2"], {"cagrad_c": 0}), g)
    torch.testing.assert_close(direction, torch.tensor(g).double().mean(0))


@pytest.mark.parametrize("rescale", [0, 1])
def test_cagrad_improves_worst_task_over_mean(rescale: int) -> None:
    g = np.array([[3.0, 0.0], [-1.0, 0.5]])
    mean = g.mean(0)
    c = 0.5
    assert (g @ mean).min() < 0  # the mean gradient increases task 2's loss
    options = {"cagrad_c": c, "cagrad_rescale": rescale}
    d = shared_direction(make_weighting("cagrad", ["t0", "t1"], options), g).numpy()
    assert (g @ d).min() >= (g @ mean).min()
    if rescale == 0:  # d solves max_d min_i g_i·d over the ball |d - g0| <= c|g0|
        radius = c * np.linalg.norm(mean)
        assert np.linalg.norm(d - mean) <= radius + 1e-6
        theta = np.linspace(0, 2 * np.pi, 20001)
        ball = mean + radius * np.stack([np.cos(theta), np.sin(theta)], axis=1)
        best = (ball @ g.T).min(1).max()
        assert (g @ d).min() == pytest.approx(best, abs=1e-3)


def test_nash_solves_bargaining_condition() -> None:
    g = [[1.0, 0.0], [0.0, 2.0]]  # orthogonal: α_i = 1/sqrt(G_ii / |G|_F)
    method = make_weighting("nash", ["t0", "t1"], {"nash_max_norm": 0.0})
    w, losses = linear_losses(g)
    alphas = method.backward(losses, [w])
    scale = math.sqrt(17.0)
    expected = [math.sqrt(scale / 1.0), math.sqrt(scale / 4.0)]
    assert [alphas["t0"], alphas["t1"]] == pytest.approx(expected, rel=1e-4)
    torch.testing.assert_close(
        w.grad.reshape(-1), torch.tensor([expected[0], 2 * expected[1]]).double(), rtol=1e-4, atol=0
    )
    gm = np.random.default_rng(2).normal(size=(3, 5)) + 1.0
    gram = gm @ gm.T / np.linalg.norm(gm @ gm.T)
    w, losses = linear_losses(gm.tolist())
    nash = make_weighting("nash", ["t0", "t1", "t2"], {"nash_max_norm": 0.0})
    a = np.array(list(nash.backward(losses, [w]).values()))
    np.testing.assert_allclose(gram @ a, 1.0 / a, rtol=1e-3)
    clipped = shared_direction(make_weighting("nash", ["t0", "t1"]), g)
    assert float(clipped.norm()) == pytest.approx(1.0)


# --- state ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["uw", "dwa", "rlw", "gradnorm", "pcgrad"])
def test_state_dict_round_trip(name: str) -> None:
    model = TwoHeads()
    method = make_weighting(name, TASKS)
    optimizer = torch.optim.SGD([*model.parameters(), *method.parameters()], lr=0.05)
    for epoch in range(3):
        for _ in range(2):
            optimizer.zero_grad()
            losses = model.losses()
            method.backward(losses, model.shared())
            optimizer.step()
        method.end_epoch({t: float(v.detach()) + epoch for t, v in losses.items()})
    state = json.loads(json.dumps(method.state_dict()))
    assert state == method.state_dict() and state
    restored = make_weighting(name, TASKS)
    restored.load_state_dict(state)
    assert restored.state_dict() == state
    # both continue identically
    results = []
    for m in (method, restored):
        model.zero_grad(set_to_none=True)
        weights = m.backward(model.losses(), model.shared())
        results.append((weights, [p.grad.clone() for p in model.shared()], m.state_dict()))
    assert results[0][0] == pytest.approx(results[1][0])
    for a, b in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(a, b)
    assert results[0][2] == results[1][2]
