"""Tests of map drift and shortcut detection (cam_callbacks.metrics.drift)."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
import torch

from cam_callbacks.datasets.scenarios import make_scenario
from cam_callbacks.metrics import drift
from cam_callbacks.metrics.drift import (
    class_mean_maps,
    map_correlation,
    mean_map,
    shortcut_score,
)
from cam_callbacks.utils.maps import minmax_normalize


# ---------------------------------------------------------------- helpers and NumPy references
def gaussian_blobs(centers, size: int = 32, sigma: float = 3.0) -> torch.Tensor:
    """Min-max normalised Gaussian blobs, one map per ``(cx, cy)`` centre."""
    coords = torch.arange(size, dtype=torch.float32)
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    c = torch.as_tensor(centers, dtype=torch.float32).view(-1, 2)
    d2 = (x - c[:, 0, None, None]) ** 2 + (y - c[:, 1, None, None]) ** 2
    return minmax_normalize(torch.exp(-d2 / (2 * sigma**2)))


def np_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.zeros(len(a))
    for i in range(len(a)):
        x, y = a[i].ravel().astype(np.float64), b[i].ravel().astype(np.float64)
        if x.std() == 0 or y.std() == 0:
            continue
        out[i] = np.corrcoef(x, y)[0, 1]
    return out


def np_shortcut(maps: np.ndarray, coverage: float = 0.8):
    """Independent float64 implementation of the documented formula."""
    n, h, w = maps.shape
    flat = maps.reshape(n, -1).astype(np.float64)
    p = np.empty_like(flat)
    for i in range(n):
        total = flat[i].sum()
        p[i] = flat[i] / total if total > 0 else 1.0 / (h * w)
    common = np.quantile(p, 1.0 - coverage, axis=0)  # linear interpolation (NumPy's default)
    mass = common.sum()
    shared = min(1.0, mass)
    if mass > 0:
        c = common / mass
        nz = c[c > 0]
        entropy = -(nz * np.log(nz)).sum()
        concentration = max(0.0, 1.0 - math.exp(entropy) / (h * w))
        if c.max() == c.min():
            concentration = 0.0
        order = np.argsort(-c, kind="stable")
        cumulative = np.cumsum(c[order])
        k = int(np.searchsorted(cumulative, 0.5 - 1e-12)) + 1  # first k pixels with cumulative >= 0.5
        region = np.zeros(h * w, dtype=bool)
        region[order[:k]] = True
    else:
        concentration = 0.0
        region = np.zeros(h * w, dtype=bool)
    mean = p.mean(axis=0)
    return {
        "score": shared * concentration,
        "shared": shared,
        "concentration": concentration,
        "region": region.reshape(h, w),
        "per_image": p[:, region].sum(axis=1),
        "mean_map": (mean / mean.max()).reshape(h, w),
    }


# ---------------------------------------------------------------- map_correlation
def test_map_correlation_hand_computed():
    a = torch.tensor([[[0.0, 1.0], [2.0, 3.0]]]).repeat(4, 1, 1)
    b = torch.stack(
        [
            a[0] * 2 + 1,  # positive affine: +1
            3.0 - a[0],  # reversed: -1
            torch.full((2, 2), 0.7),  # constant: 0 by convention
            torch.tensor([[1.0, 0.0], [0.0, 1.0]]),
        ]
    )
    # last: a - mean = (-1.5, -0.5, 0.5, 1.5), b - mean = (0.5, -0.5, -0.5, 0.5)
    # sum of products = -0.75 + 0.25 - 0.25 + 0.75 = 0  ->  r = 0
    assert map_correlation(a, b).tolist() == [1.0, -1.0, 0.0, 0.0]
    assert map_correlation(torch.zeros(1, 3, 3), torch.zeros(1, 3, 3)).item() == 0.0


def test_map_correlation_against_numpy():
    rng = np.random.default_rng(1)
    a = rng.random((10, 6, 7)).astype(np.float32)
    b = (0.5 * a + 0.5 * rng.random((10, 6, 7))).astype(np.float32)
    b[2] = 0.3
    got = map_correlation(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    np.testing.assert_allclose(got, np_pearson(a, b), atol=1e-6)
    assert got.dtype == np.float32 and got[2] == 0.0


def test_map_correlation_errors():
    with pytest.raises(ValueError, match="same shape"):
        map_correlation(torch.rand(2, 3, 3), torch.rand(2, 3, 4))
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        map_correlation(torch.rand(3, 3), torch.rand(3, 3))


# ---------------------------------------------------------------- mean maps
def test_mean_map():
    maps = torch.tensor([[[0.0, 1.0]], [[1.0, 0.5]]])
    assert mean_map(maps).tolist() == [[0.5, 0.75]]
    assert torch.equal(mean_map(torch.zeros(0, 2, 3)), torch.zeros(2, 3))


def test_class_mean_maps_hand_computed():
    maps = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]], [[1.0, 1.0]], [[0.5, 0.0]]])
    labels = torch.tensor([0, 2, 2, 0])
    means, counts = class_mean_maps(maps, labels, 4)
    # class 0: mean of images 0 and 3 = (0.75, 0); class 2: images 1 and 2 = (0.5, 1); classes 1, 3 empty
    assert means.tolist() == [[[0.75, 0.0]], [[0.0, 0.0]], [[0.5, 1.0]], [[0.0, 0.0]]]
    assert counts.tolist() == [2, 0, 2, 0] and counts.dtype == torch.long


def test_class_mean_maps_against_numpy():
    rng = np.random.default_rng(2)
    maps = rng.random((40, 5, 6)).astype(np.float32)
    labels = rng.integers(0, 6, 40)
    labels[labels == 4] = 5  # class 4 has no image
    means, counts = class_mean_maps(torch.from_numpy(maps), torch.from_numpy(labels), 7)
    for k in range(7):
        chosen = maps[labels == k]
        expected = chosen.astype(np.float64).mean(axis=0) if len(chosen) else np.zeros((5, 6))
        np.testing.assert_allclose(means[k].numpy(), expected, atol=1e-6)
        assert counts[k] == len(chosen)
    assert means.dtype == torch.float32 and means.shape == (7, 5, 6)


@pytest.mark.parametrize(
    "labels, num_classes, message",
    [
        (torch.tensor([0, 3]), 3, r"0\.\.2"),
        (torch.tensor([-1, 0]), 3, r"0\.\.2"),
        (torch.tensor([0, 1, 2]), 3, "3 entries but there are 2 maps"),
        (torch.tensor([0.0, 1.0]), 3, "integer"),
        (torch.tensor([0, 1]), 0, "num_classes"),
    ],
)
def test_class_mean_maps_errors(labels, num_classes, message):
    with pytest.raises(ValueError, match=message):
        class_mean_maps(torch.rand(2, 3, 3), labels, num_classes)


# ---------------------------------------------------------------- shortcut_score: hand-computed
def test_shortcut_one_pixel_and_corner_block():
    maps = torch.zeros(5, 8, 8)
    maps[:, 0, 0] = 1.0
    report = shortcut_score(maps)
    # c = one-hot at (0, 0): shared = 1, entropy 0 -> effective area 1 -> concentration 1 - 1/64
    assert report.score.item() == 1 - 1 / 64 and report.shared.item() == 1.0
    assert report.region.nonzero().tolist() == [[0, 0]] and torch.equal(report.per_image, torch.ones(5))
    block = torch.zeros(3, 8, 8)
    block[:, :2, :2] = 0.6
    # uniform on 4 pixels: effective area exp(log 4) = 4 -> 1 - 4/64 = 0.9375; half the mass: 2 pixels
    report = shortcut_score(block)
    assert math.isclose(report.score.item(), 0.9375, rel_tol=1e-6)
    assert int(report.region.sum()) == 2 and torch.allclose(report.per_image, torch.full((3,), 0.5))


def test_shortcut_shared_spot_plus_moving_part():
    # 4 images of 8x8: half of each map's mass on (0, 0), the other half on a pixel that moves
    maps = torch.zeros(4, 8, 8)
    maps[:, 0, 0] = 1.0
    for i in range(4):
        maps[i, 3 + i, 2 + i] = 1.0
    report = shortcut_score(maps)
    # p = 0.5 at (0, 0) in every image -> c = 0.5 there; a moving pixel is 0.5 in one image and 0 in
    # three: sorted (0, 0, 0, 0.5), 0.2-quantile at position 3 * 0.2 = 0.6 -> 0. shared = 0.5,
    # concentration = 1 - 1/64, score = 0.5 * 63/64 = 0.4921875
    assert math.isclose(report.score.item(), 0.5 * 63 / 64, rel_tol=1e-6)
    assert math.isclose(report.shared.item(), 0.5, rel_tol=1e-6)
    assert torch.allclose(report.per_image, torch.full((4,), 0.5))


def test_shortcut_coverage():
    # 5 images look at (0, 0), one looks elsewhere
    maps = torch.zeros(6, 8, 8)
    maps[:5, 0, 0] = 1.0
    maps[5, 7, 7] = 1.0
    # coverage 0.8: quantile 0.2 of (0, 1, 1, 1, 1, 1) at position 5 * 0.2 = 1 -> 1: one-pixel common map
    assert math.isclose(shortcut_score(maps, coverage=0.8).score.item(), 63 / 64, rel_tol=1e-6)
    # coverage 1 (minimum over images): nothing is shared by all six
    assert shortcut_score(maps, coverage=1.0).score.item() == 0.0
    assert shortcut_score(maps, coverage=1.0).region.sum() == 0


def test_shortcut_uniform_and_zero_maps_score_zero():
    for maps in (torch.ones(7, 9, 9), torch.full((7, 9, 9), 0.3), torch.zeros(7, 9, 9)):
        report = shortcut_score(maps)
        assert report.score.item() == 0.0 and report.concentration.item() == 0.0
        assert report.shared.item() == pytest.approx(1.0)
    # maps constant per image at different levels: still exactly 0
    levels = torch.linspace(0.1, 1.0, 7).view(7, 1, 1).expand(7, 9, 9).contiguous()
    assert shortcut_score(levels).score.item() == 0.0


# ---------------------------------------------------------------- shortcut_score: behaviour
def test_identical_corner_peaks_score_high():
    maps = gaussian_blobs([(2.0, 2.0)] * 24, size=32, sigma=3.0)
    assert shortcut_score(maps).score.item() > 0.85


def test_random_location_blobs_score_low():
    generator = torch.Generator().manual_seed(0)
    for n, sigma in ((8, 3.0), (32, 3.0), (32, 5.0)):
        centers = torch.rand(n, 2, generator=generator) * 31
        report = shortcut_score(gaussian_blobs(centers, size=32, sigma=sigma))
        assert report.score.item() < 0.3, (n, sigma, report.score.item())


def test_a_spot_shared_by_most_images_is_found():
    generator = torch.Generator().manual_seed(1)
    objects = gaussian_blobs(torch.rand(32, 2, generator=generator) * 20 + 8, size=32, sigma=3.0)
    spot = gaussian_blobs([(30.0, 1.0)] * 32, size=32, sigma=1.5)
    unit = lambda m: m / m.sum(dim=(1, 2), keepdim=True)
    # 60% of every map's mass on the fixed spot, 40% on the object: shared ~0.6, concentrated
    report = shortcut_score(0.6 * unit(spot) + 0.4 * unit(objects))
    assert 0.55 < report.shared.item() < 0.62 and report.concentration.item() > 0.95
    assert 0.5 < report.score.item() < 0.6 and shortcut_score(objects).score.item() < 0.1
    # the region is in the top-right corner
    rows, cols = report.region.nonzero().unbind(1)
    assert rows.max() <= 4 and cols.min() >= 27


def test_score_invariances():
    generator = torch.Generator().manual_seed(2)
    maps = torch.rand(10, 12, 12, generator=generator) ** 4
    reference = shortcut_score(maps)
    scaled = shortcut_score(maps * torch.linspace(0.2, 3.0, 10).view(10, 1, 1))  # per-image scale
    permutation = torch.randperm(10, generator=generator)
    permuted = shortcut_score(maps[permutation])
    assert torch.allclose(scaled.score, reference.score, atol=1e-6)
    assert torch.allclose(permuted.score, reference.score, atol=1e-6)
    assert torch.allclose(permuted.per_image, reference.per_image[permutation], atol=1e-6)


def test_shortcut_against_numpy_reference():
    rng = np.random.default_rng(3)
    cases = [rng.random((20, 10, 12)) ** 6, rng.random((7, 6, 6)), rng.random((3, 5, 5)) ** 3]
    cases[0][:, 1, 1] += 2.0  # a shared spot
    cases[1][2] = 0.0  # a zero map
    for maps in cases:
        maps = maps.astype(np.float32)
        for coverage in (0.5, 0.8, 1.0):
            expected = np_shortcut(maps, coverage)
            report = shortcut_score(torch.from_numpy(maps), coverage=coverage)
            for key in ("score", "shared", "concentration"):
                assert getattr(report, key).item() == pytest.approx(expected[key], abs=1e-6), key
            np.testing.assert_array_equal(report.region.numpy(), expected["region"])
            np.testing.assert_allclose(report.per_image.numpy(), expected["per_image"], atol=1e-6)
            np.testing.assert_allclose(report.mean_map.numpy(), expected["mean_map"], atol=1e-6)


def test_report_shapes_and_dtypes():
    report = shortcut_score(torch.rand(6, 5, 7, dtype=torch.float64))
    assert report.score.shape == () and report.score.dtype == torch.float64
    assert report.common_map.shape == (5, 7) and report.mean_map.shape == (5, 7)
    assert report.region.shape == (5, 7) and report.region.dtype == torch.bool
    assert report.per_image.shape == (6,)
    assert 0 <= report.common_map.min() and report.common_map.max() == 1.0 and report.mean_map.max() == 1.0


@pytest.mark.parametrize(
    "maps, coverage, message",
    [
        (torch.zeros(0, 4, 4), 0.8, "at least one map"),
        (torch.rand(2, 4, 4), 0.0, "coverage"),
        (torch.rand(2, 4, 4), 1.5, "coverage"),
        (torch.rand(2, 4, 4), True, "coverage"),
        (torch.rand(2, 4, 4) - 1.0, 0.8, "non-negative"),
        (torch.rand(4, 4), 0.8, r"\(N, H, W\)"),
    ],
)
def test_shortcut_errors(maps, coverage, message):
    with pytest.raises(ValueError, match=message):
        shortcut_score(maps, coverage=coverage)


# ---------------------------------------------------------------- per class, and on scenario masks
def test_scenario_masks_as_maps():
    """Maps that are exactly the nuisance patch score high; maps that are the (moving) objects score low."""
    train = make_scenario(48, scenario="small", shortcut=True, image_size=32, seed=0)
    assert shortcut_score(train.nuisance_masks.float()).score.item() > 0.9
    assert shortcut_score(train.masks.float()).score.item() < 0.1
    corner = make_scenario(48, scenario="small", shortcut=True, cue="corner", image_size=32, seed=0)
    assert shortcut_score(corner.nuisance_masks.float()).score.item() < 0.1


def test_docstring_examples():
    result = doctest.testmod(drift, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 5 and result.failed == 0
