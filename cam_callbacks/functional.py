"""The public functional API: :func:`explain` (maps) and :func:`faithfulness` (their scores), on any classifier.

Both take the same keyword options (:class:`ExplainKwargs`), build one
:class:`~cam_callbacks.engine.options.ExplainOptions` from them and hand it to the engine
(:mod:`cam_callbacks.engine`). Torch only: nothing here imports Lightning.
"""

from __future__ import annotations

import difflib
from dataclasses import replace
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union, overload

import torch
from torch import Tensor, nn
from typing_extensions import Literal, TypedDict, Unpack

from cam_callbacks.capture.layers import LayersLike, resolve_layers
from cam_callbacks.capture.layouts import ReshapeLike
from cam_callbacks.engine.compute import compute_explanations, compute_faithfulness
from cam_callbacks.engine.options import ExplainOptions
from cam_callbacks.engine.passes import model_device
from cam_callbacks.methods.registry import get_method
from cam_callbacks.metrics.faithfulness import FAITHFULNESS_METRICS
from cam_callbacks.utils.targets import TargetsLike, as_targets, expand_multilabel
from cam_callbacks.utils.types import Probability, Reduction, Smooth

__all__ = ["ExplainKwargs", "check_images", "explain", "faithfulness"]


class ExplainKwargs(TypedDict, total=False):
    """The keyword options of :func:`explain` and :func:`faithfulness` (see their docstrings)."""

    method_options: Optional[Mapping[str, Any]]
    reshape: ReshapeLike
    tail: Optional[Callable[[Tensor], Tensor]]
    smooth: Optional[Smooth]
    smooth_samples: int
    smooth_sigma: float
    smooth_scales: Sequence[float]
    seed: int
    perturbation_batch: Optional[int]
    probability: Optional[Probability]


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


def _options(method: str, batch_size: int, kwargs: Mapping[str, Any]) -> ExplainOptions:
    """One :class:`ExplainOptions` from the keyword options (``probability`` is settled later, from the targets)."""
    valid = ExplainKwargs.__annotations__
    for name in kwargs:
        if name not in valid:
            close = difflib.get_close_matches(name, list(valid), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise TypeError(f"unexpected keyword argument {name!r}{hint} Valid options: {sorted(valid)}")
    given = dict(kwargs)
    method_options = given.pop("method_options", None) or {}
    given.pop("probability", None)
    if "smooth_scales" in given:
        given["smooth_scales"] = tuple(given["smooth_scales"])
    return ExplainOptions(batch_size=batch_size, method_options={method: method_options}, **given)


def _prepare(
    model: nn.Module, images: Tensor, method: str, target_layer: LayersLike, targets: TargetsLike, options: ExplainOptions,
    probability: Optional[Probability],
) -> Tuple[List[Tuple[str, nn.Module]], Optional[Tensor], ExplainOptions]:  # fmt: skip
    """Checks, target layers as ``(name, module)`` pairs, targets on the model's device, the options' probability."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_images(images)
    device = model_device(model, images.device)
    target_tensor = as_targets(targets, images.shape[0], device)
    if probability is None:  # sigmoid for multi-hot targets (multi-label models), softmax otherwise
        probability = "sigmoid" if target_tensor is not None and target_tensor.dim() == 2 else "softmax"
    options = replace(options, probability=probability)
    if not get_method(method).uses_layer and isinstance(target_layer, str) and target_layer == "auto":
        # saliency and guided backprop need no layer: no search (it costs a forward pass and fails on models without one)
        return [("input", model)], target_tensor, options
    with torch.inference_mode(False):
        example = images[:1].to(device).clone()
        layers = resolve_layers(model, target_layer, example, options.reshape)
    return layers, target_tensor, options


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
        smooth_samples, smooth_sigma, smooth_scales: See ``smooth`` (defaults 8, 0.15, (0.9, 1.0, 1.1)).
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
    **options: Unpack[ExplainKwargs],
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
    built = _options(method, batch_size, options)
    layers, target_tensor, built = _prepare(model, images, method, target_layer, targets, built, options.get("probability"))
    if target_tensor is None or target_tensor.dim() == 1:
        return compute_explanations(model, images, [method], layers, target_tensor, built).maps[method].to(images.device)
    expanded, labels, image_index = expand_multilabel(images, target_tensor)
    result = compute_explanations(model, expanded, [method], layers, labels, built)
    maps = torch.zeros((images.shape[0], target_tensor.shape[1], *images.shape[-2:]), device=images.device)
    maps[image_index.to(images.device), labels.to(images.device)] = result.maps[method].to(images.device)
    return maps


@overload
def faithfulness(
    model: nn.Module, images: Tensor, method: str = ..., target_layer: LayersLike = ..., targets: TargetsLike = ...,
    batch_size: int = ..., reduction: Literal["mean"] = ..., **options: Unpack[ExplainKwargs],
) -> Dict[str, float]: ...  # fmt: skip
@overload
def faithfulness(
    model: nn.Module, images: Tensor, method: str = ..., target_layer: LayersLike = ..., targets: TargetsLike = ...,
    batch_size: int = ..., *, reduction: Literal["none"], **options: Unpack[ExplainKwargs],
) -> Dict[str, Tensor]: ...  # fmt: skip
def faithfulness(
    model: nn.Module,
    images: Tensor,
    method: str = "gradcam",
    target_layer: LayersLike = "auto",
    targets: TargetsLike = None,
    batch_size: int = 32,
    reduction: Reduction = "mean",
    **options: Unpack[ExplainKwargs],
) -> Union[Dict[str, float], Dict[str, Tensor]]:
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
    built = _options(method, batch_size, options)
    layers, target_tensor, built = _prepare(model, images, method, target_layer, targets, built, options.get("probability"))
    if target_tensor is None or target_tensor.dim() == 1:
        scores = compute_faithfulness(model, images, [method], layers, target_tensor, built).scores
        per_image = {metric: 100.0 * scores[method][metric] for metric in FAITHFULNESS_METRICS}
    else:
        expanded, labels, image_index = expand_multilabel(images, target_tensor)
        scores = compute_faithfulness(model, expanded, [method], layers, labels, built).scores
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
