"""The legend band under every heatmap image: a colour scale with its ticks and what it measures, and the outline colours.

Pure torch (text through ``cam_callbacks.render.text``); the band is as wide as the image it goes under.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from cam_callbacks.render.images import colormap_lut
from cam_callbacks.render.text import line_height, paint_text, text_width, wrap_text

#: Outline of the object region (where the explanation should be): white, a colour no offered colormap contains.
OBJECT_COLOR: Tuple[float, float, float] = (1.0, 1.0, 1.0)
#: Outline of the nuisance region (where it must not be): magenta, in no offered colormap either.
NUISANCE_COLOR: Tuple[float, float, float] = (1.0, 0.0, 1.0)
#: Font size of legends and captions (pixels): about 10 px on screen where TensorBoard scales a 2-cell-wide grid to its card.
LEGEND_FONT = 14
#: Length of the colour bar in pixels (shorter when the image is narrow).
BAR_WIDTH = 200
_BAR_HEIGHT = 12
_GREY = (0.35, 0.35, 0.35)


def _swatch(band: Tensor, x: int, y: int, color: Sequence[float], label: str) -> int:
    """A small dark square outlined in ``color`` followed by ``label``; returns the x after it."""
    side = line_height(LEGEND_FONT) - 4
    band[:, y : y + side, x : x + side] = 0.25  # a dark square with a ring of the outline colour inside (white shows on it)
    band[:, y + 2 : y + side - 2, x + 2 : x + side - 2] = torch.as_tensor(color, dtype=band.dtype).view(3, 1, 1)
    band[:, y + 4 : y + side - 4, x + 4 : x + side - 4] = 0.25
    return paint_text(band, label, x + side + 4, y - 2, LEGEND_FONT) + 14


def legend_band(
    width: int,
    colormap: str,
    ticks: Sequence[Tuple[float, str]] = ((0.0, "0"), (0.5, "0.5"), (1.0, "1")),
    label: str = "map value",
    outlines: Sequence[Tuple[Tuple[float, float, float], str]] = (),
) -> Tensor:
    """A white ``(3, h, width)`` band: the colormap as a horizontal bar (low values left) with tick labels under it,
    ``label`` beside it, and one swatch per ``(colour, name)`` outline.

    The bar's column ``j`` of ``L`` has the colour of value ``j / (L - 1)`` (see ``colormap_lut``); a tick at
    value ``v`` is labelled under column ``round(v * (L - 1))``.

    Example::

        >>> band = legend_band(400, "viridis")
        >>> band.shape[0], band.shape[2]
        (3, 400)
    """
    line = line_height(LEGEND_FONT)
    left = 8
    bar = max(40, min(BAR_WIDTH, width // 3))
    x = left + bar + 12
    beside = text_width(label, LEGEND_FONT) <= width - x - 4  # else the label goes on its own lines under the ticks
    lines = [label] if beside else wrap_text(label, LEGEND_FONT, width - left - 4)
    band = torch.ones(3, _BAR_HEIGHT + (2 if beside else 2 + len(lines)) * line + 10, width)
    lut = colormap_lut(colormap)
    index = torch.linspace(0, 255, bar).round().long()
    band[:, 4 : 4 + _BAR_HEIGHT, left : left + bar] = lut[index].t().unsqueeze(1)
    for value, text in ticks:
        column = left + int(round(value * (bar - 1)))
        band[:, 4 + _BAR_HEIGHT : 7 + _BAR_HEIGHT, column] = 0.0
        paint_text(band, text, column - text_width(text, LEGEND_FONT) // 2, 7 + _BAR_HEIGHT, LEGEND_FONT, _GREY)
    if beside:
        paint_text(band, label, x, 2, LEGEND_FONT)
        y = 4 + line
    else:
        for k, text in enumerate(lines):
            paint_text(band, text, left, 9 + _BAR_HEIGHT + (k + 1) * line, LEGEND_FONT)
        y = 4  # x stays beside the bar
    for color, name in outlines:
        if x + text_width(name, LEGEND_FONT) + 30 > width:
            break
        x = _swatch(band, x, y + 2, color, name)
    return band


def with_legend(
    image: Tensor,
    colormap: str,
    label: str,
    ticks: Optional[Sequence[Tuple[float, str]]] = None,
    outlines: Sequence[Tuple[Tuple[float, float, float], str]] = (),
) -> Tensor:
    """``image`` ``(3, H, W)`` with a ``legend_band`` appended under it (bands are drawn once per layout and reused)."""
    ticks = tuple(ticks) if ticks is not None else ((0.0, "0"), (0.5, "0.5"), (1.0, "1"))
    band = _shared_band(image.shape[-1], colormap, ticks, label, tuple(outlines))
    return torch.cat([image.float().cpu(), band], dim=1)


@lru_cache(maxsize=64)
def _shared_band(
    width: int,
    colormap: str,
    ticks: Tuple[Tuple[float, str], ...],
    label: str,
    outlines: Tuple[Tuple[Tuple[float, float, float], str], ...],
) -> Tensor:
    """``legend_band``, kept for the next run (the same images get the same band every run; it is only read)."""
    return legend_band(width, colormap, ticks, label, outlines)
