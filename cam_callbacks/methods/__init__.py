"""CAM methods as pure functions, registered by name (``cam_callbacks.methods.registry``), one module per family.

Importing this package registers the built-in methods. ``available_methods`` lists them in
registration order, so the family modules are imported in that order (not sorted): activation (CAM),
gradient, decomposition (Eigen-CAM), perturbation, input gradient, ..., multi-layer (RefineCAM) last.
"""

# isort: off
from cam_callbacks.methods import activation  # noqa: F401
from cam_callbacks.methods import gradient  # noqa: F401
from cam_callbacks.methods import decomposition  # noqa: F401
from cam_callbacks.methods import perturbation  # noqa: F401
from cam_callbacks.methods import input_gradient  # noqa: F401
from cam_callbacks.methods import gradient_variants  # noqa: F401
from cam_callbacks.methods import decomposition_variants  # noqa: F401
from cam_callbacks.methods import activation_variants  # noqa: F401
from cam_callbacks.methods import baselines  # noqa: F401
from cam_callbacks.methods import scored  # noqa: F401
from cam_callbacks.methods import full_gradient  # noqa: F401
from cam_callbacks.methods import transformer  # noqa: F401
from cam_callbacks.methods import multi_layer  # noqa: F401
# isort: on
