"""The images the callback logs after a run: heatmap grids, class-mean maps and the shortcut mean map.

Pure functions of the probe rows, the maps and the run's analysis (no logger here); rendering
primitives are in :mod:`cam_callbacks.render.images`.
"""

from __future__ import annotations

from typing import Dict, NamedTuple, Optional, Sequence

import torch
from torch import Tensor

from cam_callbacks.engine.result import Explanation
from cam_callbacks.metrics.drift import class_mean_maps
from cam_callbacks.metrics.watch import MethodAnalysis
from cam_callbacks.render.images import heatmap_grid, map_tiles, mask_outline, to_display
from cam_callbacks.render.shortcuts import shortcut_tiles
from cam_callbacks.utils.numeric import safe_divide
from cam_callbacks.utils.types import Probability

__all__ = ["ImageStyle", "ProbeView", "run_images", "method_grids", "to_uint8"]


class ProbeView(NamedTuple):
    """The rows the callback explains: probe images (or one row per positive label) and their masks."""

    images: Tensor
    targets: Optional[Tensor]
    masks: Optional[Tensor]
    nuisance: Optional[Tensor]
    image_index: Tensor
    probability: Probability


class ImageStyle(NamedTuple):
    """How images are drawn: rows shown, labels with a grid (multi-label), un-normalisation, overlay look."""

    max_images: int = 16
    max_labels: int = 4
    mean: Optional[Sequence[float]] = None
    std: Optional[Sequence[float]] = None
    overlay_alpha: float = 0.5
    colormap: str = "jet"


def method_grids(view: ProbeView, explanation: Explanation, method: str, analysis: MethodAnalysis, style: ImageStyle) -> Dict[str, Tensor]:
    """``{"grid": ...}`` (rows in ``analysis.order``, worst first with masks), or ``{"label_<c>/grid": ...}`` per
    label for multi-hot labels (the ``max_labels`` most frequent ones); object masks outlined."""
    maps = explanation.maps[method].detach().float().cpu()
    order = analysis.order
    if view.probability == "softmax":
        groups = {"grid": order}
    else:
        labels = view.targets.cpu() if view.targets is not None else explanation.targets.cpu()
        frequent = torch.bincount(labels).argsort(descending=True, stable=True)[: style.max_labels]
        groups = {f"label_{int(c)}/grid": order[labels[order] == c] for c in frequent if bool((labels == c).any())}
    grids = {}
    for name, rows in groups.items():
        rows = rows[: style.max_images]
        display = to_display(view.images[rows], style.mean, style.std)
        outlines = None if view.masks is None else mask_outline(view.masks[rows])
        grids[name] = heatmap_grid(display, maps[rows], style.overlay_alpha, style.colormap, outlines=outlines)
    return grids


def run_images(view: ProbeView, explanation: Explanation, analyses: Dict[str, MethodAnalysis], style: ImageStyle) -> Dict[str, Dict[str, Tensor]]:
    """``{method: {"grid" | "label_<c>/grid" | "class_means" | "mean_map" | "shortcut_prototypes": (3, H, W) image}}`` for one run."""
    num_classes = explanation.logits.shape[1]
    images = {}
    for method, analysis in analyses.items():
        named = method_grids(view, explanation, method, analysis, style)
        maps = explanation.maps[method].detach().float().cpu()
        means = class_mean_maps(maps, explanation.targets.cpu(), num_classes).means
        named["class_means"] = map_tiles(_scaled(means), style.colormap)
        named["mean_map"] = map_tiles(analysis.shortcut.mean_map[None].float(), style.colormap)
        if analysis.findings is not None and analysis.findings.candidates:  # each class's best candidate, region boxed
            named["shortcut_prototypes"] = shortcut_tiles(analysis.findings, style.colormap)
        images[method] = named
    return images


def _scaled(maps: Tensor) -> Tensor:
    """Each map divided by its maximum (zeros stay zeros), for display."""
    return safe_divide(maps, maps.flatten(1).amax(dim=1).view(-1, 1, 1), require_positive=True)


def to_uint8(image: Tensor) -> Tensor:
    """A ``(3, H, W)`` image in [0, 1] as uint8 (what TensorBoard stores), detached from later changes."""
    return (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
