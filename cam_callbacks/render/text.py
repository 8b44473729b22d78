"""Text drawn into image tensors: captions, axis labels and titles, with matplotlib's bundled DejaVu Sans.

Rendering a string with PIL takes a few hundred microseconds; a run writes hundreds of short captions.
So each character is rendered once per font size (``glyph``, cached) and a string is the
concatenation of its glyphs' coverage columns (``text_mask``, no kerning: DejaVu Sans at these
sizes has none worth drawing). Painting is a blend of a colour into a ``(3, H, W)`` float image.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Any, List, Sequence, Tuple

import torch
from torch import Tensor

Color = Tuple[float, float, float]


def font_path() -> str:
    """Matplotlib's bundled DejaVu Sans (its licence allows redistribution; nothing is shipped here)."""
    import matplotlib

    return os.path.join(matplotlib.get_data_path(), "fonts", "ttf", "DejaVuSans.ttf")


@lru_cache(maxsize=8)
def _font(size: int) -> Any:
    from PIL import ImageFont

    return ImageFont.truetype(font_path(), size)


def line_height(size: int) -> int:
    """Pixel height of one line of text at font ``size`` (ascent + descent)."""
    ascent, descent = _font(size).getmetrics()
    return int(ascent + descent)


@lru_cache(maxsize=2048)
def glyph(char: str, size: int) -> Tensor:
    """Coverage ``(line_height, advance)`` float in [0, 1] of one character at font ``size`` (cached)."""
    from PIL import Image, ImageDraw

    font = _font(size)
    advance = max(1, int(round(font.getlength(char))))
    canvas = Image.new("L", (advance, line_height(size)), 0)
    ImageDraw.Draw(canvas).text((0, 0), char, font=font, fill=255)
    return torch.frombuffer(bytearray(canvas.tobytes()), dtype=torch.uint8).view(canvas.height, canvas.width).float() / 255.0


def text_mask(text: str, size: int) -> Tensor:
    """Coverage ``(line_height, width)`` of ``text`` at font ``size``; width 0 for an empty string. Only glyphs are
    cached (captions change every run: a cache of whole strings would grow with the run)."""
    if not text:
        return torch.zeros(line_height(size), 0)
    return torch.cat([glyph(char, size) for char in text], dim=1)


@lru_cache(maxsize=2048)
def _advance(char: str, size: int) -> int:
    return int(glyph(char, size).shape[1])


def text_width(text: str, size: int) -> int:
    """Width in pixels of ``text`` as ``text_mask`` draws it."""
    return sum(_advance(char, size) for char in text)


def fit_text(text: str, size: int, width: int) -> str:
    """``text``, shortened with an ellipsis until it is at most ``width`` pixels wide."""
    if text_width(text, size) <= width:
        return text
    while text and text_width(text, size) + text_width("…", size) > width:
        text = text[:-1]
    return text + "…" if text else ""


def wrap_text(text: str, size: int, width: int) -> List[str]:
    """``text`` broken at spaces into lines of at most ``width`` pixels (a word longer than a line is shortened).

    Example::

        >>> wrap_text("one two three", 12, 60)
        ['one two', 'three']
    """
    lines: List[str] = []
    for word in text.split():
        if lines and text_width(lines[-1] + " " + word, size) <= width:
            lines[-1] += " " + word
        else:
            lines.append(fit_text(word, size, width))
    return lines


def paint_text(canvas: Tensor, text: str, x: int, y: int, size: int, color: Sequence[float] = (0.0, 0.0, 0.0)) -> int:
    """Blend ``text`` in ``color`` into the ``(3, H, W)`` float ``canvas`` in place, top-left at ``(x, y)``; clipped at
    the edges. Returns the x just after the text.

    Example::

        >>> canvas = torch.ones(3, 20, 60)
        >>> end = paint_text(canvas, "Hi", 2, 2, 12)
        >>> bool(canvas[:, 2:16, 2:end].min() < 0.2), bool((canvas[:, :, end:] == 1).all())
        (True, True)
    """
    mask = text_mask(text, size)
    height, width = mask.shape
    top = max(0, y)
    left = max(0, x)
    bottom = min(canvas.shape[1], y + height)
    right = min(canvas.shape[2], x + width)
    if bottom <= top or right <= left:
        return x + width
    alpha = mask[top - y : bottom - y, left - x : right - x]
    region = canvas[:, top:bottom, left:right]
    for channel, value in enumerate(color):  # in place: region += alpha * (value - region)
        region[channel].addcmul_(alpha, value - region[channel])
    return x + width
