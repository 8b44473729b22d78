"""Checks of :class:`~cam_callbacks.CAMMonitor`'s arguments at construction: each message names the argument,
shows the value and says what is valid (as Lightning's own callbacks do)."""

from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from torch import nn

from cam_callbacks.capture.layers import resolve_named_layer
from cam_callbacks.engine.options import ExplainOptions
from cam_callbacks.methods.registry import available_methods
from cam_callbacks.monitor.alarm import AlarmRule
from cam_callbacks.render.images import colormap_lut

__all__ = [
    "TARGET_CHOICES", "PRECISION_CHOICES", "check_alarm", "check_bool", "check_budget", "check_choice", "check_display",
    "check_method_options", "check_methods", "check_named_layers", "check_number", "check_positive_int", "check_prefix",
    "check_target_layer", "check_unique_prefix", "make_explain_options", "check_class_names",
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
    if isinstance(methods, str):
        names: List[Any] = [methods]
    elif isinstance(methods, (bytes, Mapping)) or not _iterable(methods):
        raise ValueError(f"methods must be a method name or a list of method names, got {methods!r}; choose from {available_methods()}")
    else:
        names = list(methods)
    if not names:
        raise ValueError(f"methods must name at least one method; choose from {available_methods()}")
    for name in names:
        if not isinstance(name, str) or name not in available_methods():
            raise ValueError(f"methods contains {name!r}, which is not a known CAM method; choose from {available_methods()}")
    if len(set(names)) != len(names):
        raise ValueError(f"methods lists a method twice: {names}")
    return names


def _iterable(value: Any) -> bool:
    try:
        iter(value)
    except TypeError:
        return False
    return True


def check_bool(name: str, value: Any) -> bool:
    """``value`` if it is True or False (a string such as ``"no"`` would be true)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def check_number(name: str, value: Any, valid: str) -> float:
    """``value`` as a float if it is a finite real number (not a bool, not a string); ``valid`` says what is valid."""
    number = None
    if not isinstance(value, (bool, str, bytes)):
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = None
    if number is None or not math.isfinite(number):
        raise ValueError(f"{name} must be {valid}, got {value!r}")
    return number


def check_method_options(method_options: Any, methods: Sequence[str]) -> Dict[str, Mapping[str, Any]]:
    """None or a mapping of method name -> options (a mapping) for methods in ``methods``; returned as a dict."""
    example = "e.g. {'reciprocam': {'gaussian': True}}"
    if method_options is None:
        return {}
    if not isinstance(method_options, Mapping):
        raise ValueError(f"method_options must be None or a dict of method name -> options ({example}), got {method_options!r}")
    unused = sorted(map(str, set(method_options) - set(methods)))
    if unused:
        raise ValueError(f"method_options names {unused}, which are not in methods={list(methods)}")
    for name, options in method_options.items():
        if options is not None and not isinstance(options, Mapping):
            raise ValueError(f"method_options[{name!r}] must be a dict of option -> value ({example}), got {options!r}")
    return dict(method_options)


def check_target_layer(target_layer: Any) -> None:
    """A dotted module name, a module, ``"auto"``, or a non-empty list of them."""
    layers = list(target_layer) if isinstance(target_layer, (list, tuple)) else [target_layer]
    if not layers or not all(isinstance(layer, (str, nn.Module)) for layer in layers):
        raise TypeError(f"target_layer must be a dotted module name, a module, 'auto' or a non-empty list of them, got {target_layer!r}")


def _channel_values(name: str, value: Any, positive: bool) -> Optional[List[float]]:
    """``value`` as a list of floats if it is a non-empty sequence of finite (and with ``positive``, positive) numbers."""
    if value is None:
        return None
    kind = "finite positive numbers" if positive else "finite numbers"
    message = f"{name} must be a sequence of C {kind}, one per image channel (e.g. {name}=[0.5, 0.5, 0.5]), got {value!r}"
    if isinstance(value, (str, bytes, Mapping)) or not _iterable(value):
        raise ValueError(message)
    try:
        values = [float(v) for v in value]
    except (TypeError, ValueError, RuntimeError):  # RuntimeError: a tensor with more than one element per channel
        raise ValueError(message) from None
    if not values or not all(math.isfinite(v) and (v > 0 or not positive) for v in values):
        raise ValueError(message)
    return values


def check_display(
    mean: Optional[Sequence[float]], std: Optional[Sequence[float]], overlay_alpha: float, colormap: str
) -> Tuple[Optional[List[float]], Optional[List[float]]]:
    """Checks of how images are shown; returns ``mean`` and ``std`` as lists of floats.

    Their number of values (one per channel, or one for all channels) is checked against the probe images at setup
    (:meth:`~cam_callbacks.callbacks.runner.ProbeRunner.prepare`).
    """
    if (mean is None) != (std is None):
        raise ValueError(
            f"give both mean and std (to un-normalise images for display) or neither, got mean={mean!r} and std={std!r}"
        )
    means, stds = _channel_values("mean", mean, positive=False), _channel_values("std", std, positive=True)
    if means is not None and stds is not None and len(means) != len(stds) and 1 not in (len(means), len(stds)):
        raise ValueError(
            f"mean has {len(means)} values and std {len(stds)}: give the same number, one per image channel, got "
            f"mean={mean!r} and std={std!r}"
        )
    alpha = check_number("overlay_alpha", overlay_alpha, "a number in [0, 1] (the heatmap's opacity)")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"overlay_alpha must be a number in [0, 1] (the heatmap's opacity), got {overlay_alpha!r}")
    colormap_lut(colormap)  # fails fast with the valid choices
    return means, stds


def check_budget(budget: Optional[float]) -> Optional[float]:
    """None, or a share of the training time in (0, 1] (returned as a float)."""
    if budget is None:
        return None
    valid = "None or a share of the training time in (0, 1] (a number, e.g. budget=0.05)"
    share = check_number("budget", budget, valid)
    if not 0.0 < share <= 1.0:
        raise ValueError(f"budget must be {valid}, got {budget!r}")
    return share


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
    checked = check_method_options(method_options, methods)
    scales = options.get("smooth_scales", (0.9, 1.0, 1.1))
    if isinstance(scales, (str, bytes)) or not isinstance(scales, Sequence):
        raise ValueError(f"smooth_scales must be a non-empty sequence of positive numbers (e.g. (0.9, 1.0, 1.1)), got {scales!r}")
    options["smooth_scales"] = tuple(check_number("smooth_scales", s, "a sequence of positive numbers") for s in scales)
    options["smooth_sigma"] = check_number("smooth_sigma", options.get("smooth_sigma", 0.15), "a finite number >= 0 (noise std relative to each image's range)")
    return ExplainOptions(method_options=checked, **options)


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


def check_class_names(class_names: Any) -> Optional[List[str]]:
    """None, or a non-empty list of strings (one per class; the length is checked against the model at the first run)."""
    if class_names is None:
        return None
    if isinstance(class_names, (str, bytes, Mapping)) or not _iterable(class_names) or not list(class_names):
        raise ValueError(f"class_names must be a list of class names, one per model output, got {class_names!r}")
    return [str(name) for name in class_names]
