"""Dense (per-pixel) prediction: the encoder's feature map and the light decoder heads that
upsample it to the input's resolution.

fedmtl's encoders end in a vector (the last block flattens or pools, then projects to
`hidden`). A dense task needs the map before that: the last block's output up to its
flattening (CNN) or its pooling head (ResNet). The map and the vector come from one pass
through the blocks, and parameter names do not change, so runs without dense tasks are
exactly what they were.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from common.tasks import TaskSpec

if TYPE_CHECKING:
    from common.models import MultiTaskModel

DECODER_WIDTH = 32  # channels of a dense head's convolutions


def last_block_parts(block: nn.Module) -> tuple[Callable, Callable]:
    """(to the feature map, from the map to the vector) of an image encoder's last block:
    a ResNet stage splits before its pooling head, a CNN block before its `Flatten`."""
    if hasattr(block, "units") and hasattr(block, "head"):  # a ResNet stage

        def to_map(x: torch.Tensor) -> torch.Tensor:
            x = block.stem(x)
            for unit in block.units:
                x = unit(x)
            return x

        return to_map, block.head
    layers = list(block)
    cut = next((i for i, layer in enumerate(layers) if isinstance(layer, nn.Flatten)), None)
    if cut is None:
        raise ValueError("the encoder's last block does not flatten a feature map")
    return nn.Sequential(*layers[:cut]), nn.Sequential(*layers[cut:])


def image_features(
    blocks: nn.ModuleList, x: torch.Tensor, *, vector: bool, feature_map: bool
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """One pass of image batch `x` (N, C, H, W) through `blocks`: (the encoder's vector
    output, if asked; the last block's feature map, if asked)."""
    for block in blocks[:-1]:
        x = block(x)
    to_map, to_vector = last_block_parts(blocks[-1])
    m = to_map(x)
    return (to_vector(m) if vector else None), (m if feature_map else None)


def upsample_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour upsampling of (N, C, h, w) to at least `size`, cropped to it. Made
    of `expand` (whose backward is a sum), not `F.interpolate`, whose CUDA backward adds
    with atomics and refuses to run under deterministic algorithms."""
    height, width = size
    h, w = x.shape[-2:]
    sh, sw = -(-height // h), -(-width // w)
    n, c = x.shape[:2]
    x = x[:, :, :, None, :, None].expand(n, c, h, sh, w, sw).reshape(n, c, h * sh, w * sw)
    return x[..., :height, :width]


def _conv_block(channels_in: int, channels_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels_in, channels_out, 3, padding=1),
        nn.GroupNorm(4, channels_out),
        nn.ReLU(),
    )


class DenseHead(nn.Module):
    """A light decoder: a 3×3 convolution on the encoder's feature map, then ×2 nearest
    upsampling + 3×3 convolution until the input's resolution, then a 1×1 convolution to the
    task's channels (classes, or one depth value). GroupNorm, never BatchNorm."""

    def __init__(
        self, map_shape: tuple[int, int, int], out_channels: int, size: tuple[int, int]
    ) -> None:
        super().__init__()
        channels, h, w = map_shape
        self.size = size
        self.reduce = _conv_block(channels, DECODER_WIDTH)
        steps = []
        while h < size[0] or w < size[1]:
            h, w = min(2 * h, size[0]), min(2 * w, size[1])
            steps.append((h, w))
        self.steps = steps
        self.refine = nn.ModuleList(_conv_block(DECODER_WIDTH, DECODER_WIDTH) for _ in steps)
        self.out = nn.Conv2d(DECODER_WIDTH, out_channels, 1)

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        x = self.reduce(feature_map)
        for step, conv in zip(self.steps, self.refine, strict=True):
            x = conv(upsample_to(x, step))
        return self.out(x)


def image_trunk(encoder: nn.Module) -> nn.Module | None:
    """The image encoder whose feature map dense heads decode: the encoder itself, MTAN's
    trunk, an MMoE expert or a cross-stitch column (all of one shape); None for MLPs."""
    inner = encoder
    if hasattr(encoder, "trunk"):
        inner = encoder.trunk
    elif hasattr(encoder, "experts"):
        inner = encoder.experts[0]
    elif hasattr(encoder, "columns"):
        inner = encoder.columns[0]
    return inner if hasattr(inner, "image_shape") else None


def dense_geometry(
    encoder: nn.Module, tasks: Sequence[TaskSpec]
) -> tuple[tuple[int, ...], tuple[int, int]] | None:
    """(feature-map shape, image size) for the dense tasks' heads; None without dense
    tasks. A dense task on an encoder without images is refused, naming the valid ones."""
    dense = [t.name for t in tasks if t.is_dense]
    if not dense:
        return None
    trunk = image_trunk(encoder)
    if trunk is None:
        raise ValueError(
            f"tasks {dense} are dense (one prediction per pixel) and need an image encoder; "
            "run config 'encoder' valid here: 'cnn', 'resnet'"
        )
    with torch.no_grad():
        probe = torch.zeros(1, *trunk.image_shape)
        _, feature_map = image_features(trunk.blocks, probe, vector=False, feature_map=True)
    return tuple(feature_map.shape[1:]), tuple(trunk.image_shape[1:])


def features_with_maps(model: MultiTaskModel, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per task: the vector its head reads (as `MultiTaskModel.features` computes it), or
    for a dense task the feature map, from one pass through the shared blocks:
    - hps: the encoder's map;
    - MMoE: the experts' maps mixed by the task's gate;
    - MTAN: the task's attention-masked features after all but the last block, carried
      through the last block's convolutions;
    - cross-stitch: the task's column's map before the last unit (units mix vectors)."""
    encoder, heads, tasks = model.encoder, list(model.heads), model.tasks
    vector = any(not tasks[t].is_dense for t in heads)
    trunk = image_trunk(encoder)
    if trunk is None:  # refused at build time; kept for a model assembled by hand
        raise ValueError("dense tasks need an image encoder")
    img = x.reshape(-1, *trunk.image_shape)
    out: dict[str, torch.Tensor] = {}
    if hasattr(encoder, "columns"):  # cross-stitch
        inputs = [img] * len(encoder.columns)
        for k, unit in enumerate(encoder.stitch[:-1]):
            outs = [col.blocks[k](h) for col, h in zip(encoder.columns, inputs, strict=True)]
            inputs = list(unit(torch.stack(outs, dim=-1)).unbind(-1))
        parts = [last_block_parts(col.blocks[-1]) for col in encoder.columns]
        maps = [to_map(h) for (to_map, _), h in zip(parts, inputs, strict=True)]
        if vector:
            vecs = [to_vec(m) for (_, to_vec), m in zip(parts, maps, strict=True)]
            mixed = encoder.stitch[-1](torch.stack(vecs, dim=-1)).unbind(-1)
        for t in heads:
            i = encoder.tasks.index(t)
            out[t] = maps[i] if tasks[t].is_dense else mixed[i]
        return out
    if hasattr(encoder, "experts"):  # MMoE
        pairs = [
            image_features(e.blocks, img, vector=vector, feature_map=True) for e in encoder.experts
        ]
        maps = torch.stack([m for _, m in pairs], dim=1)
        vecs = torch.stack([v for v, _ in pairs], dim=1) if vector else None
        flat = x.flatten(1)
        for t in heads:
            gate = torch.softmax(model.gates[t](flat), dim=-1)
            if tasks[t].is_dense:
                out[t] = (gate[:, :, None, None, None] * maps).sum(dim=1)
            else:
                out[t] = (gate.unsqueeze(-1) * vecs).sum(dim=1)
        return out
    if hasattr(encoder, "trunk"):  # MTAN
        outs, h = [], img
        for block in trunk.blocks[:-1]:
            h = block(h)
            outs.append(h)
        to_map, to_vec = last_block_parts(trunk.blocks[-1])
        shared_map = to_map(h)
        if vector:
            outs.append(to_vec(shared_map))
        for t in heads:
            if not tasks[t].is_dense:
                out[t] = model._attend(t, outs)
            elif len(trunk.blocks) > 1:
                out[t] = to_map(model._attend(t, outs[: len(trunk.blocks) - 1]))
            else:
                out[t] = shared_map
        return out
    vec, feature_map = image_features(encoder.blocks, img, vector=vector, feature_map=True)
    return {t: feature_map if tasks[t].is_dense else vec for t in heads}
