"""Probe images the model cannot handle: found, reported and skipped, so training goes on.

A probe image may make the model raise (an input it rejects) or return non-finite logits (an
overflow, a NaN in the data). ``screen_images`` runs the model on the images one at a time to
find those that raise; ``scatter_rows`` puts the results computed on the remaining images back
at their places; ``nonfinite_rows`` finds rows whose logits or maps are not finite;
``blank_rows`` makes such rows neutral: all-zero maps, NaN scores (left out of the means).
"""

from __future__ import annotations

from typing import Callable, ContextManager, Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from cam_callbacks.capture.state import eager, preserved_model_state, preserved_rng_state
from cam_callbacks.engine.passes import model_device
from cam_callbacks.engine.result import Explanation, ScoredExplanation
from cam_callbacks.utils.outputs import OutputTransform, logits_of


def screen_images(model: nn.Module, images: Tensor, context: Callable[[], ContextManager], output_transform: OutputTransform = None) -> Dict[int, str]:
    """``{row: reason}`` for the images the model raises on or returns non-finite logits for, one forward pass per image
    (eval mode, no autograd).

    The caller restores modes and RNG; ``context`` is entered around each forward pass (precision); ``output_transform``
    takes the logits from the model's output (an output it cannot take them from counts as a failure).
    """
    device = model_device(model, images.device)
    bad: Dict[int, str] = {}
    with torch.no_grad(), eager():
        for row in range(images.shape[0]):  # only after a failure: one image at a time finds the culprits
            try:
                with context():
                    logits = logits_of(model(images[row : row + 1].to(device)), output_transform, 1)
            except Exception as error:  # noqa: BLE001 - the reason is reported to the user
                bad[row] = f"the model raises {type(error).__name__}: {error}"
                continue
            if not bool(torch.isfinite(logits).all()):
                bad[row] = "non-finite logits or map (NaN/inf)"
    return bad


def scatter_rows(result: ScoredExplanation, keep: Sequence[int], total: int, targets: Tensor) -> ScoredExplanation:
    """Results computed on rows ``keep`` placed into ``total`` rows: zero maps, NaN logits and scores elsewhere."""
    explanation, scores = result
    index = torch.as_tensor(list(keep), dtype=torch.long)

    def place(values: Tensor, fill: float) -> Tensor:
        out = torch.full((total, *values.shape[1:]), fill, dtype=values.dtype, device=values.device)
        out[index.to(values.device)] = values
        return out

    maps = {name: place(value, 0.0) for name, value in explanation.maps.items()}
    full_targets = targets.to(explanation.targets.device).clone()
    full_targets[index.to(full_targets.device)] = explanation.targets
    merged = Explanation(maps, place(explanation.logits.float(), float("nan")), full_targets, explanation.layer_name)
    return ScoredExplanation(merged, {m: {k: place(v.float(), float("nan")) for k, v in per.items()} for m, per in scores.items()})


def nonfinite_rows(explanation: Explanation) -> Tensor:
    """``(N,)`` bool: rows whose logits or any method's map hold NaN or inf."""
    bad = ~torch.isfinite(explanation.logits).all(dim=1)
    for maps in explanation.maps.values():
        bad |= ~torch.isfinite(maps).flatten(1).all(dim=1).to(bad.device)
    return bad


def blank_rows(result: ScoredExplanation, rows: Tensor) -> ScoredExplanation:
    """Rows ``rows`` (bool mask) get all-zero maps and NaN scores."""
    explanation, scores = result
    if not bool(rows.any()):
        return result
    for name, maps in explanation.maps.items():
        explanation.maps[name] = torch.where(rows.to(maps.device).view(-1, 1, 1), torch.zeros_like(maps), maps)
    for per in scores.values():
        for metric, values in per.items():
            per[metric] = torch.where(rows.to(values.device), torch.full_like(values, float("nan")), values.float())
    return ScoredExplanation(explanation, scores)


def explain_skipping_bad_images(
    explain_rows: Callable[[Tensor, Optional[Tensor]], ScoredExplanation],
    model: nn.Module,
    images: Tensor,
    targets: Optional[Tensor],
    context: Callable[[], ContextManager],
    output_transform: OutputTransform = None,
    found: Optional[Dict[int, str]] = None,
) -> Tuple[ScoredExplanation, Dict[int, str]]:
    """``explain_rows(images, targets)``, leaving out the images the model cannot handle.

    If it raises, the images are screened one by one (``screen_images``); when some are to blame
    the rest is explained and the results are put back in place (``scatter_rows``), otherwise the
    error is re-raised (it is not about images, or every image fails). Rows whose logits or maps are not
    finite are blanked.

    ``found``, when given, receives the skipped rows and why, also when the error is re-raised because every image
    fails: a model that raises on every image and one that returns NaN for every image then report the same rows.

    Returns:
        ``(result, {row: reason})`` for the skipped rows.
    """
    skipped: Dict[int, str] = {}
    try:
        result = explain_rows(images, targets)
    except Exception:
        with preserved_rng_state(), preserved_model_state(model), torch.inference_mode(False):
            skipped = screen_images(model, images, context, output_transform)
        keep = [row for row in range(images.shape[0]) if row not in skipped]
        if found is not None and not keep:
            found.update(skipped)
        if not skipped or not keep:
            raise  # not an image problem (or every image fails): the error is the user's to see
        result = explain_rows(images[keep], None if targets is None else targets[keep])
        fallback = targets if targets is not None else torch.zeros(images.shape[0], dtype=torch.long)
        result = scatter_rows(result, keep, images.shape[0], fallback)
    nonfinite = nonfinite_rows(result[0])
    result = blank_rows(result, nonfinite)
    for row in nonfinite.nonzero().flatten().tolist():
        skipped.setdefault(row, "non-finite logits or map (NaN/inf)")
    if found is not None:
        found.update(skipped)
    return result, skipped
