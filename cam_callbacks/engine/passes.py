"""The batched passes behind ``explain`` and the callback.

Per chunk of ``options.batch_size`` images, all requested methods share the passes they need:

- the *main pass*: one forward pass, the part before the target layer without autograd, capturing
  the layer's output; for gradient methods one backward pass through the tail only
  (``torch.autograd.grad``, so no ``param.grad`` changes);
- an *input-gradient pass* (saliency, guided backprop): forward and backward to the input,
  plain and/or guided;
- *perturbation passes* (Score-CAM, Ablation-CAM, Recipro-CAM): batched, memory-bounded forward
  passes of the whole model or of the network's tail (``cam_callbacks.engine.scorers``).

``explain_layers`` runs them chunk by chunk for one or several target layers (fused
LayerCAM-style). Everything stays on the model's device.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

import torch
from torch import Tensor, nn

from cam_callbacks.capture.attention import attention_gradients
from cam_callbacks.capture.bias_gradients import bias_gradients
from cam_callbacks.capture.guided import input_gradients
from cam_callbacks.capture.hooks import LayerCapture, LayerOutputError
from cam_callbacks.capture.layers import cam_class_weights, spatial_layer_hint
from cam_callbacks.capture.layouts import remembered_layout
from cam_callbacks.engine.caches import cached_cost, store_cost, tail_for
from cam_callbacks.engine.layer_gradients import LayerGradients
from cam_callbacks.engine.options import ExplainOptions
from cam_callbacks.engine.result import Explanation
from cam_callbacks.engine.scored import has_own_gradients, method_gradients, target_logit, twice_differentiable
from cam_callbacks.engine.scorers import ForwardCost, ModelScorer, RowBytes, TailScorer, rows_per_pass
from cam_callbacks.methods.registry import OWN_PASS_INPUTS, CAMMethod
from cam_callbacks.utils.maps import fuse_layer_maps, upsample_and_normalize
from cam_callbacks.utils.outputs import logits_of
from cam_callbacks.utils.targets import check_target_classes, check_target_range

#: Target layers as ``(dotted name, module)`` pairs; several are fused LayerCAM-style.
Layers = Sequence[Tuple[str, nn.Module]]


def model_device(model: nn.Module, fallback: torch.device) -> torch.device:
    """The device of the model's first parameter (or buffer), else ``fallback``."""
    for param in model.parameters():
        return param.device
    for buffer in model.buffers():
        return buffer.device
    return fallback


def _with_layer_hint(error: LayerOutputError, model: nn.Module, x: Tensor) -> LayerOutputError:
    """``error`` with a layer (and layout) of this model that works added (``spatial_layer_hint``), when one is found."""
    hint = spatial_layer_hint(model, x[:1])
    return type(error)(f"{error} {hint}") if hint and hint not in str(error) else error


# --- one chunk --------------------------------------------------------------------------------------------


class _LayerPass:
    """What the main pass captured at the target layer for one chunk."""

    def __init__(self, raw: Tensor, logits: Tensor, targets: Tensor, cost: Optional[RowBytes]) -> None:
        self.raw, self.logits, self.targets, self.cost = raw, logits, targets, cost


def _main_pass(
    model: nn.Module,
    layer_name: str,
    layer: nn.Module,
    methods: Sequence[CAMMethod],
    x: Tensor,
    targets: Optional[Tensor],
    options: ExplainOptions,
    inputs: Dict[str, Any],
    own: Dict[str, Dict[str, Tensor]],
) -> _LayerPass:
    """Forward pass capturing the layer (and gradients of the target logits through the tail); fills ``inputs``, and
    ``own`` with the gradients of methods that have a score of their own (``cam_callbacks.engine.scored``)."""
    needs: Set[str] = set().union(*(m.needs for m in methods))
    perturbs = bool(needs & {"model_scorer", "tail_scorer"})
    cost_key = (layer_name, tuple(x.shape[1:]), x.dtype, x.device)
    cost = cached_cost(model, cost_key) if perturbs else None
    meter = ForwardCost(model, layer, x.shape[0]) if perturbs and cost is None else None
    layout = options.token_grid or remembered_layout(layer)  # the layout "auto" chose for a transformer layer
    try:
        with LayerCapture(layer, layer_name, grad_tail=bool(needs & {"gradients", "hessian_vector"}), reshape=layout, input_shape=tuple(x.shape)) as capture:
            second_order = twice_differentiable() if "hessian_vector" in needs else nullcontext()
            with torch.no_grad(), meter if meter is not None else nullcontext(), second_order:  # the hook turns autograd on for the tail
                logits = logits_of(model(x), options.output_transform, x.shape[0])
    except LayerOutputError as error:
        raise _with_layer_hint(error, model, x) from None
    if capture.activation is None or capture.raw is None:
        raise RuntimeError(f"target_layer={layer_name!r} was not called during the forward pass")
    if meter is not None:
        cost = meter.result(capture.raw.numel() * capture.raw.element_size())
        store_cost(model, cost_key, cost)
    check_target_classes(options.target_classes, logits.shape[1])
    if targets is None:
        targets = logits.detach().argmax(dim=1)
    else:
        check_target_range(targets, logits.shape[1])
    inputs["activations"] = capture.activation.detach()
    shared = any("gradients" in m.needs and not has_own_gradients(m) for m in methods)
    own_methods = [m for m in methods if has_own_gradients(m)]
    if (shared or own_methods) and not logits.requires_grad:
        raise RuntimeError(f"the logits do not depend on target_layer={layer_name!r}; no gradient can be taken")
    if shared:
        score = target_logit(logits, targets).sum()
        (inputs["gradients"],) = torch.autograd.grad(score, capture.activation, retain_graph=bool(own_methods))
    if own_methods:
        resolved = {m.name: options.options_for(m) for m in own_methods}
        own.update(method_gradients(own_methods, resolved, logits, targets, capture.activation))
    logits = logits.detach()
    if "class_weights" in needs:
        inputs["class_weights"] = cam_class_weights(model, layer_name, inputs["activations"], logits, targets)
    return _LayerPass(capture.raw.detach(), logits, targets, cost)


def _scorers(model: nn.Module, layer_name: str, layer: nn.Module, needs: Set[str], x: Tensor, captured: _LayerPass, options: ExplainOptions) -> Dict[str, Any]:
    """The perturbation scorers the methods ask for, sized to the free memory of the model's device."""
    assert captured.cost is not None
    scorers: Dict[str, Any] = {}
    if "model_scorer" in needs:
        scorers["model_scorer"] = ModelScorer(model, rows_per_pass(captured.cost.model, x.device, options.perturbation_batch), options.output_transform)
    if "tail_scorer" in needs:
        tail = tail_for(model, layer_name, layer, x, captured.raw, captured.logits, options.tail, options.output_transform)
        row_bytes = captured.cost.model if tail.mode == "rerun" else captured.cost.tail
        grid = options.token_grid or remembered_layout(layer)
        prefix = captured.raw[:, : grid.prefix_tokens] if grid is not None else None
        rows = rows_per_pass(row_bytes, x.device, options.perturbation_batch)
        scorers["tail_scorer"] = TailScorer(tail, x.shape[0], max(rows, x.shape[0]), grid, prefix)
    return scorers


def _input_gradients(model: nn.Module, x: Tensor, targets: Optional[Tensor], guided: bool, options: ExplainOptions) -> Tuple[Tensor, Tensor, Tensor]:
    """``input_gradients``, with the width of multi-hot targets checked first (``options.target_classes``)."""
    try:
        gradients, logits, targets = input_gradients(model, x, targets, guided=guided, output_transform=options.output_transform)
    except ValueError:
        if options.target_classes is not None:  # labels beyond the model's classes: say that the width is wrong
            with torch.no_grad():
                check_target_classes(options.target_classes, logits_of(model(x[:1]), options.output_transform, 1).shape[1])
        raise
    check_target_classes(options.target_classes, logits.shape[1])
    return gradients, logits, targets


def _bias_gradients(model: nn.Module, x: Tensor, targets: Optional[Tensor], options: ExplainOptions) -> Tuple[Tensor, List[Tensor], Tensor, Tensor]:
    """``bias_gradients`` with the multi-hot width checked."""
    input_grads, terms, logits, targets = bias_gradients(model, x, targets, options.output_transform)
    check_target_classes(options.target_classes, logits.shape[1])
    return input_grads, terms, logits, targets


def run_chunk(
    model: nn.Module,
    layer_name: str,
    layer: nn.Module,
    methods: Sequence[CAMMethod],
    x: Tensor,
    targets: Optional[Tensor],
    options: ExplainOptions,
) -> Tuple[Dict[str, Tensor], Tensor, Tensor]:
    """Raw maps of every method for one chunk: ``({name: (n, h, w) or (n, H, W)}, logits, targets)``."""
    needs: Set[str] = set().union(*(m.needs for m in methods))
    inputs: Dict[str, Any] = {}
    own: Dict[str, Dict[str, Tensor]] = {}
    logits: Optional[Tensor] = None
    captured: Optional[_LayerPass] = None
    if any(m.uses_layer for m in methods) or not needs & set(OWN_PASS_INPUTS):
        captured = _main_pass(model, layer_name, layer, methods, x, targets, options, inputs, own)
        logits, targets = captured.logits, captured.targets
    if "attention_gradients" in needs:  # LeGrad
        inputs["attention_gradients"], inputs["patch_grid"], pass_logits, targets = attention_gradients(model, x, targets, options.output_transform)
        check_target_classes(options.target_classes, pass_logits.shape[1])
        logits = pass_logits if logits is None else logits
    if "bias_gradients" in needs:  # FullGrad: the input gradient comes from the same pass
        inputs["input_gradients"], inputs["bias_gradients"], pass_logits, targets = _bias_gradients(model, x, targets, options)
        logits = pass_logits if logits is None else logits
    for kind in ("input_gradients", "guided_gradients"):
        if kind in needs and kind not in inputs:
            inputs[kind], pass_logits, targets = _input_gradients(model, x, targets, kind == "guided_gradients", options)
            logits = pass_logits if logits is None else logits
    assert logits is not None and targets is not None
    inputs.update(images=x, logits=logits, targets=targets, probability=options.probability)
    if needs & {"model_scorer", "tail_scorer"}:
        assert captured is not None
        inputs.update(_scorers(model, layer_name, layer, needs, x, captured, options))
    if "layer_gradients" in needs:
        inputs["layer_gradients"] = LayerGradients(model, layer_name, layer, options.token_grid or remembered_layout(layer), options.output_transform)
    raw = {}
    for m in methods:
        available = {**inputs, **own.get(m.name, {})}
        raw[m.name] = m.fn(**{key: available[key] for key in m.needs}, **m.fn_options(options.options_for(m)))
    return raw, logits, targets


# --- all chunks, one or several layers --------------------------------------------------------------------


def _single_layer(
    model: nn.Module,
    images: Tensor,
    methods: Sequence[CAMMethod],
    layer_name: str,
    layer: nn.Module,
    targets: Optional[Tensor],
    options: ExplainOptions,
) -> Explanation:
    device = model_device(model, images.device)
    size = (images.shape[-2], images.shape[-1])
    maps: Dict[str, List[Tensor]] = {m.name: [] for m in methods}
    all_logits: List[Tensor] = []
    all_targets: List[Tensor] = []
    step = options.batch_size
    for start in range(0, images.shape[0], step):
        # Cloned outside inference mode: inference tensors (from validation) cannot enter autograd.
        x = images[start : start + step].to(device).clone()
        t = None if targets is None else targets[start : start + step].to(device).clone()
        raw, logits, t = run_chunk(model, layer_name, layer, methods, x, t, options)
        for name, r in raw.items():
            maps[name].append(upsample_and_normalize(r, size))
        all_logits.append(logits)
        all_targets.append(t)
    return Explanation(
        maps={name: torch.cat(parts) for name, parts in maps.items()},
        logits=torch.cat(all_logits),
        targets=torch.cat(all_targets),
        layer_name=layer_name,
        layers=[(layer_name, layer)],
    )


def explain_layers(
    model: nn.Module, images: Tensor, methods: Sequence[CAMMethod], layers: Layers, targets: Optional[Tensor], options: ExplainOptions
) -> Explanation:
    """Maps of ``methods`` at the first layer; with several layers, the layer-using methods' maps fused LayerCAM-style
    (or by the method's own ``fuse_layers``, e.g. RefineCAM's product)."""
    first = _single_layer(model, images, methods, layers[0][0], layers[0][1], targets, options)
    layered = [m for m in methods if m.uses_layer]
    if len(layers) == 1 or not layered:
        return first
    others = [_single_layer(model, images, layered, name, layer, first.targets, options) for name, layer in layers[1:]]
    maps = dict(first.maps)
    for method in layered:
        fuse = method.fuse_layers or fuse_layer_maps
        maps[method.name] = fuse([first.maps[method.name], *(e.maps[method.name] for e in others)])
    return Explanation(maps, first.logits, first.targets, "+".join(name for name, _ in layers), list(layers))
