"""FullGrad (Srinivas & Fleuret 2019): input-gradient x input plus the bias-gradients of every layer with a bias.

Its inputs come from one pass over the whole model (``cam_callbacks.capture.bias_gradients.bias_gradients``),
not from a target layer: like saliency it ignores ``target_layer``. The map is at input resolution.
"""

from __future__ import annotations

from typing import Any, Sequence, Tuple

import torch.nn.functional as F
from torch import Tensor

from cam_callbacks.methods.registry import register_method
from cam_callbacks.utils.numeric import safe_divide

#: What FullGrad's ``normalize`` option accepts.
FULLGRAD_NORMALIZATIONS = ("layer", "channel")


def _minmax(values: Tensor, dims: Tuple[int, ...]) -> Tensor:
    low = values.amin(dim=dims, keepdim=True)
    return safe_divide(values - low, values.amax(dim=dims, keepdim=True) - low, require_positive=True)


def _post_processed(term: Tensor, size: Tuple[int, int], normalize: str) -> Tensor:
    """``|term|`` min-max normalised per image (over the layer, or per channel), upsampled, summed over channels."""
    dims = (1, 2, 3) if normalize == "layer" else (2, 3)
    summed = _minmax(term.abs().float(), dims).sum(dim=1, keepdim=True)  # bilinear upsampling commutes with the sum
    if tuple(summed.shape[-2:]) != size:
        summed = F.interpolate(summed, size=size, mode="bilinear", align_corners=False)
    return summed[:, 0]


def _check_normalize(normalize: Any) -> None:
    if normalize not in FULLGRAD_NORMALIZATIONS:
        raise ValueError(f"fullgrad option normalize={normalize!r} is not valid; choose from {list(FULLGRAD_NORMALIZATIONS)}")


@register_method(
    "fullgrad",
    needs=("images", "input_gradients", "bias_gradients"),
    options={"normalize": "layer"},
    check_options=lambda options: _check_normalize(options["normalize"]),
    summary="FullGrad: |input-gradient x input| plus the |bias-gradients| of every conv/BatchNorm layer",
)
def fullgrad(images: Tensor, input_gradients: Tensor, bias_gradients: Sequence[Tensor], normalize: str = "layer") -> Tensor:
    """FullGrad (Srinivas & Fleuret 2019, "Full-gradient representation for neural network visualization", NeurIPS).

    ``S = psi(|x * dz/dx|) + sum_l sum_k psi(|b_l * dz/dz_l|)_k``: every term is made absolute, min-max normalised per
    image (``normalize="layer"``, over the layer's channels and positions, as the authors' code; ``"channel"``, each
    channel on its own, as pytorch-grad-cam), upsampled bilinearly (``align_corners=False``) to the input size and
    summed over channels. ``b_l`` is each conv's bias or BatchNorm's folded bias
    (``folded_bias``); the target layer is not used.
    """
    _check_normalize(normalize)
    size = (int(images.shape[-2]), int(images.shape[-1]))
    total = _post_processed(input_gradients * images, size, normalize)
    for term in bias_gradients:
        total = total + _post_processed(term, size, normalize)
    return total
