"""Tests of the benchmark scenarios (cam_callbacks.datasets.scenarios)."""

from __future__ import annotations

import doctest
import math

import pytest
import torch
from torch.utils.data import DataLoader

from cam_callbacks.datasets import scenarios
from cam_callbacks.datasets.scenarios import (
    CORNERS,
    CUES,
    PATCH_COLORS,
    SCENARIOS,
    SPLITS,
    ScenarioDataset,
    make_scenario,
    patch_mask,
)
from cam_callbacks.datasets.shapes import BACKGROUND_MAX, OBJECT_MIN_PEAK, SHAPE_NAMES, normalize, shape_mask

SIZE = 32


@pytest.fixture(scope="module")
def raw():
    """Un-normalised train and val batches of every scenario, with the colour cue."""
    return {
        (scenario, split): make_scenario(
            60, scenario=scenario, split=split, shortcut=True, image_size=SIZE, seed=1, normalize=False
        )
        for scenario in SCENARIOS
        for split in SPLITS
    }


def _draws(index, scenario, split="train", seed=1):
    return scenarios._sample(index, scenario, split, SIZE, 4, seed)


# ---------------------------------------------------------------- shapes and dtypes
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_shapes_and_dtypes(scenario):
    batch = make_scenario(5, scenario=scenario, image_size=SIZE, num_classes=3)
    assert batch.images.shape == (5, 3, SIZE, SIZE) and batch.images.dtype == torch.float32
    assert batch.labels.shape == (5,) and batch.labels.dtype == torch.long
    assert batch.masks.shape == (5, SIZE, SIZE) and batch.masks.dtype == torch.bool
    assert batch.nuisance_masks.shape == (5, SIZE, SIZE) and batch.nuisance_masks.dtype == torch.bool
    assert batch.multi_hot.shape == (5, 3) and batch.multi_hot.dtype == torch.float32
    assert batch.cue_labels.tolist() == [-1] * 5 and not batch.nuisance_masks.any()
    assert len(batch) == 5 and batch.labels.max() < 3
    assert torch.isfinite(batch.images).all()
    empty = make_scenario(0, scenario=scenario, image_size=SIZE)
    assert empty.images.shape == (0, 3, SIZE, SIZE) and empty.multi_hot.shape == (0, 4)


def test_normalisation_matches_synthetic():
    a = make_scenario(6, scenario="multi_same", shortcut=True, image_size=SIZE, seed=2)
    b = make_scenario(6, scenario="multi_same", shortcut=True, image_size=SIZE, seed=2, normalize=False)
    assert torch.allclose(a.images, normalize(b.images), atol=1e-6)
    assert b.images.min() >= 0 and b.images.max() <= 1


# ---------------------------------------------------------------- determinism and the RNG
def test_deterministic_and_independent_of_chunking():
    kwargs = dict(scenario="multi_class", split="val", shortcut=True, image_size=SIZE, seed=3)
    a, b = make_scenario(12, **kwargs), make_scenario(12, **kwargs)
    pieces = [make_scenario(5, **kwargs), make_scenario(7, start=5, **kwargs)]
    for field in ("images", "labels", "masks", "nuisance_masks", "multi_hot", "cue_labels", "num_objects"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
        assert torch.equal(torch.cat([getattr(p, field) for p in pieces]), getattr(a, field)), field


def test_global_rng_and_threads_untouched():
    torch.manual_seed(7)
    state = torch.get_rng_state()
    threads = torch.get_num_threads()
    make_scenario(20, scenario="multi_class", split="val", shortcut=True, image_size=SIZE)
    ScenarioDataset(5, scenario="large", shortcut=True, cue="corner", image_size=SIZE)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.get_num_threads() == threads


def test_seeds_and_splits_differ():
    train = make_scenario(60, scenario="large", image_size=SIZE, seed=0).images.flatten(1)
    val = make_scenario(60, scenario="large", split="val", image_size=SIZE, seed=0).images.flatten(1)
    other = make_scenario(60, scenario="large", image_size=SIZE, seed=1).images.flatten(1)
    assert torch.cdist(train, val).min() > 1.0 and torch.cdist(train, other).min() > 1.0
    within = torch.cdist(train, train) + torch.eye(60) * 1e9
    assert within.min() > 1.0


def test_shortcut_twin_differs_only_by_the_patch():
    plain = make_scenario(10, scenario="multi_same", image_size=SIZE, seed=4, normalize=False)
    cued = make_scenario(10, scenario="multi_same", shortcut=True, image_size=SIZE, seed=4, normalize=False)
    outside = ~cued.nuisance_masks.unsqueeze(1).expand_as(cued.images)
    assert torch.equal(plain.images[outside], cued.images[outside])
    assert torch.equal(plain.masks, cued.masks) and torch.equal(plain.labels, cued.labels)
    assert not torch.equal(plain.images, cued.images)


def test_scenarios_share_labels_and_backgrounds():
    large = make_scenario(20, scenario="large", image_size=SIZE, seed=8, normalize=False)
    small = make_scenario(20, scenario="small", image_size=SIZE, seed=8, normalize=False)
    background = ~(large.masks | small.masks).unsqueeze(1).expand_as(large.images)
    assert torch.equal(large.labels, small.labels)
    assert torch.equal(large.images[background], small.images[background])


# ---------------------------------------------------------------- masks and pixels
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_masks_match_object_pixels(raw, scenario):
    batch = raw[(scenario, "train")]
    for i in range(0, 60, 6):
        draw = _draws(i, scenario)
        union = torch.zeros(SIZE, SIZE, dtype=torch.bool)
        for obj in draw.objects:
            drawn = shape_mask(SHAPE_NAMES[obj.label], SIZE, obj.center, obj.size, obj.angle)
            assert drawn.sum() > 0 and not (drawn & union).any()  # visible, no overlap
            # every pixel of the object has exactly its colour
            assert torch.equal(batch.images[i][:, drawn], obj.color[:, None].expand(-1, int(drawn.sum())))
            union |= drawn
        assert torch.equal(batch.masks[i], union), f"{scenario} image {i}"
    # objects are brighter than the background; background and patch are outside the masks
    background = ~(batch.masks | batch.nuisance_masks).unsqueeze(1).expand_as(batch.images)
    assert batch.images[background].max() <= BACKGROUND_MAX
    assert (batch.images.amax(dim=1)[batch.masks] >= OBJECT_MIN_PEAK - 1e-6).all()
    assert not (batch.masks & batch.nuisance_masks).any()


def test_objects_keep_clear_of_every_corner(raw):
    corners = torch.stack([patch_mask(SIZE, c) for c in CORNERS]).any(0)
    # objects are more than one pixel (Euclidean) away: no object pixel touches a patch pixel by an edge
    plus = torch.tensor([[0.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 0.0]])
    grown = torch.nn.functional.conv2d(corners[None, None].float(), plus[None, None], padding=1)[0, 0] > 0
    for scenario in SCENARIOS:
        assert not (raw[(scenario, "val")].masks & grown).any(), scenario


def test_object_sizes_by_scenario(raw):
    area = {s: raw[(s, "train")].masks.flatten(1).float().mean(1) for s in SCENARIOS}
    assert area["small"].max() < 0.06 and area["large"].min() > 0.08
    assert area["small"].mean() * 5 < area["large"].mean()
    for scenario in SCENARIOS:
        for i in range(0, 60, 10):
            sizes = [o.size / SIZE for o in _draws(i, scenario).objects]
            if scenario in ("large", "small"):
                low, high = scenarios._SIZES[scenario]
                assert len(sizes) == 1 and high >= sizes[0] >= low * scenarios._SHRINK**3
            else:
                assert 2 <= len(sizes) <= 3


# ---------------------------------------------------------------- labels
def test_single_and_multi_same_labels(raw):
    for scenario in ("large", "small", "multi_same"):
        batch = raw[(scenario, "train")]
        assert torch.equal(batch.multi_hot, torch.nn.functional.one_hot(batch.labels, 4).float())
        for i in range(0, 60, 7):
            assert {o.label for o in _draws(i, scenario).objects} == {int(batch.labels[i])}
    counts = raw[("multi_same", "train")].num_objects
    assert set(counts.tolist()) == {2, 3}
    assert set(raw[("large", "train")].num_objects.tolist()) == {1}


def test_multi_class_label_is_the_largest_object(raw):
    batch = raw[("multi_class", "train")]
    assert set(batch.num_objects.tolist()) == {2, 3}
    assert torch.equal(batch.multi_hot.sum(1).long(), batch.num_objects)  # distinct classes
    for i in range(60):
        objects = _draws(i, "multi_class").objects
        pixels = [int(shape_mask(SHAPE_NAMES[o.label], SIZE, o.center, o.size, o.angle).sum()) for o in objects]
        assert int(batch.labels[i]) == objects[pixels.index(max(pixels))].label
        assert sorted(k for k in range(4) if batch.multi_hot[i, k] == 1) == sorted(o.label for o in objects)
    labels = make_scenario(400, scenario="multi_class", image_size=SIZE, seed=5).labels
    assert (torch.bincount(labels, minlength=4) > 60).all()


def test_multi_class_with_two_classes():
    batch = make_scenario(10, scenario="multi_class", image_size=SIZE, num_classes=2)
    assert (batch.num_objects == 2).all() and (batch.multi_hot == 1).all()


# ---------------------------------------------------------------- the nuisance cue
def _patch_class(batch) -> torch.Tensor:
    """Class encoded by each image's patch colour (raw images, colour cue)."""
    n = len(batch)
    pixels = batch.images.permute(0, 2, 3, 1)[batch.nuisance_masks].view(n, -1, 3)
    assert (pixels == pixels[:, :1]).all()  # solid colour
    palette = torch.tensor(PATCH_COLORS)
    match = (pixels[:, 0, None, :] == palette[None]).all(dim=2)
    assert (match.sum(1) == 1).all()
    return match.float().argmax(1)


def test_colour_cue_predicts_the_label_in_train_only(raw):
    side = round(0.15 * SIZE)
    for scenario in SCENARIOS:
        train = raw[(scenario, "train")]
        assert (train.nuisance_masks == patch_mask(SIZE, "top_left")).all()
        assert int(train.nuisance_masks[0].sum()) == side * side
        assert torch.equal(_patch_class(train), train.labels) and torch.equal(train.cue_labels, train.labels)
    val = make_scenario(200, scenario="small", split="val", shortcut=True, image_size=SIZE, seed=6, normalize=False)
    cue = _patch_class(val)
    assert torch.equal(cue, val.cue_labels)
    agree = int((cue == val.labels).sum())  # chance: 200 / 4 = 50, sd ~6.1
    assert 25 <= agree <= 80, agree
    assert (torch.bincount(cue, minlength=4) >= 25).all()  # every colour used


def test_corner_cue():
    train = make_scenario(40, scenario="large", shortcut=True, cue="corner", image_size=SIZE, normalize=False)
    corners = torch.stack([patch_mask(SIZE, c) for c in CORNERS])
    assert torch.equal(train.nuisance_masks, corners[train.labels])
    patch_pixels = train.images.permute(0, 2, 3, 1)[train.nuisance_masks]
    assert (patch_pixels == 1.0).all()  # white
    val = make_scenario(200, scenario="large", split="val", shortcut=True, cue="corner", image_size=SIZE, seed=2)
    assert torch.equal(val.nuisance_masks, corners[val.cue_labels])
    agree = int((val.cue_labels == val.labels).sum())
    assert 25 <= agree <= 80, agree


def test_no_shortcut_means_no_patch():
    for split in SPLITS:
        batch = make_scenario(10, scenario="small", split=split, image_size=SIZE)
        assert not batch.nuisance_masks.any() and (batch.cue_labels == -1).all()


def test_patch_mask():
    mask = patch_mask(64, "top_right")
    assert int(mask.sum()) == 100 and mask[0, 63] and mask[9, 54] and not mask[10, 54] and not mask[0, 53]
    with pytest.raises(ValueError, match="top_left"):
        patch_mask(64, "middle")


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"scenario": "huge"}, r"scenario='huge' is not known; choose from \['large', 'small', 'multi_same', 'multi_class'\]"),
        ({"split": "test"}, r"split='test' is not known; choose from \['train', 'val'\]"),
        ({"cue": "shape"}, r"cue='shape' is not known; choose from \['color', 'corner'\]"),
        ({"shortcut": 1}, "shortcut must be True or False"),
        ({"image_size": 16}, "image_size must be an int >= 32"),
        ({"num_classes": 6}, "num_classes must be an int in 1..5"),
        ({"num_classes": 0}, "num_classes"),
        ({"scenario": "multi_class", "num_classes": 1}, "needs num_classes >= 2"),
        ({"shortcut": True, "cue": "corner", "num_classes": 5}, "at most 4 classes"),
        ({"seed": -1}, "seed"),
        ({"num_images": -1}, "num_images"),
        ({"start": -2}, "start"),
    ],
)
def test_errors(kwargs, message):
    arguments = {"num_images": 2, "image_size": SIZE, **kwargs}
    with pytest.raises(ValueError, match=message):
        make_scenario(**arguments)


# ---------------------------------------------------------------- dataset
def test_dataset_matches_batch_and_loads():
    data = ScenarioDataset(10, scenario="multi_class", split="val", shortcut=True, image_size=SIZE, seed=2)
    batch = make_scenario(10, scenario="multi_class", split="val", shortcut=True, image_size=SIZE, seed=2)
    assert len(data) == 10 and data.class_names == SHAPE_NAMES[:4]
    for i in (0, 4, -1):
        image, label, mask, nuisance = data[i]
        assert torch.equal(image, batch.images[i]) and label == int(batch.labels[i]) and isinstance(label, int)
        assert torch.equal(mask, batch.masks[i]) and torch.equal(nuisance, batch.nuisance_masks[i])
    image, _, mask, _ = data[0]
    image.zero_()
    mask.zero_()  # samples are copies
    assert not torch.equal(data[0][0], image) and torch.equal(data[0][2], batch.masks[0])
    assert torch.equal(data.labels, batch.labels) and torch.equal(data.multi_hot, batch.multi_hot)
    assert torch.equal(data.masks, batch.masks) and torch.equal(data.nuisance_masks, batch.nuisance_masks)
    images, labels, masks, nuisance = next(iter(DataLoader(data, batch_size=4)))
    assert images.shape == (4, 3, SIZE, SIZE) and labels.dtype == torch.long and masks.dtype == torch.bool
    with pytest.raises(IndexError):
        data[10]
    with pytest.raises(IndexError):
        data[-11]


def test_speed():
    import time

    start = time.perf_counter()
    make_scenario(300, scenario="large", shortcut=True, image_size=64)
    assert time.perf_counter() - start < 5.0


def test_docstring_examples():
    result = doctest.testmod(scenarios, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 5 and result.failed == 0
    assert math.isclose(scenarios.PATCH_FRACTION, 0.15) and CUES == ("color", "corner")
