"""The public ``explain`` / ``faithfulness`` functions (the engine is :mod:`cam_callbacks.engine.passes`).

One chunk of images costs one forward pass (the part before the target layer without autograd)
and, for gradient methods, one backward pass through the tail only; all requested methods share
them. Perturbation methods add batched passes of the model or its tail, input-gradient methods a
forward and backward pass to the input. Faithfulness adds one such round per method on the
explanation images.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from cam_callbacks.engine.passes import Explanation, ExplainOptions, compute_explanations, model_device
from cam_callbacks.capture.layers import LayerSpec, resolve_target_layer
from cam_callbacks.methods.registry import get_method
from cam_callbacks.metrics.faithfulness import FAITHFULNESS_METRICS, faithfulness_scores
from cam_callbacks.capture.layouts import ReshapeLike, as_token_grid
from cam_callbacks.utils.targets import TargetsLike, as_targets, first_out_of_range, multilabel_pairs, probabilities

__all__ = [
    "explain", "faithfulness", "Explanation", "ExplainOptions", "compute_explanations", "compute_faithfulness",
    "TargetsLike", "LayersLike", "first_out_of_range",
]  # fmt: skip

log = logging.getLogger("cam_callbacks")

#: What ``target_layer=`` accepts: one layer (name, module or ``"auto"``) or a list of layers to fuse.
LayersLike = Union[LayerSpec, Sequence[LayerSpec]]


def check_images(images: object) -> Tensor:
    """Validate an image batch: a floating ``(N, C, H, W)`` tensor with ``N >= 1``."""
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a torch.Tensor of shape (N, C, H, W), got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(f"images must have shape (N, C, H, W), got shape {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError("images is empty (N == 0)")
    if not images.is_floating_point():
        raise TypeError(f"images must be a floating tensor (normalised as the model expects), got dtype {images.dtype}")
    return images


def compute_faithfulness(
    model: nn.Module,
    images: Tensor,
    methods: Sequence[str],
    layer_name: Union[str, Sequence[str]],
    layer: Union[nn.Module, Sequence[nn.Module]],
    targets: Optional[Tensor] = None,
    batch_size: int = 32,
    options: Optional[ExplainOptions] = None,
) -> Tuple[Explanation, Dict[str, Dict[str, Tensor]]]:
    """Maps and per-image faithfulness fractions (in [0, 1]) of several methods.

    Returns:
        ``(explanation, scores)`` with ``scores[method][metric]`` an ``(N,)`` tensor.
    """
    explanation = compute_explanations(model, images, methods, layer_name, layer, targets, batch_size, options)
    kind = (options or ExplainOptions()).probability
    probs = probabilities(explanation.logits, kind).gather(1, explanation.targets[:, None]).squeeze(1)
    scores: Dict[str, Dict[str, Tensor]] = {}
    for name in methods:
        maps = explanation.maps[name]
        explanation_images = images.to(maps.device) * maps.unsqueeze(1).to(images.dtype)
        second = compute_explanations(model, explanation_images, [name], layer_name, layer, explanation.targets, batch_size, options)
        probs_on_explanation = probabilities(second.logits, kind).gather(1, explanation.targets[:, None]).squeeze(1)
        scores[name] = faithfulness_scores(maps, second.maps[name], probs, probs_on_explanation)
    return explanation, scores


def resolve_layers(model: nn.Module, target_layer: LayersLike, example: Tensor, reshape: ReshapeLike = None) -> Tuple[List[str], List[nn.Module]]:
    """Resolve one target layer or a list of them to ``(names, modules)``; ``"auto"`` is logged, refused with ``reshape``."""
    specs: List[LayerSpec] = list(target_layer) if isinstance(target_layer, (list, tuple)) else [target_layer]  # type: ignore[list-item]
    if not specs:
        raise ValueError("target_layer is an empty list; give a layer name, a module, 'auto' or a non-empty list of them")
    names: List[str] = []
    modules: List[nn.Module] = []
    for spec in specs:
        if isinstance(spec, str) and spec == "auto" and reshape is not None:
            raise ValueError(
                "target_layer='auto' looks for 4-D feature maps and cannot find a transformer layer; with reshape= name the "
                "layer, e.g. 'encoder.layers.encoder_layer_11.ln_1' for torchvision's vit_b_16"
            )
        name, module = resolve_target_layer(model, spec, example)
        if isinstance(spec, str) and spec == "auto":
            log.info("cam_callbacks: target_layer='auto' chose %r", name)
        if name in names:
            raise ValueError(f"target_layer lists {name!r} twice")
        names.append(name)
        modules.append(module)
    return names, modules


def make_options(
    method_options: Optional[Mapping[str, Mapping[str, Any]]] = None,
    reshape: ReshapeLike = None,
    tail: Optional[Callable[[Tensor], Tensor]] = None,
    smooth: Optional[str] = None,
    smooth_samples: int = 8,
    smooth_sigma: float = 0.15,
    smooth_scales: Sequence[float] = (0.9, 1.0, 1.1),
    seed: int = 0,
    perturbation_batch: Optional[int] = None,
    probability: str = "softmax",
) -> ExplainOptions:
    """Validated :class:`ExplainOptions` (``method_options`` keyed by method name)."""
    per_method = dict(method_options or {})
    for name, opts in per_method.items():
        get_method(name).resolve_options(opts)
    return ExplainOptions(
        method_options=per_method, reshape=as_token_grid(reshape), tail=tail, perturbation_batch=perturbation_batch,
        smooth=smooth, smooth_samples=smooth_samples, smooth_sigma=smooth_sigma, smooth_scales=tuple(smooth_scales), seed=seed,
        probability=probability,
    )  # fmt: skip


def expand_multilabel(images: Tensor, multi_hot: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """One row per positive label: ``(images[image_index], labels, image_index)`` for an ``(N, C)`` multi-hot tensor."""
    image_index, labels = multilabel_pairs(multi_hot)
    if image_index.numel() == 0:
        raise ValueError("the multi-hot targets have no positive label: there is nothing to explain")
    return images[image_index.to(images.device)], labels, image_index


def _with_probability(options: ExplainOptions, targets: Optional[Tensor], probability: Optional[str]) -> ExplainOptions:
    """``probability`` as given, else sigmoid for multi-hot targets and softmax otherwise."""
    if probability is None:
        probability = "sigmoid" if targets is not None and targets.dim() == 2 else "softmax"
    return replace(options, probability=probability)


def _prepare(
    model: nn.Module, images: Tensor, method: str, target_layer: LayersLike, targets: TargetsLike, batch_size: int, options: ExplainOptions
) -> Tuple[List[str], List[nn.Module], Optional[Tensor]]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_images(images)
    get_method(method)
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    device = model_device(model, images.device)
    if not get_method(method).uses_layer and isinstance(target_layer, str) and target_layer == "auto":
        # saliency and guided backprop need no layer: no search (it costs a forward pass and fails on models without one)
        return ["input"], [model], as_targets(targets, images.shape[0], device)
    with torch.inference_mode(False):
        example = images[:1].to(device).clone()
        names, modules = resolve_layers(model, target_layer, example, options.reshape)
    return names, modules, as_targets(targets, images.shape[0], device)


_OPTIONS_DOC = """        method_options: Options of ``method`` (e.g. ``{"gaussian": True}`` for ``"reciprocam"``);
            :func:`get_method` ``(name).options`` lists them with their defaults.
        reshape: ``"vit"`` or a :class:`~cam_callbacks.capture.layouts.TokenGrid` when the target layer outputs
            transformer tokens ``(N, 1 + h*w, C)``; None for ``(N, C, h, w)`` feature maps.
        tail: For Ablation-CAM and Recipro-CAM, your own ``activations -> logits`` callable for the part
            of the model after the target layer; by default it is derived with torch.fx (see
            :func:`~cam_callbacks.capture.tail.derive_tail`), falling back to re-running the model.
        smooth: None, ``"noise"`` (average over ``smooth_samples`` noisy copies, noise std ``smooth_sigma``
            times each image's value range) or ``"aug"`` (horizontal flips x ``smooth_scales``, maps
            mapped back and averaged); the average is min-max normalised.
        smooth_samples, smooth_sigma, smooth_scales: See ``smooth``.
        seed: Seed of the smoothing noise (a private generator; the global RNG is untouched).
        perturbation_batch: Rows per perturbation pass (Score-CAM, Ablation-CAM, Recipro-CAM); None
            chooses from the memory free on the model's device.
        probability: ``"softmax"`` or ``"sigmoid"``: how logits become the class probabilities used by
            Recipro-CAM and the faithfulness metrics; None means sigmoid for multi-hot ``targets``
            (multi-label models), softmax otherwise."""


def explain(
    model: nn.Module,
    images: Tensor,
    method: str = "gradcam",
    target_layer: LayersLike = "auto",
    targets: TargetsLike = None,
    batch_size: int = 32,
    *,
    method_options: Optional[Mapping[str, Any]] = None,
    reshape: ReshapeLike = None,
    tail: Optional[Callable[[Tensor], Tensor]] = None,
    smooth: Optional[str] = None,
    smooth_samples: int = 8,
    smooth_sigma: float = 0.15,
    smooth_scales: Sequence[float] = (0.9, 1.0, 1.1),
    seed: int = 0,
    perturbation_batch: Optional[int] = None,
    probability: Optional[str] = None,
) -> Tensor:
    """Class activation maps of ``images`` for ``model``.

    Args:
        model: A classifier returning ``(N, num_classes)`` logits.
        images: ``(N, C, H, W)`` float tensor, exactly as the model receives it (normalised).
        method: One of :func:`available_methods`.
        target_layer: Dotted module name, a module of ``model``, or ``"auto"`` (the last module
            with a 4-D output larger than 1x1; the choice is logged on the ``cam_callbacks`` logger);
            or a list of them, whose maps are fused LayerCAM-style (:func:`fuse_layer_maps`).
            Saliency and guided backprop do not use it.
        targets: None for the top-1 prediction, an int for one class for all images, or ``N`` class indices.
        batch_size: Images per forward/backward pass.
{options}

    Returns:
        ``(N, H, W)`` float32 maps in [0, 1] at the images' size, on the images' device; with multi-hot
        ``targets`` ``(N, C, H, W)``, one map per positive label (zeros for negative labels).

    The model is left as found: module modes, hooks, ``param.grad`` and ``requires_grad``. Works
    under ``torch.no_grad()`` and ``torch.inference_mode()``.

    Example::

        >>> import torchvision
        >>> net = torchvision.models.resnet18(num_classes=3)
        >>> maps = explain(net, torch.randn(2, 3, 64, 64), method="gradcam", target_layer="layer4")
        >>> maps.shape
        torch.Size([2, 64, 64])
        >>> explain(net, torch.randn(2, 3, 64, 64), method="reciprocam", target_layer="layer4",
        ...         method_options={"gaussian": True}).shape
        torch.Size([2, 64, 64])
    """
    options = make_options({method: method_options or {}}, reshape, tail, smooth, smooth_samples, smooth_sigma, smooth_scales, seed, perturbation_batch)
    names, modules, target_tensor = _prepare(model, images, method, target_layer, targets, batch_size, options)
    options = _with_probability(options, target_tensor, probability)
    if target_tensor is None or target_tensor.dim() == 1:
        result = compute_explanations(model, images, [method], names, modules, target_tensor, batch_size, options)
        return result.maps[method].to(images.device)
    expanded, labels, image_index = expand_multilabel(images, target_tensor)
    result = compute_explanations(model, expanded, [method], names, modules, labels, batch_size, options)
    maps = torch.zeros((images.shape[0], target_tensor.shape[1], *images.shape[-2:]), device=images.device)
    maps[image_index.to(images.device), labels.to(images.device)] = result.maps[method].to(images.device)
    return maps


def faithfulness(
    model: nn.Module,
    images: Tensor,
    method: str = "gradcam",
    target_layer: LayersLike = "auto",
    targets: TargetsLike = None,
    batch_size: int = 32,
    reduction: str = "mean",
    *,
    method_options: Optional[Mapping[str, Any]] = None,
    reshape: ReshapeLike = None,
    tail: Optional[Callable[[Tensor], Tensor]] = None,
    smooth: Optional[str] = None,
    smooth_samples: int = 8,
    smooth_sigma: float = 0.15,
    smooth_scales: Sequence[float] = (0.9, 1.0, 1.1),
    seed: int = 0,
    perturbation_batch: Optional[int] = None,
    probability: Optional[str] = None,
) -> Mapping[str, Union[float, Tensor]]:
    """Faithfulness of ``method``'s maps: Average Drop, Increase in Confidence, Coherency, Complexity, ADCC.

    Args:
        model, images, method, target_layer, targets, batch_size: As in :func:`explain`.
        reduction: ``"mean"`` for Python floats averaged over the images, ``"none"`` for ``(N,)``
            tensors of per-image values. With multi-hot ``targets``, one value per positive label:
            ``"none"`` gives ``(N, C)`` tensors (NaN where the label is negative), ``"mean"`` averages them.
{options}

    Returns:
        Dict with keys ``average_drop``, ``increase_in_confidence``, ``coherency``, ``complexity``,
        ``adcc``; values in percent (81.38 means 0.8138).

    Example::

        >>> import torchvision
        >>> net = torchvision.models.resnet18(num_classes=3)
        >>> scores = faithfulness(net, torch.randn(2, 3, 64, 64), target_layer="layer4")
        >>> sorted(scores)
        ['adcc', 'average_drop', 'coherency', 'complexity', 'increase_in_confidence']
    """
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction={reduction!r} is not valid; choose from ['mean', 'none']")
    options = make_options({method: method_options or {}}, reshape, tail, smooth, smooth_samples, smooth_sigma, smooth_scales, seed, perturbation_batch)
    names, modules, target_tensor = _prepare(model, images, method, target_layer, targets, batch_size, options)
    options = _with_probability(options, target_tensor, probability)
    if target_tensor is None or target_tensor.dim() == 1:
        _, scores = compute_faithfulness(model, images, [method], names, modules, target_tensor, batch_size, options)
        per_image = {metric: 100.0 * scores[method][metric] for metric in FAITHFULNESS_METRICS}
    else:
        expanded, labels, image_index = expand_multilabel(images, target_tensor)
        _, scores = compute_faithfulness(model, expanded, [method], names, modules, labels, batch_size, options)
        per_image = {}
        for metric in FAITHFULNESS_METRICS:
            grid = torch.full(tuple(target_tensor.shape), float("nan"), dtype=torch.float64, device=image_index.device)
            grid[image_index, labels] = 100.0 * scores[method][metric].double().to(grid.device)
            per_image[metric] = grid
    if reduction == "none":
        return {metric: value.to(images.device) for metric, value in per_image.items()}
    return {metric: float(value.double().nanmean()) for metric, value in per_image.items()}


for _function in (explain, faithfulness):
    _function.__doc__ = (_function.__doc__ or "").replace("{options}", _OPTIONS_DOC)
