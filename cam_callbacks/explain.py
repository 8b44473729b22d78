"""The batched explanation engine and the public ``explain`` / ``faithfulness`` functions.

One chunk of images costs one forward pass (the part before the target layer without autograd)
and, for gradient methods, one backward pass through the tail only; all requested methods share
them. Faithfulness adds one such pass per method on the explanation images.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .capture import LayerCapture, preserved_model_state
from .layers import LayerSpec, cam_class_weights, resolve_target_layer
from .maps import upsample_and_normalize
from .methods import CAMMethod, get_method
from .metrics import FAITHFULNESS_METRICS, faithfulness_scores

__all__ = ["explain", "faithfulness", "Explanation", "compute_explanations", "compute_faithfulness", "TargetsLike"]

log = logging.getLogger("cam_callbacks")

#: What ``targets=`` accepts: None (top-1 prediction), one class for all images, or one per image.
TargetsLike = Union[None, int, Sequence[int], Tensor]


@dataclass
class Explanation:
    """Maps of several methods for one set of images.

    Attributes:
        maps: Method name -> ``(N, H, W)`` float32 maps in [0, 1].
        logits: ``(N, num_classes)`` logits of the unmodified images (detached).
        targets: ``(N,)`` class index each map explains.
        layer_name: Dotted name of the target layer.
    """

    maps: Dict[str, Tensor]
    logits: Tensor
    targets: Tensor
    layer_name: str


def _model_device(model: nn.Module, fallback: torch.device) -> torch.device:
    for param in model.parameters():
        return param.device
    for buffer in model.buffers():
        return buffer.device
    return fallback


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


def as_targets(targets: TargetsLike, n: int, device: torch.device) -> Optional[Tensor]:
    """Normalise ``targets`` to a ``(n,)`` long tensor on ``device`` (or None for top-1)."""
    if targets is None:
        return None
    if isinstance(targets, bool):
        raise TypeError("targets must be None, an int or a sequence/tensor of class indices, got a bool")
    tensor = torch.as_tensor(targets)
    if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
        raise TypeError(f"targets must hold integer class indices, got dtype {tensor.dtype}")
    if tensor.dim() == 0:  # one class for all images (int, NumPy integer, 0-d tensor)
        return torch.full((n,), int(tensor), dtype=torch.long, device=device)
    if tensor.dim() != 1 or tensor.shape[0] != n:
        raise ValueError(f"targets must have one class index per image: expected shape ({n},), got {tuple(tensor.shape)}")
    return tensor.to(device=device, dtype=torch.long)


def first_out_of_range(targets: Tensor, num_classes: int) -> Optional[int]:
    """Index of the first class index outside ``0..num_classes-1``, or None."""
    bad = (targets < 0) | (targets >= num_classes)
    return int(bad.nonzero()[0, 0]) if bool(bad.any()) else None


def _check_target_range(targets: Tensor, num_classes: int) -> None:
    index = first_out_of_range(targets, num_classes)
    if index is not None:
        raise ValueError(
            f"targets[{index}]={int(targets[index])} is out of range: the model has {num_classes} classes, "
            f"valid class indices are 0..{num_classes - 1}"
        )


def _run_chunk(
    model: nn.Module, layer_name: str, layer: nn.Module, methods: Sequence[CAMMethod], x: Tensor, targets: Optional[Tensor]
) -> Tuple[Dict[str, Tensor], Tensor, Tensor]:
    """Raw maps of every method for one chunk: ``({name: (n, h, w)}, logits, targets)``."""
    needs_gradients = any(m.needs_gradients for m in methods)
    with LayerCapture(layer, layer_name, grad_tail=needs_gradients) as capture:
        with torch.no_grad():  # the capture hook turns autograd on for the tail only
            logits = model(x)
    if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.shape[0] != x.shape[0]:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"the model must return logits of shape (N, num_classes) = ({x.shape[0]}, C); it returned {shape}")
    activation = capture.activation
    if activation is None:
        raise RuntimeError(f"target_layer={layer_name!r} was not called during the forward pass")
    if targets is None:
        targets = logits.detach().argmax(dim=1)
    else:
        _check_target_range(targets, logits.shape[1])
    inputs: Dict[str, Tensor] = {"activations": activation.detach()}
    if needs_gradients:
        if not logits.requires_grad:
            raise RuntimeError(f"the logits do not depend on target_layer={layer_name!r}; no gradient can be taken")
        score = logits.gather(1, targets[:, None]).sum()
        (gradients,) = torch.autograd.grad(score, activation)
        inputs["gradients"] = gradients
    if any("class_weights" in m.needs for m in methods):
        inputs["class_weights"] = cam_class_weights(model, layer_name, inputs["activations"], logits, targets)
    raw = {m.name: m.fn(**{key: inputs[key] for key in m.needs}) for m in methods}
    return raw, logits.detach(), targets


def compute_explanations(
    model: nn.Module,
    images: Tensor,
    methods: Sequence[str],
    layer_name: str,
    layer: nn.Module,
    targets: Optional[Tensor] = None,
    batch_size: int = 32,
) -> Explanation:
    """Maps of several methods in chunks of ``batch_size`` images, on the model's device.

    The model is put in eval mode for the call and restored after; no ``param.grad`` is touched.
    Results are on the model's device.
    """
    resolved = [get_method(name) for name in methods]
    device = _model_device(model, images.device)
    size = (images.shape[-2], images.shape[-1])
    maps: Dict[str, List[Tensor]] = {m.name: [] for m in resolved}
    all_logits: List[Tensor] = []
    all_targets: List[Tensor] = []
    with torch.inference_mode(False), preserved_model_state(model):
        for start in range(0, images.shape[0], batch_size):
            # Cloned outside inference mode: inference tensors (from validation) cannot enter autograd.
            x = images[start : start + batch_size].to(device).clone()
            t = None if targets is None else targets[start : start + batch_size].to(device).clone()
            raw, logits, t = _run_chunk(model, layer_name, layer, resolved, x, t)
            for name, r in raw.items():
                maps[name].append(upsample_and_normalize(r, size))
            all_logits.append(logits)
            all_targets.append(t)
        # Concatenated outside inference mode too, so results can enter autograd in a later call.
        return Explanation(
            maps={name: torch.cat(parts) for name, parts in maps.items()},
            logits=torch.cat(all_logits),
            targets=torch.cat(all_targets),
            layer_name=layer_name,
        )


def compute_faithfulness(
    model: nn.Module,
    images: Tensor,
    methods: Sequence[str],
    layer_name: str,
    layer: nn.Module,
    targets: Optional[Tensor] = None,
    batch_size: int = 32,
) -> Tuple[Explanation, Dict[str, Dict[str, Tensor]]]:
    """Maps and per-image faithfulness fractions (in [0, 1]) of several methods.

    Returns:
        ``(explanation, scores)`` with ``scores[method][metric]`` an ``(N,)`` tensor.
    """
    explanation = compute_explanations(model, images, methods, layer_name, layer, targets, batch_size)
    probs = torch.softmax(explanation.logits.float(), dim=1).gather(1, explanation.targets[:, None]).squeeze(1)
    scores: Dict[str, Dict[str, Tensor]] = {}
    for name in methods:
        maps = explanation.maps[name]
        explanation_images = images.to(maps.device) * maps.unsqueeze(1).to(images.dtype)
        second = compute_explanations(model, explanation_images, [name], layer_name, layer, explanation.targets, batch_size)
        probs_on_explanation = torch.softmax(second.logits.float(), dim=1).gather(1, explanation.targets[:, None]).squeeze(1)
        scores[name] = faithfulness_scores(maps, second.maps[name], probs, probs_on_explanation)
    return explanation, scores


def _prepare(
    model: nn.Module, images: Tensor, method: str, target_layer: LayerSpec, targets: TargetsLike, batch_size: int
) -> Tuple[str, nn.Module, Optional[Tensor]]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_images(images)
    get_method(method)
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    device = _model_device(model, images.device)
    with torch.inference_mode(False):
        example = images[:1].to(device).clone()
        layer_name, layer = resolve_target_layer(model, target_layer, example)
    if isinstance(target_layer, str) and target_layer == "auto":
        log.info("cam_callbacks: target_layer='auto' chose %r", layer_name)
    return layer_name, layer, as_targets(targets, images.shape[0], device)


def explain(
    model: nn.Module,
    images: Tensor,
    method: str = "gradcam",
    target_layer: LayerSpec = "auto",
    targets: TargetsLike = None,
    batch_size: int = 32,
) -> Tensor:
    """Class activation maps of ``images`` for ``model``.

    Args:
        model: A classifier returning ``(N, num_classes)`` logits.
        images: ``(N, C, H, W)`` float tensor, exactly as the model receives it (normalised).
        method: One of :func:`available_methods`.
        target_layer: Dotted module name, a module of ``model``, or ``"auto"`` (the last module
            with a 4-D output larger than 1x1; the choice is logged on the ``cam_callbacks`` logger).
        targets: None for the top-1 prediction, an int for one class for all images, or ``N`` class indices.
        batch_size: Images per forward/backward pass.

    Returns:
        ``(N, H, W)`` float32 maps in [0, 1] at the images' size, on the images' device.

    The model is left as found: module modes, hooks, ``param.grad`` and ``requires_grad``. Works
    under ``torch.no_grad()`` and ``torch.inference_mode()``.

    Example::

        >>> import torchvision
        >>> net = torchvision.models.resnet18(num_classes=3)
        >>> maps = explain(net, torch.randn(2, 3, 64, 64), method="gradcam", target_layer="layer4")
        >>> maps.shape
        torch.Size([2, 64, 64])
    """
    layer_name, layer, target_tensor = _prepare(model, images, method, target_layer, targets, batch_size)
    result = compute_explanations(model, images, [method], layer_name, layer, target_tensor, batch_size)
    return result.maps[method].to(images.device)


def faithfulness(
    model: nn.Module,
    images: Tensor,
    method: str = "gradcam",
    target_layer: LayerSpec = "auto",
    targets: TargetsLike = None,
    batch_size: int = 32,
    reduction: str = "mean",
) -> Mapping[str, Union[float, Tensor]]:
    """Faithfulness of ``method``'s maps: Average Drop, Increase in Confidence, Coherency, Complexity, ADCC.

    Args:
        model, images, method, target_layer, targets, batch_size: As in :func:`explain`.
        reduction: ``"mean"`` for Python floats averaged over the images, ``"none"`` for ``(N,)``
            tensors of per-image values.

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
    layer_name, layer, target_tensor = _prepare(model, images, method, target_layer, targets, batch_size)
    _, scores = compute_faithfulness(model, images, [method], layer_name, layer, target_tensor, batch_size)
    per_image = {metric: 100.0 * scores[method][metric] for metric in FAITHFULNESS_METRICS}
    if reduction == "none":
        return {metric: value.to(images.device) for metric, value in per_image.items()}
    return {metric: float(value.double().mean()) for metric, value in per_image.items()}
