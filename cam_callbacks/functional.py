"""The public functional API on any classifier: ``explain`` (maps), ``faithfulness`` and
``perturbation_scores`` (their scores).

Each takes one ``ExplainOptions`` (``options=``), or the same fields as keyword
arguments, and hands it to the engine. Torch only: nothing here imports Lightning.
"""

from __future__ import annotations

import difflib
import warnings
from dataclasses import replace
from itertools import chain
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union, overload

import torch
from torch import Tensor, nn
from typing_extensions import Literal, TypedDict, Unpack

from cam_callbacks.capture.layers import LayersLike, resolve_layers
from cam_callbacks.capture.layouts import ReshapeLike
from cam_callbacks.engine.compute import compute_explanations, compute_faithfulness
from cam_callbacks.engine.curves import CurveSettings, compute_perturbation_scores
from cam_callbacks.engine.finite import FiniteRows, explain_finite_rows, nonfinite_images
from cam_callbacks.engine.options import ExplainOptions
from cam_callbacks.engine.passes import model_device
from cam_callbacks.engine.result import ScoredExplanation
from cam_callbacks.methods.registry import get_method
from cam_callbacks.metrics.faithfulness import FAITHFULNESS_METRICS
from cam_callbacks.metrics.perturbation_curves import ROAD_PERCENTILES, Baseline
from cam_callbacks.utils.outputs import OutputTransform
from cam_callbacks.utils.targets import TargetsLike, as_targets, expand_multilabel
from cam_callbacks.utils.types import Probability, Reduction, Smooth


class ExplainKwargs(TypedDict, total=False):
    """The keyword shortcut for ``ExplainOptions`` of ``explain``, ``faithfulness`` and
    ``perturbation_scores``: the same fields, except that ``method_options`` holds the options of the one method."""

    batch_size: int
    method_options: Optional[Mapping[str, Any]]
    reshape: ReshapeLike
    tail: Optional[Callable[[Tensor], Tensor]]
    smooth: Optional[Smooth]
    smooth_samples: int
    smooth_sigma: float
    smooth_scales: Sequence[float]
    seed: int
    perturbation_batch: Optional[int]
    probability: Optional[Probability]
    output_transform: OutputTransform
    precision: str


def check_images(images: object) -> Tensor:
    """Validate an image batch: a floating ``(N, C, H, W)`` tensor with ``N >= 1``."""
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a torch.Tensor of shape (N, C, H, W), got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(f"images must have shape (N, C, H, W), got shape {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError("images is empty (N == 0)")
    if not images.is_floating_point():
        raise TypeError(f"images must be a floating tensor (normalised as the model expects), got dtype {images.dtype}")
    if images.is_meta:
        raise ValueError("images are on the meta device (shapes without values); give real images")
    return images


def _check_materialised(model: nn.Module) -> None:
    """A ValueError for a model whose parameters or buffers are on the meta device (no values to compute with)."""
    meta = next((name for name, t in chain(model.named_parameters(), model.named_buffers()) if t.is_meta), None)
    if meta is not None:
        raise ValueError(
            f"model's parameters are on the meta device ({meta!r} among them: shapes without values); materialise the "
            "weights first, e.g. model.to_empty(device='cpu') then model.load_state_dict(...), or build the model outside "
            "`with torch.device('meta')`"
        )


def _options(method: str, options: Optional[ExplainOptions], kwargs: Mapping[str, Any]) -> Tuple[ExplainOptions, Optional[Probability]]:
    """One ``ExplainOptions`` from ``options=`` or the keyword shortcut, and the probability asked for (None: the
    targets decide, later)."""
    if options is not None:
        if kwargs:
            raise TypeError(
                f"give the explain settings either as options=ExplainOptions(...) or as keyword arguments, not both (got options= and {sorted(kwargs)})"
            )
        if not isinstance(options, ExplainOptions):
            raise TypeError(f"options must be a cam_callbacks.ExplainOptions, got {type(options).__name__}")
        return options, (options.probability if options.probability != "softmax" else None)
    valid = ExplainKwargs.__annotations__
    for name in kwargs:
        if name not in valid:
            close = difflib.get_close_matches(name, list(valid), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise TypeError(f"unexpected keyword argument {name!r}{hint} Valid options: {sorted(valid)}")
    given = dict(kwargs)
    method_options = given.pop("method_options", None) or {}
    probability = given.pop("probability", None)
    if "smooth_scales" in given:
        given["smooth_scales"] = tuple(given["smooth_scales"])
    return ExplainOptions(method_options={method: method_options}, **given), probability


def _prepare(
    model: nn.Module,
    images: Tensor,
    method: str,
    target_layer: LayersLike,
    targets: TargetsLike,
    options: ExplainOptions,
    probability: Optional[Probability],
) -> Tuple[List[Tuple[str, nn.Module]], Optional[Tensor], ExplainOptions]:
    """Checks, target layers as ``(name, module)`` pairs, targets on the model's device, the options' probability
    and multi-hot width."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_images(images)
    _check_materialised(model)
    finite = ~nonfinite_images(images)
    if not bool(finite.any()):
        raise ValueError(f"images: all {images.shape[0]} images hold NaN or inf values; there is nothing to explain")
    device = model_device(model, images.device)
    target_tensor = as_targets(targets, images.shape[0], device)
    multi_hot = target_tensor is not None and target_tensor.dim() == 2
    if probability is None:  # sigmoid for multi-hot targets (multi-label models), softmax otherwise
        probability = "sigmoid" if multi_hot else "softmax"
    target_classes = target_tensor.shape[1] if target_tensor is not None and multi_hot else None
    options = replace(options, probability=probability, target_classes=target_classes)
    if not get_method(method).uses_layer and isinstance(target_layer, str) and target_layer == "auto":
        # saliency and guided backprop need no layer: no search (it costs a forward pass and fails on models without one)
        return [("input", model)], target_tensor, options
    first = int(finite.nonzero()[0, 0])  # the layer search runs the model on an image it can explain
    with torch.inference_mode(False):
        example = images[first : first + 1].to(device).clone()
        layers = resolve_layers(model, target_layer, example, options.reshape)
    return layers, target_tensor, options


def _warn_left_out(rows: FiniteRows, image_index: Optional[Tensor], n: int, consequence: str) -> None:
    """The UserWarning on the images left out (``image_index``: the image of each row, None when rows are images)."""
    if bool(rows.kept.all()):
        return
    masks = []
    for rows_mask in (rows.nonfinite_input, rows.nonfinite_output):
        images_mask = torch.zeros(n, dtype=torch.bool)
        images_mask[rows_mask.cpu() if image_index is None else image_index.cpu()[rows_mask.cpu()]] = True
        masks.append(images_mask)
    left_out = (masks[0] | masks[1]).nonzero().flatten().tolist()
    shown = ", ".join(str(i) for i in left_out[:10]) + (", ..." if len(left_out) > 10 else "")
    counts = [int(mask.sum()) for mask in masks]
    reasons = [f"{counts[0]} hold{'s' if counts[0] == 1 else ''} NaN or inf"] if counts[0] else []
    reasons += [f"for {counts[1]} the model's logits, maps or scores are NaN or inf"] if counts[1] else []
    warnings.warn(
        f"cam_callbacks: {len(left_out)} of {n} images are not finite and are left out ({'; '.join(reasons)}): {consequence}; images [{shown}]",
        UserWarning,
        stacklevel=3,
    )


def explain(
    model: nn.Module,
    images: Tensor,
    method: str = "gradcam",
    target_layer: LayersLike = "auto",
    targets: TargetsLike = None,
    options: Optional[ExplainOptions] = None,
    **fields: Unpack[ExplainKwargs],
) -> Tensor:
    """Class activation maps of ``images`` for ``model``.

    Args:
        model: A classifier returning ``(N, num_classes)`` logits (or an output holding them: see ``output_transform``).
        images: ``(N, C, H, W)`` float tensor, exactly as the model receives it (normalised).
        method: One of ``available_methods``.
        target_layer: Dotted module name, a module of ``model``, or ``"auto"`` (the last module
            with a 4-D output larger than 1x1; the choice is logged on the ``cam_callbacks`` logger);
            or a list of them, whose maps are fused LayerCAM-style (``fuse_layer_maps``).
            Saliency and guided backprop do not use it.
        targets: None for the top-1 prediction, an int for one class for all images, ``N`` class indices
            (a sequence, an ``(N,)`` tensor or an integer ``(N, 1)`` column), or an ``(N, C)`` multi-hot
            bool/0-1 tensor with one column per class of the model (multi-label models; a bool or float
            ``(N, 1)`` tensor is multi-hot, for a 1-output model).
        options: How maps are computed: a ``ExplainOptions`` (batch size, method options, token
            layout, smoothing, output transform, ...). None: the defaults, or the keyword arguments below.
        **fields: A shortcut for ``options``: the fields of ``ExplainOptions`` as keyword
            arguments (``batch_size=8``, ``smooth="noise"``, ``output_transform="logits"``, ...), except that
            ``method_options`` holds the options of ``method`` alone (e.g. ``{"gaussian": True}`` for
            ``"reciprocam"``), and ``probability`` (``"softmax"`` or ``"sigmoid"``) overrides the default, which is
            sigmoid for multi-hot ``targets`` and softmax otherwise.

    Returns:
        ``(N, H, W)`` float32 maps in [0, 1] at the images' size, on the images' device; with multi-hot
        ``targets`` ``(N, C, H, W)``, one map per positive label (zeros for negative labels).

    Images that cannot be explained get all-NaN maps, never numbers: those holding NaN or inf, and
    those whose logits or map come out NaN or inf (a model that overflows). A UserWarning says how
    many images of how many were left out; a ValueError is raised when none can be explained. NaN,
    not zeros, because an all-zero map is also a real map (a constant one) and would pass unnoticed;
    NaN also keeps such images out of anything computed from the maps. The other images' maps are
    exactly those of a call on them alone.

    The model is left as found: module modes, hooks, ``param.grad`` and ``requires_grad``. Works
    under ``torch.no_grad()`` and ``torch.inference_mode()``.

    Example::

        >>> import torchvision
        >>> net = torchvision.models.resnet18(num_classes=3)
        >>> maps = explain(net, torch.randn(2, 3, 64, 64), method="gradcam", target_layer="layer4")
        >>> maps.shape
        torch.Size([2, 64, 64])
        >>> explain(net, torch.randn(2, 3, 64, 64), method="reciprocam", target_layer="layer4",
        ...         method_options={"gaussian": True}).shape
        torch.Size([2, 64, 64])
    """
    built, probability = _options(method, options, fields)
    layers, target_tensor, built = _prepare(model, images, method, target_layer, targets, built, probability)

    def run(x: Tensor, t: Optional[Tensor]) -> ScoredExplanation:
        return ScoredExplanation(compute_explanations(model, x, [method], layers, t, built), {})

    consequence = "their maps are NaN"
    if target_tensor is None or target_tensor.dim() == 1:
        rows = explain_finite_rows(run, images, target_tensor)
        _warn_left_out(rows, None, images.shape[0], consequence)
        return rows.scatter(rows.result.explanation.maps[method]).to(images.device)
    expanded, labels, image_index = expand_multilabel(images, target_tensor)
    rows = explain_finite_rows(run, expanded, labels, "(image, label) pairs")
    _warn_left_out(rows, image_index, images.shape[0], consequence)
    maps = torch.zeros((images.shape[0], target_tensor.shape[1], *images.shape[-2:]), device=images.device)
    maps[image_index.to(images.device), labels.to(images.device)] = rows.scatter(rows.result.explanation.maps[method]).to(images.device)
    return maps


@overload
def faithfulness(
    model: nn.Module,
    images: Tensor,
    method: str = ...,
    target_layer: LayersLike = ...,
    targets: TargetsLike = ...,
    reduction: Literal["mean"] = ...,
    options: Optional[ExplainOptions] = ...,
    **fields: Unpack[ExplainKwargs],
) -> Dict[str, float]: ...
@overload
def faithfulness(
    model: nn.Module,
    images: Tensor,
    method: str = ...,
    target_layer: LayersLike = ...,
    targets: TargetsLike = ...,
    *,
    reduction: Literal["none"],
    options: Optional[ExplainOptions] = ...,
    **fields: Unpack[ExplainKwargs],
) -> Dict[str, Tensor]: ...
def faithfulness(
    model: nn.Module,
    images: Tensor,
    method: str = "gradcam",
    target_layer: LayersLike = "auto",
    targets: TargetsLike = None,
    reduction: Reduction = "mean",
    options: Optional[ExplainOptions] = None,
    **fields: Unpack[ExplainKwargs],
) -> Union[Dict[str, float], Dict[str, Tensor]]:
    """Faithfulness of ``method``'s maps: Average Drop, Increase in Confidence, Coherency, Complexity, ADCC.

    Args:
        model, images, method, target_layer, targets: As in ``explain``.
        reduction: ``"mean"`` for Python floats averaged over the images, ``"none"`` for ``(N,)``
            tensors of per-image values. With multi-hot ``targets``, one value per positive label:
            ``"none"`` gives ``(N, C)`` tensors (NaN where the label is negative), ``"mean"`` averages them.
        options, fields: As in ``explain``.

    Returns:
        Dict with keys ``average_drop``, ``increase_in_confidence``, ``coherency``, ``complexity``,
        ``adcc``; values are fractions in [0, 1] (an ADCC of 0.81; the literature often prints 81.38 for 0.8138).
        ADCC says how well the maps explain *the model*, not whether the model is right: the faithful map of a
        model that learned a shortcut sits on the shortcut, and can score higher than a clean model's.
        ARCC (ADCC with ROAD in place of Average Drop) needs ROAD's perturbation passes, so it is
        ``perturbation_scores``'s (``metrics=["arcc"]``).

    Images that cannot be explained (as in ``explain``: NaN or inf in the image, or in the model's
    logits or maps, here also on the explanation image) get NaN per-image values, and ``"mean"``
    leaves them out (a NaN-skipping mean over the others, never zeros averaged in). A UserWarning says
    how many images of how many were left out; a ValueError is raised when none can be explained. The
    other images' values are exactly those of a call on them alone.

    Example::

        >>> import torchvision
        >>> net = torchvision.models.resnet18(num_classes=3)
        >>> scores = faithfulness(net, torch.randn(2, 3, 64, 64), target_layer="layer4")
        >>> sorted(scores)
        ['adcc', 'average_drop', 'coherency', 'complexity', 'increase_in_confidence']
    """
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction={reduction!r} is not valid; choose from ['mean', 'none']")
    built, probability = _options(method, options, fields)
    layers, target_tensor, built = _prepare(model, images, method, target_layer, targets, built, probability)

    def run(x: Tensor, t: Optional[Tensor]) -> ScoredExplanation:
        return compute_faithfulness(model, x, [method], layers, t, built)

    consequence = "their per-image scores are NaN and the means leave them out"
    if target_tensor is None or target_tensor.dim() == 1:
        rows = explain_finite_rows(run, images, target_tensor)
        _warn_left_out(rows, None, images.shape[0], consequence)
        per_image = {metric: rows.scatter(rows.result.scores[method][metric]) for metric in FAITHFULNESS_METRICS}
    else:
        expanded, labels, image_index = expand_multilabel(images, target_tensor)
        rows = explain_finite_rows(run, expanded, labels, "(image, label) pairs")
        _warn_left_out(rows, image_index, images.shape[0], consequence)
        per_image = {}
        for metric in FAITHFULNESS_METRICS:
            grid = torch.full(tuple(target_tensor.shape), float("nan"), dtype=torch.float64, device=image_index.device)
            grid[image_index, labels] = rows.scatter(rows.result.scores[method][metric]).double().to(grid.device)
            per_image[metric] = grid
    if reduction == "none":
        return {metric: value.to(images.device) for metric, value in per_image.items()}
    return {metric: float(value.double().nanmean()) for metric, value in per_image.items()}


def perturbation_scores(
    model: nn.Module,
    images: Tensor,
    method: str = "gradcam",
    target_layer: LayersLike = "auto",
    targets: TargetsLike = None,
    metrics: Sequence[str] = ("deletion_auc", "insertion_auc", "road"),
    reduction: Reduction = "mean",
    steps: int = 20,
    baseline: Baseline = "zero",
    percentiles: Sequence[float] = ROAD_PERCENTILES,
    road_noise: float = 0.01,
    options: Optional[ExplainOptions] = None,
    **fields: Unpack[ExplainKwargs],
) -> Union[Dict[str, float], Dict[str, Tensor]]:
    """Deletion/insertion AUC (RISE) and ROAD of ``method``'s maps (``cam_callbacks.metrics.perturbation_curves``).

    Args:
        model, images, method, target_layer: As in ``explain``.
        targets: As in ``explain``, class indices only (one class per image; not multi-hot).
        metrics: Any of ``"deletion_auc"`` (lower is better), ``"insertion_auc"`` (higher is better), ``"road_morf"``,
            ``"road_lerf"``, ``"road"`` (``(lerf - morf) / 2``, higher is better) and ``"arcc"`` (the harmonic mean of
            Coherency, 1 - Complexity and ``clip(2 * road, 0, 1)`` with ROAD at the percentiles 20, 40, 60, 80, as
            pytorch-grad-cam's ``ARCC``; a fraction, higher is better; ``arcc``).
        reduction: ``"mean"`` (Python floats, NaN-skipping mean over the images) or ``"none"`` (``(N,)`` tensors).
        steps: Deletion/insertion intervals (torchcam's default 20: ``ceil(H*W / steps)`` pixels each).
        baseline: What deletion puts in and insertion starts from: ``"zero"``, ``"blur"`` or a tensor.
        percentiles: ROAD's percentiles (pytorch-grad-cam's 10, 20, ..., 90).
        road_noise: Standard deviation of ROAD's imputation noise (seeded with ``seed``).
        options, fields: As in ``explain``.

    Returns:
        Dict metric -> value, as fractions (AUCs of target probabilities in [0, 1]; ROAD in [-1, 1]; ARCC in [0, 1]).
        Images that cannot be explained get NaN and are left out of the means (as in ``faithfulness``).

    Cost, in forward passes of the whole model per image (batched, memory-bounded), besides the maps themselves:
    deletion and insertion ``2 * steps`` (about; the image, the baseline and two rows per interior step); ROAD
    ``1 + 2 * len(percentiles)`` plus as many linear imputations (conjugate-gradient solves); ARCC ROAD's 9 at its
    percentiles 20, 40, 60, 80 (shared with ``"road"`` when ``percentiles`` are those) plus one explanation pass of
    ``method`` on the explanation images ``images * map`` (Coherency). The imputations dominate: measured on a CPU
    (resnet18, 8 images of 64 px, Grad-CAM), ARCC took about 15 times as long as ``faithfulness``, and half as
    long as ``"road"`` at its 9 default percentiles.

    Example::

        >>> import torchvision
        >>> net = torchvision.models.resnet18(num_classes=3)
        >>> scores = perturbation_scores(net, torch.randn(2, 3, 64, 64), target_layer="layer4", steps=4, percentiles=[50])
        >>> sorted(scores)
        ['deletion_auc', 'insertion_auc', 'road']
    """
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction={reduction!r} is not valid; choose from ['mean', 'none']")
    settings = CurveSettings(tuple(metrics) if not isinstance(metrics, str) else (metrics,), steps, baseline, tuple(percentiles), road_noise)
    built, probability = _options(method, options, fields)
    layers, target_tensor, built = _prepare(model, images, method, target_layer, targets, built, probability)
    if target_tensor is not None and target_tensor.dim() == 2:
        raise ValueError("perturbation_scores takes one class per image (an int, N indices or an (N,) tensor), not multi-hot targets")

    def run(x: Tensor, t: Optional[Tensor]) -> ScoredExplanation:
        return compute_perturbation_scores(model, x, [method], layers, t, built, settings)

    rows = explain_finite_rows(run, images, target_tensor)
    _warn_left_out(rows, None, images.shape[0], "their per-image scores are NaN and the means leave them out")
    per_image = {metric: rows.scatter(rows.result.scores[method][metric]) for metric in settings.metrics}
    if reduction == "none":
        return {metric: value.to(images.device) for metric, value in per_image.items()}
    return {metric: float(value.double().nanmean()) for metric, value in per_image.items()}
