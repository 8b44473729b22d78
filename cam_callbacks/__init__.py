"""cam_callbacks: watch what your vision model looks at while it trains.

The public API is what this module exports (``__all__``), plus the generated data of
``cam_callbacks.datasets``. Every other module is internal and may change between releases.

- The Lightning callback: ``CAMMonitor`` (imported lazily, so that the functional core never imports
  Lightning), its alarm policies ``ThresholdAlarm`` and ``ShortcutAlarm``.
- The option objects: ``ExplainOptions`` (how maps are computed), ``ImageStyle`` (how images are
  drawn), ``TokenGrid`` (how a transformer layer's tokens form a feature map).
- The functional core, on any classifier: ``explain``, ``faithfulness``, ``perturbation_scores``,
  ``find_shortcuts``.
- The method registry, the one extension point: ``available_methods``, ``register_method``.
- Notebook helpers: ``show_maps``, ``plot_maps``.

Every score is a fraction in [0, 1].
"""

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from cam_callbacks.capture.layouts import TokenGrid
from cam_callbacks.engine.options import ExplainOptions
from cam_callbacks.functional import explain, faithfulness, perturbation_scores
from cam_callbacks.methods.registry import available_methods, register_method
from cam_callbacks.metrics.shortcuts import find_shortcuts
from cam_callbacks.monitor.alarm import ShortcutAlarm, ThresholdAlarm
from cam_callbacks.render.notebook import plot_maps, show_maps
from cam_callbacks.render.style import ImageStyle

if TYPE_CHECKING:  # visible to type checkers; imported lazily at run time (it imports Lightning)
    from cam_callbacks.callbacks.cam_monitor import CAMMonitor

try:
    __version__ = version("cam_callbacks")
except PackageNotFoundError:  # a source tree that was not installed
    __version__ = "0+unknown"

__all__ = [
    "CAMMonitor",
    "ExplainOptions",
    "ImageStyle",
    "ShortcutAlarm",
    "ThresholdAlarm",
    "TokenGrid",
    "available_methods",
    "explain",
    "faithfulness",
    "find_shortcuts",
    "perturbation_scores",
    "plot_maps",
    "register_method",
    "show_maps",
]


def __getattr__(name: str) -> Any:  # lazy: importing the core does not import Lightning
    if name == "CAMMonitor":
        from cam_callbacks.callbacks.cam_monitor import CAMMonitor

        return CAMMonitor
    raise AttributeError(f"module 'cam_callbacks' has no attribute {name!r}")
