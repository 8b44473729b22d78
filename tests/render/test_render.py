"""The render layer as pure functions of tensors: colormaps, display images, overlays, outlines, grids, PNG files."""

from __future__ import annotations

import io
import os

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

from cam_callbacks.render import apply_colormap, encode_png, heatmap_grid, mask_outline, overlay, save_pngs, to_display


@pytest.mark.parametrize("name", ["jet", "viridis", "inferno"])
def test_apply_colormap_equals_matplotlib_lut(name):
    cmap = matplotlib.colormaps[name]
    values = [0.0, 0.1, 0.33, 0.6, 0.9, 1.0]
    maps = torch.tensor(values).view(1, 2, 3)
    rgb = apply_colormap(maps, name)
    assert tuple(rgb.shape) == (1, 3, 2, 3)
    assert rgb.dtype == torch.float32
    for k, v in enumerate(values):
        entry = int(np.floor(v * 255 + 0.5))  # nearest of the 256 LUT entries (no value here sits on a half)
        want = np.asarray(cmap(entry))[:3]  # an int indexes matplotlib's LUT directly
        got = rgb[0, :, k // 3, k % 3].numpy()
        np.testing.assert_allclose(got, want, atol=1e-6, err_msg=f"{name} at {v}")


def test_apply_colormap_clamps_out_of_range_values():
    cmap = matplotlib.colormaps["jet"]
    rgb = apply_colormap(torch.tensor([[[-3.0, 7.0]]]), "jet")
    np.testing.assert_allclose(rgb[0, :, 0, 0].numpy(), np.asarray(cmap(0))[:3], atol=1e-6)
    np.testing.assert_allclose(rgb[0, :, 0, 1].numpy(), np.asarray(cmap(255))[:3], atol=1e-6)


def test_apply_colormap_unknown_name_lists_examples():
    with pytest.raises(ValueError, match=r"colormap='no_such_map' is not a matplotlib colormap.*viridis"):
        apply_colormap(torch.zeros(1, 2, 2), "no_such_map")


def test_to_display_undoes_mean_std_exactly():
    g = torch.Generator().manual_seed(0)
    rgb = torch.rand(2, 3, 5, 4, generator=g)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    m, s = np.array(mean).reshape(1, 3, 1, 1), np.array(std).reshape(1, 3, 1, 1)
    normalised = torch.from_numpy((rgb.double().numpy() - m) / s).float()
    shown = to_display(normalised, mean, std)
    assert tuple(shown.shape) == (2, 3, 5, 4)
    np.testing.assert_allclose(shown.numpy(), rgb.numpy(), atol=1e-6)


def test_to_display_clips_after_unnormalising():
    x = torch.tensor([[[[5.0]], [[-5.0]], [[0.0]]]])  # 1 image, 3 channels, 1x1
    shown = to_display(x, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert shown.flatten().tolist() == [1.0, 0.0, 0.5]


def test_to_display_mean_std_channel_mismatch_raises():
    with pytest.raises(ValueError, match="mean/std have 2/2 values but the images have 3 channels"):
        to_display(torch.zeros(1, 3, 2, 2), mean=(0.1, 0.2), std=(0.3, 0.4))


def test_to_display_min_max_scales_each_image_and_constant_image_is_zero():
    a = torch.tensor([[[-2.0, 0.0], [2.0, 6.0]]]).expand(3, 2, 2)  # min -2, max 6
    b = torch.tensor([[[10.0, 20.0], [30.0, 10.0]]]).expand(3, 2, 2)  # min 10, max 30
    c = torch.full((3, 2, 2), 4.0)  # constant
    shown = to_display(torch.stack([a, b, c]))
    assert not torch.isnan(shown).any()
    np.testing.assert_allclose(shown[0, 0].numpy(), [[0.0, 0.25], [0.5, 1.0]], atol=1e-7)
    np.testing.assert_allclose(shown[1, 2].numpy(), [[0.0, 0.5], [1.0, 0.0]], atol=1e-7)
    assert torch.equal(shown[2], torch.zeros(3, 2, 2))


def test_to_display_one_channel_is_repeated_and_other_counts_are_grey():
    one = to_display(torch.tensor([[[[0.0, 1.0]]]]))
    assert tuple(one.shape) == (1, 3, 1, 2)
    assert one[0, :, 0, 1].tolist() == [1.0, 1.0, 1.0]
    four = torch.tensor([[[[0.0, 4.0]], [[0.0, 0.0]], [[0.0, 0.0]], [[0.0, 0.0]]]])  # min-max -> channel 0 = [0, 1]
    grey = to_display(four)
    assert tuple(grey.shape) == (1, 3, 1, 2)
    np.testing.assert_allclose(grey[0, :, 0, 1].numpy(), [0.25] * 3)  # mean of (1, 0, 0, 0)


def test_overlay_is_the_alpha_blend():
    jet = matplotlib.colormaps["jet"]
    image = torch.tensor([0.2, 0.4, 0.6]).view(1, 3, 1, 1).expand(1, 3, 1, 2).clone()
    maps = torch.tensor([[[1.0, 0.0]]])
    out = overlay(image, maps, alpha=0.25, colormap="jet")
    top, bottom = np.asarray(jet(255))[:3], np.asarray(jet(0))[:3]  # jet(1.0) = (0.5, 0, 0), jet(0.0) = (0, 0, 0.5)
    np.testing.assert_allclose(top, [0.5, 0.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(out[0, :, 0, 0].numpy(), [0.75 * 0.2 + 0.25 * 0.5, 0.75 * 0.4, 0.75 * 0.6], atol=1e-6)
    np.testing.assert_allclose(out[0, :, 0, 1].numpy(), 0.75 * np.array([0.2, 0.4, 0.6]) + 0.25 * bottom, atol=1e-6)
    # alpha 0 leaves the image, alpha 1 is the colour alone
    assert torch.allclose(overlay(image, maps, alpha=0.0), image)
    np.testing.assert_allclose(overlay(image, maps, alpha=1.0)[0, :, 0, 0].numpy(), top, atol=1e-6)


def test_mask_outline_of_a_hand_drawn_square_is_its_border():
    masks = torch.zeros(2, 8, 9, dtype=torch.bool)
    masks[0, 2:6, 3:7] = True  # 4x4 square inside the image
    masks[1, 0:3, 6:9] = True  # 3x3 square in the top-right corner: the image edge counts as outside
    outline = mask_outline(masks)
    assert outline.dtype == torch.bool and tuple(outline.shape) == (2, 8, 9)
    expected = np.zeros((2, 8, 9), dtype=bool)
    expected[0, 2:6, 3:7] = True
    expected[0, 3:5, 4:6] = False  # the 2x2 interior
    expected[1, 0:3, 6:9] = True
    expected[1, 1, 7] = False  # the only pixel with all four neighbours inside
    np.testing.assert_array_equal(outline.numpy(), expected)
    assert outline[0].sum() == 12 and outline[1].sum() == 8


def test_mask_outline_single_pixel_and_empty_mask():
    masks = torch.zeros(2, 3, 3, dtype=torch.bool)
    masks[0, 1, 1] = True
    outline = mask_outline(masks)
    assert outline[0].nonzero().tolist() == [[1, 1]]
    assert not outline[1].any()


@pytest.mark.parametrize(
    "n, per_row, size, min_tile, grid_rows, grid_cols, tile",
    [
        (5, 2, 8, 16, 6, 2, 16),  # 3 blocks of (originals, overlays); tiles enlarged x2
        (5, 8, 8, 8, 2, 5, 8),  # per_row capped at N; no enlargement
        (1, 4, 10, 96, 2, 1, 100),  # factor ceil(96 / 10) = 10
    ],
)
def test_heatmap_grid_shape(n, per_row, size, min_tile, grid_rows, grid_cols, tile):
    images = torch.rand(n, 3, size, size)
    maps = torch.rand(n, size, size)
    grid = heatmap_grid(images, maps, per_row=per_row, min_tile=min_tile)
    pad = 2  # torchvision make_grid's padding
    assert tuple(grid.shape) == (3, grid_rows * (tile + pad) + pad, grid_cols * (tile + pad) + pad)


def test_heatmap_grid_tiles_are_originals_overlays_and_blank_padding():
    g = torch.Generator().manual_seed(3)
    images, maps = torch.rand(3, 3, 4, 4, generator=g), torch.rand(3, 4, 4, generator=g)
    grid = heatmap_grid(images, maps, alpha=0.5, per_row=2, min_tile=4)

    def tile(row, col):
        top, left = 2 + row * 6, 2 + col * 6
        return grid[:, top : top + 4, left : left + 4]

    jet = torch.tensor(matplotlib.colormaps["jet"](np.arange(256))[:, :3], dtype=torch.float32)
    colour = jet[(maps * 255).round().long()].permute(0, 3, 1, 2)
    blend = 0.5 * images + 0.5 * colour
    assert torch.allclose(tile(0, 0), images[0]) and torch.allclose(tile(0, 1), images[1])
    assert torch.allclose(tile(1, 0), blend[0], atol=1e-6) and torch.allclose(tile(1, 1), blend[1], atol=1e-6)
    assert torch.allclose(tile(2, 0), images[2]) and torch.allclose(tile(3, 0), blend[2], atol=1e-6)
    assert torch.equal(tile(2, 1), torch.ones(3, 4, 4)) and torch.equal(tile(3, 1), torch.ones(3, 4, 4))


def test_heatmap_grid_rejects_count_mismatch():
    with pytest.raises(ValueError, match="2 images but 3 maps"):
        heatmap_grid(torch.rand(2, 3, 4, 4), torch.rand(3, 4, 4))


def test_encode_png_round_trips_through_pil():
    g = torch.Generator().manual_seed(7)
    image = torch.randint(0, 256, (3, 11, 7), generator=g, dtype=torch.uint8)
    data = encode_png(image)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    decoded = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert decoded.shape == (11, 7, 3)
    np.testing.assert_array_equal(decoded, image.permute(1, 2, 0).numpy())


def test_save_pngs_writes_the_documented_paths(tmp_path):
    grid = torch.tensor([0.0, 0.5, 1.0]).view(3, 1, 1).expand(3, 2, 3).clone()
    paths = save_pngs(str(tmp_path), {"gradcam": {"grid": grid, "label_2/grid": grid}, "layercam": {"mean_map": grid}}, epoch=3)
    expected = [
        os.path.join(str(tmp_path), "cam", "gradcam", "grid_epoch=0003.png"),
        os.path.join(str(tmp_path), "cam", "gradcam", "label_2", "grid_epoch=0003.png"),
        os.path.join(str(tmp_path), "cam", "layercam", "mean_map_epoch=0003.png"),
    ]
    assert paths == expected
    for path in expected:
        assert os.path.isfile(path)
        pixels = np.asarray(Image.open(path).convert("RGB"))
        assert pixels.shape == (2, 3, 3)
        assert (pixels == np.array([0, 128, 255], dtype=np.uint8)).all()  # 0.5 * 255 rounds to 128
    assert save_pngs(str(tmp_path), {"gradcam": {"grid": grid}}, epoch=12)[0].endswith(os.path.join("gradcam", "grid_epoch=0012.png"))
