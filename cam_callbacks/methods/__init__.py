"""CAM methods as pure functions, registered by name (:mod:`cam_callbacks.methods.registry`), one module per family.

Importing this package registers the built-in methods. :func:`available_methods` lists them in
registration order, so the family modules are imported in that order (not sorted): activation (CAM),
gradient, decomposition (Eigen-CAM), perturbation, input gradient, ..., multi-layer (RefineCAM) last.
"""

from cam_callbacks.methods.registry import (
    KNOWN_INPUTS,
    LAYER_INPUTS,
    CAMMethod,
    available_methods,
    get_method,
    register_method,
    unregister_method,
)  # fmt: skip

# isort: off
from cam_callbacks.methods.activation import cam
from cam_callbacks.methods.gradient import gradcam, gradcampp, hirescam, layercam, xgradcam
from cam_callbacks.methods.decomposition import eigencam
from cam_callbacks.methods.perturbation import GAUSSIAN_KERNEL, ablationcam, position_masks, reciprocam, scorecam
from cam_callbacks.methods.perturbation import integration_scales, iscam, sscam
from cam_callbacks.methods.input_gradient import guidedbackprop, guidedgradcam, saliency
from cam_callbacks.methods.gradient_variants import gradcamelementwise, smoothgradcampp
from cam_callbacks.methods.decomposition_variants import eigengradcam, kpcacam
from cam_callbacks.methods.activation_variants import fem
from cam_callbacks.methods.baselines import randomcam, sobelcam
from cam_callbacks.methods.scored import finercam, shapleycam
from cam_callbacks.methods.full_gradient import fullgrad
from cam_callbacks.methods.transformer import legrad
import cam_callbacks.methods.multi_layer  # noqa: F401 - importing it registers refinecam

# isort: on

__all__ = [
    "CAMMethod", "GAUSSIAN_KERNEL", "KNOWN_INPUTS", "LAYER_INPUTS", "ablationcam", "available_methods", "cam", "eigencam",
    "get_method", "gradcam", "gradcampp", "guidedbackprop", "guidedgradcam", "hirescam", "layercam", "position_masks",
    "reciprocam", "register_method", "saliency", "scorecam", "unregister_method", "xgradcam",
    "eigengradcam", "fem", "gradcamelementwise", "kpcacam", "randomcam", "smoothgradcampp", "sobelcam",
    "finercam", "fullgrad", "legrad", "shapleycam",
]  # fmt: skip
__all__ += ["integration_scales", "iscam", "sscam"]
