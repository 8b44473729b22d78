"""CAMMonitor's entry in a checkpoint: what is saved, and the checks that decide whether a resumed run may use it.

The entry is validated when it is loaded (types and shapes, with a message that says which field is
wrong) and again once the probe set and the target layer are known: another format version, another
layer, another probe set or maps of another shape mean the saved history does not describe this run,
so it is dropped with a warning and drift is measured afresh.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor

__all__ = ["STATE_VERSION", "history_mismatch", "state_problem"]

#: Version of ``CAMMonitor.state_dict``; a checkpoint of another version resumes without the history.
STATE_VERSION = 2


#: Keys every entry :meth:`CAMMonitor.state_dict` writes has (the alarm state and the probe tensors are optional).
REQUIRED_KEYS = ("version", "layer_name", "last_run", "probe_fingerprint", "first_maps", "previous_maps")


def _maps_problem(name: str, value: Any) -> Optional[str]:
    if not isinstance(value, Mapping):
        return f"{name} must be a dict {{method: (N, H, W) tensor}}, got {type(value).__name__}"
    for method, maps in value.items():
        if not isinstance(method, str) or not isinstance(maps, Tensor) or maps.dim() != 3 or not maps.is_floating_point():
            shape = tuple(maps.shape) if isinstance(maps, Tensor) else type(maps).__name__
            return f"{name}[{method!r}] must be a floating (N, H, W) tensor, got {shape}"
        bad = int((~torch.isfinite(maps)).sum())
        if bad:
            return f"{name}[{method!r}] holds {bad} NaN or inf values of {maps.numel()}: drift against it would be meaningless"
    return None


def state_problem(state: Any) -> Optional[str]:
    """What is wrong with a loaded entry (None when it is usable): empty, partial (a key missing), wrong types or shapes,
    or maps holding NaN or inf.

    Example::

        >>> state_problem({})
        'the entry is empty: the checkpoint holds no state of this monitor (saved without it, or edited)'
        >>> state_problem({"version": 2, "last_run": None})  # doctest: +ELLIPSIS
        "the entry is partial: it lacks ['layer_name', 'probe_fingerprint', 'first_maps', 'previous_maps'] (...)"
        >>> state_problem({**dict.fromkeys(REQUIRED_KEYS), "version": 2, "last_run": 3, "first_maps": {}, "previous_maps": {}})
        'last_run must be None or a (stage, epoch) pair, got 3'
    """
    if not isinstance(state, Mapping):
        return f"the entry must be a dict, got {type(state).__name__}"
    if not state:
        return "the entry is empty: the checkpoint holds no state of this monitor (saved without it, or edited)"
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        return f"the entry is partial: it lacks {missing} (saved by another version of cam_callbacks, or edited)"
    if not isinstance(state.get("version"), int):
        return f"version must be an int, got {state.get('version')!r}"
    last_run = state.get("last_run")
    if last_run is not None and not (
        isinstance(last_run, (list, tuple)) and len(last_run) == 2 and isinstance(last_run[0], str) and isinstance(last_run[1], int)
    ):
        return f"last_run must be None or a (stage, epoch) pair, got {last_run!r}"
    for field in ("layer_name", "probe_fingerprint"):
        if state.get(field) is not None and not isinstance(state.get(field), str):
            return f"{field} must be None or a str, got {state.get(field)!r}"
    probe = state.get("probe")
    if probe is not None and not (isinstance(probe, Mapping) and isinstance(probe.get("images"), Tensor) and probe["images"].dim() == 4):
        return "probe must be None or a dict whose 'images' is an (N, C, H, W) tensor"
    for field in ("first_maps", "previous_maps"):
        problem = _maps_problem(field, state.get(field, {}))
        if problem:
            return problem
    entries = state.get("alarm_state", [])  # [method, metric, class] triples; [method, metric] pairs before 1.0
    if not isinstance(entries, (list, tuple)) or not all(isinstance(e, (list, tuple)) and len(e) in (2, 3) for e in entries):
        return f"alarm_state must be a list of [method, metric, class] triples (or [method, metric] pairs before 1.0), got {entries!r}"
    return None


def history_mismatch(
    state: Mapping[str, Any], layer_name: str, fingerprint: str, map_shape: Tuple[int, int, int], methods: Sequence[str]
) -> Optional[str]:
    """Why a (valid) entry's history does not describe this run (None when it does).

    Args:
        state: The loaded entry.
        layer_name: The resolved target layer(s) of this run.
        fingerprint: The probe set's fingerprint.
        map_shape: ``(rows, H, W)`` of this run's maps.
        methods: This run's methods.
    """
    if state["version"] != STATE_VERSION:
        return f"the checkpoint's CAMMonitor state has version {state['version']!r}, this one {STATE_VERSION}"
    if state.get("layer_name") is not None and state["layer_name"] != layer_name:
        return f"the checkpoint explained layer {state['layer_name']!r}, this monitor {layer_name!r}"
    if state.get("probe_fingerprint") is not None and state["probe_fingerprint"] != fingerprint:
        return "the probe set differs from the one in the checkpoint (other images, labels or masks)"
    for field in ("first_maps", "previous_maps"):
        for method, maps in dict(state.get(field, {})).items():
            if method in methods and tuple(maps.shape) != tuple(map_shape):
                return f"the checkpoint's {field}[{method!r}] have shape {tuple(maps.shape)}, this run's maps {tuple(map_shape)}"
    return None
