"""String options as ``Literal`` types, so that type checkers catch a misspelt choice."""

from __future__ import annotations

from typing import Literal

#: ``smooth=``: average maps over noisy copies (``"noise"``) or flips and scales (``"aug"``) of the images.
Smooth = Literal["noise", "aug"]
#: ``probability=``: how logits become class probabilities.
Probability = Literal["softmax", "sigmoid"]
#: ``faithfulness(reduction=...)``: means over the images, or per-image tensors.
Reduction = Literal["mean", "none"]
#: ``CAMMonitor(target=...)``: explain the true label or the top-1 prediction.
TargetMode = Literal["label", "prediction"]
#: ``CAMMonitor(precision=...)``: the training precision, or the model's own dtype.
PrecisionMode = Literal["auto", "32"]
#: ``CAMMonitor(on_error=...)``: report a failure during training and go on, or raise it.
OnError = Literal["warn", "raise"]
