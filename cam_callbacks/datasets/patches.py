"""The nuisance patch of the shortcut scenarios: a solid square in one of the four image corners.

Its side is ``patch_side``; its colour encodes the cue class (``PATCH_COLORS``, top-left
corner) or its corner does (``CORNERS``, in ``CORNER_CUE_COLOR``), see
``cam_callbacks.datasets.scenarios``. Objects keep clear of all four corner squares
(``corner_boxes``), whether or not a patch is drawn.
"""

from __future__ import annotations

from typing import List, Tuple

import torch
from torch import Tensor

from cam_callbacks.utils.checks import check_choice

__all__ = ["CORNERS", "CORNER_CUE_COLOR", "PATCH_COLORS", "PATCH_FRACTION", "corner_boxes", "patch_mask", "patch_side"]

#: Patch corners, indexed by the cue class when ``cue="corner"``.
CORNERS: Tuple[str, ...] = ("top_left", "top_right", "bottom_left", "bottom_right")
#: Patch colours (RGB), indexed by the cue class when ``cue="color"``: red, green, blue, yellow, magenta.
PATCH_COLORS: Tuple[Tuple[float, float, float], ...] = (
    (1.0, 0.0, 0.0),
    (0.0, 1.0, 0.0),
    (0.0, 0.0, 1.0),
    (1.0, 1.0, 0.0),
    (1.0, 0.0, 1.0),
)
#: Patch colour when ``cue="corner"``.
CORNER_CUE_COLOR: Tuple[float, float, float] = (1.0, 1.0, 1.0)
#: Patch side as a fraction of the image side (rounded to pixels, at least 3).
PATCH_FRACTION: float = 0.15


def patch_side(image_size: int) -> int:
    """Side of the nuisance patch in pixels: ``round(PATCH_FRACTION * image_size)``, at least 3."""
    return max(3, int(round(PATCH_FRACTION * image_size)))


def corner_boxes(image_size: int) -> List[Tuple[float, float, float, float]]:
    """``(x_lo, x_hi, y_lo, y_hi)`` pixel-centre extents of the patch in each of ``CORNERS``."""
    p = patch_side(image_size)
    low, high = (0.0, float(p - 1)), (float(image_size - p), float(image_size - 1))
    return [(*low, *low), (*high, *low), (*low, *high), (*high, *high)]


def patch_mask(image_size: int, corner: str) -> Tensor:
    """The ``(H, W)`` bool mask of the nuisance patch in ``corner`` (one of ``CORNERS``).

    Example::

        >>> patch_mask(32, "bottom_right").nonzero()[[0, -1]].tolist()  # a 5x5 square
        [[27, 27], [31, 31]]
    """
    check_choice("corner", corner, CORNERS)
    x_lo, x_hi, y_lo, y_hi = (int(v) for v in corner_boxes(image_size)[CORNERS.index(corner)])
    mask = torch.zeros((image_size, image_size), dtype=torch.bool)
    mask[y_lo : y_hi + 1, x_lo : x_hi + 1] = True
    return mask
