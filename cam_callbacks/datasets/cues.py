"""Shortcut kinds for benchmarks: a spurious cue drawn on the images of some classes, with its nuisance mask.

``make_cue_set`` draws shape images (``cam_callbacks.datasets.shapes.make_shapes``: one object
of size 0.16-0.3 of the side at a random place) and adds one kind of cue (``CUE_KINDS``) to the
images of the cued classes. Draw the training set and the probe set with the same arguments and
different seeds: the cue then follows the label in both (a probe drawn like the training data, the
usual case, on which validation accuracy cannot reveal the shortcut).

- ``"patch"``: a solid square of side ``patch_side`` in the
  top-left corner, in the class's colour (``PATCH_COLORS``).
- ``"watermark"``: a small text-like mark (strokes of a 3-pixel-high pseudo-glyph row, 1-pixel
  gaps) near the bottom edge, centred; its glyphs depend on the class.
- ``"frame"``: a 2-pixel border in the class's colour.
- ``"background"``: the background (everything outside the object) blended half-way towards the
  class's colour; the nuisance mask is the whole background.
- ``"position"``: no pixels added: the objects of a cued class are placed only in one quadrant
  (class ``c`` in quadrant ``c % 4``: top-left, top-right, bottom-left, bottom-right); the
  nuisance mask is that quadrant. Drawn by keeping, among more generated images, those whose object
  centre lies there.

``classes="one"`` cues class 0 only; ``"all"`` cues every class (each with its own colour, glyphs or
quadrant). Pure torch, deterministic given the seed.

Example::

    >>> cues = make_cue_set(16, kind="frame", classes="one", image_size=32, seed=3)
    >>> has_cue = cues.nuisance_masks.flatten(1).any(dim=1)
    >>> bool((has_cue == (cues.labels == 0)).all())
    True
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from cam_callbacks.datasets.patches import PATCH_COLORS, patch_mask
from cam_callbacks.datasets.shapes import make_shapes, normalize
from cam_callbacks.utils.checks import check_choice

__all__ = ["CUE_KINDS", "CUE_CLASSES", "CueSet", "make_cue_set", "cue_mask"]

#: The kinds of shortcut ``make_cue_set`` can draw.
CUE_KINDS = ("patch", "watermark", "frame", "background", "position")
#: Which classes carry the cue: class 0 only, or every class.
CUE_CLASSES = ("one", "all")

_FRAME = 2
_GLYPHS = 3  # glyphs per watermark, each 3 wide, 3 high, 1-pixel gaps


class CueSet(NamedTuple):
    """Images with their labels, object masks and nuisance (cue) masks.

    Attributes:
        images: ``(N, 3, H, W)`` float32, normalised with the shapes statistics unless ``normalize=False``.
        labels: ``(N,)`` long.
        masks: ``(N, H, W)`` bool object masks.
        nuisance_masks: ``(N, H, W)`` bool, where the cue is (all False for images without it).
    """

    images: Tensor
    labels: Tensor
    masks: Tensor
    nuisance_masks: Tensor


def _colors(labels: Tensor) -> Tensor:
    return torch.tensor(PATCH_COLORS, dtype=torch.float32)[labels % len(PATCH_COLORS)]


def _watermark(image_size: int, label: int) -> Tensor:
    """``(H, W)`` bool strokes of the class's pseudo-text near the bottom edge."""
    mark = torch.zeros(image_size, image_size, dtype=torch.bool)
    width = _GLYPHS * 4 - 1
    left, top = (image_size - width) // 2, image_size - 5
    bits = torch.Generator().manual_seed(1000 + label)
    for glyph in range(_GLYPHS):
        pattern = torch.rand((3, 3), generator=bits) < 0.6
        pattern[:, 0] = True  # a vertical stroke in every glyph, so each is visible
        mark[top : top + 3, left + 4 * glyph : left + 4 * glyph + 3] = pattern
    return mark


def cue_mask(kind: str, image_size: int, label: int) -> Tensor:
    """The ``(H, W)`` bool nuisance mask of a cue of ``kind`` for class ``label`` (for ``"background"``: all False; it depends on the object).

    Example::

        >>> int(cue_mask("frame", 32, 0).sum()), int(cue_mask("position", 32, 1)[0, 31])
        (240, 1)
    """
    check_choice("kind", kind, CUE_KINDS)
    mask = torch.zeros(image_size, image_size, dtype=torch.bool)
    if kind == "patch":
        return patch_mask(image_size, "top_left")
    if kind == "watermark":
        return _watermark(image_size, label)
    if kind == "frame":
        mask[:_FRAME], mask[-_FRAME:], mask[:, :_FRAME], mask[:, -_FRAME:] = True, True, True, True
        return mask
    if kind == "position":
        half = image_size // 2
        rows = slice(0, half) if label % 4 < 2 else slice(half, None)
        cols = slice(0, half) if label % 2 == 0 else slice(half, None)
        mask[rows, cols] = True
    return mask


def _positioned(count: int, image_size: int, num_classes: int, seed: int, cued: Tensor) -> "tuple[Tensor, ...]":
    """``count`` images where the objects of cued classes lie in their class's quadrant (by keeping such draws)."""
    pool = make_shapes(count * 6 + 64, image_size=image_size, num_classes=num_classes, seed=seed)
    half = image_size / 2
    cx, cy = pool.centers[:, 0], pool.centers[:, 1]
    quadrant = (cy >= half).long() * 2 + (cx >= half).long()
    keep = ~cued[pool.labels] | (quadrant == pool.labels % 4)
    index = keep.nonzero().flatten()[:count]
    if index.numel() < count:  # pragma: no cover - 6x the draws leave a wide margin
        raise RuntimeError("not enough positioned draws; ask for fewer images")
    return pool.images[index], pool.labels[index], pool.masks[index]


def make_cue_set(
    num_images: int,
    kind: str = "patch",
    classes: str = "one",
    image_size: int = 32,
    num_classes: int = 4,
    seed: int = 0,
    normalize_images: bool = True,
    cue: bool = True,
) -> CueSet:
    """``num_images`` shape images with a cue of ``kind`` on the cued classes (see the module docstring).

    Args:
        num_images: Number of images.
        kind: One of ``CUE_KINDS``.
        classes: One of ``CUE_CLASSES``.
        image_size: Side in pixels (>= 16).
        num_classes: Number of classes (<= 4 for ``"position"``).
        seed: Dataset seed.
        normalize_images: Normalise with the shapes statistics (default) or keep ``[0, 1]``.
        cue: False gives clean images (the plain shapes of ``seed``, whatever ``kind``) with empty nuisance masks.
    """
    check_choice("kind", kind, CUE_KINDS)
    check_choice("classes", classes, CUE_CLASSES)
    if not cue:
        plain = make_shapes(num_images, image_size=image_size, num_classes=num_classes, seed=seed)
        images = normalize(plain.images) if normalize_images else plain.images
        return CueSet(images, plain.labels, plain.masks, torch.zeros_like(plain.masks))
    if kind == "position" and num_classes > 4:
        raise ValueError(f"kind='position' places each cued class in its own quadrant: num_classes must be <= 4, got {num_classes}")
    cued = torch.zeros(num_classes, dtype=torch.bool)
    cued[0 if classes == "one" else slice(None)] = True
    if kind == "position":
        images, labels, masks = _positioned(num_images, image_size, num_classes, seed, cued)
    else:
        batch = make_shapes(num_images, image_size=image_size, num_classes=num_classes, seed=seed)
        images, labels, masks = batch.images, batch.labels, batch.masks
    has = cued[labels]
    per_class = torch.stack([cue_mask(kind, image_size, c) for c in range(num_classes)])
    nuisance = per_class[labels] & has.view(-1, 1, 1)
    if kind == "background":
        nuisance = ~masks & has.view(-1, 1, 1)
    if kind == "background":
        tint = 0.5 * images + 0.5 * _colors(labels).view(-1, 3, 1, 1)
        images = torch.where(nuisance.unsqueeze(1), tint, images)
    elif kind in ("patch", "frame"):
        images = torch.where(nuisance.unsqueeze(1), _colors(labels).view(-1, 3, 1, 1), images)
    elif kind == "watermark":
        box = torch.zeros_like(nuisance)
        top, width = image_size - 6, _GLYPHS * 4 + 1
        left = (image_size - width) // 2
        box[:, top : top + 5, left : left + width] = has.view(-1, 1, 1)
        images = torch.where(box.unsqueeze(1), torch.zeros(()), images)  # a dark plate
        images = torch.where(nuisance.unsqueeze(1), torch.ones(()), images)  # white strokes
        nuisance = box
    return CueSet(normalize(images) if normalize_images else images, labels, masks, nuisance)
