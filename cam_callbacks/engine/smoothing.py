"""Maps averaged over noisy (SmoothGrad-style) or flipped and scaled copies of the images."""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Dict, Iterator, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cam_callbacks.engine.options import ExplainOptions
from cam_callbacks.engine.passes import Layers, explain_layers, model_device
from cam_callbacks.engine.result import Explanation
from cam_callbacks.methods.registry import CAMMethod
from cam_callbacks.utils.maps import minmax_normalize
from cam_callbacks.utils.outputs import OutputTransform, logits_of
from cam_callbacks.utils.targets import check_target_classes, check_target_range


def predict(
    model: nn.Module,
    images: Tensor,
    targets: Optional[Tensor],
    batch_size: int,
    target_classes: Optional[int] = None,
    output_transform: OutputTransform = None,
) -> Tuple[Tensor, Tensor]:
    """``(logits, targets)`` of the unmodified images, ``batch_size`` at a time without autograd; targets default to top-1.

    ``target_classes``: the width of the multi-hot targets the labels come from, checked against the logits;
    ``output_transform``: where the logits are in the model's output (``logits_of``).
    """
    device = model_device(model, images.device)
    parts = []
    with torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            x = images[start : start + batch_size].to(device)
            parts.append(logits_of(model(x), output_transform, x.shape[0]))
            check_target_classes(target_classes, parts[-1].shape[1])
    logits = torch.cat(parts)
    if targets is None:
        return logits, logits.argmax(dim=1)
    targets = targets.to(logits.device)
    check_target_range(targets, logits.shape[1])
    return logits, targets


def smoothing_variants(images: Tensor, options: ExplainOptions) -> Iterator[Tuple[Tensor, Callable[[Tensor], Tensor]]]:
    """``(modified images, map -> map on the original image grid)`` pairs of the smoothing."""
    size = (images.shape[-2], images.shape[-1])
    if options.smooth == "noise":
        generator = torch.Generator(device=images.device).manual_seed(options.seed)
        span = (images.amax(dim=(1, 2, 3), keepdim=True) - images.amin(dim=(1, 2, 3), keepdim=True)).float()
        for _ in range(options.smooth_samples):
            noise = torch.randn(images.shape, generator=generator, device=images.device, dtype=torch.float32)
            yield images + (noise * options.smooth_sigma * span).to(images.dtype), lambda maps: maps
        return
    for flip in (False, True):
        for scale in options.smooth_scales:
            x = images.flip(-1) if flip else images
            if scale != 1.0:
                scaled = (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))
                x = F.interpolate(x, size=scaled, mode="bilinear", align_corners=False)

            def back(maps: Tensor, flip: bool = flip) -> Tensor:
                if tuple(maps.shape[-2:]) != size:
                    maps = F.interpolate(maps.unsqueeze(1), size=size, mode="bilinear", align_corners=False).squeeze(1)
                return maps.flip(-1) if flip else maps

            yield x, back


def explain_smoothed(
    model: nn.Module, images: Tensor, methods: Sequence[CAMMethod], layers: Layers, targets: Optional[Tensor], options: ExplainOptions
) -> Explanation:
    """Each method's maps averaged over ``smoothing_variants``, then min-max normalised; targets from the plain images."""
    logits, targets = predict(model, images, targets, options.batch_size, options.target_classes, options.output_transform)
    plain = replace(options, smooth=None)
    totals: Dict[str, Tensor] = {}
    count = 0
    for variant, back in smoothing_variants(images, options):
        explanation = explain_layers(model, variant, methods, layers, targets, plain)
        for name, variant_maps in explanation.maps.items():
            mapped = back(variant_maps)
            totals[name] = mapped if name not in totals else totals[name] + mapped
        count += 1
    averaged = {name: minmax_normalize(total / count) for name, total in totals.items()}
    return Explanation(averaged, logits.detach(), targets, "+".join(name for name, _ in layers), list(layers))
