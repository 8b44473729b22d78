"""Methods for vision transformers built on their attention maps: LeGrad.

Their inputs come from one pass over the whole model (``cam_callbacks.capture.attention.attention_gradients``),
not from a target layer: ``target_layer`` is ignored. The map is at patch-grid resolution.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

from torch import Tensor

from cam_callbacks.methods.registry import register_method


def _check_blocks(blocks: Any, layers: Optional[int] = None) -> None:
    valid = blocks is None or (isinstance(blocks, int) and not isinstance(blocks, bool) and 1 <= blocks <= (layers or blocks))
    if not valid:
        upper = layers if layers is not None else "the model's number of blocks"
        raise ValueError(f"legrad option blocks must be None (all) or an int in 1..{upper}, got {blocks!r}")


@register_method(
    "legrad",
    needs=("attention_gradients", "patch_grid"),
    options={"blocks": None},
    check_options=lambda options: _check_blocks(options["blocks"]),
    summary="LeGrad (ViTs): positive gradients of each block's class score w.r.t. its attention, averaged",
)
def legrad(attention_gradients: Tensor, patch_grid: Tuple[int, int], blocks: Optional[int] = None) -> Tensor:
    """LeGrad (Bousselham et al. 2024, "LeGrad: An explainability method for vision transformers via feature formation
    sensitivity", arXiv:2404.03214).

    ``E^l = mean_{heads, queries} ReLU(d s^l / d A^l)`` per block ``l`` (``s^l``: the block's class score through the
    model's own head; ``A^l``: its attention probabilities; prefix keys dropped), averaged over the last ``blocks``
    blocks (None: all, as torchcam's ``LeGrad`` given every block) and laid out on the ``(h, w)`` patch grid. Needs a
    timm or torchvision vision transformer (``vision_transformer_parts``).
    """
    layers = attention_gradients.shape[1]
    _check_blocks(blocks, layers)
    chosen = attention_gradients if blocks is None else attention_gradients[:, layers - blocks :]
    return chosen.mean(dim=1).reshape(attention_gradients.shape[0], patch_grid[0], patch_grid[1])
