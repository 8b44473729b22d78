"""Synthetic shape images with known object masks, for examples, tests and benchmarks.

Each image shows one solid-coloured shape (its class) on a textured background: smooth coloured
noise mixed with stripes of random frequency, orientation and colour, plus faint pixel noise, so a
model cannot solve the task by finding "the non-uniform region". The pixel mask of the object is
returned with every image, which makes it possible to check where an explanation points.

Generation is pure torch and deterministic: image ``i`` of seed ``s`` is drawn from its own
``torch.Generator`` seeded from ``(s, i)``, so it is the same whether it is produced by
``make_shapes`` or ``ShapesDataset``, in any order, in any process; the global RNG is
never used or changed.

The pieces live in their own modules: random streams and backgrounds in
``cam_callbacks.datasets.backgrounds``, shape masks, painting and object colours (with the
geometry conventions) in ``cam_callbacks.datasets.drawing``; their public names are importable
from here too. Variants (one large or one small object, several objects, a nuisance cue such as a
coloured corner patch correlated with the label, see ``cam_callbacks.datasets.scenarios``) are
added by composing ``textured_background``, ``shape_mask`` and ``draw_shape``.

Example::

    >>> batch = make_shapes(8, image_size=32, num_classes=4, seed=0)
    >>> batch.images.shape, batch.labels.shape, batch.masks.shape
    (torch.Size([8, 3, 32, 32]), torch.Size([8]), torch.Size([8, 32, 32]))
    >>> dataset = ShapesDataset(8, image_size=32, seed=0)
    >>> image, label = dataset[0]
    >>> torch.allclose(unnormalize(image), batch.images[0], atol=1e-6) and label == int(batch.labels[0])
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Sequence, Tuple

import torch
from torch import Tensor
from torch.utils.data import Dataset

from cam_callbacks.datasets.backgrounds import (
    BACKGROUND_MAX,
    BackgroundParams,
    image_generator,
    render_backgrounds,
    sample_background,
    single_threaded,
    textured_background,
)
from cam_callbacks.datasets.drawing import OBJECT_MIN_PEAK, SHAPE_NAMES, draw_shape, random_object_color, shape_mask, shape_masks

__all__ = [
    "SHAPE_NAMES",
    "SHAPES_MEAN",
    "SHAPES_STD",
    "BACKGROUND_MAX",
    "OBJECT_MIN_PEAK",
    "ShapesBatch",
    "ShapesDataset",
    "make_shapes",
    "make_shape_image",
    "sample_image",
    "sample_background",
    "render_backgrounds",
    "textured_background",
    "shape_mask",
    "shape_masks",
    "BackgroundParams",
    "ObjectParams",
    "draw_shape",
    "random_object_color",
    "image_generator",
    "normalize",
    "unnormalize",
]

#: Per-channel mean of the generated images (measured on 4000 images of 64x64, 4 classes, seed 0;
#: it varies by less than 0.01 with the image size, class count and seed). ``ShapesDataset``
#: normalises with ``(x - SHAPES_MEAN) / SHAPES_STD``; pass both to ``CAMMonitor(mean=..., std=...)``
#: to see the probe images in their real colours.
SHAPES_MEAN: Tuple[float, float, float] = (0.261, 0.260, 0.262)
#: Per-channel standard deviation of the generated images (same measurement as ``SHAPES_MEAN``).
SHAPES_STD: Tuple[float, float, float] = (0.172, 0.175, 0.175)

#: Shape size range, as a fraction of the image side (the size is the circumradius).
_SIZE_RANGE = (0.16, 0.3)

#: Pixels per rendering chunk in ``make_shapes``.
_CHUNK_PIXELS = 1 << 19


@dataclass
class ShapesBatch:
    """Images with their labels, object masks and the parameters each object was drawn with.

    Attributes:
        images: ``(N, 3, H, W)`` float32 in ``[0, 1]`` (not normalised).
        labels: ``(N,)`` long, class indices into ``SHAPE_NAMES``.
        masks: ``(N, H, W)`` bool, True on the object's pixels.
        centers: ``(N, 2)`` float32 object centres ``(cx, cy)`` in pixel coordinates.
        sizes: ``(N,)`` float32 object sizes (circumradius, pixels).
        angles: ``(N,)`` float32 object rotation angles (radians).
        colors: ``(N, 3)`` float32 object RGB colours in ``[0, 1]``.
    """

    images: Tensor
    labels: Tensor
    masks: Tensor
    centers: Tensor
    sizes: Tensor
    angles: Tensor
    colors: Tensor

    def __len__(self) -> int:
        return self.images.shape[0]


def _check_args(image_size: int, num_classes: int) -> None:
    if not isinstance(image_size, int) or image_size < 8:
        raise ValueError(f"image_size must be an int >= 8, got {image_size!r}")
    if not isinstance(num_classes, int) or not 1 <= num_classes <= len(SHAPE_NAMES):
        raise ValueError(f"num_classes must be an int in 1..{len(SHAPE_NAMES)} (shapes {list(SHAPE_NAMES)}), got {num_classes!r}")


class ObjectParams(NamedTuple):
    """The random draws of one image's object (see ``sample_image``)."""

    label: int
    center: Tuple[float, float]
    size: float
    angle: float
    color: Tensor  # (3,)


def sample_image(index: int, image_size: int = 64, num_classes: int = 4, seed: int = 0) -> Tuple[BackgroundParams, ObjectParams]:
    """All random draws of image ``index`` of dataset ``seed``, from its own generator, in a fixed order.

    Order: label, background (``sample_background``), size/centre/angle, colour. Variants that
    need more draws should take them after these, so the existing images do not change.
    """
    _check_args(image_size, num_classes)
    generator = image_generator(seed, index)
    label = int(torch.randint(0, num_classes, (), generator=generator))
    background = sample_background(generator, image_size)
    size, cx, cy, angle = torch.rand(4, generator=generator).tolist()
    size = (_SIZE_RANGE[0] + (_SIZE_RANGE[1] - _SIZE_RANGE[0]) * size) * image_size
    # keep the whole shape (its circumscribed circle) inside the image
    cx, cy = (size + (image_size - 1 - 2 * size) * t for t in (cx, cy))
    angle *= 2 * math.pi
    color = random_object_color(generator)
    return background, ObjectParams(label, (cx, cy), size, angle, color)


def _render(
    draws: Sequence[Tuple[BackgroundParams, ObjectParams]], image_size: int, num_classes: int
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    objects = [o for _, o in draws]
    n = len(objects)
    labels = torch.tensor([o.label for o in objects], dtype=torch.long)
    centers = torch.tensor([o.center for o in objects], dtype=torch.float32).view(n, 2)
    sizes = torch.tensor([o.size for o in objects], dtype=torch.float32)
    angles = torch.tensor([o.angle for o in objects], dtype=torch.float32)
    colors = torch.stack([o.color for o in objects]) if n else torch.empty((0, 3))
    images = render_backgrounds([b for b, _ in draws], image_size)
    masks = shape_masks([SHAPE_NAMES[o.label] for o in objects], image_size, centers, sizes, angles)
    images = torch.where(masks.unsqueeze(1), colors.view(n, 3, 1, 1), images)
    return images, labels, masks, centers, sizes, angles, colors


def make_shape_image(
    index: int, image_size: int = 64, num_classes: int = 4, seed: int = 0
) -> Tuple[Tensor, int, Tensor, Tuple[float, float], float, float, Tensor]:
    """Image ``index`` of the dataset ``seed``: one random shape on a textured background.

    Returns:
        ``(image (3, H, W) float32 in [0, 1], label, mask (H, W) bool, (cx, cy), size, angle, color (3,))``.

    Example::

        >>> image, label, mask, center, size, angle, color = make_shape_image(3, image_size=32)
        >>> bool((image[:, mask] == color[:, None]).all())
        True
    """
    draw = sample_image(index, image_size, num_classes, seed)
    images, _, masks, _, _, _, colors = _render([draw], image_size, num_classes)
    obj = draw[1]
    return images[0], obj.label, masks[0], obj.center, obj.size, obj.angle, colors[0]


def make_shapes(num_images: int, image_size: int = 64, num_classes: int = 4, seed: int = 0, start: int = 0) -> ShapesBatch:
    """Generate ``num_images`` shape images (indices ``start .. start + num_images - 1`` of dataset ``seed``).

    Labels are drawn uniformly per image (balanced in expectation, not exactly). Random draws are
    made per image (``sample_image``); the pixels are computed in batches, on one CPU thread
    (torch's thread count is restored on return). 2000 images of 64x64 take about 1 s on a busy
    2-core machine.

    Args:
        num_images: Number of images (>= 0).
        image_size: Side of the square images, in pixels (>= 8).
        num_classes: Number of classes, the first ``num_classes`` of ``SHAPE_NAMES``.
        seed: Dataset seed (>= 0); different seeds give independent images.
        start: Index of the first image, so a dataset can be generated in pieces.

    Returns:
        A ``ShapesBatch``.

    Example::

        >>> batch = make_shapes(4, image_size=32, seed=1)
        >>> batch.images.dtype, batch.labels.dtype, batch.masks.dtype
        (torch.float32, torch.int64, torch.bool)
        >>> bool(batch.images.min() >= 0) and bool(batch.images.max() <= 1)
        True
        >>> torch.equal(make_shapes(2, image_size=32, seed=1, start=2).images, batch.images[2:])
        True
    """
    _check_args(image_size, num_classes)
    if not isinstance(num_images, int) or num_images < 0:
        raise ValueError(f"num_images must be an int >= 0, got {num_images!r}")
    if not isinstance(start, int) or start < 0:
        raise ValueError(f"start must be an int >= 0, got {start!r}")
    n = num_images
    batch = ShapesBatch(
        images=torch.empty((n, 3, image_size, image_size), dtype=torch.float32),
        labels=torch.empty(n, dtype=torch.long),
        masks=torch.empty((n, image_size, image_size), dtype=torch.bool),
        centers=torch.empty((n, 2), dtype=torch.float32),
        sizes=torch.empty(n, dtype=torch.float32),
        angles=torch.empty(n, dtype=torch.float32),
        colors=torch.empty((n, 3), dtype=torch.float32),
    )
    fields = (batch.images, batch.labels, batch.masks, batch.centers, batch.sizes, batch.angles, batch.colors)
    chunk = max(1, _CHUNK_PIXELS // (image_size * image_size))  # keeps intermediates small (cache-friendly)
    with single_threaded():
        for first in range(0, n, chunk):
            count = min(chunk, n - first)
            draws = [sample_image(start + first + i, image_size, num_classes, seed) for i in range(count)]
            for target, part in zip(fields, _render(draws, image_size, num_classes)):
                target[first : first + count] = part
    return batch


def normalize(images: Tensor, mean: Sequence[float] = SHAPES_MEAN, std: Sequence[float] = SHAPES_STD) -> Tensor:
    """``(images - mean) / std`` per channel, for ``(3, H, W)`` or ``(N, 3, H, W)`` tensors."""
    m = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(-1, 1, 1)
    return (images - m) / s


def unnormalize(images: Tensor, mean: Sequence[float] = SHAPES_MEAN, std: Sequence[float] = SHAPES_STD) -> Tensor:
    """Inverse of ``normalize``: ``images * std + mean`` per channel (no clipping)."""
    m = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(-1, 1, 1)
    return images * s + m


_normalize_images = normalize  # the dataset argument `normalize` shadows the function


class ShapesDataset(Dataset):
    """A map-style dataset of shape images: ``dataset[i] == (normalised image (3, H, W), label int)``.

    All images are generated at construction (about 0.5 ms per 64x64 image; 2000 such images
    take ~100 MB) and kept; sample ``i`` is image ``i`` of ``make_shapes`` with the same seed, so two
    datasets with the same arguments are identical and a train and a validation split only need
    different seeds.

    Args:
        num_images: Number of samples.
        image_size: Side of the square images.
        num_classes: Number of classes (first ``num_classes`` of ``SHAPE_NAMES``).
        seed: Dataset seed.
        normalize: Normalise with ``SHAPES_MEAN`` / ``SHAPES_STD`` (default) or return images in ``[0, 1]``.

    Attributes:
        batch: The underlying ``ShapesBatch`` (un-normalised images, labels, masks, object parameters).

    Example::

        >>> train, val = ShapesDataset(16, image_size=32, seed=0), ShapesDataset(8, image_size=32, seed=1)
        >>> image, label = train[0]
        >>> image.shape, type(label)
        (torch.Size([3, 32, 32]), <class 'int'>)
        >>> val.masks.shape
        torch.Size([8, 32, 32])
    """

    def __init__(self, num_images: int, image_size: int = 64, num_classes: int = 4, seed: int = 0, normalize: bool = True) -> None:
        self.num_images = num_images
        self.image_size = image_size
        self.num_classes = num_classes
        self.seed = seed
        self.normalized = normalize
        self.batch = make_shapes(num_images, image_size=image_size, num_classes=num_classes, seed=seed)
        self._inputs = _normalize_images(self.batch.images) if normalize else self.batch.images

    @property
    def labels(self) -> Tensor:
        """``(N,)`` long labels."""
        return self.batch.labels

    @property
    def masks(self) -> Tensor:
        """``(N, H, W)`` bool object masks."""
        return self.batch.masks

    @property
    def class_names(self) -> Tuple[str, ...]:
        """Shape name of each class index."""
        return SHAPE_NAMES[: self.num_classes]

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> Tuple[Tensor, int]:
        if index < 0:
            index += self.num_images
        if not 0 <= index < self.num_images:
            raise IndexError(f"index {index} out of range for a dataset of {self.num_images} images")
        return self._inputs[index].clone(), int(self.batch.labels[index])
