"""Reading the model without changing it: state guards, the target layer's output, its tail, input gradients.

- :mod:`~cam_callbacks.capture.state`: context managers that put the model and the RNGs back as found.
- :mod:`~cam_callbacks.capture.hooks`: :class:`LayerCapture`, the forward hook on the target layer.
- :mod:`~cam_callbacks.capture.layers`: finding the target layer and the CAM classifier head.
- :mod:`~cam_callbacks.capture.layouts`: transformer tokens <-> feature maps (:class:`TokenGrid`).
- :mod:`~cam_callbacks.capture.guided`: gradients at the input, plain or guided.
- :mod:`~cam_callbacks.capture.tail` (and :mod:`~cam_callbacks.capture.tail_fx`): the network after the target layer.
"""

from cam_callbacks.capture.guided import guided_relus, input_gradients
from cam_callbacks.capture.hooks import LayerCapture, LayerOutputError
from cam_callbacks.capture.layers import (
    LayersLike,
    LayerSpec,
    cam_class_weights,
    find_auto_layer,
    resolve_layers,
    resolve_named_layer,
    resolve_target_layer,
)  # fmt: skip
from cam_callbacks.capture.layouts import ReshapeLike, TokenGrid, as_token_grid
from cam_callbacks.capture.state import eager, preserved_model_state, preserved_rng_state
from cam_callbacks.capture.tail import Tail, derive_tail, tail_from_reference, tail_mismatch

__all__ = [
    "LayerCapture", "LayerOutputError", "LayerSpec", "LayersLike", "ReshapeLike", "Tail", "TokenGrid", "as_token_grid", "cam_class_weights",
    "derive_tail", "eager", "find_auto_layer", "guided_relus", "input_gradients", "preserved_model_state", "preserved_rng_state",
    "resolve_layers", "resolve_named_layer", "resolve_target_layer", "tail_from_reference", "tail_mismatch",
]  # fmt: skip
