"""The batched explanation engine behind :func:`~cam_callbacks.functional` and the callback.

Per chunk of ``batch_size`` images, all requested methods share the passes they need:

- the *main pass*: one forward pass, the part before the target layer without autograd, capturing
  the layer's output; for gradient methods one backward pass through the tail only
  (``torch.autograd.grad``, so no ``param.grad`` changes);
- an *input-gradient pass* (saliency, guided backprop): forward and backward to the input,
  plain and/or guided;
- *perturbation passes* (Score-CAM, Ablation-CAM, Recipro-CAM): batched, memory-bounded forward
  passes of the whole model or of the network's tail (:mod:`cam_callbacks.engine.scorers`).

On top of that, :func:`compute_explanations` fuses several target layers (LayerCAM-style) and
smooths maps over noisy or augmented copies of the images. Everything stays on the model's device.
"""

from __future__ import annotations

import weakref
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Set, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cam_callbacks.capture.hooks import LayerCapture
from cam_callbacks.capture.state import eager, preserved_model_state
from cam_callbacks.capture.guided import input_gradients
from cam_callbacks.capture.layers import cam_class_weights
from cam_callbacks.utils.maps import fuse_layer_maps, minmax_normalize, upsample_and_normalize
from cam_callbacks.methods.registry import CAMMethod, get_method
from cam_callbacks.engine.scorers import ForwardCost, ModelScorer, RowBytes, TailScorer, cached_cost, rows_per_pass, store_cost
from cam_callbacks.capture.layouts import TokenGrid
from cam_callbacks.capture.tail import Tail, tail_from_reference, tail_mismatch
from cam_callbacks.utils.targets import PROBABILITIES, check_target_range

__all__ = ["Explanation", "ExplainOptions", "SMOOTH_CHOICES", "compute_explanations", "model_device"]

#: What ``smooth=`` accepts.
SMOOTH_CHOICES = (None, "noise", "aug")


@dataclass
class Explanation:
    """Maps of several methods for one set of images.

    Attributes:
        maps: Method name -> ``(N, H, W)`` float32 maps in [0, 1].
        logits: ``(N, num_classes)`` logits of the unmodified images (detached).
        targets: ``(N,)`` class index each map explains.
        layer_name: Dotted name of the target layer (several joined by ``"+"`` when fused).
    """

    maps: Dict[str, Tensor]
    logits: Tensor
    targets: Tensor
    layer_name: str


@dataclass(frozen=True)
class ExplainOptions:
    """Everything besides model, images, methods, layer and targets that changes how maps are computed.

    Attributes:
        method_options: Method name -> its options (e.g. ``{"reciprocam": {"gaussian": True}}``).
        reshape: Turns a transformer layer's tokens into a feature map (see :mod:`cam_callbacks.capture.layouts`).
        tail: Your own ``activations -> logits`` callable for the network after the target layer
            (Ablation-CAM, Recipro-CAM); by default it is derived (:func:`~cam_callbacks.capture.tail.derive_tail`).
        perturbation_batch: Rows per perturbation pass; None chooses from the free memory.
        smooth: None, ``"noise"`` (average over ``smooth_samples`` copies with Gaussian noise of
            ``smooth_sigma`` times each image's value range, SmoothGrad-style) or ``"aug"``
            (horizontal flips x ``smooth_scales``, maps mapped back to the image and averaged).
        smooth_samples: Noisy copies for ``smooth="noise"``.
        smooth_sigma: Noise standard deviation relative to each image's ``max - min``.
        smooth_scales: Image scales for ``smooth="aug"``.
        seed: Seed of the noise (a private generator: the global RNG is not used).
        probability: ``"softmax"`` (single-label) or ``"sigmoid"`` (multi-label models): how logits
            become the probabilities Recipro-CAM and the faithfulness metrics use.
    """

    method_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    reshape: Optional[TokenGrid] = None
    tail: Optional[Callable[[Tensor], Tensor]] = None
    perturbation_batch: Optional[int] = None
    smooth: Optional[str] = None
    smooth_samples: int = 8
    smooth_sigma: float = 0.15
    smooth_scales: Tuple[float, ...] = (0.9, 1.0, 1.1)
    seed: int = 0
    probability: str = "softmax"

    def __post_init__(self) -> None:
        if self.probability not in PROBABILITIES:
            raise ValueError(f"probability={self.probability!r} is not valid; choose from {list(PROBABILITIES)}")
        if self.smooth not in SMOOTH_CHOICES:
            raise ValueError(f"smooth={self.smooth!r} is not valid; choose from {list(SMOOTH_CHOICES)}")
        if isinstance(self.smooth_samples, bool) or not isinstance(self.smooth_samples, int) or self.smooth_samples < 1:
            raise ValueError(f"smooth_samples must be a positive int, got {self.smooth_samples!r}")
        if not float(self.smooth_sigma) >= 0:
            raise ValueError(f"smooth_sigma must be >= 0, got {self.smooth_sigma!r}")
        scales = tuple(self.smooth_scales)
        if not scales or any(not float(s) > 0 for s in scales):
            raise ValueError(f"smooth_scales must be a non-empty sequence of positive numbers, got {self.smooth_scales!r}")
        object.__setattr__(self, "smooth_scales", tuple(float(s) for s in scales))
        batch = self.perturbation_batch
        if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
            raise ValueError(f"perturbation_batch must be None or a positive int, got {batch!r}")
        if self.tail is not None and not callable(self.tail):
            raise TypeError(f"tail must be a callable activations -> logits, got {type(self.tail).__name__}")
        if self.reshape is not None and not isinstance(self.reshape, TokenGrid):
            raise TypeError(f"reshape must be None or a TokenGrid, got {type(self.reshape).__name__}")

    def options_for(self, method: CAMMethod) -> Dict[str, Any]:
        return method.resolve_options(self.method_options.get(method.name))


def model_device(model: nn.Module, fallback: torch.device) -> torch.device:
    """The device of the model's first parameter (or buffer), else ``fallback``."""
    for param in model.parameters():
        return param.device
    for buffer in model.buffers():
        return buffer.device
    return fallback


def _check_logits(logits: Any, n: int) -> Tensor:
    if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.shape[0] != n:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"the model must return logits of shape (N, num_classes) = ({n}, C); it returned {shape}")
    return logits


# --- tails, cached per model ----------------------------------------------------------------------------

#: model -> {(layer, input shape, dtype, device, user tail): a tail reusable across calls, or _NO_FX}
_TAILS: "weakref.WeakKeyDictionary[nn.Module, Dict[Tuple[Any, ...], Union[Tail, str]]]" = weakref.WeakKeyDictionary()
_NO_FX = "torch.fx cannot cut this model here"


def _tail_for(model: nn.Module, layer_name: str, layer: nn.Module, x: Tensor, raw: Tensor, logits: Tensor, user_tail: Optional[Callable[[Tensor], Tensor]]) -> Tail:
    """The tail after ``layer_name`` for the chunk ``x``, whose layer output ``raw`` and ``logits`` the main pass produced.

    A derived tail that does not depend on the example images (fx without values crossing the cut) is
    kept for later calls (it refers to the model weakly, so the cache never keeps a model alive) and re-checked on every chunk with one tail pass (cheap next to the copies);
    one that does is derived per chunk. A model torch.fx cannot cut is remembered, so its fallback warns once.
    """
    if user_tail is not None:  # checked on every chunk, never cached (a user's callable may hold the model)
        return tail_from_reference(model, layer_name, layer, x, raw, logits, user_tail)
    key = (layer_name, tuple(x.shape[1:]), x.dtype, x.device)
    cache = _TAILS.setdefault(model, {})
    entry = cache.get(key)
    if isinstance(entry, Tail) and tail_mismatch(entry, raw, logits) is None:
        return entry
    tail = tail_from_reference(model, layer_name, layer, x, raw, logits, try_fx=entry != _NO_FX)
    if tail.example_batch is None:
        cache[key] = tail
    elif tail.mode == "rerun":
        cache[key] = _NO_FX
    return tail


# --- one chunk --------------------------------------------------------------------------------------------


def _run_chunk(
    model: nn.Module, layer_name: str, layer: nn.Module, methods: Sequence[CAMMethod], x: Tensor, targets: Optional[Tensor], options: ExplainOptions
) -> Tuple[Dict[str, Tensor], Tensor, Tensor]:
    """Raw maps of every method for one chunk: ``({name: (n, h, w) or (n, H, W)}, logits, targets)``."""
    needs: Set[str] = set().union(*(m.needs for m in methods))
    inputs: Dict[str, Any] = {}
    logits: Optional[Tensor] = None
    capture: Optional[LayerCapture] = None
    cost: Optional[RowBytes] = None
    perturbs = bool(needs & {"model_scorer", "tail_scorer"})
    if any(m.uses_layer for m in methods) or not needs & {"input_gradients", "guided_gradients"}:
        cost_key = (layer_name, tuple(x.shape[1:]), x.dtype, x.device)
        cost = cached_cost(model, cost_key) if perturbs else None
        meter = ForwardCost(model, layer, x.shape[0]) if perturbs and cost is None else None
        with LayerCapture(layer, layer_name, grad_tail="gradients" in needs, reshape=options.reshape) as capture:
            with torch.no_grad(), meter if meter is not None else nullcontext():  # the capture hook turns autograd on for the tail only
                logits = _check_logits(model(x), x.shape[0])
        if capture.activation is None or capture.raw is None:
            raise RuntimeError(f"target_layer={layer_name!r} was not called during the forward pass")
        if meter is not None:
            cost = meter.result(capture.raw.numel() * capture.raw.element_size())
            store_cost(model, cost_key, cost)
        if targets is None:
            targets = logits.detach().argmax(dim=1)
        else:
            check_target_range(targets, logits.shape[1])
        inputs["activations"] = capture.activation.detach()
        if "gradients" in needs:
            if not logits.requires_grad:
                raise RuntimeError(f"the logits do not depend on target_layer={layer_name!r}; no gradient can be taken")
            (inputs["gradients"],) = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), capture.activation)
        logits = logits.detach()
        if "class_weights" in needs:
            inputs["class_weights"] = cam_class_weights(model, layer_name, inputs["activations"], logits, targets)
    for kind in ("input_gradients", "guided_gradients"):
        if kind in needs:
            inputs[kind], pass_logits, targets = input_gradients(model, x, targets, guided=kind == "guided_gradients")
            logits = pass_logits if logits is None else logits
    assert logits is not None and targets is not None
    inputs.update(images=x, logits=logits, targets=targets, probability=options.probability)
    if perturbs:
        assert cost is not None and capture is not None and capture.raw is not None
        if "model_scorer" in needs:
            inputs["model_scorer"] = ModelScorer(model, rows_per_pass(cost.model, x.device, options.perturbation_batch))
        if "tail_scorer" in needs:
            tail = _tail_for(model, layer_name, layer, x, capture.raw.detach(), logits, options.tail)
            row_bytes = cost.model if tail.mode == "rerun" else cost.tail
            prefix = capture.raw.detach()[:, : options.reshape.prefix_tokens] if options.reshape is not None else None
            rows = rows_per_pass(row_bytes, x.device, options.perturbation_batch)
            inputs["tail_scorer"] = TailScorer(tail, x.shape[0], max(rows, x.shape[0]), options.reshape, prefix)
    raw = {m.name: m.fn(**{key: inputs[key] for key in m.needs}, **options.options_for(m)) for m in methods}
    return raw, logits, targets


def _single_layer(
    model: nn.Module, images: Tensor, methods: Sequence[CAMMethod], layer_name: str, layer: nn.Module,
    targets: Optional[Tensor], batch_size: int, options: ExplainOptions,
) -> Explanation:  # fmt: skip
    device = model_device(model, images.device)
    size = (images.shape[-2], images.shape[-1])
    maps: Dict[str, List[Tensor]] = {m.name: [] for m in methods}
    all_logits: List[Tensor] = []
    all_targets: List[Tensor] = []
    for start in range(0, images.shape[0], batch_size):
        # Cloned outside inference mode: inference tensors (from validation) cannot enter autograd.
        x = images[start : start + batch_size].to(device).clone()
        t = None if targets is None else targets[start : start + batch_size].to(device).clone()
        raw, logits, t = _run_chunk(model, layer_name, layer, methods, x, t, options)
        for name, r in raw.items():
            maps[name].append(upsample_and_normalize(r, size))
        all_logits.append(logits)
        all_targets.append(t)
    return Explanation(
        maps={name: torch.cat(parts) for name, parts in maps.items()},
        logits=torch.cat(all_logits),
        targets=torch.cat(all_targets),
        layer_name=layer_name,
    )


def _fused(
    model: nn.Module, images: Tensor, methods: Sequence[CAMMethod], layers: Sequence[Tuple[str, nn.Module]],
    targets: Optional[Tensor], batch_size: int, options: ExplainOptions,
) -> Explanation:  # fmt: skip
    first = _single_layer(model, images, methods, layers[0][0], layers[0][1], targets, batch_size, options)
    layered = [m for m in methods if m.uses_layer]
    if len(layers) == 1 or not layered:
        return first
    others = [_single_layer(model, images, layered, name, layer, first.targets, batch_size, options) for name, layer in layers[1:]]
    maps = dict(first.maps)
    for method in layered:
        maps[method.name] = fuse_layer_maps([first.maps[method.name], *(e.maps[method.name] for e in others)])
    return Explanation(maps, first.logits, first.targets, "+".join(name for name, _ in layers))


# --- smoothing ---------------------------------------------------------------------------------------------


def _predict(model: nn.Module, images: Tensor, targets: Optional[Tensor], batch_size: int) -> Tuple[Tensor, Tensor]:
    device = model_device(model, images.device)
    parts = []
    with torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            x = images[start : start + batch_size].to(device)
            parts.append(_check_logits(model(x), x.shape[0]))
    logits = torch.cat(parts)
    if targets is None:
        return logits, logits.argmax(dim=1)
    targets = targets.to(logits.device)
    check_target_range(targets, logits.shape[1])
    return logits, targets


def _variants(images: Tensor, options: ExplainOptions) -> Iterator[Tuple[Tensor, Callable[[Tensor], Tensor]]]:
    """``(modified images, map -> map on the original image grid)`` pairs of the smoothing."""
    size = (images.shape[-2], images.shape[-1])
    if options.smooth == "noise":
        generator = torch.Generator(device=images.device).manual_seed(options.seed)
        span = (images.amax(dim=(1, 2, 3), keepdim=True) - images.amin(dim=(1, 2, 3), keepdim=True)).float()
        for _ in range(options.smooth_samples):
            noise = torch.randn(images.shape, generator=generator, device=images.device, dtype=torch.float32)
            yield images + (noise * options.smooth_sigma * span).to(images.dtype), lambda maps: maps
        return
    for flip in (False, True):
        for scale in options.smooth_scales:
            x = images.flip(-1) if flip else images
            if scale != 1.0:
                scaled = (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))
                x = F.interpolate(x, size=scaled, mode="bilinear", align_corners=False)

            def back(maps: Tensor, flip: bool = flip) -> Tensor:
                if tuple(maps.shape[-2:]) != size:
                    maps = F.interpolate(maps.unsqueeze(1), size=size, mode="bilinear", align_corners=False).squeeze(1)
                return maps.flip(-1) if flip else maps

            yield x, back


def _smoothed(
    model: nn.Module, images: Tensor, methods: Sequence[CAMMethod], layers: Sequence[Tuple[str, nn.Module]],
    targets: Optional[Tensor], batch_size: int, options: ExplainOptions,
) -> Explanation:  # fmt: skip
    logits, targets = _predict(model, images, targets, batch_size)
    plain = replace(options, smooth=None)
    totals: Dict[str, Tensor] = {}
    count = 0
    for variant, back in _variants(images, options):
        explanation = _fused(model, variant, methods, layers, targets, batch_size, plain)
        for name, variant_maps in explanation.maps.items():
            mapped = back(variant_maps)
            totals[name] = mapped if name not in totals else totals[name] + mapped
        count += 1
    averaged = {name: minmax_normalize(total / count) for name, total in totals.items()}
    return Explanation(averaged, logits.detach(), targets, "+".join(name for name, _ in layers))


# --- entry point -------------------------------------------------------------------------------------------


def compute_explanations(
    model: nn.Module,
    images: Tensor,
    methods: Sequence[str],
    layer_name: Union[str, Sequence[str]],
    layer: Union[nn.Module, Sequence[nn.Module]],
    targets: Optional[Tensor] = None,
    batch_size: int = 32,
    options: Optional[ExplainOptions] = None,
) -> Explanation:
    """Maps of several methods in chunks of ``batch_size`` images, on the model's device.

    ``layer_name``/``layer`` may be sequences (several target layers, fused LayerCAM-style, see
    :func:`~cam_callbacks.utils.maps.fuse_layer_maps`). The model is put in eval mode for the call and
    restored after; no ``param.grad`` is touched. Results are on the model's device.
    """
    options = options or ExplainOptions()
    resolved = [get_method(name) for name in methods]
    for method in resolved:
        options.options_for(method)  # unknown options fail before any work
    names = [layer_name] if isinstance(layer_name, str) else list(layer_name)
    modules = [layer] if isinstance(layer, nn.Module) else list(layer)
    if not names or len(names) != len(modules):
        raise ValueError(f"give one module per layer name: {len(names)} names, {len(modules)} modules")
    layers = list(zip(names, modules))
    with torch.inference_mode(False), preserved_model_state(model), eager():
        if options.smooth is None:
            return _fused(model, images, resolved, layers, targets, batch_size, options)
        return _smoothed(model, images, resolved, layers, targets, batch_size, options)
