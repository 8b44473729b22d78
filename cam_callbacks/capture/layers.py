"""Finding the target layer (by name, by module, or automatically) and the CAM classifier head."""

from __future__ import annotations

import difflib
import logging
from typing import Any, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from cam_callbacks.capture.hooks import feature_map_problem
from cam_callbacks.capture.layouts import ChannelsLast, TokenGrid, remember_layout
from cam_callbacks.capture.token_layers import (
    TokenLayer,
    Trace,
    describe_layout,
    grid_for,
    guess_token_layer,
    inside_attention,
    is_attention,
    layout_argument,
    named_modules,
    suggestion,
    trace_forward,
)

#: What ``target_layer=`` accepts: a dotted module name, a module of the model, or ``"auto"``.
LayerSpec = Union[str, nn.Module]
#: What ``target_layer=`` accepts: one layer (name, module or ``"auto"``) or a list of layers to fuse.
LayersLike = Union[LayerSpec, Sequence[LayerSpec]]

log = logging.getLogger("cam_callbacks")


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
    modules = named_modules(model)
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


class AutoLayerError(ValueError):
    """``target_layer="auto"`` refuses to choose; ``suggestion`` is a layer of this model that works, when one is known."""

    def __init__(self, message: str, suggestion: Optional[TokenLayer] = None) -> None:
        super().__init__(message)
        self.suggestion = suggestion


def _last_spatial(order: List[Tuple[str, Tuple[int, ...]]], input_shape: Optional[Tuple[int, ...]] = None) -> Optional[Tuple[str, Tuple[int, ...]]]:
    for name, shape in reversed(order):
        if len(shape) == 4 and shape[2] * shape[3] > 1:
            if input_shape is not None and feature_map_problem(shape, input_shape) is not None:
                continue  # attention tensors, channels-last maps: not (N, C, H, W)
            return name, shape
    return None


def _advice(model: nn.Module, trace: Trace, example: Tensor) -> Tuple[str, Optional[TokenLayer]]:
    """What to pass instead, with names of this model: the guessed token layer and its layout, checked on ``example``."""
    found = guess_token_layer(model, trace, example)
    if found is not None:
        return f"on this {type(model).__name__} pass {suggestion(found.name, found.layout)} ({found.where})", found
    return (
        "pass target_layer= a module whose output is a transformer block's tokens (N, tokens, C), with "
        "reshape=TokenGrid(prefix_tokens=<class + distillation + register tokens>) (see model.named_modules())"
    ), None


# --- transformers ------------------------------------------------------------------------------------------


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


def _hugging_face(module: nn.Module, example: Tensor) -> Optional[Tuple[str, TokenGrid]]:
    """Hugging Face ViT, DeiT, BEiT, Dinov2 (class token, + distillation / register tokens; blocks in ``encoder.layer``
    or, transformers 5, ``layers``; first norm ``layernorm_before`` or ``norm1``) and Swin (final ``layernorm``)."""
    embeddings = getattr(module, "embeddings", None)
    if isinstance(getattr(embeddings, "cls_token", None), Tensor):
        prefix = 1 + int(isinstance(getattr(embeddings, "distillation_token", None), Tensor))
        registers = getattr(embeddings, "register_tokens", None)
        prefix += int(registers.shape[1]) if isinstance(registers, Tensor) and registers.dim() == 3 else 0
        for path in ("encoder.layer", "layers"):
            try:
                layers = module.get_submodule(path)
            except AttributeError:
                continue
            last = _last_child_name(layers)
            for norm in ("layernorm_before", "norm1"):
                if last is not None and isinstance(getattr(layers.get_submodule(last), norm, None), nn.Module):
                    patch = getattr(getattr(embeddings, "patch_embeddings", None), "patch_size", None)
                    return f"{path}.{last}.{norm}", _grid(prefix, patch, example)
    # Swin: encoder.layers.K stages (they return tuples), then layernorm over (N, h*w, C) tokens without a prefix token
    if isinstance(getattr(embeddings, "patch_embeddings", None), nn.Module) and isinstance(getattr(module, "layernorm", None), nn.LayerNorm):
        try:
            stages = module.get_submodule("encoder.layers")
        except AttributeError:
            return None
        last = _last_child_name(stages)
        if last is not None and isinstance(getattr(stages.get_submodule(last), "blocks", None), nn.Module):
            return "layernorm", TokenGrid(prefix_tokens=0)
    return None


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
    found = _hugging_face(module, example)
    if found is not None:
        return found
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


def _checked_layout(layout: TokenGrid, shape: Optional[Tuple[int, ...]], example: Tensor) -> Optional[TokenGrid]:
    """``layout`` for a layer output of ``shape`` (a grid without a size gets the images' aspect ratio), or None if it does not fit."""
    if shape is None or len(shape) != layout.output_dims or shape[0] != example.shape[0]:
        return None
    if isinstance(layout, ChannelsLast):
        return layout
    if layout.height is None and layout.width is None:
        grid = grid_for(shape[1] - layout.prefix_tokens, example) if shape[1] > layout.prefix_tokens else None
        layout = layout if grid is None else TokenGrid(prefix_tokens=layout.prefix_tokens, height=grid[0], width=grid[1])
    try:
        layout.grid_size(shape[1])
    except ValueError:
        return None
    return layout


def _known_transformer(model: nn.Module, example: Tensor, trace: Trace) -> Optional[Tuple[str, TokenGrid]]:
    for path, module in [("", model), *named_modules(model).items()]:
        found = _candidate(module, example)
        if found is None:
            continue
        name = f"{path}.{found[0]}" if path else found[0]
        shape = dict(trace.outputs).get(name)
        layout = _checked_layout(found[1], shape, example)
        if layout is None:
            advice, guess = _advice(model, trace, example)
            raise AutoLayerError(
                f"target_layer='auto' chose {name!r} with {layout_argument(found[1])} on {type(model).__name__}, but its output "
                f"is {shape} for input {tuple(example.shape)}; {advice}",
                guess,
            )
        return name, layout
    return None


def transformer_layer(model: nn.Module, example: Tensor) -> Optional[Tuple[str, TokenGrid]]:
    """``(layer name, layout)`` giving the standard CAM maps of a vision transformer, or None for other models.

    Recognised by attributes, wherever the backbone sits in ``model`` (wrapped models included):

    - ViT family (timm ViT/DeiT, torchvision ``vit_b_16``, Hugging Face ViT, DeiT, BEiT, Dinov2): the last block's first
      norm, patch tokens laid out on the grid after the prefix tokens (timm ``num_prefix_tokens``, torchvision 1,
      Hugging Face 1 + distillation and register tokens);
    - Swin (timm, torchvision ``swin_t``): the last stage's output, channels-last (``ChannelsLast``); Hugging Face
      Swin: the final ``layernorm``, tokens without a prefix token.

    The choice is checked on one forward pass of ``example`` (no gradients; the caller restores modes). Returns None
    when ``model`` has no attention module.

    Raises:
        AutoLayerError: A transformer whose layer this function cannot be sure of; the message says what to pass.
    """
    if not any(is_attention(m) for m in named_modules(model).values()):
        return None
    return _known_transformer(model, example, trace_forward(model, example))


def _find_in_trace(model: nn.Module, example: Tensor, trace: Trace) -> Tuple[str, nn.Module]:
    found = _last_spatial(trace.outputs, tuple(example.shape))
    model_name = type(model).__name__
    advice, guess = _advice(model, trace, example) if trace.token_attention else ("pass target_layer explicitly.", None)
    if found is None:
        raise AutoLayerError(
            f"target_layer='auto' found no module of {model_name} with a 4-D output larger than 1x1 for input of shape {tuple(example.shape)}; {advice}",
            guess,
        )
    name, shape = found
    if inside_attention(model, name):
        advice, guess = _advice(model, trace, example)
        raise AutoLayerError(
            f"target_layer='auto' found {name!r} (output {shape}) inside an attention module of {model_name}, not a feature map; {advice}", guess
        )
    later = [a for a in trace.token_attention if trace.completed[a] > trace.completed[name]]
    if later:
        raise AutoLayerError(
            f"target_layer='auto' will not explain {name!r} (output {shape}) of {model_name}: its output feeds the attention "
            f"blocks ({later[-1]!r} runs after it), so it is an embedding, not what the model decides on; {advice}",
            guess,
        )
    return name, named_modules(model)[name]


def find_auto_layer(model: nn.Module, example: Tensor) -> Tuple[str, nn.Module]:
    """The last module (in completion order of a forward pass) with a 4-D output larger than 1x1.

    Adaptive pooling layers are skipped: their output size is fixed by construction (vgg's
    ``AdaptiveAvgPool2d((7, 7))``), so it is not the network's feature map. A layer inside an attention module,
    or one whose output attention blocks read afterwards (a patch embedding), is refused.

    Runs one forward pass of ``example`` (typically one image) in eval mode and without gradients;
    the caller is responsible for restoring modes (see ``preserved_model_state``).

    Raises:
        AutoLayerError: If no module produces such an output, or the one found is refused; the message names a layer
            of this model that works, when one is found.
    """
    return _find_in_trace(model, example, trace_forward(model, example))


def spatial_layer_hint(model: nn.Module, example: Tensor) -> str:
    """A sentence naming the layer (and layout) ``target_layer="auto"`` chooses for ``model`` and ``example``, or the one
    its refusal suggests, with its output shape (``""`` when there is none or the forward pass fails), for error
    messages about a bad target layer.

    The forward pass runs in eval mode without autograd; modes, hooks and the RNG are left as found.

    Example::

        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
        >>> spatial_layer_hint(net, torch.randn(1, 3, 8, 8))
        "For this model and input: e.g. target_layer='1', whose output is (1, 4, 6, 6)."
    """
    from cam_callbacks.capture.state import preserved_rng_state

    try:
        with preserved_rng_state():
            name, _, layout = auto_layer(model, example)
            shape = dict(trace_forward(model, example).outputs).get(name)
    except AutoLayerError as refusal:
        if refusal.suggestion is None:
            return ""
        name, layout, shape = refusal.suggestion.name, refusal.suggestion.layout, None
    except Exception:  # noqa: BLE001 - only a hint: the caller's error is raised either way
        return ""
    whose = "" if shape is None else f", whose output is {shape}"
    return f"For this model and input: e.g. {suggestion(name, layout)}{whose}."


def auto_layer(model: nn.Module, example: Tensor) -> Tuple[str, nn.Module, Optional[TokenGrid]]:
    """``target_layer="auto"``: ``(name, module, layout)``; transformers by ``transformer_layer``, other models by
    ``find_auto_layer`` (layout None). Modes are restored."""
    from cam_callbacks.capture.state import eager, preserved_model_state

    with preserved_model_state(model), eager():
        trace = trace_forward(model, example)
        found = _known_transformer(model, example, trace) if any(is_attention(m) for m in named_modules(model).values()) else None
        if found is not None:
            return found[0], model.get_submodule(found[0]), found[1]
        name, module = _find_in_trace(model, example, trace)
    return name, module, None


def describe_choice(model: nn.Module, name: str, layout: Optional[TokenGrid]) -> str:
    """The sentence that says what ``target_layer="auto"`` chose: the layer, its layout and how to name it instead."""
    how = f"target_layer={name!r}" + (f" and {layout_argument(layout)}" if layout is not None else "")
    return f"target_layer='auto' chose {name!r} of {type(model).__name__} ({describe_layout(layout)}); to fix the choice, pass {how}"


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
    model: nn.Module,
    target_layer: LayersLike,
    example: Tensor,
    reshape: Optional[object] = None,
    choices: Optional[List[str]] = None,
) -> List[Tuple[str, nn.Module]]:
    """Resolve one target layer or a list of them to ``(name, module)`` pairs.

    ``"auto"`` is logged on the ``cam_callbacks`` logger (and, when ``choices`` is given and the choice carries a layout,
    transformer tokens or a channels-last map, the sentence saying what it chose, ``describe_choice``, is appended to
    it for the caller to show: a plain ``(N, C, H, W)`` feature map needs no warning), and refused with ``reshape`` (it chooses
    the layout itself: on transformers it is remembered for the module, see
    ``remembered_layout``); a layer listed twice is refused.
    """
    specs: List[LayerSpec] = list(target_layer) if isinstance(target_layer, (list, tuple)) else [target_layer]  # type: ignore[list-item]
    if not specs:
        raise ValueError("target_layer is an empty list; give a layer name, a module, 'auto' or a non-empty list of them")
    layers: List[Tuple[str, nn.Module]] = []
    for spec in specs:
        if isinstance(spec, str) and spec == "auto" and reshape is not None:
            hint = spatial_layer_hint(model, example)
            raise ValueError(f"target_layer='auto' chooses the layout itself (reshape=None); with reshape= name the layer. {hint}".strip())
        if isinstance(spec, str) and spec == "auto":
            name, module, layout = auto_layer(model, example)
            remember_layout(module, layout)
            said = describe_choice(model, name, layout)
            log.info("cam_callbacks: %s", said)
            if choices is not None and layout is not None:
                choices.append(said)
        else:
            name, module = resolve_named_layer(model, spec)
            remember_layout(module, None)
        if name in (known for known, _ in layers):
            raise ValueError(f"target_layer lists {name!r} twice")
        layers.append((name, module))
    return layers
