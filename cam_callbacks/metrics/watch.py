"""One run's diagnosis of a method's maps: localisation, drift, shortcut signature, worst images.

``analyze_maps`` is a pure function of the maps of one method on the probe set, the probe's
region masks and the maps of earlier runs; ``CAMMonitor`` calls it
after every run and only logs what it returns. Scalars (all fractions, ratios in multiples of chance):

- with object masks: ``energy_in_mask``, ``pointing_game``, ``energy_in_mask_ratio``
  (``cam_callbacks.metrics.localization``; images with an empty mask are left out of the means);
- with nuisance masks: ``energy_in_nuisance``, ``energy_in_nuisance_ratio``;
- always: ``shortcut_score`` (``cam_callbacks.metrics.drift.shortcut_score``; with object masks it
  looks only at the saliency *outside* the objects, so objects that sit at the same place in every
  image, as in centred datasets, are not mistaken for a shortcut); from the second run on
  ``drift_prev`` and ``drift_first``, the mean per-image correlation with the previous and the first
  run's maps of the same probe images (1.0: unchanged);
- with the explained classes (``targets``): ``class_shortcut_score``, the highest score of a class or
  a cluster of a class's maps (``cam_callbacks.metrics.shortcuts.find_shortcuts``, whose
  findings are kept in ``MethodAnalysis.findings``), and ``class_shortcut_class``, its class.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional

import torch
from torch import Tensor

from cam_callbacks.metrics.drift import ShortcutReport, map_correlation, shortcut_score
from cam_callbacks.metrics.localization import localization_scores, localization_summary
from cam_callbacks.metrics.shortcuts import ShortcutFindings, find_shortcuts
from cam_callbacks.utils.numeric import safe_divide

#: Every scalar ``analyze_maps`` may return, in logging order.
WATCH_METRICS = (
    "energy_in_mask",
    "pointing_game",
    "energy_in_mask_ratio",
    "energy_in_nuisance",
    "energy_in_nuisance_ratio",
    "shortcut_score",
    "drift_prev",
    "drift_first",
    "class_shortcut_score",
    "class_shortcut_class",
)


@dataclass
class MethodAnalysis:
    """What ``analyze_maps`` found for one method.

    Attributes:
        scalars: ``{metric: value}`` (see ``WATCH_METRICS``), means over the probe images.
        per_image: ``{metric: (N,) tensor}`` for ranking images; NaN where an image has no value
            (empty mask).
        shortcut: The shortcut report (its ``mean_map`` shows *where* the maps gather).
        order: ``(N,)`` probe indices, worst first: by nuisance share (highest first) when nuisance
            masks are given, else by object share (lowest first) when object masks are given; in probe
            order without masks (so grids of successive runs show the same images in the same places).
        findings: The per-class shortcut findings (None without ``targets``); their probe indices are
            those of the analysed rows.
    """

    scalars: Dict[str, float]
    per_image: Dict[str, Tensor]
    shortcut: ShortcutReport
    order: Tensor
    findings: Optional[ShortcutFindings] = field(default=None)


def _mask_or_nan(values: Tensor, mask: Optional[Tensor]) -> Tensor:
    if mask is None:
        return values.double()
    present = mask.flatten(1).any(dim=1).to(values.device)
    return torch.where(present, values.double(), torch.full_like(values, float("nan"), dtype=torch.float64))


def _worst_first(values: Tensor, descending: bool) -> Tensor:
    """Indices sorting ``values`` worst first, NaN last (stable: ties keep probe order)."""
    key = values.clone()
    key[key.isnan()] = -torch.inf if descending else torch.inf
    return key.argsort(descending=descending, stable=True)


def _shortcut(maps: Tensor, masks: Optional[Tensor]) -> "tuple[ShortcutReport, float]":
    """The shortcut report, on the saliency outside the objects when object masks are given, and the share of mass it covers.

    Without masks: ``(shortcut_score(maps), 1.0)``. With masks: the maps with the object pixels set to 0,
    and the mean share of each image's mass outside its object (a model that looks at the objects
    leaves little outside, so its score is scaled down however its residual saliency is arranged).
    """
    if masks is None or not bool(masks.any()):
        return shortcut_score(maps), 1.0
    outside = maps * (~masks.to(maps.device)).to(maps.dtype)
    total = maps.flatten(1).sum(1).double()
    share = safe_divide(outside.flatten(1).sum(1).double(), total, fallback=1.0, require_positive=True)
    return shortcut_score(outside), float(share.mean())


def analyze_maps(
    maps: Tensor,
    masks: Optional[Tensor] = None,
    nuisance: Optional[Tensor] = None,
    previous: Optional[Tensor] = None,
    first: Optional[Tensor] = None,
    targets: Optional[Tensor] = None,
    correct: Optional[Tensor] = None,
    confidence: Optional[Tensor] = None,
    clusters: int = 2,
) -> MethodAnalysis:
    """Localisation, shortcut and drift scalars of one method's ``(N, H, W)`` maps on the probe set.

    Args:
        maps: ``(N, H, W)`` maps in [0, 1].
        masks: ``(N, H, W)`` bool object masks, or None.
        nuisance: ``(N, H, W)`` bool nuisance masks, or None.
        previous: The previous run's maps of the same images (same shape), or None.
        first: The first run's maps, or None.
        targets: ``(N,)`` class each map explains, for the per-class findings (None: none).
        correct: ``(N,)`` bool, whether the model predicts each image right (None: unknown).
        confidence: ``(N,)`` probability of the explained class (None: unknown).
        clusters: Clusters per class in the findings (``find_shortcuts``).

    Example::

        >>> maps = torch.zeros(4, 8, 8); maps[:, :2, :2] = 1.0   # every map on the top-left corner
        >>> corner = torch.zeros(4, 8, 8, dtype=torch.bool); corner[:, :2, :2] = True
        >>> result = analyze_maps(maps, nuisance=corner)
        >>> result.scalars["energy_in_nuisance"], result.scalars["energy_in_nuisance_ratio"]
        (1.0, 16.0)
        >>> result.scalars["shortcut_score"] > 0.9
        True
    """
    scores = localization_scores(maps, masks, nuisance)
    scalars = localization_summary(scores, masks, nuisance)
    per_image: Dict[str, Tensor] = {}
    for name, values in scores.items():
        per_image[name] = _mask_or_nan(values, masks if "mask" in name else nuisance)
    report, outside_share = _shortcut(maps, masks)
    scalars["shortcut_score"] = float(report.score) * outside_share
    per_image["shortcut_score"] = report.per_image.double()
    for name, earlier in (("drift_prev", previous), ("drift_first", first)):
        if earlier is not None:
            if earlier.shape != maps.shape:
                raise ValueError(f"{name}: earlier maps have shape {tuple(earlier.shape)}, these {tuple(maps.shape)}")
            correlation = map_correlation(maps, earlier.to(maps.device))
            per_image[name] = correlation.double()
            scalars[name] = float(correlation.double().mean())
    if nuisance is not None and bool(nuisance.any()):
        order = _worst_first(per_image["energy_in_nuisance_ratio"], descending=True)
    elif masks is not None and bool(masks.any()):
        order = _worst_first(per_image["energy_in_mask_ratio"], descending=False)
    else:
        order = torch.arange(maps.shape[0])
    findings = None
    if targets is not None and targets.dim() == 1 and maps.shape[0] > 0:
        findings = find_shortcuts(maps, targets, masks, correct=correct, confidence=confidence, clusters=clusters)
        if findings.best is not None:
            scalars["class_shortcut_score"] = findings.best.score
            scalars["class_shortcut_class"] = float(findings.best.class_index)
    ordered = {name: scalars[name] for name in WATCH_METRICS if name in scalars}
    return MethodAnalysis(ordered, per_image, report, order, findings)
