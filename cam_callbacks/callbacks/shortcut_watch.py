"""The per-class shortcut watch of ``CAMMonitor``: probe outcome in, alarm hits out.

Wiring only: the statistics are ``cam_callbacks.metrics.shortcuts.find_shortcuts`` (run inside
``MapHistory.analyze``), the confirmation
``cam_callbacks.engine.occlusion.occlusion_effect`` (run with the monitor's own explain settings), the
decision ``ShortcutAlarm.evaluate``.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, ContextManager, Dict, List, Optional

import torch
from torch import nn

from cam_callbacks.engine.occlusion import occlusion_effect
from cam_callbacks.engine.options import ExplainOptions
from cam_callbacks.engine.result import Explanation, ProbeView
from cam_callbacks.metrics.watch import MethodAnalysis
from cam_callbacks.monitor.alarm import AlarmHit, ShortcutAlarm


def probe_outcome(explanation: Explanation, view: ProbeView, rule: Optional[ShortcutAlarm]) -> Dict[str, Any]:
    """Keyword arguments for ``MapHistory.analyze``: the explained classes, whether each probe image is
    predicted right (when the probe has single labels), the probability of the explained class, the clusters.

    Empty (no per-class findings) for multi-label probes and when no alarm rule uses them.
    """
    if rule is None or view.probability != "softmax":
        return {}
    logits = explanation.logits.detach().float()
    targets = explanation.targets.detach().long().to(logits.device)
    confidence = torch.softmax(logits, dim=1).gather(1, targets.view(-1, 1)).flatten().cpu()
    correct = None
    if view.targets is not None and view.targets.dim() == 1:
        correct = logits.argmax(dim=1).cpu() == view.targets.cpu().long()
    return {"targets": targets.cpu(), "correct": correct, "confidence": confidence, "clusters": rule.clusters}


def shortcut_hits(
    rule: Optional[ShortcutAlarm],
    analyses: Dict[str, MethodAnalysis],
    model: Optional[nn.Module],
    view: ProbeView,
    scalars: Dict[str, float],
    prefix: str,
    options: Optional[ExplainOptions] = None,
    precision_plugin: Optional[Any] = None,
) -> List[AlarmHit]:
    """The per-class rule's hits of every method; the suspects are confirmed by occlusion when ``model`` is given.

    The occlusion passes take the logits with ``options.output_transform`` and run in ``precision_plugin``'s
    forward context (its ``convert_input`` applied to the images), as the maps were computed. Each measured
    effect is also logged as ``<prefix>/<method>/occlusion_effect`` (the largest over the suspects).
    """
    if rule is None:
        return []
    options = options or ExplainOptions()

    def context() -> ContextManager[Any]:
        return precision_plugin.forward_context() if precision_plugin is not None else nullcontext()

    hits: List[AlarmHit] = []
    for method, analysis in analyses.items():
        findings = analysis.findings
        if findings is None:
            continue
        effects: Optional[Dict[int, float]] = None
        suspects = rule.suspects(findings)
        if model is not None and suspects and rule.min_occlusion_effect is not None:
            effects = {}
            for index in suspects:
                candidate = findings.candidates[index]
                rows = candidate.members.cpu()
                images = view.images[rows]
                if precision_plugin is not None:
                    images = precision_plugin.convert_input(images)
                targets = torch.full((rows.numel(),), candidate.class_index, dtype=torch.long)
                measured = occlusion_effect(
                    model,
                    images,
                    targets,
                    candidate.region.cpu(),
                    batch_size=options.batch_size,
                    output_transform=options.output_transform,
                    probability=view.probability,
                    forward_context=context,
                )
                effects[index] = float(measured.effect)
            scalars[f"{prefix}/{method}/occlusion_effect"] = max(effects.values())
        hits.extend(rule.evaluate(method, findings, effects))
    return hits
