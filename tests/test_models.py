"""What is shared is defined in one place; heads start identical for clients of a task."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from client.train import build_model
from common.algorithms import get_algorithm
from common.config import parse_run_config
from common.datasets import MULTIDIGITS_TASKS
from common.models import build_encoder, count_parameters
from common.records import model_shared_keys


def test_fedper_shares_exactly_the_encoder_and_local_shares_nothing() -> None:
    cfg = parse_run_config({})
    model = build_model(cfg, MULTIDIGITS_TASKS[:3], (8, 16))
    keys = model_shared_keys(model, get_algorithm("fedper"))
    assert keys and all(k.startswith("encoder.") for k in keys)
    assert set(keys) == {k for k in model.state_dict() if k.startswith("encoder.")}
    assert model_shared_keys(model, get_algorithm("local")) == []


def test_same_task_head_starts_identical_on_every_client() -> None:
    cfg = parse_run_config({})
    a = build_model(cfg, [MULTIDIGITS_TASKS[0], MULTIDIGITS_TASKS[2]], (8, 16))
    b = build_model(cfg, [MULTIDIGITS_TASKS[2]], (8, 16))
    for key, value in b.heads["sum"].state_dict().items():
        assert torch.equal(value, a.heads["sum"].state_dict()[key])
    assert not torch.equal(a.heads["left"][0].weight[:, :5], a.heads["sum"][0].weight[:, :5])


def test_outputs_per_task_have_the_task_width() -> None:
    cfg = parse_run_config({"encoder": "cnn"})
    model = build_model(cfg, MULTIDIGITS_TASKS, (8, 16))
    out = model(torch.zeros(4, 8, 16))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "left": (4, 10),
        "right": (4, 10),
        "sum": (4, 1),
        "parity": (4, 1),
        "equal": (4, 1),
    }
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


def _encoder(architecture: str, input_shape: tuple[int, ...], num_blocks: int = 2) -> nn.Module:
    return build_encoder(architecture, "cnn", input_shape, 64, num_blocks, 3, seed=0)


def test_cnn_num_blocks_sets_the_depth() -> None:
    """Each block is one convolution; `shared-layers` counts the same blocks."""
    counts = []
    for num_blocks in (1, 2, 3, 4):
        encoder = _encoder("hps", (8, 16), num_blocks)
        convs = [m for m in encoder.modules() if isinstance(m, nn.Conv2d)]
        assert len(encoder.blocks) == len(convs) == num_blocks
        assert encoder(torch.zeros(5, 8, 16)).shape == (5, 64)
        counts.append(count_parameters(encoder))
    assert len(set(counts)) == 4, counts
    cfg = parse_run_config({"encoder": "cnn", "num-blocks": 3, "shared-layers": 1})
    model = build_model(cfg, MULTIDIGITS_TASKS[:2], (8, 16))
    keys = model_shared_keys(model, get_algorithm("fedper"), cfg.shared_layers)
    assert keys and all(k.startswith("encoder.blocks.0.") for k in keys)


@pytest.mark.parametrize("shape", [(8, 16), (1, 8, 16), (3, 32, 32), (3, 5, 7)])
def test_cnn_takes_images_of_any_size_with_or_without_channels(shape: tuple[int, ...]) -> None:
    encoder = _encoder("hps", shape, num_blocks=3)
    first = next(m for m in encoder.modules() if isinstance(m, nn.Conv2d))
    assert first.in_channels == (shape[0] if len(shape) == 3 else 1)
    x = torch.randn(4, *shape)
    assert encoder(x).shape == (4, 64)


def test_cnn_refuses_inputs_that_are_not_images() -> None:
    with pytest.raises(ValueError, match=r"'encoder' = 'cnn' needs image inputs.*\(4,\)"):
        _encoder("hps", (4,))
    with pytest.raises(ValueError, match="'cnn' needs image inputs"):
        _encoder("mmoe", (4,))


def test_mmoe_builds_its_experts_from_the_encoder_key() -> None:
    cfg = parse_run_config({"architecture": "mmoe", "encoder": "cnn", "num-experts": 3})
    model = build_model(cfg, MULTIDIGITS_TASKS[:2], (8, 16))
    assert len(model.encoder.experts) == 3
    for expert in model.encoder.experts:
        assert sum(isinstance(m, nn.Conv2d) for m in expert.modules()) == cfg.num_blocks
    out = model(torch.randn(4, 8, 16))
    sum(o.sum() for o in out.values()).backward()
    assert all(p.grad is not None for p in model.encoder.parameters())
    shared = model_shared_keys(model, get_algorithm("fedper"))
    assert shared and all(k.startswith("encoder.experts.") for k in shared)


# --- the ResNet encoder ---


def _resnet(shape: tuple[int, ...], stages: int = 3, depth: int = 2, width: int = 8) -> nn.Module:
    return build_encoder("hps", "resnet", shape, 32, stages, 3, seed=0, resnet=(depth, width))


@pytest.mark.parametrize("shape", [(3, 32, 32), (32, 32), (1, 28, 28), (3, 64, 64), (1, 8, 16)])
def test_resnet_takes_images_from_small_to_64_pixels_and_downsamples_to_at_least_2x2(
    shape: tuple[int, ...],
) -> None:
    encoder = _resnet(shape, stages=4)
    sizes = []
    for stage in encoder.blocks:
        stage.register_forward_hook(lambda m, i, o: sizes.append(tuple(i[0].shape[-2:])))
    assert encoder(torch.randn(3, *shape)).shape == (3, 32)
    first = next(m for m in encoder.modules() if isinstance(m, nn.Conv2d))
    assert first.in_channels == (shape[0] if len(shape) == 3 else 1)
    assert all(min(h, w) >= 2 for h, w in sizes[1:]), sizes
    if shape[-1] >= 32:
        assert sizes[-1][0] < shape[-2], "large inputs are downsampled"


def test_resnet_stages_are_the_blocks_shared_layers_counts_and_depth_width_size_them() -> None:
    encoder = _resnet((3, 32, 32), stages=3, depth=2, width=8)
    assert len(encoder.blocks) == 3
    assert [len(stage.units) for stage in encoder.blocks] == [2, 2, 2]
    widths = [stage.units[0].conv1.out_channels for stage in encoder.blocks]
    assert widths == [8, 16, 32]
    assert count_parameters(_resnet((3, 32, 32), depth=3)) > count_parameters(encoder)
    assert count_parameters(_resnet((3, 32, 32), width=16)) > count_parameters(encoder)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in encoder.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in encoder.modules())
    cfg = parse_run_config(
        {"encoder": "resnet", "num-blocks": 3, "shared-layers": 2, "resnet-width": 8}
    )
    model = build_model(cfg, MULTIDIGITS_TASKS[:2], (3, 32, 32))
    keys = model_shared_keys(model, get_algorithm("fedper"), cfg.shared_layers)
    assert {k.split(".")[2] for k in keys} == {"0", "1"}
    assert all(k.startswith("encoder.blocks.") for k in keys)


def test_resnet_refuses_inputs_that_are_not_images() -> None:
    with pytest.raises(ValueError, match=r"'encoder' = 'resnet' needs image inputs.*\(4,\)"):
        _resnet((4,))


def test_mmoe_builds_resnet_experts() -> None:
    cfg = parse_run_config(
        {"architecture": "mmoe", "encoder": "resnet", "num-experts": 2, "resnet-width": 4}
    )
    model = build_model(cfg, MULTIDIGITS_TASKS[:2], (3, 32, 32))
    assert len(model.encoder.experts) == 2
    assert all(isinstance(e.blocks[0].units[0].conv1, nn.Conv2d) for e in model.encoder.experts)
    out = model(torch.randn(4, 3, 32, 32))
    sum(o.sum() for o in out.values()).backward()
    assert all(p.grad is not None for p in model.encoder.parameters())


def test_resnet_settings_count_in_the_digest_only_for_the_resnet() -> None:
    mlp = parse_run_config({})
    assert parse_run_config({"resnet-width": 64}).digest() == mlp.digest()
    resnet = parse_run_config({"encoder": "resnet"})
    assert parse_run_config({"encoder": "resnet", "resnet-width": 64}).digest() != resnet.digest()
