"""Keeping the callback's cost within a share of the training time.

``CostBudget`` measures, after every run of the callback, the training time since its previous
run (``T``) and what each method cost (``C``: the cheap methods together, each expensive method
alone). With a budget ``b`` the callback may spend about ``b * T`` per run interval. The cheap
methods (gradient CAMs: about two forward passes each) run every time, whatever they cost; the
expensive ones (Score-CAM, Ablation-CAM, Recipro-CAM, anything smoothed) share what the cheap ones
leave (at least ``b * T / (n + 1)`` for ``n`` expensive methods) equally, each running every
``k``-th time with the smallest ``k`` that fits its share.
"""

from __future__ import annotations

import math
import time
from typing import Dict, List, Optional, Sequence

from cam_callbacks.methods.registry import get_method

#: Name under which the cheap methods' joint cost and stride are kept.
CHEAP = "<cheap methods>"


def is_expensive(method: str, self_smooth: Optional[str] = None) -> bool:
    """Perturbation methods (many forward passes per image) and every smoothed method are expensive."""
    needs = get_method(method).needs
    return self_smooth is not None or "model_scorer" in needs or "tail_scorer" in needs


class CostBudget:
    """Strides that keep the callback within ``budget`` of the training time.

    Example::

        >>> b = CostBudget(0.1, expensive=["scorecam"])
        >>> b.groups(["gradcam", "scorecam"])
        [['gradcam'], ['scorecam']]
        >>> b.start(now=0.0)
        >>> b.record(["gradcam"], 0.2); b.record(["scorecam"], 3.0)
        >>> b.update(3.2, now=13.2)  # 10 s of training, 3.2 s of callback: scorecam may use 1 - 0.2 = 0.8 s per run
        {'scorecam': 4}
        >>> b.due(["gradcam", "scorecam"])  # run 1 of the callback: scorecam waits until run 4
        ['gradcam']
    """

    def __init__(self, budget: Optional[float], expensive: Sequence[str] = ()) -> None:
        self.budget = budget
        self.expensive = list(expensive)
        self._strides: Dict[str, int] = {}
        self._costs: Dict[str, float] = {}
        self._runs = 0
        self._last_end: Optional[float] = None
        self._training: Optional[float] = None

    def start(self, now: Optional[float] = None) -> None:
        """Training starts (``on_train_start``): the first interval is measured from here."""
        self._last_end = time.perf_counter() if now is None else now

    def groups(self, methods: Sequence[str]) -> List[List[str]]:
        """Cost groups: the cheap methods together, then each expensive method alone."""
        cheap = [m for m in methods if m not in self.expensive]
        return ([cheap] if cheap else []) + [[m] for m in methods if m in self.expensive]

    def stride(self, method: str) -> int:
        """Run ``method`` every this many runs of the callback."""
        return self._strides.get(method, 1)

    def due(self, methods: Sequence[str]) -> List[str]:
        """The methods to compute at this run."""
        return [m for m in methods if self._runs % self.stride(m) == 0]

    def record(self, group: Sequence[str], seconds: float) -> None:
        """The measured cost of one group at this run."""
        key = group[0] if len(group) == 1 and group[0] in self.expensive else CHEAP
        self._costs[key] = float(seconds)

    def update(self, run_seconds: float, now: Optional[float] = None) -> Dict[str, int]:
        """End of a run that took ``run_seconds``: new strides, ``{method: stride}`` for those that changed."""
        now = time.perf_counter() if now is None else now
        previous_end, self._last_end = self._last_end, now
        self._runs += 1
        if self.budget is None or previous_end is None:
            return {}
        training = (now - run_seconds) - previous_end
        if training <= 0:
            return {}
        self._training = training
        allowed = self.budget * training
        strides: Dict[str, int] = {}
        left = allowed - self._costs.get(CHEAP, 0.0)
        expensive = [m for m in self.expensive if m in self._costs]
        share = max(left, allowed / (len(expensive) + 1)) / max(1, len(expensive))
        for method in expensive:
            strides[method] = max(1, math.ceil(self._costs[method] / share))
        changed = {m: k for m, k in strides.items() if k != self._strides.get(m, 1)}
        self._strides.update(strides)
        return changed

    def after_run(self, run_seconds: float, fitting: bool = True) -> List[str]:
        """``update`` after a run in ``trainer.fit`` (runs outside fit do not count); one message per changed stride."""
        changes = self.update(run_seconds) if fitting else {}
        return [f"{self.explain(m)}; {m} now runs every {k} run(s) of the callback" for m, k in changes.items()]

    def explain(self, method: str) -> str:
        """One line on why ``method`` runs less often."""
        cost = self._costs.get(method, 0.0)
        training = self._training or float("nan")
        return (
            f"{method} cost {cost:.2f} s per run, {100 * cost / training:.0f}% of the {training:.1f} s of training since the "
            f"previous run (budget {100 * (self.budget or 0):.0f}%)"
        )
