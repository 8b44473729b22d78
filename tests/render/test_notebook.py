"""cc.show_maps / cc.plot_maps: the callback's cells and colour bar (exact pixels, the same as the callback's grid function),
the figure's axes, captions, input checks."""

from __future__ import annotations

import io
import math

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

import cam_callbacks as cc
from cam_callbacks.engine.result import Explanation
from cam_callbacks.metrics.watch import analyze_maps
from cam_callbacks.render.grids import GAP, caption_height, cell_boxes
from cam_callbacks.render.legend import BAR_WIDTH, legend_band
from cam_callbacks.render.notebook import COLORBAR_LABEL
from cam_callbacks.render.publish import ImageStyle, ProbeView, RunInfo, rows_grid, to_uint8

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _batch(n=5, h=8, w=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    rgb = torch.rand(n, 3, h, w, generator=g)
    x = (rgb - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    maps = torch.rand(n, h, w, generator=g)
    return x, maps


def _u8(t):
    """As to_uint8 converts: rounds half up."""
    return (t * 255 + 0.5).clamp(0, 255).to(torch.uint8)


def _layout(n, h, w, per_row):
    """(width, height of the cells without the colour bar, enlargement factor) of the grid arithmetic."""
    f = math.ceil(96 / min(h, w))
    k = min(per_row, n)
    r = math.ceil(n / k)
    return k * (2 * f * w + 2 + GAP) + GAP, r * (caption_height() + f * h + GAP) + GAP, f


def _tiles(picture, n, per_row, tile_h, tile_w):
    """[(original, overlay)] of each cell, (tile_h, tile_w, 3) uint8 arrays cut from an (H, W, 3) picture."""
    return [
        (picture[top : top + tile_h, left : left + tile_w], picture[top : top + tile_h, right : right + tile_w])
        for top, left, right in cell_boxes(n, per_row, tile_h, tile_w)
    ]


@pytest.mark.parametrize("n,h,w,per_row", [(5, 8, 12, 3), (1, 8, 8, 8), (4, 96, 100, 2), (9, 40, 30, 8)])
def test_show_maps_size_is_the_grid_arithmetic_plus_the_colour_bar(n, h, w, per_row):
    x, maps = _batch(n, h, w)
    picture = cc.show_maps(x, maps, mean=MEAN, std=STD, per_row=per_row)
    assert isinstance(picture, Image.Image) and picture.mode == "RGB"
    width, height, _ = _layout(n, h, w, per_row)
    assert picture.size == (width, height + legend_band(width, "jet", label=COLORBAR_LABEL).shape[1])
    assert cc.show_maps(x, maps, mean=MEAN, std=STD, per_row=per_row, colorbar=False).size == (width, height)


@pytest.mark.parametrize("alpha,colormap", [(0.3, "viridis"), (0.5, "jet"), (1.0, "gray")])
def test_show_maps_draws_the_callbacks_cells_pixel_for_pixel(alpha, colormap):
    """The same images, maps, alpha and colormap through cc.show_maps and through the callback's grid function
    (render.publish.rows_grid, what CAMMonitor logs as <prefix>/<method>/grid): identical originals, overlays and colour bar."""
    n, h, w = 3, 8, 12
    x, maps = _batch(n, h, w, seed=4)
    labels = torch.tensor([0, 1, 0])
    view = ProbeView(x, labels, None, None, torch.arange(n), "softmax")
    explanation = Explanation({"gradcam": maps}, torch.randn(n, 2), labels, "layer")
    style = ImageStyle(mean=MEAN, std=STD, overlay_alpha=alpha, colormap=colormap)
    per_row = 2  # the callback's cells per row (ImageStyle's default)
    logged = to_uint8(rows_grid(view, explanation, "gradcam", analyze_maps(maps), style, RunInfo(), torch.arange(n)))
    logged = logged.permute(1, 2, 0).numpy()
    shown = np.asarray(cc.show_maps(x, maps, mean=MEAN, std=STD, alpha=alpha, colormap=colormap, per_row=per_row))
    width, height, f = _layout(n, h, w, per_row)
    assert logged.shape[1] == shown.shape[1] == width  # the same layout
    for (original, overlay), (want_original, want_overlay) in zip(_tiles(shown, n, per_row, f * h, f * w), _tiles(logged, n, per_row, f * h, f * w)):
        np.testing.assert_array_equal(original, want_original)
        np.testing.assert_array_equal(overlay, want_overlay)
        assert (overlay != original).any()
    bar = slice(8, 8 + min(BAR_WIDTH, width // 3))  # the colour bar under the cells: the same colours, left to right
    np.testing.assert_array_equal(shown[height + 6, bar], logged[height + 6, bar])


def test_show_maps_originals_are_unnormalised_and_overlays_follow_the_map():
    n, h, w, per_row, alpha = 5, 8, 12, 3, 0.3
    x, maps = _batch(n, h, w)
    picture = np.asarray(cc.show_maps(x, maps, mean=MEAN, std=STD, per_row=per_row, alpha=alpha, colormap="viridis"))
    _, _, f = _layout(n, h, w, per_row)
    shown = (x * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)).clamp(0, 1)
    lut = torch.tensor(matplotlib.colormaps["viridis"](np.arange(256))[:, :3], dtype=torch.float32)
    for i, (original, overlay) in enumerate(_tiles(picture, n, per_row, f * h, f * w)):
        np.testing.assert_array_equal(original[::f, ::f], _u8(shown[i]).permute(1, 2, 0).numpy())  # one pixel per source pixel
        np.testing.assert_array_equal(original[:f, :f], np.broadcast_to(original[0, 0], (f, f, 3)))  # f x f blocks (nearest neighbour)
        for y, xx in [(0, 0), (h - 1, w - 1), (3, 5)]:
            m = float(maps[i, y, xx])
            opacity = min(1.0, alpha * (0.25 + 1.25 * m))  # the heatmap's opacity follows the map value
            want = shown[i, :, y, xx] + opacity * (lut[int(round(m * 255))] - shown[i, :, y, xx])
            assert np.abs(overlay[y * f, xx * f].astype(int) - _u8(want).numpy().astype(int)).max() <= 1, (i, y, xx)


def test_show_maps_without_mean_std_min_max_scales_each_image_and_pads_white():
    x = torch.arange(2 * 3 * 96 * 96, dtype=torch.float64).view(2, 3, 96, 96) * 7 - 5  # any dtype and range
    picture = np.asarray(cc.show_maps(x, torch.zeros(2, 96, 96), per_row=2, colorbar=False))
    for i, (original, _) in enumerate(_tiles(picture, 2, 2, 96, 96)):
        low, high = x[i].min(), x[i].max()
        np.testing.assert_array_equal(original, _u8(((x[i] - low) / (high - low)).float()).permute(1, 2, 0).numpy())
    for edge in (picture[:GAP], picture[-GAP:], picture[:, :GAP], picture[:, -GAP:]):
        assert (edge == 255).all()


def test_show_maps_one_image_shapes_and_nan_maps():
    x, maps = _batch(1, 8, 8)
    whole = np.asarray(cc.show_maps(x, maps, mean=MEAN, std=STD))
    single = np.asarray(cc.show_maps(x[0], maps[0], mean=MEAN, std=STD))
    np.testing.assert_array_equal(whole, single)
    nan = np.asarray(cc.show_maps(x, torch.full((1, 8, 8), float("nan"))))
    zero = np.asarray(cc.show_maps(x, torch.zeros(1, 8, 8)))
    np.testing.assert_array_equal(nan, zero)
    low = np.asarray(cc.show_maps(x.bfloat16(), maps.half(), mean=MEAN, std=STD))  # any dtype
    assert low.shape == whole.shape


def test_show_maps_titles_are_the_captions_and_change_nothing_else():
    n, h, w, per_row = 5, 8, 12, 3
    x, maps = _batch(n, h, w)
    plain = np.asarray(cc.show_maps(x, maps, mean=MEAN, std=STD, per_row=per_row))
    numbered = np.asarray(cc.show_maps(x, maps, mean=MEAN, std=STD, per_row=per_row, titles=[f"#{i}" for i in range(n)]))
    np.testing.assert_array_equal(plain, numbered)  # without titles the captions are the image numbers
    titled = np.asarray(cc.show_maps(x, maps, mean=MEAN, std=STD, per_row=per_row, titles=[f"image {i}" for i in range(n)]))
    assert titled.shape == plain.shape
    _, _, f = _layout(n, h, w, per_row)
    band = caption_height()
    changed = np.zeros(plain.shape[:2], dtype=bool)
    for top, left, _ in cell_boxes(n, per_row, f * h, f * w):
        caption = titled[top - band : top, left : left + 2 * f * w + 2]
        assert (caption < 128).any()  # dark text in the caption band
        changed[top - band : top, left : left + 2 * f * w + 2] = True
    assert (titled != plain).any(axis=2)[changed].any()
    np.testing.assert_array_equal(titled[~changed], plain[~changed])  # only the caption bands differ


def test_show_maps_colour_bar_is_the_colormap_under_the_cells():
    x, maps = _batch(2, 8, 8)
    picture = np.asarray(cc.show_maps(x, maps, colormap="viridis", per_row=2))
    width, height, _ = _layout(2, 8, 8, 2)
    bar = min(BAR_WIDTH, width // 3)
    lut = matplotlib.colormaps["viridis"](np.arange(256))[:, :3]
    want = _u8(torch.tensor(lut[torch.linspace(0, 255, bar).round().long().numpy()], dtype=torch.float32)).numpy()
    np.testing.assert_array_equal(picture[height + 6, 8 : 8 + bar], want)
    assert (picture[height:, 8 + bar + 12 :] < 128).any()  # the label beside the bar


def test_plot_maps_is_show_maps_picture_with_one_axis_per_image():
    from matplotlib.figure import Figure

    n, h, w, ncols = 5, 8, 12, 2
    x, maps = _batch(n, h, w)
    backend = matplotlib.get_backend()
    fig = cc.plot_maps(x, maps, mean=MEAN, std=STD, titles=list("abcde"), ncols=ncols)
    assert matplotlib.get_backend() == backend  # no backend forced
    assert isinstance(fig, Figure)
    picture = np.asarray(cc.show_maps(x, maps, mean=MEAN, std=STD, titles=list("abcde"), per_row=ncols))
    assert [ax.get_label() for ax in fig.axes] == [f"image {i}" for i in range(n)] + ["colorbar"]
    assert tuple(fig.get_size_inches() * fig.dpi) == (picture.shape[1], picture.shape[0])
    _, height, f = _layout(n, h, w, ncols)
    band = caption_height()
    for ax, (top, left, _) in zip(fig.axes, cell_boxes(n, ncols, f * h, f * w)):
        cell = picture[top - band : top + f * h, left : left + 2 * f * w + 2]  # caption, original, overlay
        np.testing.assert_array_equal(np.asarray(ax.images[0].get_array()), cell)
    np.testing.assert_array_equal(np.asarray(fig.axes[-1].images[0].get_array()), picture[height:])
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")  # one figure pixel per picture pixel: the file is show_maps's picture
    np.testing.assert_array_equal(np.asarray(Image.open(buffer).convert("RGB")), picture)


def test_plot_maps_without_colour_bar():
    x, maps = _batch(3, 8, 8)
    fig = cc.plot_maps(x, maps, colorbar=False)
    assert [ax.get_label() for ax in fig.axes] == ["image 0", "image 1", "image 2"]
    width, height, _ = _layout(3, 8, 8, 4)
    assert tuple(fig.get_size_inches() * fig.dpi) == (width, height)


@pytest.mark.parametrize(
    "images,maps,kwargs,error,match",
    [
        (torch.zeros(2, 3, 8, 8), torch.zeros(2, 4, 8, 8), {}, ValueError, r"one map per class.*maps\[:, c\]"),
        (torch.zeros(2, 3, 8, 8), torch.zeros(3, 8, 8), {}, ValueError, r"2 images but 3 maps"),
        (torch.zeros(2, 3, 32, 32), torch.zeros(2, 7, 7), {}, ValueError, r"maps are 7x7 but the images are 32x32"),
        (torch.zeros(1, 1, 3, 8, 8), torch.zeros(1, 8, 8), {}, ValueError, r"images must be \(N, C, H, W\)"),
        (torch.zeros(0, 3, 8, 8), torch.zeros(0, 8, 8), {}, ValueError, r"no images"),
        (torch.zeros(2, 3, 8, 8), torch.zeros(2, 8, 8), {"mean": MEAN}, ValueError, r"both mean and std"),
        (torch.zeros(2, 3, 8, 8), torch.zeros(2, 8, 8), {"alpha": 1.5}, ValueError, r"alpha .* in \[0, 1\]"),
        (torch.zeros(2, 3, 8, 8), torch.zeros(2, 8, 8), {"titles": ["a"]}, ValueError, r"1 titles for 2 images"),
        (torch.zeros(2, 3, 8, 8), torch.zeros(2, 8, 8), {"colormap": "nope"}, ValueError, r"not a matplotlib colormap"),
        (np.zeros((2, 3, 8, 8)), torch.zeros(2, 8, 8), {}, TypeError, r"torch tensors"),
    ],
)
@pytest.mark.parametrize("fn", ["show_maps", "plot_maps"])
def test_bad_inputs_raise_with_messages(fn, images, maps, kwargs, error, match):
    with pytest.raises(error, match=match):
        getattr(cc, fn)(images, maps, **kwargs)


@pytest.mark.parametrize("fn,name", [("show_maps", "per_row"), ("plot_maps", "ncols")])
def test_cells_per_row_is_checked(fn, name):
    with pytest.raises(ValueError, match=f"{name} must be an int >= 1"):
        getattr(cc, fn)(torch.zeros(1, 3, 8, 8), torch.zeros(1, 8, 8), **{name: 0})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_show_maps_accepts_cuda_half_tensors():
    x, maps = _batch(2, 8, 8)
    on_gpu = cc.show_maps(x.cuda().half(), maps.cuda().half(), mean=MEAN, std=STD)
    on_cpu = cc.show_maps(x.half().float(), maps.half().float(), mean=MEAN, std=STD)
    assert on_gpu.size == on_cpu.size
