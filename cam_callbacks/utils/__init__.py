"""Shared building blocks below every layer: safe division and Pearson correlation, map normalisation, target
handling, argument checks and the ``Literal`` types of string options. Torch only."""

from cam_callbacks.utils.maps import fuse_layer_maps, minmax_normalize, upsample_and_normalize
from cam_callbacks.utils.numeric import pearson, safe_divide

__all__ = ["fuse_layer_maps", "minmax_normalize", "pearson", "safe_divide", "upsample_and_normalize"]
