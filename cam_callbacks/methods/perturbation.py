"""Perturbation CAMs: channel weights or map values from the scores of modified inputs or feature maps.

Score-CAM runs the whole model on activation-masked images; Ablation-CAM and Recipro-CAM run only
the network's tail (:mod:`cam_callbacks.capture.tail`) on modified copies of the target layer's
output. Each function returns the raw ``(N, h, w)`` map (see :mod:`cam_callbacks.methods.registry`).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from cam_callbacks.methods.common import weighted_sum
from cam_callbacks.methods.registry import register_method
from cam_callbacks.utils.maps import upsample_and_normalize
from cam_callbacks.utils.numeric import safe_divide
from cam_callbacks.utils.targets import probabilities

__all__ = ["scorecam", "ablationcam", "reciprocam", "position_masks", "GAUSSIAN_KERNEL"]


@register_method(
    "scorecam", needs=("activations", "images", "targets", "model_scorer"), summary="Score-CAM: logits of activation-masked inputs"
)
def scorecam(activations: Tensor, images: Tensor, targets: Tensor, model_scorer: Callable[..., Tensor]) -> Tensor:
    """Score-CAM (Wang et al. 2020): ``ReLU(sum_k w_k A_k)``, ``w = softmax_k(y_c(X * M_k))``.

    ``M_k`` is channel ``k`` upsampled to the input size (bilinear, ``align_corners=False``) and
    min-max normalised; ``y_c`` the target logit. Work whose result is known is skipped: upsampling
    is linear and min-max ignores scale and offset, so channels of one image whose min-max normalised
    maps are equal (at feature resolution) have the same mask, and only one masked input per distinct
    mask is run; a constant channel's mask is all zeros (the convention of
    :func:`~cam_callbacks.utils.maps.minmax_normalize`), and the all-zero input is scored once for all
    images. The masked inputs are built chunk by chunk in memory-bounded passes.
    """
    n, k, h, w = activations.shape
    size = (images.shape[-2], images.shape[-1])
    flat = activations.flatten(2).float()
    low, high = flat.amin(2, keepdim=True), flat.amax(2, keepdim=True)
    span = high - low
    varying = (span > 0).squeeze(2)
    normalised = safe_divide(flat - low, span, require_positive=True)  # rows of constant channels are not used
    scores = torch.empty(n, k, dtype=torch.float32, device=activations.device)
    if not bool(varying.all()):
        blank = model_scorer(1, lambda start, stop: torch.zeros_like(images[:1]))  # (1, classes)
        scores[:] = blank[0, targets].float()[:, None]
    pairs = varying.nonzero()  # (M, 2): image, channel
    if pairs.shape[0]:
        keys = torch.cat([pairs[:, :1].float(), normalised[pairs[:, 0], pairs[:, 1]]], dim=1)  # image index + normalised map
        distinct, inverse = torch.unique(keys, dim=0, return_inverse=True)
        image_of = distinct[:, 0].long()
        masks_low = distinct[:, 1:].reshape(-1, h, w)

        def masked_images(start: int, stop: int) -> Tensor:
            masks = upsample_and_normalize(masks_low[start:stop], size)
            return images[image_of[start:stop]] * masks.unsqueeze(1).to(images.dtype)

        logits = model_scorer(distinct.shape[0], masked_images)
        distinct_scores = logits.gather(1, targets[image_of, None]).squeeze(1).float()
        scores[pairs[:, 0], pairs[:, 1]] = distinct_scores[inverse]
    weights = torch.softmax(scores, dim=1).to(activations.dtype)
    return torch.relu(weighted_sum(weights, activations))


@register_method(
    "ablationcam", needs=("activations", "logits", "targets", "tail_scorer"), summary="Ablation-CAM: score drop when a channel is zeroed"
)
def ablationcam(activations: Tensor, logits: Tensor, targets: Tensor, tail_scorer: Callable[..., Tensor]) -> Tensor:
    """Ablation-CAM (Ramaswamy 2020): ``ReLU(sum_k w_k A_k)``, ``w_k = (S_c - S_c^k) / S_c``.

    ``S_c`` is the target logit, ``S_c^k`` the same with channel ``k`` of the target layer set to 0,
    computed by the network's tail only. Channels that are 0 in every image of the batch are not
    run (ablating them changes nothing: ``w_k = 0``). Where ``S_c == 0`` the division is skipped
    (``w_k = S_c - S_c^k``): the scale of an image's weights does not change its normalised map.
    """
    n, k = activations.shape[:2]
    base = logits.gather(1, targets[:, None]).float()  # (n, 1)
    ablated = base.expand(n, k).clone()
    channels = (activations.flatten(2).abs().amax(2).amax(0) > 0).nonzero().squeeze(1)

    def ablated_maps(start: int, stop: int) -> Tensor:
        chosen = channels[start:stop]
        keep = torch.ones(chosen.shape[0], k, dtype=activations.dtype, device=activations.device)
        keep[torch.arange(chosen.shape[0], device=keep.device), chosen] = 0
        return activations.unsqueeze(1) * keep[None, :, :, None, None]

    if channels.shape[0]:
        out = tail_scorer(channels.shape[0], ablated_maps)  # (n, m, classes)
        ablated[:, channels] = out.gather(2, targets[:, None, None].expand(n, channels.shape[0], 1)).squeeze(2).float()
    drop = base - ablated
    weights = safe_divide(drop, base, fallback=drop)
    return torch.relu(weighted_sum(weights.to(activations.dtype), activations))


#: Recipro-CAM's 3x3 spreading kernel.
GAUSSIAN_KERNEL = ((1 / 16, 2 / 16, 1 / 16), (2 / 16, 4 / 16, 2 / 16), (1 / 16, 2 / 16, 1 / 16))


def position_masks(height: int, width: int, gaussian: bool = False, device: Optional[torch.device] = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """``(h*w, h, w)`` spatial masks of Recipro-CAM, position ``p = i*w + j`` in row-major order.

    One-hot at ``(i, j)``, or with ``gaussian=True`` the kernel ``[[1,2,1],[2,4,2],[1,2,1]]/16``
    centred there (cut at the borders, not renormalised).

    Example::

        >>> position_masks(2, 2, gaussian=True)[0]
        tensor([[0.2500, 0.1250],
                [0.1250, 0.0625]])
    """
    masks = torch.eye(height * width, device=device, dtype=dtype).reshape(height * width, 1, height, width)
    if gaussian:
        kernel = torch.tensor(GAUSSIAN_KERNEL, device=device, dtype=dtype).reshape(1, 1, 3, 3)
        masks = F.conv2d(masks, kernel, padding=1)
    return masks.squeeze(1)


@register_method(
    "reciprocam",
    needs=("activations", "targets", "tail_scorer", "probability"),
    summary="Recipro-CAM: target probability of the tail on one feature position at a time",
    options={"gaussian": False},
)
def reciprocam(activations: Tensor, targets: Tensor, tail_scorer: Callable[..., Tensor], probability: str = "softmax", gaussian: bool = False) -> Tensor:
    """Recipro-CAM (Byun & Lee 2022): ``L(i, j) = softmax(tail(A * M_ij))_c``.

    For every position ``(i, j)`` of the feature map, a copy of the activations that keeps only that
    position (``M_ij`` one-hot, or the 3x3 Gaussian spread with ``gaussian=True``, see
    :func:`position_masks`) is run through the network's tail; the softmax probability of the target
    class (its sigmoid for multi-label models, ``probability="sigmoid"``) is the map's value there. All positions of all images go through the tail in
    memory-bounded batches.
    """
    n, _, h, w = activations.shape
    masks = position_masks(h, w, bool(gaussian), activations.device, activations.dtype)

    def masked_maps(start: int, stop: int) -> Tensor:
        return activations.unsqueeze(1) * masks[None, start:stop, None]

    logits = tail_scorer(h * w, masked_maps)  # (n, h*w, classes)
    probs = probabilities(logits, probability).gather(2, targets[:, None, None].expand(n, h * w, 1))
    return probs.reshape(n, h, w)


