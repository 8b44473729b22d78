"""Scores of maps: pure functions with per-image outputs (faithfulness, perturbation curves, localisation, drift,
shortcut statistics). Internal: the public functions are :func:`cam_callbacks.faithfulness`,
:func:`cam_callbacks.perturbation_scores` and :func:`cam_callbacks.find_shortcuts`."""
