"""Checks of :class:`~cam_callbacks.CAMMonitor`'s arguments at construction: each message names the argument,
shows the value and says what is valid (as Lightning's own callbacks do)."""

from __future__ import annotations

from typing import Any, List, Mapping, Optional, Sequence, Tuple

from torch import nn

from cam_callbacks.capture.layers import resolve_named_layer
from cam_callbacks.engine.options import ExplainOptions
from cam_callbacks.methods.registry import available_methods
from cam_callbacks.monitor.alarm import AlarmRule
from cam_callbacks.render.images import colormap_lut

__all__ = [
    "TARGET_CHOICES", "PRECISION_CHOICES", "check_alarm", "check_budget", "check_choice", "check_display", "check_methods",
    "check_named_layers", "check_positive_int", "check_prefix", "check_target_layer", "check_unique_prefix", "make_explain_options",
]  # fmt: skip

TARGET_CHOICES = ("label", "prediction")
PRECISION_CHOICES = ("auto", "32")


def check_positive_int(name: str, value: Any) -> int:
    """``value`` if it is an int >= 1 (not a bool)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> Any:
    """``value`` if it is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not valid; choose from {list(choices)}")
    return value


def check_methods(methods: Any) -> List[str]:
    """A non-empty list of distinct registered method names (one name may be given as a string)."""
    names = [methods] if isinstance(methods, str) else list(methods)
    if not names:
        raise ValueError(f"methods must name at least one method; choose from {available_methods()}")
    for name in names:
        if name not in available_methods():
            raise ValueError(f"methods contains {name!r}, which is not a known CAM method; choose from {available_methods()}")
    if len(set(names)) != len(names):
        raise ValueError(f"methods lists a method twice: {names}")
    return names


def check_target_layer(target_layer: Any) -> None:
    """A dotted module name, a module, ``"auto"``, or a non-empty list of them."""
    layers = list(target_layer) if isinstance(target_layer, (list, tuple)) else [target_layer]
    if not layers or not all(isinstance(layer, (str, nn.Module)) for layer in layers):
        raise TypeError(f"target_layer must be a dotted module name, a module, 'auto' or a non-empty list of them, got {target_layer!r}")


def check_display(
    mean: Optional[Sequence[float]], std: Optional[Sequence[float]], overlay_alpha: float, colormap: str
) -> Tuple[Optional[List[float]], Optional[List[float]]]:
    """Checks of how images are shown; returns ``mean`` and ``std`` as lists of floats."""
    if (mean is None) != (std is None):
        raise ValueError("give both mean and std (to un-normalise images for display) or neither")
    if std is not None and any(float(s) <= 0 for s in std):
        raise ValueError(f"std values must be positive, got {list(std)}")
    if not 0.0 <= float(overlay_alpha) <= 1.0:
        raise ValueError(f"overlay_alpha must be in [0, 1], got {overlay_alpha}")
    colormap_lut(colormap)  # fails fast with the valid choices
    as_floats = [float(v) for v in mean] if mean is not None else None
    return as_floats, [float(v) for v in std] if std is not None else None


def check_budget(budget: Optional[float]) -> Optional[float]:
    """None, or a share of the training time in (0, 1]."""
    if budget is not None and not 0.0 < float(budget) <= 1.0:
        raise ValueError(f"budget must be None or a share of the training time in (0, 1], got {budget!r}")
    return budget


def check_alarm(alarm: Any) -> Optional[AlarmRule]:
    """None or an :class:`~cam_callbacks.AlarmRule`."""
    if alarm is not None and not isinstance(alarm, AlarmRule):
        raise TypeError(f"alarm must be an AlarmRule or None, got {type(alarm).__name__}")
    return alarm


def check_prefix(prefix: Any) -> str:
    """A tag prefix: a non-empty string of letters, digits, ``_``, ``-``, ``.`` (no ``/``, no spaces)."""
    if not isinstance(prefix, str) or not prefix or not all(c.isalnum() or c in "_-." for c in prefix):
        raise ValueError(f"prefix must be a non-empty string of letters, digits, '_', '-' or '.' (e.g. 'cam', 'cam_layer3'), got {prefix!r}")
    return prefix


def make_explain_options(methods: Sequence[str], method_options: Optional[Mapping[str, Any]] = None, **options: Any) -> ExplainOptions:
    """The monitor's :class:`ExplainOptions` (which validates every option); ``method_options`` may name only ``methods``."""
    unused = sorted(set(method_options or {}) - set(methods))
    if unused:
        raise ValueError(f"method_options names {unused}, which are not in methods={list(methods)}")
    options["smooth_scales"] = tuple(options.get("smooth_scales", (0.9, 1.0, 1.1)))
    return ExplainOptions(method_options=dict(method_options or {}), **options)


def check_unique_prefix(monitor: Any, callbacks: Sequence[Any]) -> None:
    """No other monitor of the same class among ``callbacks`` logs under ``monitor.prefix`` (their tags would collide)."""
    twins = [cb for cb in callbacks if cb is not monitor and isinstance(cb, type(monitor)) and cb.prefix == monitor.prefix]
    if twins:
        raise ValueError(
            f"CAMMonitor: {len(twins) + 1} monitors in this Trainer log under prefix={monitor.prefix!r}, so their tags would "
            "collide; give each its own prefix=, e.g. prefix='cam_layer3'"
        )


def check_named_layers(model: nn.Module, target_layer: Any) -> None:
    """Every target layer given by name or module exists in ``model`` (``"auto"`` is resolved later, with the dry run)."""
    layers = list(target_layer) if isinstance(target_layer, (list, tuple)) else [target_layer]
    for layer in layers:
        if isinstance(layer, nn.Module) or layer != "auto":
            resolve_named_layer(model, layer)
