"""Scores of maps: pure functions with per-image outputs (faithfulness, perturbation curves, localisation, drift,
shortcut statistics). Internal: the public functions are ``cam_callbacks.faithfulness``,
``cam_callbacks.perturbation_scores`` and ``cam_callbacks.find_shortcuts``."""
