"""Finding the target layer (by name, by module, or automatically) and the CAM classifier head."""

from __future__ import annotations

import difflib
import logging
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from cam_callbacks.capture.hooks import feature_map_problem
from cam_callbacks.capture.layouts import ChannelsLast, TokenGrid, remember_layout

__all__ = [
    "LayerSpec", "LayersLike", "resolve_layers", "resolve_named_layer", "resolve_target_layer", "find_auto_layer", "cam_class_weights",
    "spatial_layer_hint", "transformer_layer",
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


def _last_spatial(
    order: List[Tuple[str, Tuple[int, ...]]], input_shape: Optional[Tuple[int, ...]] = None
) -> Optional[Tuple[str, Tuple[int, ...]]]:
    for name, shape in reversed(order):
        if len(shape) == 4 and shape[2] * shape[3] > 1:
            if input_shape is not None and feature_map_problem(shape, input_shape) is not None:
                continue  # attention tensors, channels-last maps: not (N, C, H, W)
            return name, shape
    return None


# --- transformers ------------------------------------------------------------------------------------------


def _is_attention(module: nn.Module) -> bool:
    """An attention module: torch's MultiheadAttention, or one with an int ``num_heads``/``num_attention_heads``."""
    if isinstance(module, nn.MultiheadAttention):
        return True
    return any(isinstance(getattr(module, a, None), int) for a in ("num_heads", "num_attention_heads"))


def _last_child_name(container: nn.Module) -> Optional[str]:
    names = [name for name, _ in container.named_children()]
    return names[-1] if names else None


def _pair(value: Any) -> Optional[Tuple[int, int]]:
    if isinstance(value, int):
        return value, value
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return int(value[0]), int(value[1])
    return None


def _grid(prefix_tokens: int, patch: Any, example: Tensor) -> TokenGrid:
    """``TokenGrid(prefix_tokens)`` with the patch grid of ``example`` when the patch size is known (non-square inputs)."""
    size = _pair(patch)
    if size is None or example.dim() != 4:
        return TokenGrid(prefix_tokens=prefix_tokens)
    return TokenGrid(prefix_tokens=prefix_tokens, height=max(1, example.shape[2] // size[0]), width=max(1, example.shape[3] // size[1]))


def _candidate(module: nn.Module, example: Tensor) -> Optional[Tuple[str, TokenGrid]]:
    """``(name inside module, layout)`` when ``module`` is a ViT or Swin backbone this function knows (by attributes)."""
    blocks = getattr(module, "blocks", None)
    prefix = getattr(module, "num_prefix_tokens", None)
    patch_embed = getattr(module, "patch_embed", None)
    # timm VisionTransformer / DeiT (distilled: 2 prefix tokens; registers counted in num_prefix_tokens)
    if isinstance(blocks, nn.Module) and isinstance(prefix, int) and patch_embed is not None:
        last = _last_child_name(blocks)
        if last is not None and isinstance(getattr(blocks.get_submodule(last), "norm1", None), nn.Module):
            return f"blocks.{last}.norm1", _grid(prefix, getattr(patch_embed, "patch_size", None), example)
    encoder = getattr(module, "encoder", None)
    # torchvision VisionTransformer: class token + encoder.layers.encoder_layer_K.ln_1
    if isinstance(getattr(module, "class_token", None), Tensor) and isinstance(getattr(encoder, "layers", None), nn.Module):
        last = _last_child_name(encoder.layers)  # type: ignore[union-attr]
        if last is not None and isinstance(getattr(encoder.layers.get_submodule(last), "ln_1", None), nn.Module):  # type: ignore[union-attr]
            return f"encoder.layers.{last}.ln_1", _grid(1, getattr(module, "patch_size", None), example)
    # Hugging Face ViT / DeiT: embeddings.cls_token (+ distillation_token); encoder.layer.K (transformers 4) or layers.K (5)
    embeddings = getattr(module, "embeddings", None)
    if isinstance(getattr(embeddings, "cls_token", None), Tensor):
        prefix = 1 + int(isinstance(getattr(embeddings, "distillation_token", None), Tensor))
        prefix += int(getattr(embeddings, "register_tokens", None) is not None and getattr(embeddings.register_tokens, "shape", (0, 0))[1])  # type: ignore[union-attr]
        for path in ("encoder.layer", "layers"):
            try:
                layers = module.get_submodule(path)
            except AttributeError:
                continue
            last = _last_child_name(layers)
            if last is not None and isinstance(getattr(layers.get_submodule(last), "layernorm_before", None), nn.Module):
                patch = getattr(getattr(embeddings, "patch_embeddings", None), "patch_size", None)
                return f"{path}.{last}.layernorm_before", _grid(prefix, patch, example)
    stages = getattr(module, "layers", None)
    # timm SwinTransformer: layers.K are stages (with .blocks) whose output is channels-last (N, H, W, C)
    if patch_embed is not None and isinstance(stages, nn.Module) and prefix is None:
        last = _last_child_name(stages)
        if last is not None and isinstance(getattr(stages.get_submodule(last), "blocks", None), nn.Module):
            return f"layers.{last}", ChannelsLast()
    # torchvision SwinTransformer: features.K stages, then norm over the channels and permute to (N, C, H, W)
    features = getattr(module, "features", None)
    if isinstance(features, nn.Sequential) and isinstance(getattr(module, "norm", None), nn.LayerNorm) and hasattr(module, "permute"):
        last = _last_child_name(features)
        if last is not None:
            return f"features.{last}", ChannelsLast()
    return None


def _layout_advice() -> str:
    return (
        "pass the layer and its layout, e.g. target_layer='blocks.11.norm1', reshape=TokenGrid(prefix_tokens=1) (timm ViT; "
        "prefix_tokens = class + distillation + register tokens) or reshape='vit', or the last stage of a Swin with "
        "reshape='nhwc' (target_layer='layers.3' in timm, 'features.7' in torchvision)"
    )


def transformer_layer(model: nn.Module, example: Tensor) -> Optional[Tuple[str, TokenGrid]]:
    """``(layer name, layout)`` giving the standard CAM maps of a vision transformer, or None for other models.

    Recognised by attributes, wherever the backbone sits in ``model`` (wrapped models included):

    - ViT family (timm ViT/DeiT, torchvision ``vit_b_16``, Hugging Face ViT): the last block's first norm, patch tokens
      laid out on the grid after the prefix tokens (timm ``num_prefix_tokens``, torchvision 1, Hugging Face 1 or 2);
    - Swin (timm, torchvision ``swin_t``): the last stage's output, channels-last (:class:`ChannelsLast`).

    The choice is checked on one forward pass of ``example`` (no gradients; the caller restores modes). Returns None
    when ``model`` has no attention module.

    Raises:
        ValueError: A transformer whose layer this function cannot be sure of; the message says what to pass.
    """
    modules = _named_modules(model)
    if not any(_is_attention(m) for m in modules.values()):
        return None
    for path, module in [("", model), *modules.items()]:
        found = _candidate(module, example)
        if found is None:
            continue
        name, layout = f"{path}.{found[0]}" if path else found[0], found[1]
        shape = dict(_output_shapes(model, example)).get(name)
        ok = shape is not None and len(shape) == layout.output_dims and shape[0] == example.shape[0]
        if ok and not isinstance(layout, ChannelsLast):
            try:
                layout.grid_size(shape[1])  # type: ignore[index]
            except ValueError:
                ok = False
        if not ok:
            raise ValueError(
                f"target_layer='auto' chose {name!r} with reshape={layout!r} on {type(model).__name__}, but its output is "
                f"{shape} for input {tuple(example.shape)}; {_layout_advice()}"
            )
        return name, layout
    return None


def _inside_attention(model: nn.Module, name: str) -> bool:
    parts = name.split(".")
    return any(_is_attention(model.get_submodule(".".join(parts[:i]))) for i in range(1, len(parts) + 1))


def find_auto_layer(model: nn.Module, example: Tensor) -> Tuple[str, nn.Module]:
    """The last module (in completion order of a forward pass) with a 4-D output larger than 1x1.

    Adaptive pooling layers are skipped: their output size is fixed by construction (vgg's
    ``AdaptiveAvgPool2d((7, 7))``), so it is not the network's feature map.

    Runs one forward pass of ``example`` (typically one image) in eval mode and without gradients;
    the caller is responsible for restoring modes (see :func:`preserved_model_state`).

    Raises:
        ValueError: If no module produces such an output.
    """
    found = _last_spatial(_output_shapes(model, example), tuple(example.shape))
    if found is not None:
        if _inside_attention(model, found[0]):
            raise ValueError(
                f"target_layer='auto' found {found[0]!r} (output {found[1]}) inside an attention module of "
                f"{type(model).__name__}, not a feature map; {_layout_advice()}"
            )
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


def auto_layer(model: nn.Module, example: Tensor) -> Tuple[str, nn.Module, Optional[TokenGrid]]:
    """``target_layer="auto"``: ``(name, module, layout)``; transformers by :func:`transformer_layer`, other models by
    :func:`find_auto_layer` (layout None). Modes are restored."""
    from cam_callbacks.capture.state import eager, preserved_model_state

    with preserved_model_state(model), eager():
        found = transformer_layer(model, example)
        if found is not None:
            return found[0], model.get_submodule(found[0]), found[1]
        name, module = find_auto_layer(model, example)
    return name, module, None


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
        name, module, _ = auto_layer(model, example)
        return name, module
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

    ``"auto"`` is logged on the ``cam_callbacks`` logger, and refused with ``reshape`` (it chooses the layout
    itself: on transformers it is remembered for the module, see :func:`~cam_callbacks.capture.layouts.remembered_layout`);
    a layer listed twice is refused.
    """
    specs: List[LayerSpec] = list(target_layer) if isinstance(target_layer, (list, tuple)) else [target_layer]  # type: ignore[list-item]
    if not specs:
        raise ValueError("target_layer is an empty list; give a layer name, a module, 'auto' or a non-empty list of them")
    layers: List[Tuple[str, nn.Module]] = []
    for spec in specs:
        if isinstance(spec, str) and spec == "auto" and reshape is not None:
            raise ValueError(
                "target_layer='auto' chooses the layout itself (reshape=None); with reshape= name the layer, e.g. "
                "'encoder.layers.encoder_layer_11.ln_1' for torchvision's vit_b_16"
            )
        if isinstance(spec, str) and spec == "auto":
            name, module, layout = auto_layer(model, example)
            remember_layout(module, layout)
            log.info("cam_callbacks: target_layer='auto' chose %r%s", name, "" if layout is None else f" with reshape={layout!r}")
        else:
            name, module = resolve_named_layer(model, spec)
            remember_layout(module, None)
        if name in (known for known, _ in layers):
            raise ValueError(f"target_layer lists {name!r} twice")
        layers.append((name, module))
    return layers
