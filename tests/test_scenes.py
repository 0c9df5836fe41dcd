"""Scenes: the synthetic dense multi-task images, their labels and their per-group styles."""

from __future__ import annotations

import numpy as np
import pytest

from common.scenes import (
    FLOOR_FAR,
    FLOOR_NEAR,
    MAX_SHAPES,
    SCENE_SIZE,
    SCENES_TASKS,
    SHAPES,
    _render,
    floor_depth,
    scene_style,
    scenes,
)


@pytest.fixture(scope="module")
def pool():
    """One pool that the label checks share (building it once keeps the file fast)."""
    return scenes(600, seed=3, num_groups=4)


def class_areas(seg: np.ndarray) -> np.ndarray:
    """Visible pixels of each shape class per scene, (n, len(SHAPES))."""
    return np.stack([(seg == c + 1).sum(axis=(1, 2)) for c in range(len(SHAPES))], axis=1)


@pytest.mark.parametrize(("size", "n"), [(16, 30), (SCENE_SIZE, 30), (64, 12)])
def test_arrays_have_the_documented_shapes_dtypes_and_ranges(size: int, n: int) -> None:
    p = scenes(n, seed=0, num_groups=3, size=size)
    assert p.x.shape == (n, 3, size, size) and p.x.dtype == np.float32
    assert p.x.min() >= 0.0 and p.x.max() <= 1.0
    assert p.x.std() > 0.05  # an image, not a constant
    assert p.y["segmentation"].shape == (n, size, size)
    assert p.y["segmentation"].dtype == np.int64
    assert set(np.unique(p.y["segmentation"]).tolist()) <= {0, 1, 2, 3}
    assert p.y["depth"].shape == (n, size, size) and p.y["depth"].dtype == np.float32
    assert p.y["count"].shape == (n,) and p.y["count"].dtype == np.float32
    for name in SHAPES:
        assert p.y[name].shape == (n,) and p.y[name].dtype == np.int64
        assert set(np.unique(p.y[name]).tolist()) <= {0, 1}
    assert set(p.y) == {t.name for t in SCENES_TASKS}
    assert p.tasks == SCENES_TASKS and p.tasks is not SCENES_TASKS
    assert p.input_shape == (3, size, size)
    assert p.natural_group.dtype == np.int64 and p.partition_by.dtype == np.int64
    assert p.partition_by.shape == (n,) and p.fixed_split is None
    # Every scene shows at least its nearest shape, at every size.
    assert (p.y["count"] >= 1).all() and (p.y["count"] <= MAX_SHAPES).all()


def test_task_specs_fit_the_labels() -> None:
    kinds = {t.name: t.kind for t in SCENES_TASKS}
    assert kinds == {
        "segmentation": "segmentation",
        "depth": "depth",
        "count": "regression",
        "circle": "binary",
        "square": "binary",
        "triangle": "binary",
    }
    seg = next(t for t in SCENES_TASKS if t.name == "segmentation")
    assert seg.num_classes == 1 + len(SHAPES)
    # The normalisation constants are written down, but they must still roughly standardise
    # a fresh pool (another seed than the one they were read from).
    p = scenes(800, seed=11, num_groups=3)
    for name in ("depth", "count"):
        spec = next(t for t in SCENES_TASKS if t.name == name)
        z = (p.y[name] - spec.offset) / spec.scale
        assert abs(float(z.mean())) < 0.15 and 0.85 < float(z.std()) < 1.15, name


def test_same_arguments_give_identical_arrays_and_other_seeds_differ() -> None:
    a, b = scenes(50, seed=7, num_groups=3), scenes(50, seed=7, num_groups=3)
    assert a.x.tobytes() == b.x.tobytes()
    for name in a.y:
        assert a.y[name].tobytes() == b.y[name].tobytes(), name
    assert np.array_equal(a.partition_by, b.partition_by)
    assert np.array_equal(a.natural_group, b.natural_group)
    c = scenes(50, seed=8, num_groups=3)
    assert not np.array_equal(a.x, c.x)
    assert not np.array_equal(a.y["segmentation"], c.y["segmentation"])
    assert not np.array_equal(a.y["depth"], c.y["depth"])
    # The scenes themselves are redrawn, not only the group styles: the shape counts of two
    # independent pools agree on about a quarter of the scenes, not on nearly all.
    assert (a.y["count"] == c.y["count"]).mean() < 0.6


def test_group_styles_depend_on_seed_and_group_only() -> None:
    s = scene_style(4, 2)
    again = scene_style(4, 2)
    assert s.gain == again.gain and s.bias == again.bias
    assert np.array_equal(s.tint, again.tint) and np.array_equal(s.shape_probs, again.shape_probs)
    assert s.gain != scene_style(4, 3).gain and s.gain != scene_style(5, 2).gain
    for g in range(20):
        style = scene_style(0, g)
        assert 0.6 <= style.gain <= 1.3 and -0.08 <= style.bias <= 0.08
        assert style.shape_probs.shape == (len(SHAPES),)
        assert np.isclose(style.shape_probs.sum(), 1.0) and (style.shape_probs >= 0).all()
    # The same group in pools of different sizes and group counts: its style is the same, so
    # the brightest pixel value a group reaches (gain and bias at a saturated colour) agrees.
    small = scenes(60, seed=4, num_groups=2)
    large = scenes(300, seed=4, num_groups=5)
    for g in range(2):
        top_small = small.x[small.natural_group == g].max(axis=(0, 2, 3))
        top_large = large.x[large.natural_group == g].max(axis=(0, 2, 3))
        np.testing.assert_allclose(top_small, top_large, atol=0.06)


def test_groups_are_interleaved_equal_in_size_and_named() -> None:
    p = scenes(10, seed=0, num_groups=3)
    assert p.natural_group.tolist() == [0, 1, 2, 0, 1, 2, 0, 1, 2, 0]
    assert np.bincount(p.natural_group).tolist() == [4, 3, 3]
    assert p.group_names == ["style0", "style1", "style2"]
    one = scenes(7, seed=0, num_groups=1)
    assert (one.natural_group == 0).all() and one.group_names == ["style0"]


def test_presence_count_and_partition_agree_with_the_segmentation(pool) -> None:
    seg = pool.y["segmentation"]
    areas = class_areas(seg)
    for c, name in enumerate(SHAPES):
        assert np.array_equal(pool.y[name], (areas[:, c] > 0).astype(np.int64)), name
    count = pool.y["count"]
    assert np.array_equal(count, np.round(count))
    assert (count >= (areas > 0).sum(axis=1)).all()
    assert (count >= 1).all() and (count <= MAX_SHAPES).all()
    assert set(np.unique(count).tolist()) == {1.0, 2.0, 3.0, 4.0}
    assert np.array_equal(pool.partition_by, areas.argmax(axis=1))
    # Every class dominates some scenes, so partitioners have something to skew.
    assert set(pool.partition_by.tolist()) == {0, 1, 2}


def test_the_floor_plane_and_shapes_in_front_of_it(pool) -> None:
    floor = floor_depth(SCENE_SIZE)
    assert floor[0] == FLOOR_FAR and floor[-1] == FLOOR_NEAR
    assert (np.diff(floor) < 0).all()  # farther toward the top of the image
    depth, seg = pool.y["depth"], pool.y["segmentation"]
    assert (depth > 0).all()
    plane = np.broadcast_to(floor.astype(np.float32)[None, :, None], depth.shape)
    on_floor = seg == 0
    # Floor pixels carry the plane's depth exactly: the texture does not leak into depth.
    assert np.array_equal(depth[on_floor], plane[on_floor])
    assert (depth[~on_floor] < plane[~on_floor]).all()
    assert (depth[~on_floor] >= 0.8 * FLOOR_NEAR).all()


def test_each_visible_shape_is_one_depth_level(pool) -> None:
    """Every shape is drawn at its own constant depth and each pixel keeps the front-most
    surface, so the distinct depths on a scene's shape pixels are its visible shapes: exactly
    `count` of them. A count that included completely hidden shapes would exceed it."""
    seg, depth = pool.y["segmentation"], pool.y["depth"]
    levels = np.array([len(np.unique(d[s > 0])) for d, s in zip(depth, seg, strict=True)])
    assert np.array_equal(levels, pool.y["count"])
    assert (levels > 1).mean() > 0.5  # shapes overlap or sit side by side at several depths


def placed(shapes: list[tuple[int, float, float, float, float]]) -> dict[str, np.ndarray]:
    """Parameters of one scene with the given (class, x, y, radius, depth) shapes, in the
    layout that `_render` takes, so that occlusion can be checked on known geometry."""
    slots = len(shapes)
    pad = MAX_SHAPES - slots
    kind, cx, cy, radius, depth = (
        np.array([*col, *[0] * pad])[None] for col in zip(*shapes, strict=True)
    )
    return {
        "active": (np.arange(MAX_SHAPES) < slots)[None],
        "kind": kind.astype(np.int64),
        "radius": radius + (radius == 0),
        "cx": cx,
        "cy": cy,
        "depth": depth,
        "colour": np.full((1, MAX_SHAPES, 3), 0.9),
        "light": np.zeros(1),
        "floor_colour": np.full((1, 3), 0.3),
        "stripe_freq": np.full(1, 3.0),
        "stripe_angle": np.zeros(1),
        "stripe_phase": np.zeros(1),
    }


def test_the_nearest_surface_wins_every_pixel() -> None:
    # A circle in front of an overlapping square: the overlap shows the circle.
    _, seg, depth, visible = _render(placed([(0, 14, 16, 6, 3.0), (1, 20, 16, 6, 5.0)]), 32)
    assert seg[0, 16, 14] == 1 and depth[0, 16, 14] == 3.0
    assert seg[0, 16, 18] == 1  # inside both
    assert seg[0, 16, 24] == 2 and depth[0, 16, 24] == 5.0  # the square alone
    # The same shapes, the square now nearer: it covers the overlap.
    _, seg, depth, _ = _render(placed([(0, 14, 16, 6, 5.0), (1, 20, 16, 6, 3.0)]), 32)
    assert seg[0, 16, 18] == 2 and depth[0, 16, 18] == 3.0
    assert seg[0, 16, 9] == 1 and depth[0, 16, 9] == 5.0
    assert visible[0, :2].all()
    # A small square behind a large circle is hidden completely, and not visible; in front,
    # it is.
    _, seg, _, visible = _render(placed([(0, 16, 16, 8, 2.0), (1, 16, 16, 3, 4.0)]), 32)
    assert not (seg == 2).any() and visible[0].tolist() == [True, False, False, False]
    _, seg, _, visible = _render(placed([(0, 16, 16, 8, 4.0), (1, 16, 16, 3, 2.0)]), 32)
    assert (seg == 2).any() and visible[0, :2].all()


def test_shape_outlines_have_their_areas_and_corners() -> None:
    """A circle covers about πr² pixels, a square (half-side 0.9 r) 3.24 r², the triangle
    (2.2 r high, 2.6 r wide) 2.86 r²; the square alone fills its corners, and the triangle
    points up."""
    r, c = 14.0, 32.0
    masks = []
    for kind, expected in enumerate((np.pi * r**2, (1.8 * r) ** 2, 2.86 * r**2)):
        _, seg, _, _ = _render(placed([(kind, c, c, r, 3.0)]), 64)
        assert set(np.unique(seg).tolist()) == {0, kind + 1}
        assert abs((seg == kind + 1).sum() - expected) < 0.1 * expected, SHAPES[kind]
        masks.append(seg[0] > 0)
    circle, square, triangle = masks
    corner = int(c + 0.8 * r)  # row and column of a pixel near the lower right corner
    assert square[corner, corner] and not circle[corner, corner]
    assert triangle[corner, corner] and not triangle[int(c - 0.8 * r), corner]  # wide base
    widths = triangle.sum(axis=1)
    rows = np.flatnonzero(widths)
    assert widths[rows[0]] < widths[rows[-1]] / 4 and (np.diff(widths[rows]) >= 0).all()


def test_shapes_are_shaded_across_their_area() -> None:
    # Light from the left (angle 0): a shape's pixels darken from left to right.
    image, seg, _, _ = _render(placed([(1, 16, 16, 7, 3.0)]), 32)
    row = image[0, 0, 16][seg[0, 16] == 2]
    assert (np.diff(row) < 0).all() and row[0] > 1.3 * row[-1]


def test_colour_sets_shapes_off_the_floor_but_does_not_give_the_class(pool) -> None:
    pixels = pool.x.transpose(0, 2, 3, 1)
    seg = pool.y["segmentation"]
    floor = pixels[seg == 0]
    per_class = [pixels[seg == c + 1] for c in range(len(SHAPES))]
    means = np.array([p.mean(axis=0) for p in per_class])
    for p in per_class:
        assert p.mean() > floor.mean() + 0.2  # shapes stand out (brighter, saturated)
        assert p.std(axis=0).min() > 0.25  # any hue for any class
    assert np.abs(means[:, None] - means[None]).max() < 0.15


def test_groups_differ_in_brightness_as_their_gains_do() -> None:
    num_groups = 8
    p = scenes(1600, seed=2, num_groups=num_groups)
    styles = [scene_style(2, g) for g in range(num_groups)]
    measured = np.array([p.x[p.natural_group == g].mean() for g in range(num_groups)])
    # A pixel's expected value is gain * mean tint * (unlit mean) + bias, clipping aside.
    unlit = 0.25
    predicted = np.array([s.gain * s.tint.mean() * unlit + s.bias for s in styles])
    assert np.corrcoef(predicted, measured)[0, 1] > 0.9
    gains = np.array([s.gain for s in styles])
    assert gains.max() - gains.min() > 0.3  # the check below compares different gains
    assert measured[gains.argmax()] > measured[gains.argmin()] + 0.05


def test_shape_frequencies_follow_each_groups_dirichlet_draw() -> None:
    num_groups, seed = 4, 1
    p = scenes(4000, seed=seed, num_groups=num_groups)
    shares = []
    for g in range(num_groups):
        probs = scene_style(seed, g).shape_probs
        # One to four shapes, each of class c with probability p_c: a class is drawn at least
        # once with probability mean_k 1 - (1 - p_c)^k (occlusion hides about 1 % of shapes).
        expected = np.mean([1 - (1 - probs) ** k for k in range(1, MAX_SHAPES + 1)], axis=0)
        rows = p.natural_group == g
        observed = np.array([p.y[name][rows].mean() for name in SHAPES])
        np.testing.assert_allclose(observed, expected, atol=0.05)
        shares.append(observed)
    # The groups' draws differ, and so do their label distributions.
    assert np.ptp(np.array(shares), axis=0).max() > 0.2


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="num_groups"):
        scenes(10, seed=0, num_groups=0)
    with pytest.raises(ValueError, match="size"):
        scenes(10, seed=0, num_groups=1, size=4)
    with pytest.raises(ValueError, match="num_examples"):
        scenes(-1, seed=0, num_groups=1)
    empty = scenes(0, seed=0, num_groups=2)
    assert empty.x.shape == (0, 3, SCENE_SIZE, SCENE_SIZE) and len(empty.y["count"]) == 0
