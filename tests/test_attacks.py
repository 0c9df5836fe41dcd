"""Attack library (experiments/privacy): each attack on a small CPU case with a known answer."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import norm
from torch import Tensor, nn

from experiments.privacy.attacks import (
    analytic_linear_reconstruction,
    attribute_inference,
    best_match_psnr,
    compute_embeddings,
    flat_update,
    gradient_inversion,
    label_accuracy,
    lira_confidences,
    lira_offline_mia,
    lira_offline_scores,
    logit_confidence,
    loss_threshold_mia,
    mia_metrics,
    per_example_gradients,
    per_example_losses,
    psnr,
    random_head,
    recover_label,
    recover_labels,
    rmia_scores,
    shadow_confidences,
    ssim,
    train_shadow_models,
    update_mia,
)


def ce(out: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(out, y, reduction="none")


def grads_of(model: nn.Module, x: Tensor, y: Tensor) -> list[Tensor]:
    """Gradient of the batch-mean cross-entropy wrt all parameters (what a client would send)."""
    return list(torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters())))


# ---------------------------------------------------------------- metrics


def test_mia_metrics_separable_and_low_fpr_gate() -> None:
    m = mia_metrics(np.arange(100, 200), np.arange(100))
    assert m["auc"] == 1.0 and m["advantage"] == 1.0 and m["tpr_at_1pct_fpr"] == 1.0
    assert m["tpr_at_0_1pct_fpr"] is None  # 100 non-members cannot resolve 0.1 % FPR
    rev = mia_metrics(np.arange(1000), np.arange(1000, 2000))
    assert rev["auc"] == 0.0 and rev["tpr_at_0_1pct_fpr"] == 0.0
    # +-inf scores (e.g. from log-likelihoods) are ranked, not rejected
    assert mia_metrics([np.inf, 1.0], [-np.inf, 0.0])["auc"] == 1.0


def test_psnr_ssim_identical_and_noise() -> None:
    rng = np.random.default_rng(0)
    x = rng.random((16, 16))
    assert psnr(x, x, 1.0) == math.inf
    assert ssim(x, x) == pytest.approx(1.0)
    assert psnr(x, x + 0.1, 1.0) == pytest.approx(20.0)  # MSE 0.01 on range 1
    noise = rng.random((16, 16))
    assert psnr(x, noise, 1.0) < 10.0
    assert abs(ssim(x, noise)) < 0.2
    tiny = torch.rand(1, 4, 4, generator=torch.Generator().manual_seed(0))
    assert ssim(tiny, tiny) == pytest.approx(1.0)  # window shrinks to fit a 4x4 image
    assert ssim(tiny, 1.0 - tiny) < 0.0  # inverted structure is anti-correlated


# ---------------------------------------------------------------- R1: analytic reconstruction


def test_r1_recovers_single_example_exactly() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 3))
    x = torch.rand(1, 16, generator=torch.Generator().manual_seed(1))
    g = grads_of(model, x, torch.tensor([2]))
    rec = analytic_linear_reconstruction(g[0], g[1], top_k=1)
    assert rec.top.shape == (1, 16)
    torch.testing.assert_close(rec.top[0], x[0], rtol=1e-4, atol=1e-5)
    assert len(rec.rows) > 0
    torch.testing.assert_close(rec.per_row, x.expand_as(rec.per_row), rtol=1e-3, atol=1e-4)


def test_r1_batch_rows_behind_relu_isolate_examples() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 5))
    x = torch.rand(4, 16, generator=torch.Generator().manual_seed(0))
    g = grads_of(model, x, torch.tensor([0, 0, 2, 3]))
    rec = analytic_linear_reconstruction(g[0], g[1], top_k=4)
    assert rec.top.shape == (4, 16)
    # rows that a single example activates give that example (near-)exactly
    assert (best_match_psnr(x, rec.per_row, 1.0) > 60.0).all()


# ---------------------------------------------------------------- M1 / M2: deployed model


@dataclass
class MemorisingCase:
    x: Tensor
    y: Tensor
    members: np.ndarray
    nonmembers: np.ndarray
    target: nn.Module
    train: Callable[..., nn.Module]  # train(indices, seed) -> model


def memorising_case(label_noise: float | None, steps: int) -> MemorisingCase:
    """Overparameterised MLP trained to ~zero loss on 200 points (the members).

    `label_noise=None`: random labels, every example equally hard. Otherwise labels come from a
    linear teacher with that fraction flipped, so difficulty varies from point to point.
    """
    n, d, c = 2000, 20, 4
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=gen)
    if label_noise is None:
        y = torch.randint(0, c, (n,), generator=gen)
    else:
        y = (x @ torch.randn(d, c, generator=gen)).argmax(dim=1)
        flip = torch.rand(n, generator=gen) < label_noise
        y = torch.where(flip, torch.randint(0, c, (n,), generator=gen), y)

    def train(idx: np.ndarray, seed: int = 0) -> nn.Module:
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(d, 256), nn.ReLU(), nn.Linear(256, c))
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        idx_t = torch.as_tensor(idx)
        for _ in range(steps):
            opt.zero_grad()
            F.cross_entropy(model(x[idx_t]), y[idx_t]).backward()
            opt.step()
        return model

    members, nonmembers = np.arange(200), np.arange(200, 400)
    return MemorisingCase(x, y, members, nonmembers, train(members), train)


@pytest.fixture(scope="module")
def random_labels() -> MemorisingCase:
    return memorising_case(label_noise=None, steps=200)


def run_m1_m2(case: MemorisingCase, n_shadow: int) -> tuple[dict, dict, np.ndarray, list]:
    """M1 and LiRA-offline on the same candidates; also returns confidences for RMIA."""
    x, y = case.x, case.y
    cand = np.concatenate([case.members, case.nonmembers])
    is_member = np.isin(cand, case.members)
    shadows = train_shadow_models(
        lambda idx: case.train(idx, seed=int(idx[0])),
        pool_indices=np.arange(len(x)),
        n_shadow=n_shadow,
        subset_size=len(case.members),
        exclude=cand,
        seed=1,
    )
    assert all(not np.isin(idx, cand).any() for _, idx in shadows)  # all OUT models
    models = [m for m, _ in shadows]
    target_conf = lira_confidences(case.target, x[cand], y[cand])
    shadow_conf = shadow_confidences(models, x[cand], y[cand])
    assert shadow_conf.shape == (n_shadow, len(cand))
    mem, non = case.members, case.nonmembers
    m1 = loss_threshold_mia(case.target, ce, x[mem], y[mem], x[non], y[non])
    m2 = lira_offline_mia(target_conf, shadow_conf, is_member)
    return m1, m2, target_conf, models


def test_m1_chance_on_unseen_data_high_on_memorised(random_labels: MemorisingCase) -> None:
    case = random_labels
    x, y, mem, non = case.x, case.y, case.members, case.nonmembers
    assert per_example_losses(case.target, ce, x[mem], y[mem]).mean() < 1e-2  # memorised
    m1 = loss_threshold_mia(case.target, ce, x[mem], y[mem], x[non], y[non])
    assert m1["auc"] > 0.8
    # a model trained elsewhere: both candidate sets are unseen and identically distributed
    other = case.train(np.arange(1500, 1700), seed=1)
    a, b = np.arange(400, 900), np.arange(900, 1400)
    chance = loss_threshold_mia(other, ce, x[a], y[a], x[b], y[b])
    assert 0.4 < chance["auc"] < 0.6


def test_m2_lira_beats_m1_when_difficulty_varies() -> None:
    # zero training loss on teacher labels with 10 % flips: a global loss threshold also flags
    # easy non-members; LiRA's per-example OUT calibration does not (Carlini et al. 2022)
    case = memorising_case(label_noise=0.1, steps=100)
    x, y = case.x, case.y
    assert per_example_losses(case.target, ce, x[case.members], y[case.members]).mean() < 1e-2
    m1, m2, target_conf, models = run_m1_m2(case, n_shadow=8)
    assert m2["auc"] >= m1["auc"] + 0.02
    assert m2["tpr_at_1pct_fpr"] >= m1["tpr_at_1pct_fpr"]
    # RMIA with 2 reference models, population points z outside the candidates
    cand = np.concatenate([case.members, case.nonmembers])
    is_member = np.isin(cand, case.members)
    pop = np.arange(1600, 2000)
    r = rmia_scores(
        target_conf,
        shadow_confidences(models[:2], x[cand], y[cand]),
        lira_confidences(case.target, x[pop], y[pop]),
        shadow_confidences(models[:2], x[pop], y[pop]),
    )
    assert mia_metrics(r[is_member], r[~is_member])["auc"] >= m1["auc"] + 0.02


def test_m2_lira_close_to_m1_on_random_labels(random_labels: MemorisingCase) -> None:
    # every example is equally hard here, so per-example calibration has nothing to correct and
    # only adds the noise of 4 shadow variances: LiRA-offline trails the threshold slightly
    m1, m2, _, _ = run_m1_m2(random_labels, n_shadow=4)
    assert m2["auc"] > 0.85
    assert m2["auc"] >= m1["auc"] - 0.08


def test_lira_statistics_known_values() -> None:
    logits = torch.tensor([[2.0, 0.0, 0.0]])
    phi = logit_confidence(logits, torch.tensor([0]))
    p = math.exp(2) / (math.exp(2) + 2)
    assert float(phi) == pytest.approx(math.log(p / (1 - p)), rel=1e-6)
    binary = logit_confidence(torch.tensor([[1.5], [1.5]]), torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(binary, torch.tensor([-1.5, 1.5]))
    shadow = np.array([[-1.0, -1.0], [1.0, 1.0]])  # per-example mean 0, std sqrt(2)
    scores = lira_offline_scores([0.0, math.sqrt(2)], shadow)
    np.testing.assert_allclose(scores, norm.logcdf([0.0, 1.0]))


# ---------------------------------------------------------------- M3: from an encoder update


def test_m3_single_step_update_reveals_members() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(56, 16, generator=gen)
    y = torch.randint(0, 3, (56,), generator=gen)
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 16), nn.ReLU())
    model = nn.Sequential(encoder, nn.Linear(16, 3))
    old = [p.detach().clone() for p in encoder.parameters()]
    g_mem = per_example_gradients(model, encoder.parameters(), ce, x[:8], y[:8])
    g_non = per_example_gradients(model, encoder.parameters(), ce, x[8:], y[8:])
    assert g_mem.shape == (8, sum(p.numel() for p in encoder.parameters()))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt.zero_grad()
    F.cross_entropy(model(x[:8]), y[:8]).backward()
    opt.step()  # one local step on the 8 members; the server sees the encoder's delta
    m3 = update_mia(flat_update(encoder.parameters(), old), g_mem, g_non)
    assert m3["auc"] > 0.75


# ---------------------------------------------------------------- R2 and label recovery


def tiny_image_model(seed: int) -> tuple[nn.Module, nn.Module]:
    """(encoder, encoder + head) for 1x4x4 images and 3 classes; sigmoid keeps R2 smooth."""
    torch.manual_seed(seed)
    encoder = nn.Sequential(
        nn.Flatten(), nn.Linear(16, 32), nn.Sigmoid(), nn.Linear(32, 8), nn.Sigmoid()
    )
    return encoder, nn.Sequential(encoder, nn.Linear(8, 3))


def test_r2_head_known_reconstructs_tiny_image_and_label() -> None:
    _, model = tiny_image_model(0)
    x = torch.rand(1, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([2])
    g = grads_of(model, x, y)
    label = recover_label(g[-2])  # iDLG from the head's weight gradient only
    assert label == 2 and recover_label(g[-2], g[-1]) == 2
    res = gradient_inversion(
        model, g, (1, 4, 4), num_classes=3, labels=torch.tensor([label]), steps=300, lr=0.1, seed=0
    )
    assert res.x.shape == x.shape and res.labels.tolist() == [2]
    assert psnr(x, res.x, 1.0) > 20.0
    assert ssim(x, res.x) > 0.9
    assert label_accuracy(y, res.labels) == 1.0


def test_r2_head_unknown_runs_on_encoder_gradient_only() -> None:
    encoder, model = tiny_image_model(0)
    x = torch.rand(1, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    g_encoder = grads_of(model, x, torch.tensor([2]))[: len(list(encoder.parameters()))]
    res = gradient_inversion(
        encoder,
        g_encoder,
        (1, 4, 4),
        num_classes=3,
        head=random_head(8, 3, seed=1),
        steps=50,
        seed=0,
        tv_weight=1e-2,
    )
    assert res.x.shape == x.shape and res.soft_labels is not None
    assert torch.isfinite(res.x).all() and res.x.min() >= 0.0 and res.x.max() <= 1.0
    assert res.history[-1] < res.history[0]  # the matching loss went down
    assert all(p.grad is None for p in model.parameters())  # the victim model is untouched


def test_batch_label_recovery_negative_rows() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 5))
    y = torch.tensor([0, 0, 2, 3])
    g = grads_of(model, torch.rand(4, 16, generator=torch.Generator().manual_seed(0)), y)
    assert recover_labels(g[2], 4, g[3]).tolist() == [0, 0, 2, 3]
    assert label_accuracy(y, recover_labels(g[2], 4)) == 1.0  # ReLU features: row sums work
    assert label_accuracy([0, 0, 2, 3], [3, 2, 0, 1]) == 0.75  # order-invariant


# ---------------------------------------------------------------- A1: attribute inference


def test_a1_random_attribute_at_prior_encoded_attribute_high() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(600, 8, generator=gen)
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(8, 16), nn.Tanh())
    z = compute_embeddings(encoder, x)
    assert z.shape == (600, 16)
    rng = np.random.default_rng(0)
    random_attr = rng.integers(0, 2, 600)
    chance = attribute_inference(z, random_attr, seed=0)
    assert 0.4 < chance["auc"] < 0.6
    assert abs(chance["accuracy"] - chance["prior"]) < 0.1
    encoded = (x[:, 0] + 0.3 * torch.randn(600, generator=gen) > 0).numpy()
    leak = attribute_inference(z, encoded, seed=0)
    assert leak["auc"] > 0.9 and leak["accuracy"] > leak["prior"] + 0.2
