"""Localization metrics: does a map point at the object, or at a nuisance cue?

Pure functions with per-image outputs ``(N,)``. Inputs, for every function:

- ``maps``: ``(N, H, W)`` floating, finite, non-negative (the normalised maps of
  ``cam_callbacks.explain`` are in ``[0, 1]``). The *mass* of a map is the sum of its pixels.
- masks: ``(N, H, W)`` at the same size as the maps, ``bool`` or numeric with values in ``{0, 1}``
  (True / 1 marks the object, or the nuisance cue). Masks are moved to the maps' device.

Definitions, per image ``i`` with map ``L`` and mask ``M`` (``|M|`` pixels out of ``H * W``):

- Energy in mask: ``E = sum(L * M) / sum(L)``, the share of the map's mass inside the mask;
  ``E = 0`` for a map with zero mass (never NaN). Energy-based pointing game of Score-CAM
  (Wang et al. 2020), without a bounding box.
- Energy ratio: ``E / (|M| / (H * W))``, the energy in the mask relative to the mask's area
  fraction. A uniform map scores exactly 1 (chance); a map entirely inside the mask scores
  ``H * W / |M|``. ``0`` for an empty mask or a zero map. Unlike ``E``, it is comparable across
  objects of different sizes.
- Pointing game (Zhang et al. 2016): 1 if the map's maximum lies inside the mask, else 0.
  Tie rule: a hit when *any* pixel attaining the maximum is in the mask, i.e.
  ``max(L[M]) == max(L)``; a constant map (including the zero map) has no maximum to point with
  and scores 0, as does an empty mask. ``tolerance`` (pixels) dilates the mask first by a
  ``(2 t + 1) x (2 t + 1)`` square (Chebyshev distance ``<= t``; the paper uses 15 pixels on
  ImageNet).

The same functions applied to a *nuisance* mask (e.g. a coloured patch correlated with the label in
the training data) measure how much of the explanation sits on the spurious cue.

Values are fractions (not percent). An image whose mask is empty has no meaningful score (0 by
the conventions above): leave it out of averages, as ``localization_summary`` does.

Example::

    >>> maps = torch.tensor([[[0.0, 1.0], [0.5, 0.5]]])
    >>> masks = torch.tensor([[[False, True], [False, False]]])
    >>> scores = localization_scores(maps, masks)
    >>> [round(float(scores[k][0]), 4) for k in ("energy_in_mask", "pointing_game", "energy_in_mask_ratio")]
    [0.5, 1.0, 2.0]
"""

from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from cam_callbacks.utils.checks import check_maps
from cam_callbacks.utils.numeric import safe_divide

#: Names of the localization metrics, in reporting order (keys of ``localization_scores``).
LOCALIZATION_METRICS = (
    "energy_in_mask",
    "pointing_game",
    "energy_in_mask_ratio",
    "energy_in_nuisance",
    "energy_in_nuisance_ratio",
)

#: Metrics computed from the object mask, and from the nuisance mask.
_MASK_METRICS = ("energy_in_mask", "pointing_game", "energy_in_mask_ratio")
_NUISANCE_METRICS = ("energy_in_nuisance", "energy_in_nuisance_ratio")


def _as_bool_mask(maps: Tensor, masks: Tensor, name: str = "masks") -> Tensor:
    """Validate ``masks`` against ``maps`` and return them as bool on the maps' device."""
    if not isinstance(masks, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (N, H, W), got {type(masks).__name__}")
    if masks.dim() != 3:
        raise ValueError(f"{name} must be (N, H, W), got shape {tuple(masks.shape)}")
    if masks.shape != maps.shape:
        hint = ""
        if masks.shape[0] == maps.shape[0]:
            hint = " (upsample the maps to the input size, e.g. with cam_callbacks.upsample_and_normalize)"
        raise ValueError(f"{name} {tuple(masks.shape)} and maps {tuple(maps.shape)} must have the same shape{hint}")
    if masks.dtype != torch.bool:
        if masks.is_complex():
            raise ValueError(f"{name} must be bool or real with values in {{0, 1}}, got dtype {masks.dtype}")
        if masks.numel() and not bool(((masks == 0) | (masks == 1)).all()):
            bad = masks[(masks != 0) & (masks != 1)].flatten()[0]
            raise ValueError(f"{name} must be bool or contain only 0 and 1, found the value {float(bad):.4g}")
        masks = masks != 0
    return masks.to(maps.device)


def _energy(maps: Tensor, masks: Tensor) -> Tensor:
    """``sum(L * M) / sum(L)`` in float64 (masks already bool), 0 for zero-mass maps."""
    flat = maps.flatten(1).double()
    total = flat.sum(dim=1)
    inside = (flat * masks.flatten(1)).sum(dim=1)
    return safe_divide(inside, total, require_positive=True)


def _ratio(maps: Tensor, masks: Tensor) -> Tensor:
    """Energy over area fraction, float64 (masks already bool), 0 for empty masks."""
    count = masks.flatten(1).sum(dim=1)
    pixels = masks.shape[1] * masks.shape[2]
    area = count.double() / pixels  # > 0 exactly where the mask is not empty
    return safe_divide(_energy(maps, masks), area, require_positive=True)


def energy_in_mask(maps: Tensor, masks: Tensor) -> Tensor:
    """Share of each map's mass inside its mask: ``sum(L * M) / sum(L)``, ``(N,)`` in ``[0, 1]``.

    A map with zero mass scores 0 (never NaN); so does an empty mask.

    Args:
        maps: ``(N, H, W)`` non-negative maps.
        masks: ``(N, H, W)`` bool or ``{0, 1}`` masks at the maps' size.

    Returns:
        ``(N,)`` tensor of the maps' dtype.

    Example::

        >>> maps = torch.tensor([[[1.0, 3.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
        >>> masks = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[1.0, 0.0], [0.0, 0.0]]])
        >>> energy_in_mask(maps, masks)  # 1 / (1 + 3); the zero map scores 0
        tensor([0.2500, 0.0000])
    """
    check_maps(maps)
    return _energy(maps, _as_bool_mask(maps, masks)).to(maps.dtype)


def energy_in_nuisance(maps: Tensor, nuisance_masks: Tensor) -> Tensor:
    """``energy_in_mask`` on a nuisance mask: the share of each map's mass on the spurious cue.

    Example::

        >>> maps = torch.tensor([[[0.0, 0.0], [0.0, 1.0]]])
        >>> energy_in_nuisance(maps, torch.tensor([[[False, False], [False, True]]]))
        tensor([1.])
    """
    check_maps(maps)
    return _energy(maps, _as_bool_mask(maps, nuisance_masks, "nuisance_masks")).to(maps.dtype)


def energy_ratio(maps: Tensor, masks: Tensor) -> Tensor:
    """Energy in the mask divided by the mask's area fraction, ``(N,)`` in ``[0, H * W / |M|]``.

    ``ratio = (sum(L * M) / sum(L)) / (|M| / (H * W))``: 1 for a uniform map (chance level),
    above 1 when the map favours the mask. An empty mask (or a zero map) gives 0; callers should
    leave images with an empty mask out of averages. Used for both ``energy_in_mask_ratio``
    (object mask) and ``energy_in_nuisance_ratio`` (nuisance mask).

    Args:
        maps: ``(N, H, W)`` non-negative maps.
        masks: ``(N, H, W)`` bool or ``{0, 1}`` masks at the maps' size.

    Example::

        >>> maps = torch.tensor([[[1.0, 3.0], [0.0, 0.0]], [[0.7, 0.7], [0.7, 0.7]]])
        >>> masks = torch.tensor([[[False, True], [False, False]], [[True, True], [False, False]]])
        >>> energy_ratio(maps, masks)  # (3/4) / (1/4); uniform map: (1/2) / (2/4)
        tensor([3., 1.])
    """
    check_maps(maps)
    return _ratio(maps, _as_bool_mask(maps, masks)).to(maps.dtype)


def pointing_game(maps: Tensor, masks: Tensor, tolerance: int = 0) -> Tensor:
    """1.0 where the map's maximum lies inside the mask, else 0.0; ``(N,)``.

    Tie rule: a hit when any pixel attaining the maximum is inside the (dilated) mask, i.e.
    ``max(L[M]) == max(L)``. A constant map (the zero map included) scores 0: it has no
    preferred location, and counting its ties would make "look everywhere" a hit. An empty mask
    scores 0.

    Args:
        maps: ``(N, H, W)`` maps.
        masks: ``(N, H, W)`` bool or ``{0, 1}`` masks at the maps' size.
        tolerance: Dilate each mask by this many pixels (Chebyshev distance) before the test; 0 (the
            default) uses the mask as it is.

    Example::

        >>> maps = torch.tensor([[[0.2, 0.9], [0.9, 0.1]], [[0.5, 0.5], [0.5, 0.5]]])
        >>> masks = torch.tensor([[[False, False], [True, False]], [[True, False], [False, False]]])
        >>> pointing_game(maps, masks)  # tie at 0.9, one of the maxima is in the mask; constant map
        tensor([1., 0.])
        >>> pointing_game(torch.tensor([[[0.0, 0.0, 1.0]]]), torch.tensor([[[True, False, False]]]), tolerance=2)
        tensor([1.])
    """
    check_maps(maps)
    bool_masks = _as_bool_mask(maps, masks)
    if not isinstance(tolerance, int) or isinstance(tolerance, bool) or tolerance < 0:
        raise ValueError(f"tolerance must be an int >= 0 (pixels), got {tolerance!r}")
    if tolerance > 0 and bool_masks.numel():
        kernel = 2 * tolerance + 1
        dilated = F.max_pool2d(bool_masks.unsqueeze(1).float(), kernel_size=kernel, stride=1, padding=tolerance)
        bool_masks = dilated.squeeze(1) > 0
    flat = maps.flatten(1)
    if flat.shape[1] == 0:
        return torch.zeros(maps.shape[0], dtype=maps.dtype, device=maps.device)
    peak = flat.amax(dim=1)
    nonconstant = peak > flat.amin(dim=1)
    inside_peak = flat.masked_fill(~bool_masks.flatten(1), float("-inf")).amax(dim=1)
    return (nonconstant & (inside_peak == peak)).to(maps.dtype)


def localization_scores(maps: Tensor, masks: Optional[Tensor] = None, nuisance: Optional[Tensor] = None) -> Dict[str, Tensor]:
    """All localization metrics per image, as fractions (ratios are multiples of chance).

    Args:
        maps: ``(N, H, W)`` non-negative maps (e.g. min-max normalised CAMs in ``[0, 1]``).
        masks: ``(N, H, W)`` object masks, or None.
        nuisance: ``(N, H, W)`` nuisance-cue masks, or None.

    Returns:
        Dict of ``(N,)`` tensors, in the order of ``LOCALIZATION_METRICS``:
        ``energy_in_mask``, ``pointing_game``, ``energy_in_mask_ratio`` when ``masks`` is given and
        ``energy_in_nuisance``, ``energy_in_nuisance_ratio`` when ``nuisance`` is given.

    Example::

        >>> maps = torch.tensor([[[0.0, 1.0], [1.0, 2.0]]])
        >>> obj = torch.tensor([[[False, False], [False, True]]])
        >>> cue = torch.tensor([[[False, True], [False, False]]])
        >>> for name, value in localization_scores(maps, obj, cue).items():
        ...     print(name, round(float(value[0]), 4))
        energy_in_mask 0.5
        pointing_game 1.0
        energy_in_mask_ratio 2.0
        energy_in_nuisance 0.25
        energy_in_nuisance_ratio 1.0
    """
    check_maps(maps)
    scores: Dict[str, Tensor] = {}
    if masks is not None:
        object_masks = _as_bool_mask(maps, masks)
        scores["energy_in_mask"] = _energy(maps, object_masks).to(maps.dtype)
        scores["pointing_game"] = pointing_game(maps, object_masks)
        scores["energy_in_mask_ratio"] = _ratio(maps, object_masks).to(maps.dtype)
    if nuisance is not None:
        cue_masks = _as_bool_mask(maps, nuisance, "nuisance")
        scores["energy_in_nuisance"] = _energy(maps, cue_masks).to(maps.dtype)
        scores["energy_in_nuisance_ratio"] = _ratio(maps, cue_masks).to(maps.dtype)
    return scores


def localization_summary(scores: Dict[str, Tensor], masks: Optional[Tensor] = None, nuisance: Optional[Tensor] = None) -> Dict[str, float]:
    """Mean of each per-image score over the images whose relevant mask is not empty.

    Object metrics are averaged over the images with a non-empty ``masks[i]``, nuisance metrics
    over the images with a non-empty ``nuisance[i]`` (e.g. only the images that show the cue).
    A metric with no such image is left out of the result (never NaN). When a mask set is not
    given, its metrics are averaged over all images.

    Args:
        scores: Output of ``localization_scores`` (other keys are averaged over all images).
        masks: The ``(N, H, W)`` object masks the scores were computed with, or None.
        nuisance: The ``(N, H, W)`` nuisance masks, or None.

    Returns:
        ``{metric: mean}`` as Python floats (fractions; ratios in multiples of chance).

    Example::

        >>> maps = torch.ones(2, 2, 2)
        >>> cue = torch.tensor([[[True, False], [False, False]], [[False, False], [False, False]]])
        >>> localization_summary(localization_scores(maps, nuisance=cue), nuisance=cue)  # image 1 has no cue
        {'energy_in_nuisance': 0.25, 'energy_in_nuisance_ratio': 1.0}
    """
    selections: Dict[str, Optional[Tensor]] = {}
    for name, given in (("masks", masks), ("nuisance", nuisance)):
        if given is None:
            selections[name] = None
            continue
        if not isinstance(given, Tensor) or given.dim() != 3:
            raise ValueError(f"{name} must be an (N, H, W) tensor, got {getattr(given, 'shape', type(given).__name__)}")
        selections[name] = given.flatten(1).ne(0).any(dim=1)
    summary: Dict[str, float] = {}
    for key, values in scores.items():
        if not isinstance(values, Tensor) or values.dim() != 1:
            raise ValueError(f"scores[{key!r}] must be an (N,) tensor, got {getattr(values, 'shape', type(values).__name__)}")
        keep = selections["masks"] if key in _MASK_METRICS else selections["nuisance"] if key in _NUISANCE_METRICS else None
        if keep is not None:
            if keep.shape[0] != values.shape[0]:
                raise ValueError(f"scores[{key!r}] has {values.shape[0]} images but the masks have {keep.shape[0]}")
            values = values[keep.to(values.device)]
        if values.numel():
            summary[key] = float(values.double().mean())
    return summary
