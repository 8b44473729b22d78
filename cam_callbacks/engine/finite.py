"""Rows that cannot be explained: images holding NaN or inf, and images whose logits, maps or scores come out non-finite.

``explain_finite_rows`` runs a computation on the rows that can be explained and says which
ones were left out; ``cam_callbacks.explain`` and ``cam_callbacks.faithfulness`` put NaN in
their place. The rows are found batched (one ``isfinite`` per tensor), never image by image.

The rows kept are computed exactly as a call on them alone would compute them: images with NaN or
inf are removed before the computation; when the model's output is non-finite for some of the
others, the computation is run again without them (a batch's composition can change float32
round-off, and ``smooth="noise"`` draws its noise for the batch as given).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

from cam_callbacks.engine.result import ScoredExplanation


def nonfinite_images(images: Tensor) -> Tensor:
    """``(N,)`` bool: images holding any NaN or inf value.

    Example::

        >>> nonfinite_images(torch.tensor([[1.0, 2.0], [float("nan"), 0.0], [0.0, float("-inf")]]))
        tensor([False,  True,  True])
    """
    return ~torch.isfinite(images).flatten(1).all(dim=1)


def nonfinite_results(result: ScoredExplanation) -> Tensor:
    """``(N,)`` bool on the logits' device: rows whose logits, any method's map or any score hold NaN or inf."""
    explanation, scores = result
    bad = ~torch.isfinite(explanation.logits).all(dim=1)
    for maps in explanation.maps.values():
        bad |= ~torch.isfinite(maps).flatten(1).all(dim=1).to(bad.device)
    for per_metric in scores.values():
        for values in per_metric.values():
            bad |= ~torch.isfinite(values).to(bad.device)
    return bad


@dataclass
class FiniteRows:
    """A result computed on the rows that could be explained, and which rows those are.

    Attributes:
        result: The result for the rows kept, in their order.
        kept: ``(N,)`` bool on the images' device: the rows of ``result``.
        nonfinite_input: ``(N,)`` bool: rows left out because the image holds NaN or inf.
        nonfinite_output: ``(N,)`` bool: rows left out because their logits, maps or scores were not finite.
    """

    result: ScoredExplanation
    kept: Tensor
    nonfinite_input: Tensor
    nonfinite_output: Tensor

    def scatter(self, values: Tensor, fill: float = float("nan")) -> Tensor:
        """``values`` of the kept rows placed into all ``N`` rows (dim 0), ``fill`` in the rows left out.

        Example::

            >>> kept = torch.tensor([True, False, True])
            >>> rows = FiniteRows(ScoredExplanation(None, {}), kept, ~kept, torch.zeros(3, dtype=torch.bool))  # type: ignore[arg-type]
            >>> rows.scatter(torch.tensor([1.0, 3.0]))
            tensor([1., nan, 3.])
        """
        out = torch.full((self.kept.shape[0], *values.shape[1:]), fill, dtype=values.dtype, device=values.device)
        out[self.kept.to(values.device)] = values
        return out


def explain_finite_rows(
    compute: Callable[[Tensor, Optional[Tensor]], ScoredExplanation], images: Tensor, targets: Optional[Tensor], rows: str = "images"
) -> FiniteRows:
    """``compute(images, targets)`` on the rows that can be explained (see the module's docstring).

    Args:
        compute: ``(images, targets or None) -> ScoredExplanation`` for any subset of the rows.
        images: ``(N, C, H, W)``.
        targets: ``(N,)`` class indices, or None.
        rows: What a row is, for the messages (``"images"``, ``"(image, label) pairs"``).

    Raises:
        ValueError: When no row can be explained (every image holds NaN or inf, or the model's output
            is non-finite for all the others).
    """
    nonfinite_input = nonfinite_images(images)
    kept = ~nonfinite_input
    nonfinite_output = torch.zeros_like(kept)
    n = images.shape[0]
    if not bool(kept.any()):
        raise ValueError(f"images: all {n} {rows} hold NaN or inf values; there is nothing to explain")
    while True:  # each round removes at least one row, so this ends; a model computing rows independently needs one rerun
        index = kept.nonzero().flatten()
        sub_targets = None if targets is None else targets[index.to(targets.device)]
        result = compute(images if bool(kept.all()) else images[index], sub_targets)
        bad = nonfinite_results(result).to(kept.device)
        if not bool(bad.any()):
            return FiniteRows(result, kept, nonfinite_input, nonfinite_output)
        nonfinite_output[index[bad]] = True
        kept[index[bad]] = False
        if not bool(kept.any()):
            raise ValueError(
                f"the model's logits, maps or scores are not finite (NaN or inf) for every one of the {int((~nonfinite_input).sum())} "
                f"finite {rows} of {n} (an overflow? check the model, its weights and its precision); there is nothing to explain"
            )
