"""Maps for a notebook: from :func:`cam_callbacks.explain`'s output to a PIL image or a matplotlib figure.

::

    maps = cc.explain(model, x, "gradcam", "layer4")
    cc.show_maps(x, maps, mean=mean, std=std)   # PIL image: originals above their overlays
    cc.plot_maps(x, maps, mean=mean, std=std)   # matplotlib figure: overlays, titles, colour bar

Torch and PIL; matplotlib is imported lazily by :func:`plot_maps` (and for colormaps). No backend is
chosen here: the figure is a plain :class:`matplotlib.figure.Figure`, not registered with pyplot, so a
notebook shows it once as the cell's value (inline or any other backend's figure display) and nothing
accumulates in pyplot's figure list; in a script, ``fig.savefig(path)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence, Tuple

import torch
from torch import Tensor

from cam_callbacks.render.images import colormap_lut, heatmap_grid, overlay, to_display
from cam_callbacks.render.publish import to_uint8

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from PIL.Image import Image

__all__ = ["show_maps", "plot_maps", "COLORBAR_LABEL", "TITLE_BAND"]

#: The label of :func:`plot_maps`'s colour bar.
COLORBAR_LABEL = "map value (0 = not used, 1 = most important)"
#: Height in pixels of the white band above each row of originals that holds :func:`show_maps`'s titles.
TITLE_BAND = 16
_PAD = 2  # make_grid's padding in heatmap_grid
_MIN_TILE = 96  # heatmap_grid's default smallest tile side


def _as_batch(images: Tensor, maps: Tensor) -> Tuple[Tensor, Tensor]:
    """``(N, C, H, W)`` images and ``(N, H, W)`` maps, detached, float, on the CPU; clear errors otherwise."""
    if not isinstance(images, Tensor) or not isinstance(maps, Tensor):
        raise TypeError(f"images and maps must be torch tensors, got {type(images).__name__} and {type(maps).__name__}")
    if maps.dim() == 4:
        raise ValueError(
            f"maps have shape {tuple(maps.shape)}: one map per class, as explain(..., targets=multi_hot) returns them; "
            "show one class at a time, e.g. maps[:, c] for class c"
        )
    if images.dim() == 2:  # one grey image
        images = images[None, None]
    elif images.dim() == 3:  # one (C, H, W) image
        images = images[None]
    elif images.dim() != 4:
        raise ValueError(f"images must be (N, C, H, W), or (C, H, W) / (H, W) for one image; got shape {tuple(images.shape)}")
    if maps.dim() == 2:
        maps = maps[None]
    elif maps.dim() != 3:
        raise ValueError(f"maps must be (N, H, W), or (H, W) for one image; got shape {tuple(maps.shape)}")
    if images.shape[0] != maps.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {maps.shape[0]} maps: pass one map per image")
    if images.shape[0] == 0:
        raise ValueError("no images to show (N = 0)")
    if tuple(maps.shape[-2:]) != tuple(images.shape[-2:]):
        raise ValueError(
            f"maps are {maps.shape[-2]}x{maps.shape[-1]} but the images are {images.shape[-2]}x{images.shape[-1]}: "
            "pass maps at the images' size (explain returns them so; cc.upsample_and_normalize(maps, size) resizes raw maps)"
        )
    maps = torch.nan_to_num(maps.detach().float().cpu(), nan=0.0)  # NaN maps (non-finite images) are shown as 0
    return images.detach().float().cpu(), maps


def _check_style(mean: Optional[Sequence[float]], std: Optional[Sequence[float]], alpha: float, colormap: str) -> None:
    if (mean is None) != (std is None):
        raise ValueError("pass both mean and std (how the images were normalised), or neither (min-max per image)")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha is the heatmap opacity in [0, 1], got {alpha!r}")
    colormap_lut(colormap)  # unknown names fail here, listing examples


def _check_titles(titles: Optional[Sequence[str]], n: int) -> Optional[list]:
    if titles is None:
        return None
    if isinstance(titles, str):
        raise TypeError("titles must be a sequence of strings, one per image, not one string")
    titles = [str(t) for t in titles]
    if len(titles) != n:
        raise ValueError(f"{len(titles)} titles for {n} images: pass one title per image")
    return titles


def show_maps(
    images: Tensor,
    maps: Tensor,
    *,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    colormap: str = "jet",
    alpha: float = 0.5,
    per_row: int = 8,
    titles: Optional[Sequence[str]] = None,
) -> Image:
    """A PIL image of the originals, each row of them above a row of their overlays (Jupyter shows it inline).

    Args:
        images: ``(N, C, H, W)`` model inputs (or ``(C, H, W)`` / ``(H, W)`` for one image), any device and dtype.
        maps: ``(N, H, W)`` maps in [0, 1] at the images' size (or ``(H, W)`` for one image), as
            :func:`cam_callbacks.explain` returns them. Multi-hot ``(N, C, H, W)`` maps are refused: index a
            class, ``maps[:, c]``. NaN (maps of non-finite images) is shown as 0.
        mean, std: How the images were normalised: the originals are shown as ``(x * std + mean).clamp(0, 1)``;
            without them each image is min-max scaled.
        colormap: A matplotlib colormap name.
        alpha: Heatmap opacity: an overlay is ``(1 - alpha) * original + alpha * colormap(map)``.
        per_row: Images per row.
        titles: One string per image, written in a white band above each original.

    Returns:
        An RGB :class:`PIL.Image.Image`. The layout is :func:`cam_callbacks.render.heatmap_grid`'s: tiles are
        enlarged by the integer factor ``f = ceil(96 / min(H, W))`` (nearest neighbour), 2-pixel white
        padding, so the size is ``(k * (f*W + 2) + 2, 2 * r * (f*H + 2) + 2)`` for ``k = min(per_row, N)``
        images per row and ``r = ceil(N / k)`` rows, plus ``16 * r`` pixels of height with titles.
    """
    from PIL import Image as PILImage

    x, m = _as_batch(images, maps)
    _check_style(mean, std, alpha, colormap)
    names = _check_titles(titles, x.shape[0])
    if not isinstance(per_row, int) or isinstance(per_row, bool) or per_row < 1:
        raise ValueError(f"per_row must be an int >= 1, got {per_row!r}")
    grid = heatmap_grid(to_display(x, mean, std), m, alpha=float(alpha), colormap=colormap, per_row=per_row, min_tile=_MIN_TILE)
    picture = PILImage.fromarray(to_uint8(grid).permute(1, 2, 0).contiguous().numpy())
    if names is None:
        return picture
    return _with_titles(picture, names, (x.shape[-2], x.shape[-1]), per_row)


def _with_titles(picture: Image, names: list, size: Tuple[int, int], per_row: int) -> Image:
    """``picture`` with a :data:`TITLE_BAND` band of titles inserted above each row of originals."""
    from PIL import Image as PILImage
    from PIL import ImageDraw

    factor = -(-_MIN_TILE // min(size))
    tile_h, tile_w = size[0] * factor + _PAD, size[1] * factor + _PAD
    per_row = min(per_row, len(names))
    blocks = -(-len(names) // per_row)
    out = PILImage.new("RGB", (picture.width, picture.height + blocks * TITLE_BAND), (255, 255, 255))
    draw = ImageDraw.Draw(out)
    for block in range(blocks):
        top = block * 2 * tile_h  # first row of this block's originals in the grid (padding row above it)
        out.paste(picture.crop((0, top, picture.width, top + 2 * tile_h)), (0, top + (block + 1) * TITLE_BAND))
        for col, name in enumerate(names[block * per_row : (block + 1) * per_row]):
            text = name
            while text and draw.textlength(text) > tile_w - 4:
                text = text[:-1]
            draw.text((_PAD + col * tile_w, top + block * TITLE_BAND + 3), text, fill=(0, 0, 0))
    out.paste(picture.crop((0, picture.height - _PAD, picture.width, picture.height)), (0, out.height - _PAD))
    return out


def plot_maps(
    images: Tensor,
    maps: Tensor,
    *,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    colormap: str = "jet",
    alpha: float = 0.5,
    titles: Optional[Sequence[str]] = None,
    ncols: int = 4,
    colorbar: bool = True,
) -> Figure:
    """A matplotlib figure with one axis per image showing its overlay, optional titles and a colour bar.

    Arguments as in :func:`show_maps`; ``ncols`` axes per row. The colour bar (``colorbar=True``) is
    labelled :data:`COLORBAR_LABEL`. The figure is not registered with pyplot and no backend is set: a
    notebook displays it as the cell's value; ``fig.savefig(path)`` writes it anywhere.
    """
    import matplotlib
    import matplotlib.pyplot  # loads the active backend: in IPython, registers how figures are displayed
    from matplotlib.figure import Figure

    x, m = _as_batch(images, maps)
    _check_style(mean, std, alpha, colormap)
    names = _check_titles(titles, x.shape[0])
    if not isinstance(ncols, int) or isinstance(ncols, bool) or ncols < 1:
        raise ValueError(f"ncols must be an int >= 1, got {ncols!r}")
    rgb = overlay(to_display(x, mean, std), m, float(alpha), colormap).permute(0, 2, 3, 1).numpy()
    n = x.shape[0]
    cols = min(ncols, n)
    rows = -(-n // cols)
    cell_h = 3.0 * x.shape[-2] / x.shape[-1] + (0.3 if names else 0.0)
    figure = Figure(figsize=(3.0 * cols + (1.0 if colorbar else 0.0), cell_h * rows), layout="constrained")
    axes = []
    for i in range(n):
        ax = figure.add_subplot(rows, cols, i + 1)
        ax.imshow(rgb[i], interpolation="nearest")
        ax.set_axis_off()
        if names is not None:
            ax.set_title(names[i])
        axes.append(ax)
    if colorbar:
        mappable = matplotlib.cm.ScalarMappable(norm=matplotlib.colors.Normalize(0.0, 1.0), cmap=colormap)
        figure.colorbar(mappable, ax=axes, label=COLORBAR_LABEL, shrink=0.9)
    return figure
