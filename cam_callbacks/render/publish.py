"""The images the callback logs after a run: heatmap grids, class-mean maps and the shortcut mean map.

Pure functions of the probe rows, the maps and the run's analysis (no logger here); rendering
primitives are in ``cam_callbacks.render.images``.
"""

from __future__ import annotations

from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor

from cam_callbacks.engine.result import Explanation, ProbeView
from cam_callbacks.metrics.drift import class_mean_maps
from cam_callbacks.metrics.watch import MethodAnalysis
from cam_callbacks.render.evolution import MapStrip
from cam_callbacks.render.grids import Caption, captioned_grid, evolution_grid, labelled_tiles
from cam_callbacks.render.images import to_display
from cam_callbacks.render.legend import NUISANCE_COLOR, OBJECT_COLOR, with_legend
from cam_callbacks.render.shortcuts import shortcut_tiles
from cam_callbacks.render.style import ImageStyle

#: Rows of the evolution strip (the first probe rows).
EVOLUTION_ROWS = 6
GRID_LABEL = "map value, min-max per image (0 = least, 1 = most used)"
MEAN_LABEL = "absolute scale: the maps' own 0-1 values (an evenly spread map stays dim)"


class RunInfo(NamedTuple):
    """What captions and the evolution strip need beyond the maps: per-image scores, class names, the run's title."""

    scores: Optional[Dict[str, Dict[str, Tensor]]] = None
    class_names: Optional[Sequence[str]] = None
    title: str = ""
    strip: Optional[MapStrip] = None


def class_name(index: int, names: Optional[Sequence[str]]) -> str:
    """``names[index]`` when there are names for it, else the index as text."""
    return str(names[index]) if names is not None and 0 <= index < len(names) else str(index)


def probe_captions(
    view: ProbeView,
    explanation: Explanation,
    rows: Tensor,
    score: Optional[Tensor],
    score_name: str,
    names: Optional[Sequence[str]],
) -> List[Caption]:
    """One ``Caption`` per row: ``#<probe index> <label> → <prediction>`` (``✗`` when wrong), then the target's
    probability and the row's ``score`` (a fraction), through the format string ``score_name`` (``"ADCC {:.2f}"``)."""
    logits = explanation.logits.detach().float().cpu()[rows]
    explained = explanation.targets.cpu()[rows]
    softmax = view.probability == "softmax"
    probability = (logits.softmax(1) if softmax else logits.sigmoid()).gather(1, explained.view(-1, 1)).squeeze(1)
    predicted = logits.argmax(1)
    labels = view.targets.cpu()[rows] if view.targets is not None else None
    captions = []
    for k, row in enumerate(rows.tolist()):
        index = int(view.image_index[row])
        if softmax:
            truth = int(labels[k]) if labels is not None else None
            wrong = truth is not None and truth != int(predicted[k])
            shown = f"{class_name(truth, names)} → " if truth is not None else "→ "
            title = f"#{index} {shown}{class_name(int(predicted[k]), names)}{' ✗' if wrong else ''}"
        else:
            wrong = float(probability[k]) < 0.5
            title = f"#{index} {class_name(int(explained[k]), names)}{' ✗' if wrong else ''}"
        value = float(score[row]) if score is not None else float("nan")
        detail = f"p={float(probability[k]):.2f}" + ("  " + score_name.format(value) if value == value else "")
        captions.append(Caption(title, detail, wrong))
    return captions


def _row_score(method: str, analysis: MethodAnalysis, view: ProbeView, info: RunInfo) -> Tuple[Optional[Tensor], str]:
    if view.masks is not None and "energy_in_mask" in analysis.per_image:
        return analysis.per_image["energy_in_mask"].cpu(), "in object {:.2f}"
    if info.scores and method in info.scores and "adcc" in info.scores[method]:
        return info.scores[method]["adcc"].detach().cpu(), "ADCC {:.2f}"
    return None, ""


def method_grids(
    view: ProbeView,
    explanation: Explanation,
    method: str,
    analysis: MethodAnalysis,
    style: ImageStyle,
    info: RunInfo = RunInfo(),  # noqa: B008 - never mutated
) -> Dict[str, Tensor]:
    """``{"grid": ...}`` in probe order (the same images in the same places at every run) and, with masks,
    ``{"worst": ...}`` in ``analysis.order`` (worst first); ``{"label_<c>/grid": ...}`` per label for multi-hot labels
    (the ``max_labels`` most frequent ones). Captioned cells, outlined regions, a colour scale under each."""
    n = explanation.maps[method].shape[0]
    if view.probability == "softmax":
        groups = {"grid": torch.arange(n)}
        if view.masks is not None or view.nuisance is not None:
            groups["worst"] = analysis.order.cpu()
    else:
        labels = view.targets.cpu() if view.targets is not None else explanation.targets.cpu()
        frequent = torch.bincount(labels).argsort(descending=True, stable=True)[: style.max_labels]
        groups = {f"label_{int(c)}/grid": torch.arange(n)[labels == c] for c in frequent if bool((labels == c).any())}
    return {name: rows_grid(view, explanation, method, analysis, style, info, rows[: style.max_images], name == "worst") for name, rows in groups.items()}


def rows_grid(
    view: ProbeView,
    explanation: Explanation,
    method: str,
    analysis: MethodAnalysis,
    style: ImageStyle,
    info: RunInfo,
    rows: Tensor,
    worst_first: bool = False,
) -> Tensor:
    """The captioned grid of ``rows`` (probe rows, in that order) with its colour scale and outline legend."""
    maps = explanation.maps[method].detach().float().cpu()
    score, score_name = _row_score(method, analysis, view, info)
    regions = ((view.masks, OBJECT_COLOR, "object"), (view.nuisance, NUISANCE_COLOR, "nuisance"))
    outlines = [(color, name) for region, color, name in regions if region is not None]
    display = to_display(view.images[rows], style.mean_values, style.std_values)
    captions = probe_captions(view, explanation, rows, score, score_name, info.class_names)
    masks = None if view.masks is None else view.masks[rows]
    nuisance = None if view.nuisance is None else view.nuisance[rows]
    grid = captioned_grid(display, maps[rows], captions, style.overlay_alpha, style.colormap, style.per_row, masks=masks, nuisance=nuisance)
    return with_legend(grid, style.colormap, GRID_LABEL + ("; worst first" if worst_first else "; probe order"), outlines=outlines)


def evidence_grid(
    view: ProbeView,
    explanation: Explanation,
    method: str,
    analysis: MethodAnalysis,
    style: ImageStyle,
    info: RunInfo,
    worst: Sequence[int],
) -> Optional[Tensor]:
    """The grid of the probe images ``worst`` (an ``AlarmHit``'s), in that order; None if none is shown."""
    index = view.image_index.tolist()
    rows = [row for image in list(worst)[: style.max_images] for row, i in enumerate(index) if i == image]
    if not rows:
        return None
    return rows_grid(view, explanation, method, analysis, style, info, torch.tensor(rows), worst_first=True)


def summary_maps(view: ProbeView, explanation: Explanation, method: str, style: ImageStyle, names: Optional[Sequence[str]]) -> Dict[str, Tensor]:
    """``class_means`` (mean map per explained class, named, with its image count) and ``mean_map`` (mean of all maps;
    with object masks of the maps outside the objects), both on the maps' absolute 0-1 scale: a map spread evenly
    stays dim instead of being stretched to full colour."""
    maps = explanation.maps[method].detach().float().cpu().nan_to_num(0.0)
    num_classes = explanation.logits.shape[1]
    by_class = class_mean_maps(maps, explanation.targets.cpu(), num_classes)
    titles = [f"{class_name(c, names)} ({int(by_class.counts[c])})" for c in range(num_classes)]
    class_means = labelled_tiles(by_class.means.clamp(0, 1), titles, style.colormap)
    outside = maps if view.masks is None else maps * (~view.masks.bool()).float()
    where = "over all probe images" if view.masks is None else "outside the objects"
    mean_map = labelled_tiles(outside.mean(0, keepdim=True).clamp(0, 1), [f"mean {where}"], style.colormap, min_tile=192)
    return {
        "class_means": with_legend(class_means, style.colormap, "mean map per class (number of images); " + MEAN_LABEL),
        "mean_map": with_legend(mean_map, style.colormap, "mean map; " + MEAN_LABEL),
    }


def evolution_image(view: ProbeView, method: str, style: ImageStyle, info: RunInfo) -> Optional[Tensor]:
    """The evolution strip of ``method`` from ``info.strip`` (None without one): the first probe rows over the runs."""
    if info.strip is None or not info.strip.columns(method):
        return None
    rows = torch.arange(min(EVOLUTION_ROWS, view.images.shape[0]))
    labels = view.targets if view.targets is not None and view.probability == "softmax" else None
    names = [f"#{int(view.image_index[r])}" + (f" {class_name(int(labels[r]), info.class_names)}" if labels is not None else "") for r in rows]
    originals = to_display(view.images[rows], style.mean_values, style.std_values)
    grid = evolution_grid(originals, info.strip.columns(method), names, style.overlay_alpha, style.colormap)
    return with_legend(grid, style.colormap, GRID_LABEL)


def run_images(
    view: ProbeView,
    explanation: Explanation,
    analyses: Dict[str, MethodAnalysis],
    style: ImageStyle,
    info: RunInfo = RunInfo(),  # noqa: B008 - never mutated
) -> Dict[str, Dict[str, Tensor]]:
    """``{method: {"grid" | "worst" | "label_<c>/grid" | "class_means" | "mean_map" | "evolution" | "shortcut_prototypes": (3, H, W)}}`` for one
    run; the maps of the first ``EVOLUTION_ROWS`` rows are added to ``info.strip`` first."""
    images = {}
    for method, analysis in analyses.items():
        if info.strip is not None:
            rows = min(EVOLUTION_ROWS, view.images.shape[0])
            info.strip.add(method, info.title, explanation.maps[method][:rows].nan_to_num(0.0))
        named = method_grids(view, explanation, method, analysis, style, info)
        named.update(summary_maps(view, explanation, method, style, info.class_names))
        evolution = evolution_image(view, method, style, info)
        if evolution is not None:
            named["evolution"] = evolution
        if analysis.findings is not None and analysis.findings.candidates:  # each class's best candidate, region boxed
            named["shortcut_prototypes"] = shortcut_tiles(analysis.findings, style.colormap)
        images[method] = named
    return images


def to_uint8(image: Tensor) -> Tensor:
    """A ``(3, H, W)`` image in [0, 1] as uint8 (what TensorBoard stores), detached from later changes."""
    return image.detach().float().mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8).cpu()  # rounds half up
