"""The batched engine: one :class:`ExplainOptions`, shared passes per chunk, scorers, smoothing, layer fusion.

Torch only; used by :func:`cam_callbacks.explain`, :func:`cam_callbacks.faithfulness` and the callback.
"""

from cam_callbacks.engine.caches import CacheInfo, cache_info, clear_caches
from cam_callbacks.engine.compute import compute_explanations, compute_faithfulness
from cam_callbacks.engine.options import SMOOTH_CHOICES, ExplainOptions
from cam_callbacks.engine.passes import Layers, model_device
from cam_callbacks.engine.result import Explanation, ScoredExplanation, Scores

__all__ = [
    "CacheInfo", "ExplainOptions", "Explanation", "Layers", "SMOOTH_CHOICES", "ScoredExplanation", "Scores", "cache_info",
    "clear_caches", "compute_explanations", "compute_faithfulness", "model_device",
]  # fmt: skip
