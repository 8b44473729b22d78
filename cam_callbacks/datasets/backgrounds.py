"""Random streams and textured backgrounds of the generated images.

Every image has its own ``torch.Generator`` (``image_generator``), so it does not depend on how
many images are generated or in what order, and the global RNG is never used. Backgrounds are drawn
(``sample_background``) and rendered in batches (``render_backgrounds``): smooth coloured
noise mixed with stripes of random frequency, orientation and colour, plus faint pixel noise, all in
``[0, BACKGROUND_MAX]``. Pixel ``(row i, column j)`` has its centre at ``(x, y) = (j, i)``
(``pixel_grid``).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator, NamedTuple, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "BACKGROUND_MAX",
    "BackgroundParams",
    "image_generator",
    "pixel_grid",
    "render_backgrounds",
    "sample_background",
    "single_threaded",
    "textured_background",
]

#: Upper bound of every background pixel value.
BACKGROUND_MAX: float = 0.6


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
def single_threaded() -> Iterator[None]:
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


def pixel_grid(image_size: int) -> Tuple[Tensor, Tensor]:
    """``(x, y)`` pixel-centre coordinates of a square image, each ``(H, W)`` float32 (``x`` = column, ``y`` = row).

    Example::

        >>> x, y = pixel_grid(2)
        >>> x.tolist(), y.tolist()
        ([[0.0, 1.0], [0.0, 1.0]], [[0.0, 0.0], [1.0, 1.0]])
    """
    coords = torch.arange(image_size, dtype=torch.float32)
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    return x, y


class BackgroundParams(NamedTuple):
    """The random draws of one background (see ``sample_background``)."""

    coarse: Tensor  # (3, c, c) colour grid, c in 3..6
    period: float  # stripe period in pixels
    theta: float  # stripe normal direction (radians)
    phase: float  # stripe phase (radians)
    stripe_color: Tensor  # (3,)
    weight: float  # share of the smooth noise in the texture
    brightness: float  # texture scale
    noise: Tensor  # (3, H, W) standard normal pixel noise


def sample_background(generator: torch.Generator, image_size: int) -> BackgroundParams:
    """Draw the random parameters of one textured background (rendered by ``render_backgrounds``)."""
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
    x, y = pixel_grid(image_size)
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

    Shorthand for ``sample_background`` followed by ``render_backgrounds``.

    Example::

        >>> bg = textured_background(image_generator(0, 0), 32)
        >>> bg.shape, bool(bg.min() >= 0), bool(bg.max() <= BACKGROUND_MAX)
        (torch.Size([3, 32, 32]), True, True)
    """
    return render_backgrounds([sample_background(generator, image_size)], image_size)[0]
