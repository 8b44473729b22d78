"""Faithfulness metrics as pure functions with per-image outputs.

Definitions (Poppi et al. 2021; Chattopadhay et al. 2018), all per image ``i``:

- ``Y_i``: softmax probability of the target class on the image; ``O_i``: the same on the
  explanation image ``x_i * L_i``.
- Average Drop ``AD_i = max(0, Y_i - O_i) / Y_i``; Increase in Confidence ``IC_i = 1[O_i > Y_i]``.
- Coherency ``Coh_i = (pearson(L_i, L'_i) + 1) / 2`` with ``L'_i`` the map of the explanation
  image (0 if either map is constant).
- Complexity ``Com_i = mean(L_i)``.
- ``ADCC_i = 3 / (1/Coh_i + 1/(1 - Com_i) + 1/(1 - AD_i))``, 0 when any of the three terms is 0.
- ARCC ("How to Evaluate and Refine your CAM", arXiv 2605.14641, as pytorch-grad-cam 1.5.7's ``ARCC``):
  ``ARCC_i = 3 / (1/Coh_i + 1/(1 - Com_i) + 1/R_i)``, ``R_i = clip(2 * ROAD_i, 0, 1)`` with ``ROAD_i`` ROAD-combined
  (``road``, ``(LeRF - MoRF) / 2`` of the target probability, in
  [-0.5, 0.5]) at the percentiles 20, 40, 60, 80; 0 when any of the three terms is 0. ADCC with Average Drop
  replaced by ROAD, which removes pixels and imputes them from their neighbours instead of multiplying the image
  by the map. pytorch-grad-cam's docstring says "geometric mean"; its code, and this function, compute the
  harmonic mean.

Every function here returns fractions in [0, 1] per image (shape ``(N,)``), as does
``cam_callbacks.faithfulness`` (the literature often prints them in percent: 81.38 for 0.8138). ARCC needs ROAD's
perturbation passes, so ``cam_callbacks.perturbation_scores`` computes it (``metrics=["arcc"]``), not
``cam_callbacks.faithfulness``.
"""

from __future__ import annotations

from typing import Dict

import torch
from torch import Tensor

from cam_callbacks.utils.numeric import pearson, safe_divide

#: Names of the faithfulness metrics, in reporting order.
FAITHFULNESS_METRICS = ("average_drop", "increase_in_confidence", "coherency", "complexity", "adcc")
#: ROAD's percentiles in ARCC (pytorch-grad-cam's ``ARCC(road_percentiles=[20, 40, 60, 80])``).
ARCC_ROAD_PERCENTILES = (20, 40, 60, 80)


def _check_same_length(*tensors: Tensor) -> None:
    lengths = {t.shape[0] for t in tensors}
    if len(lengths) != 1:
        raise ValueError(f"per-image inputs must have the same length, got {sorted(lengths)}")


def average_drop(probs: Tensor, probs_on_explanation: Tensor) -> Tensor:
    """``max(0, Y - O) / Y`` per image (0 where ``Y == 0``)."""
    _check_same_length(probs, probs_on_explanation)
    drop = torch.clamp(probs - probs_on_explanation, min=0)
    return safe_divide(drop, probs, require_positive=True)


def increase_in_confidence(probs: Tensor, probs_on_explanation: Tensor) -> Tensor:
    """``1[O > Y]`` per image, as float."""
    _check_same_length(probs, probs_on_explanation)
    return (probs_on_explanation > probs).to(probs.dtype)


def coherency(maps: Tensor, maps_on_explanation: Tensor) -> Tensor:
    """``(pearson(L, L') + 1) / 2`` per image over all pixels; 0 where either map is constant."""
    if maps.shape != maps_on_explanation.shape:
        raise ValueError(f"maps {tuple(maps.shape)} and maps_on_explanation {tuple(maps_on_explanation.shape)} differ in shape")
    # an undefined correlation (a constant map) counts as -1, so its coherency is 0
    r = pearson(maps.flatten(1).double(), maps_on_explanation.flatten(1).double(), dim=1, fallback=-1.0)
    return ((r + 1.0) / 2.0).to(maps.dtype)


def complexity(maps: Tensor) -> Tensor:
    """Mean of the map per image (L1 norm over the number of pixels, maps in [0, 1])."""
    return maps.flatten(1).abs().mean(dim=1)


def adcc(average_drop: Tensor, coherency: Tensor, complexity: Tensor) -> Tensor:
    """Harmonic mean of ``Coh``, ``1 - Com`` and ``1 - AD``; 0 when any of them is 0."""
    _check_same_length(average_drop, coherency, complexity)
    return _harmonic_mean_of_three(torch.stack([coherency, 1.0 - complexity, 1.0 - average_drop]))


def _harmonic_mean_of_three(terms: Tensor) -> Tensor:
    """``3 / sum(1 / t)`` over the first dimension of ``(3, N)`` terms, 0 where any term is 0 (or below)."""
    defined = (terms > 0).all(dim=0)
    value = 3.0 / safe_divide(1.0, terms, fallback=1.0, require_positive=True).sum(dim=0)
    return torch.where(defined, value, torch.zeros_like(value))


def arcc(coherency: Tensor, complexity: Tensor, road: Tensor) -> Tensor:
    """Harmonic mean of ``Coh``, ``1 - Com`` and ``clip(2 * ROAD, 0, 1)``; 0 when any of them is 0.

    Args:
        coherency: ``(N,)`` Coherency in [0, 1].
        complexity: ``(N,)`` Complexity in [0, 1].
        road: ``(N,)`` ROAD-combined ``(LeRF - MoRF) / 2`` of the target probability (at
            ``ARCC_ROAD_PERCENTILES``), in [-0.5, 0.5].

    Returns:
        ``(N,)`` ARCC in [0, 1] (higher is better).

    Example::

        >>> arcc(torch.tensor([0.9, 0.9]), torch.tensor([0.25, 0.25]), torch.tensor([0.3, -0.1]))  # 3 / (1/.9 + 1/.75 + 1/.6)
        tensor([0.7297, 0.0000])
    """
    _check_same_length(coherency, complexity, road)
    rescaled = (2.0 * road).clamp(0.0, 1.0)
    return _harmonic_mean_of_three(torch.stack([coherency, 1.0 - complexity, rescaled.to(coherency.dtype)]))


def faithfulness_scores(maps: Tensor, maps_on_explanation: Tensor, probs: Tensor, probs_on_explanation: Tensor) -> Dict[str, Tensor]:
    """All faithfulness metrics per image, as fractions in [0, 1].

    Args:
        maps: ``(N, H, W)`` maps ``L`` in [0, 1].
        maps_on_explanation: ``(N, H, W)`` maps ``L'`` of the explanation images.
        probs: ``(N,)`` target-class probabilities ``Y`` on the images.
        probs_on_explanation: ``(N,)`` the same ``O`` on the explanation images.

    Returns:
        Dict with the keys of ``FAITHFULNESS_METRICS``, each an ``(N,)`` tensor.

    Example::

        >>> L = torch.tensor([[[0.0, 1.0], [0.5, 0.5]]])
        >>> s = faithfulness_scores(L, L, torch.tensor([0.8]), torch.tensor([0.6]))
        >>> round(float(s["average_drop"][0]), 4), float(s["coherency"][0]), float(s["complexity"][0])
        (0.25, 1.0, 0.5)
    """
    ad = average_drop(probs, probs_on_explanation)
    coh = coherency(maps, maps_on_explanation)
    com = complexity(maps)
    return {
        "average_drop": ad,
        "increase_in_confidence": increase_in_confidence(probs, probs_on_explanation),
        "coherency": coh,
        "complexity": com,
        "adcc": adcc(ad, coh.to(ad.dtype), com.to(ad.dtype)),
    }
