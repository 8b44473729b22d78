"""Confirm a suspected shortcut region by intervention: occlude it and see whether the prediction moves.

A region where the maps gather may be a cue the model uses, or an incidental place its maps happen
to share. ``occlusion_effect`` fills the region with each image's own per-channel mean and
measures the drop of the target class's probability; as a control it fills a region of the same
shape and area shifted by half the image in both directions (``torch.roll``, wrapping around).
A shortcut region moves the prediction of most images, an incidental one no more than the control
(the effect is the median over images of the difference).

Batched forward passes on the model's device under ``torch.no_grad``, in eval mode, with the
model's modes, ``requires_grad`` flags and the global RNG restored afterwards (invisible to training).

Example::

    >>> from torch import nn
    >>> class Corner(nn.Module):   # class 1's logit is the top-left pixel's value
    ...     def forward(self, x):
    ...         return torch.stack([torch.zeros_like(x[:, 0, 0, 0]), 4 * x[:, 0, 0, 0]], dim=1)
    >>> images = torch.zeros(2, 3, 8, 8); images[:, :, :2, :2] = 1.0
    >>> region = torch.zeros(8, 8, dtype=torch.bool); region[:2, :2] = True
    >>> result = occlusion_effect(Corner(), images, torch.tensor([1, 1]), region)
    >>> round(float(result.effect), 3), float(result.control.mean())  # sigmoid(4) - sigmoid(4 * 4 / 64); the control is 0
    (0.42, 0.0)
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
from torch import Tensor, nn

from cam_callbacks.capture.state import preserved_model_state, preserved_rng_state
from cam_callbacks.engine.passes import model_device
from cam_callbacks.utils.outputs import OutputTransform, logits_of


class OcclusionResult(NamedTuple):
    """Output of ``occlusion_effect``.

    Attributes:
        drop: ``(N,)`` target probability of the intact image minus that with the region occluded.
        control: ``(N,)`` the same with the shifted control region occluded.
        effect: 0-dim, the median over images of ``drop - control``: how much more the region moves the
            prediction than the same area elsewhere, in a typical image (a cue that the model reads in
            every image moves most of them; an object that only sometimes lies in the region does not).
    """

    drop: Tensor
    control: Tensor
    effect: Tensor


def shifted_region(region: Tensor) -> Tensor:
    """The control region: ``region`` rolled by half the height and half the width (same shape and area).

    Example::

        >>> shifted_region(torch.tensor([[True, False], [False, False]])).tolist()
        [[False, False], [False, True]]
    """
    height, width = region.shape[-2:]
    return torch.roll(region, shifts=(height // 2, width // 2), dims=(-2, -1))


def _probabilities(model: nn.Module, images: Tensor, targets: Tensor, transform: OutputTransform, kind: str) -> Tensor:
    logits = logits_of(model(images), transform, images.shape[0]).float()
    if kind == "sigmoid":
        return torch.sigmoid(logits).gather(1, targets.view(-1, 1)).flatten()
    return torch.softmax(logits, dim=1).gather(1, targets.view(-1, 1)).flatten()


def occlusion_effect(
    model: nn.Module,
    images: Tensor,
    targets: Tensor,
    region: Tensor,
    batch_size: int = 64,
    output_transform: OutputTransform = None,
    probability: str = "softmax",
    forward_context: Callable[[], "object"] = torch.no_grad,
) -> OcclusionResult:
    """Drop of the target probability when ``region`` is filled with each image's mean, against a shifted control.

    Args:
        model: The classifier (as it is now; its state is left as found).
        images: ``(N, C, H, W)`` images as the model receives them.
        targets: ``(N,)`` class indices whose probability is measured.
        region: ``(H, W)`` or ``(N, H, W)`` bool region to occlude (at the images' size).
        batch_size: Images per forward pass (each pass runs intact, occluded and control copies: 3x).
        output_transform: How to take the logits from the model's output (see ``cam_callbacks.explain``).
        probability: ``"softmax"`` or ``"sigmoid"``.
        forward_context: Context manager factory around the passes (e.g. a precision plugin's).

    Returns:
        ``OcclusionResult`` on the CPU (float64).
    """
    if probability not in ("softmax", "sigmoid"):
        raise ValueError(f"probability must be one of ['softmax', 'sigmoid'], got {probability!r}")
    if images.dim() != 4 or region.shape[-2:] != images.shape[-2:]:
        raise ValueError(f"region {tuple(region.shape)} must be (H, W) or (N, H, W) at the images' size {tuple(images.shape[-2:])}")
    device = model_device(model, images.device)
    floating = [p.dtype for p in model.parameters() if p.is_floating_point()]
    dtype = floating[0] if floating else images.dtype  # a half or bfloat16 model gets its own dtype
    region = region.to(device=device, dtype=torch.bool).expand(images.shape[0], *images.shape[-2:])
    drops, controls = [], []
    with preserved_rng_state(), preserved_model_state(model), torch.no_grad(), forward_context():  # type: ignore[attr-defined]
        for start in range(0, images.shape[0], batch_size):
            x = images[start : start + batch_size].to(device=device, dtype=dtype)
            t = targets[start : start + batch_size].to(device).long()
            r = region[start : start + batch_size].unsqueeze(1)
            fill = x.mean(dim=(2, 3), keepdim=True).expand_as(x)
            occluded = torch.where(r, fill, x)
            control = torch.where(shifted_region(r), fill, x)
            p = _probabilities(model, torch.cat([x, occluded, control]), t.repeat(3), output_transform, probability)
            intact, hidden, shifted = p.view(3, -1)
            drops.append((intact - hidden).double().cpu())
            controls.append((intact - shifted).double().cpu())
    drop, control = torch.cat(drops), torch.cat(controls)
    return OcclusionResult(drop, control, (drop - control).median())
