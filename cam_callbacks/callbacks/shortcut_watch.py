"""The per-class shortcut watch of :class:`~cam_callbacks.CAMMonitor`: probe outcome in, alarm hits out.

Wiring only: the statistics are :func:`cam_callbacks.metrics.shortcuts.find_shortcuts` (run inside
:meth:`MapHistory.analyze <cam_callbacks.monitor.history.MapHistory.analyze>`), the confirmation
:func:`cam_callbacks.engine.occlusion.occlusion_effect`, the decision
:meth:`AlarmRule.evaluate_shortcuts <cam_callbacks.monitor.alarm.AlarmRule.evaluate_shortcuts>`.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch
from torch import nn

from cam_callbacks.engine.occlusion import occlusion_effect
from cam_callbacks.engine.result import Explanation
from cam_callbacks.metrics.watch import MethodAnalysis
from cam_callbacks.monitor.alarm import AlarmHit, AlarmRule
from cam_callbacks.render.publish import ProbeView

__all__ = ["probe_outcome", "shortcut_hits"]


def probe_outcome(explanation: Explanation, view: ProbeView, rule: Optional[AlarmRule]) -> Dict[str, Any]:
    """Keyword arguments for :meth:`MapHistory.analyze`: the explained classes, whether each probe image is
    predicted right (when the probe has single labels), the probability of the explained class, the clusters.

    Empty (no per-class findings) for multi-label probes and when no alarm rule uses them.
    """
    if rule is None or rule.max_class_shortcut_score is None or view.probability != "softmax":
        return {}
    logits = explanation.logits.detach().float()
    targets = explanation.targets.detach().long().to(logits.device)
    confidence = torch.softmax(logits, dim=1).gather(1, targets.view(-1, 1)).flatten().cpu()
    correct = None
    if view.targets is not None and view.targets.dim() == 1:
        correct = (logits.argmax(dim=1).cpu() == view.targets.cpu().long())
    return {"targets": targets.cpu(), "correct": correct, "confidence": confidence, "clusters": rule.shortcut_clusters}


def shortcut_hits(
    rule: Optional[AlarmRule], analyses: Dict[str, MethodAnalysis], model: Optional[nn.Module], view: ProbeView,
    scalars: Dict[str, float], prefix: str,
) -> List[AlarmHit]:  # fmt: skip
    """The per-class rule's hits of every method; the suspects are confirmed by occlusion when ``model`` is given.

    Each measured effect is also logged as ``<prefix>/<method>/occlusion_effect`` (the largest over the suspects).
    """
    if rule is None:
        return []
    hits: List[AlarmHit] = []
    for method, analysis in analyses.items():
        findings = analysis.findings
        if findings is None:
            continue
        effects: Optional[Dict[int, float]] = None
        suspects = rule.shortcut_suspects(findings)
        if model is not None and suspects and rule.min_occlusion_effect is not None:
            effects = {}
            for index in suspects:
                candidate = findings.candidates[index]
                rows = candidate.members.cpu()
                images = view.images[rows]
                targets = torch.full((rows.numel(),), candidate.class_index, dtype=torch.long)
                effects[index] = float(occlusion_effect(model, images, targets, candidate.region.cpu()).effect)
            scalars[f"{prefix}/{method}/occlusion_effect"] = max(effects.values())
        hits.extend(rule.evaluate_shortcuts(method, findings, effects))
    return hits
