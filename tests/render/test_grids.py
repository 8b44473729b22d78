"""Captioned grids, legends, text and the evolution strip (cam_callbacks.render.grids/legend/text/evolution): exact pixels on
small inputs."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
import torch

from cam_callbacks.engine.result import Explanation
from cam_callbacks.metrics.watch import analyze_maps
from cam_callbacks.render.evolution import MapStrip
from cam_callbacks.render.grids import GAP, WRONG_COLOR, Caption, caption_height, captioned_grid, cell_boxes, evolution_grid, labelled_tiles
from cam_callbacks.render.images import weighted_overlay
from cam_callbacks.render.legend import BAR_WIDTH, LEGEND_FONT, NUISANCE_COLOR, OBJECT_COLOR, legend_band
from cam_callbacks.render.publish import ImageStyle, ProbeView, RunInfo, probe_captions, run_images, summary_maps
from cam_callbacks.render.text import glyph, line_height, paint_text, text_mask, text_width, wrap_text


def _lut(name):
    return torch.tensor(matplotlib.colormaps[name](np.arange(256))[:, :3], dtype=torch.float32)


def test_text_is_the_concatenation_of_cached_glyphs_and_paints_only_its_box():
    mask = text_mask("Ag1", 13)
    assert mask.shape == (line_height(LEGEND_FONT), text_width("Ag1", 13))
    assert torch.equal(mask[:, : glyph("A", 13).shape[1]], glyph("A", 13))
    assert glyph("A", 13) is glyph("A", 13)  # rendered once
    canvas = torch.ones(3, 30, 80)
    end = paint_text(canvas, "Ag1", 5, 4, 13, (1.0, 0.0, 0.0))
    assert end == 5 + mask.shape[1]
    changed = (canvas != 1).any(0)
    rows, cols = changed.nonzero(as_tuple=True)
    assert rows.min() >= 4 and rows.max() < 4 + mask.shape[0] and cols.min() >= 5 and cols.max() < end
    assert torch.equal(canvas[0], torch.ones(30, 80))  # red text on white: the red channel stays 1
    assert canvas[1].min() < 0.1  # fully covered glyph pixels are pure red


def test_legend_bar_is_the_colormap_low_to_high_with_ticks_under_their_values():
    band = legend_band(900, "viridis")
    bar = band[:, 6, 8 : 8 + BAR_WIDTH].t()  # one row through the bar, column j = value j / (BAR_WIDTH - 1)
    index = torch.linspace(0, 255, BAR_WIDTH).round().long()
    assert torch.allclose(bar, _lut("viridis")[index], atol=1e-6)
    luminance = bar @ torch.tensor([0.2126, 0.7152, 0.0722])
    assert bool((luminance[1:] >= luminance[:-1] - 1e-6).all())  # viridis: monotone, dark (0) to bright (1)
    for value in (0.0, 0.5, 1.0):  # tick marks: black, right under the bar
        column = 8 + round(value * (BAR_WIDTH - 1))
        assert torch.equal(band[:, 17, column], torch.zeros(3))
    assert (band[:, 2:16, 8 + BAR_WIDTH + 12 :] < 0.5).any()  # the label is written beside the bar


def test_legend_of_a_narrow_image_puts_the_label_on_its_own_line():
    label = "a long label " * 3
    wide, narrow = legend_band(900, "jet", label=label), legend_band(200, "jet", label=label)
    lines = wrap_text(label, LEGEND_FONT, 200 - 12)
    assert len(lines) == 2 and " ".join(lines) == label.strip()  # wrapped at spaces, nothing lost
    assert narrow.shape[1] == wide.shape[1] + 2 * line_height(LEGEND_FONT)


def test_weighted_overlay_opacity_follows_the_map():
    image = torch.full((1, 3, 1, 3), 0.5)
    maps = torch.tensor([[[0.0, 0.5, 1.0]]])
    out = weighted_overlay(image, maps, alpha=0.5, colormap="jet")
    lut = _lut("jet")
    for j, (m, opacity) in enumerate([(0.0, 0.125), (0.5, 0.5 * (0.25 + 0.625)), (1.0, 0.75)]):
        expected = 0.5 + opacity * (lut[round(m * 255)] - 0.5)
        assert torch.allclose(out[0, :, 0, j], expected, atol=1e-6)


def _probe(n=3, size=8):
    images = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0))
    masks = torch.zeros(n, size, size, dtype=torch.bool)
    masks[:, 3:6, 3:6] = True
    nuisance = torch.zeros(n, size, size, dtype=torch.bool)
    nuisance[:, :2, :2] = True
    return images, masks, nuisance


def test_captioned_grid_layout_captions_tiles_and_two_outline_colours():
    images, masks, nuisance = _probe()
    maps = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(1))
    captions = [Caption("#0 a", "p=0.9"), Caption("#1 b", "p=0.1", wrong=True), Caption("#2 c")]
    grid = captioned_grid(images, maps, captions, per_row=2, min_tile=16, masks=masks, nuisance=nuisance)
    tile = 16  # 8 px enlarged twice
    cell_h, cell_w = caption_height() + tile, 2 * tile + 2
    assert grid.shape == (3, GAP + 2 * (cell_h + GAP), GAP + 2 * (cell_w + GAP))
    boxes = cell_boxes(3, 2, tile, tile)
    for i, (top, left, overlay_left) in enumerate(boxes):
        original = grid[:, top : top + tile, left : left + tile]
        expected = images[i].repeat_interleave(2, 1).repeat_interleave(2, 2)
        assert torch.equal(original[:, 8:10, 8:10], expected[:, 8:10, 8:10])  # inside the object, off the outline
        for view in (original, grid[:, top : top + tile, overlay_left : overlay_left + tile]):
            assert torch.equal(view[:, 6, 8], torch.tensor(OBJECT_COLOR))  # object rows 3..5 -> enlarged 6..11: top edge
            assert torch.equal(view[:, 0, 1], torch.tensor(NUISANCE_COLOR))  # nuisance rows 0..1 -> 0..3
            assert torch.equal(view[:, 3, 1], torch.tensor(NUISANCE_COLOR))  # its bottom edge
            assert not torch.equal(view[:, 7, 8], torch.tensor(OBJECT_COLOR))  # one pixel thin
        band = grid[:, top - caption_height() : top, left : left + cell_w]
        assert (band < 0.5).any(), "a caption is written in the band"
        red = (band[0] > 0.5) & (band[1] < 0.2)
        assert bool(red.any()) == captions[i].wrong  # wrong predictions are written in red
    assert WRONG_COLOR[0] > 0.5 and WRONG_COLOR[1] < 0.2
    empty = grid[:, boxes[1][0] + cell_h :, boxes[1][1] :]  # the fourth cell's place stays white
    assert torch.equal(empty, torch.ones_like(empty))


def test_captions_say_index_label_prediction_probability_and_score():
    images = torch.zeros(3, 3, 4, 4)
    logits = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 0.0]])
    labels = torch.tensor([0, 0, 1])
    view = ProbeView(images, labels, None, None, torch.tensor([4, 5, 9]), "softmax")
    explanation = Explanation({"gradcam": torch.zeros(3, 4, 4)}, logits, labels, "layer")
    adcc = torch.tensor([0.84, float("nan"), 0.5])
    captions = probe_captions(view, explanation, torch.tensor([0, 1, 2]), adcc, "ADCC {:.2f}", ["cat", "dog"])
    p0 = 1 / (1 + np.exp(-2.0))  # softmax of (2, 0) at class 0
    assert captions[0] == Caption("#4 cat → cat", f"p={p0:.2f}  ADCC 0.84", False)
    assert captions[1] == Caption("#5 cat → dog ✗", f"p={1 / (1 + np.exp(3.0)):.2f}", True)  # NaN score: left out
    assert captions[2] == Caption("#9 dog → cat ✗", f"p={1 / (1 + np.exp(1.0)):.2f}  ADCC 0.50", True)
    unnamed = probe_captions(view, explanation, torch.tensor([0]), None, "", None)
    assert unnamed[0].title == "#4 0 → 0"


def test_class_means_and_mean_map_use_the_absolute_scale():
    n = 4
    maps = torch.full((n, 8, 8), 0.2)  # an evenly spread map: dim, never stretched to the top colour
    maps[:2, :2, :2] = 1.0
    view = ProbeView(torch.zeros(n, 3, 8, 8), torch.tensor([0, 0, 1, 1]), None, None, torch.arange(n), "softmax")
    explanation = Explanation({"m": maps}, torch.zeros(n, 3), torch.tensor([0, 0, 1, 1]), "layer")
    images = summary_maps(view, explanation, "m", ImageStyle(colormap="viridis"), ["a", "b", "c"])
    lut = _lut("viridis")
    tiles = labelled_tiles(torch.stack([maps[:2].mean(0), maps[2:].mean(0), torch.zeros(8, 8)]), ["a (2)", "b (2)", "c (0)"], "viridis")
    assert torch.equal(images["class_means"][:, : tiles.shape[1]], tiles)
    top = GAP + caption_height() - 1 + 20
    colour_b = images["class_means"][:, top, GAP + (96 + GAP) + 50]  # class b: uniform 0.2
    assert torch.allclose(colour_b, lut[round(0.2 * 255)], atol=1e-6)
    mean_tile = images["mean_map"][:, GAP + line_height(LEGEND_FONT) + 2 + 150, GAP + 150]  # far from the corner: mean 0.2
    assert torch.allclose(mean_tile, lut[round(0.2 * 255)], atol=1e-6)


def test_map_strip_is_bounded_and_keeps_the_first_and_latest_runs():
    strip = MapStrip(max_columns=6, size=4)
    for run in range(100):
        strip.add("m", f"ep {run}", torch.full((2, 16, 16), float(run) / 100))
    columns = strip.columns("m")
    assert len(columns) <= 6 and columns[0][0] == "ep 0" and columns[-1][0] == "ep 99"
    assert all(maps.shape == (2, 4, 4) and maps.dtype == torch.float16 for _, maps in columns)
    runs = [int(title.split()[1]) for title, _ in columns]
    assert runs == sorted(runs)
    with pytest.raises(ValueError, match="max_columns must be at least 2"):
        MapStrip(max_columns=1)


def test_evolution_grid_has_one_column_per_run_after_the_original():
    images = torch.rand(2, 3, 8, 8)
    history = [("ep 0", torch.zeros(2, 4, 4)), ("ep 1", torch.ones(2, 4, 4))]
    out = evolution_grid(images, history, ["#0", "#1"], tile=32, colormap="gray", alpha=0.4)
    label_w = text_width("#0", LEGEND_FONT) + 8
    assert out.shape == (3, line_height(LEGEND_FONT) + 4 + 2 * 34, label_w + 3 * 34)
    top = line_height(LEGEND_FONT) + 4
    last = out[:, top : top + 32, label_w + 2 * 34 : label_w + 2 * 34 + 32]  # map 1 in gray: white at 60 % opacity
    original = out[:, top : top + 32, label_w : label_w + 32]
    assert torch.allclose(last, original + 0.6 * (1 - original), atol=1e-5)


def test_run_images_without_masks_have_no_worst_tag_and_with_masks_do(tmp_path):
    images, masks, nuisance = _probe(4, 8)
    maps = torch.rand(4, 8, 8, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([0, 1, 0, 1])
    explanation = Explanation({"gradcam": maps}, torch.randn(4, 2), labels, "layer")
    strip = MapStrip()
    plain = ProbeView(images, labels, None, None, torch.arange(4), "softmax")
    out = run_images(plain, explanation, {"gradcam": analyze_maps(maps)}, ImageStyle(), RunInfo(title="ep 0", strip=strip))
    assert sorted(out["gradcam"]) == ["class_means", "evolution", "grid", "mean_map"]
    masked = ProbeView(images, labels, masks, nuisance, torch.arange(4), "softmax")
    out = run_images(masked, explanation, {"gradcam": analyze_maps(maps, masks, nuisance)}, ImageStyle(), RunInfo(title="ep 1", strip=strip))
    assert sorted(out["gradcam"]) == ["class_means", "evolution", "grid", "mean_map", "worst"]
    assert [title for title, _ in strip.columns("gradcam")] == ["ep 0", "ep 1"]
