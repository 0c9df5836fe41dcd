"""Models: a shared encoder, one private head per task, and the multi-task model around them.

Parameter names follow one scheme that the rest of the code relies on:
`encoder.blocks.<k>.*` (shared, k = block index), `heads.<task>.*` (private), and, for the
architectures and algorithms that need them, `gates.<task>.*` (MMoE, private) and
`global_heads.<task>.*` (generic heads federated per task). `shared_keys` and `task_keys`
below are the only place that decides which of them travel to the server.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from common.dense import DenseHead, dense_geometry, features_with_maps
from common.tasks import TaskSpec

if TYPE_CHECKING:
    from common.config import RunConfig


class MLPEncoder(nn.Module):
    """A stack of Linear+ReLU blocks; block granularity is what partial sharing counts."""

    def __init__(self, input_dim: int, hidden: int, num_blocks: int) -> None:
        super().__init__()
        dims = [input_dim] + [hidden] * num_blocks
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(dims[i], dims[i + 1]), nn.ReLU()) for i in range(num_blocks)
        )
        self.output_dim = hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for block in self.blocks:
            x = block(x)
        return x


class ImageEncoder(nn.Module):
    """An encoder over images given as flat rows: reshaped to `image_shape` (C, H, W), then
    through `blocks` in order (the first `shared-layers` of them may be federated alone)."""

    image_shape: tuple[int, ...]
    blocks: nn.ModuleList

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(-1, *self.image_shape)
        for block in self.blocks:
            x = block(x)
        return x


class CNNEncoder(ImageEncoder):
    """Small CNN for images: `num_blocks` blocks of 3×3 convolution (same padding; 16, 32, 64,
    ... channels) + GroupNorm + ReLU + 2×2 max-pooling (while both sides are at least 2), the
    last block ending with the dense projection to `hidden`. Block granularity is what
    partial sharing counts, as in the MLP. Pooling keeps the projection's fan-in small: on
    MultiDigits, two convolutions without it feed 4096 features to the projection and SGD at
    the default learning rate diverges. GroupNorm, never BatchNorm: DP-SGD and FedAvg break
    on it."""

    def __init__(self, image_shape: tuple[int, int, int], hidden: int, num_blocks: int) -> None:
        super().__init__()
        channels, height, width = image_shape
        blocks = []
        for i in range(num_blocks):
            out = 16 * 2**i
            layers = [nn.Conv2d(channels, out, 3, padding=1), nn.GroupNorm(4, out), nn.ReLU()]
            if height >= 2 and width >= 2:
                layers.append(nn.AvgPool2d(2))
                height, width = height // 2, width // 2
            channels = out
            if i == num_blocks - 1:
                layers += [nn.Flatten(), nn.Linear(channels * height * width, hidden), nn.ReLU()]
            blocks.append(nn.Sequential(*layers))
        self.blocks = nn.ModuleList(blocks)
        self.image_shape = image_shape
        self.output_dim = hidden


def _norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with groups of at least one channel (at most 8 groups): per-example
    statistics, so DP-SGD's per-sample gradients and FedAvg's averaging stay valid."""
    return nn.GroupNorm(math.gcd(8, channels), channels)


class BasicBlock(nn.Module):
    """ResNet's basic block (He et al. 2016): two 3×3 convolutions with GroupNorm and a
    shortcut (a strided 1×1 convolution where the shape changes). The second norm's scale
    starts at zero, so each block starts as the identity: without BatchNorm, this keeps the
    early updates of a deep stack from blowing up (Goyal et al. 2017)."""

    def __init__(self, channels_in: int, channels_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, stride, padding=1, bias=False)
        self.norm1 = _norm(channels_out)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, padding=1, bias=False)
        self.norm2 = _norm(channels_out)
        nn.init.zeros_(self.norm2.weight)
        self.shortcut = nn.Identity()
        if stride != 1 or channels_in != channels_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(channels_in, channels_out, 1, stride, bias=False), _norm(channels_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.norm1(self.conv1(x)))
        return torch.relu(self.norm2(self.conv2(h)) + self.shortcut(x))


class GlobalAveragePool(nn.Module):
    """(N, C, H, W) -> (N, C). A mean, not `AdaptiveAvgPool2d`, whose CUDA backward adds with
    atomics and so refuses to run under `torch.use_deterministic_algorithms(True)`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(-2, -1))


class ResNetStage(nn.Module):
    """One stage of the ResNet, the unit partial sharing counts (`encoder.blocks.<k>`): the
    first stage starts with the stem (3×3 convolution, norm, ReLU), the last ends with global
    average pooling and the dense projection to `hidden`."""

    def __init__(
        self,
        channels_in: int,
        channels_out: int,
        depth: int,
        stride: int,
        *,
        stem: bool,
        hidden: int | None,
    ) -> None:
        super().__init__()
        self.stem = (
            nn.Sequential(
                nn.Conv2d(channels_in, channels_out, 3, padding=1, bias=False),
                _norm(channels_out),
                nn.ReLU(),
            )
            if stem
            else nn.Identity()
        )
        first_in = channels_out if stem else channels_in
        self.units = nn.ModuleList(
            BasicBlock(first_in if i == 0 else channels_out, channels_out, stride if i == 0 else 1)
            for i in range(depth)
        )
        self.head = (
            nn.Sequential(
                GlobalAveragePool(),
                nn.Linear(channels_out, hidden),
                nn.ReLU(),
            )
            if hidden is not None
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for unit in self.units:
            x = unit(x)
        return self.head(x)


class ResNetEncoder(ImageEncoder):
    """A small ResNet for images: `num_blocks` stages of `depth` basic blocks with `width`,
    2·`width`, 4·`width`, ... channels. Every stage after the first halves the resolution
    (a strided first block) while both sides are at least 4, so small inputs (MultiDigits'
    8×16) keep at least 2×2 positions; a CIFAR-style stem (no early downsampling) suits
    inputs from 28×28 up to about 64×64. GroupNorm, never BatchNorm: DP-SGD and FedAvg break
    on it."""

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        hidden: int,
        num_blocks: int,
        depth: int,
        width: int,
    ) -> None:
        super().__init__()
        channels, height, width_px = image_shape
        stages = []
        for k in range(num_blocks):
            out = width * 2**k
            stride = 2 if k > 0 and height >= 4 and width_px >= 4 else 1
            if stride == 2:
                height, width_px = (height + 1) // 2, (width_px + 1) // 2
            last = k == num_blocks - 1
            stages.append(
                ResNetStage(
                    channels, out, depth, stride, stem=k == 0, hidden=hidden if last else None
                )
            )
            channels = out
        self.blocks = nn.ModuleList(stages)
        self.image_shape = image_shape
        self.output_dim = hidden


class MMoEEncoder(nn.Module):
    """Multi-gate mixture of experts (Ma et al. 2018): the experts (each built like the run's
    `encoder`) are the shared part; each task routes through them with its own gate, which
    lives in `MultiTaskModel.gates` and sees the flattened input."""

    def __init__(self, input_dim: int, experts: Sequence[nn.Module]) -> None:
        super().__init__()
        self.input_dim = input_dim
        self.experts = nn.ModuleList(experts)
        self.output_dim = experts[0].output_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Expert outputs stacked: (batch, experts, hidden)."""
        return torch.stack([expert(x) for expert in self.experts], dim=1)


class MTANEncoder(nn.Module):
    """The shared trunk of MTAN (Liu, Johns and Davison, CVPR 2019): the run's encoder, whose
    every block's output p^(j) is handed to the tasks' attention modules. Those modules
    (`MultiTaskModel.attention`) are task-specific and private; the trunk, which also maps
    a task's masked features from one block to the next (the original's shared f^(j),
    here the trunk's own next block), is the shared part."""

    def __init__(self, trunk: nn.Module, input_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.trunk = trunk
        self.output_dim = trunk.output_dim
        with torch.no_grad():
            outs = self.forward(torch.zeros(1, *input_shape))
        self.block_shapes = [tuple(o.shape[1:]) for o in outs]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """p^(1), ..., p^(J): every block's output."""
        if isinstance(self.trunk, ImageEncoder):
            x = x.reshape(-1, *self.trunk.image_shape)
        else:
            x = x.flatten(1)
        outs = []
        for block in self.trunk.blocks:
            x = block(x)
            outs.append(x)
        return outs


class CrossStitchEncoder(nn.Module):
    """Cross-stitch networks (Misra et al., CVPR 2016): one column per task of the data set,
    each built like the run's `encoder`, and after every block a learned T×T unit: column t
    goes on (to its next block, or after the last one to task t's head) with
    Σ_s α[t, s]·(column s's output), as the paper places units after every layer but the
    classifier. Units start at 0.9 on the diagonal and share the rest of each row equally.

    What is shared: all of it. Through the units every column's weights shape every task's
    features, so a client trains all columns, including those of tasks it does not hold,
    and the columns and units together are the federated encoder (T times the size of an
    `hps` encoder, on the wire too). The heads stay as the algorithm says (private under
    fedper)."""

    def __init__(self, columns: Sequence[nn.Module], tasks: Sequence[str]) -> None:
        super().__init__()
        if len(columns) != len(tasks) or len(tasks) < 2:
            raise ValueError("cross-stitch needs one column per task and at least two tasks")
        self.tasks = list(tasks)
        self.columns = nn.ModuleList(columns)
        self.output_dim = columns[0].output_dim
        n = len(tasks)
        init = torch.full((n, n), 0.1 / (n - 1))
        init.fill_diagonal_(0.9)
        # A unit is a bias-free linear map over the column axis (weight[t, s] = α[t, s]):
        # Opacus computes its per-example gradients like any linear layer's.
        self.stitch = nn.ModuleList()
        for _ in range(len(columns[0].blocks)):
            unit = nn.Linear(n, n, bias=False)
            with torch.no_grad():
                unit.weight.copy_(init)
            self.stitch.append(unit)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """{task: its column's last output}."""
        first = self.columns[0]
        x = x.reshape(-1, *first.image_shape) if isinstance(first, ImageEncoder) else x.flatten(1)
        inputs = [x] * len(self.columns)
        for k, unit in enumerate(self.stitch):
            outs = [col.blocks[k](h) for col, h in zip(self.columns, inputs, strict=True)]
            # mix: column t goes on with Σ_s α[t, s] · (column s's output)
            inputs = list(unit(torch.stack(outs, dim=-1)).unbind(-1))
        return dict(zip(self.tasks, inputs, strict=True))


class AttentionMask(nn.Module):
    """One task's soft-attention module at one block: a bottleneck of two 1×1 convolutions
    (feature maps; GroupNorm, never BatchNorm) or two linear layers (vectors), then a
    sigmoid: a mask in (0, 1) the shape of the block's output. `inputs` is 1 for the first
    block (its output alone) and 2 after it (its output and the task's previous masked
    features, mapped through the block)."""

    def __init__(self, shape: tuple[int, ...], inputs: int) -> None:
        super().__init__()
        channels = shape[0]
        middle = max(channels // 4, 4)
        if len(shape) == 3:
            self.net = nn.Sequential(
                nn.Conv2d(inputs * channels, middle, 1),
                _norm(middle),
                nn.ReLU(),
                nn.Conv2d(middle, channels, 1),
                nn.Sigmoid(),
            )
        else:
            self.net = nn.Sequential(
                nn.Linear(inputs * channels, middle),
                nn.ReLU(),
                nn.Linear(middle, channels),
                nn.Sigmoid(),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def make_head(
    spec: TaskSpec, hidden: int, dense: tuple[tuple[int, ...], tuple[int, int]] | None = None
) -> nn.Module:
    """A task's head: two linear layers on the encoder's vector, or for a dense task a
    decoder from the feature map (`dense` = (map shape, image size)) to every pixel."""
    if spec.is_dense:
        if dense is None:
            raise ValueError(f"task '{spec.name}' is dense: its head needs the feature map")
        return DenseHead(dense[0], spec.output_size, dense[1])
    return nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, spec.output_size))


class MultiTaskModel(nn.Module):
    """Encoder + one head per task; `forward` returns {task: output}.

    With `blend_global_heads`, each task also has a generic head (federated across the
    clients that hold the task) whose output is added to the private head's output, as in
    FedRoD: the generic head carries what all clients share, the private head the rest.
    """

    def __init__(
        self,
        encoder: nn.Module,
        tasks: Sequence[TaskSpec],
        *,
        seed: int = 0,
        global_heads: bool = False,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.tasks = {t.name: t for t in tasks}
        hidden = encoder.output_dim
        dense = dense_geometry(encoder, tasks)
        self.heads = nn.ModuleDict(
            {
                t.name: _seeded(seed, f"head:{t.name}", lambda t=t: make_head(t, hidden, dense))
                for t in tasks
            }
        )
        self.gates = nn.ModuleDict()
        if isinstance(encoder, MMoEEncoder):
            n_in, n_exp = encoder.input_dim, len(encoder.experts)
            self.gates = nn.ModuleDict(
                {
                    t.name: _seeded(seed, f"gate:{t.name}", lambda: nn.Linear(n_in, n_exp))
                    for t in tasks
                }
            )
        self.attention = nn.ModuleDict()
        if isinstance(encoder, MTANEncoder):
            shapes = encoder.block_shapes
            self.attention = nn.ModuleDict(
                {
                    t.name: _seeded(
                        seed,
                        f"attention:{t.name}",
                        lambda: nn.ModuleList(
                            AttentionMask(shape, 1 if j == 0 else 2)
                            for j, shape in enumerate(shapes)
                        ),
                    )
                    for t in tasks
                }
            )
        self.global_heads = nn.ModuleDict()
        if global_heads:
            self.global_heads = nn.ModuleDict(
                {
                    t.name: _seeded(
                        seed, f"global:{t.name}", lambda t=t: make_head(t, hidden, dense)
                    )
                    for t in tasks
                }
            )

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-task representation: the encoder output, the task's gated expert mix (MMoE),
        or the task's attention-masked trunk features (MTAN); for a dense task, the feature
        map its head decodes (`common.dense.features_with_maps`)."""
        if any(self.tasks[t].is_dense for t in self.heads):
            return features_with_maps(self, x)
        z = self.encoder(x)
        if isinstance(self.encoder, CrossStitchEncoder):
            return {t: z[t] for t in self.heads}
        if self.attention:
            return {t: self._attend(t, z) for t in self.heads}
        if not self.gates:
            return {t: z for t in self.heads}
        flat = x.flatten(1)
        return {
            t: (torch.softmax(self.gates[t](flat), dim=-1).unsqueeze(-1) * z).sum(dim=1)
            for t in self.heads
        }

    def _attend(self, task: str, outs: list[torch.Tensor]) -> torch.Tensor:
        """â^(1) = a^(1) ⊙ p^(1); â^(j) = a^(j)([p^(j); block_j(â^(j−1))]) ⊙ p^(j), over the
        blocks whose outputs `outs` holds."""
        masks = self.attention[task]
        masked = masks[0](outs[0]) * outs[0]
        for j in range(1, len(outs)):
            carried = self.encoder.trunk.blocks[j](masked)
            masked = masks[j](torch.cat([outs[j], carried], dim=1)) * outs[j]
        return masked

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.features(x)
        out = {t: self.heads[t](feats[t]) for t in self.heads}
        for t, head in self.global_heads.items():
            out[t] = out[t] + head(feats[t])
        return out


def _seeded(seed: int, tag: str, factory: Callable[[], nn.Module]) -> nn.Module:
    """Initialise a per-task module from (seed, tag) so every client that holds a task starts
    from the same head: averaging heads (fedavg) then starts from one point."""
    state = torch.random.get_rng_state()
    torch.manual_seed(seed * 1_000_003 + zlib.crc32(tag.encode()))
    try:
        return factory()
    finally:
        torch.random.set_rng_state(state)


def image_shape(input_shape: tuple[int, ...], encoder: str = "cnn") -> tuple[int, int, int]:
    """(C, H, W) of image inputs given as (H, W) (one channel) or (C, H, W)."""
    if len(input_shape) == 2:
        return (1, input_shape[0], input_shape[1])
    if len(input_shape) == 3:
        return (input_shape[0], input_shape[1], input_shape[2])
    raise ValueError(
        f"run config 'encoder' = '{encoder}' needs image inputs, (H, W) or (C, H, W); this "
        f"dataset's inputs have shape {input_shape}; valid here: 'mlp'"
    )


def _single_encoder(
    encoder: str,
    input_shape: tuple[int, ...],
    hidden: int,
    num_blocks: int,
    resnet: tuple[int, int],
) -> nn.Module:
    """One encoder of kind `encoder` (a whole hps encoder, or one MMoE expert)."""
    if encoder == "cnn":
        return CNNEncoder(image_shape(input_shape, encoder), hidden, num_blocks)
    if encoder == "resnet":
        return ResNetEncoder(image_shape(input_shape, encoder), hidden, num_blocks, *resnet)
    return MLPEncoder(math.prod(input_shape), hidden, num_blocks)


def build_encoder(
    architecture: str,
    encoder: str,
    input_shape: tuple[int, ...],
    hidden: int,
    num_blocks: int,
    num_experts: int,
    seed: int,
    resnet: tuple[int, int] = (2, 16),
    tasks: Sequence[str] = (),
) -> nn.Module:
    """The encoder for a run; seeded so the server and a bare loop build identical weights.
    `mmoe` builds `num_experts` encoders of kind `encoder` as its experts, `cross-stitch`
    one column per task of `tasks` (the data set's). `resnet` is (`resnet-depth`,
    `resnet-width`)."""
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        if architecture == "cross-stitch":
            columns = [
                _single_encoder(encoder, input_shape, hidden, num_blocks, resnet) for _ in tasks
            ]
            return CrossStitchEncoder(columns, tasks)
        if architecture == "mtan":
            trunk = _single_encoder(encoder, input_shape, hidden, num_blocks, resnet)
            return MTANEncoder(trunk, input_shape)
        if architecture == "mmoe":
            experts = [
                _single_encoder(encoder, input_shape, hidden, num_blocks, resnet)
                for _ in range(num_experts)
            ]
            return MMoEEncoder(math.prod(input_shape), experts)
        return _single_encoder(encoder, input_shape, hidden, num_blocks, resnet)
    finally:
        torch.random.set_rng_state(state)


def encoder_for(cfg: RunConfig, input_shape: tuple[int, ...]) -> nn.Module:
    """The run's encoder, as the server, every client and the studies build it."""
    from common.datasets import dataset_tasks

    return build_encoder(
        cfg.architecture,
        cfg.encoder,
        input_shape,
        cfg.hidden,
        cfg.num_blocks,
        cfg.num_experts,
        cfg.seed,
        (cfg.resnet_depth, cfg.resnet_width),
        dataset_tasks(cfg) if cfg.architecture == "cross-stitch" else (),
    )


def encoder_block_of(key: str) -> int | None:
    """Block index of an encoder parameter name (`encoder.blocks.2.0.weight` -> 2), for
    partial sharing; MMoE experts count their blocks the same way."""
    parts = key.split(".")
    if "blocks" in parts:
        return int(parts[parts.index("blocks") + 1])
    return None


def shared_keys(model: nn.Module, *, share_encoder: bool, shared_layers: int) -> list[str]:
    """The one definition of the shared arrays (the `arrays` record every client returns):
    the encoder, or only its first `shared_layers` blocks when that is > 0."""
    if not share_encoder:
        return []
    keys = []
    for key in model.state_dict():
        if key.startswith("encoder."):
            block = encoder_block_of(key)
            if shared_layers <= 0 or (block is not None and block < shared_layers):
                keys.append(key)
    return keys


def task_keys(model: nn.Module, *, share_heads: bool, share_global_heads: bool) -> list[str]:
    """The one definition of the per-task arrays that travel (the `task-arrays` record):
    heads under `fedavg`, generic heads under `fedrod`. MMoE gates, MTAN attention modules
    and private heads never."""
    prefixes = (("heads.",) if share_heads else ()) + (
        ("global_heads.",) if share_global_heads else ()
    )
    return [k for k in model.state_dict() if prefixes and k.startswith(prefixes)]


def task_of(key: str) -> str:
    """`heads.left.0.weight` -> `left`."""
    return key.split(".")[1]


def count_parameters(model: nn.Module, keys: Sequence[str] | None = None) -> int:
    state = model.state_dict()
    return int(sum(state[k].numel() for k in (keys if keys is not None else state)))
