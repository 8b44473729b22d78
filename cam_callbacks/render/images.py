"""Pixels for people: colormaps, display images, the overlay of a map on its image, region outlines (no layouts here:
see ``cam_callbacks.render.grids``).

All functions are batched torch operations on any device; matplotlib is used only to read a
colormap's lookup table, lazily.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Optional, Sequence

import torch
from torch import Tensor

from cam_callbacks.utils.numeric import safe_divide


@lru_cache(maxsize=8)
def _lut_cpu(name: str) -> Tensor:
    import matplotlib

    try:
        cmap = matplotlib.colormaps[name]
    except KeyError:
        raise ValueError(f"colormap={name!r} is not a matplotlib colormap; e.g. 'jet', 'turbo', 'inferno', 'viridis'") from None
    return torch.tensor(cmap(torch.linspace(0, 1, 256).numpy())[:, :3], dtype=torch.float32)


def colormap_lut(name: str = "jet", device: Optional[torch.device] = None) -> Tensor:
    """The 256-entry RGB lookup table of a matplotlib colormap, ``(256, 3)`` float in [0, 1]."""
    return _lut_cpu(name).to(device) if device is not None else _lut_cpu(name)


def apply_colormap(maps: Tensor, name: str = "jet") -> Tensor:
    """Colour ``(N, H, W)`` maps in [0, 1] with a colormap: ``(N, 3, H, W)`` float in [0, 1]."""
    lut = colormap_lut(name, maps.device)
    index = (maps.clamp(0, 1) * 255).round().long()
    return lut[index].permute(0, 3, 1, 2)


def to_display(images: Tensor, mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None) -> Tensor:
    """Turn model inputs back into displayable RGB ``(N, 3, H, W)`` in [0, 1].

    With ``mean``/``std`` the normalisation is undone (``x * std + mean``) and the result clipped;
    without them each image is min-max scaled. One-channel images are repeated to RGB; images with
    another channel count than 1 or 3 are shown as the grey mean of their channels.
    """
    x = images.detach().float()
    if mean is not None and std is not None:
        m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        if m.shape[1] not in (1, x.shape[1]) or s.shape[1] not in (1, x.shape[1]):
            raise ValueError(f"mean/std have {m.shape[1]}/{s.shape[1]} values but the images have {x.shape[1]} channels")
        x = (x * s + m).clamp(0, 1)
    else:
        low = x.amin(dim=(1, 2, 3), keepdim=True)
        high = x.amax(dim=(1, 2, 3), keepdim=True)
        x = safe_divide(x - low, high - low, require_positive=True)
    if x.shape[1] == 1:
        return x.expand(-1, 3, -1, -1)
    if x.shape[1] != 3:
        return x.mean(dim=1, keepdim=True).expand(-1, 3, -1, -1)
    return x


def weighted_overlay(display_images: Tensor, maps: Tensor, alpha: float = 0.5, colormap: str = "jet") -> Tensor:
    """Coloured maps over RGB images with an opacity that follows the map: ``a = clamp(alpha * (0.25 + 1.25 m), 0, 1)``,
    ``out = (1 - a) * image + a * colormap(m)``: where the map is low the image shows through (a quarter of ``alpha``),
    where it is high the colour dominates (``1.5 * alpha``). The only overlay: the callback's grids and the notebook
    helpers draw with it.

    Example::

        >>> image, maps = torch.zeros(1, 3, 1, 2), torch.tensor([[[0.0, 1.0]]])
        >>> weighted_overlay(image, maps, 0.4, "gray")[0, 0]
        tensor([[0.0000, 0.6000]])
    """
    m = maps.to(display_images.device).float().clamp(0, 1)
    opacity = (alpha * (0.25 + 1.25 * m)).clamp(0, 1).unsqueeze(1)
    return (display_images + opacity * (apply_colormap(m, colormap) - display_images)).clamp(0, 1)


def mask_outline(masks: Tensor) -> Tensor:
    """The boundary pixels of ``(N, H, W)`` bool masks: mask pixels with a 4-neighbour outside the mask.

    Example::

        >>> m = torch.zeros(1, 5, 5, dtype=torch.bool); m[0, 1:4, 1:4] = True
        >>> mask_outline(m)[0].int()
        tensor([[0, 0, 0, 0, 0],
                [0, 1, 1, 1, 0],
                [0, 1, 0, 1, 0],
                [0, 1, 1, 1, 0],
                [0, 0, 0, 0, 0]], dtype=torch.int32)
    """
    inside = masks.bool()
    padded = torch.nn.functional.pad(inside, (1, 1, 1, 1))  # outside the image counts as outside the mask
    all_neighbours = padded[:, :-2, 1:-1] & padded[:, 2:, 1:-1] & padded[:, 1:-1, :-2] & padded[:, 1:-1, 2:]
    return inside & ~all_neighbours


def draw_outline(rgb: Tensor, outline: Tensor, color: Sequence[float] = (1.0, 1.0, 1.0)) -> Tensor:
    """``(N, 3, H, W)`` images with the ``(N, H, W)`` outline pixels painted in ``color``."""
    paint = torch.as_tensor(color, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1).expand_as(rgb)
    return torch.where(outline.unsqueeze(1).to(rgb.device), paint, rgb)
