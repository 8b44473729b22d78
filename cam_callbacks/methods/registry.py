"""The registry of CAM methods: every method is a pure function registered by name.

A method is a small function of tensors captured at the target layer. It returns the *raw* map at
feature resolution ``(N, h, w)``; upsampling and normalisation happen in
``cam_callbacks.utils.maps.upsample_and_normalize``, so the maths can be tested alone. The
built-in methods live in one module per family: ``activation`` (CAM,
Eigen-CAM), ``gradient`` (Grad-CAM and its variants),
``perturbation`` (Score-CAM, Ablation-CAM, Recipro-CAM) and
``input_gradient`` (saliency, guided backpropagation, Guided Grad-CAM),
``scored`` (Shapley-CAM, Finer-CAM: scores of their own, second-order gradients),
``full_gradient`` (FullGrad) and ``transformer`` (LeGrad).

The inputs a method may ask for (by naming them in ``needs``):

- ``activations``: ``(N, K, h, w)``, the target layer's output.
- ``gradients``: ``(N, K, h, w)``, d(target logit) / d(activations).
- ``class_weights``: ``(N, K)``, the row of the final linear layer for each image's target
  class (CAM only).
- ``images``: ``(N, C, H, W)``, the input batch as the model receives it.
- ``logits``: ``(N, classes)`` logits of the unmodified images; ``targets``: ``(N,)`` the explained classes.
- ``model_scorer``: a ``ModelScorer``, ``(count, build) -> (count, classes)``
  logits of the whole model on rows ``build(start, stop)`` produced chunk by chunk (Score-CAM).
- ``tail_scorer``: a ``TailScorer``, ``(copies, build) -> (N, copies, classes)``
  logits of the network after the target layer on modified feature maps ``build(start, stop)`` of
  shape ``(N, stop - start, K, h, w)`` (Ablation-CAM, Recipro-CAM).
- ``probability``: ``"softmax"`` or ``"sigmoid"`` (multi-label models), how logits become class
  probabilities (``cam_callbacks.utils.targets.probabilities``).
- ``input_gradients`` / ``guided_gradients``: ``(N, C, H, W)``, d(target logit) / d(images), plain or
  through guided-backpropagation ReLUs. Methods built on them return maps at input resolution.
- ``layer_gradients``: a ``LayerGradients``, ``(images, targets) -> (M, K, h, w)``
  gradients of the target logits at the target layer for images the method builds (Smooth Grad-CAM++'s noisy copies).
- ``hessian_vector``: ``(N, K, h, w)``, the Hessian of the score w.r.t. the activations applied to the
  activations, ``H A`` (Shapley-CAM); 0 where the tail is piecewise linear in them.
- ``bias_gradients``: a list of ``(N, K_l, h_l, w_l)`` tensors, ``bias_l * d score / d output_l`` for every
  ``Conv2d``/``BatchNorm2d`` with a bias (a BatchNorm's folded bias ``beta - mean * gamma / sqrt(var + eps)``),
  in forward order, from one forward/backward pass of the whole model (FullGrad); with it ``input_gradients``
  comes from the same pass.
- ``attention_gradients``: ``(N, layers, patches)`` LeGrad relevances of a vision transformer's blocks (the
  positive gradients of each block's class score w.r.t. its attention probabilities, averaged over heads and
  queries, prefix keys dropped), with ``patch_grid`` ``(h, w)``.

A method may also name a *score* (``score=``): a function ``(logits, targets, **options) -> (N,)`` whose
gradients replace those of the target logit in ``gradients`` and ``hessian_vector`` for that method only
(Finer-CAM's contrast with similar classes, Shapley-CAM's ReST). Options go to the function that names them
(``fn``, ``score`` or both).

A method may also take keyword *options* with defaults (``options={"gaussian": False}``), which
callers set with ``method_options``.

With several target layers (``target_layer=[...]``) a method's maps of the layers (each at the input size, min-max
normalised) are fused LayerCAM-style (``fuse_layer_maps``) unless it names its own
fusion (``fuse_layers=``, a function of the list of ``(N, H, W)`` maps, RefineCAM's product); ``min_layers=``
refuses fewer target layers than a method needs.

Adding a method is one function plus the ``register_method`` decorator (in its family's module
for a built-in method, with a reference test)::

    @register_method("mycam", needs=("activations", "gradients"), summary="...")
    def mycam(activations, gradients):
        return torch.relu((gradients.amax((2, 3), keepdim=True) * activations).sum(1))

``unregister_method`` removes one again (e.g. a method registered by a test).
"""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from torch import Tensor

#: Every input a method may name in ``needs`` (see the module docstring).
KNOWN_INPUTS = (
    "activations",
    "gradients",
    "class_weights",
    "images",
    "logits",
    "targets",
    "model_scorer",
    "tail_scorer",
    "input_gradients",
    "guided_gradients",
    "probability",
    "layer_gradients",
    "hessian_vector",
    "bias_gradients",
    "attention_gradients",
    "patch_grid",
)
#: Inputs that come from the target layer: a method needing none of them ignores ``target_layer``.
LAYER_INPUTS = ("activations", "gradients", "class_weights", "tail_scorer", "layer_gradients", "hessian_vector")
#: Inputs computed by a pass of their own over the whole model (no target layer).
OWN_PASS_INPUTS = ("input_gradients", "guided_gradients", "bias_gradients", "attention_gradients")


@dataclass(frozen=True)
class CAMMethod:
    """A registered CAM method.

    Attributes:
        name: The registry name (what ``method=`` accepts).
        fn: Pure function returning the raw ``(N, h, w)`` map.
        needs: Names of the captured tensors ``fn`` takes as keyword arguments.
        summary: One line for documentation and error messages.
        options: Keyword options of ``fn`` (and ``score``) and their defaults.
        score: None (the target logit) or ``(logits, targets, **options) -> (N,)``, the score whose gradients
            this method's ``gradients`` and ``hessian_vector`` are.
        check_options: None, or a function of the resolved options that raises a ValueError for invalid values
            (run by ``resolve_options``, so bad values fail when the options are built, before any work).
        fuse_layers: None (several target layers are fused LayerCAM-style), or how this method combines its maps of
            several target layers: a function of the list of ``(N, H, W)`` maps (one per layer, in the order given,
            each at the input size and min-max normalised) returning the ``(N, H, W)`` map.
        min_layers: The fewest target layers the method works with (2 for a method that combines layers).
    """

    name: str
    fn: Callable[..., Tensor]
    needs: Tuple[str, ...]
    summary: str
    options: Mapping[str, Any] = field(default_factory=dict)
    score: Optional[Callable[..., Tensor]] = None
    check_options: Optional[Callable[[Mapping[str, Any]], None]] = None
    fuse_layers: Optional[Callable[[Sequence[Tensor]], Tensor]] = None
    min_layers: int = 1

    @property
    def needs_gradients(self) -> bool:
        return "gradients" in self.needs

    @property
    def uses_layer(self) -> bool:
        """Whether the map depends on the target layer (False for saliency and guided backprop)."""
        return any(n in LAYER_INPUTS for n in self.needs)

    def resolve_options(self, given: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
        """The defaults updated with ``given``; unknown names raise, listing the valid ones."""
        given = dict(given or {})
        unknown = sorted(set(given) - set(self.options))
        if unknown:
            valid = sorted(self.options) or "none"
            raise ValueError(f"method {self.name!r} has no option(s) {unknown}; its options are {valid}")
        for key, value in given.items():
            default = self.options[key]
            if isinstance(default, bool) and not isinstance(value, bool):
                raise ValueError(f"method {self.name!r} option {key!r} must be True or False, got {value!r}")
        resolved = {**self.options, **given}
        if self.check_options is not None:
            self.check_options(resolved)
        return resolved

    def fn_options(self, resolved: Mapping[str, Any]) -> Dict[str, Any]:
        """The options among ``resolved`` that ``fn`` takes (all of them when it has ``**kwargs``)."""
        return _accepted(self.fn, resolved)

    def score_options(self, resolved: Mapping[str, Any]) -> Dict[str, Any]:
        """The options among ``resolved`` that ``score`` takes."""
        return {} if self.score is None else _accepted(self.score, resolved)


def _accepted(fn: Callable[..., Any], options: Mapping[str, Any]) -> Dict[str, Any]:
    parameters = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return dict(options)
    return {key: value for key, value in options.items() if key in parameters}


_REGISTRY: Dict[str, CAMMethod] = {}


def register_method(
    name: str,
    *,
    needs: Tuple[str, ...],
    summary: str = "",
    options: Optional[Mapping[str, Any]] = None,
    score: Optional[Callable[..., Tensor]] = None,
    check_options: Optional[Callable[[Mapping[str, Any]], None]] = None,
    fuse_layers: Optional[Callable[[Sequence[Tensor]], Tensor]] = None,
    min_layers: int = 1,
) -> Callable[[Callable[..., Tensor]], Callable[..., Tensor]]:
    """Decorator registering ``fn`` as CAM method ``name``.

    Args:
        name: Registry name, lower case.
        needs: Which captured tensors the function takes (see module docstring).
        summary: One-line description.
        options: Keyword options of ``fn`` (or ``score``) with their defaults.
        score: The score differentiated for ``gradients``/``hessian_vector`` instead of the target logit:
            ``(logits, targets, **options) -> (N,)`` (see the module docstring).
        check_options: Raises a ValueError for invalid option values (given the resolved options).
        fuse_layers: How the method combines its maps of several target layers: a function of the list of
            ``(N, H, W)`` maps (one per layer, each at the input size, min-max normalised) returning one
            ``(N, H, W)`` map; None: LayerCAM's fusion (``fuse_layer_maps``).
        min_layers: The fewest target layers the method accepts; fewer are refused with a message saying to pass
            ``target_layer=[...]``.

    Raises:
        ValueError: If the name is taken, ``needs`` names an unknown input, or ``min_layers`` is not a positive int.
    """
    unknown = [n for n in needs if n not in KNOWN_INPUTS]
    if unknown:
        raise ValueError(f"register_method: unknown needs {unknown}; valid inputs are {list(KNOWN_INPUTS)}")
    if isinstance(min_layers, bool) or not isinstance(min_layers, int) or min_layers < 1:
        raise ValueError(f"register_method: min_layers must be a positive int, got {min_layers!r}")

    def decorator(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        if name in _REGISTRY:
            raise ValueError(f"register_method: a method named {name!r} is already registered")
        method = CAMMethod(
            name=name,
            fn=fn,
            needs=tuple(needs),
            summary=summary,
            options=dict(options or {}),
            score=score,
            check_options=check_options,
            fuse_layers=fuse_layers,
            min_layers=min_layers,
        )
        taken = set(method.fn_options(method.options)) | set(method.score_options(method.options))
        if set(method.options) - taken:
            raise ValueError(f"register_method: option(s) {sorted(set(method.options) - taken)} of {name!r} are taken by neither fn nor score")
        _REGISTRY[name] = method
        return fn

    return decorator


def available_methods() -> List[str]:
    """Names of all registered methods, in registration order.

    Example::

        >>> import cam_callbacks as cc
        >>> cc.available_methods()[:3]
        ['cam', 'gradcam', 'gradcampp']
    """
    return list(_REGISTRY)


def _normalised(name: str) -> str:
    """A method name as people write it, reduced for comparison: lower case, ``++`` -> ``pp``, no ``-``, ``_`` or spaces."""
    return name.lower().replace("++", "pp").replace("-", "").replace("_", "").replace(" ", "")


def method_choices(name: object) -> str:
    """The end of an unknown-method message: a did-you-mean when a registered name is close, then the valid names.

    ``"GradCAM"``, ``"grad-cam"`` and ``"gradcam++"`` normalise to a registered name (``'gradcam'``, ``'gradcampp'``);
    others are compared with ``difflib.get_close_matches`` on the normalised names.

    Example::

        >>> method_choices("Grad-CAM++").split("?")[0]
        "did you mean 'gradcampp'"
    """
    names = available_methods()
    hint = ""
    if isinstance(name, str):
        by_form: Dict[str, str] = {}
        for known in names:
            by_form.setdefault(_normalised(known), known)
        form = _normalised(name)
        close = [by_form[form]] if form in by_form else [by_form[c] for c in difflib.get_close_matches(form, list(by_form), n=3, cutoff=0.75)]
        if close:
            hint = f"did you mean {close[0]!r}? " if len(close) == 1 else f"did you mean one of {close}? "
    return f"{hint}choose from {names}"


def get_method(name: str) -> CAMMethod:
    """Look up a method by name.

    Raises:
        ValueError: For an unknown name; the message lists the valid names, after a did-you-mean when one is close
            (``"GradCAM"``, ``"grad-cam"`` -> ``'gradcam'``; ``"gradcam++"`` -> ``'gradcampp'``).
    """
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"method={name!r} is not a known CAM method; {method_choices(name)}")
    return _REGISTRY[name]


def unregister_method(name: str) -> CAMMethod:
    """Remove the method ``name`` from the registry and return it.

    Raises:
        ValueError: For an unknown name; the message lists the valid names.

    Example::

        >>> @register_method("doc_example_cam", needs=("activations",))
        ... def doc_example_cam(activations):
        ...     return activations.sum(1)
        >>> unregister_method("doc_example_cam").fn is doc_example_cam, "doc_example_cam" in available_methods()
        (True, False)
    """
    method = get_method(name)
    del _REGISTRY[name]
    return method
