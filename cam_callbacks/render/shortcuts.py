"""Pictures of suspected shortcuts: each class's best candidate prototype map with its region boxed.

Functions of tensors (see ``cam_callbacks.metrics.shortcuts.find_shortcuts``); the callback logs
``shortcut_tiles`` as ``<prefix>/<method>/shortcut_prototypes``.
"""

from __future__ import annotations

from typing import Dict, List, Sequence

import torch
from torch import Tensor

from cam_callbacks.metrics.shortcuts import ShortcutCandidate, ShortcutFindings
from cam_callbacks.render.grids import enlarge, enlarge_factor, tile_rows
from cam_callbacks.render.images import apply_colormap, draw_outline, mask_outline


def box_mask(shape: Sequence[int], box: Sequence[int]) -> Tensor:
    """``(H, W)`` bool, True inside ``box = (top, left, bottom, right)`` (bottom and right exclusive).

    Example::

        >>> box_mask((3, 4), (0, 1, 2, 3)).int().tolist()
        [[0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]]
    """
    mask = torch.zeros(tuple(shape), dtype=torch.bool)
    top, left, bottom, right = box
    mask[top:bottom, left:right] = True
    return mask


def best_per_class(findings: ShortcutFindings) -> List[ShortcutCandidate]:
    """The highest-scoring candidate of each class, in class order."""
    best: Dict[int, ShortcutCandidate] = {}
    for candidate in findings.candidates:  # highest score first
        best.setdefault(candidate.class_index, candidate)
    return [best[c] for c in sorted(best)]


def shortcut_tiles(findings: ShortcutFindings, colormap: str = "jet", min_tile: int = 96) -> Tensor:
    """``(3, H', W')``: each class's best prototype map, coloured, with its region's box outlined in white.

    Tiles are in class order (one per class with a candidate), scaled up to at least ``min_tile`` pixels and laid
    out as ``labelled_tiles`` lays out its tiles (8 per row, white gaps).
    """
    chosen = best_per_class(findings)
    if not chosen:
        return torch.ones(3, min_tile, min_tile)
    prototypes = torch.stack([c.prototype.float().cpu() for c in chosen])
    factor = enlarge_factor(prototypes.shape[-2], prototypes.shape[-1], min_tile)
    tiles = enlarge(apply_colormap(prototypes, colormap), min_tile)
    boxes = torch.stack([box_mask(tiles.shape[-2:], [v * factor for v in c.box]) for c in chosen])
    tiles = draw_outline(tiles, mask_outline(boxes))
    return tile_rows(tiles, per_row=8)
