"""Scenes: small synthetic images for dense multi-task learning (segmentation, depth and
scene-level tasks from one image), built as a `Pool`.

A scene is a textured, coloured floor seen in perspective with one to four shapes (circle,
square, triangle) standing on it:

- Floor: one sinusoidal stripe texture per scene (random frequency, orientation and phase)
  modulating a dim, weakly saturated colour. Its depth is a ground plane that grows
  linearly from `FLOOR_NEAR` on the bottom row to `FLOOR_FAR` on the top row; the texture
  never enters the depth map, so depth cannot be read off the stripes.
- Shapes: a random centre, size (3-8 px at 32x32, scaled with the image), saturated colour
  and a constant depth: each stands on the floor, at a random 0.8-0.95 times the floor
  depth of its base row (the lowest row it reaches, where the floor is nearest), so it is in
  front of the floor wherever it is drawn, its depth is seen where it meets the floor, and
  no two shapes share a depth. Each pixel shows the front-most surface (painter's order, far
  to near), and the segmentation and depth maps follow that occlusion exactly. A shape's
  colour is random (any hue, whatever its class) and shaded by a linear gradient, ±20 % per
  radius along the scene's light direction, so colour does not give the class: the outline
  does.
- Tasks: per-pixel segmentation (0 floor, 1 circle, 2 square, 3 triangle), per-pixel depth,
  the number of shapes with at least one visible pixel (`count`, a shape can be hidden
  completely behind a nearer one), and the presence of each shape class (at least one
  visible pixel of it).

Clients differ in scene statistics through their style group (`natural_group`, example i
is in group i % num_groups, so the groups are interleaved and as equal in size as
possible). Group g's style is drawn from (seed, g) alone, whatever the number of examples
(`scene_style`): (a) a lighting gain in [0.6, 1.3], a bias in [-0.08, 0.08] and a colour
tint in [0.85, 1.15] per channel, applied to the whole image (brightness, contrast and
colour cast of a client's camera), and (b) shape frequencies, a probability vector over
`SHAPES` drawn from Dirichlet(1, 1, 1), from which every shape's class is drawn (label skew
of the presence tasks and of the segmentation classes).

`partition_by` is the shape class (0 circle, 1 square, 2 triangle) covering the most
visible pixels in the scene, so Dirichlet/shard partitioners skew the dominant shape; a
scene without a visible shape would get 0, though every scene shows at least its nearest
shape (its centre lies inside the image).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from common.tasks import TaskSpec

if TYPE_CHECKING:
    from common.datasets import Pool

SCENE_SIZE = 32
SHAPES = ("circle", "square", "triangle")
MAX_SHAPES = 4
# Ground plane: depth on the bottom and top rows.
FLOOR_NEAR = 2.0
FLOOR_FAR = 8.0
# Fixed normalisation constants, written down rather than computed at run time so that no
# statistic of any split flows into training. Depth: the per-pixel mean and std over 20 000
# scenes at 32x32 (seeds 0-2, 2-6 groups) are 4.68-4.70 and 1.86 (the floor alone, uniform
# from 2 to 8, has mean 5 and std 1.73; the shapes in front pull the mean down). Count: one to
# four shapes drawn uniformly have mean 2.5 and std 1.12, and complete occlusion hides about
# one shape in sixty (measured mean 2.45-2.46, std 1.10), so the nominal 2.5 and 1.1.
SCENES_TASKS: list[TaskSpec] = [
    TaskSpec("segmentation", "segmentation", num_classes=1 + len(SHAPES)),
    TaskSpec("depth", "depth", offset=4.7, scale=1.85),
    TaskSpec("count", "regression", offset=2.5, scale=1.1),
    TaskSpec("circle", "binary", 2),
    TaskSpec("square", "binary", 2),
    TaskSpec("triangle", "binary", 2),
]

# Distinct streams of `np.random.default_rng` entropy: the scenes of a pool, and each group's
# style (so that a style depends on the seed and the group only).
_SCENE_STREAM = 1
_STYLE_STREAM = 2
# Scenes rendered at once: bounds the (chunk, MAX_SHAPES, size, size) work arrays.
_CHUNK = 256


@dataclass(frozen=True)
class SceneStyle:
    """The statistics of one style group: `gain`, `bias` and `tint` map every pixel to
    clip(gain * tint[channel] * value + bias, 0, 1); `shape_probs` are the frequencies of
    the shape classes."""

    gain: float
    bias: float
    tint: np.ndarray  # (3,)
    shape_probs: np.ndarray  # (len(SHAPES),), sums to 1


def scene_style(seed: int, group: int) -> SceneStyle:
    """Group `group`'s style, a function of (seed, group) alone: the same group looks the same
    in pools of any size and any number of groups."""
    rng = np.random.default_rng([seed, _STYLE_STREAM, group])
    return SceneStyle(
        gain=float(rng.uniform(0.6, 1.3)),
        bias=float(rng.uniform(-0.08, 0.08)),
        tint=rng.uniform(0.85, 1.15, size=3),
        shape_probs=rng.dirichlet(np.ones(len(SHAPES))),
    )


def floor_depth(size: int) -> np.ndarray:
    """Depth of the ground plane on each row, (size,): `FLOOR_FAR` on row 0 (the top),
    `FLOOR_NEAR` on the bottom row."""
    height = np.arange(size)[::-1] / max(size - 1, 1)  # 1 on top, 0 at the bottom
    return FLOOR_NEAR + (FLOOR_FAR - FLOOR_NEAR) * height


def scenes(num_examples: int, seed: int, num_groups: int, size: int = SCENE_SIZE) -> Pool:
    """`num_examples` scenes of `size` x `size` pixels in `num_groups` style groups.

    A pure function of its arguments: every random draw comes from `np.random.default_rng`
    seeded by (seed, stream), and all of a scene's parameters are drawn up front for the
    whole pool, so the chunked rendering does not change the result.
    """
    if num_examples < 0:
        raise ValueError(f"scenes: num_examples must be >= 0, got {num_examples}")
    if num_groups < 1:
        raise ValueError(f"scenes: num_groups must be >= 1, got {num_groups}")
    if size < 8:
        raise ValueError(f"scenes: size must be >= 8, got {size}")
    if seed < 0:
        raise ValueError(f"scenes: seed must be >= 0, got {seed}")
    # Imported here so that `common.datasets` can import this module at its top.
    from common.datasets import Pool

    styles = [scene_style(seed, g) for g in range(num_groups)]
    group = np.arange(num_examples, dtype=np.int64) % num_groups
    params = _draw_scenes(np.random.default_rng([seed, _SCENE_STREAM]), group, styles, size)

    x = np.empty((num_examples, 3, size, size), np.float32)
    seg = np.empty((num_examples, size, size), np.int64)
    depth = np.empty((num_examples, size, size), np.float32)
    visible = np.empty((num_examples, MAX_SHAPES), bool)
    gain = np.array([s.gain for s in styles])[group]
    bias = np.array([s.bias for s in styles])[group]
    tint = np.array([s.tint for s in styles])[group]
    for start in range(0, num_examples, _CHUNK):
        rows = slice(start, min(start + _CHUNK, num_examples))
        image, seg[rows], depth[rows], visible[rows] = _render(
            {k: v[rows] for k, v in params.items()}, size
        )
        lit = gain[rows, None, None, None] * tint[rows, :, None, None] * image
        x[rows] = np.clip(lit + bias[rows, None, None, None], 0.0, 1.0)

    areas = np.stack([(seg == c + 1).sum(axis=(1, 2)) for c in range(len(SHAPES))], axis=1)
    present = areas > 0
    return Pool(
        x=x,
        y={
            "segmentation": seg,
            "depth": depth,
            "count": visible.sum(axis=1).astype(np.float32),
            **{name: present[:, c].astype(np.int64) for c, name in enumerate(SHAPES)},
        },
        tasks=list(SCENES_TASKS),
        partition_by=areas.argmax(axis=1).astype(np.int64),  # 0 where no shape is visible
        natural_group=group,
        group_names=[f"style{g}" for g in range(num_groups)],
    )


def _draw_scenes(
    rng: np.random.Generator, group: np.ndarray, styles: list[SceneStyle], size: int
) -> dict[str, np.ndarray]:
    """Every random parameter of every scene, (n, ...) arrays; slots at or beyond a scene's
    shape count are drawn too (and not rendered), so the draws have fixed shapes."""
    n, slots = len(group), (len(group), MAX_SHAPES)
    # Shape classes by inverse CDF of the scene's group frequencies.
    cdf = np.cumsum([s.shape_probs for s in styles], axis=1)[group]
    kind = (rng.random(slots)[:, :, None] > cdf[:, None, :-1]).sum(axis=2)
    scale = size / SCENE_SIZE
    radius = rng.uniform(3.0, 8.0, slots) * scale
    cx = rng.uniform(0.12, 0.88, slots) * size
    cy = rng.uniform(0.12, 0.88, slots) * size
    # A shape stands on the floor: its depth is a random 0.8-0.95 of the floor depth at its
    # base, the lowest pixel row it can cover (the floor is nearest there), so the whole
    # shape is in front of the floor, its depth can be read off where it meets the floor,
    # and no two shapes share a depth (each visible shape is one level of the depth map).
    below = np.where(kind == 1, 0.9, 1.0) * radius  # square: half-side 0.9 r; else r
    base = np.clip(np.floor(cy + below - 0.5), 0, size - 1).astype(np.int64)
    depth = rng.uniform(0.8, 0.95, slots) * floor_depth(size)[base]
    return {
        "active": np.arange(MAX_SHAPES) < rng.integers(1, MAX_SHAPES + 1, n)[:, None],
        "kind": kind,
        "radius": radius,
        "cx": cx,
        "cy": cy,
        "depth": depth,
        "colour": _hsv_to_rgb(
            rng.random(slots), rng.uniform(0.6, 1.0, slots), rng.uniform(0.8, 1.0, slots)
        ),
        "light": rng.uniform(0.0, 2 * np.pi, n),
        "floor_colour": _hsv_to_rgb(
            rng.random(n), rng.uniform(0.0, 0.35, n), rng.uniform(0.15, 0.4, n)
        ),
        "stripe_freq": rng.uniform(1.5, 6.0, n),
        "stripe_angle": rng.uniform(0.0, np.pi, n),
        "stripe_phase": rng.uniform(0.0, 2 * np.pi, n),
    }


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """RGB in [0, 1], shape (..., 3), of HSV colours with every component in [0, 1]."""
    k = (np.array([5.0, 3.0, 1.0]) + h[..., None] * 6.0) % 6.0
    ramp = np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)
    return v[..., None] * (1.0 - s[..., None] * ramp)


def _render(
    p: dict[str, np.ndarray], size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Image before the group's lighting (c, 3, H, W), segmentation (c, H, W), depth
    (c, H, W) and which shape slots have a visible pixel (c, MAX_SHAPES) of a chunk."""
    n = len(p["light"])
    scene = np.arange(n)[:, None, None]
    coords = (np.arange(size) + 0.5).astype(np.float32)  # pixel centres
    xx, yy = coords[None, None, :], coords[None, :, None]

    # Floor: stripes along a random direction, texture in the colour only.
    angle = p["stripe_angle"][:, None, None]
    along = np.cos(angle) * xx + np.sin(angle) * yy
    stripes = 0.5 + 0.5 * np.sin(
        2 * np.pi * p["stripe_freq"][:, None, None] * along / size
        + p["stripe_phase"][:, None, None]
    )
    image = p["floor_colour"][:, :, None, None] * (0.6 + 0.4 * stripes[:, None])

    # Masks of the drawn slots, (c, MAX_SHAPES, H, W); each class's test is evaluated only
    # on the slots of that class.
    mask = np.zeros((n, MAX_SHAPES, size, size), bool)
    for k in range(len(SHAPES)):
        rows, slots = np.nonzero(p["active"] & (p["kind"] == k))
        r = p["radius"][rows, slots][:, None, None]
        dx = xx - p["cx"][rows, slots][:, None, None]
        dy = yy - p["cy"][rows, slots][:, None, None]
        if k == 0:
            inside = dx**2 + dy**2 <= r**2
        elif k == 1:
            inside = (np.abs(dx) <= 0.9 * r) & (np.abs(dy) <= 0.9 * r)
        else:  # upright triangle: apex 1.2 r above the centre, base r below it, 2.6 r wide
            inside = (dy <= r) & (np.abs(dx) <= 1.3 * (dy + 1.2 * r) / 2.2)
        mask[rows, slots] = inside

    # Painter's order: the slots far to near, each nearer one over what is drawn so far.
    front = np.full((n, size, size), -1, np.int64)  # slot shown at each pixel, -1: floor
    for slot in np.argsort(-p["depth"], axis=1).T:
        front = np.where(mask[np.arange(n), slot], slot[:, None, None], front)
    covered = front >= 0
    # Each pixel's slot as a flat index into the chunk's (n * MAX_SHAPES) slots.
    at = scene * MAX_SHAPES + np.maximum(front, 0)

    def shown(values: np.ndarray) -> np.ndarray:
        return values.reshape(n * MAX_SHAPES, *values.shape[2:])[at]

    seg = np.where(covered, shown(p["kind"]) + 1, 0)
    floor = floor_depth(size)[None, :, None]
    depth = np.where(covered, shown(p["depth"]), floor).astype(np.float32)
    # Slot j of scene i is visible where some pixel shows it: count (i, j + 1) pairs.
    pairs = np.bincount(
        (scene * (MAX_SHAPES + 1) + front + 1).ravel(), minlength=n * (MAX_SHAPES + 1)
    )
    visible = pairs.reshape(n, MAX_SHAPES + 1)[:, 1:] > 0

    # Shading: brightness falls linearly along the light direction across each shape.
    light = p["light"][:, None, None]
    cx, cy, radius = shown(p["cx"]), shown(p["cy"]), shown(p["radius"])
    toward = (np.cos(light) * (xx - cx) + np.sin(light) * (yy - cy)) / radius
    shade = np.clip(1.0 - 0.2 * toward, 0.6, 1.4)
    shaded = np.stack([shown(p["colour"][..., ch]) for ch in range(3)], axis=1) * shade[:, None]
    image = np.where(covered[:, None], shaded, image)
    return image, seg, depth, visible
