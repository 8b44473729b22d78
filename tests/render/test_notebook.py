"""cc.show_maps / cc.plot_maps: exact pixels of the PIL grid, the figure's axes, titles and colour bar, input checks."""

from __future__ import annotations

import math

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

import cam_callbacks as cc
from cam_callbacks.render.notebook import COLORBAR_LABEL, TITLE_BAND

pytestmark = pytest.mark.usefixtures("one_thread")

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _batch(n=5, h=8, w=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    rgb = torch.rand(n, 3, h, w, generator=g)
    x = (rgb - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    maps = torch.rand(n, h, w, generator=g)
    return x, maps


def _u8(t):
    return (t.clamp(0, 1) * 255).round().to(torch.uint8)


def _grid_size(n, h, w, per_row):
    f = math.ceil(96 / min(h, w))
    k = min(per_row, n)
    r = math.ceil(n / k)
    return k * (f * w + 2) + 2, 2 * r * (f * h + 2) + 2, f


@pytest.mark.parametrize("n,h,w,per_row", [(5, 8, 12, 3), (1, 8, 8, 8), (4, 96, 100, 2), (9, 40, 30, 8)])
def test_show_maps_size_is_the_grid_arithmetic(n, h, w, per_row):
    x, maps = _batch(n, h, w)
    picture = cc.show_maps(x, maps, mean=MEAN, std=STD, per_row=per_row)
    assert isinstance(picture, Image.Image) and picture.mode == "RGB"
    width, height, _ = _grid_size(n, h, w, per_row)
    assert picture.size == (width, height)


def test_show_maps_top_row_is_the_unnormalised_originals_and_overlays_the_alpha_blend():
    n, h, w, per_row, alpha = 5, 8, 12, 3, 0.3
    x, maps = _batch(n, h, w)
    picture = np.asarray(cc.show_maps(x, maps, mean=MEAN, std=STD, per_row=per_row, alpha=alpha, colormap="viridis"))
    _, _, f = _grid_size(n, h, w, per_row)
    shown = (x * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)).clamp(0, 1)
    lut = matplotlib.colormaps["viridis"](np.arange(256))[:, :3]
    tile_h, tile_w = f * h + 2, f * w + 2
    for i in range(n):
        block, col = divmod(i, per_row)
        top, left = 2 + block * 2 * tile_h, 2 + col * tile_w
        original = picture[top : top + f * h : f, left : left + f * w : f]  # one pixel per enlarged source pixel
        np.testing.assert_array_equal(original, _u8(shown[i]).permute(1, 2, 0).numpy())
        # each source pixel is an f x f block (nearest neighbour)
        np.testing.assert_array_equal(picture[top : top + f, left : left + f], np.broadcast_to(original[0, 0], (f, f, 3)))
        for y, xx in [(0, 0), (h - 1, w - 1), (3, 5)]:
            value = float(maps[i, y, xx])
            colour = torch.tensor(lut[int(round(value * 255))], dtype=torch.float32)
            want = _u8((1 - alpha) * shown[i, :, y, xx] + alpha * colour)
            got = picture[top + tile_h + y * f, left + xx * f]
            assert got.tolist() == want.tolist(), (i, y, xx)


def test_show_maps_without_mean_std_min_max_scales_each_image_and_pads_white():
    x = torch.arange(2 * 3 * 96 * 96, dtype=torch.float64).view(2, 3, 96, 96) * 7 - 5  # any dtype and range
    picture = np.asarray(cc.show_maps(x, torch.zeros(2, 96, 96), per_row=2))
    for i in range(2):
        low, high = x[i].min(), x[i].max()
        want = _u8(((x[i] - low) / (high - low)).float()).permute(1, 2, 0).numpy()
        np.testing.assert_array_equal(picture[2 : 2 + 96, 2 + i * 98 : 2 + i * 98 + 96], want)
    assert (picture[:2] == 255).all() and (picture[:, :2] == 255).all()


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


def test_show_maps_titles_add_a_band_above_each_row_of_originals():
    n, h, w, per_row = 5, 8, 12, 3
    x, maps = _batch(n, h, w)
    plain = np.asarray(cc.show_maps(x, maps, mean=MEAN, std=STD, per_row=per_row))
    titled = np.asarray(cc.show_maps(x, maps, mean=MEAN, std=STD, per_row=per_row, titles=[f"image {i}" for i in range(n)]))
    width, height, f = _grid_size(n, h, w, per_row)
    assert titled.shape == (height + 2 * TITLE_BAND, width, 3)
    block = 2 * (f * h + 2)
    np.testing.assert_array_equal(titled[TITLE_BAND : TITLE_BAND + block], plain[:block])
    np.testing.assert_array_equal(titled[2 * TITLE_BAND + block : 2 * TITLE_BAND + 2 * block], plain[block : 2 * block])
    assert (titled[:TITLE_BAND] < 128).any()  # some dark text in the band


def test_plot_maps_figure_axes_titles_and_colour_bar():
    from matplotlib.figure import Figure

    x, maps = _batch(5, 8, 12)
    backend = matplotlib.get_backend()
    fig = cc.plot_maps(x, maps, mean=MEAN, std=STD, titles=list("abcde"), ncols=2)
    assert matplotlib.get_backend() == backend  # no backend forced
    assert isinstance(fig, Figure)
    images = [ax for ax in fig.axes if ax.images and ax.get_label() != "<colorbar>"]
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(images) == 5 and len(bars) == 1 and len(fig.axes) == 6
    assert [ax.get_title() for ax in images] == list("abcde")
    assert bars[0].get_ylabel() == COLORBAR_LABEL
    shown = images[1].images[0].get_array()
    want = cc.render.overlay(cc.render.to_display(x[1:2], MEAN, STD), maps[1:2]).permute(0, 2, 3, 1)[0].numpy()
    np.testing.assert_allclose(np.asarray(shown), want, atol=1e-6)
    fig.canvas.draw()  # renders


def test_plot_maps_without_colour_bar_or_titles():
    x, maps = _batch(3, 8, 8)
    fig = cc.plot_maps(x, maps, colorbar=False)
    assert len(fig.axes) == 3 and all(ax.get_title() == "" for ax in fig.axes)


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


def test_show_maps_per_row_is_checked():
    with pytest.raises(ValueError, match="per_row must be an int >= 1"):
        cc.show_maps(torch.zeros(1, 3, 8, 8), torch.zeros(1, 8, 8), per_row=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_show_maps_accepts_cuda_half_tensors():
    x, maps = _batch(2, 8, 8)
    on_gpu = cc.show_maps(x.cuda().half(), maps.cuda().half(), mean=MEAN, std=STD)
    on_cpu = cc.show_maps(x.half().float(), maps.half().float(), mean=MEAN, std=STD)
    assert on_gpu.size == on_cpu.size
