"""Tests of the synthetic shapes generator (cam_callbacks.datasets.shapes)."""

from __future__ import annotations

import doctest
import math
import time

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from cam_callbacks.datasets import shapes as synthetic
from cam_callbacks.datasets.shapes import (
    BACKGROUND_MAX,
    OBJECT_MIN_PEAK,
    SHAPE_NAMES,
    SHAPES_MEAN,
    SHAPES_STD,
    ShapesDataset,
    draw_shape,
    make_shape_image,
    make_shapes,
    normalize,
    shape_mask,
    unnormalize,
)


@pytest.fixture(scope="module")
def batch():
    return make_shapes(200, image_size=48, num_classes=5, seed=3)


# ---------------------------------------------------------------- independent NumPy geometry
def _pixel_centres(size: int):
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float64)
    return cols, rows  # x = column, y = row


def _to_screen(points_up, center, angle):
    """Rotate (u, v) points (v up) counter-clockwise by angle and map to screen coordinates (y down)."""
    c, s = math.cos(angle), math.sin(angle)
    return [(center[0] + c * u - s * v, center[1] - (s * u + c * v)) for u, v in points_up]


def _convex_polygon(size, vertices_screen):
    """Inside test for a convex polygon from its vertices; also the distance of each pixel to the boundary."""
    x, y = _pixel_centres(size)
    # vertices are counter-clockwise in the y-up frame, i.e. clockwise on screen: use the y-up frame
    pts = [(vx, -vy) for vx, vy in vertices_screen]
    X, Y = x, -y
    inside = np.ones_like(x, dtype=bool)
    distance = np.full_like(x, np.inf)
    for k in range(len(pts)):
        (ax, ay), (bx, by) = pts[k], pts[(k + 1) % len(pts)]
        ex, ey = bx - ax, by - ay
        cross = (ex * (Y - ay) - ey * (X - ax)) / math.hypot(ex, ey)  # signed distance, > 0 inside (left of edge)
        inside &= cross >= 0
        distance = np.minimum(distance, np.abs(cross))
    return inside, distance


def _reference_mask(shape, size, center, r, angle):
    """``(mask, near_boundary)`` computed in float64 NumPy from the shape's vertices / radii."""
    x, y = _pixel_centres(size)
    eps = 1e-3
    if shape in ("disc", "ring"):
        d = np.hypot(x - center[0], y - center[1])
        mask = d <= r
        near = np.abs(d - r) < eps
        if shape == "ring":
            mask &= d >= 0.55 * r
            near |= np.abs(d - 0.55 * r) < eps
        return mask, near
    if shape == "square":
        vertices = [(r * math.cos(math.pi / 4 + k * math.pi / 2), r * math.sin(math.pi / 4 + k * math.pi / 2)) for k in range(4)]
        mask, distance = _convex_polygon(size, _to_screen(vertices, center, angle))
        return mask, distance < eps
    if shape == "triangle":
        vertices = [(r * math.cos(math.pi / 2 + 2 * math.pi * k / 3), r * math.sin(math.pi / 2 + 2 * math.pi * k / 3)) for k in range(3)]
        mask, distance = _convex_polygon(size, _to_screen(vertices, center, angle))
        return mask, distance < eps
    if shape == "cross":
        w = 0.3 * r
        bar_u = [(-r, -w), (r, -w), (r, w), (-r, w)]
        bar_v = [(-w, -r), (w, -r), (w, r), (-w, r)]
        m1, d1 = _convex_polygon(size, _to_screen(bar_u, center, angle))
        m2, d2 = _convex_polygon(size, _to_screen(bar_v, center, angle))
        return m1 | m2, (d1 < eps) | (d2 < eps)
    raise AssertionError(shape)


# ---------------------------------------------------------------- shapes, dtypes, ranges
def test_batch_shapes_dtypes_and_ranges(batch):
    n, size = 200, 48
    assert batch.images.shape == (n, 3, size, size) and batch.images.dtype == torch.float32
    assert batch.labels.shape == (n,) and batch.labels.dtype == torch.long
    assert batch.masks.shape == (n, size, size) and batch.masks.dtype == torch.bool
    assert batch.centers.shape == (n, 2) and batch.sizes.shape == (n,) and batch.angles.shape == (n,)
    assert batch.colors.shape == (n, 3)
    assert len(batch) == n
    assert torch.isfinite(batch.images).all()
    assert batch.images.min() >= 0.0 and batch.images.max() <= 1.0
    assert batch.labels.min() >= 0 and batch.labels.max() < 5
    # every object is visible and lies fully inside the image (its circumscribed circle does)
    assert (batch.masks.flatten(1).sum(1) > 10).all()
    r = batch.sizes
    assert (batch.centers[:, 0] - r >= 0).all() and (batch.centers[:, 0] + r <= size - 1).all()
    assert (batch.centers[:, 1] - r >= 0).all() and (batch.centers[:, 1] + r <= size - 1).all()
    assert (r >= 0.15 * size).all() and (r <= 0.31 * size).all()


def test_empty_and_single_image():
    empty = make_shapes(0, image_size=16)
    assert empty.images.shape == (0, 3, 16, 16) and empty.labels.shape == (0,) and empty.masks.shape == (0, 16, 16)
    one = make_shapes(1, image_size=16)
    assert one.images.shape == (1, 3, 16, 16)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_images": 2, "num_classes": 0}, "num_classes"),
        ({"num_images": 2, "num_classes": len(SHAPE_NAMES) + 1}, "num_classes"),
        ({"num_images": 2, "image_size": 4}, "image_size"),
        ({"num_images": -1}, "num_images"),
        ({"num_images": 2, "seed": -1}, "seed"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_shapes(**kwargs)


def test_unknown_shape_lists_choices():
    with pytest.raises(ValueError, match="disc"):
        shape_mask("hexagon", 16, (8.0, 8.0), 4.0)


# ---------------------------------------------------------------- determinism
def test_same_seed_same_images():
    a = make_shapes(20, image_size=32, seed=5)
    b = make_shapes(20, image_size=32, seed=5)
    for field in ("images", "labels", "masks", "centers", "sizes", "angles", "colors"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field


def test_different_seeds_differ():
    a = make_shapes(20, image_size=32, seed=0)
    b = make_shapes(20, image_size=32, seed=1)
    assert not torch.equal(a.images, b.images)
    # no image of one seed reappears in the other (seed/index mixing, e.g. (0, 1) vs (1, 0))
    distance = torch.cdist(a.images.flatten(1), b.images.flatten(1))
    assert distance.min() > 1.0


def test_images_within_a_batch_differ(batch):
    flat = batch.images.flatten(1)
    distance = torch.cdist(flat, flat) + torch.eye(len(flat)) * 1e9
    assert distance.min() > 1.0


def test_image_depends_only_on_seed_and_index():
    whole = make_shapes(12, image_size=32, seed=2)
    pieces = [make_shapes(5, image_size=32, seed=2, start=0), make_shapes(7, image_size=32, seed=2, start=5)]
    assert torch.equal(torch.cat([p.images for p in pieces]), whole.images)
    assert torch.equal(torch.cat([p.masks for p in pieces]), whole.masks)
    image, label, mask, center, size, angle, color = make_shape_image(7, image_size=32, seed=2)
    assert torch.equal(image, whole.images[7]) and label == int(whole.labels[7]) and torch.equal(mask, whole.masks[7])
    assert torch.allclose(torch.tensor(center), whole.centers[7]) and math.isclose(size, float(whole.sizes[7]), rel_tol=1e-6)
    assert torch.equal(color, whole.colors[7])


def test_global_rng_and_thread_count_untouched():
    torch.manual_seed(123)
    expected = torch.rand(5)
    threads = torch.get_num_threads()
    torch.manual_seed(123)
    make_shapes(10, image_size=16, seed=0)
    assert torch.equal(torch.rand(5), expected)
    assert torch.get_num_threads() == threads


# ---------------------------------------------------------------- masks and drawing
@pytest.mark.slow
def test_object_pixels_have_the_object_colour_and_nothing_else_does(batch):
    for i in range(len(batch)):
        image, mask, color = batch.images[i], batch.masks[i], batch.colors[i]
        assert torch.equal(image[:, mask], color[:, None].expand(-1, int(mask.sum())))
        outside = image[:, ~mask]
        assert not (outside == color[:, None]).all(dim=0).any()
        # backgrounds are darker than every object (brightest channel), so the object always stands out
        assert outside.max() <= BACKGROUND_MAX
        assert color.max() >= OBJECT_MIN_PEAK - 1e-6


def test_disc_mask_matches_numpy_distance_to_centre(batch):
    discs = (batch.labels == SHAPE_NAMES.index("disc")).nonzero().flatten().tolist()
    assert len(discs) >= 10
    cols, rows = np.meshgrid(np.arange(48), np.arange(48))
    for i in discs:
        cx, cy = batch.centers[i].double().tolist()
        r = float(batch.sizes[i])
        expected = (cols - cx) ** 2 + (rows - cy) ** 2 <= r**2
        got = batch.masks[i].numpy()
        borderline = np.abs(np.hypot(cols - cx, rows - cy) - r) < 1e-3
        assert np.array_equal(got[~borderline], expected[~borderline]), f"image {i}"
        # the object colour is exactly where the disc is
        colour = batch.colors[i].numpy()[:, None, None]
        is_colour = np.all(batch.images[i].numpy() == colour, axis=0)
        assert np.array_equal(is_colour[~borderline], expected[~borderline])


@pytest.mark.parametrize("shape", SHAPE_NAMES)
def test_every_shape_matches_numpy_geometry(batch, shape):
    index = SHAPE_NAMES.index(shape)
    chosen = (batch.labels == index).nonzero().flatten().tolist()
    assert chosen, f"no {shape} in the batch"
    for i in chosen:
        center = tuple(batch.centers[i].double().tolist())
        expected, near = _reference_mask(shape, 48, center, float(batch.sizes[i]), float(batch.angles[i]))
        got = batch.masks[i].numpy()
        assert np.array_equal(got[~near], expected[~near]), f"{shape} image {i}: {int((got != expected).sum())} pixels differ"


def test_shape_areas_match_geometry():
    """Large shapes: pixel counts approach the analytic areas (a check of the size convention)."""
    size, r = 200, 80.0
    center = (99.5, 99.5)
    areas = {
        "disc": math.pi * r**2,
        "square": 2 * r**2,
        "triangle": 3 * math.sqrt(3) / 4 * r**2,
        "cross": 2 * (2 * r) * (0.6 * r) - (0.6 * r) ** 2,
        "ring": math.pi * r**2 * (1 - 0.55**2),
    }
    for shape, area in areas.items():
        count = int(shape_mask(shape, size, center, r, angle=0.3).sum())
        assert abs(count - area) / area < 0.02, shape


def test_rotation_convention():
    """angle=0: the triangle's apex points up; angle=pi/2 (counter-clockwise on screen): it points left."""
    up = shape_mask("triangle", 41, (20.0, 20.0), 15.0, angle=0.0)
    rows = up.any(dim=1).nonzero().flatten()
    top_width = int(up[rows[0]].sum())
    bottom_width = int(up[rows[-1]].sum())
    assert top_width < bottom_width
    left = shape_mask("triangle", 41, (20.0, 20.0), 15.0, angle=math.pi / 2)
    cols = left.any(dim=0).nonzero().flatten()
    assert int(left[:, cols[0]].sum()) < int(left[:, cols[-1]].sum())


def test_draw_shape_in_place_and_mask_union():
    image = torch.zeros(3, 32, 32)
    mask = torch.zeros(32, 32, dtype=torch.bool)
    red, green = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    first = draw_shape(image, mask, "disc", (8.0, 8.0), 5.0, red)
    second = draw_shape(image, mask, "square", (22.0, 22.0), 6.0, green, angle=0.4)
    assert torch.equal(mask, first | second)
    assert (image[0][first] == 1.0).all() and (image[1][second] == 1.0).all()
    assert (image[:, ~mask] == 0).all()


def test_backgrounds_are_textured(batch):
    """No trivially uniform background: the background pixels of each image vary."""
    for i in range(0, len(batch), 10):
        background = batch.images[i][:, ~batch.masks[i]]
        assert background.std(dim=1).mean() > 0.02


def test_labels_are_balanced():
    labels = make_shapes(2000, image_size=8, num_classes=4, seed=0).labels
    counts = torch.bincount(labels, minlength=4)
    assert counts.sum() == 2000
    assert (counts > 400).all() and (counts < 600).all(), counts.tolist()
    five = make_shapes(500, image_size=8, num_classes=5, seed=1).labels
    assert set(five.tolist()) == set(range(5))
    two = make_shapes(100, image_size=8, num_classes=2, seed=1).labels
    assert set(two.tolist()) == {0, 1}


def test_mean_std_constants_match_the_data():
    images = make_shapes(600, image_size=32, num_classes=4, seed=11).images
    mean = images.mean(dim=(0, 2, 3))
    std = images.std(dim=(0, 2, 3))
    assert torch.allclose(mean, torch.tensor(SHAPES_MEAN), atol=0.01)
    assert torch.allclose(std, torch.tensor(SHAPES_STD), atol=0.01)


def test_generation_speed():
    start = time.perf_counter()
    make_shapes(2000, image_size=64, num_classes=4, seed=0)
    assert time.perf_counter() - start < 5.0


# ---------------------------------------------------------------- dataset
def test_dataset_indexing_is_deterministic_and_matches_make_shapes():
    a = ShapesDataset(24, image_size=32, num_classes=4, seed=9)
    b = ShapesDataset(24, image_size=32, num_classes=4, seed=9)
    reference = make_shapes(24, image_size=32, num_classes=4, seed=9)
    assert len(a) == 24
    for i in (0, 5, 23, -1):
        (xa, ya), (xb, yb) = a[i], b[i]
        assert torch.equal(xa, xb) and ya == yb
        assert isinstance(ya, int) and xa.dtype == torch.float32 and xa.shape == (3, 32, 32)
        assert torch.allclose(xa, normalize(reference.images[i]), atol=1e-6)
        assert torch.allclose(unnormalize(xa), reference.images[i], atol=1e-6)
        assert ya == int(reference.labels[i])
    assert torch.equal(a.masks, reference.masks) and torch.equal(a.labels, reference.labels)
    assert a.class_names == SHAPE_NAMES[:4]


def test_dataset_normalisation_and_copies():
    data = ShapesDataset(50, image_size=32, seed=4)
    x = torch.stack([data[i][0] for i in range(len(data))])
    assert abs(float(x.mean())) < 0.3 and 0.7 < float(x.std()) < 1.3
    x0 = data[0][0]
    x0.zero_()  # samples are copies: modifying one does not change the dataset
    assert not torch.equal(data[0][0], x0)
    raw = ShapesDataset(5, image_size=32, seed=4, normalize=False)
    assert torch.equal(raw[2][0], make_shapes(5, image_size=32, seed=4).images[2])


def test_dataset_index_errors():
    data = ShapesDataset(3, image_size=16)
    with pytest.raises(IndexError):
        data[3]
    with pytest.raises(IndexError):
        data[-4]


def test_dataset_in_a_dataloader():
    data = ShapesDataset(10, image_size=16, seed=0)
    images, labels = next(iter(DataLoader(data, batch_size=4)))
    assert images.shape == (4, 3, 16, 16) and labels.dtype == torch.long
    assert torch.equal(labels, data.labels[:4])


def test_train_and_val_seeds_give_disjoint_images():
    train = ShapesDataset(50, image_size=16, seed=0)
    val = ShapesDataset(20, image_size=16, seed=1)
    distance = torch.cdist(val.batch.images.flatten(1), train.batch.images.flatten(1))
    assert distance.min() > 0.5


def test_docstring_examples():
    result = doctest.testmod(synthetic, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 5 and result.failed == 0
