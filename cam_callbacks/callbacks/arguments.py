"""Checks of ``CAMMonitor``'s arguments at construction: each message names the argument,
shows the value and says what is valid (as Lightning's own callbacks do)."""

from __future__ import annotations

import difflib
import math
from typing import Any, List, Mapping, Optional, Sequence, Tuple

from torch import Tensor, nn

from cam_callbacks.capture.layers import resolve_named_layer
from cam_callbacks.engine.curves import CurveSettings, check_curves
from cam_callbacks.engine.options import ExplainOptions
from cam_callbacks.methods.registry import available_methods, method_choices
from cam_callbacks.metrics.faithfulness import FAITHFULNESS_METRICS
from cam_callbacks.metrics.perturbation_curves import CURVE_METRICS
from cam_callbacks.monitor.alarm import AlarmPolicy, ShortcutAlarm, ThresholdAlarm
from cam_callbacks.render.style import ImageStyle

TARGET_CHOICES = ("label", "prediction")
#: The names ``CAMMonitor(metrics=...)`` accepts.
METRIC_CHOICES = ("faithfulness",) + CURVE_METRICS
#: Samples taken from a Dataset or DataLoader given as ``probe=``.
DATASET_PROBE_SIZE = 32


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
            raise ValueError(f"methods contains {name!r}, which is not a known CAM method; {method_choices(name)}")
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
        except (TypeError, ValueError, OverflowError):  # OverflowError: an int too large for a float (10**400)
            number = None
    if number is None or not math.isfinite(number):
        raise ValueError(f"{name} must be {valid}, got {value!r}")
    return number


def check_target_layer(target_layer: Any) -> None:
    """A dotted module name, a module, ``"auto"``, or a non-empty list of them."""
    layers = list(target_layer) if isinstance(target_layer, (list, tuple)) else [target_layer]
    if not layers or not all(isinstance(layer, (str, nn.Module)) for layer in layers):
        raise TypeError(f"target_layer must be a dotted module name, a module, 'auto' or a non-empty list of them, got {target_layer!r}")


def check_budget(budget: Optional[float]) -> Optional[float]:
    """None, or a share of the training time in (0, 1] (returned as a float)."""
    if budget is None:
        return None
    valid = "None or a share of the training time in (0, 1] (a number, e.g. budget=0.05)"
    share = check_number("budget", budget, valid)
    if not 0.0 < share <= 1.0:
        raise ValueError(f"budget must be {valid}, got {budget!r}")
    return share


def check_prefix(prefix: Any) -> str:
    """A tag prefix and folder name: letters, digits, ``_``, ``-``, ``.``, starting with a letter, digit or ``_`` (no
    ``/``, no spaces; ``..`` would put the files in the folder above the run's)."""
    valid = isinstance(prefix, str) and bool(prefix) and all(c.isalnum() or c in "_-." for c in prefix)
    if not valid or not (prefix[0].isalnum() or prefix[0] == "_"):
        raise ValueError(
            "prefix must be a non-empty string of letters, digits, '_', '-' or '.', starting with a letter, a digit or '_' "
            f"(it is a folder of the run's directory; e.g. 'cam', 'cam_layer3'), got {prefix!r}"
        )
    return prefix


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


def check_probe(probe: Any) -> Tuple[int, Any]:
    """``(size, source)``: an int is the size of a probe taken from the validation data (source None); anything else is
    the probe itself (checked by ``make_probe``), taken whole or its first 32 samples."""
    if isinstance(probe, bool):
        raise ValueError(f"probe must be a positive int (a probe size) or the probe images, got {probe!r}")
    if isinstance(probe, int):
        if probe < 1:
            raise ValueError(f"probe must be a positive int (how many validation images to explain) or the probe images, got {probe!r}")
        return probe, None
    if probe is None:
        raise ValueError(
            "probe must be a positive int (how many validation images to explain, e.g. probe=32), an images tensor, an "
            "(images, labels[, masks[, nuisance]]) tuple, a Dataset or a DataLoader; got None"
        )
    size = probe.shape[0] if isinstance(probe, Tensor) else DATASET_PROBE_SIZE
    return size, probe


def check_metrics(metrics: Any) -> Tuple[bool, Optional[CurveSettings]]:
    """``(faithfulness on?, curve settings or None)`` from ``metrics=``: names of ``METRIC_CHOICES``."""
    names = (metrics,) if isinstance(metrics, str) else metrics
    if names is None:
        names = ()
    if isinstance(names, (bytes, Mapping)) or not _iterable(names):
        raise ValueError(f"metrics must be a list of names from {list(METRIC_CHOICES)} (or () for maps only), got {metrics!r}")
    names = list(names)
    for name in names:
        if name not in METRIC_CHOICES:
            close = difflib.get_close_matches(str(name).lower(), METRIC_CHOICES, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else "."
            if str(name).lower() in FAITHFULNESS_METRICS:
                hint = f"; {str(name).lower()!r} is one of the scores of 'faithfulness' (all five come together)."
            raise ValueError(f"metrics contains {name!r}, which is not a metric{hint} Choose from {list(METRIC_CHOICES)}")
    if len(set(names)) != len(names):
        raise ValueError(f"metrics lists a name twice: {names}")
    curves = [name for name in names if name != "faithfulness"]
    return "faithfulness" in names, check_curves(curves)


def check_alarm(alarm: Any) -> Tuple[AlarmPolicy, ...]:
    """The alarm policies as a tuple (None or an empty sequence: no alarm); at most one ``ShortcutAlarm``."""
    if alarm is None:
        return ()
    policies = [alarm] if isinstance(alarm, (ThresholdAlarm, ShortcutAlarm)) else alarm
    if isinstance(policies, (str, bytes, Mapping)) or not _iterable(policies):
        raise ValueError(f"alarm must be None or a list of ThresholdAlarm / ShortcutAlarm objects, e.g. alarm=[ShortcutAlarm(score=0.2)], got {alarm!r}")
    policies = tuple(policies)
    for policy in policies:
        if not isinstance(policy, (ThresholdAlarm, ShortcutAlarm)):
            hint = " (AlarmRule was split into ThresholdAlarm and ShortcutAlarm in 1.0; see the CHANGELOG)" if type(policy).__name__ == "AlarmRule" else ""
            raise ValueError(f"alarm must hold ThresholdAlarm or ShortcutAlarm objects, got a {type(policy).__name__}{hint}")
    if sum(isinstance(policy, ShortcutAlarm) for policy in policies) > 1:
        raise ValueError("alarm holds two ShortcutAlarm objects; give one (its fields set every bound of the per-class rule)")
    return policies


def uncomputed_bounds(alarm: Sequence[AlarmPolicy], faithfulness: bool, curves: Optional[CurveSettings]) -> List[str]:
    """Warnings for the ``ThresholdAlarm`` policies that bound a score the monitor does not compute (``metrics=``): they
    could never fire."""
    computed = set(curves.metrics if curves is not None else ()) | (set(FAITHFULNESS_METRICS) if faithfulness else set())
    said = []
    for policy in alarm:
        if isinstance(policy, ThresholdAlarm) and policy.metric in set(FAITHFULNESS_METRICS) | set(CURVE_METRICS):
            if policy.metric not in computed:
                needed = "faithfulness" if policy.metric in FAITHFULNESS_METRICS else policy.metric
                said.append(
                    f"CAMMonitor: ThresholdAlarm({policy.metric!r}) bounds a score this monitor does not compute "
                    f"(metrics={tuple(sorted(computed))!r}), so it can never fire; add {needed!r} to metrics="
                )
    return said


def check_explain_options(options: Any, methods: Sequence[str]) -> ExplainOptions:
    """An ``ExplainOptions`` (None: the defaults) whose ``method_options`` name only ``methods``."""
    if options is None:
        return ExplainOptions()
    if isinstance(options, Mapping):
        raise ValueError(f"explain_options must be an ExplainOptions, e.g. explain_options=ExplainOptions(**{dict(options)!r}); got a dict")
    if not isinstance(options, ExplainOptions):
        raise ValueError(f"explain_options must be a cam_callbacks.ExplainOptions, got {type(options).__name__}")
    unused = sorted(map(str, set(options.method_options) - set(methods)))
    if unused:
        raise ValueError(f"explain_options.method_options names {unused}, which are not in methods={list(methods)}")
    return options


def check_style(style: Any) -> ImageStyle:
    """An ``ImageStyle`` (None: the defaults)."""
    if style is None:
        return ImageStyle()
    if isinstance(style, Mapping):
        raise ValueError(f"style must be an ImageStyle, e.g. style=ImageStyle(**{dict(style)!r}); got a dict")
    if not isinstance(style, ImageStyle):
        raise ValueError(f"style must be a cam_callbacks.ImageStyle, got {type(style).__name__}")
    return style
