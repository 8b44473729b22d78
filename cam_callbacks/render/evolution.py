"""The maps of a few probe images over the runs, kept small and bounded, for the evolution strip.

``MapStrip`` keeps, per method, one ``(R, size, size)`` float16 copy of the maps of ``R`` selected
probe rows per run (area-averaged: 32x32 by default, 2 kB per image), and at most ``max_columns`` runs:
when more come, every second kept run after the first is dropped (the first and the latest always stay),
so long runs keep an evenly thinned history in constant memory.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

import torch.nn.functional as F
from torch import Tensor


class MapStrip:
    """Small maps of selected rows per run, by method (see the module docstring).

    Example::

        >>> import torch
        >>> strip = MapStrip(max_columns=4, size=8)
        >>> for run in range(6):
        ...     strip.add("gradcam", f"ep {run}", torch.rand(2, 16, 16))
        >>> [title for title, _ in strip.columns("gradcam")]
        ['ep 0', 'ep 2', 'ep 4', 'ep 5']
        >>> strip.columns("gradcam")[0][1].shape
        torch.Size([2, 8, 8])
    """

    def __init__(self, max_columns: int = 8, size: int = 32) -> None:
        if max_columns < 2:
            raise ValueError(f"max_columns must be at least 2 (the first and the latest run), got {max_columns}")
        self.max_columns = max_columns
        self.size = size
        self._columns: Dict[str, List[Tuple[str, Tensor]]] = {}

    def add(self, method: str, title: str, maps: Tensor) -> None:
        """Keep ``(R, H, W)`` maps of this run under ``title`` (e.g. ``"ep 3"``); rows must be the same every run."""
        small = maps.detach().float().cpu().unsqueeze(1)
        if min(small.shape[-2:]) > self.size:
            small = F.adaptive_avg_pool2d(small, self.size)
        columns = self._columns.setdefault(method, [])
        if columns and columns[0][1].shape[0] != small.shape[0]:
            columns.clear()  # other rows than before (a new probe): start afresh
        columns.append((title, small.squeeze(1).half()))
        if len(columns) > self.max_columns:
            kept = columns[:1] + columns[2:-1:2] + columns[-1:]
            if len(kept) == len(columns):  # pragma: no cover - never for max_columns >= 2
                kept = columns[:1] + columns[2:]
            columns[:] = kept

    def columns(self, method: str) -> List[Tuple[str, Tensor]]:
        """``[(title, (R, size, size) maps)]`` kept for ``method``, oldest first."""
        return list(self._columns.get(method, []))

    def methods(self) -> List[str]:
        """Methods with at least one kept run."""
        return list(self._columns)
