"""Dense tasks: per-pixel losses and metrics, the decoder heads, and the feature maps every
architecture hands them (without changing what the vector tasks see)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from common.dense import DenseHead, features_with_maps, upsample_to
from common.models import MultiTaskModel, build_encoder
from common.tasks import TaskSpec

SEG = TaskSpec("segmentation", "segmentation", num_classes=4)
DEPTH = TaskSpec("depth", "depth", offset=5.0, scale=2.0)
COUNT = TaskSpec("count", "regression", offset=2.0, scale=1.0)
FLAG = TaskSpec("circle", "binary", 2)
ALL = [SEG, DEPTH, COUNT, FLAG]
ARCHITECTURES = ("hps", "mmoe", "mtan", "cross-stitch")


def _model(architecture: str, encoder: str, tasks, blocks: int = 2) -> MultiTaskModel:
    enc = build_encoder(
        architecture, encoder, (3, 16, 16), 24, blocks, 2, 0, (1, 8), [t.name for t in ALL]
    )
    return MultiTaskModel(enc, tasks, seed=0, global_heads=True)


def test_mean_iou_and_pixel_accuracy_on_hand_counted_masks() -> None:
    truth = np.array([[[0, 0, 1, 1], [0, 0, 1, 1]]])
    pred = np.array([[[0, 1, 1, 1], [0, 0, 1, 3]]])
    m = SEG.metrics(truth, pred)
    # class 0: 3 shared of 4 in either; class 1: 3 of 5; class 3: predicted only, IoU 0
    assert m["pixel_accuracy"] == pytest.approx(6 / 8)
    assert m["miou"] == pytest.approx((3 / 4 + 3 / 5 + 0.0) / 3)
    assert SEG.headline_metric == "miou" and SEG.higher_is_better


def test_abs_rel_and_rmse_on_hand_computed_depths() -> None:
    truth = np.array([[[2.0, 4.0], [0.0, 8.0]]])  # the 0 is no depth: left out
    pred = np.array([[[3.0, 4.0], [5.0, 6.0]]])
    m = DEPTH.metrics(truth, pred)
    assert m["abs_rel"] == pytest.approx((0.5 + 0.0 + 0.25) / 3)
    assert m["rmse"] == pytest.approx(np.sqrt((1 + 0 + 4) / 3))
    assert DEPTH.headline_metric == "abs_rel" and not DEPTH.higher_is_better
    with pytest.raises(ValueError, match="positive depth"):
        DEPTH.metrics(np.zeros((1, 2, 2)), pred)


def test_dense_losses_are_per_example_means_over_the_pixels() -> None:
    logits = torch.randn(3, 4, 5, 6)
    labels = torch.randint(0, 4, (3, 5, 6))
    per = SEG.per_example_loss(logits, labels)
    assert per.shape == (3,)
    expected = F.cross_entropy(logits[1:2], labels[1:2])
    assert per[1].item() == pytest.approx(expected.item(), rel=1e-6)
    depth_out = torch.zeros(2, 1, 5, 6)
    depth = torch.full((2, 5, 6), 9.0)  # normalised: (9 - 5) / 2 = 2 everywhere
    assert DEPTH.per_example_loss(depth_out, depth).tolist() == [2.0, 2.0]  # L1, not MSE
    assert SEG.predict(logits).shape == (3, 5, 6)
    assert DEPTH.predict(depth_out)[0, 0, 0] == 5.0  # back in depth units


def test_upsampling_is_nearest_neighbour_and_crops_to_the_size() -> None:
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    assert torch.equal(upsample_to(x, (8, 10)), F.interpolate(x, size=(8, 10), mode="nearest"))
    odd = upsample_to(x, (7, 9))
    assert odd.shape == (2, 3, 7, 9)
    assert torch.equal(odd, upsample_to(x, (8, 10))[..., :7, :9])


def test_a_dense_head_decodes_a_feature_map_to_every_pixel() -> None:
    head = DenseHead((32, 4, 4), 5, (16, 16))
    assert head(torch.randn(2, 32, 4, 4)).shape == (2, 5, 16, 16)
    assert len(head.refine) == 2  # 4 -> 8 -> 16


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("encoder", ["cnn", "resnet"])
def test_every_architecture_gives_dense_tasks_a_map_and_trains_them(
    architecture: str, encoder: str
) -> None:
    model = _model(architecture, encoder, ALL)
    x = torch.rand(3, 3 * 16 * 16)
    out = model(x)
    assert out["segmentation"].shape == (3, 4, 16, 16)
    assert out["depth"].shape == (3, 1, 16, 16)
    assert out["count"].shape == (3, 1) and out["circle"].shape == (3, 1)
    loss = SEG.loss(out["segmentation"], torch.randint(0, 4, (3, 16, 16))) + DEPTH.loss(
        out["depth"], torch.full((3, 16, 16), 4.0)
    )
    loss.backward()
    # the dense loss reaches the shared encoder and the dense heads
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())
    assert all(p.grad is not None for p in model.heads["segmentation"].parameters())


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_the_vector_tasks_see_what_they_saw_without_dense_tasks(architecture: str) -> None:
    """Computing the map in the same pass changes nothing for the vector tasks: the path
    with maps gives exactly the features of the path without them."""
    model = _model(architecture, "cnn", [COUNT, FLAG], blocks=3)
    x = torch.rand(4, 3 * 16 * 16)
    plain = model.features(x)  # no dense task: the original path
    with_maps = features_with_maps(model, x)
    for t in ("count", "circle"):
        assert torch.equal(plain[t], with_maps[t]), t


def test_mtan_dense_maps_differ_per_task_through_their_attention() -> None:
    other = TaskSpec("depth2", "depth", offset=5.0, scale=2.0)
    enc = build_encoder("mtan", "cnn", (3, 16, 16), 24, 2, 2, 0)
    model = MultiTaskModel(enc, [DEPTH, other], seed=0)
    feats = model.features(torch.rand(2, 3 * 16 * 16))
    assert feats["depth"].shape == feats["depth2"].shape
    assert not torch.equal(feats["depth"], feats["depth2"])  # each its own masks


def test_a_dense_task_on_an_mlp_encoder_is_refused_naming_the_valid_encoders() -> None:
    enc = build_encoder("hps", "mlp", (3, 16, 16), 24, 2, 2, 0)
    with pytest.raises(ValueError, match=r"\['segmentation'\] are dense.*'cnn', 'resnet'"):
        MultiTaskModel(enc, [SEG, COUNT], seed=0)


def test_dp_sgd_trains_a_client_whose_tasks_are_all_dense() -> None:
    """Opacus refuses a trainable parameter without a gradient; with only dense tasks the
    encoder's projection after the feature map gets none. The round freezes it, trains the
    rest, and hands it back trainable and untouched."""
    from client.dp import dp_round
    from client.train import build_model, build_weighting
    from common.config import parse_run_config
    from common.federation import load_client_data

    cfg = parse_run_config(
        {
            "dataset": "scenes",
            "encoder": "cnn",
            "partitioner": "natural",
            "num-clients": 3,
            "samples-per-client": 40,
            "privacy": "dp-sgd",
            "dp-epsilon": 8.0,
            "plan": "segmentation,depth",
        }
    )
    data = load_client_data(cfg, 0, 3)
    model = build_model(cfg, data.tasks, data.input_shape)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    weighting = build_weighting(cfg, data.task_names, data.task_names)
    stats, history, eps = dp_round(model, data, weighting, cfg, 1, [])
    assert len(history) == 1
    assert 0 < eps <= 8.0 and set(stats.task_loss) == {"segmentation", "depth"}
    after = model.state_dict()
    projection = [k for k in after if k.startswith("encoder.blocks.1.") and ".5." in k]
    assert projection, list(after)  # the last block's Linear after Flatten
    assert all(torch.equal(before[k], after[k]) for k in projection)
    assert not torch.equal(before["encoder.blocks.0.0.weight"], after["encoder.blocks.0.0.weight"])
    assert all(p.requires_grad for p in model.parameters())


def test_the_membership_statistic_scores_dense_tasks_by_their_loss() -> None:
    """LiRA's per-example statistic works on a client with dense tasks: one number per
    example, higher where the dense loss is lower."""
    from common.federation import Split
    from experiments.privacy.models import confidence

    model = _model("hps", "cnn", [SEG, COUNT])
    x = torch.rand(4, 3 * 16 * 16).numpy()
    with torch.no_grad():
        seg = model(torch.from_numpy(x))["segmentation"].argmax(1).numpy()
    wrong = (seg + 1) % 4
    y = {"segmentation": np.concatenate([seg[:2], wrong[2:]]), "count": np.full(4, 2.0, "f4")}
    phi = confidence(model, Split(x, y), [SEG, COUNT])
    assert phi.shape == (4,)
    assert min(phi[:2]) > max(phi[2:])  # its own predictions as labels: lower loss
