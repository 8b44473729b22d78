"""Shortcut kinds of the benchmark (cam_callbacks.datasets.cues): where each cue is, and on which classes."""

from __future__ import annotations

import pytest
import torch

from cam_callbacks.datasets.cues import CUE_KINDS, cue_mask, make_cue_set
from cam_callbacks.datasets.patches import PATCH_COLORS
from cam_callbacks.datasets.shapes import make_shapes


@pytest.mark.parametrize("kind", CUE_KINDS)
@pytest.mark.parametrize("classes", ["one", "all"])
def test_cue_only_on_the_cued_classes(kind, classes):
    cues = make_cue_set(40, kind, classes, image_size=32, seed=5, normalize_images=False)
    has_cue = cues.nuisance_masks.flatten(1).any(dim=1)
    expected = cues.labels == 0 if classes == "one" else torch.ones(40, dtype=torch.bool)
    assert torch.equal(has_cue, expected)
    assert torch.equal(cues.labels, cues.labels.clone()) and cues.images.shape == (40, 3, 32, 32)


def test_patch_and_frame_pixels_have_the_class_colour():
    for kind in ("patch", "frame"):
        cues = make_cue_set(24, kind, "all", image_size=32, seed=2, normalize_images=False)
        for i in range(24):
            color = torch.tensor(PATCH_COLORS[int(cues.labels[i])])
            assert (cues.images[i][:, cues.nuisance_masks[i]] == color.view(3, 1)).all()
    assert int(cue_mask("frame", 32, 1).sum()) == 32 * 32 - 28 * 28


def test_position_puts_the_cued_class_in_its_quadrant():
    cues = make_cue_set(40, "position", "all", image_size=32, seed=4, normalize_images=False)
    for i in range(40):
        ys, xs = cues.masks[i].nonzero(as_tuple=True)
        cy, cx = float(ys.float().mean()), float(xs.float().mean())
        quadrant = int(cy >= 16) * 2 + int(cx >= 16)
        assert quadrant == int(cues.labels[i]) % 4 or abs(cy - 16) < 2 or abs(cx - 16) < 2  # centroid near the centre line


def test_background_is_tinted_outside_the_object_only_and_clean_is_plain():
    cues = make_cue_set(16, "background", "one", image_size=32, seed=1, normalize_images=False)
    plain = make_shapes(16, image_size=32, seed=1)
    inside = cues.masks.unsqueeze(1).expand_as(cues.images)
    assert torch.equal(cues.images[inside], plain.images[inside])
    cued = cues.labels == 0
    assert not torch.equal(cues.images[cued], plain.images[cued]) and torch.equal(cues.images[~cued], plain.images[~cued])
    clean = make_cue_set(16, "watermark", "all", image_size=32, seed=1, normalize_images=False, cue=False)
    assert torch.equal(clean.images, plain.images) and not clean.nuisance_masks.any()


def test_bad_arguments():
    with pytest.raises(ValueError, match="kind"):
        make_cue_set(4, "sticker")
    with pytest.raises(ValueError, match="num_classes"):
        make_cue_set(4, "position", num_classes=5)
