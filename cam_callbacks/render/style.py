"""How images are drawn: ``ImageStyle``, the one option object of everything visual."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Tuple, Union

from cam_callbacks.render.images import colormap_lut

#: Cells per row of a heatmap grid: two cards wide stay legible at TensorBoard's card size.
GRID_PER_ROW = 2

ChannelValues = Union[float, Sequence[float], None]


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"ImageStyle: {name} must be a positive int, got {value!r}")
    return value


def _channel_values(name: str, value: Any, positive: bool) -> Optional[Tuple[float, ...]]:
    """``value`` as a tuple of floats: one number (every channel) or one per channel; None stays None."""
    if value is None:
        return None
    kind = "positive numbers" if positive else "numbers"
    message = (
        f"ImageStyle: {name} must be one finite number for all channels or a sequence of finite {kind}, one per image "
        f"channel (e.g. {name}=[0.5, 0.5, 0.5]), got {value!r}"
    )
    if isinstance(value, (str, bytes, bool)):
        raise ValueError(message)
    if isinstance(value, (int, float)):
        values: Tuple[float, ...] = (float(value),)
    else:
        try:
            values = tuple(float(v) for v in value)
        except (TypeError, ValueError, RuntimeError):  # RuntimeError: a tensor with more than one element per channel
            raise ValueError(message) from None
    if not values or not all(math.isfinite(v) and (v > 0 or not positive) for v in values):
        raise ValueError(message)
    return values


@dataclass(frozen=True)
class ImageStyle:
    """How ``CAMMonitor`` and the notebook helpers draw images.

    Every field is checked when the object is built, and the message names the field. The number of
    ``mean``/``std`` values is checked against the probe images' channels at the callback's setup.

    Args:
        max_images: Probe images shown in each grid.
        max_labels: Multi-label models: the most frequent labels that get a grid of their own.
        mean: The images' per-channel normalisation mean (one number for all channels, or one per channel), to show
            the originals in their real colours; give ``std`` too. None: the images are shown as they are.
        std: The per-channel standard deviation of that normalisation.
        colormap: A Matplotlib colormap name for the heatmaps.
        overlay_alpha: The heatmap's opacity where the map is 1, in [0, 1] (it fades with the map value).
        class_names: One name per class, used in captions, alarm messages and the report (default: the
            ``classes``/``class_names`` attribute of the datamodule or dataset, when there is one).

    Examples:
        >>> style = ImageStyle(mean=[0.5, 0.5, 0.5], std=0.25, class_names=["cat", "dog"])
        >>> style.std, style.class_names
        ((0.25,), ('cat', 'dog'))
        >>> ImageStyle(overlay_alpha=2)
        Traceback (most recent call last):
        ...
        ValueError: ImageStyle: overlay_alpha must be a number in [0, 1] (the heatmap's opacity), got 2
    """

    max_images: int = 16
    max_labels: int = 4
    mean: ChannelValues = None
    std: ChannelValues = None
    colormap: str = "jet"
    overlay_alpha: float = 0.5
    class_names: Optional[Sequence[str]] = None

    def __post_init__(self) -> None:
        _positive_int("max_images", self.max_images)
        _positive_int("max_labels", self.max_labels)
        if (self.mean is None) != (self.std is None):
            raise ValueError(
                f"ImageStyle: give both mean and std (to undo the images' normalisation for display) or neither, got mean={self.mean!r} and std={self.std!r}"
            )
        means = _channel_values("mean", self.mean, positive=False)
        stds = _channel_values("std", self.std, positive=True)
        if means is not None and stds is not None and len(means) != len(stds) and 1 not in (len(means), len(stds)):
            raise ValueError(
                f"ImageStyle: mean has {len(means)} values and std {len(stds)}: give the same number, one per image channel "
                f"(or one number for all channels), got mean={self.mean!r} and std={self.std!r}"
            )
        object.__setattr__(self, "mean", means)
        object.__setattr__(self, "std", stds)
        alpha = self.overlay_alpha
        valid_alpha = isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and 0.0 <= float(alpha) <= 1.0
        if not valid_alpha:
            raise ValueError(f"ImageStyle: overlay_alpha must be a number in [0, 1] (the heatmap's opacity), got {alpha!r}")
        object.__setattr__(self, "overlay_alpha", float(alpha))
        if not isinstance(self.colormap, str):
            raise ValueError(f"ImageStyle: colormap must be a Matplotlib colormap name such as 'jet' or 'viridis', got {self.colormap!r}")
        colormap_lut(self.colormap)  # an unknown name fails here, listing the valid ones
        object.__setattr__(self, "class_names", _class_names(self.class_names))

    @property
    def mean_values(self) -> Optional[Tuple[float, ...]]:
        """``mean`` as a tuple of floats (one, or one per channel); None when not given."""
        return self.mean  # type: ignore[return-value]  # normalised by __post_init__

    @property
    def std_values(self) -> Optional[Tuple[float, ...]]:
        """``std`` as a tuple of floats (one, or one per channel); None when not given."""
        return self.std  # type: ignore[return-value]  # normalised by __post_init__

    @property
    def per_row(self) -> int:
        """Cells per row of a grid."""
        return GRID_PER_ROW


def _class_names(names: Any) -> Optional[Tuple[str, ...]]:
    if names is None:
        return None
    if isinstance(names, (str, bytes)) or not hasattr(names, "__iter__") or isinstance(names, dict):
        raise ValueError(f"ImageStyle: class_names must be a list of names, one per model output, got {names!r}")
    listed = tuple(str(name) for name in names)
    if not listed:
        raise ValueError("ImageStyle: class_names must name at least one class, got an empty list")
    return listed
