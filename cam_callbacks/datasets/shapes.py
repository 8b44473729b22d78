"""Synthetic shape images with known object masks, for examples, tests and benchmarks.

Each image shows one solid-coloured shape (its class) on a textured background: smooth coloured
noise mixed with stripes of random frequency, orientation and colour, plus faint pixel noise, so a
model cannot solve the task by finding "the non-uniform region". The pixel mask of the object is
returned with every image, which makes it possible to check where an explanation points.

Generation is pure torch and deterministic: image ``i`` of seed ``s`` is drawn from its own
``torch.Generator`` seeded from ``(s, i)``, so it is the same whether it is produced by
:func:`make_shapes` or :class:`ShapesDataset`, in any order, in any process; the global RNG is
never used or changed.

Geometry conventions (pinned by the tests):

- Pixel ``(row i, column j)`` has its centre at ``(x, y) = (j, i)``: coordinates are pixel
  indices, ``x`` to the right, ``y`` down.
- A shape is given by its centre ``(cx, cy)``, its *size* ``r`` (the radius of its circumscribed
  circle, in pixels), an angle (radians, counter-clockwise on screen) and an RGB colour; a pixel
  belongs to it when its centre satisfies the shape's inequality (see :func:`shape_mask`); the
  disc, for instance, is ``(x - cx)**2 + (y - cy)**2 <= r**2``. No anti-aliasing: the object's
  pixels have exactly the object colour and nothing else does.
- Backgrounds stay in ``[0, BACKGROUND_MAX]``; object colours have their brightest channel in
  ``[OBJECT_MIN_PEAK, 1]``, so the object always stands out from its background.

The drawing is split so that variants (one large or one small object, several objects, a nuisance
cue such as a coloured corner patch correlated with the label) can be added by composing
:func:`textured_background`, :func:`shape_mask` and :func:`draw_shape`.

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
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

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

#: Class index -> shape name. ``num_classes=k`` uses the first ``k`` shapes.
SHAPE_NAMES: Tuple[str, ...] = ("disc", "square", "triangle", "cross", "ring")

#: Per-channel mean of the generated images (measured on 4000 images of 64x64, 4 classes, seed 0;
#: it varies by less than 0.01 with the image size, class count and seed). :class:`ShapesDataset`
#: normalises with ``(x - SHAPES_MEAN) / SHAPES_STD``; pass both to ``CAMMonitor(mean=..., std=...)``
#: to see the probe images in their real colours.
SHAPES_MEAN: Tuple[float, float, float] = (0.261, 0.260, 0.262)
#: Per-channel standard deviation of the generated images (same measurement as :data:`SHAPES_MEAN`).
SHAPES_STD: Tuple[float, float, float] = (0.172, 0.175, 0.175)

#: Upper bound of every background pixel value.
BACKGROUND_MAX: float = 0.6
#: Lower bound of the brightest channel of an object colour.
OBJECT_MIN_PEAK: float = 0.75

#: Shape size range, as a fraction of the image side (the size is the circumradius).
_SIZE_RANGE = (0.16, 0.3)

#: Pixels per rendering chunk in :func:`make_shapes`.
_CHUNK_PIXELS = 1 << 19


@dataclass
class ShapesBatch:
    """Images with their labels, object masks and the parameters each object was drawn with.

    Attributes:
        images: ``(N, 3, H, W)`` float32 in ``[0, 1]`` (not normalised).
        labels: ``(N,)`` long, class indices into :data:`SHAPE_NAMES`.
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


def image_generator(seed: int, index: int) -> torch.Generator:
    """The private generator of image ``index`` of dataset ``seed``.

    The two integers are mixed with the SplitMix64 finaliser, so nearby ``(seed, index)`` pairs
    (e.g. ``(0, 1)`` and ``(1, 0)``) give unrelated streams.

    Example::

        >>> a = torch.rand(3, generator=image_generator(0, 5))
        >>> torch.equal(a, torch.rand(3, generator=image_generator(0, 5)))
        True
    """
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be non-negative, got seed={seed}, index={index}")
    mask64 = (1 << 64) - 1
    z = (seed * 0x9E3779B97F4A7C15 + index + 1) & mask64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask64
    z ^= z >> 31
    return torch.Generator().manual_seed(z & ((1 << 63) - 1))


@contextmanager
def _single_threaded() -> Iterator[None]:
    """Run torch CPU ops on one thread inside the block (the previous setting is restored).

    The generator's tensors are small: on a busy 2-core machine, OpenMP's thread synchronisation
    made generation 3-5x slower than a single thread.
    """
    previous = torch.get_num_threads()
    if previous == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _pixel_grid(image_size: int) -> Tuple[Tensor, Tensor]:
    """``(x, y)`` pixel-centre coordinates, each ``(H, W)`` float32."""
    coords = torch.arange(image_size, dtype=torch.float32)
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    return x, y


class BackgroundParams(NamedTuple):
    """The random draws of one background (see :func:`sample_background`)."""

    coarse: Tensor  # (3, c, c) colour grid, c in 3..6
    period: float  # stripe period in pixels
    theta: float  # stripe normal direction (radians)
    phase: float  # stripe phase (radians)
    stripe_color: Tensor  # (3,)
    weight: float  # share of the smooth noise in the texture
    brightness: float  # texture scale
    noise: Tensor  # (3, H, W) standard normal pixel noise


def sample_background(generator: torch.Generator, image_size: int) -> BackgroundParams:
    """Draw the random parameters of one textured background (rendered by :func:`render_backgrounds`)."""
    cells = int(torch.randint(3, 7, (), generator=generator))
    coarse = torch.rand((3, cells, cells), generator=generator)
    period, theta, phase, weight, brightness = torch.rand(5, generator=generator).tolist()
    stripe_color = torch.rand(3, generator=generator)
    noise = torch.randn((3, image_size, image_size), generator=generator)
    return BackgroundParams(
        coarse=coarse,
        period=(0.12 + 0.33 * period) * image_size,
        theta=math.pi * theta,
        phase=2 * math.pi * phase,
        stripe_color=stripe_color,
        weight=0.35 + 0.45 * weight,
        brightness=0.35 + 0.15 * brightness,
        noise=noise,
    )


def render_backgrounds(params: Sequence[BackgroundParams], image_size: int) -> Tensor:
    """Render backgrounds in one batch: ``(N, 3, H, W)`` float32 in ``[0, BACKGROUND_MAX]``.

    The texture mixes smooth coloured noise (the coarse colour grid, bilinearly upsampled),
    sinusoidal stripes of random period, orientation, phase and colour, and faint per-pixel noise:
    ``clamp(0.05 + brightness * (weight * smooth + (1 - weight) * stripes * stripe_color) + 0.03 * noise)``.
    """
    n = len(params)
    out = torch.empty((n, 3, image_size, image_size), dtype=torch.float32)
    if n == 0:
        return out
    # smooth noise, one interpolation per grid size
    cells = torch.tensor([p.coarse.shape[-1] for p in params])
    for c in cells.unique().tolist():
        index = (cells == c).nonzero().flatten()
        coarse = torch.stack([params[i].coarse for i in index.tolist()])
        out[index] = F.interpolate(coarse, size=(image_size, image_size), mode="bilinear", align_corners=False)
    x, y = _pixel_grid(image_size)
    values = torch.tensor([[p.theta, p.period, p.phase, p.weight, p.brightness] for p in params], dtype=torch.float32)
    theta, period, phase, weight, brightness = (values[:, k].view(n, 1, 1, 1) for k in range(5))
    arg = x * (torch.cos(theta) * (2 * math.pi) / period) + y * (torch.sin(theta) * (2 * math.pi) / period) + phase
    stripes = arg.sin_().mul_(0.5).add_(0.5).mul_(1.0 - weight)  # (N, 1, H, W)
    stripe_color = torch.stack([p.stripe_color for p in params]).view(n, 3, 1, 1)
    out.mul_(weight).addcmul_(stripes, stripe_color)  # texture
    out.mul_(brightness).add_(0.05)
    for i, p in enumerate(params):  # add the noise without stacking it
        out[i].add_(p.noise, alpha=0.03)
    return out.clamp_(0.0, BACKGROUND_MAX)


def textured_background(generator: torch.Generator, image_size: int) -> Tensor:
    """A random textured background, ``(3, H, W)`` float32 in ``[0, BACKGROUND_MAX]``.

    Shorthand for :func:`sample_background` followed by :func:`render_backgrounds`.

    Example::

        >>> bg = textured_background(image_generator(0, 0), 32)
        >>> bg.shape, bool(bg.min() >= 0), bool(bg.max() <= BACKGROUND_MAX)
        (torch.Size([3, 32, 32]), True, True)
    """
    return render_backgrounds([sample_background(generator, image_size)], image_size)[0]


def random_object_color(generator: torch.Generator) -> Tensor:
    """A random RGB colour ``(3,)`` whose brightest channel is in ``[OBJECT_MIN_PEAK, 1]``."""
    draws = torch.rand(4, generator=generator)
    color = draws[:3].clamp_min(1e-3)
    peak = OBJECT_MIN_PEAK + (1.0 - OBJECT_MIN_PEAK) * draws[3]
    return color * (peak / color.max())


def shape_masks(shapes: Sequence[str], image_size: int, centers: Tensor, sizes: Tensor, angles: Tensor) -> Tensor:
    """Batched :func:`shape_mask`: ``(N, H, W)`` bool for ``N`` shapes.

    Args:
        shapes: ``N`` shape names from :data:`SHAPE_NAMES`.
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
    x, y = _pixel_grid(image_size)
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
        shape: One of :data:`SHAPE_NAMES`.
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
        shape, center, size, angle: As in :func:`shape_mask`.
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


def _check_args(image_size: int, num_classes: int) -> None:
    if not isinstance(image_size, int) or image_size < 8:
        raise ValueError(f"image_size must be an int >= 8, got {image_size!r}")
    if not isinstance(num_classes, int) or not 1 <= num_classes <= len(SHAPE_NAMES):
        raise ValueError(f"num_classes must be an int in 1..{len(SHAPE_NAMES)} (shapes {list(SHAPE_NAMES)}), got {num_classes!r}")


class ObjectParams(NamedTuple):
    """The random draws of one image's object (see :func:`sample_image`)."""

    label: int
    center: Tuple[float, float]
    size: float
    angle: float
    color: Tensor  # (3,)


def sample_image(index: int, image_size: int = 64, num_classes: int = 4, seed: int = 0) -> Tuple[BackgroundParams, ObjectParams]:
    """All random draws of image ``index`` of dataset ``seed``, from its own generator, in a fixed order.

    Order: label, background (:func:`sample_background`), size/centre/angle, colour. Variants that
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
    made per image (:func:`sample_image`); the pixels are computed in batches, on one CPU thread
    (torch's thread count is restored on return). 2000 images of 64x64 take about 1 s on a busy
    2-core machine.

    Args:
        num_images: Number of images (>= 0).
        image_size: Side of the square images, in pixels (>= 8).
        num_classes: Number of classes, the first ``num_classes`` of :data:`SHAPE_NAMES`.
        seed: Dataset seed (>= 0); different seeds give independent images.
        start: Index of the first image, so a dataset can be generated in pieces.

    Returns:
        A :class:`ShapesBatch`.

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
    with _single_threaded():
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
    """Inverse of :func:`normalize`: ``images * std + mean`` per channel (no clipping)."""
    m = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(-1, 1, 1)
    return images * s + m


_normalize_images = normalize  # the dataset argument `normalize` shadows the function


class ShapesDataset(Dataset):
    """A map-style dataset of shape images: ``dataset[i] == (normalised image (3, H, W), label int)``.

    All images are generated at construction (about 0.5 ms per 64x64 image; 2000 such images
    take ~100 MB) and kept; sample ``i`` is image ``i`` of :func:`make_shapes` with the same seed, so two
    datasets with the same arguments are identical and a train and a validation split only need
    different seeds.

    Args:
        num_images: Number of samples.
        image_size: Side of the square images.
        num_classes: Number of classes (first ``num_classes`` of :data:`SHAPE_NAMES`).
        seed: Dataset seed.
        normalize: Normalise with :data:`SHAPES_MEAN` / :data:`SHAPES_STD` (default) or return images in ``[0, 1]``.

    Attributes:
        batch: The underlying :class:`ShapesBatch` (un-normalised images, labels, masks, object parameters).

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
