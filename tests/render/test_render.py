"""The render layer's pixels as pure functions of tensors: colormaps, display images, outlines, PNG files (grids and the
overlay: test_grids.py)."""

from __future__ import annotations

import io
import os

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

from cam_callbacks.render.images import apply_colormap, mask_outline, to_display
from cam_callbacks.render.png import encode_png, save_pngs


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
