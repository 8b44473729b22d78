"""Find a shortcut nobody told you about: per-class statistics and clusters of the probe maps.

A spurious cue (a patch, a watermark, a frame, a region where one class's objects always were in
training) shows up as saliency at a *fixed* place across images whose content differs, and often
on one class only: averaged over all classes it is diluted away. ``find_shortcuts`` therefore
looks at each explained class on its own, and inside it at clusters of maps that agree with one
another (in the spirit of spectral relevance analysis, SpRAy: Lapuschkin et al. 2019, which
clusters a class's relevance maps to find Clever-Hans strategies). Pure functions of tensors; no
model is run here (the occlusion test that confirms a suspected region is
``cam_callbacks.engine.occlusion.occlusion_effect``).

Definitions, for a set ``S`` of images (a class, or a cluster inside a class), computed in float64
on maps mean-pooled to a ``grid x grid`` raster (``adaptive_avg_pool2d``; the statistics compare
places, not pixels) and mass-normalised, ``p_i = pooled_i / sum(pooled_i)`` (a zero map becomes
uniform). With object masks the object pixels are zeroed at full resolution before pooling, so
only the saliency *outside* the objects is compared, as in ``cam_callbacks.metrics.watch.analyze_maps``.

- ``outside_share``: mean over ``S`` of the share of each full-resolution map's mass outside the
  image's objects (NaN without masks).
- ``score``: ``cam_callbacks.metrics.drift.shortcut_score`` of ``{p_i : i in S}`` (the mass
  of the saliency most images share, times its concentration), multiplied by ``outside_share``
  when masks are given. Near 1: every image of ``S`` puts its saliency on one small common spot
  (outside its object); near 0: the saliency moves with the content.
- ``consistency``: mean Pearson correlation of ``p_i`` and ``p_j`` over the pairs ``i != j`` of
  ``S`` (a constant map correlates 0 with anything); 0 for fewer than 2 images.
- ``concentration``: ``1 - exp(entropy(m)) / cells`` of the mean map ``m = mean_i p_i``
  (0: uniform, near 1: one cell).
- ``region``: the grid cells where the common map of ``shortcut_score``
  reaches half its maximum, at full resolution; ``box`` its bounding box.

Clusters: cosine k-means on the pooled maps of each class with a deterministic farthest-point
start (no random draws), ``clusters`` clusters per class with at least ``min_cluster_share`` of it.

Example::

    >>> maps = torch.rand(12, 16, 16, generator=torch.Generator().manual_seed(0)) * 0.05
    >>> maps[:6, :4, :4] = 1.0                 # class 0 always looks at the top-left corner
    >>> labels = torch.tensor([0] * 6 + [1] * 6)
    >>> found = find_shortcuts(maps, labels)
    >>> best = found.best
    >>> best.class_index, best.box, best.score > 0.5
    (0, (0, 0, 4, 4), True)
"""

from __future__ import annotations

from typing import List, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from cam_callbacks.metrics.drift import class_mean_maps, shortcut_score
from cam_callbacks.utils.checks import check_maps
from cam_callbacks.utils.numeric import safe_divide

_NAN = float("nan")


class ClassShortcutStats(NamedTuple):
    """Per-class spurious-cue statistics (output of ``class_shortcut_stats``); ``(K,)`` unless noted.

    Classes without images have count 0, score/consistency/concentration 0 and NaN elsewhere.
    """

    counts: Tensor  # long
    mean_maps: Tensor  # (K, H, W): mean of the class's mass-normalised maps, scaled to max 1
    score: Tensor
    consistency: Tensor
    concentration: Tensor
    outside_share: Tensor  # NaN without masks
    accuracy: Tensor  # share of the class's probe images predicted right; NaN when unknown
    confidence: Tensor  # mean probability of the explained class; NaN when unknown


class ShortcutCandidate(NamedTuple):
    """A set of one class's maps that agree on one region: the whole class, or one of its clusters.

    Attributes:
        class_index: The explained class.
        members: ``(M,)`` long probe indices of the set, the most taken by the region first.
        size: ``M``; ``class_size``: images of the class.
        score, consistency, concentration, outside_share: See the module docstring.
        region: ``(H, W)`` bool, where the set's maps gather (full resolution).
        box: ``(top, left, bottom, right)`` pixel bounds of ``region``, bottom and right exclusive.
        prototype: ``(H, W)`` mean of the members' mass-normalised maps, scaled to max 1.
        region_share: ``(M,)`` share of each member's map in ``region``, in the order of ``members``.
        accuracy, confidence: Of the class (NaN when unknown).
        cluster: ``-1`` for the whole class, else the cluster number.
    """

    class_index: int
    members: Tensor
    size: int
    class_size: int
    score: float
    consistency: float
    concentration: float
    outside_share: float
    region: Tensor
    box: Tuple[int, int, int, int]
    prototype: Tensor
    region_share: Tensor
    accuracy: float
    confidence: float
    cluster: int


class ShortcutFindings(NamedTuple):
    """Output of ``find_shortcuts``: the per-class statistics and every candidate, highest score first."""

    stats: ClassShortcutStats
    candidates: List[ShortcutCandidate]

    @property
    def best(self) -> Optional[ShortcutCandidate]:
        """The candidate with the highest score (None when there is none)."""
        return self.candidates[0] if self.candidates else None


def _normalise(flat: Tensor) -> Tensor:
    """Rows of ``flat`` divided by their sum (float64); zero rows become uniform."""
    flat = flat.double()
    uniform = torch.full_like(flat, 1.0 / max(flat.shape[1], 1))
    return safe_divide(flat, flat.sum(dim=1, keepdim=True), fallback=uniform, require_positive=True)


def pooled_maps(maps: Tensor, grid: int = 8, masks: Optional[Tensor] = None) -> Tensor:
    """``(N, g*g)`` mass-normalised maps mean-pooled to ``g = min(grid, H, W)`` cells a side (object pixels zeroed first).

    Example::

        >>> pooled_maps(torch.tensor([[[1.0, 1.0], [0.0, 2.0]]]), grid=1).tolist()
        [[1.0]]
    """
    check_maps(maps)
    if masks is not None:
        maps = maps * (~masks.to(device=maps.device, dtype=torch.bool)).to(maps.dtype)
    size = (min(grid, maps.shape[1]), min(grid, maps.shape[2]))
    pooled = F.adaptive_avg_pool2d(maps.double().unsqueeze(1), size).flatten(1)
    return _normalise(pooled)


def pairwise_consistency(p: Tensor) -> float:
    """Mean Pearson correlation over the pairs ``i != j`` of the rows of ``p`` (0 for fewer than 2 rows or constant rows).

    Example::

        >>> round(pairwise_consistency(torch.tensor([[0.0, 1.0, 2.0], [0.0, 2.0, 4.0], [2.0, 1.0, 0.0]])), 6)  # (1 - 1 - 1) / 3
        -0.333333
    """
    n = p.shape[0]
    if n < 2:
        return 0.0
    centred = p.double() - p.double().mean(dim=1, keepdim=True)
    norms = centred.norm(dim=1, keepdim=True)
    z = safe_divide(centred, norms, require_positive=True)
    gram = z @ z.T
    return float((gram.sum() - gram.diagonal().sum()) / (n * (n - 1)))


def map_concentration(p: Tensor) -> float:
    """``1 - exp(entropy(m)) / cells`` of the mean ``m`` of the mass-normalised rows of ``p`` (0: uniform).

    Example::

        >>> map_concentration(torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
        0.75
    """
    m = _normalise(p.double().mean(dim=0, keepdim=True))[0]
    entropy = -(m * torch.log(torch.where(m > 0, m, torch.ones_like(m)))).sum()
    if bool(m.max() == m.min()):
        return 0.0
    return max(0.0, float(1.0 - torch.exp(entropy) / m.numel()))


def cosine_kmeans(vectors: Tensor, clusters: int, iterations: int = 20) -> Tensor:
    """``(N,)`` cluster index of each row: k-means on the unit-normalised rows (cosine similarity).

    Deterministic start (no random draws): the first centre is the row most similar to the mean
    direction, each next one the row least similar to the centres chosen so far.

    Example::

        >>> cosine_kmeans(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]]), 2).tolist()
        [0, 0, 1, 1]
    """
    x = F.normalize(vectors.double(), dim=1)
    n = x.shape[0]
    k = max(1, min(clusters, n))
    chosen = [int((x @ x.mean(dim=0)).argmax())]
    while len(chosen) < k:
        nearest = (x @ x[chosen].T).amax(dim=1)
        chosen.append(int(nearest.argmin()))
    centres = x[chosen]
    assign = torch.zeros(n, dtype=torch.long, device=x.device)
    for _ in range(iterations):
        new = (x @ centres.T).argmax(dim=1)
        if _ > 0 and torch.equal(new, assign):
            break
        assign = new
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        empty = sums.norm(dim=1) == 0
        centres = torch.where(empty.unsqueeze(1), centres, F.normalize(sums, dim=1))
    return assign


def _outside_share(maps: Tensor, masks: Optional[Tensor]) -> Tensor:
    """``(N,)`` share of each map's mass outside its object mask (NaN without masks; 1 for a zero map)."""
    if masks is None:
        return torch.full((maps.shape[0],), _NAN, dtype=torch.float64, device=maps.device)
    flat = maps.flatten(1).double()
    outside = (flat * (~masks.to(maps.device, torch.bool)).flatten(1)).sum(dim=1)
    return safe_divide(outside, flat.sum(dim=1), fallback=1.0, require_positive=True)


def _class_values(values: Optional[Tensor], labels: Tensor, counts: Tensor) -> Tensor:
    """Per-class means of ``(N,)`` values (NaN when None or for empty classes)."""
    if values is None:
        return torch.full(counts.shape, _NAN, dtype=torch.float64, device=counts.device)
    sums = torch.zeros(counts.shape, dtype=torch.float64, device=counts.device).index_add_(0, labels, values.double().to(counts.device))
    return torch.where(counts > 0, sums / counts.clamp_min(1), torch.full_like(sums, _NAN))


def _set_score(p: Tensor, outside: Tensor, with_masks: bool) -> Tuple[float, Tensor]:
    """The ``shortcut_score`` of the pooled rows ``p`` (times the mean outside share with masks) and its flat region."""
    report = shortcut_score(p.unsqueeze(1))
    score = float(report.score)
    if with_masks:
        score *= float(outside.mean())
    return score, report.common_map.flatten() >= 0.5  # all False when nothing is shared (the common map is 0)


def _region_box(region: Tensor) -> Tuple[int, int, int, int]:
    where = region.nonzero()
    if where.numel() == 0:
        return (0, 0, 0, 0)
    (top, left), (bottom, right) = where.amin(dim=0).tolist(), where.amax(dim=0).tolist()
    return (int(top), int(left), int(bottom) + 1, int(right) + 1)


def _candidate(context: "_Context", class_index: int, members: Tensor, cluster: int, stats: ClassShortcutStats) -> ShortcutCandidate:
    p, full = context.p[members], context.full[members]
    score, flat_region = _set_score(p, context.outside[members], context.masks is not None)
    grid_region = flat_region.view(1, 1, *context.grid_shape).float()
    region = F.interpolate(grid_region, size=context.shape, mode="nearest")[0, 0] > 0
    shares = (full * region.flatten().double()).sum(dim=1)
    order = shares.argsort(descending=True, stable=True)
    proto = full.mean(dim=0)
    proto = (proto / proto.max().clamp_min(1e-300)).view(context.shape).float()
    outside = float(context.outside[members].mean()) if context.masks is not None else _NAN
    return ShortcutCandidate(
        class_index,
        members[order],
        int(members.numel()),
        int(stats.counts[class_index]),
        score,
        pairwise_consistency(p),
        map_concentration(p),
        outside,
        region,
        _region_box(region),
        proto,
        shares[order].float(),
        float(stats.accuracy[class_index]),
        float(stats.confidence[class_index]),
        cluster,
    )


class _Context(NamedTuple):
    p: Tensor  # (N, cells) pooled, normalised
    full: Tensor  # (N, H*W) normalised at full resolution
    outside: Tensor  # (N,)
    masks: Optional[Tensor]
    grid_shape: Tuple[int, int]
    shape: Tuple[int, int]


def _check_inputs(maps: Tensor, labels: Tensor, masks: Optional[Tensor], grid: int) -> None:
    check_maps(maps)
    if maps.dim() != 3:
        raise ValueError(f"maps must be (N, H, W), got shape {tuple(maps.shape)}")
    if masks is not None and (not isinstance(masks, Tensor) or masks.shape != maps.shape):
        got = tuple(masks.shape) if isinstance(masks, Tensor) else type(masks).__name__
        raise ValueError(f"masks must be None or an (N, H, W) tensor of the maps' shape {tuple(maps.shape)}, got {got}")
    if isinstance(grid, bool) or not isinstance(grid, int) or grid < 1:
        raise ValueError(f"grid must be an int >= 1, got {grid!r}")


def class_shortcut_stats(
    maps: Tensor,
    labels: Tensor,
    num_classes: Optional[int] = None,
    masks: Optional[Tensor] = None,
    correct: Optional[Tensor] = None,
    confidence: Optional[Tensor] = None,
    grid: int = 8,
) -> ClassShortcutStats:
    """Every spurious-cue statistic per explained class (see the module docstring for the definitions).

    Args:
        maps: ``(N, H, W)`` non-negative maps.
        labels: ``(N,)`` class each map explains.
        num_classes: Number of classes (default: ``max(labels) + 1``).
        masks: ``(N, H, W)`` bool object masks, or None.
        correct: ``(N,)`` bool or {0, 1}, whether the model predicts each probe image right (None: unknown).
        confidence: ``(N,)`` probability of the explained class (None: unknown).
        grid: Side of the pooled raster.

    Example::

        >>> maps = torch.zeros(4, 4, 4); maps[:2, 0, 0] = 1.0; maps[2, 3, 3] = 1.0; maps[3, 0, 3] = 1.0
        >>> stats = class_shortcut_stats(maps, torch.tensor([0, 0, 1, 1]), grid=4)
        >>> [round(v, 4) for v in stats.consistency.tolist()], stats.counts.tolist()
        ([1.0, -0.0667], [2, 2])
    """
    _check_inputs(maps, labels, masks, grid)
    k = int(labels.max()) + 1 if num_classes is None and labels.numel() else int(num_classes or 1)
    counts = class_mean_maps(maps, labels, k).counts  # validates labels
    labels = labels.to(maps.device).long()
    p = pooled_maps(maps, grid, masks)
    outside = _outside_share(maps, masks)
    full = _normalise(maps.flatten(1))
    means = class_mean_maps(full.view(maps.shape), labels, k).means
    peak = means.flatten(1).amax(dim=1).clamp_min(1e-300).view(-1, 1, 1)
    score = torch.zeros(k, dtype=torch.float64)
    consistency, concentration = torch.zeros_like(score), torch.zeros_like(score)
    for c in (counts > 0).nonzero().flatten().tolist():
        rows = labels == c
        score[c] = _set_score(p[rows], outside[rows], masks is not None)[0]
        consistency[c], concentration[c] = pairwise_consistency(p[rows]), map_concentration(p[rows])
    return ClassShortcutStats(
        counts,
        (means / peak).float(),
        score,
        consistency,
        concentration,
        _class_values(None if masks is None else outside, labels, counts),
        _class_values(None if correct is None else correct.to(maps.device).double(), labels, counts),
        _class_values(confidence, labels, counts),
    )


def find_shortcuts(
    maps: Tensor,
    labels: Tensor,
    masks: Optional[Tensor] = None,
    num_classes: Optional[int] = None,
    correct: Optional[Tensor] = None,
    confidence: Optional[Tensor] = None,
    grid: int = 8,
    clusters: int = 2,
    min_cluster_share: float = 0.3,
    min_images: int = 4,
) -> ShortcutFindings:
    """Per-class statistics and candidate shortcut regions (whole classes and their clusters), highest score first.

    Args:
        maps, labels, masks, num_classes, correct, confidence, grid: As in ``class_shortcut_stats``.
        clusters: Clusters per class (``cosine_kmeans``); 0 or 1 looks at whole classes only.
        min_cluster_share: A cluster is a candidate only with at least this share of its class's images.
        min_images: Classes (and clusters) with fewer images are not candidates.

    Returns:
        ``ShortcutFindings``; each candidate carries its class, region, box, prototype map and the
        probe indices most taken by the region (``members``).

    Example::

        >>> maps = torch.zeros(8, 8, 8); maps[:, 6:, 6:] = 1.0      # all look at one corner
        >>> objects = torch.zeros(8, 8, 8, dtype=torch.bool); objects[:, 6:, 6:] = True
        >>> round(find_shortcuts(maps, torch.zeros(8, dtype=torch.long)).best.score, 3)  # a corner: suspicious
        0.938
        >>> find_shortcuts(maps, torch.zeros(8, dtype=torch.long), masks=objects).best.score  # it is the object
        0.0
    """
    if not 0.0 <= float(min_cluster_share) <= 1.0:
        raise ValueError(f"min_cluster_share must be in [0, 1], got {min_cluster_share!r}")
    stats = class_shortcut_stats(maps, labels, num_classes, masks, correct, confidence, grid)
    labels = labels.to(maps.device).long()
    p = pooled_maps(maps, grid, masks)
    grid_shape = (min(grid, maps.shape[1]), min(grid, maps.shape[2]))
    context = _Context(p, _normalise(maps.flatten(1)), _outside_share(maps, masks), masks, grid_shape, (maps.shape[1], maps.shape[2]))
    candidates: List[ShortcutCandidate] = []
    for c in (stats.counts >= max(min_images, 2)).nonzero().flatten().tolist():
        rows = (labels == c).nonzero().flatten()
        candidates.append(_candidate(context, c, rows, -1, stats))
        if clusters < 2 or rows.numel() < 2 * min_images:
            continue
        assign = cosine_kmeans(p[rows], clusters)
        for cluster in range(int(assign.max()) + 1):
            members = rows[assign == cluster]
            if members.numel() >= max(min_images, min_cluster_share * rows.numel()) and members.numel() < rows.numel():
                candidates.append(_candidate(context, c, members, cluster, stats))
    candidates.sort(key=lambda cand: -cand.score)
    return ShortcutFindings(stats, candidates)
