"""Perturbation CAMs: channel weights or map values from the scores of modified inputs or feature maps.

Score-CAM, SS-CAM and IS-CAM run the whole model on activation-masked images; Ablation-CAM and Recipro-CAM run only
the network's tail (``cam_callbacks.capture.tail``) on modified copies of the target layer's
output. Each function returns the raw ``(N, h, w)`` map (see ``cam_callbacks.methods.registry``).
"""

from __future__ import annotations

from typing import Any, Callable, List, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from cam_callbacks.methods.common import weighted_sum
from cam_callbacks.methods.registry import register_method
from cam_callbacks.utils.maps import upsample_and_normalize
from cam_callbacks.utils.noise import NoiseRows
from cam_callbacks.utils.numeric import safe_divide
from cam_callbacks.utils.targets import probabilities


def _check_samples(method: str, num_samples: object) -> int:
    if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 1:
        raise ValueError(f"{method}: num_samples must be a positive int, got {num_samples!r}")
    return num_samples


def _check_iscam(options: Mapping[str, Any]) -> None:
    _check_samples("iscam", options["num_samples"])


def _check_sscam(options: Mapping[str, Any]) -> None:
    _check_samples("sscam", options["num_samples"])
    std = options["std"]
    if isinstance(std, bool) or not isinstance(std, (int, float)) or not float(std) >= 0:
        raise ValueError(f"sscam: std must be a number >= 0, got {std!r}")
    if not isinstance(options["seed"], int) or isinstance(options["seed"], bool):
        raise ValueError(f"sscam: seed must be an int, got {options['seed']!r}")


def _score_distinct_masks(activations: Tensor, images: Tensor, targets: Tensor, model_scorer: Callable[..., Tensor], scales: Sequence[float]) -> Tensor:
    """``(N, K)`` target logits of ``images * s * M_k`` averaged over the scales ``s``, one masked input per distinct mask.

    ``M_k`` is channel ``k`` upsampled (bilinear, ``align_corners=False``) and min-max normalised. Upsampling is linear
    and min-max ignores scale and offset, so channels of one image whose min-max normalised maps are equal (at feature
    resolution) have the same mask and are scored once; a constant channel's mask is all zeros (the convention of
    ``minmax_normalize``), and the all-zero input is scored once for all images and
    scales. Rows are ordered scale-major: ``row = scale_index * D + mask_index``.
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
        count = distinct.shape[0]
        image_of = distinct[:, 0].long()
        masks_low = distinct[:, 1:].reshape(-1, h, w)
        factors = torch.tensor([float(s) for s in scales], dtype=images.dtype, device=images.device)

        def masked_images(start: int, stop: int) -> Tensor:
            rows = torch.arange(start, stop, device=masks_low.device)
            masks = upsample_and_normalize(masks_low[rows % count], size).to(images.dtype)
            if len(scales) > 1 or float(scales[0]) != 1.0:
                masks = masks * factors[rows // count, None, None]
            return images[image_of[rows % count]] * masks.unsqueeze(1)

        logits = model_scorer(count * len(scales), masked_images)  # (S * D, classes)
        picked = logits.gather(1, targets[image_of.repeat(len(scales)), None]).squeeze(1).float()
        distinct_scores = picked.reshape(len(scales), count).mean(0)
        scores[pairs[:, 0], pairs[:, 1]] = distinct_scores[inverse]
    return scores


@register_method("scorecam", needs=("activations", "images", "targets", "model_scorer"), summary="Score-CAM: logits of activation-masked inputs")
def scorecam(activations: Tensor, images: Tensor, targets: Tensor, model_scorer: Callable[..., Tensor]) -> Tensor:
    """Score-CAM (Wang et al. 2020): ``ReLU(sum_k w_k A_k)``, ``w = softmax_k(y_c(X * M_k))``.

    ``M_k`` is channel ``k`` upsampled to the input size (bilinear, ``align_corners=False``) and
    min-max normalised; ``y_c`` the target logit. Work whose result is known is skipped: upsampling
    is linear and min-max ignores scale and offset, so channels of one image whose min-max normalised
    maps are equal (at feature resolution) have the same mask, and only one masked input per distinct
    mask is run; a constant channel's mask is all zeros (the convention of
    ``minmax_normalize``), and the all-zero input is scored once for all
    images. The masked inputs are built chunk by chunk in memory-bounded passes.
    """
    scores = _score_distinct_masks(activations, images, targets, model_scorer, (1.0,))
    weights = torch.softmax(scores, dim=1).to(activations.dtype)
    return torch.relu(weighted_sum(weights, activations))


@register_method(
    "sscam",
    needs=("activations", "images", "targets", "model_scorer"),
    summary="SS-CAM: Score-CAM with Gaussian noise on the masks, scores averaged over samples",
    options={"num_samples": 35, "std": 2.0, "seed": 0},
    check_options=_check_sscam,
)
def sscam(
    activations: Tensor,
    images: Tensor,
    targets: Tensor,
    model_scorer: Callable[..., Tensor],
    num_samples: int = 35,
    std: float = 2.0,
    seed: int = 0,
) -> Tensor:
    """SS-CAM (Wang, Naidu et al. 2020, "SS-CAM: Smoothed Score-CAM for Sharper Visual Feature Localization"):
    ``ReLU(sum_k w_k A_k)``, ``w = softmax_k(1/S sum_s y_c(X * (M_k + delta_s)))``, ``delta_s ~ N(0, std^2)``.

    As torchcam 0.5.0's ``SSCAM`` (defaults ``num_samples=35``, ``std=2.0``): the noise is drawn per pixel at input
    resolution for every (sample, image, channel), added to the normalised mask ``M_k`` of ``scorecam``, and the
    image is multiplied by the noisy mask; ``y_c`` is the target logit. (torchcam also subtracts the logit of the
    unmodified image, a per-image constant that the softmax cancels.) ``S * N * K`` forward passes in all.

    The noise comes from a private ``torch.Generator`` on the images' device seeded with ``seed`` (the global RNG is
    untouched), drawn in the order sample, image, channel, row by row: on the CPU the same numbers as
    ``torch.manual_seed(seed)`` followed by torchcam's draws.
    """
    _check_sscam({"num_samples": num_samples, "std": std, "seed": seed})
    samples = int(num_samples)
    n, k = activations.shape[:2]
    size = (images.shape[-2], images.shape[-1])
    noise = NoiseRows(size, int(seed), images.device, images.dtype)
    per_sample = n * k
    channel_maps = activations.flatten(0, 1)  # (N*K, h, w), row = image * K + channel

    def noisy_images(start: int, stop: int) -> Tensor:
        rows = torch.arange(start, stop, device=images.device) % per_sample
        masks = upsample_and_normalize(channel_maps[rows], size).to(images.dtype)
        return images[rows // k] * (masks + float(std) * noise.take(stop - start)).unsqueeze(1)

    logits = model_scorer(samples * per_sample, noisy_images)  # (S * N * K, classes)
    picked = logits.gather(1, targets.repeat_interleave(k).repeat(samples)[:, None]).squeeze(1).float()
    scores = picked.reshape(samples, n, k).mean(0)
    weights = torch.softmax(scores, dim=1).to(activations.dtype)
    return torch.relu(weighted_sum(weights, activations))


def integration_scales(num_samples: int) -> List[float]:
    """IS-CAM's mask factors as the paper's Algorithm 1 and torchcam 0.5.0 apply them: ``c_i = sum_{j<=i} j/N``.

    Example::

        >>> integration_scales(4)
        [0.25, 0.75, 1.5, 2.5]
    """
    scales, total = [], 0.0
    for i in range(1, num_samples + 1):
        total += i / num_samples
        scales.append(total)
    return scales


@register_method(
    "iscam",
    needs=("activations", "images", "targets", "model_scorer"),
    summary="IS-CAM: Score-CAM with masks integrated over increasing factors",
    options={"num_samples": 10},
    check_options=_check_iscam,
)
def iscam(activations: Tensor, images: Tensor, targets: Tensor, model_scorer: Callable[..., Tensor], num_samples: int = 10) -> Tensor:
    """IS-CAM (Naidu et al. 2020, "IS-CAM: Integrated Score-CAM for axiomatic-based explanations"):
    ``ReLU(sum_k w_k A_k)``, ``w = softmax_k(1/N sum_i y_c(X * c_i M_k))``.

    ``M_k`` is the mask of ``scorecam`` and ``c_i`` (``integration_scales``) accumulates ``j/N`` as the
    paper's Algorithm 1 and torchcam 0.5.0's ``ISCAM`` do (``M <- M + (i/N) M_k`` before each score:
    ``c = 0.1, 0.3, 0.6, ..., 5.5`` for the default ``num_samples=10``), not the plain ``i/N`` of integrated gradients.
    Channels with equal masks are scored once per factor, constant channels by one blank-image pass.
    """
    scales = integration_scales(_check_samples("iscam", num_samples))
    scores = _score_distinct_masks(activations, images, targets, model_scorer, scales)
    weights = torch.softmax(scores, dim=1).to(activations.dtype)
    return torch.relu(weighted_sum(weights, activations))


@register_method("ablationcam", needs=("activations", "logits", "targets", "tail_scorer"), summary="Ablation-CAM: score drop when a channel is zeroed")
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
    ``position_masks``) is run through the network's tail; the softmax probability of the target
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
