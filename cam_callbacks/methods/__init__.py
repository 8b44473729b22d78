"""CAM methods as pure functions, registered by name (:mod:`cam_callbacks.methods.registry`), one module per family.

Importing this package registers the built-in methods. The family modules are imported in the order
of :func:`available_methods`: ``cam``, the gradient family, ``eigencam`` (activation.py registers the
gradient family between its two methods), then the perturbation and input-gradient families.
"""

from cam_callbacks.methods.registry import (
    KNOWN_INPUTS, LAYER_INPUTS, CAMMethod, available_methods, get_method, register_method, unregister_method,
)  # fmt: skip
from cam_callbacks.methods.activation import cam, eigencam
from cam_callbacks.methods.gradient import gradcam, gradcampp, hirescam, layercam, xgradcam
from cam_callbacks.methods.perturbation import GAUSSIAN_KERNEL, ablationcam, position_masks, reciprocam, scorecam
from cam_callbacks.methods.input_gradient import guidedbackprop, guidedgradcam, saliency

__all__ = [
    "CAMMethod", "GAUSSIAN_KERNEL", "KNOWN_INPUTS", "LAYER_INPUTS", "ablationcam", "available_methods", "cam", "eigencam",
    "get_method", "gradcam", "gradcampp", "guidedbackprop", "guidedgradcam", "hirescam", "layercam", "position_masks",
    "reciprocam", "register_method", "saliency", "scorecam", "unregister_method", "xgradcam",
]  # fmt: skip
