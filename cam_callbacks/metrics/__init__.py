"""Scores of maps: pure functions with per-image outputs (faithfulness, perturbation curves, localisation, drift, shortcut score)."""

from cam_callbacks.metrics.drift import class_mean_maps, map_correlation, mean_map, shortcut_score, shortcut_scores_by_class
from cam_callbacks.metrics.faithfulness import FAITHFULNESS_METRICS, adcc, average_drop, coherency, complexity, faithfulness_scores, increase_in_confidence
from cam_callbacks.metrics.localization import (
    LOCALIZATION_METRICS,
    energy_in_mask,
    energy_in_nuisance,
    energy_ratio,
    localization_scores,
    localization_summary,
    pointing_game,
)  # fmt: skip
from cam_callbacks.metrics.perturbation_curves import CURVE_METRICS, deletion_insertion, linear_imputation, road
from cam_callbacks.metrics.watch import WATCH_METRICS, MethodAnalysis, analyze_maps

__all__ = [
    "FAITHFULNESS_METRICS", "LOCALIZATION_METRICS", "WATCH_METRICS", "MethodAnalysis", "adcc", "analyze_maps", "average_drop",
    "class_mean_maps", "coherency", "complexity", "energy_in_mask", "energy_in_nuisance", "energy_ratio", "faithfulness_scores",
    "increase_in_confidence", "localization_scores", "localization_summary", "map_correlation", "mean_map", "pointing_game",
    "shortcut_score", "shortcut_scores_by_class",
]  # fmt: skip
__all__ += ["CURVE_METRICS", "deletion_insertion", "linear_imputation", "road"]
