"""The engine behind ``perturbation_scores``: maps, then deletion/insertion, ROAD and ARCC on them.

One ``compute_explanations`` call gives the maps of every method; each metric then
scores all images and all perturbation steps in batched passes of the whole model
(``ModelScorer``, rows sized to the free memory of the model's device by the bytes
one image costs, measured once per model and input shape and cached). ARCC adds ROAD at its own percentiles (20, 40,
60, 80; shared with ``"road"`` when those are its percentiles) and one explanation pass of each method on its
explanation images (Coherency).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from cam_callbacks.capture.state import eager, preserved_model_state
from cam_callbacks.engine.caches import cached_cost, store_cost
from cam_callbacks.engine.compute import compute_explanations, explanation_pass, nonfinite_rows
from cam_callbacks.engine.options import ExplainOptions
from cam_callbacks.engine.passes import Layers
from cam_callbacks.engine.result import Explanation, ScoredExplanation, Scores
from cam_callbacks.engine.scorers import ForwardCost, ModelScorer, rows_per_pass
from cam_callbacks.metrics.faithfulness import ARCC_ROAD_PERCENTILES, arcc, coherency, complexity
from cam_callbacks.metrics.perturbation_curves import CURVE_METRICS, ROAD_PERCENTILES, Baseline, deletion_insertion, road


@dataclass(frozen=True)
class CurveSettings:
    """Which perturbation metrics, and how (see ``cam_callbacks.metrics.perturbation_curves``).

    Example::

        >>> CurveSettings(metrics=("deletion_auc", "roads"))
        Traceback (most recent call last):
        ...
        ValueError: metrics: 'roads' is not valid; choose from ['deletion_auc', 'insertion_auc', 'road_morf', 'road_lerf', 'road', 'arcc']
    """

    metrics: Tuple[str, ...] = ("deletion_auc", "insertion_auc", "road")
    steps: int = 20
    baseline: Baseline = "zero"
    percentiles: Tuple[float, ...] = ROAD_PERCENTILES
    road_noise: float = 0.01

    def __post_init__(self) -> None:
        metrics = (self.metrics,) if isinstance(self.metrics, str) else tuple(self.metrics)
        if not metrics:
            raise ValueError(f"metrics is empty; choose from {list(CURVE_METRICS)}")
        for name in metrics:
            if name not in CURVE_METRICS:
                raise ValueError(f"metrics: {name!r} is not valid; choose from {list(CURVE_METRICS)}")
        object.__setattr__(self, "metrics", metrics)
        if not isinstance(self.steps, int) or isinstance(self.steps, bool) or self.steps < 1:
            raise ValueError(f"steps must be a positive int, got {self.steps!r}")
        if not isinstance(self.baseline, Tensor) and self.baseline not in ("zero", "blur"):
            raise ValueError(f"baseline={self.baseline!r} is not valid; choose from ['zero', 'blur'] or give a tensor")
        percentiles = tuple(float(p) for p in self.percentiles)
        if not percentiles or any(not 0 <= p <= 100 for p in percentiles):
            raise ValueError(f"percentiles must be a non-empty sequence of numbers in [0, 100], got {self.percentiles!r}")
        object.__setattr__(self, "percentiles", percentiles)
        if not float(self.road_noise) >= 0:
            raise ValueError(f"road_noise must be >= 0, got {self.road_noise!r}")


def check_curves(curves: object) -> Optional[CurveSettings]:
    """``CAMMonitor(curves=...)``: None or an empty sequence (off), or metric names of ``CURVE_METRICS``.

    Example::

        >>> check_curves(["deletion_auc", "road"]).metrics
        ('deletion_auc', 'road')
        >>> check_curves("roads")
        Traceback (most recent call last):
        ...
        ValueError: curves: 'roads' is not valid; choose from ['deletion_auc', 'insertion_auc', 'road_morf', 'road_lerf', 'road', 'arcc']
    """
    if curves is None:
        return None
    names = (curves,) if isinstance(curves, str) else curves
    if not isinstance(names, (list, tuple)) or not all(isinstance(name, str) for name in names):
        raise TypeError(f"curves must be a sequence of metric names from {list(CURVE_METRICS)}, got {curves!r}")
    for name in names:
        if name not in CURVE_METRICS:
            raise ValueError(f"curves: {name!r} is not valid; choose from {list(CURVE_METRICS)}")
    return CurveSettings(metrics=tuple(names)) if names else None


def curve_scorer(model: nn.Module, x: Tensor, options: ExplainOptions) -> ModelScorer:
    """A ``ModelScorer`` for ``model`` on rows shaped like ``x``'s, sized by the measured bytes per image (cached)."""
    key = ("<whole model>", tuple(x.shape[1:]), x.dtype, x.device)
    cost = cached_cost(model, key)
    if cost is None:
        with torch.no_grad(), ForwardCost(model, model, 1) as meter:
            model(x[:1])
        cost = meter.result(0)
        store_cost(model, key, cost)
    return ModelScorer(model, rows_per_pass(cost.model, x.device, options.perturbation_batch), options.output_transform)


def curve_scores(
    model: nn.Module, images: Tensor, explanation: Explanation, methods: Sequence[str], options: ExplainOptions, settings: CurveSettings
) -> Scores:
    """``scores[method][metric]`` ``(N,)`` of the maps in ``explanation`` (computed for ``images``), in batched passes of
    ``model`` (eval mode for the call, every flag restored). ROAD's noise is seeded with ``options.seed``.

    ARCC also runs each method on its explanation images (``explanation_pass``, at
    the layers of ``explanation``); a row whose logits or map of that pass are not finite gets NaN."""
    wanted = set(settings.metrics)
    scores: Scores = {}
    with torch.inference_mode(False), preserved_model_state(model), eager():
        x = images.to(explanation.logits.device)
        scorer = curve_scorer(model, x, options)
        for name in methods:
            maps, per_image = explanation.maps[name], {}
            if wanted & {"deletion_auc", "insertion_auc"}:
                per_image.update(deletion_insertion(x, maps, explanation.targets, scorer, settings.steps, settings.baseline, options.probability))
            if wanted & {"road_morf", "road_lerf", "road"}:
                per_image.update(road(x, maps, explanation.targets, scorer, settings.percentiles, settings.road_noise, options.seed, options.probability))
            if "arcc" in wanted:
                per_image["arcc"] = _arcc(model, x, explanation, name, scorer, options, settings, per_image)
            scores[name] = {metric: per_image[metric] for metric in settings.metrics}
    return scores


def _arcc(
    model: nn.Module,
    x: Tensor,
    explanation: Explanation,
    name: str,
    scorer: ModelScorer,
    options: ExplainOptions,
    settings: CurveSettings,
    computed: Dict[str, Tensor],
) -> Tensor:
    """ARCC of ``name``'s maps: ROAD at ``ARCC_ROAD_PERCENTILES`` (the ``"road"`` just computed when its percentiles
    are those), Coherency from one explanation pass, Complexity."""
    maps = explanation.maps[name]
    if "road" in computed and tuple(settings.percentiles) == tuple(float(p) for p in ARCC_ROAD_PERCENTILES):
        road_combined = computed["road"]
    else:
        road_combined = road(x, maps, explanation.targets, scorer, ARCC_ROAD_PERCENTILES, settings.road_noise, options.seed, options.probability)["road"]
    second = explanation_pass(model, x, explanation, name, options)
    value = arcc(coherency(maps, second.maps[name]), complexity(maps), road_combined.to(maps.device))
    bad = nonfinite_rows(second.logits, second.maps[name]).to(value.device)
    return torch.where(bad, torch.full_like(value, float("nan")), value)


def compute_perturbation_scores(
    model: nn.Module,
    images: Tensor,
    methods: Sequence[str],
    layers: Layers,
    targets: Optional[Tensor] = None,
    options: Optional[ExplainOptions] = None,
    settings: Optional[CurveSettings] = None,
) -> ScoredExplanation:
    """Maps of ``methods`` and their per-image perturbation scores (fractions; ROAD differences of probabilities).

    Returns ``scores[method][metric]`` ``(N,)`` with the metrics of ``settings`` (``curve_scores``).
    """
    options = options or ExplainOptions()
    settings = settings or CurveSettings()
    explanation = compute_explanations(model, images, methods, layers, targets, options)
    return ScoredExplanation(explanation, curve_scores(model, images, explanation, methods, options, settings))
