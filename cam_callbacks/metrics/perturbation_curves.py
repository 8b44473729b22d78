"""Perturbation metrics of maps as pure per-image functions: deletion/insertion AUC (RISE) and ROAD.

Every function takes the images as the model receives them ``(N, C, H, W)``, maps at input resolution ``(N, H, W)``,
target classes ``(N,)`` and a ``model_scorer`` ``(count, build) -> (count, classes)`` logits of the whole model on
rows ``build(start, stop)`` built chunk by chunk (``ModelScorer``: memory-bounded
passes on the model's device). Scores are the target class's probability (``probability="softmax"``, or
``"sigmoid"`` for multi-label models). All images and all steps go through the same batched passes.

- Deletion / insertion (Petsiuk et al. 2018, "RISE: Randomized Input Sampling for Explanation of Black-box Models"),
  with torchcam 0.5.0's ``DeletionInsertionMetric`` conventions: pixels ranked by the map (descending, stable sort,
  shared by the channels); ``steps`` intervals of ``ceil(P / steps)`` pixels, counts ``0, s, 2s, ..., P``; deletion
  replaces the top ``count`` pixels by the baseline, insertion puts them from the image onto the baseline; the AUC
  is ``torch.trapezoid`` of the scores over the fractions ``count / P``. Baseline ``"zero"`` (torchcam's default),
  ``"blur"`` (RISE's insertion: Gaussian blur, kernel 11, sigma 5, zero padding) or a tensor. Lower deletion and
  higher insertion AUC are better.
- ROAD (Rong et al. 2022, "A Consistent and Efficient Evaluation Strategy for Attribution Methods"), with
  pytorch-grad-cam 1.5.7's conventions (``ROADMostRelevantFirst``, ``ROADLeastRelevantFirst``, ``ROADCombined``): at
  percentile ``p`` (default 10, 20, ..., 90), MoRF imputes the pixels whose map value is ``>= quantile(map, p)``,
  LeRF those where ``1 - map >= quantile(1 - map, p)``; the imputation is the noisy linear one (each imputed pixel the
  weighted mean of its 8 neighbours, weights 1/6 sideways and 1/12 diagonally, renormalised at the border; plus
  ``noise`` times standard normal noise); the score is the target probability after imputation minus before,
  averaged over the percentiles. ``road = (lerf - morf) / 2`` (higher is better).

The imputation solves the sparse linear system of the ROAD paper (``scipy.sparse.linalg.spsolve`` there) with
batched Jacobi-preconditioned conjugate gradients in torch (``linear_imputation``): the system is symmetric
positive definite whenever a pixel is known, and the stopping rule (relative residual ``1e-5``) leaves pixel errors of
~1e-4 on 224 px images (measured against spsolve), a hundredth of the default noise.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from cam_callbacks.utils.noise import NoiseRows
from cam_callbacks.utils.targets import probabilities

#: Names of the per-image metrics of ``cam_callbacks.perturbation_scores`` (and ``CAMMonitor(metrics=...)``): the
#: values these functions return, and ARCC (``cam_callbacks.metrics.faithfulness.arcc``), which needs ROAD.
CURVE_METRICS = ("deletion_auc", "insertion_auc", "road_morf", "road_lerf", "road", "arcc")
#: pytorch-grad-cam's default percentiles of ``ROADCombined``.
ROAD_PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)

Scorer = Callable[[int, Callable[[int, int], Tensor]], Tensor]
Baseline = Union[str, Tensor]


def _check(images: Tensor, maps: Tensor, targets: Tensor) -> None:
    if images.dim() != 4 or maps.dim() != 3 or maps.shape != (images.shape[0], *images.shape[-2:]):
        raise ValueError(f"maps must be (N, H, W) at the images' size; got images {tuple(images.shape)}, maps {tuple(maps.shape)}")
    if targets.shape != (images.shape[0],):
        raise ValueError(f"targets must be (N,) class indices, got shape {tuple(targets.shape)}")


def _target_scores(logits: Tensor, targets: Tensor, probability: str) -> Tensor:
    return probabilities(logits.float(), probability).gather(1, targets[:, None].to(logits.device)).squeeze(1)


def curve_counts(num_pixels: int, steps: int) -> List[int]:
    """Pixels perturbed at each point of the curves: ``0, s, 2s, ... < P`` and ``P``, ``s = ceil(P / steps)`` (torchcam).

    Example::

        >>> curve_counts(10, 4)
        [0, 3, 6, 9, 10]
    """
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    step = -(-num_pixels // steps)
    return [*range(0, num_pixels, step), num_pixels]


def baseline_images(images: Tensor, baseline: Baseline = "zero") -> Tensor:
    """What deletion puts in and insertion starts from: ``"zero"``, ``"blur"`` (RISE: Gaussian kernel 11, sigma 5,
    per channel, zero padding) or a tensor broadcast to ``images``."""
    if isinstance(baseline, Tensor):
        return torch.broadcast_to(baseline.to(images), images.shape)
    if baseline == "zero":
        return torch.zeros_like(images)
    if baseline == "blur":
        grid = torch.arange(11, dtype=torch.float64, device=images.device) - 5
        bell = torch.exp(-(grid**2) / (2 * 5.0**2))
        kernel = torch.outer(bell, bell)
        kernel = (kernel / kernel.sum()).to(images.dtype)
        c = images.shape[1]
        return F.conv2d(images, kernel.expand(c, 1, 11, 11), padding=5, groups=c)
    raise ValueError(f"baseline={baseline!r} is not valid; choose from ['zero', 'blur'] or give a tensor")


def deletion_insertion(
    images: Tensor,
    maps: Tensor,
    targets: Tensor,
    model_scorer: Scorer,
    steps: int = 20,
    baseline: Baseline = "zero",
    probability: str = "softmax",
) -> Dict[str, Tensor]:
    """Deletion and insertion curves and their areas, per image.

    Returns:
        ``{"deletion_auc": (N,), "insertion_auc": (N,), "deletion": (N, T), "insertion": (N, T), "fractions": (T,)}``,
        ``T = len(curve_counts(H * W, steps))``. Rows scored: ``N * (2T - 2)`` (the image, the all-baseline image, and
        two per interior point), step-major in memory-bounded passes.
    """
    _check(images, maps, targets)
    n, num_pixels = images.shape[0], maps.shape[1] * maps.shape[2]
    counts = curve_counts(num_pixels, steps)
    points = len(counts)
    order = torch.argsort(maps.flatten(1).float(), dim=1, descending=True, stable=True)
    ranks = torch.argsort(order, dim=1)  # (N, P): 0 for the most relevant pixel
    flat_images = images.flatten(2)
    flat_base = baseline_images(images, baseline).flatten(2)
    # Jobs per image: (count, keep the ranked pixels from the image?) -- the image itself, the all-baseline image,
    # then deletion and insertion at every interior count.
    jobs = [(0, False), (num_pixels, False)] + [(c, keep) for c in counts[1:-1] for keep in (False, True)]
    job_counts = torch.tensor([c for c, _ in jobs], device=images.device)
    job_insert = torch.tensor([keep for _, keep in jobs], device=images.device)

    def build(start: int, stop: int) -> Tensor:
        rows = torch.arange(start, stop, device=images.device)
        image, job = rows % n, rows // n
        ranked = ranks[image] < job_counts[job, None]  # (r, P) the pixels this row perturbs
        from_image = torch.where(job_insert[job, None], ranked, ~ranked)
        out = torch.where(from_image[:, None], flat_images[image], flat_base[image])
        return out.reshape(-1, *images.shape[1:])

    scores = _target_scores(model_scorer(n * len(jobs), build), targets.repeat(len(jobs)), probability).reshape(len(jobs), n)
    deletion = torch.empty(n, points, dtype=scores.dtype, device=scores.device)
    insertion = torch.empty_like(deletion)
    deletion[:, 0], insertion[:, -1] = scores[0], scores[0]
    deletion[:, -1], insertion[:, 0] = scores[1], scores[1]
    if points > 2:
        deletion[:, 1:-1] = scores[2::2].T
        insertion[:, 1:-1] = scores[3::2].T
    fractions = torch.tensor(counts, dtype=torch.float32, device=scores.device) / num_pixels
    return {
        "deletion_auc": torch.trapezoid(deletion, fractions, dim=1),
        "insertion_auc": torch.trapezoid(insertion, fractions, dim=1),
        "deletion": deletion,
        "insertion": insertion,
        "fractions": fractions,
    }


def _neighbour_sum(t: Tensor) -> Tensor:
    """``sum_j w_j t_j`` over the 8 neighbours (1/6 sideways, 1/12 diagonally, 0 outside): ``(1 2 1) x (1 2 1) - 4 delta``, / 12."""
    padded = F.pad(t, (1, 1, 1, 1))
    rows = padded[..., :-2, :] + 2 * padded[..., 1:-1, :] + padded[..., 2:, :]
    both = rows[..., :, :-2] + 2 * rows[..., :, 1:-1] + rows[..., :, 2:]
    return (both - 4 * t) / 12


def linear_imputation(images: Tensor, known: Tensor, tol: float = 1e-5, max_iter: int = 2000) -> Tensor:
    """ROAD's linear imputation (no noise): each unknown pixel the weighted mean of its in-image 8 neighbours.

    Solves ``D x_i - sum_j w_ij x_j = 0`` for the unknown pixels (``D`` the sum of the in-image neighbours' weights,
    known neighbours on the right-hand side) per channel, for all images at once, with Jacobi-preconditioned
    conjugate gradients until ``|r| <= tol |b|`` for every system (the matrix is symmetric, and positive definite when
    the image has a known pixel). An image without any known pixel is filled with zeros. Half-precision images are
    solved in float32.

    Args:
        images: ``(B, C, H, W)``.
        known: ``(B, H, W)`` bool, True where the pixel is kept.

    Example::

        >>> x = torch.tensor([[[[1.0, 0.0, 3.0]]]])
        >>> linear_imputation(x, torch.tensor([[[True, False, True]]]))  # the mean of its two neighbours
        tensor([[[[1., 2., 3.]]]])
    """
    b_, c, h, w = images.shape
    values = images.reshape(b_ * c, h, w)
    if values.dtype in (torch.float16, torch.bfloat16):  # half precision cannot reach the tolerance: solve in float32
        return linear_imputation(images.float(), known, tol, max_iter).to(images.dtype)
    unknown = (~known).to(values.dtype).repeat_interleave(c, dim=0)
    kept = values * (1 - unknown)
    degree = _neighbour_sum(torch.ones_like(values[:1]))

    def apply(x: Tensor) -> Tensor:
        return unknown * (degree * x - _neighbour_sum(unknown * x))

    rhs = unknown * _neighbour_sum(kept)
    x = torch.zeros_like(values)
    residual = rhs.clone()
    z = residual / degree
    direction = z.clone()
    rz = (residual * z).sum((1, 2))
    limit = tol * rhs.norm(dim=(1, 2))
    active = torch.ones(values.shape[0], dtype=torch.bool, device=values.device)
    for _ in range(max_iter):
        active &= residual.norm(dim=(1, 2)) > limit
        if not bool(active.any()):
            break
        product = apply(direction)
        curvature = (direction * product).sum((1, 2))
        step = torch.where(active & (curvature > 0), rz / torch.where(curvature > 0, curvature, torch.ones_like(curvature)), torch.zeros_like(rz))
        x = x + step[:, None, None] * direction
        residual = residual - step[:, None, None] * product
        z = residual / degree
        rz_next = (residual * z).sum((1, 2))
        beta = torch.where(active & (rz > 0), rz_next / torch.where(rz > 0, rz, torch.ones_like(rz)), torch.zeros_like(rz))
        rz = rz_next
        direction = z + beta[:, None, None] * direction
    return (kept + unknown * x).reshape(b_, c, h, w)


def road_known_masks(maps: Tensor, percentiles: Sequence[float], most_relevant_first: bool) -> Tensor:
    """``(len(percentiles), N, H, W)`` bool, True where ROAD keeps the pixel: ``v < quantile(v, p / 100)`` with
    ``v = map`` (MoRF) or ``v = 1 - map`` (LeRF), the quantile linearly interpolated as ``np.percentile``."""
    values = maps.flatten(1).float()
    if not most_relevant_first:
        values = 1 - values
    values = values.double()  # the quantile's position p * (n - 1) in float64, as np.percentile (float32 can miss by a pixel)
    q = torch.tensor([float(p) / 100 for p in percentiles], dtype=torch.float64, device=values.device)
    thresholds = torch.quantile(values, q, dim=1)  # (P, N)
    return (values[None] < thresholds[:, :, None]).reshape(len(percentiles), *maps.shape)


def road(
    images: Tensor,
    maps: Tensor,
    targets: Tensor,
    model_scorer: Scorer,
    percentiles: Sequence[float] = ROAD_PERCENTILES,
    noise: float = 0.01,
    seed: int = 0,
    probability: str = "softmax",
) -> Dict[str, Tensor]:
    """ROAD per image: ``{"road_morf": (N,), "road_lerf": (N,), "road": (N,)}`` (see the module docstring).

    Rows scored: ``N`` (the images) plus ``2 * len(percentiles) * N`` imputed images, each imputed inside the pass
    that scores it (memory-bounded). The noise comes from a private generator on the images' device seeded with
    ``seed`` (the global RNG is untouched), in row order, the same however the rows are chunked
    (``NoiseRows``).
    """
    _check(images, maps, targets)
    if not percentiles or any(not 0 <= float(p) <= 100 for p in percentiles):
        raise ValueError(f"percentiles must be a non-empty sequence of numbers in [0, 100], got {percentiles!r}")
    if not float(noise) >= 0:
        raise ValueError(f"noise must be >= 0, got {noise!r}")
    n, levels = images.shape[0], len(percentiles)
    known = torch.cat([road_known_masks(maps, percentiles, True), road_known_masks(maps, percentiles, False)]).flatten(0, 1)
    draws = NoiseRows(tuple(images.shape[1:]), int(seed), images.device, images.dtype)

    def build(start: int, stop: int) -> Tensor:
        first = min(max(start, n), stop)  # rows [start, first) are the images themselves, [first, stop) imputed copies
        parts = [images[start:first]] if start < first else []
        if stop > first:
            rows = torch.arange(first - n, stop - n, device=images.device)
            imputed = linear_imputation(images[rows % n], known[rows])
            drawn = draws.take(stop - first)
            parts.append(imputed + float(noise) * drawn * (~known[rows])[:, None].to(images.dtype))
        return torch.cat(parts)

    all_targets = targets.repeat(1 + 2 * levels)
    scores = _target_scores(model_scorer(n * (1 + 2 * levels), build), all_targets, probability)
    change = (scores[n:] - scores[:n].repeat(2 * levels)).reshape(2, levels, n).mean(1)
    morf, lerf = change[0], change[1]
    return {"road_morf": morf, "road_lerf": lerf, "road": (lerf - morf) / 2}
