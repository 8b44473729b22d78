"""The engine's entry points: maps of several methods, and the same with their faithfulness scores.

One chunk of images costs one forward pass (the part before the target layer without autograd)
and, for gradient methods, one backward pass through the tail only; all requested methods share
them. Perturbation methods add batched passes of the model or its tail, input-gradient methods a
forward and backward pass to the input. Faithfulness adds one such round per method on the
explanation images.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch
from torch import Tensor, nn

from cam_callbacks.capture.state import eager, preserved_model_state
from cam_callbacks.engine.options import ExplainOptions
from cam_callbacks.engine.passes import Layers, explain_layers
from cam_callbacks.engine.result import Explanation, ScoredExplanation
from cam_callbacks.engine.smoothing import explain_smoothed
from cam_callbacks.methods.registry import CAMMethod, get_method
from cam_callbacks.metrics.faithfulness import faithfulness_scores
from cam_callbacks.utils.targets import probabilities


def compute_explanations(
    model: nn.Module,
    images: Tensor,
    methods: Sequence[str],
    layers: Layers,
    targets: Optional[Tensor] = None,
    options: Optional[ExplainOptions] = None,
) -> Explanation:
    """Maps of several methods in chunks of ``options.batch_size`` images, on the model's device.

    Args:
        model: The classifier.
        images: ``(N, C, H, W)`` as the model receives them.
        methods: Registered method names.
        layers: ``(name, module)`` pairs of target layers; several are fused LayerCAM-style
            (``fuse_layer_maps``).
        targets: ``(N,)`` class indices, or None for the top-1 predictions.
        options: How to compute (defaults: ``ExplainOptions``).

    The model is put in eval mode for the call and restored after; no ``param.grad`` is touched.
    Results are on the model's device.
    """
    options = options or ExplainOptions()
    resolved = [get_method(name) for name in methods]
    for method in resolved:
        options.options_for(method)  # unknown options fail before any work
    if not layers:
        raise ValueError("give at least one (name, module) target layer")
    check_layer_count(model, resolved, layers)
    with torch.inference_mode(False), preserved_model_state(model), eager():
        if options.smooth is None:
            return explain_layers(model, images, resolved, layers, targets, options)
        return explain_smoothed(model, images, resolved, layers, targets, options)


def _earlier_sibling(model: nn.Module, name: str) -> Optional[str]:
    """The dotted name of the nearest module before ``name`` in its parent of the same type (``layer3`` for a resnet's
    ``layer4``, the previous ReLU for a ReLU), else the nearest one with parameters; None when there is neither."""
    parent_name, _, child = name.rpartition(".")
    try:
        parent = model.get_submodule(parent_name)
        layer = model.get_submodule(name)
    except AttributeError:
        return None
    same_type: Optional[str] = None
    with_parameters: Optional[str] = None
    for sibling, module in parent.named_children():
        if sibling == child:
            break
        if type(module) is type(layer):
            same_type = sibling
        if any(True for _ in module.parameters()):
            with_parameters = sibling
    earlier = same_type or with_parameters
    return None if earlier is None else (f"{parent_name}.{earlier}" if parent_name else earlier)


def check_layer_count(model: nn.Module, methods: Sequence[CAMMethod], layers: Layers) -> None:
    """A ValueError for a method that needs more target layers than given (``min_layers``, e.g. RefineCAM's 2), saying
    what to pass: a list of layers of the model (the one given and the block before it, where there is one)."""
    for method in methods:
        if len(layers) >= method.min_layers or not method.uses_layer:
            continue
        names = [name for name, _ in layers]
        earlier = _earlier_sibling(model, names[0])
        example = f"e.g. target_layer={[earlier, *names]!r}" if earlier is not None else "e.g. the last two blocks of the backbone"
        raise ValueError(
            f"method {method.name!r} needs at least {method.min_layers} target layers (it combines the maps of several "
            f"layers), got {len(layers)}: {names}; pass target_layer as a list of {method.min_layers} or more layers, {example}"
        )


def _target_probabilities(logits: Tensor, targets: Tensor, options: ExplainOptions) -> Tensor:
    return probabilities(logits, options.probability).gather(1, targets[:, None]).squeeze(1)


def compute_faithfulness(
    model: nn.Module,
    images: Tensor,
    methods: Sequence[str],
    layers: Layers,
    targets: Optional[Tensor] = None,
    options: Optional[ExplainOptions] = None,
) -> ScoredExplanation:
    """Maps and per-image faithfulness fractions (in [0, 1]) of several methods.

    Arguments as in ``compute_explanations``. Each method is run again on its explanation
    images ``images * map`` (for Average Drop, Increase in Confidence and Coherency). A row whose
    logits or map of either pass hold NaN or inf gets NaN scores (never a number computed from them).

    Returns:
        ``(explanation, scores)`` with ``scores[method][metric]`` an ``(N,)`` tensor.
    """
    options = options or ExplainOptions()
    explanation = compute_explanations(model, images, methods, layers, targets, options)
    probs = _target_probabilities(explanation.logits, explanation.targets, options)
    scores: Dict[str, Dict[str, Tensor]] = {}
    for name in methods:
        maps = explanation.maps[name]
        second = explanation_pass(model, images, explanation, name, options, layers)
        probs_on_explanation = _target_probabilities(second.logits, explanation.targets, options)
        per_image = faithfulness_scores(maps, second.maps[name], probs, probs_on_explanation)
        bad = nonfinite_rows(explanation.logits, maps) | nonfinite_rows(second.logits, second.maps[name])
        scores[name] = {metric: torch.where(bad.to(v.device), torch.full_like(v, float("nan")), v) for metric, v in per_image.items()}
    return ScoredExplanation(explanation, scores)


def explanation_pass(
    model: nn.Module, images: Tensor, explanation: Explanation, method: str, options: ExplainOptions, layers: Optional[Layers] = None
) -> Explanation:
    """``method``'s maps of its explanation images ``images * map`` (same targets, same layers): the second pass of
    Coherency and Average Drop. ``layers`` default to those ``explanation`` was computed at."""
    layers = explanation.layers if layers is None else layers
    if not layers:
        raise ValueError("the target layers of the explanation are not known; pass layers=")
    maps = explanation.maps[method]
    explanation_images = images.to(maps.device) * maps.unsqueeze(1).to(images.dtype)
    return compute_explanations(model, explanation_images, [method], layers, explanation.targets, options)


def nonfinite_rows(logits: Tensor, maps: Tensor) -> Tensor:
    """``(N,)`` bool: rows whose logits or map hold NaN or inf."""
    return ~torch.isfinite(logits).all(dim=1) | ~torch.isfinite(maps).flatten(1).all(dim=1).to(logits.device)
