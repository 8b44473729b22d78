"""One frozen set of options that changes how maps are computed, carried from the public API through the engine."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Tuple, Union

from torch import Tensor

from cam_callbacks.capture.layouts import TokenGrid, as_token_grid
from cam_callbacks.methods.registry import CAMMethod, get_method
from cam_callbacks.utils.outputs import OutputTransform, check_output_transform
from cam_callbacks.utils.targets import PROBABILITIES
from cam_callbacks.utils.types import Probability, Smooth

#: What ``smooth=`` accepts.
SMOOTH_CHOICES = (None, "noise", "aug")
#: The largest image scale of ``smooth="aug"`` (a copy 4 times larger costs 16 times the passes).
MAX_SCALE = 4.0
#: What ``precision=`` accepts.
PRECISION_CHOICES = ("auto", "32")


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _method_options(given: Any) -> Dict[str, Dict[str, Any]]:
    """``method_options`` as ``{method name: {option: value}}``; anything else is refused, with an example."""
    example = "e.g. {'reciprocam': {'gaussian': True}}"
    if given is None:
        return {}
    if not isinstance(given, Mapping):
        raise ValueError(f"method_options must be a dict of method name -> options ({example}), got {given!r}")
    per_method: Dict[str, Dict[str, Any]] = {}
    for name, options in given.items():
        if options is not None and not isinstance(options, Mapping):
            raise ValueError(f"method_options[{name!r}] must be a dict of option -> value ({example}), got {options!r}")
        per_method[name] = dict(options or {})
    return per_method


@dataclass(frozen=True)
class ExplainOptions:
    """How maps are computed: everything besides model, images, methods, layer and targets.

    The one settings object of ``explain``, ``faithfulness``,
    ``perturbation_scores`` (``options=``) and ``CAMMonitor``
    (``explain_options=``). Every field is checked when the object is built (each message names the field and
    lists what is valid); the object is frozen and passed unchanged through the engine.

    Attributes:
        batch_size: Images per forward/backward pass.
        method_options: Method name -> its options (e.g. ``{"reciprocam": {"gaussian": True}}``; each method's
            options and defaults are listed in the methods table of the docs).
        reshape: Turns a transformer layer's tokens into a feature map: None, ``"vit"`` or a
            ``TokenGrid`` (stored as a ``TokenGrid``).
        tail: Your own ``activations -> logits`` callable for the network after the target layer
            (Ablation-CAM, Recipro-CAM); by default it is derived (``derive_tail``).
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
        target_classes: The width of the multi-hot ``(N, C)`` targets the ``(N,)`` labels were taken from
            (set by ``explain`` and ``faithfulness``); the model's
            logits must have as many columns, checked at the first forward pass. None: no such check.
        output_transform: Where the logits are in what the model returns (``cam_callbacks.utils.outputs``): None
            (a logits tensor), a key or attribute name (``"logits"``), a tuple index, or a callable ``output -> logits``.
        precision: ``"auto"``: inside ``CAMMonitor``, compute in the Trainer's precision (its
            precision plugin: autocast for ``"16-mixed"``/``"bf16-mixed"``); elsewhere the model's own dtype.
            ``"32"``: always the model's own dtype, no autocast.

    Example::

        >>> ExplainOptions(smooth="noise", smooth_samples=4).smooth_samples
        4
        >>> ExplainOptions(smooth="blur")
        Traceback (most recent call last):
        ...
        ValueError: smooth='blur' is not valid; choose from [None, 'noise', 'aug']
    """

    batch_size: int = 32
    method_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    reshape: Union[None, str, TokenGrid] = None
    tail: Optional[Callable[[Tensor], Tensor]] = None
    perturbation_batch: Optional[int] = None
    smooth: Optional[Smooth] = None
    smooth_samples: int = 8
    smooth_sigma: float = 0.15
    smooth_scales: Tuple[float, ...] = (0.9, 1.0, 1.1)
    seed: int = 0
    probability: Probability = "softmax"
    target_classes: Optional[int] = None
    output_transform: OutputTransform = None
    precision: str = "auto"

    def __post_init__(self) -> None:
        if not _is_positive_int(self.batch_size):
            raise ValueError(f"batch_size must be a positive int, got {self.batch_size!r}")
        if self.precision not in PRECISION_CHOICES:
            raise ValueError(f"precision={self.precision!r} is not valid; choose from {list(PRECISION_CHOICES)}")
        if self.probability not in PROBABILITIES:
            raise ValueError(f"probability={self.probability!r} is not valid; choose from {list(PROBABILITIES)}")
        self._check_smoothing()
        batch = self.perturbation_batch
        if batch is not None and not _is_positive_int(batch):
            raise ValueError(f"perturbation_batch must be None or a positive int, got {batch!r}")
        if self.target_classes is not None and not _is_positive_int(self.target_classes):
            raise ValueError(f"target_classes must be None or a positive int, got {self.target_classes!r}")
        if self.tail is not None and not callable(self.tail):
            raise TypeError(f"tail must be a callable activations -> logits, got {type(self.tail).__name__}")
        check_output_transform(self.output_transform)
        object.__setattr__(self, "reshape", as_token_grid(self.reshape))
        per_method = _method_options(self.method_options)
        for name, opts in per_method.items():
            get_method(name).resolve_options(opts)  # unknown methods and options fail here, listing the valid ones
        object.__setattr__(self, "method_options", per_method)

    def _check_smoothing(self) -> None:
        if self.smooth not in SMOOTH_CHOICES:
            raise ValueError(f"smooth={self.smooth!r} is not valid; choose from {list(SMOOTH_CHOICES)}")
        if not isinstance(self.seed, numbers.Integral) or isinstance(self.seed, bool):
            raise TypeError(f"seed must be an int, got {type(self.seed).__name__} {self.seed!r}")
        object.__setattr__(self, "seed", int(self.seed))
        if not _is_positive_int(self.smooth_samples):
            raise ValueError(f"smooth_samples must be a positive int, got {self.smooth_samples!r}")
        sigma = self.smooth_sigma
        if not _is_number(sigma) or not math.isfinite(float(sigma)) or not float(sigma) >= 0:
            raise ValueError(f"smooth_sigma must be a finite number >= 0 (noise std relative to each image's range), got {sigma!r}")
        if float(sigma) > 1:
            raise ValueError(f"smooth_sigma must be at most 1: it is the noise std as a fraction of each image's range (0.15 is 15%), got {sigma!r}")
        object.__setattr__(self, "smooth_sigma", float(sigma))
        scales = self.smooth_scales
        message = f"smooth_scales must be a non-empty sequence of positive numbers (e.g. (0.9, 1.0, 1.1)), got {scales!r}"
        if isinstance(scales, (str, bytes, Mapping)) or not isinstance(scales, Iterable):
            raise ValueError(message)
        scales = tuple(scales)
        if not scales or not all(_is_number(s) and math.isfinite(float(s)) and float(s) > 0 for s in scales):
            raise ValueError(message)
        if any(float(s) > MAX_SCALE for s in scales):
            raise ValueError(
                f"smooth_scales are image scales as factors (0.9 is 90%, at most {MAX_SCALE:g}: each scaled copy is explained "
                f"whole), got {self.smooth_scales!r}"
            )
        object.__setattr__(self, "smooth_scales", tuple(float(s) for s in scales))

    @property
    def token_grid(self) -> Optional[TokenGrid]:
        """``reshape`` as a ``TokenGrid`` (None for ``(N, C, h, w)`` feature maps)."""
        return self.reshape if isinstance(self.reshape, TokenGrid) else None

    def options_for(self, method: CAMMethod) -> Dict[str, Any]:
        """``method``'s options: its defaults updated with those given in ``method_options``."""
        return method.resolve_options(self.method_options.get(method.name))
