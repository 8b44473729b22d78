"""cam_callbacks: watch what your vision model looks at while it trains.

Functional core (torch only): :func:`explain` (class activation maps) and :func:`faithfulness` (Average
Drop, Increase in Confidence, Coherency, Complexity, ADCC). Lightning glue: :class:`CAMMonitor`,
imported lazily so that the core never imports Lightning.

Layers, bottom up (each folder is one): ``utils`` (shared numerics and checks), ``methods`` (pure
method functions, registered by name), ``capture`` (context managers and hooks that leave the model as
found), ``engine`` (batched passes), ``metrics`` (pure per-image scores), ``monitor`` (stateful parts of
a watch: alarm, budget, history), ``render`` (images for people), ``callbacks`` (the only layer that
imports Lightning), ``datasets`` (generated data).
"""

from typing import TYPE_CHECKING, Any

from cam_callbacks.capture.guided import guided_relus
from cam_callbacks.capture.layers import resolve_target_layer
from cam_callbacks.capture.layouts import TokenGrid
from cam_callbacks.capture.tail import Tail, derive_tail
from cam_callbacks.engine.caches import cache_info, clear_caches
from cam_callbacks.engine.options import ExplainOptions
from cam_callbacks.engine.result import Explanation, ScoredExplanation
from cam_callbacks.functional import explain, faithfulness, perturbation_scores
from cam_callbacks.methods.registry import available_methods, get_method, register_method, unregister_method
from cam_callbacks.metrics.faithfulness import FAITHFULNESS_METRICS, faithfulness_scores
from cam_callbacks.metrics.perturbation_curves import CURVE_METRICS
from cam_callbacks.metrics.shortcuts import find_shortcuts
from cam_callbacks.monitor.alarm import AlarmRule
from cam_callbacks.render.notebook import plot_maps, show_maps
from cam_callbacks.utils.maps import fuse_layer_maps, minmax_normalize, upsample_and_normalize

if TYPE_CHECKING:  # visible to type checkers; imported lazily at run time (it imports Lightning)
    from cam_callbacks.callbacks.cam_monitor import CAMMonitor

__version__ = "0.1.0"

__all__ = [
    "AlarmRule",
    "CAMMonitor",
    "ExplainOptions",
    "Explanation",
    "FAITHFULNESS_METRICS",
    "ScoredExplanation",
    "Tail",
    "TokenGrid",
    "available_methods",
    "cache_info",
    "clear_caches",
    "derive_tail",
    "explain",
    "faithfulness",
    "faithfulness_scores",
    "find_shortcuts",
    "fuse_layer_maps",
    "get_method",
    "guided_relus",
    "minmax_normalize",
    "plot_maps",
    "register_method",
    "resolve_target_layer",
    "show_maps",
    "unregister_method",
    "upsample_and_normalize",
]
__all__ += ["CURVE_METRICS", "perturbation_scores"]


def __getattr__(name: str) -> Any:  # lazy: importing the core does not import Lightning
    if name == "CAMMonitor":
        from cam_callbacks.callbacks.cam_monitor import CAMMonitor

        return CAMMonitor
    raise AttributeError(f"module 'cam_callbacks' has no attribute {name!r}")
