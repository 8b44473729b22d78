"""Alarm policies: when the explanations say the model looks at a spurious cue, and how that is told.

Two small policies, each one decision:

- ``ThresholdAlarm``: a bound on one logged metric's mean over the probe (e.g. the nuisance region's
  share of the maps), the rule for probes with masks and for any metric a user wants watched;
- ``ShortcutAlarm``: the per-class rule, which needs no mask: a class whose maps gather on one small
  region that the model relies on.

Their hits are ``AlarmHit`` records (which method, which metric, how far past the bound, which probe
images); ``format_alarm`` renders them as Markdown; ``AlarmState`` says when the alarm fires,
changes (another rule, method or class) or clears.

Metric names may carry the method: ``"energy_in_nuisance_ratio"``, ``"gradcam/energy_in_nuisance_ratio"`` or
a logged tag such as ``"cam/gradcam/energy_in_nuisance_ratio"``: the last ``/``-separated part is the metric
and the one before it the method.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from cam_callbacks.metrics.faithfulness import FAITHFULNESS_METRICS
from cam_callbacks.metrics.perturbation_curves import CURVE_METRICS
from cam_callbacks.metrics.shortcuts import ShortcutCandidate, ShortcutFindings
from cam_callbacks.metrics.watch import WATCH_METRICS


@dataclass(frozen=True)
class AlarmHit:
    """One rule that fired.

    Attributes:
        method: The CAM method (the part of the metric name before the metric; ``""`` if none).
        metric: The metric name, e.g. ``"energy_in_nuisance_ratio"``.
        value: The value that broke the rule (e.g. the mean over the probe images).
        threshold: The rule's threshold.
        direction: ``"above"`` or ``"below"``: which side of the threshold the value is on.
        worst: Indices of the worst probe images, worst first (largest per-image values for an
            ``above`` rule, smallest for a ``below`` rule); empty when no per-image values were given.
        class_index: For a per-class rule (``class_shortcut_score``): the class whose maps gather; else None.
        box: For a per-class rule: ``(top, left, bottom, right)`` pixel bounds of the region to look at
            (bottom and right exclusive); else None.
        evidence: ``(name, value)`` pairs that back the hit (e.g. the class's probe accuracy, the
            occlusion effect), shown by ``message`` and ``format_alarm``.
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


def _check_bound(owner: str, name: str, value: Optional[float], low: float, high: float = math.inf) -> None:
    """``value`` is None (off) or a finite number in ``[low, high]``; the message names the object and the field."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{owner}: {name} must be None (off) or a finite number, got {value!r}")
    if not low <= value <= high:
        interval = f"in [{low:g}, {high:g}]" if math.isfinite(high) else f">= {low:g}"
        raise ValueError(f"{owner}: {name} must be None (off) or a number {interval}, got {value!r}")


def _check_count(owner: str, name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{owner}: {name} must be an int >= 0, got {value!r}")


def _check_flag(owner: str, name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{owner}: {name} must be True or False, got {value!r}")


#: Metrics whose values are fractions in [0, 1]: a bound outside that range could never fire, so it is refused.
_FRACTION_METRICS = frozenset(
    ("energy_in_mask", "pointing_game", "energy_in_nuisance", "shortcut_score", "class_shortcut_score") + FAITHFULNESS_METRICS + CURVE_METRICS
)
#: Metrics that are ratios to a chance share (1.0: as much as the area would get by chance): never negative.
_RATIO_METRICS = frozenset(("energy_in_mask_ratio", "energy_in_nuisance_ratio"))
#: Every metric name a ``ThresholdAlarm`` can watch: the logged per-method scalars.
ALARM_METRICS = tuple(name for name in WATCH_METRICS + FAITHFULNESS_METRICS + CURVE_METRICS if name not in ("class_shortcut_score", "class_shortcut_class"))


@dataclass(frozen=True)
class ThresholdAlarm:
    """Fires when one logged metric's mean over the probe images goes past a bound.

    One policy, one metric: the default alarm of ``CAMMonitor`` holds two of them,
    ``ThresholdAlarm("energy_in_nuisance_ratio", above=2.0)`` (the declared nuisance region gets more than
    twice the share of the map that its area would get by chance) and ``ThresholdAlarm("shortcut_score",
    above=0.5)`` (about half of most images' saliency sits on one common small region). How these bounds
    were chosen is in ``benchmarks/README.md``.

    A value equal to the bound does not fire; NaN never fires (an image without a mask has no value).

    Args:
        metric: A logged metric name (see the metric conventions in the docs), e.g. ``"energy_in_nuisance_ratio"``,
            ``"shortcut_score"``, ``"pointing_game"``, ``"energy_in_mask_ratio"``, ``"adcc"``.
        above: Fire when the value is above this.
        below: Fire when the value is below this (give exactly one of ``above`` and ``below``).
        top_k: Worst probe images named in the alarm (``>= 0``).
        stop: Stop training (as ``EarlyStopping`` does) when this alarm fires.

    Examples:
        >>> rule = ThresholdAlarm("energy_in_nuisance_ratio", above=2.0)
        >>> hits = rule.evaluate(
        ...     {"cam/gradcam/energy_in_nuisance_ratio": 6.5, "cam/gradcam/shortcut_score": 0.2},
        ...     per_image={"cam/gradcam/energy_in_nuisance_ratio": torch.tensor([1.0, 12.0, 0.5, 9.0])},
        ... )
        >>> [(h.method, h.metric, h.direction, h.worst) for h in hits]
        [('gradcam', 'energy_in_nuisance_ratio', 'above', (1, 3, 0, 2))]
        >>> ThresholdAlarm("adcc", above=0.5, below=0.9)
        Traceback (most recent call last):
        ...
        ValueError: ThresholdAlarm('adcc'): give exactly one of above= and below=, got above=0.5 and below=0.9
    """

    metric: str
    above: Optional[float] = None
    below: Optional[float] = None
    top_k: int = 4
    stop: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.metric, str) or self.metric not in ALARM_METRICS:
            close = difflib.get_close_matches(str(self.metric).lower().split("/")[-1], ALARM_METRICS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else "."
            raise ValueError(
                f"ThresholdAlarm: metric={self.metric!r} is not a logged metric{hint} Choose from {list(ALARM_METRICS)} "
                "(the metric's name alone: the alarm applies it to every method)"
            )
        owner = f"ThresholdAlarm({self.metric!r})"
        if (self.above is None) == (self.below is None):
            raise ValueError(f"{owner}: give exactly one of above= and below=, got above={self.above!r} and below={self.below!r}")
        low, high = -math.inf, math.inf
        if self.metric in _FRACTION_METRICS:
            low, high = 0.0, 1.0
        elif self.metric in _RATIO_METRICS:
            low = 0.0
        _check_bound(owner, "above", self.above, low, high)
        _check_bound(owner, "below", self.below, low, high)
        _check_count(owner, "top_k", self.top_k)
        _check_flag(owner, "stop", self.stop)

    @property
    def direction(self) -> str:
        """``"above"`` or ``"below"``."""
        return "above" if self.above is not None else "below"

    @property
    def bound(self) -> float:
        """The threshold."""
        return float(self.above if self.above is not None else self.below)  # type: ignore[arg-type]

    def evaluate(self, metrics: Mapping[str, float], per_image: Optional[Mapping[str, Tensor]] = None) -> List[AlarmHit]:
        """The hits of this rule on one run's scalars.

        Args:
            metrics: ``{name: value}`` where the name ends with the metric (``"metric"``, ``"method/metric"`` or
                ``"prefix/method/metric"``); values are floats or 0-dim tensors. Other metrics are ignored.
            per_image: Optional ``{name: (N,) tensor}`` under the same names, to rank the probe images (NaN entries
                are skipped).

        Returns:
            One ``AlarmHit`` per method whose value is past the bound, in the order of ``metrics``.
        """
        if not isinstance(metrics, Mapping):
            raise ValueError(f"metrics must be a mapping {{name: value}}, got {type(metrics).__name__}")
        per_image = per_image or {}
        hits: List[AlarmHit] = []
        for name, raw in metrics.items():
            method, metric = _split_name(name)
            if metric != self.metric:
                continue
            value = float(raw)
            fired = value > self.bound if self.direction == "above" else value < self.bound
            if math.isnan(value) or not fired:
                continue
            worst: Tuple[int, ...] = ()
            if name in per_image:
                worst = _worst(per_image[name], self.direction, self.top_k, name)
            hits.append(AlarmHit(method, metric, value, self.bound, self.direction, worst))
        return hits


@dataclass(frozen=True)
class ShortcutAlarm:
    """Fires for a class whose maps gather on one small region that the model relies on: the per-class rule.

    Needs no mask. For each explained class (and each cluster of its maps,
    ``find_shortcuts``) the maps' agreement on one small place is scored (0: the maps move
    with the content, 1: every map on one spot). A class fires when

    1. its score is above ``score`` (``unmasked_score`` when the probe has no object masks: the score then
       also counts the objects' own saliency),
    2. the model is past guessing on it: probe accuracy at least ``min_accuracy`` or mean confidence at least
       ``min_confidence`` (a model that has not learned the class yet is not flagged), and
    3. (inside the callback, which can run the model) hiding the region lowers the class's probability by at
       least ``min_occlusion_effect`` more than hiding the same area elsewhere.

    The defaults and the benchmark that chose them are in ``benchmarks/README.md``.

    Args:
        score: Least score that makes a class a suspect, in [0, 1].
        unmasked_score: The same bound for maps found without object masks (None: ``score``).
        min_confidence: A suspect's class must have at least this mean probability of the explained class (None: not used).
        min_accuracy: ... or at least this probe accuracy (None: not used; both None: every class counts as learned).
        min_occlusion_effect: Least occlusion effect that confirms a suspect, in [-1, 1] (None: no confirmation).
        clusters: Clusters of maps looked at inside each class (0 or 1: whole classes only).
        min_consistency: Least mean pairwise correlation of a suspect's maps, in [-1, 1] (None: not used).
        top_k: Probe images named per hit (``>= 0``).
        stop: Stop training (as ``EarlyStopping`` does) when this alarm fires.

    Examples:
        >>> ShortcutAlarm(score=0.2).score
        0.2
        >>> ShortcutAlarm(score=1.5)
        Traceback (most recent call last):
        ...
        ValueError: ShortcutAlarm: score must be None (off) or a number in [0, 1], got 1.5
    """

    score: float = 0.15
    unmasked_score: Optional[float] = 0.4
    min_confidence: Optional[float] = 0.8
    min_accuracy: Optional[float] = None
    min_occlusion_effect: Optional[float] = 0.1
    clusters: int = 2
    min_consistency: Optional[float] = None
    top_k: int = 4
    stop: bool = False

    def __post_init__(self) -> None:
        owner = "ShortcutAlarm"
        if self.score is None:
            raise ValueError(f"{owner}: score must be a number in [0, 1] (leave ShortcutAlarm out of alarm= to switch it off), got None")
        _check_bound(owner, "score", self.score, 0.0, 1.0)
        _check_bound(owner, "unmasked_score", self.unmasked_score, 0.0, 1.0)
        _check_bound(owner, "min_confidence", self.min_confidence, 0.0, 1.0)
        _check_bound(owner, "min_accuracy", self.min_accuracy, 0.0, 1.0)
        _check_bound(owner, "min_occlusion_effect", self.min_occlusion_effect, -1.0, 1.0)
        _check_bound(owner, "min_consistency", self.min_consistency, -1.0, 1.0)
        _check_count(owner, "clusters", self.clusters)
        _check_count(owner, "top_k", self.top_k)
        _check_flag(owner, "stop", self.stop)

    def learned(self, candidate: ShortcutCandidate) -> bool:
        """Whether the model is past guessing on the candidate's class (True when neither bound is known).

        Confidence alone counts too, because a probe on which the cue does not follow the label makes a
        shortcut model confidently wrong.
        """
        accuracy = math.nan if self.min_accuracy is None else candidate.accuracy
        confidence = math.nan if self.min_confidence is None else candidate.confidence
        if math.isnan(accuracy) and math.isnan(confidence):
            return True
        accurate = not math.isnan(accuracy) and accuracy >= float(self.min_accuracy or 0.0)
        confident = not math.isnan(confidence) and confidence >= float(self.min_confidence or 0.0)
        return accurate or confident

    def score_limit(self, candidate: ShortcutCandidate) -> float:
        """The score a candidate must exceed: ``unmasked_score`` (when set) for maps found without masks, else ``score``."""
        unmasked = math.isnan(candidate.outside_share) and self.unmasked_score is not None
        return float(self.unmasked_score if unmasked else self.score)  # type: ignore[arg-type]

    def suspects(self, findings: ShortcutFindings) -> List[int]:
        """Indices into ``findings.candidates`` of the best candidate of each class that passes checks 1 and 2."""
        chosen: Dict[int, int] = {}
        for index, candidate in enumerate(findings.candidates):  # highest score first
            consistent = self.min_consistency is None or candidate.consistency >= self.min_consistency
            if candidate.score > self.score_limit(candidate) and consistent and self.learned(candidate):
                chosen.setdefault(candidate.class_index, index)
        return list(chosen.values())

    def evaluate(self, method: str, findings: ShortcutFindings, effects: Optional[Mapping[int, float]] = None) -> List[AlarmHit]:
        """The hits of this rule for one method: one per suspect class that check 3 confirms.

        Args:
            method: The method name the hits carry.
            findings: ``find_shortcuts`` of the method's maps.
            effects: ``{candidate index: occlusion effect}`` for the suspects; None (the model was not run): a
                suspect fires on checks 1 and 2 alone.
        """
        hits: List[AlarmHit] = []
        for index in self.suspects(findings):
            candidate = findings.candidates[index]
            evidence = [("class size", float(candidate.class_size)), ("cluster size", float(candidate.size))]
            optional = (
                ("accuracy", candidate.accuracy),
                ("confidence", candidate.confidence),
                ("consistency", candidate.consistency),
                ("outside objects", candidate.outside_share),
            )
            evidence += [(name, value) for name, value in optional if not math.isnan(value)]
            effect = None if effects is None else effects.get(index)
            if effect is not None:
                if self.min_occlusion_effect is not None and not effect >= self.min_occlusion_effect:
                    continue
                evidence.append(("occlusion effect", float(effect)))
            hits.append(
                AlarmHit(
                    method=method,
                    metric="class_shortcut_score",
                    value=candidate.score,
                    threshold=self.score_limit(candidate),
                    direction="above",
                    worst=tuple(int(i) for i in candidate.members[: self.top_k].tolist()),
                    class_index=candidate.class_index,
                    box=candidate.box,
                    evidence=tuple(evidence),
                )
            )
        return hits


#: One alarm policy: a bound on a metric, or the per-class shortcut rule.
AlarmPolicy = Union[ThresholdAlarm, ShortcutAlarm]

#: The alarm ``CAMMonitor`` checks by default.
DEFAULT_ALARM: Tuple[AlarmPolicy, ...] = (
    ThresholdAlarm("energy_in_nuisance_ratio", above=2.0),
    ThresholdAlarm("shortcut_score", above=0.5),
    ShortcutAlarm(),
)


def threshold_hits(
    policies: Sequence[AlarmPolicy],
    metrics: Mapping[str, float],
    per_image: Optional[Mapping[str, Tensor]] = None,
) -> List[AlarmHit]:
    """The hits of every ``ThresholdAlarm`` among ``policies`` on one run's scalars, in policy order."""
    hits: List[AlarmHit] = []
    for policy in policies:
        if isinstance(policy, ThresholdAlarm):
            hits.extend(policy.evaluate(metrics, per_image))
    return hits


def shortcut_policy(policies: Sequence[AlarmPolicy]) -> Optional[ShortcutAlarm]:
    """The ``ShortcutAlarm`` among ``policies`` (None when there is none)."""
    found = [policy for policy in policies if isinstance(policy, ShortcutAlarm)]
    return found[0] if found else None


def stops_training(policies: Sequence[AlarmPolicy], hits: Sequence[AlarmHit]) -> bool:
    """Whether a hit comes from a policy with ``stop=True``."""
    stopping_metrics = {policy.metric for policy in policies if isinstance(policy, ThresholdAlarm) and policy.stop}
    shortcut = shortcut_policy(policies)
    for hit in hits:
        if hit.class_index is not None and hit.metric == "class_shortcut_score":
            if shortcut is not None and shortcut.stop:
                return True
        elif hit.metric in stopping_metrics:
            return True
    return False


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
    ordered = values[index].argsort(descending=direction == "above", stable=True)
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
    """Which rules are firing now, so that a person is told when the alarm fires, changes or clears (not every run).

    A firing rule is keyed by ``(method, metric, class)``: the per-class rule moving from one class to
    another is a change, and is told.

    Examples:
        >>> state = AlarmState()
        >>> hit = AlarmHit("gradcam", "shortcut_score", 0.9, 0.5, "above")
        >>> state.update([hit]), state.update([hit]), state.update([])
        ('fired', None, 'cleared')
        >>> one = AlarmHit("gradcam", "class_shortcut_score", 0.6, 0.15, "above", class_index=1)
        >>> other = AlarmHit("gradcam", "class_shortcut_score", 0.6, 0.15, "above", class_index=2)
        >>> state.update([one]), state.update([other])
        ('fired', 'fired')
    """

    def __init__(self) -> None:
        self.active: Tuple[Tuple[str, str, int], ...] = ()

    @staticmethod
    def key(hit: AlarmHit) -> Tuple[str, str, int]:
        """``(method, metric, class)`` of a hit; class -1 when the hit is not about one class."""
        return (hit.method, hit.metric, -1 if hit.class_index is None else int(hit.class_index))

    def update(self, hits: Sequence[AlarmHit]) -> Optional[str]:
        """Record this run's hits; ``"fired"`` when they differ from the last run's and are not empty,
        ``"cleared"`` when the alarm stopped, else None."""
        now = tuple(sorted(set(self.key(hit) for hit in hits)))
        previous, self.active = self.active, now
        if now and now != previous:
            return "fired"
        if not now and previous:
            return "cleared"
        return None

    def state_dict(self) -> Dict[str, List[List[object]]]:
        """The firing rules as ``[method, metric, class]`` triples."""
        return {"alarm_state": [list(key) for key in self.active]}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        """Restore ``state_dict`` (entries of older versions, ``[method, metric]`` pairs, get class -1)."""
        entries = state.get("alarm_state", ()) or ()
        active = []
        for entry in entries:  # type: ignore[attr-defined]
            values = list(entry)
            klass = int(values[2]) if len(values) > 2 else -1
            active.append((str(values[0]), str(values[1]), klass))
        self.active = tuple(sorted(active))
