"""The maps of earlier runs that drift is measured against, kept per method, with its own ``state_dict``."""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

import torch
from torch import Tensor

from cam_callbacks.metrics.shortcuts import ShortcutFindings
from cam_callbacks.metrics.watch import MethodAnalysis, analyze_maps


def _rows(tensor: Optional[Tensor], keep: Tensor) -> Optional[Tensor]:
    return None if tensor is None else tensor[keep.to(tensor.device)]


def _to_rows(findings: ShortcutFindings, keep: Tensor) -> ShortcutFindings:
    """The findings with member indices mapped from analysed rows back to probe rows."""
    moved = [c._replace(members=keep[c.members.cpu()]) for c in findings.candidates]
    return ShortcutFindings(findings.stats, moved)


class MapHistory:
    """Each method's maps of the first and the previous run (CPU, float32), and the analysis of a new run against them.

    Example::

        >>> history = MapHistory()
        >>> maps = {"gradcam": torch.rand(3, 8, 8)}
        >>> first = history.analyze(maps)
        >>> "drift_prev" in first["gradcam"].scalars
        False
        >>> "drift_prev" in history.analyze(maps)["gradcam"].scalars  # the second run is compared with the first
        True
    """

    def __init__(self) -> None:
        self.first: Dict[str, Tensor] = {}
        self.previous: Dict[str, Tensor] = {}

    def reset(self) -> None:
        """Forget every earlier run."""
        self.first, self.previous = {}, {}

    def analyze(
        self,
        maps: Mapping[str, Tensor],
        masks: Optional[Tensor] = None,
        nuisance: Optional[Tensor] = None,
        skipped: Iterable[int] = (),
        targets: Optional[Tensor] = None,
        correct: Optional[Tensor] = None,
        confidence: Optional[Tensor] = None,
        clusters: int = 2,
    ) -> Dict[str, MethodAnalysis]:
        """Localisation, shortcut and drift of each method's ``(N, H, W)`` maps (``analyze_maps``);
        then these maps become the previous run's (and the first run's, for a method seen for the first time).

        Rows in ``skipped`` (images the model cannot handle) are left out; per-image values and the
        grid order refer to all rows, with NaN for skipped ones. A history of another shape (a changed
        probe set) starts again. ``targets``, ``correct``, ``confidence`` (``(N,)`` per row) and ``clusters``
        feed the per-class shortcut findings, whose probe indices are rows (skipped ones never appear).
        """
        analyses = {}
        for method, method_maps in maps.items():
            current = method_maps.detach().float().cpu()
            rows = current.shape[0]
            left_out = set(skipped)
            keep = torch.tensor([row for row in range(rows) if row not in left_out], dtype=torch.long)
            first, previous = self.first.get(method), self.previous.get(method)
            if first is not None and first.shape != current.shape:
                first = previous = None
            analysis = analyze_maps(
                current[keep],
                _rows(masks, keep),
                _rows(nuisance, keep),
                _rows(previous, keep),
                _rows(first, keep),
                _rows(targets, keep),
                _rows(correct, keep),
                _rows(confidence, keep),
                clusters,
            )
            analysis.order = keep[analysis.order]
            if analysis.findings is not None:
                analysis.findings = _to_rows(analysis.findings, keep)
            for name, values in analysis.per_image.items():
                full = torch.full((rows,), float("nan"), dtype=values.dtype)
                full[keep] = values.cpu()
                analysis.per_image[name] = full
            analyses[method] = analysis
            self.previous[method] = current
            if first is None:
                self.first[method] = current
        return analyses

    def state_dict(self) -> Dict[str, Any]:
        """The first and previous maps of each method."""
        return {"first_maps": dict(self.first), "previous_maps": dict(self.previous)}

    def load_state_dict(self, state: Mapping[str, Any], methods: Sequence[str]) -> None:
        """Restore the maps of the methods in ``methods`` (others are dropped)."""
        self.first = {m: t for m, t in dict(state.get("first_maps", {})).items() if m in methods}
        self.previous = {m: t for m, t in dict(state.get("previous_maps", {})).items() if m in methods}

    @property
    def methods(self) -> List[str]:
        """Methods with a history."""
        return list(self.first)
