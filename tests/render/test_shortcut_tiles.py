"""Prototype tiles of suspected shortcuts (cam_callbacks.render.shortcuts)."""

from __future__ import annotations

import torch

from cam_callbacks.metrics.shortcuts import find_shortcuts
from cam_callbacks.render.grids import GAP
from cam_callbacks.render.shortcuts import best_per_class, box_mask, shortcut_tiles


def test_tiles_show_each_class_best_prototype_with_its_box():
    maps = torch.zeros(12, 16, 16)
    labels = torch.arange(12) % 2
    maps[labels == 0, :4, :4] = 1.0
    for i in range(1, 12, 2):
        maps[i, i : i + 3, 8:11] = 1.0
    found = find_shortcuts(maps, labels, clusters=0)
    chosen = best_per_class(found)
    assert [c.class_index for c in chosen] == [0, 1]
    image = shortcut_tiles(found, min_tile=32)
    assert image.shape == (3, 32 + 2 * GAP, 2 * 32 + 3 * GAP)  # two 32x32 tiles (16 px scaled by 2), GAP white pixels around each
    tile = image[:, GAP : GAP + 32, GAP : GAP + 32]
    # the box (0, 0, 4, 4) scaled by 2 is outlined in white: its corner pixel (7, 7) is white, its inside (3, 3) is not
    assert torch.equal(tile[:, 7, 7], torch.ones(3)) and not torch.equal(tile[:, 3, 3], torch.ones(3))
    assert int(box_mask((4, 4), (1, 1, 3, 3)).sum()) == 4
