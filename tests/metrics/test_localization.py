"""Tests of the localization metrics (cam_callbacks.metrics.localization)."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
import torch

from cam_callbacks.metrics import localization
from cam_callbacks.metrics.localization import (
    LOCALIZATION_METRICS,
    energy_in_mask,
    energy_in_nuisance,
    energy_ratio,
    localization_scores,
    localization_summary,
    pointing_game,
)


# ---------------------------------------------------------------- independent NumPy references
def np_energy(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    out = np.zeros(len(maps))
    for i, (m, k) in enumerate(zip(maps.astype(np.float64), masks.astype(bool))):
        total = m.sum()
        out[i] = m[k].sum() / total if total > 0 else 0.0
    return out


def np_ratio(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    out = np.zeros(len(maps))
    energy = np_energy(maps, masks)
    for i, k in enumerate(masks.astype(bool)):
        area = k.mean()
        out[i] = energy[i] / area if area > 0 else 0.0
    return out


def np_pointing(maps: np.ndarray, masks: np.ndarray, tolerance: int = 0) -> np.ndarray:
    out = np.zeros(len(maps))
    for i, (m, k) in enumerate(zip(maps, masks.astype(bool))):
        if m.max() == m.min():
            continue
        rows, cols = np.nonzero(m == m.max())
        mask_rows, mask_cols = np.nonzero(k)
        hit = False
        for r, c in zip(rows, cols):  # any maximal pixel within Chebyshev distance `tolerance` of the mask
            if len(mask_rows) and np.min(np.maximum(np.abs(mask_rows - r), np.abs(mask_cols - c))) <= tolerance:
                hit = True
        out[i] = float(hit)
    return out


@pytest.fixture(scope="module")
def random_inputs():
    rng = np.random.default_rng(0)
    maps = rng.random((12, 9, 11)).astype(np.float32)
    maps[3] = 0.0  # zero map
    maps[4] = 0.25  # constant map
    maps[5, 2, 3] = maps[5, 6, 7] = 1.5  # a tie at the maximum
    masks = rng.random((12, 9, 11)) < 0.3
    masks[6] = False  # empty mask
    masks[5] = False
    masks[5, 6, 7] = True  # only the second maximal pixel is inside
    masks[7] = True  # full mask
    return maps, masks


# ---------------------------------------------------------------- hand-computed values
def test_energy_hand_computed():
    maps = torch.tensor([[[0.0, 1.0], [1.0, 2.0]], [[0.5, 0.5], [0.0, 1.0]]])
    masks = torch.tensor([[[0, 1], [0, 1]], [[1, 1], [0, 0]]], dtype=torch.bool)
    # image 0: (1 + 2) / (0 + 1 + 1 + 2) = 3 / 4; image 1: (0.5 + 0.5) / 2 = 0.5
    assert energy_in_mask(maps, masks).tolist() == [0.75, 0.5]
    # area fractions 2/4 and 2/4: ratios 0.75 / 0.5 = 1.5 and 0.5 / 0.5 = 1.0
    assert energy_ratio(maps, masks).tolist() == [1.5, 1.0]
    # nuisance is the same computation on another mask
    assert energy_in_nuisance(maps, masks).tolist() == [0.75, 0.5]


def test_ratio_small_mask_hand_computed():
    maps = torch.zeros(1, 4, 4)
    maps[0, 0, 0] = 1.0
    maps[0, 3, 3] = 1.0
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, 0, 0] = True
    # energy 1 / 2; area 1 / 16; ratio (1/2) / (1/16) = 8
    assert energy_in_mask(maps, mask).item() == 0.5
    assert energy_ratio(maps, mask).item() == 8.0


def test_pointing_game_hand_computed():
    maps = torch.tensor(
        [
            [[0.1, 0.9], [0.3, 0.2]],  # max at (0, 1)
            [[0.1, 0.9], [0.3, 0.2]],
            [[0.9, 0.1], [0.2, 0.9]],  # tie: (0, 0) and (1, 1)
            [[0.9, 0.1], [0.2, 0.9]],
            [[0.4, 0.4], [0.4, 0.4]],  # constant
            [[0.0, 0.0], [0.0, 0.0]],  # zero
        ]
    )
    masks = torch.tensor(
        [
            [[0, 1], [0, 0]],  # contains the max: hit
            [[1, 0], [1, 1]],  # everything but the max: miss
            [[0, 0], [0, 1]],  # one of the tied maxima: hit
            [[0, 1], [1, 0]],  # none of the maxima: miss
            [[1, 1], [1, 1]],  # constant map: 0 even with the full mask
            [[1, 1], [1, 1]],  # zero map: 0
        ],
        dtype=torch.float32,
    )
    assert pointing_game(maps, masks).tolist() == [1.0, 0.0, 1.0, 0.0, 0.0, 0.0]


def test_pointing_game_tolerance():
    maps = torch.zeros(1, 5, 5)
    maps[0, 2, 2] = 1.0
    mask = torch.zeros(1, 5, 5, dtype=torch.bool)
    mask[0, 0, 4] = True  # Chebyshev distance max(|0-2|, |4-2|) = 2
    assert pointing_game(maps, mask, tolerance=1).item() == 0.0
    assert pointing_game(maps, mask, tolerance=2).item() == 1.0
    with pytest.raises(ValueError, match="tolerance"):
        pointing_game(maps, mask, tolerance=-1)


# ---------------------------------------------------------------- NumPy reference on random inputs
def test_against_numpy_reference(random_inputs):
    maps, masks = random_inputs
    t_maps, t_masks = torch.from_numpy(maps), torch.from_numpy(masks)
    np.testing.assert_allclose(energy_in_mask(t_maps, t_masks).numpy(), np_energy(maps, masks), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(energy_ratio(t_maps, t_masks).numpy(), np_ratio(maps, masks), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(pointing_game(t_maps, t_masks).numpy(), np_pointing(maps, masks))
    for tolerance in (1, 2):
        np.testing.assert_array_equal(pointing_game(t_maps, t_masks, tolerance).numpy(), np_pointing(maps, masks, tolerance))
    # the hand-made edge cases came out as specified
    assert pointing_game(t_maps, t_masks)[5] == 1.0  # tie, second maximum inside
    assert energy_in_mask(t_maps, t_masks)[3] == 0.0 and energy_ratio(t_maps, t_masks)[6] == 0.0


def test_float64_maps(random_inputs):
    maps, masks = random_inputs
    scores = localization_scores(torch.from_numpy(maps).double(), torch.from_numpy(masks))
    assert all(v.dtype == torch.float64 for v in scores.values())
    np.testing.assert_allclose(scores["energy_in_mask_ratio"].numpy(), np_ratio(maps, masks), rtol=1e-12)


# ---------------------------------------------------------------- edge cases
def test_zero_map_scores_zero_never_nan():
    maps = torch.zeros(2, 3, 3)
    masks = torch.ones(2, 3, 3, dtype=torch.bool)
    for value in localization_scores(maps, masks, masks).values():
        assert torch.equal(value, torch.zeros(2))


def test_uniform_map_ratio_is_exactly_one():
    generator = torch.Generator().manual_seed(0)
    masks = torch.rand(50, 7, 13, generator=generator) < 0.4
    masks[:, 0, 0] = True  # no empty mask
    for level in (1.0, 0.3, 0.77, 1e-3):
        maps = torch.full((50, 7, 13), level)
        assert torch.equal(energy_ratio(maps, masks), torch.ones(50)), level


def test_empty_mask_gives_zero():
    maps = torch.rand(1, 4, 4) + 0.1
    empty = torch.zeros(1, 4, 4, dtype=torch.bool)
    assert energy_in_mask(maps, empty).item() == 0.0
    assert energy_ratio(maps, empty).item() == 0.0
    assert pointing_game(maps, empty).item() == 0.0


def test_full_mask():
    maps = torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(1)) + 0.1
    full = torch.ones(3, 4, 4)
    assert torch.allclose(energy_in_mask(maps, full), torch.ones(3))
    assert torch.allclose(energy_ratio(maps, full), torch.ones(3))
    assert torch.equal(pointing_game(maps, full), torch.ones(3))


def test_bool_float_and_int_masks_agree(random_inputs):
    maps, masks = random_inputs
    t_maps = torch.from_numpy(maps)
    as_bool = localization_scores(t_maps, torch.from_numpy(masks), torch.from_numpy(masks))
    for dtype in (torch.float32, torch.float64, torch.uint8, torch.long):
        other = localization_scores(t_maps, torch.from_numpy(masks).to(dtype), torch.from_numpy(masks).to(dtype))
        for key in as_bool:
            assert torch.equal(as_bool[key], other[key]), (dtype, key)


def test_output_range(random_inputs):
    maps, masks = random_inputs
    scores = localization_scores(torch.from_numpy(maps), torch.from_numpy(masks), torch.from_numpy(~masks))
    for key in ("energy_in_mask", "pointing_game", "energy_in_nuisance"):
        assert ((scores[key] >= 0) & (scores[key] <= 1)).all(), key
    for key in ("energy_in_mask_ratio", "energy_in_nuisance_ratio"):
        assert (scores[key] >= 0).all() and torch.isfinite(scores[key]).all()
    # object and complementary nuisance energies add up to 1 for maps with mass
    total = scores["energy_in_mask"] + scores["energy_in_nuisance"]
    has_mass = torch.from_numpy(maps).flatten(1).sum(1) > 0
    assert torch.allclose(total[has_mass], torch.ones(int(has_mass.sum())))


def test_empty_batch():
    scores = localization_scores(torch.zeros(0, 4, 4), torch.zeros(0, 4, 4, dtype=torch.bool), torch.zeros(0, 4, 4))
    assert set(scores) == set(LOCALIZATION_METRICS) and all(v.shape == (0,) for v in scores.values())


# ---------------------------------------------------------------- localization_scores / summary
def test_scores_keys():
    maps = torch.rand(2, 4, 4)
    masks = torch.rand(2, 4, 4) > 0.5
    assert list(localization_scores(maps, masks)) == ["energy_in_mask", "pointing_game", "energy_in_mask_ratio"]
    assert list(localization_scores(maps, nuisance=masks)) == ["energy_in_nuisance", "energy_in_nuisance_ratio"]
    assert tuple(localization_scores(maps, masks, masks)) == LOCALIZATION_METRICS
    assert localization_scores(maps) == {}


def test_summary_excludes_images_with_empty_masks():
    maps = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[1.0, 1.0], [1.0, 1.0]], [[0.0, 1.0], [0.0, 0.0]]])
    masks = torch.tensor([[[1, 0], [0, 0]], [[1, 1], [0, 0]], [[0, 0], [0, 0]]], dtype=torch.bool)
    cue = torch.zeros(3, 2, 2, dtype=torch.bool)
    cue[1, 1, 1] = True
    summary = localization_summary(localization_scores(maps, masks, cue), masks, cue)
    # object metrics over images 0 and 1: energy (1 + 0.5) / 2; ratio (4 + 1) / 2; pointing (1 + 0) / 2
    assert summary["energy_in_mask"] == 0.75 and summary["energy_in_mask_ratio"] == 2.5 and summary["pointing_game"] == 0.5
    # nuisance metrics over image 1 only: 1 / 4 of the mass on 1 / 4 of the pixels
    assert summary["energy_in_nuisance"] == 0.25 and summary["energy_in_nuisance_ratio"] == 1.0
    # no image with a cue: the nuisance metrics are left out, never NaN
    summary = localization_summary(localization_scores(maps, nuisance=torch.zeros(3, 2, 2)), nuisance=torch.zeros(3, 2, 2))
    assert summary == {}
    # without masks: plain means
    assert localization_summary({"energy_in_mask": torch.tensor([0.0, 1.0])}) == {"energy_in_mask": 0.5}


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "maps, masks, message",
    [
        (torch.rand(2, 4), torch.ones(2, 4, dtype=torch.bool), r"maps must be \(N, H, W\)"),
        (torch.rand(2, 4, 4), torch.ones(2, 4, 5, dtype=torch.bool), "same shape"),
        (torch.rand(2, 4, 4), torch.ones(2, 8, 8, dtype=torch.bool), "upsample"),
        (torch.rand(2, 4, 4), torch.ones(3, 4, 4, dtype=torch.bool), "same shape"),
        (torch.rand(2, 4, 4), torch.ones(4, 4, dtype=torch.bool), r"masks must be \(N, H, W\)"),
        (torch.rand(2, 4, 4), torch.full((2, 4, 4), 0.5), "only 0 and 1"),
        (torch.rand(2, 4, 4) - 0.5, torch.ones(2, 4, 4), "non-negative"),
        (torch.full((2, 4, 4), float("nan")), torch.ones(2, 4, 4), "finite"),
        (torch.ones(2, 4, 4, dtype=torch.long), torch.ones(2, 4, 4), "floating"),
        (np.ones((2, 4, 4)), torch.ones(2, 4, 4), "torch.Tensor"),
    ],
)
def test_errors(maps, masks, message):
    for function in (energy_in_mask, energy_ratio, pointing_game, localization_scores):
        with pytest.raises(ValueError, match=message):
            function(maps, masks)


def test_nuisance_errors_name_the_argument():
    with pytest.raises(ValueError, match="nuisance_masks"):
        energy_in_nuisance(torch.rand(1, 2, 2), torch.ones(1, 3, 3))
    with pytest.raises(ValueError, match="nuisance"):
        localization_scores(torch.rand(1, 2, 2), nuisance=torch.full((1, 2, 2), 2.0))


def test_docstring_examples():
    result = doctest.testmod(localization, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 5 and result.failed == 0
