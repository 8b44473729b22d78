"""What the engine remembers per model between calls: derived tails and measured bytes per row.

Both caches refer to their models weakly (a dropped model frees its entries) and are keyed by
(layer, input shape, dtype, device). ``cache_info`` and ``clear_caches`` are the public
way to look at and empty them (tests, benchmarks that time cold calls, notebooks that rebuild a model
in place).
"""

from __future__ import annotations

import weakref
from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple, Union

from torch import Tensor, nn

from cam_callbacks.capture.tail import Tail, tail_from_reference, tail_mismatch
from cam_callbacks.engine.scorers import RowBytes
from cam_callbacks.utils.outputs import OutputTransform

#: model -> {(layer, input shape, dtype, device): a tail reusable across calls, or _NO_FX}
_TAILS: "weakref.WeakKeyDictionary[nn.Module, Dict[Tuple[Any, ...], Union[Tail, str]]]" = weakref.WeakKeyDictionary()
_NO_FX = "torch.fx cannot cut this model here"
#: model -> {(layer, input shape, dtype, device): bytes per row of a perturbation pass}
_COSTS: "weakref.WeakKeyDictionary[nn.Module, Dict[Tuple[Any, ...], RowBytes]]" = weakref.WeakKeyDictionary()


class CacheInfo(NamedTuple):
    """Sizes of the engine's caches: models held, and entries (over all models, or for one model)."""

    tail_models: int
    tail_entries: int
    cost_models: int
    cost_entries: int


def cache_info(model: Optional[nn.Module] = None) -> CacheInfo:
    """How many models and entries the caches hold; with ``model``, the entries are that model's.

    Example::

        >>> clear_caches()
        >>> cache_info()
        CacheInfo(tail_models=0, tail_entries=0, cost_models=0, cost_entries=0)
    """
    if model is None:
        tails = sum(len(entries) for entries in _TAILS.values())
        costs = sum(len(entries) for entries in _COSTS.values())
    else:
        tails, costs = len(_TAILS.get(model, {})), len(_COSTS.get(model, {}))
    return CacheInfo(len(_TAILS), tails, len(_COSTS), costs)


def clear_caches(model: Optional[nn.Module] = None) -> None:
    """Forget the derived tails and measured costs of ``model`` (of every model by default)."""
    if model is None:
        _TAILS.clear()
        _COSTS.clear()
        return
    _TAILS.pop(model, None)
    _COSTS.pop(model, None)


def cached_cost(model: nn.Module, key: Tuple[Any, ...]) -> Optional[RowBytes]:
    """The cost measured earlier for ``model`` and ``key`` (layer, input shape, dtype, device), if any."""
    return _COSTS.get(model, {}).get(key)


def store_cost(model: nn.Module, key: Tuple[Any, ...], cost: RowBytes) -> None:
    """Remember the bytes per row measured for ``model`` and ``key``."""
    _COSTS.setdefault(model, {})[key] = cost


def tail_for(
    model: nn.Module,
    layer_name: str,
    layer: nn.Module,
    x: Tensor,
    raw: Tensor,
    logits: Tensor,
    user_tail: Optional[Callable[[Tensor], Tensor]],
    output_transform: OutputTransform = None,
) -> Tail:
    """The tail after ``layer_name`` for the chunk ``x``, whose layer output ``raw`` and ``logits`` the main pass produced.

    A derived tail that does not depend on the example images (fx without values crossing the cut) is
    kept for later calls (it refers to the model weakly, so the cache never keeps a model alive) and
    re-checked on every chunk with one tail pass (cheap next to the copies); one that does is derived
    per chunk. A model torch.fx cannot cut is remembered, so its fallback warns once. ``output_transform`` (part of the
    key) takes the logits from what the derived tail returns.
    """
    if user_tail is not None:  # checked on every chunk, never cached (a user's callable may hold the model)
        return tail_from_reference(model, layer_name, layer, x, raw, logits, user_tail)
    transform_key = output_transform if output_transform is None or isinstance(output_transform, (str, int)) else id(output_transform)
    key = (layer_name, tuple(x.shape[1:]), x.dtype, x.device, transform_key)
    cache = _TAILS.setdefault(model, {})
    entry = cache.get(key)
    if isinstance(entry, Tail) and tail_mismatch(entry, raw, logits) is None:
        return entry
    tail = tail_from_reference(model, layer_name, layer, x, raw, logits, try_fx=entry != _NO_FX, output_transform=output_transform)
    if tail.example_batch is None:
        cache[key] = tail
    elif tail.mode == "rerun":
        cache[key] = _NO_FX
    return tail
