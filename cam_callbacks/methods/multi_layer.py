"""Methods that combine several target layers: RefineCAM.

RefineCAM ("How to Evaluate and Refine your CAM", arXiv 2605.14641, 2026) computes a base method's map at each of
two or more target layers, normalises each, brings them to one size and multiplies them: a position keeps its
saliency only where every layer agrees, which removes the noise of shallow layers' maps while keeping their
resolution. Grad-CAM++ is the default base.

Here the per-layer maps are the base method's maps exactly as ``explain`` returns them for that
layer alone (upsampled to the input size, bilinear with ``align_corners=False``, then min-max normalised), and the
product is min-max normalised again: pytorch-grad-cam 1.5.7's ``RefineCAM`` convention. torchcam 0.5.0's
``RefineCAM`` normalises each layer at its feature resolution and multiplies at the largest layer's resolution; the
two agree where the layers are at the input resolution and differ by construction elsewhere
(``tests/methods/test_refinecam.py`` measures by how much).
"""

from __future__ import annotations

from typing import Any, List, Mapping, Optional, Sequence

import torch
from torch import Tensor

from cam_callbacks.methods.registry import available_methods, get_method, register_method
from cam_callbacks.utils.maps import minmax_normalize

#: The inputs a RefineCAM base may need: one forward and one backward pass per layer provide them.
BASE_INPUTS = ("activations", "gradients")


def refine_bases() -> List[str]:
    """The registered methods RefineCAM accepts as ``base``: those computed from the target layer's activations and/or
    gradients of the target logit alone (no score of their own, no layer fusion of their own).

    Example::

        >>> refine_bases()[:5]
        ['gradcam', 'gradcampp', 'xgradcam', 'hirescam', 'layercam']
    """
    bases = []
    for name in available_methods():
        method = get_method(name)
        if set(method.needs) <= set(BASE_INPUTS) and method.score is None and method.fuse_layers is None and method.min_layers == 1:
            bases.append(name)
    return bases


def _check_refinecam(options: Mapping[str, Any]) -> None:
    base = options["base"]
    bases = refine_bases()
    if not isinstance(base, str) or base not in bases:
        why = ""
        if isinstance(base, str) and base in available_methods():
            why = f" ({base!r} needs more than the target layer's activations and gradients, or has a score or layer fusion of its own)"
        raise ValueError(f"refinecam: base must be a method computed from the target layer's activations and gradients{why}; choose from {bases}, got {base!r}")
    base_options = options["base_options"]
    if base_options is not None and not isinstance(base_options, Mapping):
        raise ValueError(f"refinecam: base_options must be None or a dict of {base!r}'s options, got {base_options!r}")
    try:
        get_method(base).resolve_options(base_options)
    except ValueError as error:  # the base's message lists its options
        raise ValueError(f"refinecam: base_options: {error}") from None


def refine_layer_maps(maps: Sequence[Tensor]) -> Tensor:
    """RefineCAM's fusion: the product of the per-layer maps, min-max normalised (a constant product becomes zeros).

    Args:
        maps: One ``(N, H, W)`` map per target layer, each at the input size and min-max normalised to [0, 1].

    Returns:
        ``(N, H, W)`` float32 maps in [0, 1].

    Example::

        >>> deep = torch.tensor([[[0.0, 0.5, 1.0]]])
        >>> shallow = torch.tensor([[[1.0, 1.0, 0.5]]])
        >>> refine_layer_maps([deep, shallow])  # [0, .5, .5] normalised
        tensor([[[0., 1., 1.]]])
    """
    if len(maps) == 0:
        raise ValueError("refine_layer_maps needs at least one map")
    return minmax_normalize(torch.stack([layer_map.float() for layer_map in maps]).prod(dim=0))


@register_method(
    "refinecam",
    needs=BASE_INPUTS,
    summary="RefineCAM: the product of a base method's normalised maps at two or more target layers",
    options={"base": "gradcampp", "base_options": None},
    check_options=_check_refinecam,
    fuse_layers=refine_layer_maps,
    min_layers=2,
)
def refinecam(activations: Tensor, gradients: Tensor, base: str = "gradcampp", base_options: Optional[Mapping[str, Any]] = None) -> Tensor:
    """RefineCAM's per-layer map: the raw map of ``base`` at this layer (``refine_layer_maps`` multiplies them).

    Args:
        activations: ``(N, K, h, w)`` of one target layer.
        gradients: ``(N, K, h, w)``, the target logit's gradients there.
        base: The base method (default Grad-CAM++); one of ``refine_bases``.
        base_options: The base method's options (None: its defaults).

    Returns:
        The base method's raw ``(N, h, w)`` map.

    Examples:
        The map of two layers of a resnet:

        ```python
        import cam_callbacks as cc

        maps = cc.explain(model, images, method="refinecam", target_layer=["layer3", "layer4"])
        layercam_based = cc.explain(model, images, method="refinecam", target_layer=["layer2", "layer3", "layer4"],
                                    method_options={"base": "layercam"})
        ```
    """
    method = get_method(base)
    inputs = {"activations": activations, "gradients": gradients}
    resolved = method.resolve_options(base_options)
    return method.fn(**{key: inputs[key] for key in method.needs}, **method.fn_options(resolved))
