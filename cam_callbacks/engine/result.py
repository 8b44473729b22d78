"""What the engine takes and returns: the rows of a probe set, maps of several methods, and the same with per-image scores."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, NamedTuple, Optional, Sequence, Tuple

from torch import Tensor, nn

from cam_callbacks.utils.types import Probability

#: Method name -> metric name -> ``(N,)`` per-image values.
Scores = Dict[str, Dict[str, Tensor]]


@dataclass
class Explanation:
    """Maps of several methods for one set of images.

    Attributes:
        maps: Method name -> ``(N, H, W)`` float32 maps in [0, 1].
        logits: ``(N, num_classes)`` logits of the unmodified images (detached).
        targets: ``(N,)`` class index each map explains.
        layer_name: Dotted name of the target layer (several joined by ``"+"`` when fused).
        layers: The ``(name, module)`` target layers the maps were computed at (what a second pass on modified
            images needs, e.g. ARCC's Coherency); empty when not known (results merged across processes).
    """

    maps: Dict[str, Tensor]
    logits: Tensor
    targets: Tensor
    layer_name: str
    layers: Sequence[Tuple[str, nn.Module]] = ()


class ScoredExplanation(NamedTuple):
    """Maps and their per-image scores (faithfulness fractions in [0, 1]; empty when not computed).

    A named tuple, so ``explanation, scores = result`` unpacks it.
    """

    explanation: Explanation
    scores: Scores


class ProbeView(NamedTuple):
    """The rows the callback explains: probe images (or one row per positive label) and their masks."""

    images: Tensor
    targets: Optional[Tensor]
    masks: Optional[Tensor]
    nuisance: Optional[Tensor]
    image_index: Tensor
    probability: Probability
