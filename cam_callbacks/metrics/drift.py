"""How explanations move during training, and whether they gather on one spot for every image.

Pure, batched functions of ``(N, H, W)`` map sets (e.g. the maps of a fixed probe set at two
epochs):

- ``map_correlation``: per-image Pearson correlation of two map sets (how much each image's
  explanation changed between two epochs).
- ``mean_map``, ``class_mean_maps``: where the model looks on average, overall and per class.
- ``shortcut_score``: one number in ``[0, 1]`` that is high when the same small region is
  salient for most probe images whatever they show: the signature of a spurious cue at a fixed
  place (a watermark, a border, a coloured corner patch), as opposed to objects that move from
  image to image (per class, and per cluster of a class's maps: ``cam_callbacks.find_shortcuts``).

Example::

    >>> maps = torch.zeros(6, 8, 8)
    >>> maps[:, 0, 0] = 1.0  # every image's map points at the top-left pixel
    >>> report = shortcut_score(maps)
    >>> round(float(report.score), 3), report.region.nonzero().tolist()
    (0.984, [[0, 0]])
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from cam_callbacks.utils.checks import check_maps
from cam_callbacks.utils.numeric import pearson, safe_divide


class ClassMeanMaps(NamedTuple):
    """Output of ``class_mean_maps``."""

    means: Tensor  # (num_classes, H, W); zeros for classes without images
    counts: Tensor  # (num_classes,) long, images per class


class ShortcutReport(NamedTuple):
    """Output of ``shortcut_score`` (see there for the formulas).

    Attributes:
        score: 0-dim float tensor in ``[0, 1)``: ``shared * concentration``.
        shared: 0-dim, mass of the common map (``[0, 1]``): how much saliency most images share.
        concentration: 0-dim, ``1 - effective_area / (H * W)`` of the common map (``[0, 1)``).
        common_map: ``(H, W)`` the common map ``c`` scaled to max 1 (zeros when nothing is shared).
        mean_map: ``(H, W)`` mean of the mass-normalised maps, scaled to max 1 (for drawing).
        region: ``(H, W)`` bool, the smallest set of pixels holding half of the common map's mass
            (all False when nothing is shared).
        per_image: ``(N,)`` share of each image's map mass inside ``region``; the images most
            taken by the shortcut have the largest values.
    """

    score: Tensor
    shared: Tensor
    concentration: Tensor
    common_map: Tensor
    mean_map: Tensor
    region: Tensor
    per_image: Tensor


def _check_3d(maps: Tensor, name: str = "maps") -> None:
    if not isinstance(maps, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (N, H, W), got {type(maps).__name__}")
    if maps.dim() != 3:
        raise ValueError(f"{name} must be (N, H, W), got shape {tuple(maps.shape)}")
    if not maps.is_floating_point():
        raise ValueError(f"{name} must be a floating tensor, got dtype {maps.dtype}")


def map_correlation(a: Tensor, b: Tensor) -> Tensor:
    """Per-image Pearson correlation of two ``(N, H, W)`` map sets over all ``H * W`` pixels.

    ``r_i = sum((a_i - mean a_i)(b_i - mean b_i)) / sqrt(sum((a_i - mean a_i)^2) sum((b_i - mean b_i)^2))``,
    computed in float64 and clamped to ``[-1, 1]``. If either map of an image is constant, ``r_i = 0``
    (never NaN). Typical use: the maps of a fixed probe set at two epochs; a drop means the
    explanations moved.

    Returns:
        ``(N,)`` tensor of ``a``'s dtype.

    Example::

        >>> a = torch.tensor([[[0.0, 1.0], [2.0, 3.0]], [[1.0, 1.0], [1.0, 1.0]]])
        >>> map_correlation(a, torch.stack([3.0 - a[0], a[0]]))  # anti-correlated; constant map
        tensor([-1.,  0.])
    """
    _check_3d(a, "a")
    _check_3d(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"a {tuple(a.shape)} and b {tuple(b.shape)} must have the same shape")
    x = a.flatten(1).double()
    return pearson(x, b.flatten(1).to(x.device).double(), dim=1).to(a.dtype)


def mean_map(maps: Tensor) -> Tensor:
    """Pixel-wise mean of ``(N, H, W)`` maps, ``(H, W)``; zeros when ``N == 0``.

    Example::

        >>> mean_map(torch.tensor([[[0.0, 1.0]], [[1.0, 1.0]]]))
        tensor([[0.5000, 1.0000]])
    """
    _check_3d(maps)
    if maps.shape[0] == 0:
        return torch.zeros(maps.shape[1:], dtype=maps.dtype, device=maps.device)
    return maps.mean(dim=0)


def class_mean_maps(maps: Tensor, labels: Tensor, num_classes: int) -> ClassMeanMaps:
    """Mean map of each class, ``(num_classes, H, W)``, and the number of images per class.

    Computed with one ``index_add_`` (no loop over classes or images). Classes without images get
    a zero map and a count of 0.

    Args:
        maps: ``(N, H, W)`` maps.
        labels: ``(N,)`` integer class of each map (e.g. the target class of the explanation).
        num_classes: Number of classes (labels must be in ``0 .. num_classes - 1``).

    Example::

        >>> maps = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]], [[1.0, 1.0]]])
        >>> means, counts = class_mean_maps(maps, torch.tensor([0, 2, 2]), 3)
        >>> means.tolist(), counts.tolist()
        ([[[1.0, 0.0]], [[0.0, 0.0]], [[0.5, 1.0]]], [1, 0, 2])
    """
    _check_3d(maps)
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
    if not isinstance(labels, Tensor) or labels.dim() != 1 or labels.is_floating_point() or labels.dtype == torch.bool:
        got = f"{labels.dtype} of shape {tuple(labels.shape)}" if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"labels must be an (N,) integer tensor, got {got}")
    if labels.shape[0] != maps.shape[0]:
        raise ValueError(f"labels has {labels.shape[0]} entries but there are {maps.shape[0]} maps")
    labels = labels.to(maps.device).long()
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"labels must be in 0..{num_classes - 1}, got values in {int(labels.min())}..{int(labels.max())}")
    sums = torch.zeros((num_classes, *maps.shape[1:]), dtype=torch.float64, device=maps.device)
    sums.index_add_(0, labels, maps.double())
    counts = torch.bincount(labels, minlength=num_classes)
    means = safe_divide(sums, counts.view(-1, 1, 1))  # zeros for classes without images
    return ClassMeanMaps(means.to(maps.dtype), counts)


def _lower_quantile(values: Tensor, q: float) -> Tensor:
    """Quantile ``q`` along dim 0 with linear interpolation (NumPy's default), via one sort.

    ``torch.quantile`` refuses inputs above 2**24 elements; a sort has no such limit.
    """
    ordered = values.sort(dim=0).values
    position = (values.shape[0] - 1) * q
    low = int(position)
    high = min(low + 1, values.shape[0] - 1)
    weight = position - low
    return ordered[low] + (ordered[high] - ordered[low]) * weight


def _smallest_region(distribution: Tensor, share: float) -> Tensor:
    """Bool mask (flat) of the fewest pixels, highest first, holding ``share`` of the mass."""
    order = distribution.argsort(descending=True, stable=True)
    cumulative = distribution[order].cumsum(0)
    # the first k pixels reach the share; tiny tolerance for the float64 cumulative sum
    k = int((cumulative < share - 1e-12).sum()) + 1
    k = min(k, distribution.numel())
    region = torch.zeros_like(distribution, dtype=torch.bool)
    region[order[:k]] = True
    return region


def shortcut_score(maps: Tensor, coverage: float = 0.8) -> ShortcutReport:
    """How much the maps of *different* images agree on one small region: ``shared * concentration``.

    For maps ``L_1 .. L_N`` of ``H x W`` pixels (computed in float64):

    1. Mass-normalise: ``p_i = L_i / sum(L_i)``; a zero map has no preference and becomes the
       uniform ``1 / (H W)``.
    2. Common map: ``c(x) = quantile_{1 - coverage}(p_1(x), ..., p_N(x))``, the level of saliency
       that pixel ``x`` reaches in at least a ``coverage`` share of the images (linear
       interpolation between order statistics, as ``numpy.quantile``; ``coverage=1`` takes the
       minimum over images).
    3. ``shared = min(1, sum_x c(x))``: 1 when all maps are identical; near 0 when each image's
       saliency sits where few other images have any (objects at different places).
    4. ``concentration = 1 - exp(entropy(c / sum c)) / (H W)`` (entropy in nats, ``0 log 0 = 0``):
       ``exp(entropy)`` is the effective number of pixels the common map covers, so a uniform
       common map gives exactly 0 and a one-pixel one ``1 - 1 / (H W)``; 0 when ``sum c == 0``.
    5. ``score = shared * concentration``, in ``[0, 1)``.

    Identical maps peaked on the same small spot score near 1; uniform maps score exactly 0; maps
    peaked at a different place in each image score near 0. A saliency spot common to all images
    that holds a share ``s`` of each map (the rest following the object) scores about ``s``. The
    score is only meaningful over many images of varied content (a few dozen): for a single image it
    is that map's concentration.

    Args:
        maps: ``(N, H, W)`` non-negative maps, ``N >= 1``.
        coverage: Share of the images in which a region must be salient, in ``(0, 1]``.

    Returns:
        A ``ShortcutReport`` (tensors on the maps' device; score terms and maps in the maps' dtype).

    Example::

        >>> corner = torch.zeros(4, 8, 8)
        >>> corner[:, :2, :2] = 1.0  # the same 2x2 corner in every image: effective area 4 of 64
        >>> float(shortcut_score(corner).score)
        0.9375
        >>> moving = torch.zeros(4, 8, 8)
        >>> for i in range(4):
        ...     moving[i, 2 * i : 2 * i + 2, 2 * i : 2 * i + 2] = 1.0
        >>> float(shortcut_score(moving).score), float(shortcut_score(torch.ones(4, 8, 8)).score)
        (0.0, 0.0)
    """
    check_maps(maps)
    if maps.shape[0] == 0:
        raise ValueError("shortcut_score needs at least one map, got N = 0")
    if isinstance(coverage, bool) or not isinstance(coverage, (int, float)) or not 0.0 < float(coverage) <= 1.0:
        raise ValueError(f"coverage must be a number in (0, 1], got {coverage!r}")
    n, height, width = maps.shape
    pixels = height * width
    flat = maps.flatten(1).double()
    total = flat.sum(dim=1, keepdim=True)
    uniform = torch.full_like(flat, 1.0 / pixels)
    p = safe_divide(flat, total, fallback=uniform, require_positive=True)

    common = _lower_quantile(p, 1.0 - float(coverage)).clamp_min(0.0)  # (H*W,)
    mass = common.sum()
    shared = mass.clamp(max=1.0)
    if float(mass) > 0:
        c = common / mass
        entropy = -(c * torch.log(torch.where(c > 0, c, torch.ones_like(c)))).sum()
        concentration = (1.0 - torch.exp(entropy) / pixels).clamp_min(0.0)
        if bool(c.max() == c.min()):  # exactly uniform: 0, not a rounding residue of exp(log(H W))
            concentration = torch.zeros_like(concentration)
        region = _smallest_region(c, 0.5)
        common_map = common / common.max()
    else:
        concentration = torch.zeros((), dtype=torch.float64, device=maps.device)
        region = torch.zeros(pixels, dtype=torch.bool, device=maps.device)
        common_map = torch.zeros_like(common)
    mean = p.mean(dim=0)
    per_image = (p * region).sum(dim=1)
    return ShortcutReport(
        score=(shared * concentration).to(maps.dtype),
        shared=shared.to(maps.dtype),
        concentration=concentration.to(maps.dtype),
        common_map=common_map.view(height, width).to(maps.dtype),
        mean_map=(mean / mean.max()).view(height, width).to(maps.dtype),
        region=region.view(height, width),
        per_image=per_image.to(maps.dtype),
    )
