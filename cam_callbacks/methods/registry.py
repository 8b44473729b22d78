"""CAM methods as pure functions, registered by name.

Every method is a small function of tensors captured at the target layer. It returns the
*raw* map at feature resolution ``(N, h, w)``; upsampling and normalisation happen in
:func:`cam_callbacks.utils.maps.upsample_and_normalize`, so the maths here can be tested alone.

The inputs a method may ask for (by naming them in ``needs``):

- ``activations``: ``(N, K, h, w)``, the target layer's output.
- ``gradients``: ``(N, K, h, w)``, d(target logit) / d(activations).
- ``class_weights``: ``(N, K)``, the row of the final linear layer for each image's target
  class (CAM only).
- ``images``: ``(N, C, H, W)``, the input batch as the model receives it.
- ``logits``: ``(N, classes)`` logits of the unmodified images; ``targets``: ``(N,)`` the explained classes.
- ``model_scorer``: a :class:`~cam_callbacks.engine.scorers.ModelScorer`, ``(count, build) -> (count, classes)``
  logits of the whole model on rows ``build(start, stop)`` produced chunk by chunk (Score-CAM).
- ``tail_scorer``: a :class:`~cam_callbacks.engine.scorers.TailScorer`, ``(copies, build) -> (N, copies, classes)``
  logits of the network after the target layer on modified feature maps ``build(start, stop)`` of
  shape ``(N, stop - start, K, h, w)`` (Ablation-CAM, Recipro-CAM).
- ``probability``: ``"softmax"`` or ``"sigmoid"`` (multi-label models), how logits become class
  probabilities (:func:`cam_callbacks.utils.targets.probabilities`).
- ``input_gradients`` / ``guided_gradients``: ``(N, C, H, W)``, d(target logit) / d(images), plain or
  through guided-backpropagation ReLUs. Methods built on them return maps at input resolution.

A method may also take keyword *options* with defaults (``options={"gaussian": False}``), which
callers set with ``method_options``.

Adding a method is one function plus the :func:`register_method` decorator::

    @register_method("mycam", needs=("activations", "gradients"), summary="...")
    def mycam(activations, gradients):
        return torch.relu((gradients.amax((2, 3), keepdim=True) * activations).sum(1))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from cam_callbacks.utils.maps import upsample_and_normalize
from cam_callbacks.utils.targets import probabilities

__all__ = [
    "CAMMethod",
    "available_methods",
    "get_method",
    "register_method",
    "cam",
    "gradcam",
    "gradcampp",
    "xgradcam",
    "hirescam",
    "layercam",
    "eigencam",
    "scorecam",
    "ablationcam",
    "reciprocam",
    "saliency",
    "guidedbackprop",
    "guidedgradcam",
    "position_masks",
]

KNOWN_INPUTS = (
    "activations", "gradients", "class_weights", "images", "logits", "targets",
    "model_scorer", "tail_scorer", "input_gradients", "guided_gradients", "probability",
)  # fmt: skip
#: Inputs that come from the target layer: a method needing none of them ignores ``target_layer``.
LAYER_INPUTS = ("activations", "gradients", "class_weights", "tail_scorer")


@dataclass(frozen=True)
class CAMMethod:
    """A registered CAM method.

    Attributes:
        name: The registry name (what ``method=`` accepts).
        fn: Pure function returning the raw ``(N, h, w)`` map.
        needs: Names of the captured tensors ``fn`` takes as keyword arguments.
        summary: One line for documentation and error messages.
        options: Keyword options of ``fn`` and their defaults.
    """

    name: str
    fn: Callable[..., Tensor]
    needs: Tuple[str, ...]
    summary: str
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def needs_gradients(self) -> bool:
        return "gradients" in self.needs

    @property
    def uses_layer(self) -> bool:
        """Whether the map depends on the target layer (False for saliency and guided backprop)."""
        return any(n in LAYER_INPUTS for n in self.needs)

    def resolve_options(self, given: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
        """The defaults updated with ``given``; unknown names raise, listing the valid ones."""
        given = dict(given or {})
        unknown = sorted(set(given) - set(self.options))
        if unknown:
            valid = sorted(self.options) or "none"
            raise ValueError(f"method {self.name!r} has no option(s) {unknown}; its options are {valid}")
        for key, value in given.items():
            default = self.options[key]
            if isinstance(default, bool) and not isinstance(value, bool):
                raise ValueError(f"method {self.name!r} option {key!r} must be True or False, got {value!r}")
        return {**self.options, **given}


_REGISTRY: Dict[str, CAMMethod] = {}


def register_method(
    name: str, *, needs: Tuple[str, ...], summary: str = "", options: Optional[Mapping[str, Any]] = None
) -> Callable[[Callable[..., Tensor]], Callable[..., Tensor]]:
    """Decorator registering ``fn`` as CAM method ``name``.

    Args:
        name: Registry name, lower case.
        needs: Which captured tensors the function takes (see module docstring).
        summary: One-line description.
        options: Keyword options of ``fn`` with their defaults.

    Raises:
        ValueError: If the name is taken or ``needs`` names an unknown input.
    """
    unknown = [n for n in needs if n not in KNOWN_INPUTS]
    if unknown:
        raise ValueError(f"register_method: unknown needs {unknown}; valid inputs are {list(KNOWN_INPUTS)}")

    def decorator(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        if name in _REGISTRY:
            raise ValueError(f"register_method: a method named {name!r} is already registered")
        _REGISTRY[name] = CAMMethod(name=name, fn=fn, needs=tuple(needs), summary=summary, options=dict(options or {}))
        return fn

    return decorator


def available_methods() -> List[str]:
    """Names of all registered methods, in registration order.

    Example::

        >>> import cam_callbacks as cc
        >>> cc.available_methods()[:3]
        ['cam', 'gradcam', 'gradcampp']
    """
    return list(_REGISTRY)


def get_method(name: str) -> CAMMethod:
    """Look up a method by name.

    Raises:
        ValueError: For an unknown name; the message lists the valid names.
    """
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"method={name!r} is not a known CAM method; choose from {available_methods()}")
    return _REGISTRY[name]


def _weighted_sum(weights: Tensor, activations: Tensor) -> Tensor:
    """``sum_k weights[n, k] * activations[n, k]`` -> ``(N, h, w)``."""
    return torch.einsum("nk,nkhw->nhw", weights, activations)


@register_method("cam", needs=("activations", "class_weights"), summary="CAM: final linear weights (GAP+linear heads)")
def cam(activations: Tensor, class_weights: Tensor) -> Tensor:
    """CAM (Zhou et al. 2016): ``ReLU(sum_k w_k^c A_k)`` with ``w^c`` the linear layer row of class c."""
    return torch.relu(_weighted_sum(class_weights, activations))


@register_method("gradcam", needs=("activations", "gradients"), summary="Grad-CAM: spatially averaged gradients")
def gradcam(activations: Tensor, gradients: Tensor) -> Tensor:
    """Grad-CAM (Selvaraju et al. 2017): ``ReLU(sum_k mean_ij(g_kij) A_k)``."""
    return torch.relu(_weighted_sum(gradients.mean(dim=(2, 3)), activations))


@register_method("gradcampp", needs=("activations", "gradients"), summary="Grad-CAM++ (paper closed form)")
def gradcampp(activations: Tensor, gradients: Tensor) -> Tensor:
    """Grad-CAM++ (Chattopadhay et al. 2018), closed form under the exponential-score assumption.

    ``alpha_kij = g^2 / (2 g^2 + sum_ab(A_kab) g^3)`` (0 where ``g == 0`` or the denominator is 0),
    ``w_k = sum_ij alpha_kij relu(g_kij)``, map ``ReLU(sum_k w_k A_k)``.
    """
    g2 = gradients.pow(2)
    g3 = g2 * gradients
    activation_sums = activations.sum(dim=(2, 3), keepdim=True)
    denominator = 2.0 * g2 + activation_sums * g3
    safe = denominator != 0
    alpha = torch.where(safe, g2 / torch.where(safe, denominator, torch.ones_like(denominator)), torch.zeros_like(g2))
    weights = (alpha * torch.relu(gradients)).sum(dim=(2, 3))
    return torch.relu(_weighted_sum(weights, activations))


@register_method("xgradcam", needs=("activations", "gradients"), summary="XGrad-CAM: activation-weighted gradients")
def xgradcam(activations: Tensor, gradients: Tensor) -> Tensor:
    """XGrad-CAM (Fu et al. 2020): ``w_k = sum_ij (A_kij / sum_ab A_kab) g_kij`` (0 if the sum is 0)."""
    activation_sums = activations.sum(dim=(2, 3))
    weighted = (gradients * activations).sum(dim=(2, 3))
    nonzero = activation_sums != 0
    weights = torch.where(nonzero, weighted / torch.where(nonzero, activation_sums, torch.ones_like(activation_sums)), torch.zeros_like(weighted))
    return torch.relu(_weighted_sum(weights, activations))


@register_method("hirescam", needs=("activations", "gradients"), summary="HiResCAM: elementwise gradient x activation")
def hirescam(activations: Tensor, gradients: Tensor) -> Tensor:
    """HiResCAM (Draelos & Carin 2020): ``ReLU(sum_k g_k * A_k)`` (elementwise)."""
    return torch.relu((gradients * activations).sum(dim=1))


@register_method("layercam", needs=("activations", "gradients"), summary="LayerCAM: positive gradients as pixel weights")
def layercam(activations: Tensor, gradients: Tensor) -> Tensor:
    """LayerCAM (Jiang et al. 2021): ``ReLU(sum_k relu(g_k) * A_k)``."""
    return torch.relu((torch.relu(gradients) * activations).sum(dim=1))


@register_method("eigencam", needs=("activations",), summary="Eigen-CAM: first principal component of the activations")
def eigencam(activations: Tensor) -> Tensor:
    """Eigen-CAM (Muhammad & Yeasin 2020): projection on the first principal component, ReLU.

    Per image, the activations are read as ``h*w`` samples of ``K`` channels, centred per channel,
    and projected on their first right-singular vector. The sign of a principal component is
    arbitrary, so it is fixed to make the map correlate positively with the channel-mean map
    ``mean_k A_k`` (where that correlation is below 1e-6 in magnitude, e.g. after a zero-bias
    LayerNorm, the value of largest magnitude is made positive); then ReLU (as pytorch-grad-cam does). Class-agnostic: no gradients, no target.
    Batched SVD of ``(N, h*w, K)`` matrices, no per-image loop.
    """
    n, k, h, w = activations.shape
    samples = activations.reshape(n, k, h * w).transpose(1, 2).double()  # (N, hw, K)
    centred = samples - samples.mean(dim=1, keepdim=True)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    projection = (centred @ vh[:, 0, :].unsqueeze(-1)).squeeze(-1)  # (N, hw)
    channel_mean = samples.mean(dim=2)
    p_centred = projection - projection.mean(1, keepdim=True)
    m_centred = channel_mean - channel_mean.mean(1, keepdim=True)
    correlation = (p_centred * m_centred).sum(1) / (p_centred.norm(dim=1) * m_centred.norm(dim=1)).clamp_min(1e-300)
    # Where the channel mean carries no sign information (|correlation| < 1e-6, e.g. after a LayerNorm
    # with zero bias, whose channel mean is 0 up to rounding), the largest-magnitude value is made positive.
    extreme = projection.gather(1, projection.abs().argmax(dim=1, keepdim=True)).squeeze(1)
    reference = torch.where(correlation.abs() < 1e-6, extreme, correlation)
    sign = torch.where(reference < 0, -1.0, 1.0).to(projection.dtype).unsqueeze(1)
    return torch.relu(sign * projection).reshape(n, h, w).to(activations.dtype)


# --- perturbation methods: scores of modified inputs or feature maps ----------------------------------


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
    normalised = (flat - low) / torch.where(span > 0, span, torch.ones_like(span))
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
    return torch.relu(_weighted_sum(weights, activations))


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
    weights = torch.where(base != 0, drop / torch.where(base != 0, base, torch.ones_like(base)), drop)
    return torch.relu(_weighted_sum(weights.to(activations.dtype), activations))


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


# --- gradients at the input ---------------------------------------------------------------------------


def _channel_max_abs(gradients: Tensor) -> Tensor:
    return gradients.abs().amax(dim=1)


@register_method("saliency", needs=("input_gradients",), summary="Saliency (Simonyan et al.): max over channels of |d logit / d input|")
def saliency(input_gradients: Tensor) -> Tensor:
    """Image-specific saliency (Simonyan et al. 2014): ``M_ij = max_c |d y_c / d x_cij|``, at input resolution."""
    return _channel_max_abs(input_gradients)


@register_method("guidedbackprop", needs=("guided_gradients",), summary="Guided backpropagation, max over channels of |gradient|")
def guidedbackprop(guided_gradients: Tensor) -> Tensor:
    """Guided backpropagation (Springenberg et al. 2015) reduced like saliency: ``max_c |g_cij|``.

    ``g`` is the input gradient with every ReLU passing gradient only where its input and the
    incoming gradient are positive (see :func:`cam_callbacks.capture.guided.guided_relus`).
    """
    return _channel_max_abs(guided_gradients)


@register_method(
    "guidedgradcam", needs=("activations", "gradients", "guided_gradients"), summary="Guided Grad-CAM: Grad-CAM x guided backprop"
)
def guidedgradcam(activations: Tensor, gradients: Tensor, guided_gradients: Tensor) -> Tensor:
    """Guided Grad-CAM (Selvaraju et al. 2017): Grad-CAM upsampled to the input (bilinear) times guided backprop.

    Per channel ``c`` the product is ``cam * g_c``; reduced like :func:`guidedbackprop`, that is
    ``cam * max_c |g_c|`` (``cam >= 0``).
    """
    size = (guided_gradients.shape[-2], guided_gradients.shape[-1])
    cam_map = gradcam(activations, gradients).float().unsqueeze(1)
    upsampled = F.interpolate(cam_map, size=size, mode="bilinear", align_corners=False).squeeze(1)
    return upsampled * _channel_max_abs(guided_gradients).float()
