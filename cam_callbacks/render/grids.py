"""Captioned image grids: one cell per probe image (caption, original, overlay), labelled map tiles, the evolution strip.

The one grid builder: the callback's images (``cam_callbacks.render.publish``) and the notebook helpers
(``cam_callbacks.render.notebook``) both draw their cells with ``captioned_grid``, so the same images, maps,
``alpha`` and colormap give the same pixels in TensorBoard and in a notebook.
Functions of tensors and strings; the callers decide what goes in them.
Layout: tiles are enlarged by an integer factor (nearest neighbour) to at least ``min_tile`` pixels;
cells sit on a white background with ``GAP`` pixels between them.
"""

from __future__ import annotations

from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from cam_callbacks.render.images import apply_colormap, draw_outline, mask_outline, weighted_overlay
from cam_callbacks.render.legend import LEGEND_FONT, NUISANCE_COLOR, OBJECT_COLOR
from cam_callbacks.render.text import fit_text, line_height, paint_text, text_width

#: White pixels between cells.
GAP = 6
#: Colour of the caption of a wrong prediction.
WRONG_COLOR = (0.8, 0.0, 0.0)


class Caption(NamedTuple):
    """The two caption lines of one cell; ``wrong`` draws them in ``WRONG_COLOR``."""

    title: str
    detail: str = ""
    wrong: bool = False


def enlarge_factor(height: int, width: int, min_tile: int) -> int:
    """The integer factor ``enlarge`` applies to ``height`` x ``width`` tiles: ``max(1, ceil(min_tile / min(height, width)))``."""
    return max(1, -(-min_tile // min(height, width)))


def enlarge(images: Tensor, min_tile: int) -> Tensor:
    """``(N, C, H, W)`` enlarged by ``enlarge_factor`` (nearest neighbour), if above 1."""
    factor = enlarge_factor(images.shape[-2], images.shape[-1], min_tile)
    return F.interpolate(images, scale_factor=factor, mode="nearest") if factor > 1 else images


def tile_rows(cells: Tensor, per_row: int, gap: int = GAP) -> Tensor:
    """``(N, 3, h, w)`` cells as one ``(3, H, W)`` white image, ``per_row`` cells per row, ``gap`` pixels around each."""
    n, _, h, w = cells.shape
    per_row = max(1, min(per_row, n))
    rows = -(-n // per_row)
    out = torch.ones(3, rows * (h + gap) + gap, per_row * (w + gap) + gap, dtype=cells.dtype)
    for i in range(n):
        top = gap + (i // per_row) * (h + gap)
        left = gap + (i % per_row) * (w + gap)
        out[:, top : top + h, left : left + w] = cells[i]
    return out


def caption_height() -> int:
    """Height in pixels of the two-line caption band above each cell's tiles."""
    return 2 * line_height(LEGEND_FONT) + 2


def cell_boxes(n: int, per_row: int, tile_h: int, tile_w: int) -> List[Tuple[int, int, int]]:
    """Where ``captioned_grid`` puts cell ``i``'s tiles: ``(top, left of the original, left of the overlay)``
    for enlarged ``tile_h`` x ``tile_w`` tiles (the original and the overlay are 2 pixels apart)."""
    per_row = max(1, min(per_row, n))
    cell_h = caption_height() + tile_h
    cell_w = 2 * tile_w + 2
    boxes = []
    for i in range(n):
        top = GAP + (i // per_row) * (cell_h + GAP)
        left = GAP + (i % per_row) * (cell_w + GAP)
        boxes.append((top + caption_height(), left, left + tile_w + 2))
    return boxes


def captioned_grid(
    display_images: Tensor,
    maps: Tensor,
    captions: Sequence[Caption],
    alpha: float = 0.5,
    colormap: str = "jet",
    per_row: int = 4,
    min_tile: int = 96,
    masks: Optional[Tensor] = None,
    nuisance: Optional[Tensor] = None,
) -> Tensor:
    """A ``(3, H, W)`` grid of cells: caption (two lines) over the original and, right of it, its overlay
    (``weighted_overlay``); object outlines in ``OBJECT_COLOR``, nuisance outlines in ``NUISANCE_COLOR``,
    drawn after enlarging so they stay one pixel thin.

    Args:
        display_images: ``(N, 3, H, W)`` RGB in [0, 1].
        maps: ``(N, H, W)`` maps in [0, 1].
        captions: One ``Caption`` per image.
        alpha, colormap: The overlay's look.
        per_row: Cells per row.
        min_tile: Smallest tile side in pixels after enlargement.
        masks, nuisance: ``(N, H, W)`` bool regions to outline, or None.
    """
    if not display_images.shape[0] == maps.shape[0] == len(captions):
        raise ValueError(f"{display_images.shape[0]} images, {maps.shape[0]} maps and {len(captions)} captions: give one of each per cell")
    big = enlarge(display_images.float(), min_tile)
    overlays = enlarge(weighted_overlay(display_images.float(), maps, alpha, colormap), min_tile)  # pointwise: the same as after enlarging
    for regions, color in ((masks, OBJECT_COLOR), (nuisance, NUISANCE_COLOR)):
        if regions is not None:
            outline = mask_outline(enlarge(regions.float().unsqueeze(1), min_tile).squeeze(1) > 0.5)
            big = draw_outline(big, outline, color)
            overlays = draw_outline(overlays, outline, color)
    n, _, tile_h, tile_w = big.shape
    per_row = max(1, min(per_row, n))
    band = caption_height()
    cell_h = band + tile_h
    cell_w = 2 * tile_w + 2
    out = torch.ones(3, -(-n // per_row) * (cell_h + GAP) + GAP, per_row * (cell_w + GAP) + GAP)
    line = line_height(LEGEND_FONT)
    for i, (top, left, overlay_left) in enumerate(cell_boxes(n, per_row, tile_h, tile_w)):  # written in place: no copies
        out[:, top : top + tile_h, left : left + tile_w] = big[i]
        out[:, top : top + tile_h, overlay_left : overlay_left + tile_w] = overlays[i]
        color = WRONG_COLOR if captions[i].wrong else (0.0, 0.0, 0.0)
        paint_text(out, fit_text(captions[i].title, LEGEND_FONT, cell_w - 2), left + 1, top - band, LEGEND_FONT, color)
        paint_text(out, fit_text(captions[i].detail, LEGEND_FONT, cell_w - 2), left + 1, top - band + line, LEGEND_FONT, color)
    return out


def labelled_tiles(maps: Tensor, names: Sequence[str], colormap: str = "jet", per_row: int = 8, min_tile: int = 96) -> Tensor:
    """``(M, H, W)`` maps in [0, 1], coloured, each under its name: a ``(3, H', W')`` image."""
    if maps.shape[0] != len(names):
        raise ValueError(f"{maps.shape[0]} maps but {len(names)} names")
    tiles = enlarge(apply_colormap(maps.float(), colormap), min_tile)
    line = line_height(LEGEND_FONT)
    bands = torch.ones(tiles.shape[0], 3, line + 2, tiles.shape[-1])
    for i, name in enumerate(names):
        paint_text(bands[i], fit_text(name, LEGEND_FONT, tiles.shape[-1] - 2), 1, 1, LEGEND_FONT)
    return tile_rows(torch.cat([bands, tiles], dim=2), per_row)


def evolution_grid(
    display_images: Tensor,
    history: Sequence[Tuple[str, Tensor]],
    row_names: Sequence[str],
    alpha: float = 0.5,
    colormap: str = "jet",
    tile: int = 64,
) -> Tensor:
    """Rows of probe images, columns: the original, then one overlay per run (``history``: ``(column title, (R, h, w)
    maps)``, oldest first; the maps of any size, resized to ``tile``). Row names and column titles are written on
    the left and on top. Returns ``(3, H, W)``.
    """
    rows = display_images.shape[0]
    if len(row_names) != rows:
        raise ValueError(f"{rows} images but {len(row_names)} row names")
    images = F.interpolate(display_images.float(), size=(tile, tile), mode="bilinear", align_corners=False).clamp(0, 1)
    columns: List[Tensor] = [images]
    for _, maps in history:
        small = F.interpolate(maps.float().unsqueeze(1), size=(tile, tile), mode="bilinear", align_corners=False).squeeze(1)
        columns.append(weighted_overlay(images, small, alpha, colormap))
    line = line_height(LEGEND_FONT)
    label_w = max(text_width(name, LEGEND_FONT) for name in row_names) + 8
    step = tile + 2
    out = torch.ones(3, line + 4 + rows * step, label_w + len(columns) * step)
    for c, column in enumerate(columns):
        left = label_w + c * step
        title = "image" if c == 0 else history[c - 1][0]
        paint_text(out, fit_text(title, LEGEND_FONT, step - 2), left, 1, LEGEND_FONT)
        for r in range(rows):
            out[:, line + 4 + r * step : line + 4 + r * step + tile, left : left + tile] = column[r]
    for r, name in enumerate(row_names):
        paint_text(out, fit_text(name, LEGEND_FONT, label_w - 4), 2, line + 4 + r * step + tile // 2 - line // 2, LEGEND_FONT)
    return out
