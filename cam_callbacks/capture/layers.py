"""Finding the target layer (by name, by module, or automatically) and the CAM classifier head."""

from __future__ import annotations

import difflib
import logging
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

__all__ = [
    "LayerSpec", "LayersLike", "resolve_layers", "resolve_named_layer", "resolve_target_layer", "find_auto_layer", "cam_class_weights",
    "spatial_layer_hint",
]  # fmt: skip

#: What ``target_layer=`` accepts: a dotted module name, a module of the model, or ``"auto"``.
LayerSpec = Union[str, nn.Module]
#: What ``target_layer=`` accepts: one layer (name, module or ``"auto"``) or a list of layers to fuse.
LayersLike = Union[LayerSpec, Sequence[LayerSpec]]

log = logging.getLogger("cam_callbacks")


def _named_modules(model: nn.Module) -> Dict[str, nn.Module]:
    return {name: module for name, module in model.named_modules() if name}


def _suggest(name: str, names: List[str]) -> str:
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    if close:
        return f"Did you mean one of {close}?"
    tail = names[-8:]
    return f"Valid names include {tail} (see model.named_modules())."


def resolve_named_layer(model: nn.Module, target_layer: LayerSpec) -> Tuple[str, nn.Module]:
    """Resolve a dotted name or a module to ``(name, module)``; ``"auto"`` is not handled here.

    Raises:
        ValueError: Unknown name (with close-name suggestions), or a module not inside ``model``.
        TypeError: Anything else.
    """
    modules = _named_modules(model)
    if isinstance(target_layer, nn.Module):
        for name, module in modules.items():
            if module is target_layer:
                return name, module
        raise ValueError(
            f"target_layer={type(target_layer).__name__} module is not a submodule of the model "
            f"({type(model).__name__}); pass one of its submodules, a dotted name, or 'auto'."
        )
    if not isinstance(target_layer, str):
        raise TypeError(f"target_layer must be a dotted module name, a module or 'auto', got {type(target_layer).__name__}")
    if target_layer not in modules:
        raise ValueError(f"target_layer={target_layer!r} is not a module of {type(model).__name__}. {_suggest(target_layer, list(modules))}")
    return target_layer, modules[target_layer]


_FIXED_SIZE_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


def _output_shapes(model: nn.Module, example: Tensor) -> List[Tuple[str, Tuple[int, ...]]]:
    """``(name, output shape)`` of every module with a tensor output, in completion order of one forward pass of
    ``example`` without gradients; adaptive pooling layers are left out (their output size is fixed by construction)."""
    modules = _named_modules(model)
    names = {id(m): n for n, m in modules.items()}
    order: List[Tuple[str, Tuple[int, ...]]] = []

    def hook(module: nn.Module, inputs: Any, output: Any) -> None:
        # Adaptive pools have a fixed output size (vgg's AdaptiveAvgPool2d((7, 7))), not a feature map.
        if isinstance(output, Tensor) and not isinstance(module, _FIXED_SIZE_POOLS):
            order.append((names[id(module)], tuple(output.shape)))

    handles = [m.register_forward_hook(hook) for m in modules.values()]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    return order


def _last_spatial(order: List[Tuple[str, Tuple[int, ...]]]) -> Optional[Tuple[str, Tuple[int, ...]]]:
    for name, shape in reversed(order):
        if len(shape) == 4 and shape[2] * shape[3] > 1:
            return name, shape
    return None


def find_auto_layer(model: nn.Module, example: Tensor) -> Tuple[str, nn.Module]:
    """The last module (in completion order of a forward pass) with a 4-D output larger than 1x1.

    Adaptive pooling layers are skipped: their output size is fixed by construction (vgg's
    ``AdaptiveAvgPool2d((7, 7))``), so it is not the network's feature map.

    Runs one forward pass of ``example`` (typically one image) in eval mode and without gradients;
    the caller is responsible for restoring modes (see :func:`preserved_model_state`).

    Raises:
        ValueError: If no module produces such an output.
    """
    found = _last_spatial(_output_shapes(model, example))
    if found is not None:
        return found[0], _named_modules(model)[found[0]]
    raise ValueError(
        f"target_layer='auto' found no module of {type(model).__name__} with a 4-D output larger than 1x1 "
        f"for input of shape {tuple(example.shape)}; pass target_layer explicitly."
    )


def spatial_layer_hint(model: nn.Module, example: Tensor) -> str:
    """A sentence naming the last layer of ``model`` with a 4-D output larger than 1x1 for ``example`` and its output
    shape (``""`` when there is none or the forward pass fails), for error messages about a bad target layer.

    The forward pass runs in eval mode without autograd; modes, hooks and the RNG are left as found.

    Example::

        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
        >>> spatial_layer_hint(net, torch.randn(1, 3, 8, 8))
        "For this model and input: e.g. target_layer='1', whose output is (1, 4, 6, 6)."
    """
    from cam_callbacks.capture.state import eager, preserved_model_state, preserved_rng_state

    try:
        with preserved_rng_state(), preserved_model_state(model), eager():
            found = _last_spatial(_output_shapes(model, example))
    except Exception:  # noqa: BLE001 - only a hint: the caller's error is raised either way
        return ""
    return "" if found is None else f"For this model and input: e.g. target_layer={found[0]!r}, whose output is {found[1]}."


def resolve_target_layer(model: nn.Module, target_layer: LayerSpec, example: Optional[Tensor] = None) -> Tuple[str, nn.Module]:
    """Resolve ``target_layer`` (dotted name, module or ``"auto"``) to ``(name, module)``.

    Args:
        model: The classifier.
        target_layer: A dotted module name (``"layer4"``, ``"features.denseblock4"``), a module of the
            model, or ``"auto"``.
        example: An input batch (one image is enough), required for ``"auto"``.

    Example::

        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
        >>> resolve_target_layer(net, "auto", torch.randn(1, 3, 8, 8))[0]
        '1'
    """
    if isinstance(target_layer, str) and target_layer == "auto":
        if example is None:
            raise ValueError("target_layer='auto' needs an example input to find the layer")
        from cam_callbacks.capture.state import eager, preserved_model_state

        with preserved_model_state(model), eager():
            return find_auto_layer(model, example)
    return resolve_named_layer(model, target_layer)


def _last_linear(model: nn.Module) -> Optional[Tuple[str, nn.Linear]]:
    found = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            found = (name, module)
    return found


def cam_class_weights(model: nn.Module, layer_name: str, activations: Tensor, logits: Tensor, targets: Tensor) -> Tensor:
    """Rows of the final linear layer for each target, ``(N, K)``, after checking the head is GAP + linear.

    The check is numerical: the logits of the forward pass must equal
    ``linear(mean_hw(activations))``. This holds exactly when only global average pooling (and
    flattening) stand between the target layer and the linear classifier.

    Raises:
        ValueError: If there is no linear layer, its shape does not fit, or the head is not GAP + linear.
    """
    advice = "Use method='gradcam' (it equals CAM on GAP + linear heads) or a layer directly followed by GAP + linear."
    found = _last_linear(model)
    if found is None:
        raise ValueError(f"method='cam' needs a final nn.Linear classifier; {type(model).__name__} has none. {advice}")
    name, linear = found
    channels = activations.shape[1]
    if linear.in_features != channels or linear.out_features != logits.shape[1]:
        raise ValueError(
            f"method='cam' needs target_layer={layer_name!r} to be followed by global average pooling and a linear layer; "
            f"the last linear layer {name!r} maps {linear.in_features} -> {linear.out_features} features but the layer has "
            f"{channels} channels and the model {logits.shape[1]} outputs. {advice}"
        )
    with torch.no_grad():
        weight = linear.weight.detach().to(activations.dtype)
        bias = linear.bias.detach().to(activations.dtype) if linear.bias is not None else None
        pooled = activations.detach().mean(dim=(2, 3))
        predicted = pooled @ weight.t() + (bias if bias is not None else 0)
        scale = logits.detach().abs().max().clamp_min(1.0)
        error = (predicted - logits.detach().to(predicted.dtype)).abs().max()
    if error > 1e-3 * scale:
        raise ValueError(
            f"method='cam' needs target_layer={layer_name!r} to be followed only by global average pooling and the linear "
            f"layer {name!r}, but the model's logits differ from {name}(GAP(activations)) by {float(error):.3g}. {advice}"
        )
    return weight[targets]


def resolve_layers(
    model: nn.Module, target_layer: LayersLike, example: Tensor, reshape: Optional[object] = None
) -> List[Tuple[str, nn.Module]]:
    """Resolve one target layer or a list of them to ``(name, module)`` pairs.

    ``"auto"`` is logged on the ``cam_callbacks`` logger, and refused with ``reshape`` (it looks for
    4-D feature maps); a layer listed twice is refused.
    """
    specs: List[LayerSpec] = list(target_layer) if isinstance(target_layer, (list, tuple)) else [target_layer]  # type: ignore[list-item]
    if not specs:
        raise ValueError("target_layer is an empty list; give a layer name, a module, 'auto' or a non-empty list of them")
    layers: List[Tuple[str, nn.Module]] = []
    for spec in specs:
        if isinstance(spec, str) and spec == "auto" and reshape is not None:
            raise ValueError(
                "target_layer='auto' looks for 4-D feature maps and cannot find a transformer layer; with reshape= name the "
                "layer, e.g. 'encoder.layers.encoder_layer_11.ln_1' for torchvision's vit_b_16"
            )
        name, module = resolve_target_layer(model, spec, example)
        if isinstance(spec, str) and spec == "auto":
            log.info("cam_callbacks: target_layer='auto' chose %r", name)
        if name in (known for known, _ in layers):
            raise ValueError(f"target_layer lists {name!r} twice")
        layers.append((name, module))
    return layers
