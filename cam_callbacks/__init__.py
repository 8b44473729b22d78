"""cam_callbacks: watch what your vision model looks at while it trains.

Functional core: :func:`explain` (class activation maps) and :func:`faithfulness` (Average Drop,
Increase in Confidence, Coherency, Complexity, ADCC). Lightning glue: :class:`CAMMonitor`.
"""

from cam_callbacks.monitor.alarm import AlarmRule
from cam_callbacks.functional import explain, faithfulness
from cam_callbacks.capture.guided import guided_relus
from cam_callbacks.capture.layers import resolve_target_layer
from cam_callbacks.utils.maps import fuse_layer_maps, minmax_normalize, upsample_and_normalize
from cam_callbacks.methods.registry import available_methods, get_method, register_method
from cam_callbacks.metrics.faithfulness import FAITHFULNESS_METRICS, faithfulness_scores
from cam_callbacks.capture.layouts import TokenGrid
from cam_callbacks.capture.tail import Tail, derive_tail

__version__ = "0.1.0"

__all__ = [
    "AlarmRule",
    "CAMMonitor",
    "FAITHFULNESS_METRICS",
    "Tail",
    "TokenGrid",
    "available_methods",
    "derive_tail",
    "explain",
    "faithfulness",
    "faithfulness_scores",
    "fuse_layer_maps",
    "get_method",
    "guided_relus",
    "minmax_normalize",
    "register_method",
    "resolve_target_layer",
    "upsample_and_normalize",
]


def __getattr__(name: str):  # lazy: importing the core does not import Lightning
    if name == "CAMMonitor":
        from cam_callbacks.callbacks.cam_monitor import CAMMonitor

        return CAMMonitor
    raise AttributeError(f"module 'cam_callbacks' has no attribute {name!r}")
