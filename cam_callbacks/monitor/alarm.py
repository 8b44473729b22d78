"""Threshold rules that raise an alarm when explanations point at a spurious cue.

:class:`AlarmRule` holds thresholds on the localization metrics (:mod:`cam_callbacks.metrics.localization`)
and the shortcut score (:mod:`cam_callbacks.metrics.drift`); :meth:`AlarmRule.evaluate` turns one epoch's
metric means into a list of :class:`AlarmHit` (which method, which metric, how far past the
threshold, and which probe images are the worst), and :func:`format_alarm` renders them as
Markdown, e.g. for a TensorBoard text entry.

Metric names may carry the method: ``"energy_in_nuisance_ratio"`` (no method),
``"gradcam/energy_in_nuisance_ratio"`` or a logged tag such as
``"cam/gradcam/energy_in_nuisance_ratio"``: the last ``/``-separated part is the metric and the one
before it the method.

Example::

    >>> rule = AlarmRule()
    >>> hits = rule.evaluate(
    ...     {"gradcam/energy_in_nuisance_ratio": 6.5, "gradcam/shortcut_score": 0.2},
    ...     per_image={"gradcam/energy_in_nuisance_ratio": torch.tensor([1.0, 12.0, 0.5, 9.0])},
    ... )
    >>> [(h.method, h.metric, h.direction, h.worst) for h in hits]
    [('gradcam', 'energy_in_nuisance_ratio', 'above', (1, 3, 0, 2))]
    >>> print(format_alarm(hits))
    **CAM alarm**: 1 rule fired.
    <BLANKLINE>
    | method | metric | value | rule | worst probe images |
    |---|---|---|---|---|
    | gradcam | energy_in_nuisance_ratio | 6.5 | > 2 | 1, 3, 0, 2 |
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor

from cam_callbacks.metrics.shortcuts import ShortcutCandidate, ShortcutFindings

__all__ = ["AlarmHit", "AlarmRule", "AlarmState", "DIRECTIONS", "format_alarm"]

#: Valid rule kinds: ``"max"`` fires when a value goes above its threshold, ``"min"`` below.
DIRECTIONS = ("max", "min")


@dataclass(frozen=True)
class AlarmHit:
    """One rule that fired.

    Attributes:
        method: The CAM method (the part of the metric name before the metric; ``""`` if none).
        metric: The metric name, e.g. ``"energy_in_nuisance_ratio"``.
        value: The value that broke the rule (e.g. the mean over the probe images).
        threshold: The rule's threshold.
        direction: ``"above"`` (a ``max`` rule fired) or ``"below"`` (a ``min`` rule fired).
        worst: Indices of the worst probe images, worst first (largest per-image values for a
            ``max`` rule, smallest for a ``min`` rule); empty when no per-image values were given.
        class_index: For a per-class rule (``class_shortcut_score``): the class whose maps gather; else None.
        box: For a per-class rule: ``(top, left, bottom, right)`` pixel bounds of the region to look at
            (bottom and right exclusive); else None.
        evidence: ``(name, value)`` pairs that back the hit (e.g. the class's probe accuracy, the
            occlusion effect), shown by :attr:`message` and :func:`format_alarm`.
    """

    method: str
    metric: str
    value: float
    threshold: float
    direction: str
    worst: Tuple[int, ...] = ()
    class_index: Optional[int] = None
    box: Optional[Tuple[int, int, int, int]] = None
    evidence: Tuple[Tuple[str, float], ...] = ()

    @property
    def where(self) -> str:
        """``"class 2, rows 0-5, columns 0-5"`` for a per-class hit, else ``""``."""
        if self.class_index is None:
            return ""
        place = ""
        if self.box is not None:
            top, left, bottom, right = self.box
            place = f", rows {top}-{bottom - 1}, columns {left}-{right - 1}"
        return f"class {self.class_index}{place}"

    @property
    def message(self) -> str:
        """One sentence, e.g. ``"gradcam: energy_in_nuisance_ratio = 6.5 is above 2 (worst probe images: 1, 3)"``."""
        who = f"{self.method}: " if self.method else ""
        where = f" [{self.where}]" if self.where else ""
        evidence = "; ".join(f"{name} {_fmt(value)}" for name, value in self.evidence)
        evidence = f" ({evidence})" if evidence else ""
        worst = f" (worst probe images: {', '.join(map(str, self.worst))})" if self.worst else ""
        return f"{who}{self.metric} = {_fmt(self.value)} is {self.direction} {_fmt(self.threshold)}{where}{evidence}{worst}"


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def _check_threshold(name: str, value: Optional[float], low: float, high: float = math.inf) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be None (rule off) or a finite number, got {value!r}")
    if not low <= value <= high:
        interval = f"[{low:g}, {high:g}]" if math.isfinite(high) else f">= {low:g}"
        raise ValueError(f"{name} must be None (rule off) or a number {interval}, got {value!r}")


@dataclass
class AlarmRule:
    """Thresholds that flag explanations dominated by a spurious cue; ``None`` turns a rule off.

    Defaults and why:

    - ``max_energy_in_nuisance_ratio=2.0``: the cue receives more than twice the share of the map
      that its area would get by chance (1.0 is a uniform map). A model that really uses the cue
      puts several times that on it (a 10x10 patch in a 64x64 image holds 2.4% of the pixels; half
      of the map on it is a ratio of about 20), while maps of objects placed away from the cue stay
      near or below 1. Measured in ``examples/catch_shortcut.py`` (a 7x7 patch in 48x48 images,
      6x6 Grad-CAM/LayerCAM maps, 4 seeds): 0.23-0.62 for the clean model at every epoch, 2.6-4.3
      for the shortcut model from its second epoch on.
    - ``min_energy_in_mask_ratio=None``: off by default. Set it (1.2 is a sensible bound: the
      object receives less than 1.2 times its chance share, i.e. the maps barely prefer the object;
      the margin above 1.0 absorbs the blur of upsampled low-resolution maps) to check a model that
      has finished learning, e.g. in ``trainer.validate`` after ``fit``. During training it cannot
      tell "has not learnt the object yet" from "has learnt something else": in
      ``examples/catch_shortcut.py`` (4 seeds, 6 epochs, Grad-CAM and LayerCAM) the clean model's
      ratio fell to 0.91-1.19 at the first or second epoch in 3 of 4 seeds (validation accuracy
      0.48-0.54), inside the shortcut model's range (0.79-1.36), and so raised a false alarm in
      healthy runs; from the third epoch on the runs separate (clean 1.51-1.90, shortcut 0.79-1.17).
    - ``max_shortcut_score=0.5``: at least about half of the saliency of most images sits on one
      common small region (see :func:`cam_callbacks.metrics.drift.shortcut_score`; objects at varying places
      score near 0, identical peaked maps near 1). In ``examples/catch_shortcut.py`` it stays below
      (shortcut model 0.14-0.43 from the third epoch on, clean at most 0.12): that model keeps much
      of its saliency on the object, and the nuisance rule fires instead.
    - ``min_pointing_game=None``: off by default; a per-image hit/miss is noisy on small probe sets.
    - ``max_class_shortcut_score``, ``min_class_accuracy``, ``min_occlusion_effect``,
      ``shortcut_clusters``: the per-class rule, which needs no mask (see :meth:`shortcut_suspects`
      and :meth:`evaluate_shortcuts`). It fires for a class (or a cluster of a class's maps,
      :func:`cam_callbacks.metrics.shortcuts.find_shortcuts`) whose maps gather on one small region
      (score above ``max_class_shortcut_score``), only when the model is past guessing on that class
      (probe accuracy at least ``min_class_accuracy`` or mean confidence at least
      ``min_class_confidence``: a model that is still guessing is not flagged) and, when the callback can run the model, when
      occluding the region lowers the class's probability by at least ``min_occlusion_effect``
      more than occluding the same area elsewhere. Defaults: score above 0.15, mean confidence at
      least 0.8 (accuracy not used: on a probe where the cue does not follow the label a shortcut
      model is confidently wrong), occlusion effect at least 0.1. From
      ``benchmarks/bench_shortcut_detection.py`` (39 runs, seeds 1-3; see ``benchmarks/README.md``):
      the best setting there (score 0.1, no occlusion check) flags 90/80/70% of the shortcut runs
      (nuisance masks / object masks / no masks) with no false alarm in 9 clean runs, but the clean
      run of ``examples/catch_shortcut.py`` (longer training, validation accuracy 0.94-0.97, which the
      benchmark's clean runs never reach) raised it from epoch 3 (a cluster of 5 images, score 0.12,
      confidence 0.93, occlusion effect 0.004-0.06). The occlusion check at 0.1 and the score at 0.15
      keep that run quiet (the shortcut run: score 0.51-0.53, effect 0.80-0.87).
    - ``max_unmasked_class_shortcut_score=0.4``: without object masks the score also counts the objects'
      saliency; the confident clean run of ``catch_shortcut.py --probe-masks none`` (centred objects) reached
      0.38 and raised the 0.15 bound at 4 of 6 epochs; at 0.4 it is quiet, the shortcut run flagged from epoch 1
      (0.64), no-mask benchmark detection 37% instead of 50%. ``min_class_consistency``: off (at 0.9 it cost
      detection and still let that clean run fire once); see ``benchmarks/README.md``.

    Args:
        max_energy_in_nuisance_ratio: Upper bound of ``energy_in_nuisance_ratio``.
        min_energy_in_mask_ratio: Lower bound of ``energy_in_mask_ratio`` (off by default).
        max_shortcut_score: Upper bound of ``shortcut_score``, in ``[0, 1]``.
        min_pointing_game: Lower bound of ``pointing_game``, in ``[0, 1]``.
        max_energy_in_nuisance: Upper bound of ``energy_in_nuisance``, in ``[0, 1]`` (off by default).
        extra: More rules, ``{metric: (direction, threshold)}`` with direction in :data:`DIRECTIONS`,
            for any logged metric (e.g. ``{"adcc": ("min", 50.0)}``).
        top_k: Number of worst probe images reported per hit (``>= 0``).
        max_class_shortcut_score: Upper bound of a class's (or cluster's) shortcut score, in ``[0, 1]`` (None: rule off).
        min_class_accuracy: The per-class rule considers a class whose probe accuracy is at least this, in ``[0, 1]``
            (None: accuracy is not used) ...
        min_class_confidence: ... or whose mean probability of the explained class is at least this (None: not used;
            both None: every class; see :meth:`learned`).
        min_occlusion_effect: Least occlusion effect (drop of the class's probability, region minus
            control) that confirms a suspect; None: no confirmation needed.
        shortcut_clusters: Clusters of maps per class (0 or 1: whole classes only).
        max_unmasked_class_shortcut_score: ``max_class_shortcut_score`` for maps found without object masks (None: the same).
        min_class_consistency: Least mean pairwise Pearson correlation of a suspect's pooled maps, in ``[-1, 1]``
            (None: not used): maps that follow objects of varying shape agree less than maps on one fixed cue.

    Example::

        >>> AlarmRule(min_pointing_game=0.5).rules()["pointing_game"]
        ('min', 0.5)
        >>> AlarmRule(extra={"adcc": ("above", 50.0)})
        Traceback (most recent call last):
        ...
        ValueError: extra['adcc']: direction must be one of ['max', 'min'], got 'above'
    """

    max_energy_in_nuisance_ratio: Optional[float] = 2.0
    min_energy_in_mask_ratio: Optional[float] = None
    max_shortcut_score: Optional[float] = 0.5
    min_pointing_game: Optional[float] = None
    max_energy_in_nuisance: Optional[float] = None
    extra: Mapping[str, Tuple[str, float]] = field(default_factory=dict)
    top_k: int = 4
    max_class_shortcut_score: Optional[float] = 0.15
    min_class_accuracy: Optional[float] = None
    min_class_confidence: Optional[float] = 0.8
    min_occlusion_effect: Optional[float] = 0.1
    shortcut_clusters: int = 2
    min_class_consistency: Optional[float] = None
    max_unmasked_class_shortcut_score: Optional[float] = 0.4

    #: Built-in rules: field name -> (metric, direction).
    _FIELDS: ClassVar[Dict[str, Tuple[str, str]]] = {
        "max_energy_in_nuisance_ratio": ("energy_in_nuisance_ratio", "max"),
        "min_energy_in_mask_ratio": ("energy_in_mask_ratio", "min"),
        "max_shortcut_score": ("shortcut_score", "max"),
        "min_pointing_game": ("pointing_game", "min"),
        "max_energy_in_nuisance": ("energy_in_nuisance", "max"),
    }

    def __post_init__(self) -> None:
        _check_threshold("max_energy_in_nuisance_ratio", self.max_energy_in_nuisance_ratio, 0.0)
        _check_threshold("min_energy_in_mask_ratio", self.min_energy_in_mask_ratio, 0.0)
        _check_threshold("max_shortcut_score", self.max_shortcut_score, 0.0, 1.0)
        _check_threshold("min_pointing_game", self.min_pointing_game, 0.0, 1.0)
        _check_threshold("max_energy_in_nuisance", self.max_energy_in_nuisance, 0.0, 1.0)
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k must be an int >= 0, got {self.top_k!r}")
        _check_threshold("max_class_shortcut_score", self.max_class_shortcut_score, 0.0, 1.0)
        _check_threshold("min_class_accuracy", self.min_class_accuracy, 0.0, 1.0)
        _check_threshold("min_class_confidence", self.min_class_confidence, 0.0, 1.0)
        _check_threshold("min_class_consistency", self.min_class_consistency, -1.0, 1.0)
        _check_threshold("max_unmasked_class_shortcut_score", self.max_unmasked_class_shortcut_score, 0.0, 1.0)
        _check_threshold("min_occlusion_effect", self.min_occlusion_effect, -1.0, 1.0)
        if isinstance(self.shortcut_clusters, bool) or not isinstance(self.shortcut_clusters, int) or self.shortcut_clusters < 0:
            raise ValueError(f"shortcut_clusters must be an int >= 0, got {self.shortcut_clusters!r}")
        if not isinstance(self.extra, Mapping):
            raise ValueError(f"extra must be a mapping {{metric: (direction, threshold)}}, got {type(self.extra).__name__}")
        builtin = {metric: name for name, (metric, _) in self._FIELDS.items()}
        for metric, rule in self.extra.items():
            if not isinstance(metric, str) or not metric or "/" in metric:
                raise ValueError(f"extra: metric names must be non-empty strings without '/', got {metric!r}")
            if metric in builtin:
                raise ValueError(f"extra[{metric!r}]: {metric} has a built-in rule; set {builtin[metric]}=... instead")
            if not isinstance(rule, (tuple, list)) or len(rule) != 2:
                raise ValueError(
                    f"extra[{metric!r}] must be a (direction, threshold) pair with direction in {list(DIRECTIONS)}, got {rule!r}"
                )
            direction, threshold = rule
            if direction not in DIRECTIONS:
                raise ValueError(f"extra[{metric!r}]: direction must be one of {list(DIRECTIONS)}, got {direction!r}")
            _check_threshold(f"extra[{metric!r}] threshold", threshold, -math.inf)

    def rules(self) -> Dict[str, Tuple[str, float]]:
        """The active rules, ``{metric: (direction, threshold)}`` (built-in ones first)."""
        active: Dict[str, Tuple[str, float]] = {}
        for name, (metric, direction) in self._FIELDS.items():
            threshold = getattr(self, name)
            if threshold is not None:
                active[metric] = (direction, float(threshold))
        for metric, (direction, threshold) in self.extra.items():
            active[metric] = (direction, float(threshold))
        return active

    def evaluate(self, metrics: Mapping[str, float], per_image: Optional[Mapping[str, Tensor]] = None) -> List[AlarmHit]:
        """The rules that fire on one epoch's metrics, in the order of ``metrics``.

        A ``max`` rule fires when ``value > threshold``, a ``min`` rule when ``value < threshold``
        (a value equal to the threshold does not fire). NaN values never fire; metrics without a
        rule are ignored.

        Args:
            metrics: ``{name: value}`` where the name ends with the metric (``"metric"``,
                ``"method/metric"`` or ``"prefix/method/metric"``); values are floats or 0-dim tensors.
            per_image: Optional ``{name: (N,) tensor}`` under the same names, to rank the probe images.
                NaN entries are skipped (mark images that have no score, e.g. an empty mask, with NaN).
                For ``shortcut_score`` pass each image's share in the shortcut region
                (:attr:`cam_callbacks.metrics.drift.ShortcutReport.per_image`).

        Returns:
            A list of :class:`AlarmHit`.
        """
        if not isinstance(metrics, Mapping):
            raise ValueError(f"metrics must be a mapping {{name: value}}, got {type(metrics).__name__}")
        per_image = per_image or {}
        rules = self.rules()
        hits: List[AlarmHit] = []
        for name, raw in metrics.items():
            method, metric = _split_name(name)
            if metric not in rules:
                continue
            direction, threshold = rules[metric]
            value = float(raw)
            if math.isnan(value):
                continue
            fired = value > threshold if direction == "max" else value < threshold
            if not fired:
                continue
            worst: Tuple[int, ...] = ()
            if name in per_image:
                worst = _worst(per_image[name], direction, self.top_k, name)
            hits.append(AlarmHit(method, metric, value, threshold, "above" if direction == "max" else "below", worst))
        return hits


    def learned(self, candidate: ShortcutCandidate) -> bool:
        """Whether the model is past guessing on the candidate's class: its probe accuracy is at least
        ``min_class_accuracy`` or its mean confidence at least ``min_class_confidence`` (True when neither is known).

        Confidence alone counts too, because a probe on which the cue does not follow the label makes a
        shortcut model confidently wrong.
        """
        accuracy = math.nan if self.min_class_accuracy is None else candidate.accuracy
        confidence = math.nan if self.min_class_confidence is None else candidate.confidence
        if math.isnan(accuracy) and math.isnan(confidence):
            return True
        return (not math.isnan(accuracy) and accuracy >= float(self.min_class_accuracy or 0.0)) or (
            not math.isnan(confidence) and confidence >= float(self.min_class_confidence or 0.0)
        )

    def class_score_limit(self, candidate: ShortcutCandidate) -> float:
        """The score a candidate must exceed: ``max_unmasked_class_shortcut_score`` (when set) without masks, else ``max_class_shortcut_score``."""
        unmasked = math.isnan(candidate.outside_share) and self.max_unmasked_class_shortcut_score is not None
        limit = self.max_unmasked_class_shortcut_score if unmasked else self.max_class_shortcut_score
        return 1.0 if limit is None else float(limit)

    def shortcut_suspects(self, findings: ShortcutFindings) -> List[int]:
        """Indices into ``findings.candidates`` of the best candidate of each class whose score is above
        ``max_class_shortcut_score`` and whose class the model has learned (empty when the rule is off)."""
        if self.max_class_shortcut_score is None:
            return []
        suspects: Dict[int, int] = {}
        for index, candidate in enumerate(findings.candidates):  # highest score first
            consistent = self.min_class_consistency is None or candidate.consistency >= self.min_class_consistency
            if candidate.score > self.class_score_limit(candidate) and consistent and self.learned(candidate):
                suspects.setdefault(candidate.class_index, index)
        return list(suspects.values())

    def evaluate_shortcuts(
        self, method: str, findings: ShortcutFindings, effects: Optional[Mapping[int, float]] = None
    ) -> List[AlarmHit]:
        """Hits of the per-class rule: one per suspect class (see :meth:`shortcut_suspects`).

        Args:
            method: The method name the hits carry.
            findings: :func:`cam_callbacks.metrics.shortcuts.find_shortcuts` of the method's maps.
            effects: ``{candidate index: occlusion effect}``
                (:func:`cam_callbacks.engine.occlusion.occlusion_effect`) for the suspects; a suspect
                without an effect (None: the model was not run) fires on its score alone; with
                ``min_occlusion_effect`` set, one with a smaller effect does not fire.
        """
        hits: List[AlarmHit] = []
        for index in self.shortcut_suspects(findings):
            candidate = findings.candidates[index]
            evidence = [("class size", float(candidate.class_size)), ("cluster size", float(candidate.size))]
            evidence += [(name, value) for name, value in (
                ("accuracy", candidate.accuracy), ("confidence", candidate.confidence),
                ("consistency", candidate.consistency), ("outside objects", candidate.outside_share),
            ) if not math.isnan(value)]  # fmt: skip
            effect = None if effects is None else effects.get(index)
            if effect is not None:
                if self.min_occlusion_effect is not None and not effect >= self.min_occlusion_effect:
                    continue
                evidence.append(("occlusion effect", float(effect)))
            worst = tuple(int(i) for i in candidate.members[: self.top_k].tolist())
            hits.append(AlarmHit(
                method, "class_shortcut_score", candidate.score, self.class_score_limit(candidate), "above", worst,
                candidate.class_index, candidate.box, tuple(evidence),
            ))  # fmt: skip
        return hits


def _split_name(name: str) -> Tuple[str, str]:
    parts = str(name).split("/")
    return (parts[-2] if len(parts) >= 2 else ""), parts[-1]


def _worst(values: Tensor, direction: str, k: int, name: str) -> Tuple[int, ...]:
    values = torch.as_tensor(values)
    if values.dim() != 1:
        raise ValueError(f"per_image[{name!r}] must be an (N,) tensor, got shape {tuple(values.shape)}")
    if k == 0 or values.numel() == 0:
        return ()
    values = values.detach().double().cpu()
    index = (~torch.isnan(values)).nonzero().flatten()
    ordered = values[index].argsort(descending=direction == "max", stable=True)
    return tuple(int(i) for i in index[ordered[:k]])


def format_alarm(hits: Sequence[AlarmHit], title: str = "CAM alarm") -> str:
    """Markdown text for a list of hits: a one-line summary and a table (renders in TensorBoard).

    Returns ``"**<title>**: no rule fired."`` for an empty list.

    Example::

        >>> print(format_alarm([]))
        **CAM alarm**: no rule fired.
        >>> hit = AlarmHit("layercam", "energy_in_mask_ratio", 0.93, 1.2, "below", (5,))
        >>> print(format_alarm([hit], title="Epoch 3"))
        **Epoch 3**: 1 rule fired.
        <BLANKLINE>
        | method | metric | value | rule | worst probe images |
        |---|---|---|---|---|
        | layercam | energy_in_mask_ratio | 0.93 | < 1.2 | 5 |
    """
    if not hits:
        return f"**{title}**: no rule fired."
    lines = [
        f"**{title}**: {len(hits)} rule{'s' if len(hits) != 1 else ''} fired.",
        "",
        "| method | metric | value | rule | worst probe images |",
        "|---|---|---|---|---|",
    ]
    for hit in hits:
        rule = f"{'>' if hit.direction == 'above' else '<'} {_fmt(hit.threshold)}"
        worst = ", ".join(map(str, hit.worst)) if hit.worst else "-"
        method = hit.method or "-"
        lines.append(f"| {method} | {hit.metric} | {_fmt(hit.value)} | {rule} | {worst} |")
    details = [hit for hit in hits if hit.where or hit.evidence]
    if details:
        lines.append("")
        for hit in details:
            evidence = ", ".join(f"{name} {_fmt(value)}" for name, value in hit.evidence)
            lines.append(f"- {hit.method or '-'}, {hit.where or hit.metric}: {evidence or 'no further evidence'}")
    return "\n".join(lines)


class AlarmState:
    """Which rules are firing now, so that a person is told when the alarm fires, changes or clears (not every epoch).

    Example::

        >>> state = AlarmState()
        >>> hit = AlarmHit("gradcam", "shortcut_score", 0.9, 0.5, "above")
        >>> state.update([hit]), state.update([hit]), state.update([])
        ('fired', None, 'cleared')
    """

    def __init__(self) -> None:
        self.active: Tuple[Tuple[str, str], ...] = ()

    def update(self, hits: Sequence[AlarmHit]) -> Optional[str]:
        """Record this run's hits; ``"fired"`` when they differ from the last run's and are not empty,
        ``"cleared"`` when the alarm stopped, else None."""
        now = tuple((hit.method, hit.metric) for hit in hits)
        previous, self.active = self.active, now
        if now and now != previous:
            return "fired"
        if not now and previous:
            return "cleared"
        return None

    def state_dict(self) -> Dict[str, List[List[str]]]:
        """The firing rules as ``[method, metric]`` pairs."""
        return {"alarm_state": [list(pair) for pair in self.active]}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        """Restore :meth:`state_dict`."""
        pairs = state.get("alarm_state", ()) or ()
        self.active = tuple((str(method), str(metric)) for method, metric in pairs)  # type: ignore[attr-defined]
