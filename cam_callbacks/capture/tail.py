"""The *tail* of a classifier: its logits as a function of one layer's output.

Perturbation methods (Recipro-CAM, Ablation-CAM) evaluate the network many times on modified copies
of the target layer's feature map. ``derive_tail`` builds a callable ``tail`` with
``tail(A) == model(x)`` when the target layer's output is replaced by ``A``, without re-running the
layers before the target layer, and where ``A`` may hold several modified copies per image.

How the tail is obtained (``Tail.mode``):

- ``"fx"``: the model is traced with ``torch.fx``, the target layer kept as one node (also a
  container such as ``layer4`` or ``features``); the tail is every node that depends on the layer's
  output. Values that cross the cut from the head (a skip connection from before the target layer)
  are computed once from ``example`` at derive time and repeated to match the copies. The tail calls
  the model's own modules and parameters, so it follows in-place weight updates and train/eval modes
  (the tracing machinery is in ``cam_callbacks.capture.tail_fx``).
- ``"rerun"``: the fallback when tracing fails (data-dependent control flow, ...). Each call runs the
  whole model on the example images, repeated, with a forward hook that replaces the layer's output.
- ``"user"``: a callable passed as ``tail=``.

Every tail is checked at derive time: on the target layer's real output for ``example`` it must
reproduce the model's logits.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Tuple

import torch
from torch import Tensor, nn

from cam_callbacks.capture.layers import resolve_named_layer
from cam_callbacks.capture.state import eager, preserved_model_state
from cam_callbacks.capture.tail_fx import FxTail, trace_cut
from cam_callbacks.utils.outputs import OutputTransform, logits_of

#: Relative and absolute (times the largest logit magnitude, at least 1) tolerance of the derive-time check.
RTOL = 1e-4
ATOL = 1e-5


@dataclass
class Tail:
    """The part of a model after its target layer, as a function of that layer's output.

    Attributes:
        fn: ``activations (M, C, h, w) -> logits (M, num_classes)``. Infers the number of copies per
            example image as ``M // N`` where values cross the cut (see ``example_batch``).
        mode: ``"fx"`` (a graph derived with torch.fx), ``"rerun"`` (the whole model re-run with the
            layer's output replaced: a full forward pass of ``M`` images per call) or ``"user"``.
        layer_name: Dotted name of the target layer.
        example_batch: ``N``, the number of example images, when the rows of ``activations`` are tied
            to them: values crossing the cut (mode ``"fx"``) or the re-run images (mode ``"rerun"``).
            ``None`` when every row is computed on its own and ``M`` is free.

    Call it as ``tail(activations, repeats)``: ``activations`` holds ``repeats`` consecutive copies per
    example image (rows ``[i * repeats:(i + 1) * repeats]`` belong to image ``i``). ``repeats`` is only
    checked where ``example_batch`` is set; a ``"user"`` tail receives ``activations`` alone.
    """

    fn: Callable[[Tensor], Tensor]
    mode: str
    layer_name: str = ""
    example_batch: Optional[int] = None

    def __call__(self, activations: Tensor, repeats: int = 1) -> Tensor:
        """Logits ``(M, num_classes)`` for ``activations`` ``(M, C, h, w)`` in place of the layer's output."""
        if not isinstance(activations, Tensor):
            raise TypeError(f"activations must be a torch.Tensor, got {type(activations).__name__}")
        if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
            raise ValueError(f"repeats must be a positive int, got {repeats!r}")
        if self.example_batch is not None and activations.shape[0] != repeats * self.example_batch:
            raise ValueError(
                f"activations has {activations.shape[0]} rows, but repeats={repeats} copies of the {self.example_batch} "
                f"example images need {repeats * self.example_batch} (rows [i*repeats:(i+1)*repeats] belong to image i): "
                f"this tail ({self.mode!r}) reuses values computed from the example images."
            )
        return self.fn(activations)


# --- the fallback -----------------------------------------------------------------------------------


class _RerunTail:
    """The whole model on the example images (each repeated ``M // N`` times), the layer's output replaced.

    Costs one full forward pass of ``M`` images per call: the layers before the target layer run
    again for every copy. They run without autograd; the grad mode of the call applies from the layer on.
    """

    def __init__(self, model: nn.Module, layer: nn.Module, layer_name: str, example: Tensor) -> None:
        self.model = model
        self.layer = layer
        self.layer_name = layer_name
        self.example = example

    def __call__(self, activations: Tensor) -> Tensor:
        n, rows = self.example.shape[0], activations.shape[0]
        if rows % n:
            raise ValueError(f"activations has {rows} rows, not a multiple of the {n} example images the tail re-runs")
        repeats = rows // n
        images = self.example if repeats == 1 else self.example.repeat_interleave(repeats, dim=0)
        grad_enabled = torch.is_grad_enabled()

        def replace(module: nn.Module, inputs: Any, output: Any) -> Tensor:
            if not isinstance(output, Tensor) or output.shape != activations.shape:
                shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
                raise ValueError(
                    f"activations of shape {tuple(activations.shape)} cannot replace the output of {self.layer_name!r}, which is {shape} for {rows} images"
                )
            torch.set_grad_enabled(grad_enabled)  # the surrounding no_grad block restores it on exit
            return activations.clone()  # the model may write into it in place

        handle = self.layer.register_forward_hook(replace)
        try:
            with torch.no_grad():
                return self.model(images)
        finally:
            handle.remove()


class _Transformed:
    """A derived tail whose model returns a dict, tuple or object: its logits, taken by ``output_transform``.

    Other attributes are those of the wrapped tail (an ``FxTail``'s ``graph_module``, ...).
    """

    def __init__(self, fn: Callable[[Tensor], Any], output_transform: OutputTransform) -> None:
        self.fn = fn
        self.output_transform = output_transform

    def __call__(self, activations: Tensor) -> Tensor:
        return logits_of(self.fn(activations), self.output_transform)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["fn"], name)


def _transformed(fn: Callable[[Tensor], Any], output_transform: OutputTransform) -> Callable[[Tensor], Tensor]:
    return fn if output_transform is None else _Transformed(fn, output_transform)


# --- derive_tail ----------------------------------------------------------------------------------


def _reference(model: nn.Module, layer: nn.Module, layer_name: str, example: Tensor, output_transform: OutputTransform = None) -> Tuple[Tensor, Tensor]:
    """The layer's output (a private copy) and the logits of one forward pass of ``example``."""
    outputs: List[Any] = []

    def capture(module: nn.Module, inputs: Any, output: Any) -> None:
        outputs.append(output.detach().clone() if isinstance(output, Tensor) else output)

    handle = layer.register_forward_hook(capture)
    try:
        output = model(example)
    finally:
        handle.remove()
    if len(outputs) != 1:
        raise ValueError(
            f"layer {layer_name!r} is called {len(outputs)} times in one forward pass of {type(model).__name__}; "
            "a tail is defined only for a layer called exactly once. Choose another layer."
        )
    if not isinstance(outputs[0], Tensor):
        raise ValueError(f"layer {layer_name!r} outputs {type(outputs[0]).__name__}; a tail needs a layer that outputs a tensor")
    logits = logits_of(output, output_transform)
    if logits.dim() == 0 or logits.shape[0] != example.shape[0]:
        raise ValueError(f"the model must return logits of shape (N, num_classes) with N = {example.shape[0]}; it returned {tuple(logits.shape)}")
    return outputs[0], logits.detach()


def tail_mismatch(fn: Callable[[Tensor], Tensor], activations: Tensor, logits: Tensor) -> Optional[str]:
    """None if ``fn(activations)`` reproduces ``logits``, else what differs (``fn`` gets a copy: it may write into it).

    The check every tail passes at derive time: each logit within ``ATOL`` times the largest finite
    logit magnitude (at least 1) plus ``RTOL`` times its own magnitude; NaN logits must be NaN in both.

    Example::

        >>> logits = torch.tensor([[1.0, 2.0]])
        >>> tail_mismatch(lambda a: a * 2, torch.tensor([[0.5, 1.0]]), logits) is None
        True
        >>> tail_mismatch(lambda a: a, torch.tensor([[0.5, 1.0]]), logits)
        "its logits differ from the model's by up to 1 (largest logit 2)"
    """
    out = fn(activations.clone())
    if not isinstance(out, Tensor):
        return f"it returned {type(out).__name__}, not a tensor"
    if out.shape != logits.shape:
        return f"it returned shape {tuple(out.shape)} where the model returns {tuple(logits.shape)}"
    out = out.detach().to(logits.dtype)
    finite = logits[torch.isfinite(logits)]
    scale = (finite.abs().max() if finite.numel() else logits.new_tensor(1.0)).clamp_min(1.0)
    error = (out - logits).abs()
    bad = ~(error <= ATOL * scale + RTOL * logits.abs()) & ~(out.isnan() & logits.isnan())
    if bool(bad.any()):
        return f"its logits differ from the model's by up to {float(error.nan_to_num(float('inf')).max()):.3g} (largest logit {float(scale):.3g})"
    return None


def _fx_tail(
    model: nn.Module, layer_name: str, example: Tensor, activation: Tensor, logits: Tensor, output_transform: OutputTransform = None
) -> Tuple[Optional[Tail], str]:
    """The fx tail, checked, or ``(None, why not)``."""
    try:
        cut = trace_cut(model, layer_name)
    except Exception as error:  # noqa: BLE001 - any failure means no fx tail; the reason is reported with the fallback
        return None, f"torch.fx cannot trace it: {type(error).__name__}: {error}"
    values: Tuple[Any, ...] = ()
    try:
        traced = FxTail.from_cut(model, layer_name, cut, example)
        values, fn = traced.values, _transformed(traced, output_transform)
        tail = Tail(fn, "fx", layer_name, example.shape[0] if any(traced.batched) else None)
        problem = tail_mismatch(fn, activation, logits)
    except Exception as error:  # noqa: BLE001 - likewise
        problem = f"{type(error).__name__}: {error}"
    if not problem and values:  # values from the head must follow a larger batch
        try:
            problem = tail_mismatch(fn, activation.repeat_interleave(2, dim=0), logits.repeat_interleave(2, dim=0))
        except Exception as error:  # noqa: BLE001 - likewise
            problem = f"{type(error).__name__}: {error}"
        problem = problem and f"with 2 copies per image, {problem}"
    if problem:
        return None, f"the traced tail does not reproduce the model: {problem}"
    return tail, ""


def derive_tail(
    model: nn.Module,
    layer_name: str,
    example: Tensor,
    tail: Optional[Callable[[Tensor], Tensor]] = None,
    output_transform: OutputTransform = None,
) -> Tail:
    """The part of ``model`` after ``layer_name``: logits as a function of the layer's output.

    Args:
        model: A classifier returning ``(N, num_classes)`` logits.
        layer_name: Dotted name of the target layer (as in ``model.named_modules()``), a leaf such as
            ``"layer4.1.conv2"`` or a container such as ``"layer4"`` or ``"features"``; it must be
            called exactly once per forward pass.
        example: An input batch ``(N, ...)`` as the model receives it. Values that cross the cut
            (skip connections from before the layer) are computed from it once, and the
            ``"rerun"`` fallback re-runs it; the returned tail then serves these ``N`` images only.
        tail: Your own ``activations -> logits`` callable instead of a derived one (mode ``"user"``).
        output_transform: Where the logits are in what the model returns (a dict, tuple or object; see
            ``logits_of``); a derived tail returns them. Not applied to ``tail``.

    Returns:
        A ``Tail``. Mode ``"fx"`` when torch.fx can trace the model; otherwise ``"rerun"`` (with
        a warning), which costs a full forward pass of ``repeats * N`` images per call instead of
        the tail alone.

    Raises:
        ValueError: Unknown layer, a layer not called exactly once, or a tail (derived or
            ``tail=``) that does not reproduce the model's logits on ``example`` in eval mode.

    The check runs in eval mode without autograd; the model is left as found (modes,
    ``requires_grad``, ``param.grad``, no hooks), also when it raises. Works under
    ``torch.inference_mode()``: the derivation runs with inference mode off, so the stored values
    are ordinary tensors. The ``"fx"`` tail uses the model's own modules and parameters, so it
    follows in-place weight updates (optimizer steps, ``load_state_dict``) and train/eval modes;
    the cross-cut values, though, are a snapshot of ``example`` in eval mode: derive a new tail after
    updating the weights before the layer, replacing submodules, or moving the model.

    Example::

        >>> class Net(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.stem, self.block, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1), nn.Linear(4, 2)
        ...     def forward(self, x):
        ...         s = self.stem(x)
        ...         return self.fc((self.block(s) + s).mean(dim=(2, 3)))  # a skip connection across the cut
        >>> net, x = Net(), torch.randn(2, 3, 8, 8)
        >>> tail = derive_tail(net, "block", x)
        >>> tail.mode, tail.example_batch
        ('fx', 2)
        >>> tail(torch.randn(6, 4, 8, 8), repeats=3).shape  # 3 modified copies per image
        torch.Size([6, 2])
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(example, Tensor) or example.dim() == 0:
        raise TypeError(f"example must be a batched input tensor (N, ...), got {type(example).__name__}")
    if tail is not None and not callable(tail):
        raise TypeError(f"tail must be a callable activations -> logits, got {type(tail).__name__}")
    name, layer = resolve_named_layer(model, layer_name)
    with torch.inference_mode(False):
        example = example.detach().clone()
        with preserved_model_state(model), torch.no_grad(), eager():
            activation, logits = _reference(model, layer, name, example, output_transform)
            return tail_from_reference(model, name, layer, example, activation, logits, tail, output_transform=output_transform)


def tail_from_reference(
    model: nn.Module,
    layer_name: str,
    layer: nn.Module,
    example: Tensor,
    activation: Tensor,
    logits: Tensor,
    tail: Optional[Callable[[Tensor], Tensor]] = None,
    try_fx: bool = True,
    output_transform: OutputTransform = None,
) -> Tail:
    """``derive_tail`` for a caller that already ran the model on ``example`` (no extra forward pass).

    Args:
        model, layer_name, example, tail: As in ``derive_tail``; ``layer`` is the module named ``layer_name``.
        activation: The layer's output for ``example`` (a private copy), in the mode the tail will be called in.
        logits: The model's logits for ``example`` in that forward pass.
        try_fx: False skips the torch.fx attempt (the caller knows it fails) and warns nothing.
        output_transform: As in ``derive_tail``.

    Call it in eval mode without autograd, with inference mode off. The returned tail is checked against
    ``logits`` as in ``derive_tail``.
    """
    advice = "Pass tail= (a callable activations -> logits for the part of the model after the layer)."
    if tail is not None:
        result = Tail(tail, "user", layer_name)
        problem = tail_mismatch(tail, activation, logits)
        if problem:
            raise ValueError(f"tail= does not reproduce {type(model).__name__} after layer {layer_name!r}: {problem}")
        return result
    if try_fx:
        derived, reason = _fx_tail(model, layer_name, example, activation, logits, output_transform)
        if derived is not None:
            return derived
        warnings.warn(
            f"derive_tail: no automatic tail for {type(model).__name__} after {layer_name!r} ({reason}). Falling back to "
            f"re-running the whole model with the layer's output replaced, which is slower: every call runs the layers "
            f"before {layer_name!r} again for each copy. {advice}",
            stacklevel=3,
        )
    rerun = Tail(_transformed(_RerunTail(model, layer, layer_name, example), output_transform), "rerun", layer_name, example.shape[0])
    problem = tail_mismatch(rerun.fn, activation, logits)
    if problem:
        raise ValueError(f"the derived tail does not reproduce {type(model).__name__} after layer {layer_name!r}: {problem}. {advice}")
    return rerun
