"""Per-class shortcut statistics and find_shortcuts (cam_callbacks.metrics.shortcuts) against NumPy references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import cam_callbacks as cc
from cam_callbacks.metrics.shortcuts import (
    class_shortcut_stats,
    cosine_kmeans,
    find_shortcuts,
    map_concentration,
    pairwise_consistency,
    pooled_maps,
)


def np_pool(maps: np.ndarray, grid: int) -> np.ndarray:
    """Block means (H and W divisible by grid), mass-normalised rows; zero rows uniform."""
    n, h, w = maps.shape
    pooled = maps.reshape(n, grid, h // grid, grid, w // grid).mean(axis=(2, 4)).reshape(n, -1)
    sums = pooled.sum(axis=1, keepdims=True)
    return np.where(sums > 0, pooled / np.where(sums > 0, sums, 1), 1.0 / pooled.shape[1])


def np_shortcut_score(p: np.ndarray, coverage: float = 0.8) -> float:
    common = np.clip(np.quantile(p, 1 - coverage, axis=0), 0, None)
    mass = common.sum()
    if mass <= 0:
        return 0.0
    c = common / mass
    entropy = -np.sum(c[c > 0] * np.log(c[c > 0]))
    concentration = 0.0 if c.max() == c.min() else max(0.0, 1 - np.exp(entropy) / c.size)
    return min(1.0, mass) * concentration


def np_consistency(p: np.ndarray) -> float:
    n = p.shape[0]
    z = p - p.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(z, axis=1, keepdims=True)
    z = np.where(norms > 0, z / np.where(norms > 0, norms, 1), 0.0)
    gram = z @ z.T
    return float((gram.sum() - np.trace(gram)) / (n * (n - 1)))


def np_concentration(p: np.ndarray) -> float:
    m = p.mean(axis=0)
    m = m / m.sum()
    if m.max() == m.min():
        return 0.0
    entropy = -np.sum(m[m > 0] * np.log(m[m > 0]))
    return max(0.0, 1 - np.exp(entropy) / m.size)


@pytest.fixture
def planted():
    """24 maps of 16x16: random blobs; class 0's maps also light the top-left 4x4 corner."""
    g = torch.Generator().manual_seed(7)
    maps = torch.rand(24, 16, 16, generator=g) ** 4 * 0.1
    labels = torch.arange(24) % 3
    maps[labels == 0, :4, :4] += 1.0
    objects = torch.zeros(24, 16, 16, dtype=torch.bool)
    for i, (y, x) in enumerate(torch.randint(5, 12, (24, 2), generator=g).tolist()):
        objects[i, y - 2 : y + 2, x - 2 : x + 2] = True
    return maps, labels, objects


def test_pooled_maps_match_numpy_block_means(planted):
    maps, _, objects = planted
    expected = np_pool(maps.double().numpy(), 4)
    np.testing.assert_allclose(pooled_maps(maps, 4).numpy(), expected, rtol=1e-12)
    outside = maps.double().numpy() * ~objects.numpy()
    np.testing.assert_allclose(pooled_maps(maps, 4, objects).numpy(), np_pool(outside, 4), rtol=1e-12)
    assert pooled_maps(torch.zeros(1, 4, 4), 2).tolist() == [[0.25] * 4]  # a zero map is uniform


def test_consistency_and_concentration_match_numpy(planted):
    maps, _, _ = planted
    p = pooled_maps(maps, 8)
    assert pairwise_consistency(p) == pytest.approx(np_consistency(p.numpy()), abs=1e-12)
    assert map_concentration(p) == pytest.approx(np_concentration(p.numpy()), abs=1e-12)
    assert pairwise_consistency(p[:1]) == 0.0
    assert map_concentration(torch.ones(3, 16)) == 0.0


def test_class_stats_match_numpy(planted):
    maps, labels, objects = planted
    correct = torch.tensor([True, False, True] * 8)
    confidence = torch.linspace(0.1, 0.9, 24)
    stats = class_shortcut_stats(maps, labels, 4, objects, correct, confidence, grid=8)
    assert stats.counts.tolist() == [8, 8, 8, 0]
    m, obj = maps.double().numpy(), objects.numpy()
    outside_share = (m * ~obj).reshape(24, -1).sum(1) / m.reshape(24, -1).sum(1)
    for c in range(3):
        rows = labels.numpy() == c
        p = np_pool(m[rows] * ~obj[rows], 8)
        assert float(stats.score[c]) == pytest.approx(np_shortcut_score(p) * outside_share[rows].mean(), abs=1e-9)
        assert float(stats.consistency[c]) == pytest.approx(np_consistency(p), abs=1e-12)
        assert float(stats.concentration[c]) == pytest.approx(np_concentration(p), abs=1e-12)
        assert float(stats.outside_share[c]) == pytest.approx(outside_share[rows].mean(), abs=1e-12)
        assert float(stats.accuracy[c]) == pytest.approx(correct.numpy()[rows].mean())
        assert float(stats.confidence[c]) == pytest.approx(confidence.numpy()[rows].mean(), abs=1e-7)
        full = m[rows].reshape(8, -1) / m[rows].reshape(8, -1).sum(1, keepdims=True)
        mean = full.mean(0)
        np.testing.assert_allclose(stats.mean_maps[c].numpy().ravel(), mean / mean.max(), rtol=1e-5)
    assert float(stats.score[3]) == 0.0 and np.isnan(float(stats.accuracy[3]))
    assert float(stats.score[0]) > 3 * float(stats.score[1:3].max())  # the cue's class stands out


def test_find_shortcuts_points_at_the_planted_class_and_region(planted):
    maps, labels, _ = planted
    before = torch.random.get_rng_state()
    found = cc.find_shortcuts(maps, labels)
    assert torch.equal(before, torch.random.get_rng_state())  # no global random draws
    best = found.best
    assert best.class_index == 0 and best.box == (0, 0, 4, 4)
    assert bool(best.region[:4, :4].all()) and int(best.region.sum()) == 16
    assert set(best.members.tolist()) <= set((labels == 0).nonzero().flatten().tolist())
    assert (best.region_share[:-1] >= best.region_share[1:]).all()  # the most taken first
    assert best.prototype.shape == (16, 16) and float(best.prototype.max()) == pytest.approx(1.0)
    assert max(c.score for c in found.candidates if c.class_index != 0) < 0.5 * best.score


def test_a_region_inside_the_objects_is_not_a_shortcut():
    maps = torch.zeros(8, 8, 8)
    maps[:, 6:, 6:] = 1.0
    objects = torch.zeros(8, 8, 8, dtype=torch.bool)
    objects[:, 5:, 5:] = True  # every object sits there (a centred dataset): not a cue
    labels = torch.zeros(8, dtype=torch.long)
    assert find_shortcuts(maps, labels).best.score > 0.9
    assert find_shortcuts(maps, labels, masks=objects).best.score == 0.0


def test_a_cue_on_part_of_a_class_is_found_by_a_cluster():
    g = torch.Generator().manual_seed(3)
    maps = torch.rand(16, 16, 16, generator=g) ** 4
    maps[:8, 12:, 12:] += 1.0  # half of the class reads a corner
    labels = torch.zeros(16, dtype=torch.long)
    found = find_shortcuts(maps, labels, clusters=2)
    best = found.best
    whole = next(c for c in found.candidates if c.cluster == -1)
    assert best.cluster >= 0 and sorted(best.members.tolist()) == list(range(8))
    assert best.score > 2 * whole.score
    assert all(c.cluster == -1 for c in find_shortcuts(maps, labels, clusters=0).candidates)


def test_cosine_kmeans_is_deterministic_and_separates_groups():
    x = torch.cat([torch.tensor([[1.0, 0.0, 0.1]]).repeat(5, 1), torch.tensor([[0.0, 1.0, 0.1]]).repeat(4, 1)])
    x = x + 0.01 * torch.arange(9.0).view(-1, 1)
    first = cosine_kmeans(x, 2)
    assert torch.equal(first, cosine_kmeans(x, 2))
    assert len(set(first[:5].tolist())) == 1 and len(set(first[5:].tolist())) == 1 and first[0] != first[5]


def test_bad_inputs():
    with pytest.raises(ValueError, match="grid"):
        find_shortcuts(torch.rand(4, 8, 8), torch.zeros(4, dtype=torch.long), grid=0)
    with pytest.raises(ValueError, match="masks"):
        find_shortcuts(torch.rand(4, 8, 8), torch.zeros(4, dtype=torch.long), masks=torch.zeros(4, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="labels"):
        find_shortcuts(torch.rand(4, 8, 8), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="min_cluster_share"):
        find_shortcuts(torch.rand(4, 8, 8), torch.zeros(4, dtype=torch.long), min_cluster_share=2.0)
