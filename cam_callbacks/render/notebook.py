"""Maps for a notebook: from ``cam_callbacks.explain``'s output to a PIL image or a matplotlib figure.

::

    maps = cc.explain(model, x, "gradcam", "layer4")
    cc.show_maps(x, maps, mean=mean, std=std)   # PIL image: captioned cells (original, overlay), colour bar
    cc.plot_maps(x, maps, mean=mean, std=std)   # the same picture as a matplotlib figure, one axis per image

Both draw what the callback logs to TensorBoard: the cells of ``cam_callbacks.render.grids.captioned_grid``
(the overlay of ``cam_callbacks.render.images.weighted_overlay``) and the colour bar of
``cam_callbacks.render.legend.with_legend``.

Torch and PIL; matplotlib is imported lazily by ``plot_maps`` (and for colormaps). No backend is
chosen here: the figure is a plain ``matplotlib.figure.Figure``, not registered with pyplot, so a
notebook shows it once as the cell's value (inline or any other backend's figure display) and nothing
accumulates in pyplot's figure list; in a script, ``fig.savefig(path)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from cam_callbacks.render.grids import Caption, caption_height, captioned_grid, cell_boxes, enlarge_factor
from cam_callbacks.render.images import colormap_lut, to_display
from cam_callbacks.render.legend import with_legend
from cam_callbacks.render.publish import to_uint8

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from PIL.Image import Image

#: The label of the colour bar under ``show_maps``'s and ``plot_maps``'s pictures.
COLORBAR_LABEL = "map value (0 = not used, 1 = most important)"
#: Smallest tile side in pixels: smaller images are enlarged by an integer factor (nearest neighbour), as in the callback's grids.
MIN_TILE = 96


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
            "pass maps at the images' size (explain returns them so; resize raw maps with "
            "torch.nn.functional.interpolate(maps[:, None], size=(H, W), mode='bilinear')[:, 0])"
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


def _check_count(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")


def _cells(
    x: Tensor,
    m: Tensor,
    mean: Optional[Sequence[float]],
    std: Optional[Sequence[float]],
    colormap: str,
    alpha: float,
    per_row: int,
    titles: Optional[List[str]],
) -> Tensor:
    """The ``(3, H, W)`` grid both helpers show: ``captioned_grid``'s cells, captioned with the titles (``#<i>`` without them)."""
    captions = [Caption(title) for title in titles] if titles is not None else [Caption(f"#{i}") for i in range(x.shape[0])]
    return captioned_grid(to_display(x, mean, std), m, captions, alpha=float(alpha), colormap=colormap, per_row=per_row, min_tile=MIN_TILE)


def _picture(grid: Tensor, colormap: str, colorbar: bool) -> Tensor:
    """``grid`` as uint8 ``(H, W, 3)``, with ``with_legend``'s colour bar under it when ``colorbar``."""
    if colorbar:
        grid = with_legend(grid, colormap, COLORBAR_LABEL)
    return to_uint8(grid).permute(1, 2, 0).contiguous()


def show_maps(
    images: Tensor,
    maps: Tensor,
    *,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    colormap: str = "jet",
    alpha: float = 0.5,
    per_row: int = 4,
    titles: Optional[Sequence[str]] = None,
    colorbar: bool = True,
) -> Image:
    """A PIL image of one cell per image, as the callback logs them (Jupyter shows it inline): a caption over the
    original and, right of it, its overlay; the colour bar under the cells.

    Args:
        images: ``(N, C, H, W)`` model inputs (or ``(C, H, W)`` / ``(H, W)`` for one image), any device and dtype.
        maps: ``(N, H, W)`` maps in [0, 1] at the images' size (or ``(H, W)`` for one image), as
            ``cam_callbacks.explain`` returns them. Multi-hot ``(N, C, H, W)`` maps are refused: index a
            class, ``maps[:, c]``. NaN (maps of non-finite images) is shown as 0.
        mean, std: How the images were normalised: the originals are shown as ``(x * std + mean).clamp(0, 1)``;
            without them each image is min-max scaled.
        colormap: A matplotlib colormap name.
        alpha: Heatmap opacity. The opacity follows the map value ``m``: ``a = clamp(alpha * (0.25 + 1.25 m), 0, 1)``
            and the overlay is ``(1 - a) * original + a * colormap(m)`` (the image shows through where the map is low).
        per_row: Cells (images) per row.
        titles: One string per image, written in its cell's caption; without them the captions are ``#0``, ``#1``, ...
        colorbar: Draw the colour bar (labelled ``COLORBAR_LABEL``) under the cells.

    Returns:
        An RGB ``PIL.Image.Image`` with the layout of ``cam_callbacks.render.grids.captioned_grid``: tiles
        enlarged by the integer factor ``f = ceil(96 / min(H, W))`` (nearest neighbour), a two-line caption band over
        each cell (the original, 2 white pixels, the overlay), 6 white pixels between cells.
    """
    from PIL import Image as PILImage

    x, m = _as_batch(images, maps)
    _check_style(mean, std, alpha, colormap)
    names = _check_titles(titles, x.shape[0])
    _check_count("per_row", per_row)
    grid = _cells(x, m, mean, std, colormap, alpha, per_row, names)
    return PILImage.fromarray(_picture(grid, colormap, bool(colorbar)).numpy())


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
    """``show_maps``'s picture as a matplotlib figure: one axis per image holding its cell (caption, original,
    overlay) and, with ``colorbar=True``, one axis holding the colour bar (labelled ``COLORBAR_LABEL``).

    Arguments as in ``show_maps``; ``ncols`` cells per row. The axes sit where the cells are in
    ``show_maps``'s picture and the figure is sized for one figure pixel per picture pixel at its dpi (100), so
    ``fig.savefig(path)`` writes that picture. The figure is not registered with pyplot and no backend is set: a
    notebook displays it as the cell's value.
    """
    import matplotlib.pyplot  # noqa: F401 - loads the active backend: in IPython, registers how figures are displayed
    from matplotlib.figure import Figure

    x, m = _as_batch(images, maps)
    _check_style(mean, std, alpha, colormap)
    names = _check_titles(titles, x.shape[0])
    _check_count("ncols", ncols)
    grid = _cells(x, m, mean, std, colormap, alpha, ncols, names)
    picture = _picture(grid, colormap, bool(colorbar)).numpy()
    height, width = picture.shape[:2]
    factor = enlarge_factor(x.shape[-2], x.shape[-1], MIN_TILE)
    tile_h = x.shape[-2] * factor
    tile_w = x.shape[-1] * factor
    band = caption_height()
    figure = Figure(figsize=(width / 100, height / 100), dpi=100, facecolor="white")
    boxes = cell_boxes(x.shape[0], ncols, tile_h, tile_w)
    for i, (top, left, _) in enumerate(boxes):
        cell = picture[top - band : top + tile_h, left : left + 2 * tile_w + 2]
        ax = figure.add_axes((left / width, 1 - (top + tile_h) / height, cell.shape[1] / width, cell.shape[0] / height), label=f"image {i}")
        ax.imshow(cell, interpolation="nearest")
        ax.set_axis_off()
    if colorbar:  # the band under the grid
        ax = figure.add_axes((0.0, 0.0, 1.0, (height - grid.shape[1]) / height), label="colorbar")
        ax.imshow(picture[grid.shape[1] :], interpolation="nearest")
        ax.set_axis_off()
    return figure
