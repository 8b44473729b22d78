"""Explaining the probe set with the live model: the rows to explain, the dry run, precision, DDP and bad images.

``ProbeRunner`` holds what one ``CAMMonitor`` needs to compute maps and
scores: its probe set, the resolved target layers, the ``ExplainOptions``
and the images skipped in the last run. It reads the trainer by duck typing (strategy, precision plugin,
ranks) and imports no Lightning.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import replace
from typing import Any, Callable, ContextManager, Dict, List, Optional, Sequence, Set, Tuple

import torch
from torch import Tensor, nn

from cam_callbacks.callbacks.distributed import gather_rows, gather_tensor
from cam_callbacks.callbacks.errors import ErrorReporter
from cam_callbacks.callbacks.probe import Probe
from cam_callbacks.callbacks.skipping import explain_skipping_bad_images
from cam_callbacks.capture.layers import LayersLike, resolve_layers, resolve_named_layer
from cam_callbacks.capture.state import eager, preserved_model_state, preserved_rng_state
from cam_callbacks.engine.compute import compute_explanations, compute_faithfulness
from cam_callbacks.engine.curves import CurveSettings, curve_scores
from cam_callbacks.engine.finite import nonfinite_images
from cam_callbacks.engine.options import ExplainOptions
from cam_callbacks.engine.passes import model_device
from cam_callbacks.engine.result import Explanation, ProbeView, ScoredExplanation
from cam_callbacks.monitor.budget import CostBudget
from cam_callbacks.utils.outputs import OutputTransform, describe_output, logits_of
from cam_callbacks.utils.targets import expand_multilabel, first_out_of_range

#: ``(model, precision_plugin, rows, methods) -> (explanation, scores)``, as ``ProbeRunner.compute``.
Compute = Callable[[nn.Module, Optional[Any], Optional[Tensor], Optional[Sequence[str]]], ScoredExplanation]


def _check_model_output(output: Any, probe: Probe, output_transform: OutputTransform, n: int) -> None:
    """The dry run's logits (taken by ``output_transform``) are ``(N, num_classes)`` and the probe's labels fit them."""
    try:
        logits = logits_of(output, output_transform, n)
    except ValueError as error:
        raise ValueError(f"CAMMonitor: {error}") from None
    except Exception as error:  # a callable output_transform that raises: said with the argument's name
        raise ValueError(
            f"CAMMonitor: explain_options=ExplainOptions(output_transform={output_transform!r}) raised {type(error).__name__}: {error} "
            f"on the model's output ({describe_output(output)}); it must take the logits (N, num_classes) from what the model returns"
        ) from error
    num_classes = logits.shape[1]
    if probe.multilabel and probe.labels is not None and probe.labels.shape[1] != num_classes:
        raise ValueError(
            f"CAMMonitor: the probe's multi-hot labels have shape {tuple(probe.labels.shape)}: {probe.labels.shape[1]} "
            f"classes, but the model returns {num_classes} logits per image; give (N, {num_classes}) multi-hot labels, "
            "or (N,) class indices"
        )
    index = None if probe.labels is None or probe.multilabel else first_out_of_range(probe.labels, num_classes)
    if index is not None:
        assert probe.labels is not None
        single = " (for a single sigmoid output give (N, 1) float or bool 0/1 labels)" if num_classes == 1 else ""
        raise ValueError(
            f"CAMMonitor: probe label {int(probe.labels[index])} (probe image {index}) is out of range: the model has "
            f"{num_classes} classes, valid class indices are 0..{num_classes - 1}{single}"
        )


def _check_class_names(names: Optional[Sequence[str]], logits: Tensor) -> None:
    """``ImageStyle(class_names=...)`` has one name per model output (checked at setup, never in the middle of a fit)."""
    if names is None or logits.dim() != 2:
        return
    if len(names) != logits.shape[1]:
        raise ValueError(
            f"CAMMonitor: style=ImageStyle(class_names=...) has {len(names)} names but the model has {logits.shape[1]} outputs; "
            f"give one name per class (got {list(names)[:8]}{' ...' if len(names) > 8 else ''})"
        )


def _check_materialised(model: nn.Module) -> None:
    """Refuse a model whose parameters or buffers are on the meta device (shapes only, no values)."""
    meta = [name for name, tensor in (*model.named_parameters(), *model.named_buffers()) if tensor.is_meta]
    if meta:
        raise ValueError(
            f"CAMMonitor: the model's parameters are on the meta device ({len(meta)} parameters and buffers, e.g. {meta[0]!r}, "
            "as when it is built under `with torch.device('meta')`): they have shapes but no values, so neither the model "
            "nor the callback can run it. Materialise it (e.g. model.to_empty(device='cpu') and load the weights) before "
            "fitting; the callback's setup runs before the "
            "LightningModule's setup and configure_model"
        )


def _check_display(name: str, values: Optional[Sequence[float]], images: Tensor) -> None:
    """``values`` (``ImageStyle(mean=...)`` or ``std=``) has one value per channel of the probe images, or one for all."""
    channels = images.shape[1]
    if values is not None and len(values) not in (1, channels):
        raise ValueError(
            f"CAMMonitor: style=ImageStyle({name}={list(values)}) has {len(values)} values but the probe images have {channels} "
            f"channel(s) (shape {tuple(images.shape[1:])} per image); give {channels} numbers, one per channel, or one number "
            "for all channels"
        )


#: Share of the un-normalised probe pixels outside [0, 1] above which the display ``mean``/``std`` are taken to be wrong.
BLANK_DISPLAY_SHARE = 0.9


def _display_range_problem(mean: Optional[Sequence[float]], std: Optional[Sequence[float]], images: Tensor) -> Optional[str]:
    """A warning when ``ImageStyle(mean=..., std=...)`` turns (almost) every probe pixel into a value outside [0, 1]: the
    originals in the grids are then clipped to blank (white or black) images. None when the display is fine.

    Example::

        >>> images = torch.rand(2, 3, 4, 4) * 2 - 1  # normalised images
        >>> _display_range_problem([0.5, 0.5, 0.5], [0.5, 0.5, 0.5], images) is None
        True
        >>> print(_display_range_problem([123.7, 116.3, 103.5], [58.4, 57.1, 57.4], images))  # doctest: +ELLIPSIS
        CAMMonitor: style=ImageStyle(mean=[123.7, 116.3, 103.5], std=[58.4, 57.1, 57.4]) turns 100% of the probe pixels into ...
    """
    if mean is None or std is None:
        return None
    x = images.detach().float()
    x = x[torch.isfinite(x).flatten(1).all(dim=1)]
    if x.numel() == 0:
        return None
    m = torch.as_tensor(list(mean), dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.as_tensor(list(std), dtype=x.dtype).view(1, -1, 1, 1)
    shown = x * s + m
    outside = float(((shown < 0) | (shown > 1)).float().mean())
    if outside <= BLANK_DISPLAY_SHARE:
        return None
    given = f"style=ImageStyle(mean={list(mean)}, std={list(std)})"
    found = (
        f"CAMMonitor: {given} turns {outside:.0%} of the probe pixels into values outside [0, 1] (from {float(shown.min()):.4g} to "
        f"{float(shown.max()):.4g}), so the originals in every grid are clipped to blank images"
    )
    if max(mean) > 1 or max(std) > 1:
        scaled = f"mean={[round(v / 255, 3) for v in mean]}, std={[round(v / 255, 3) for v in std]}"
        return f"{found}. mean and std look like 0-255 units for images normalised from [0, 1]: divide them by 255 ({scaled})"
    return f"{found}. Give the mean and std the images were normalised with (x_normalised = (x - mean) / std, x in [0, 1])"


def _named_tail(tail: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """``tail`` for the dry run: an error it raises is said with the argument's name (the user's tail is not changed)."""

    def call(activations: Tensor) -> Tensor:
        try:
            return tail(activations)
        except Exception as error:
            raise ValueError(
                f"CAMMonitor: explain_options=ExplainOptions(tail={getattr(tail, '__name__', type(tail).__name__)}) raised "
                f"{type(error).__name__}: {error} on the target layer's activations of shape {tuple(activations.shape)}; it must "
                "compute the logits (N, num_classes) from them"
            ) from error

    return call


class ProbeRunner:
    """Maps and faithfulness scores of one monitor's probe set.

    Args:
        methods: Method names.
        target_layer: As ``CAMMonitor(target_layer=...)``.
        explain_labels: Explain the probe's labels when it has them (else the top-1 predictions).
        options: How maps are computed.
        faithfulness: Also compute the faithfulness scores.
        warn: Called with a key and a message for warnings given once (e.g. a probe without labels).
        display_mean: ``ImageStyle(mean=...)``: checked against the probe images' channels by ``prepare`` (None: no check).
        display_std: ``ImageStyle(std=...)``, likewise.
        curves: The curve metrics of ``CAMMonitor(metrics=...)``, added to each method's scores (None: off).
        class_names: ``ImageStyle(class_names=...)``: checked against the model's outputs by ``prepare``.
    """

    def __init__(
        self,
        methods: Sequence[str],
        target_layer: LayersLike,
        explain_labels: bool,
        options: ExplainOptions,
        faithfulness: bool,
        warn: Callable[[str, str], None],
        *,
        display_mean: Optional[Sequence[float]] = None,
        display_std: Optional[Sequence[float]] = None,
        curves: Optional[CurveSettings] = None,
        class_names: Optional[Sequence[str]] = None,
    ) -> None:
        self.methods = list(methods)
        self.target_layer = target_layer
        self.explain_labels = explain_labels
        self.options = options
        self.faithfulness = faithfulness
        self.curves = curves
        self.warn = warn
        #: the images' per-channel mean and std for display (``CAMMonitor(mean=..., std=...)``), checked by ``prepare``
        self.display_mean: Optional[Sequence[float]] = display_mean
        self.display_std: Optional[Sequence[float]] = display_std
        self.class_names = class_names
        self.probe: Optional[Probe] = None
        self.layer_names: Optional[List[str]] = None
        #: what ``target_layer="auto"`` chose (layer and layout, in a sentence) at the last ``prepare``; None when named
        self.layer_choice: Optional[str] = None
        #: probe rows skipped in the last run -> why (the model raised, or non-finite logits or maps)
        self.skipped: Dict[int, str] = {}
        self._view_cache: Optional[Tuple[Probe, ProbeView]] = None
        self._reported: Tuple[int, ...] = ()
        #: methods switched off after they failed during training (see ``compute_contained``)
        self.disabled: Set[str] = set()

    def new_skips_message(self, epoch: int) -> Optional[str]:
        """A warning when the skipped rows differ from those last reported (None otherwise)."""
        rows = tuple(sorted(self.skipped))
        reported, self._reported = self._reported, rows
        if not rows or rows == reported or len(rows) >= len(self.view().images):
            return None  # none, the same as last time, or every row: the run was skipped and that was reported as an error
        details = "; ".join(f"row {row}: {self.skipped[row]}" for row in rows[:8])
        return f"CAMMonitor: {len(rows)} probe image(s) skipped at epoch {epoch} ({details}). The metrics are means over the other images; training goes on."

    def layers(self, model: nn.Module) -> List[Tuple[str, nn.Module]]:
        """The resolved target layers of ``model`` as ``(name, module)`` pairs."""
        assert self.layer_names is not None
        return [(name, resolve_named_layer(model, name)[1]) for name in self.layer_names]

    def _targets(self, probe: Probe) -> Optional[Tensor]:
        if not self.explain_labels:
            return None
        if probe.labels is None:
            self.warn("no-labels", "CAMMonitor: the probe set has no labels; explaining the predicted class instead")
            return None
        return probe.labels

    def view(self, probe: Optional[Probe] = None) -> ProbeView:
        """The rows to explain: one per image, or one per positive label of multi-hot labels.

        Built once per probe set: a run asks for it several times (each cost group, the watch, the images),
        and for multi-hot labels it copies the images of every positive label.
        """
        probe = self.probe if probe is None else probe
        assert probe is not None
        if self._view_cache is not None and self._view_cache[0] is probe:
            return self._view_cache[1]
        targets = self._targets(probe)
        if targets is None or targets.dim() == 1:
            view = ProbeView(probe.images, targets, probe.masks, probe.nuisance, torch.arange(len(probe)), "softmax")
        else:
            images, labels, index = expand_multilabel(probe.images, targets)
            masks = None if probe.masks is None else probe.masks[index]
            nuisance = None if probe.nuisance is None else probe.nuisance[index]
            view = ProbeView(images, labels, masks, nuisance, index, "sigmoid")
        if probe is self.probe:
            self._view_cache = (probe, view)
        return view

    def prepare(self, model: nn.Module) -> List[str]:
        """Resolve the layers and dry-run every method on two probe images, so bad setups fail before training.

        Raises:
            ValueError: A model on the meta device, display ``mean``/``std`` that do not fit the probe images' channels,
                images the model rejects, logits that are not ``(N, num_classes)``, labels that do not fit them, a
                target layer that cannot be found or whose output is not a 4-D map larger than 1x1, or a method that
                cannot run on this model.
        """
        probe = self.probe
        assert probe is not None
        _check_materialised(model)
        _check_display("mean", self.display_mean, probe.images)
        _check_display("std", self.display_std, probe.images)
        blank = _display_range_problem(self.display_mean, self.display_std, probe.images)
        if blank is not None:
            self.warn("display-range", blank)
        rows = self._finite_rows(probe)
        device = model_device(model, probe.images.device)
        with preserved_rng_state(), torch.inference_mode(False):
            example = probe.images[rows].to(device)
            try:
                with torch.no_grad(), preserved_model_state(model), eager():
                    output = model(example)
            except Exception as error:
                raise ValueError(
                    f"CAMMonitor: the model rejects the probe images of shape {tuple(probe.images.shape[1:])} (per image): {type(error).__name__}: {error}"
                ) from error
            _check_model_output(output, probe, self.options.output_transform, example.shape[0])
            _check_class_names(self.class_names, logits_of(output, self.options.output_transform, example.shape[0]))
            choices: List[str] = []
            layers = resolve_layers(model, self.target_layer, example[:1], self.options.reshape, choices)
            self._dry_run(model, probe, layers, rows)
        self.layer_names = [name for name, _ in layers]
        self.layer_choice = "; ".join(choices) or None
        return self.layer_names

    def _finite_rows(self, probe: Probe) -> Tensor:
        """The first two probe images without NaN or inf (the dry run's); all of them non-finite is refused, some warned of."""
        bad = nonfinite_images(probe.images)
        count = int(bad.sum())
        if count == len(probe):
            raise ValueError(
                f"CAMMonitor: all {count} probe images are non-finite (they hold NaN or inf values), so there is nothing to "
                "explain and every run would be skipped; check the validation data and its transforms (e.g. a normalisation "
                "dividing by a zero std), or pass probe= finite images"
            )
        if count:
            shown = ", ".join(str(i) for i in bad.nonzero().flatten()[:10].tolist()) + (", ..." if count > 10 else "")
            message = f"CAMMonitor: {count} of {len(probe)} probe images hold NaN or inf values (images {shown}); they are skipped in every run"
            self.warn("nonfinite-probe", message)
        return (~bad).nonzero().flatten()[:2]

    def _dry_run(self, model: nn.Module, probe: Probe, layers: List[Tuple[str, nn.Module]], rows: Tensor) -> None:
        """Every method on two finite probe images (a bad target layer's error names one of this model that works), then
        once more with the smoothing (``smooth=``, one noisy copy or every scale), whose errors name the smoothing fields."""
        view = self.view(Probe(probe.images[rows], None if probe.labels is None else probe.labels[rows]))
        tail = None if self.options.tail is None else _named_tail(self.options.tail)
        dry_run = replace(self.options, smooth=None, probability=view.probability, tail=tail)
        compute_explanations(model, view.images, self.methods, layers, view.targets, dry_run)
        if self.options.smooth is None:
            return
        smoothed = replace(dry_run, smooth=self.options.smooth, smooth_samples=1)
        try:
            compute_explanations(model, view.images, self.methods, layers, view.targets, smoothed)
        except Exception as error:
            o = self.options
            fields = f"smooth_samples={o.smooth_samples}, smooth_sigma={o.smooth_sigma}, seed={o.seed}"
            given = f"smooth={o.smooth!r}, " + (fields if o.smooth == "noise" else f"smooth_scales={o.smooth_scales}")
            raise ValueError(
                f"CAMMonitor: explain_options=ExplainOptions({given}) fails on the probe images of shape {tuple(view.images.shape[1:])} "
                f"although the maps without smoothing work: {type(error).__name__}: {error}"
            ) from error

    def compute(
        self,
        model: nn.Module,
        precision_plugin: Optional[Any] = None,
        rows: Optional[Tensor] = None,
        methods: Optional[Sequence[str]] = None,
    ) -> ScoredExplanation:
        """Maps and per-row faithfulness fractions for the probe set with the model as it is now (see ``CAMMonitor.compute``)."""
        methods = list(self.methods if methods is None else methods)
        layers = self.layers(model)
        view = self.view()
        images, targets = view.images, view.targets
        if rows is not None:
            images = images[rows]
            targets = None if targets is None else targets[rows]
        if precision_plugin is not None:
            images = precision_plugin.convert_input(images)

        def context() -> ContextManager[Any]:
            return precision_plugin.forward_context() if precision_plugin is not None else nullcontext()

        options = replace(self.options, probability=view.probability)

        def explain_rows(x: Tensor, t: Optional[Tensor]) -> ScoredExplanation:
            with preserved_rng_state(), context():
                if self.faithfulness:
                    result = compute_faithfulness(model, x, methods, layers, t, options)
                else:
                    result = ScoredExplanation(compute_explanations(model, x, methods, layers, t, options), {})
                if self.curves is None:
                    return result
                extra = curve_scores(model, x, result.explanation, methods, options, self.curves)
                return ScoredExplanation(result.explanation, {m: {**result.scores.get(m, {}), **extra[m]} for m in methods})

        global_rows = list(range(images.shape[0])) if rows is None else rows.tolist()
        skipped: Dict[int, str] = {}
        try:
            result, _ = explain_skipping_bad_images(explain_rows, model, images, targets, context, options.output_transform, skipped)
        finally:  # also when every image fails (the error is raised): the skipped rows are those of this run
            self.skipped = {global_rows[row]: reason for row, reason in skipped.items()}
        return result

    def precision_plugin(self, trainer: Any) -> Optional[Any]:
        """The trainer's precision plugin to compute in, or None with ``ExplainOptions(precision="32")``."""
        return trainer.precision_plugin if self.options.precision == "auto" else None

    def compute_for_run(self, trainer: Any, model: nn.Module, methods: Sequence[str], compute: Optional[Compute] = None) -> ScoredExplanation:
        """``compute`` (``compute`` by default; the monitor passes its own, so a subclass's override applies) in the
        training precision (unless ``precision="32"``), split across DDP ranks and gathered."""
        compute = self.compute if compute is None else compute
        plugin = self.precision_plugin(trainer)
        world = trainer.world_size
        total = len(self.view().images)
        if world == 1 or total < world:
            return compute(model, plugin, None, methods)
        mine = torch.arange(trainer.global_rank, total, world)
        result: Optional[ScoredExplanation] = None
        error: Optional[BaseException] = None
        try:
            result = compute(model, plugin, mine, methods)
        except Exception as caught:  # noqa: BLE001 - re-raised below on every rank, so no rank waits forever
            error = caught
        if trainer.strategy.reduce_boolean_decision(error is not None, all=False):
            if error is not None:
                raise error
            raise RuntimeError("CAMMonitor: the explanation failed on another process (see its error); stopping here too")
        assert result is not None
        local = torch.zeros(len(mine), dtype=torch.uint8)  # gloo gathers no bool tensors
        for position, row in enumerate(mine.tolist()):
            local[position] = row in self.skipped
        everywhere = gather_tensor(trainer.strategy, local, total)
        reasons = dict(self.skipped)
        self.skipped = {row: reasons.get(row, "skipped on another process") for row in everywhere.nonzero().flatten().tolist()}
        return gather_rows(trainer.strategy, result, total)

    def timed_compute(self, trainer: Any, model: nn.Module, methods: Sequence[str], budget: CostBudget, compute: Optional[Compute] = None) -> ScoredExplanation:
        """``compute_for_run`` per cost group (cheap methods together, each expensive one alone), timing each group."""
        merged: Optional[Explanation] = None
        scores: Dict[str, Dict[str, Tensor]] = {}
        for group in budget.groups(methods):
            begin = time.perf_counter()
            explanation, group_scores = self.compute_for_run(trainer, model, group, compute)
            if explanation.logits.is_cuda:
                torch.cuda.synchronize(explanation.logits.device)
            budget.record(group, time.perf_counter() - begin)
            scores.update(group_scores)
            if merged is None:
                merged = explanation
            else:
                merged.maps.update(explanation.maps)
        assert merged is not None
        return ScoredExplanation(merged, scores)

    def compute_contained(
        self, trainer: Any, model: nn.Module, budget: CostBudget, errors: ErrorReporter, compute: Optional[Compute] = None
    ) -> Optional[ScoredExplanation]:
        """This run's maps and scores of the due methods, or None when the run is skipped.

        A method that fails on its own is switched off for the rest of the fit (``disabled``), the
        others go on; a failure of every method, or of every probe image, skips the run. Each is
        reported through ``errors`` (which raises instead with ``on_error="raise"``).
        """
        due = budget.due([m for m in self.methods if m not in self.disabled])
        if not due:
            return None
        epoch = trainer.current_epoch
        self.skipped = {}
        try:
            result = self.timed_compute(trainer, model, due, budget, compute)
        except Exception as error:
            if errors.on_error == "raise":
                raise
            if self._every_row_skipped():  # the model raises on every image: as when it returns NaN for every image
                self._report_every_row_skipped(errors, epoch)
                return None
            failing: List[Tuple[str, BaseException]] = []
            for method in due:  # which methods fail on their own?
                try:
                    self.compute_for_run(trainer, model, [method], compute)
                except Exception as alone:  # noqa: BLE001 - reported below
                    failing.append((method, alone))
            if not failing or len(failing) == len(due):
                errors.report("explaining the probe set", error, "this run is skipped, the next one tries again", epoch)
                return None
            for method, cause in failing:
                self.disabled.add(method)
                errors.report(f"method {method!r}", cause, f"{method} is switched off for the rest of this fit", epoch)
            return self.compute_contained(trainer, model, budget, errors, compute)
        if self._every_row_skipped():
            self._report_every_row_skipped(errors, epoch)
            return None
        return result

    def _every_row_skipped(self) -> bool:
        return bool(self.skipped) and len(self.skipped) >= len(self.view().images)

    def _report_every_row_skipped(self, errors: ErrorReporter, epoch: int) -> None:
        """One report, whether the model raised on every probe image or returned non-finite logits for each: the run is
        skipped, counted once in the errors, and every row is in ``skipped`` with its reason."""
        reasons = sorted(set(self.skipped.values()))
        shown = "; ".join(reasons[:3]) + ("; ..." if len(reasons) > 3 else "")
        error = ValueError(f"{len(self.skipped)} of {len(self.view().images)} rows: {shown}")
        errors.report("every probe image", error, "this run is skipped (no map to score)", epoch)
