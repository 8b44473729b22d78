"""CAMMonitor: class activation maps and their faithfulness, logged while the model trains."""

from __future__ import annotations

import os
import time
from contextlib import nullcontext
from dataclasses import replace
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Set, Tuple

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from pytorch_lightning.utilities.rank_zero import rank_zero_debug
from torch import Tensor, nn

from cam_callbacks.capture.state import eager, preserved_model_state, preserved_rng_state
from cam_callbacks.callbacks.distributed import check_strategy, gather_rows, gather_tensor
from cam_callbacks.monitor.budget import CostBudget, is_expensive
from cam_callbacks.callbacks.skipping import explain_skipping_bad_images
from cam_callbacks.monitor.alarm import AlarmHit, AlarmRule, format_alarm
from cam_callbacks.functional import (
    Explanation, LayersLike, compute_explanations, compute_faithfulness, expand_multilabel, first_out_of_range, make_options,
    resolve_layers,
)  # fmt: skip
from cam_callbacks.capture.layers import resolve_named_layer
from cam_callbacks.methods.registry import available_methods
from cam_callbacks.capture.layouts import ReshapeLike
from cam_callbacks.metrics.faithfulness import FAITHFULNESS_METRICS
from cam_callbacks.callbacks.probe import Probe, ProbeLike, make_probe, probe_from_dataloader
from cam_callbacks.render.publish import ImageStyle, ProbeView, run_images, to_uint8
from cam_callbacks.render.images import png_directories, save_pngs, save_text
from cam_callbacks.metrics.watch import MethodAnalysis, analyze_maps
from cam_callbacks.callbacks.writer import BackgroundWriter, add_png

__all__ = ["CAMMonitor"]

_STATE_VERSION = 2

_TARGET_CHOICES = ("label", "prediction")
_PRECISION_CHOICES = ("auto", "32")


def _check_positive_int(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


class CAMMonitor(Callback):
    r"""Compute class activation maps on a fixed probe set at the end of validation and log them.

    At the end of every ``every_n_epochs``-th validation epoch (in ``trainer.fit`` and
    ``trainer.validate``, never in the sanity check) the callback explains the probe images with
    each method using the live model, scores the maps with the faithfulness metrics and logs:

    - ``cam/<method>/grid``: an image per method, rows of original images (real colours when
      ``mean``/``std`` are given, else min-max scaled) each above a row of heatmap overlays;
    - ``cam/<method>/<metric>`` scalars (``average_drop``, ``increase_in_confidence``, ``coherency``,
      ``complexity``, ``adcc``; in percent) with the epoch as step, also in ``trainer.callback_metrics``
      so ``EarlyStopping``/``ModelCheckpoint`` can monitor e.g. ``"cam/gradcam/adcc"``;
    - ``cam/<method>/<metric>`` for the spurious-cue watch (fractions; see :mod:`cam_callbacks.metrics.watch`):
      ``shortcut_score`` always, ``drift_prev``/``drift_first`` from the second run on, and with region
      masks in the probe set ``energy_in_mask``, ``pointing_game``, ``energy_in_mask_ratio``,
      ``energy_in_nuisance``, ``energy_in_nuisance_ratio``;
    - ``cam/alarm``: 1.0 when the ``alarm`` rule fires (then also a Lightning warning, a Markdown
      ``cam/alarm`` text entry naming method, metric, value, threshold and the worst probe images, and
      with ``stop_on_alarm`` the end of training);
    - ``cam/<method>/mean_map`` (where the maps of all probe images gather: the shortcut signature) and
      ``cam/<method>/class_means`` (the mean map of each explained class);
    - ``cam/time_s``: seconds this run of the callback took (maps, metrics, watch);
    - one custom-scalars layout: the ADCC of all methods in one chart, each method's components in another.

    Without a TensorBoard logger the images are saved as PNG files under each other logger's
    directory (``<log_dir>/cam/<method>/grid_epoch=0003.png``; the trainer's ``default_root_dir``
    with ``logger=False``) and the scalars go to every logger.

    With region masks, the grids show the worst probe images first (largest share on the nuisance
    region, else smallest share on the object) with the object mask outlined in white. With multi-hot labels ``(N, num_classes)`` (multi-label models) each positive
    label gets its own map, faithfulness uses sigmoid probabilities, and grids are logged per label
    as ``cam/<method>/label_<c>/grid`` for the ``max_labels`` most frequent labels.

    It never changes what the model learns: modes, hooks, ``param.grad``, ``requires_grad``, RNG
    state and BatchNorm statistics are left as found (gradients are taken with
    ``torch.autograd.grad`` through the network's tail only).

    Args:
        methods: Method names, see :func:`cam_callbacks.available_methods`.
        target_layer: Dotted module name of the LightningModule (e.g. ``"model.layer4"``), a module,
            or ``"auto"`` (the last module with a 4-D output larger than 1x1; the choice is printed);
            or a list of them, whose maps are fused LayerCAM-style.
        num_probe: Number of probe samples taken from the first validation dataloader's dataset
            (its first ``num_probe`` samples, by index) when ``probe`` is None.
        every_n_epochs: Run after validation when ``(epoch + 1) % every_n_epochs == 0`` (Lightning's
            convention); at most once per epoch, so with ``val_check_interval < 1`` it runs after
            the first validation of the epoch.
        probe: Explicit probe set: an images tensor, an ``(images, labels[, masks[, nuisance]])`` tuple,
            or a Dataset / DataLoader (first ``num_probe`` samples) whose samples are ``(image, label[, mask[,
            nuisance]])`` tuples or dicts. Masks are ``(N, H, W)`` bool: the region that should explain the
            label and a region that must not (a known nuisance cue).
        target: ``"label"`` (explain the true class when labels are known, else the prediction) or
            ``"prediction"`` (always the top-1 prediction).
        mean: Per-channel mean used to normalise the images, to show originals in real colours.
        std: Per-channel std, with ``mean``.
        batch_size: Images per forward/backward pass.
        max_images: Probe images shown in each grid.
        faithfulness: Compute and log the faithfulness metrics (one extra pass per method).
        colormap: Matplotlib colormap of the overlays.
        overlay_alpha: Heatmap opacity in the overlays, in [0, 1].
        method_options: Options per method, e.g. ``{"reciprocam": {"gaussian": True}}``.
        reshape: ``"vit"`` or a :class:`~cam_callbacks.capture.layouts.TokenGrid` for a transformer target layer.
        tail: Your own ``activations -> logits`` callable for the network after the target layer
            (Ablation-CAM, Recipro-CAM); derived automatically by default.
        smooth: None, ``"noise"`` or ``"aug"``: average each method's maps over noisy or flipped/scaled
            copies of the probe images (see :func:`cam_callbacks.functional`); multiplies the cost.
        smooth_samples: Noisy copies for ``smooth="noise"``.
        smooth_sigma: Noise std relative to each image's value range.
        smooth_scales: Scales for ``smooth="aug"``.
        perturbation_batch: Rows per perturbation pass; None chooses from the free device memory.
        precision: ``"auto"``: compute in the training precision (the trainer's precision plugin: autocast
            for ``"16-mixed"``/``"bf16-mixed"``, inputs converted for ``"*-true"``); ``"32"``: the model's
            own dtype without autocast.
        budget: Share of the training time the callback may take (None: no limit). After each run the
            callback compares its own time with the time spent training since its last run; methods
            that make it exceed the budget run less often, and it says so (an info message and
            ``cam/<method>/every_n_runs``). Only the expensive methods (Score-CAM, Ablation-CAM,
            Recipro-CAM, any smoothed method) are slowed down; the cheap ones run every time.
        alarm: The :class:`~cam_callbacks.monitor.alarm.AlarmRule` checked after every run (None: no alarm).
        stop_on_alarm: Stop training (like ``EarlyStopping``) when the alarm fires.
        max_labels: Multi-label models: labels that get their own grid.

    Raises:
        ValueError: At construction for bad arguments; at ``setup``/first validation for a model,
            layer or probe set that cannot work (unknown layer, non 4-D layer output, empty probe,
            images the model rejects, labels out of range).

    Example::

        >>> from cam_callbacks import CAMMonitor
        >>> monitor = CAMMonitor(methods=["gradcam", "gradcampp"], target_layer="auto", num_probe=32)
        >>> trainer = pl.Trainer(callbacks=[monitor], max_epochs=10)  # doctest: +SKIP
    """

    def __init__(
        self,
        methods: Sequence[str] = ("gradcam", "gradcampp"),
        target_layer: LayersLike = "auto",
        num_probe: int = 32,
        every_n_epochs: int = 1,
        probe: Optional[ProbeLike] = None,
        target: str = "label",
        mean: Optional[Sequence[float]] = None,
        std: Optional[Sequence[float]] = None,
        batch_size: int = 32,
        max_images: int = 16,
        faithfulness: bool = True,
        colormap: str = "jet",
        overlay_alpha: float = 0.5,
        method_options: Optional[Mapping[str, Mapping[str, Any]]] = None,
        reshape: ReshapeLike = None,
        tail: Optional[Callable[[Tensor], Tensor]] = None,
        smooth: Optional[str] = None,
        smooth_samples: int = 8,
        smooth_sigma: float = 0.15,
        smooth_scales: Sequence[float] = (0.9, 1.0, 1.1),
        perturbation_batch: Optional[int] = None,
        precision: str = "auto",
        budget: Optional[float] = 0.05,
        alarm: Optional[AlarmRule] = AlarmRule(),
        stop_on_alarm: bool = False,
        max_labels: int = 4,
    ) -> None:
        super().__init__()
        if isinstance(methods, str):
            methods = [methods]
        methods = list(methods)
        if not methods:
            raise ValueError(f"methods must name at least one method; choose from {available_methods()}")
        for name in methods:
            if name not in available_methods():
                raise ValueError(f"methods contains {name!r}, which is not a known CAM method; choose from {available_methods()}")
        if len(set(methods)) != len(methods):
            raise ValueError(f"methods lists a method twice: {methods}")
        layers = list(target_layer) if isinstance(target_layer, (list, tuple)) else [target_layer]
        if not layers or not all(isinstance(layer, (str, nn.Module)) for layer in layers):
            raise TypeError(f"target_layer must be a dotted module name, a module, 'auto' or a non-empty list of them, got {target_layer!r}")
        unused = sorted(set(method_options or {}) - set(methods))
        if unused:
            raise ValueError(f"method_options names {unused}, which are not in methods={methods}")
        if target not in _TARGET_CHOICES:
            raise ValueError(f"target={target!r} is not valid; choose from {list(_TARGET_CHOICES)}")
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std (to un-normalise images for display) or neither")
        if std is not None and any(float(s) <= 0 for s in std):
            raise ValueError(f"std values must be positive, got {list(std)}")
        if not 0.0 <= float(overlay_alpha) <= 1.0:
            raise ValueError(f"overlay_alpha must be in [0, 1], got {overlay_alpha}")
        from cam_callbacks.render.images import colormap_lut

        colormap_lut(colormap)  # fails fast with the valid choices
        self.methods: List[str] = methods
        self.target_layer = target_layer
        self.num_probe = _check_positive_int("num_probe", num_probe)
        self.every_n_epochs = _check_positive_int("every_n_epochs", every_n_epochs)
        self.batch_size = _check_positive_int("batch_size", batch_size)
        self.max_images = _check_positive_int("max_images", max_images)
        self.target = target
        self.mean = [float(v) for v in mean] if mean is not None else None
        self.std = [float(v) for v in std] if std is not None else None
        self.faithfulness = bool(faithfulness)
        self.colormap = colormap
        self.overlay_alpha = float(overlay_alpha)
        self.options = make_options(
            method_options, reshape, tail, smooth, smooth_samples, smooth_sigma, smooth_scales, 0, perturbation_batch
        )  # validates every option, listing the valid choices
        if precision not in _PRECISION_CHOICES:
            raise ValueError(f"precision={precision!r} is not valid; choose from {list(_PRECISION_CHOICES)}")
        self.precision = precision
        if budget is not None and not 0.0 < float(budget) <= 1.0:
            raise ValueError(f"budget must be None or a share of the training time in (0, 1], got {budget!r}")
        self._budget = CostBudget(budget, expensive=[m for m in methods if is_expensive(m, self_smooth=smooth)])
        if alarm is not None and not isinstance(alarm, AlarmRule):
            raise TypeError(f"alarm must be an AlarmRule or None, got {type(alarm).__name__}")
        self.alarm = alarm
        self.stop_on_alarm = bool(stop_on_alarm)
        self.max_labels = _check_positive_int("max_labels", max_labels)
        self._previous_maps: Dict[str, Tensor] = {}
        self._first_maps: Dict[str, Tensor] = {}
        self._alarm_state: Tuple[Tuple[str, str], ...] = ()
        self._pending_state: Optional[Dict[str, Any]] = None
        self._skipped: Dict[int, str] = {}
        self._view_cache: Optional[Tuple[Probe, ProbeView]] = None
        self._writer = BackgroundWriter()
        self._skipped_reported: Tuple[int, ...] = ()
        self._probe_source = probe
        self._probe: Optional[Probe] = make_probe(probe, self.num_probe) if probe is not None else None
        self._layer_names: Optional[List[str]] = None
        self._last_run: Optional[Tuple[str, int]] = None
        self._warned: Set[str] = set()
        self._layout_written: Set[int] = set()
        self._alarm_logged: Dict[int, bool] = {}

    # ------------------------------------------------------------------ preparation
    @property
    def probe(self) -> Optional[Probe]:
        """The probe set in use (None until it has been taken)."""
        return self._probe

    @property
    def layer_name(self) -> Optional[str]:
        """The dotted name of the target layer once resolved (several joined by ``"+"``)."""
        return None if self._layer_names is None else "+".join(self._layer_names)

    def _layers(self, pl_module: nn.Module) -> Tuple[List[str], List[nn.Module]]:
        assert self._layer_names is not None
        return self._layer_names, [resolve_named_layer(pl_module, name)[1] for name in self._layer_names]

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            rank_zero_warn(message)

    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        check_strategy(trainer.strategy)
        layers: List[Any] = list(self.target_layer) if isinstance(self.target_layer, (list, tuple)) else [self.target_layer]
        for layer in layers:
            if isinstance(layer, nn.Module) or layer != "auto":
                resolve_named_layer(pl_module, layer)
        if self._probe is None:
            self._set_probe(self._early_probe(trainer, stage), trainer)
        if self._probe is not None:
            self._prepare(pl_module)

    def _early_probe(self, trainer: "pl.Trainer", stage: str) -> Optional[Probe]:
        """Take the probe from the validation data source before validation runs, when possible.

        Dataloaders built by ``LightningModule.val_dataloader`` may need the module's ``setup``
        (which Lightning calls after the callbacks'); then the probe is taken at the first
        validation instead.
        """
        loops = {"fit": lambda: trainer.fit_loop.epoch_loop.val_loop, "validate": lambda: trainer.validate_loop}
        if stage not in loops:
            return None
        try:
            source = loops[stage]()._data_source
            if not source.is_defined():
                return None
            with preserved_rng_state():
                loaders = source.dataloader()
        except Exception:  # noqa: BLE001 - any failure here only postpones taking the probe
            return None
        return self._probe_from_loaders(loaders)

    def _probe_from_loaders(self, loaders: Any) -> Probe:
        if isinstance(loaders, dict):
            loaders = list(loaders.values())
        if isinstance(loaders, (list, tuple)):
            if not loaders:
                raise ValueError("CAMMonitor: probe set is empty: there is no validation dataloader; pass probe=(images, labels)")
            loaders = loaders[0]
        return probe_from_dataloader(loaders, self.num_probe)

    def on_validation_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if self._probe is None:
            self._set_probe(self._probe_from_loaders(trainer.val_dataloaders), trainer)
        if self._layer_names is None:
            self._prepare(pl_module)

    def _prepare(self, pl_module: "pl.LightningModule") -> None:
        """Resolve the layer and dry-run every method on two probe images, so bad setups fail before training."""
        assert self._probe is not None
        probe = self._probe
        device = pl_module.device
        with preserved_rng_state(), torch.inference_mode(False):
            example = probe.images[:2].to(device)
            try:
                with torch.no_grad(), preserved_model_state(pl_module), eager():
                    logits = pl_module(example)
            except Exception as error:
                raise ValueError(
                    f"CAMMonitor: the model rejects the probe images of shape {tuple(probe.images.shape[1:])} "
                    f"(per image): {type(error).__name__}: {error}"
                ) from error
            if not isinstance(logits, Tensor) or logits.dim() != 2:
                shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
                raise ValueError(f"CAMMonitor: the model must return (N, num_classes) logits; it returned {shape}")
            num_classes = logits.shape[1]
            if probe.multilabel and probe.labels is not None and probe.labels.shape[1] != num_classes:
                raise ValueError(
                    f"CAMMonitor: the probe's multi-hot labels have {probe.labels.shape[1]} classes, the model {num_classes}"
                )
            index = None if probe.labels is None or probe.multilabel else first_out_of_range(probe.labels, num_classes)
            if index is not None:
                assert probe.labels is not None
                raise ValueError(
                    f"CAMMonitor: probe label {int(probe.labels[index])} (probe image {index}) is out of range: the model has "
                    f"{num_classes} classes, valid class indices are 0..{num_classes - 1}"
                )
            names, layers = resolve_layers(pl_module, self.target_layer, example[:1], self.options.reshape)
            view = self._view(Probe(probe.images[:2], None if probe.labels is None else probe.labels[:2]))
            dry_run = self.options if self.options.smooth is None else replace(self.options, smooth=None)
            compute_explanations(pl_module, view.images, self.methods, names, layers, view.targets, self.batch_size, replace(dry_run, probability=view.probability))
        if self._layer_names is None:
            rank_zero_info(f"CAMMonitor: explaining target layer {'+'.join(names)!r} with {self.methods} on {len(probe)} probe images")
        self._layer_names = names

    def _targets(self, probe: Probe) -> Optional[Tensor]:
        if self.target == "prediction":
            return None
        if probe.labels is None:
            self._warn_once("no-labels", "CAMMonitor: the probe set has no labels; explaining the predicted class instead")
            return None
        return probe.labels

    # ------------------------------------------------------------------ running
    def _should_run(self, trainer: "pl.Trainer") -> bool:
        if trainer.sanity_checking:
            return False
        if trainer.state.fn != TrainerFn.FITTING:
            return True  # trainer.validate(): every call
        epoch = trainer.current_epoch
        return (epoch + 1) % self.every_n_epochs == 0 and self._last_run != ("fit", epoch)

    def on_validation_epoch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if not self._should_run(trainer):
            return
        self._last_run = ("fit" if trainer.state.fn == TrainerFn.FITTING else "other", trainer.current_epoch)
        self.run(trainer, pl_module)

    def _view(self, probe: Probe) -> "ProbeView":
        """The rows to explain: one per image, or one per positive label of multi-hot labels.

        Built once per probe set: a run asks for it several times (each cost group, the watch, the images),
        and for multi-hot labels it copies the images of every positive label.
        """
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
        if probe is self._probe:
            self._view_cache = (probe, view)
        return view

    def compute(
        self, pl_module: nn.Module, precision_plugin: Optional[Any] = None, rows: Optional[Tensor] = None,
        methods: Optional[Sequence[str]] = None,
    ) -> Tuple[Explanation, Dict[str, Dict[str, Tensor]]]:  # fmt: skip
        """Maps and per-row faithfulness fractions for the probe set with the model as it is now.

        Rows are the probe images, or (multi-hot labels) one row per positive label of each image.

        Args:
            pl_module: The model.
            precision_plugin: A Lightning precision plugin whose ``convert_input`` and ``forward_context``
                apply (the training precision), or None for the model's own dtype without autocast.
            rows: Only these rows (a rank's share under DDP); all by default.
            methods: Only these methods; all by default.
        """
        methods = list(self.methods if methods is None else methods)
        assert self._probe is not None
        names, layers = self._layers(pl_module)
        view = self._view(self._probe)
        images, targets = view.images, view.targets
        if rows is not None:
            images = images[rows]
            targets = None if targets is None else targets[rows]
        if precision_plugin is not None:
            images = precision_plugin.convert_input(images)

        def context() -> Any:
            return precision_plugin.forward_context() if precision_plugin is not None else nullcontext()

        options = replace(self.options, probability=view.probability)

        def explain_rows(x: Tensor, t: Optional[Tensor]) -> Tuple[Explanation, Dict[str, Dict[str, Tensor]]]:
            args = (pl_module, x, methods, names, layers, t, self.batch_size, options)
            with preserved_rng_state(), context():
                if self.faithfulness:
                    return compute_faithfulness(*args)
                return compute_explanations(*args), {}

        result, skipped = explain_skipping_bad_images(explain_rows, pl_module, images, targets, context)
        global_rows = list(range(images.shape[0])) if rows is None else rows.tolist()
        self._skipped = {global_rows[row]: reason for row, reason in skipped.items()}
        return result

    def _compute_for_run(
        self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", methods: Sequence[str]
    ) -> Tuple[Explanation, Dict[str, Dict[str, Tensor]]]:
        """:meth:`compute` in the training precision (unless ``precision="32"``), split across DDP ranks and gathered."""
        assert self._probe is not None
        plugin = trainer.precision_plugin if self.precision == "auto" else None
        world = trainer.world_size
        total = len(self._view(self._probe).images)
        if world == 1 or total < world:
            return self.compute(pl_module, plugin, methods=methods)
        mine = torch.arange(trainer.global_rank, total, world)
        result: Optional[Tuple[Explanation, Dict[str, Dict[str, Tensor]]]] = None
        error: Optional[BaseException] = None
        try:
            result = self.compute(pl_module, plugin, mine, methods)
        except Exception as caught:  # noqa: BLE001 - re-raised below on every rank, so no rank waits forever
            error = caught
        if trainer.strategy.reduce_boolean_decision(error is not None, all=False):
            if error is not None:
                raise error
            raise RuntimeError("CAMMonitor: the explanation failed on another process (see its error); stopping here too")
        assert result is not None
        local = torch.zeros(len(mine), dtype=torch.uint8)  # gloo gathers no bool tensors
        for position, row in enumerate(mine.tolist()):
            local[position] = row in self._skipped
        everywhere = gather_tensor(trainer.strategy, local, total)
        reasons = dict(self._skipped)
        self._skipped = {row: reasons.get(row, "skipped on another process") for row in everywhere.nonzero().flatten().tolist()}
        return gather_rows(trainer.strategy, result, total)

    def _timed_compute(
        self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", methods: Sequence[str]
    ) -> Tuple[Explanation, Dict[str, Dict[str, Tensor]]]:
        """:meth:`_compute_for_run` per cost group (cheap methods together, each expensive one alone), timing each group."""
        merged: Optional[Explanation] = None
        scores: Dict[str, Dict[str, Tensor]] = {}
        for group in self._budget.groups(methods):
            begin = time.perf_counter()
            explanation, group_scores = self._compute_for_run(trainer, pl_module, group)
            if explanation.logits.is_cuda:
                torch.cuda.synchronize(explanation.logits.device)
            self._budget.record(group, time.perf_counter() - begin)
            scores.update(group_scores)
            if merged is None:
                merged = explanation
            else:
                merged.maps.update(explanation.maps)
        assert merged is not None
        return merged, scores

    def on_train_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._budget.start()

    def on_fit_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._writer.flush()

    def on_validation_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if trainer.state.fn != TrainerFn.FITTING:  # trainer.validate(): the images are complete when it returns
            self._writer.flush()

    def on_exception(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", exception: BaseException) -> None:
        self._writer.close()

    def teardown(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        self._writer.close()  # every image is written when fit/validate returns; the thread ends

    def analyze(self, explanation: Explanation) -> Dict[str, MethodAnalysis]:
        """Localisation, shortcut and drift of each method's maps (see :func:`cam_callbacks.metrics.watch.analyze_maps`).

        Skipped rows (images the model cannot handle) are left out; per-image values and the grid
        order refer to probe rows, with NaN for skipped ones.
        """
        assert self._probe is not None
        view = self._view(self._probe)
        rows = len(view.images)
        keep = torch.tensor([row for row in range(rows) if row not in self._skipped], dtype=torch.long)
        analyses = {}
        for method in explanation.maps:
            maps = explanation.maps[method].detach().float().cpu()
            first = self._first_maps.get(method)
            previous = self._previous_maps.get(method)
            if first is not None and first.shape != maps.shape:  # a changed probe set: start the history again
                first = previous = None
            analysis = analyze_maps(
                maps[keep], _rows(view.masks, keep), _rows(view.nuisance, keep), _rows(previous, keep), _rows(first, keep)
            )
            analysis.order = keep[analysis.order]
            for name, values in analysis.per_image.items():
                full = torch.full((rows,), float("nan"), dtype=values.dtype)
                full[keep] = values.cpu()
                analysis.per_image[name] = full
            analyses[method] = analysis
            self._previous_maps[method] = maps
            if first is None:
                self._first_maps[method] = maps
        return analyses

    def _report_skipped(self, trainer: "pl.Trainer") -> None:
        rows = tuple(sorted(self._skipped))
        if rows and rows != self._skipped_reported:
            details = "; ".join(f"row {row}: {self._skipped[row]}" for row in rows[:8])
            rank_zero_warn(
                f"CAMMonitor: {len(rows)} probe image(s) skipped at epoch {trainer.current_epoch} ({details}). "
                "The metrics are means over the other images; training goes on."
            )
        self._skipped_reported = rows

    def run(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> Dict[str, float]:
        """Compute, check the alarm rule and log once for the current epoch; returns the logged scalars."""
        if self._probe is None or self._layer_names is None:
            self.on_validation_start(trainer, pl_module)
        assert self._probe is not None
        start = time.perf_counter()
        due = self._budget.due(self.methods)
        explanation, scores = self._timed_compute(trainer, pl_module, due)
        self._report_skipped(trainer)
        scalars = {
            f"cam/{method}/{metric}": float(100.0 * scores[method][metric].double().nanmean())
            for method in due
            for metric in (FAITHFULNESS_METRICS if scores else ())
        }
        analyses = self.analyze(explanation)
        per_image: Dict[str, Tensor] = {}
        for method, analysis in analyses.items():
            scalars.update({f"cam/{method}/{metric}": value for metric, value in analysis.scalars.items()})
            per_image.update({f"cam/{method}/{metric}": values for metric, values in analysis.per_image.items()})
        hits = self.alarm.evaluate(scalars, per_image) if self.alarm is not None else []
        if self.alarm is not None:
            scalars["cam/alarm"] = 1.0 if hits else 0.0
        scalars["cam/skipped_images"] = float(len(self._skipped))
        scalars["cam/time_s"] = time.perf_counter() - start  # the callback's own cost of this run (maps, metrics, watch)
        changes = self._budget.update(scalars["cam/time_s"]) if trainer.state.fn == TrainerFn.FITTING else {}
        for method, stride in changes.items():
            rank_zero_info(f"CAMMonitor: {self._budget.explain(method)}; {method} now runs every {stride} run(s) of the callback")
        scalars.update({f"cam/{m}/every_n_runs": float(self._budget.stride(m)) for m in self.methods if self._budget.stride(m) > 1})
        for name, value in scalars.items():  # identical on every process: sync_dist only keeps Lightning's DDP check quiet
            pl_module.log(name, value, on_step=False, on_epoch=True, logger=False, batch_size=len(self._probe), sync_dist=trainer.world_size > 1)
        self._raise_alarm(trainer, hits)
        if trainer.is_global_zero:
            self._log(trainer, explanation, scalars, analyses, hits)
        rank_zero_debug(f"CAMMonitor: epoch {trainer.current_epoch} explained in {time.perf_counter() - start:.2f}s")
        return scalars

    def _raise_alarm(self, trainer: "pl.Trainer", hits: List[AlarmHit]) -> None:
        state = tuple((hit.method, hit.metric) for hit in hits)
        if hits and state != self._alarm_state:
            rank_zero_warn(f"CAMMonitor alarm at epoch {trainer.current_epoch}: " + " ".join(hit.message for hit in hits))
        elif not hits and self._alarm_state:
            rank_zero_info(f"CAMMonitor: the alarm cleared at epoch {trainer.current_epoch}")
        self._alarm_state = state
        if self.stop_on_alarm and trainer.state.fn == TrainerFn.FITTING:
            stop = trainer.strategy.reduce_boolean_decision(bool(hits), all=False)
            if stop:
                trainer.should_stop = True
                rank_zero_info("CAMMonitor: stopping training because the alarm fired (stop_on_alarm=True)")

    # ------------------------------------------------------------------ logging
    def _log(
        self, trainer: "pl.Trainer", explanation: Explanation, scalars: Dict[str, float],
        analyses: Dict[str, MethodAnalysis], hits: List[AlarmHit],
    ) -> None:  # fmt: skip
        epoch = trainer.current_epoch
        for logger in trainer.loggers:
            if scalars:
                logger.log_metrics(scalars, step=epoch)
        tensorboards = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        directories = png_directories(trainer)
        if not tensorboards and not directories:
            self._warn_once("no-image-logger", "CAMMonitor: no logger with a directory; heatmap grids are not saved, scalars still are")
            return
        assert self._probe is not None
        view = self._view(self._probe)
        style = ImageStyle(self.max_images, self.max_labels, self.mean, self.std, self.overlay_alpha, self.colormap)
        images = run_images(view, explanation, analyses, style)
        # PNG encoding is the slow part: it runs on a worker thread while training goes on (see cam_callbacks.callbacks.writer)
        as_bytes = {method: {name: to_uint8(image) for name, image in named.items()} for method, named in images.items()}
        for logger in tensorboards:
            writer = logger.experiment
            self._write_layout(writer)
            for method, named in as_bytes.items():
                for name, image in named.items():
                    self._writer.submit(add_png, writer, f"cam/{method}/{name}", image, epoch)
            if hits or self._alarm_logged.get(id(writer)):
                writer.add_text("cam/alarm", format_alarm(hits, title=f"CAM alarm, epoch {epoch}"), global_step=epoch)
                self._alarm_logged[id(writer)] = bool(hits)
        for directory in directories:
            self._writer.submit(save_pngs, directory, images, epoch)
            if hits:
                save_text(directory, f"alarm_epoch={epoch:04d}.md", format_alarm(hits, title=f"CAM alarm, epoch {epoch}"))
        if directories and "png" not in self._warned:
            self._warned.add("png")
            rank_zero_info(f"CAMMonitor: heatmap grids are saved as PNG files under {[os.path.join(d, 'cam') for d in directories]}")

    def _write_layout(self, writer: Any) -> None:
        if id(writer) in self._layout_written:
            return
        self._layout_written.add(id(writer))
        charts: Dict[str, List[Any]] = {}
        if self.faithfulness:
            charts["ADCC (all methods)"] = ["Multiline", [f"cam/{m}/adcc" for m in self.methods]]
            components = [k for k in FAITHFULNESS_METRICS if k != "adcc"]
            for method in self.methods:
                charts[f"{method}: AD, IC, coherency, complexity"] = ["Multiline", [f"cam/{method}/{k}" for k in components]]
            writer.add_custom_scalars({"cam_callbacks": charts})
        writer.add_text(
            "cam/config",
            f"target layer `{self.layer_name}`, methods {self.methods}, {len(self._probe) if self._probe else 0} probe images, "
            f"target={self.target!r}",
            global_step=0,
        )

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> Dict[str, Any]:
        """What a checkpoint needs to resume: the last run, the probe set's fingerprint (and its tensors when it was
        given explicitly), the maps of the first and the previous run (for drift) and the alarm state."""
        probe = self._probe
        return {
            "version": _STATE_VERSION,
            "layer_name": self.layer_name,
            "methods": list(self.methods),
            "last_run": self._last_run,
            "probe_fingerprint": probe.fingerprint() if probe is not None else None,
            "probe": probe.tensors() if probe is not None and self._probe_source is not None else None,
            "first_maps": dict(self._first_maps),
            "previous_maps": dict(self._previous_maps),
            "alarm_state": [list(pair) for pair in self._alarm_state],
        }

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`. The history is kept only for the same probe set; a changed one is reported."""
        self._last_run = tuple(state_dict["last_run"]) if state_dict.get("last_run") else None  # type: ignore[assignment]
        saved_probe = state_dict.get("probe")
        if self._probe_source is None and saved_probe is not None:
            # the checkpointed run was given its probe explicitly and this one is not: continue with the same images
            # (replacing one taken from the validation data at setup, which runs before checkpoints are restored)
            self._probe = Probe(**saved_probe)
        self._pending_state = dict(state_dict)
        if self._probe is not None:
            self._apply_pending_state()

    def _set_probe(self, probe: Optional[Probe], trainer: Optional["pl.Trainer"] = None) -> None:
        if trainer is not None and trainer.world_size > 1:
            # every process uses rank 0's probe (iterable datasets or samplers may give ranks different samples)
            probe = trainer.strategy.broadcast(probe, src=0)
        self._probe = probe
        if probe is not None and self._pending_state is not None:
            self._apply_pending_state()

    def _apply_pending_state(self) -> None:
        state, self._pending_state = self._pending_state, None
        assert state is not None and self._probe is not None
        saved = state.get("probe_fingerprint")
        if saved is not None and saved != self._probe.fingerprint():
            rank_zero_warn(
                "CAMMonitor: the probe set differs from the one in the checkpoint (other images, labels or masks); "
                "drift is measured from this run on and the alarm state starts afresh"
            )
            return
        self._first_maps = {m: t for m, t in state.get("first_maps", {}).items() if m in self.methods}
        self._previous_maps = {m: t for m, t in state.get("previous_maps", {}).items() if m in self.methods}
        self._alarm_state = tuple(tuple(pair) for pair in state.get("alarm_state", ()))  # type: ignore[misc]


def _rows(tensor: Optional[Tensor], keep: Tensor) -> Optional[Tensor]:
    return None if tensor is None else tensor[keep]
