"""Rendering maps for people: colormaps, overlays and image grids (no computing of maps here).

All functions are batched torch operations on any device; matplotlib is used only to read a
colormap's lookup table, lazily.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Optional, Sequence

import torch
from torch import Tensor

from cam_callbacks.utils.numeric import safe_divide

__all__ = ["colormap_lut", "apply_colormap", "to_display", "overlay", "heatmap_grid", "mask_outline", "draw_outline", "map_tiles"]


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


def overlay(display_images: Tensor, maps: Tensor, alpha: float = 0.5, colormap: str = "jet") -> Tensor:
    """Blend coloured maps over RGB images: ``(1 - alpha) * image + alpha * colormap(map)``."""
    return ((1.0 - alpha) * display_images + alpha * apply_colormap(maps, colormap)).clamp(0, 1)


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


def map_tiles(maps: Tensor, colormap: str = "jet", per_row: int = 8, min_tile: int = 96) -> Tensor:
    """A ``(3, H', W')`` grid of coloured ``(M, H, W)`` maps in [0, 1] (class means, the shortcut mean map)."""
    from torchvision.utils import make_grid

    tiles = apply_colormap(maps.float(), colormap)
    factor = -(-min_tile // min(tiles.shape[-2:]))
    if factor > 1:
        tiles = torch.nn.functional.interpolate(tiles, scale_factor=factor, mode="nearest")
    return make_grid(tiles, nrow=max(1, min(per_row, tiles.shape[0])), padding=2, pad_value=1.0)


def heatmap_grid(
    display_images: Tensor,
    maps: Tensor,
    alpha: float = 0.5,
    colormap: str = "jet",
    per_row: int = 8,
    min_tile: int = 96,
    outlines: Optional[Tensor] = None,
) -> Tensor:
    """A ``(3, H', W')`` grid: rows of originals, each followed by a row of their overlays.

    Tiles smaller than ``min_tile`` pixels are enlarged by an integer factor (nearest neighbour,
    so pixels stay sharp) to stay readable in TensorBoard.

    Args:
        display_images: ``(N, 3, H, W)`` RGB in [0, 1] (see :func:`to_display`).
        maps: ``(N, H, W)`` maps in [0, 1].
        alpha: Heatmap opacity.
        colormap: Matplotlib colormap name.
        per_row: Images per row.
        min_tile: Smallest tile side in pixels after enlargement.
        outlines: ``(N, H, W)`` bool pixels to paint white on originals and overlays (mask outlines).
    """
    from torchvision.utils import make_grid

    if display_images.shape[0] != maps.shape[0]:
        raise ValueError(f"{display_images.shape[0]} images but {maps.shape[0]} maps")
    overlays = overlay(display_images, maps.to(display_images.device), alpha, colormap)
    if outlines is not None:
        display_images = draw_outline(display_images, outlines)
        overlays = draw_outline(overlays, outlines)
    factor = -(-min_tile // min(display_images.shape[-2:]))
    if factor > 1:
        display_images = torch.nn.functional.interpolate(display_images, scale_factor=factor, mode="nearest")
        overlays = torch.nn.functional.interpolate(overlays, scale_factor=factor, mode="nearest")
    n = display_images.shape[0]
    per_row = max(1, min(per_row, n))
    rows = []
    for start in range(0, n, per_row):
        block_images = display_images[start : start + per_row]
        block_overlays = overlays[start : start + per_row]
        pad = per_row - block_images.shape[0]
        if pad:
            blank = torch.ones((pad,) + tuple(block_images.shape[1:]), dtype=block_images.dtype, device=block_images.device)
            block_images = torch.cat([block_images, blank])
            block_overlays = torch.cat([block_overlays, blank])
        rows.extend([block_images, block_overlays])
    return make_grid(torch.cat(rows), nrow=per_row, padding=2, pad_value=1.0)
