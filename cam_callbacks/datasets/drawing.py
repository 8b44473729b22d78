"""Shapes and colours of the objects: pixel masks of the shapes, painting them, object colours.

Geometry conventions (pinned by the tests):

- Pixel ``(row i, column j)`` has its centre at ``(x, y) = (j, i)``: coordinates are pixel
  indices, ``x`` to the right, ``y`` down.
- A shape is given by its centre ``(cx, cy)``, its *size* ``r`` (the radius of its circumscribed
  circle, in pixels), an angle (radians, counter-clockwise on screen) and an RGB colour; a pixel
  belongs to it when its centre satisfies the shape's inequality (see ``shape_mask``); the
  disc, for instance, is ``(x - cx)**2 + (y - cy)**2 <= r**2``. No anti-aliasing: the object's
  pixels have exactly the object colour and nothing else does.
- Object colours have their brightest channel in ``[OBJECT_MIN_PEAK, 1]``, above every background
  value (``BACKGROUND_MAX``), so the object always stands out.

Scenes (one large or one small object, several objects, a nuisance cue) are composed from
``textured_background``, ``shape_mask`` and ``draw_shape``.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from cam_callbacks.datasets.backgrounds import pixel_grid

__all__ = ["OBJECT_MIN_PEAK", "SHAPE_NAMES", "draw_shape", "random_object_color", "shape_mask", "shape_masks"]

#: Class index -> shape name. ``num_classes=k`` uses the first ``k`` shapes.
SHAPE_NAMES: Tuple[str, ...] = ("disc", "square", "triangle", "cross", "ring")

#: Lower bound of the brightest channel of an object colour.
OBJECT_MIN_PEAK: float = 0.75


def random_object_color(generator: torch.Generator) -> Tensor:
    """A random RGB colour ``(3,)`` whose brightest channel is in ``[OBJECT_MIN_PEAK, 1]``."""
    draws = torch.rand(4, generator=generator)
    color = draws[:3].clamp_min(1e-3)
    peak = OBJECT_MIN_PEAK + (1.0 - OBJECT_MIN_PEAK) * draws[3]
    return color * (peak / color.max())


def shape_masks(shapes: Sequence[str], image_size: int, centers: Tensor, sizes: Tensor, angles: Tensor) -> Tensor:
    """Batched ``shape_mask``: ``(N, H, W)`` bool for ``N`` shapes.

    Args:
        shapes: ``N`` shape names from ``SHAPE_NAMES``.
        image_size: Side of the square images in pixels.
        centers: ``(N, 2)`` centres ``(cx, cy)``.
        sizes: ``(N,)`` circumradii in pixels.
        angles: ``(N,)`` rotations in radians.
    """
    n = len(shapes)
    for shape in set(shapes):
        if shape not in SHAPE_NAMES:
            raise ValueError(f"shape={shape!r} is not known; choose from {list(SHAPE_NAMES)}")
    masks = torch.zeros((n, image_size, image_size), dtype=torch.bool)
    if n == 0:
        return masks
    x, y = pixel_grid(image_size)
    centers = torch.as_tensor(centers, dtype=torch.float32).view(n, 2)
    sizes = torch.as_tensor(sizes, dtype=torch.float32).view(n)
    angles = torch.as_tensor(angles, dtype=torch.float32).view(n)
    for shape in sorted(set(shapes)):
        i = torch.tensor([k for k, name in enumerate(shapes) if name == shape])
        m = len(i)
        r = sizes[i].view(m, 1, 1)
        dx = x - centers[i, 0].view(m, 1, 1)
        dy = y - centers[i, 1].view(m, 1, 1)
        if shape in ("disc", "ring"):
            d2 = dx * dx + dy * dy
            inside = d2 <= r * r
            masks[i] = inside if shape == "disc" else inside & (d2 >= (0.55 * r) ** 2)
            continue
        # Screen y points down: in the frame (X, Y) = (dx, -dy) with Y up, undo the counter-clockwise rotation.
        c = torch.cos(angles[i]).view(m, 1, 1)
        s = torch.sin(angles[i]).view(m, 1, 1)
        u = c * dx - s * dy
        v = -(s * dx + c * dy)
        if shape == "square":
            masks[i] = torch.maximum(u.abs(), v.abs()) <= r / math.sqrt(2.0)
        elif shape == "triangle":
            inside = torch.ones_like(u, dtype=torch.bool)
            for k in range(3):
                a = -math.pi / 2 + 2 * math.pi * k / 3  # outward edge normals; the first edge is at the bottom
                inside &= u * math.cos(a) + v * math.sin(a) <= r / 2
            masks[i] = inside
        else:  # cross
            w = 0.3 * r
            au, av = u.abs(), v.abs()
            masks[i] = ((au <= r) & (av <= w)) | ((av <= r) & (au <= w))
    return masks


def shape_mask(shape: str, image_size: int, center: Tuple[float, float], size: float, angle: float = 0.0) -> Tensor:
    """Pixels (by centre) covered by a shape, ``(H, W)`` bool.

    Shapes, in coordinates ``(u, v)`` relative to the centre (``v`` pointing up on screen) and
    rotated by ``-angle``, with size (circumradius) ``r``:

    - ``disc``: ``u**2 + v**2 <= r**2`` (rotation has no effect);
    - ``square``: ``max(|u|, |v|) <= r / sqrt(2)``;
    - ``triangle``: equilateral, a vertex at angle ``angle + pi/2``; inside all three half-planes
      ``u cos(a_k) + v sin(a_k) <= r / 2`` with ``a_k = -pi/2 + 2 pi k / 3``;
    - ``cross``: a plus sign of arm length ``r`` and half-width ``0.3 r``;
    - ``ring``: ``(0.55 r)**2 <= u**2 + v**2 <= r**2``.

    Args:
        shape: One of ``SHAPE_NAMES``.
        image_size: Side of the square image in pixels.
        center: ``(cx, cy)`` in pixel coordinates (``x`` = column, ``y`` = row).
        size: Circumradius in pixels.
        angle: Rotation in radians, counter-clockwise on screen.

    Example::

        >>> mask = shape_mask("disc", 9, (4.0, 4.0), 1.0)
        >>> int(mask.sum())  # the centre and its four neighbours
        5
    """
    return shape_masks([shape], image_size, torch.tensor([center]), torch.tensor([size]), torch.tensor([angle]))[0]


def draw_shape(
    image: Tensor,
    mask: Optional[Tensor],
    shape: str,
    center: Tuple[float, float],
    size: float,
    color: Tensor,
    angle: float = 0.0,
) -> Tensor:
    """Paint a solid shape into ``image`` (in place) and add its pixels to ``mask`` (in place).

    The building block for composite scenes (several objects, distractors, nuisance patches).

    Args:
        image: ``(3, H, W)`` float image, modified in place.
        mask: ``(H, W)`` bool mask to OR the shape's pixels into, or None.
        shape, center, size, angle: As in ``shape_mask``.
        color: ``(3,)`` RGB colour.

    Returns:
        The ``(H, W)`` bool mask of this shape alone.

    Example::

        >>> image, mask = torch.zeros(3, 16, 16), torch.zeros(16, 16, dtype=torch.bool)
        >>> drawn = draw_shape(image, mask, "square", (8.0, 8.0), 4.0, torch.tensor([1.0, 0.0, 0.0]))
        >>> bool((image[0] == 1.0).eq(drawn).all()), bool(mask.eq(drawn).all())
        (True, True)
    """
    if image.dim() != 3 or image.shape[1] != image.shape[2]:
        raise ValueError(f"image must be (C, S, S), got {tuple(image.shape)}")
    drawn = shape_mask(shape, image.shape[-1], center, size, angle)
    image[:, drawn] = color.to(image.dtype).view(-1, 1)
    if mask is not None:
        mask |= drawn
    return drawn
