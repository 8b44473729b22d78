"""CAMMonitor: class activation maps and their faithfulness, logged while the model trains.

This module holds the Lightning hooks and little else: the work is done by
:class:`~cam_callbacks.callbacks.runner.ProbeRunner` (maps and scores of the probe set),
:class:`~cam_callbacks.monitor.history.MapHistory` (drift), :class:`~cam_callbacks.monitor.alarm.AlarmState`,
:class:`~cam_callbacks.monitor.budget.CostBudget` and :class:`~cam_callbacks.callbacks.loggers.RunLogger`.
"""

from __future__ import annotations

import copy
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Set

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from pytorch_lightning.utilities.rank_zero import rank_zero_debug
from torch import Tensor, nn
from typing_extensions import override

from cam_callbacks.callbacks.arguments import (
    PRECISION_CHOICES,
    TARGET_CHOICES,
    check_alarm,
    check_budget,
    check_choice,
    check_display,
    check_methods,
    check_positive_int,
    check_target_layer,
)  # fmt: skip
from cam_callbacks.callbacks.distributed import check_strategy
from cam_callbacks.callbacks.loggers import RunLogger, RunSummary, run_scalars
from cam_callbacks.callbacks.probe import Probe, ProbeLike, early_probe, make_probe, probe_from_loaders
from cam_callbacks.callbacks.runner import ProbeRunner
from cam_callbacks.capture.layers import LayersLike, resolve_named_layer
from cam_callbacks.capture.layouts import ReshapeLike
from cam_callbacks.engine.options import ExplainOptions
from cam_callbacks.engine.result import Explanation, ScoredExplanation
from cam_callbacks.metrics.watch import MethodAnalysis
from cam_callbacks.monitor.alarm import AlarmHit, AlarmRule, AlarmState
from cam_callbacks.monitor.budget import CostBudget, is_expensive
from cam_callbacks.monitor.history import MapHistory
from cam_callbacks.render.publish import ImageStyle, run_images
from cam_callbacks.utils.types import PrecisionMode, Smooth, TargetMode

__all__ = ["CAMMonitor"]

#: Version of :meth:`CAMMonitor.state_dict`; a checkpoint of another version resumes without the history.
STATE_VERSION = 2


class CAMMonitor(Callback):
    r"""Compute class activation maps on a fixed probe set at the end of validation and log them.

    At the end of every ``every_n_epochs``-th validation epoch (in ``trainer.fit`` and
    ``trainer.validate``, never in the sanity check) the callback explains the probe images with
    each method using the live model, scores the maps with the faithfulness metrics and logs
    (the README's "What appears in TensorBoard" shows each entry):

    - images ``cam/<method>/grid`` (originals above heatmap overlays; with region masks worst first,
      the object outlined), ``cam/<method>/mean_map`` and ``cam/<method>/class_means``; per label
      ``cam/<method>/label_<c>/grid`` for multi-hot labels (the ``max_labels`` most frequent);
    - scalars ``cam/<method>/<metric>``: faithfulness in percent (``average_drop``,
      ``increase_in_confidence``, ``coherency``, ``complexity``, ``adcc``) and the spurious-cue watch
      as fractions (``shortcut_score``, ``drift_prev``/``drift_first``, and with masks
      ``energy_in_mask``, ``pointing_game``, ``energy_in_nuisance`` and their ``_ratio``s); ``cam/alarm``,
      ``cam/skipped_images``, ``cam/time_s``; all also in ``trainer.callback_metrics``, so
      ``EarlyStopping``/``ModelCheckpoint`` can monitor e.g. ``"cam/gradcam/adcc"``;
    - text ``cam/config`` and, when the ``alarm`` rule fires, ``cam/alarm`` (method, metric, value,
      threshold, worst probe images; also a warning, and with ``stop_on_alarm`` the end of training).

    Images go to TensorBoard loggers, and as PNG files into every other logger's directory
    (``<log_dir>/cam/<method>/grid_epoch=0003.png``; ``default_root_dir`` with ``logger=False``).

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
            copies of the probe images (see :func:`cam_callbacks.explain`); multiplies the cost.
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
        target: TargetMode = "label",
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
        smooth: Optional[Smooth] = None,
        smooth_samples: int = 8,
        smooth_sigma: float = 0.15,
        smooth_scales: Sequence[float] = (0.9, 1.0, 1.1),
        perturbation_batch: Optional[int] = None,
        precision: PrecisionMode = "auto",
        budget: Optional[float] = 0.05,
        alarm: Optional[AlarmRule] = AlarmRule(),  # noqa: B008 - never mutated: each monitor keeps its own copy
        stop_on_alarm: bool = False,
        max_labels: int = 4,
    ) -> None:
        super().__init__()
        self.methods: List[str] = check_methods(methods)
        check_target_layer(target_layer)
        unused = sorted(set(method_options or {}) - set(self.methods))
        if unused:
            raise ValueError(f"method_options names {unused}, which are not in methods={self.methods}")
        self.target = check_choice("target", target, TARGET_CHOICES)
        self.mean, self.std = check_display(mean, std, overlay_alpha, colormap)
        self.target_layer = target_layer
        self.num_probe = check_positive_int("num_probe", num_probe)
        self.every_n_epochs = check_positive_int("every_n_epochs", every_n_epochs)
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.max_images = check_positive_int("max_images", max_images)
        self.max_labels = check_positive_int("max_labels", max_labels)
        self.faithfulness = bool(faithfulness)
        self.colormap = colormap
        self.overlay_alpha = float(overlay_alpha)
        self.options = ExplainOptions(
            batch_size=self.batch_size, method_options=dict(method_options or {}), reshape=reshape, tail=tail,
            smooth=smooth, smooth_samples=smooth_samples, smooth_sigma=smooth_sigma, smooth_scales=tuple(smooth_scales),
            perturbation_batch=perturbation_batch,
        )  # fmt: skip  # validates every option, listing the valid choices
        self.precision = check_choice("precision", precision, PRECISION_CHOICES)
        self._budget_share = check_budget(budget)
        checked = check_alarm(alarm)
        self.alarm = None if checked is None else copy.deepcopy(checked)  # a deep copy: monitors never share a rule (nor its extra)
        self.stop_on_alarm = bool(stop_on_alarm)
        self._probe_source = probe
        self._build_parts(probe, smooth)
        #: Seconds the phases of the last run took: ``compute`` (maps and scores), ``analyze`` (watch), ``log``, ``total``.
        self.last_timings: Dict[str, float] = {}

    def _build_parts(self, probe: Optional[ProbeLike], smooth: Optional[Smooth]) -> None:
        """The parts that do the work (runner, history, alarm state, budget, logger) and the run state."""
        self._runner = ProbeRunner(
            self.methods, self.target_layer, self.target == "label", self.options, self.faithfulness, self.precision, self._warn_once
        )  # fmt: skip
        self._runner.probe = make_probe(probe, self.num_probe) if probe is not None else None
        self._budget = CostBudget(self._budget_share, expensive=[m for m in self.methods if is_expensive(m, self_smooth=smooth)])
        self._history = MapHistory()
        self._alarm_state = AlarmState()
        self._logger = RunLogger()
        self._pending_state: Optional[Dict[str, Any]] = None
        self._last_run: Optional[tuple] = None
        self._warned: Set[str] = set()

    # ------------------------------------------------------------------ identity and properties
    @property
    @override
    def state_key(self) -> str:
        layers = self.target_layer if isinstance(self.target_layer, (list, tuple)) else [self.target_layer]
        names = [layer if isinstance(layer, str) else type(layer).__name__ for layer in layers]
        return self._generate_state_key(methods=self.methods, target_layer=names)

    @property
    def probe(self) -> Optional[Probe]:
        """The probe set in use (None until it has been taken)."""
        return self._runner.probe

    @property
    def layer_name(self) -> Optional[str]:
        """The dotted name of the target layer once resolved (several joined by ``"+"``)."""
        names = self._runner.layer_names
        return None if names is None else "+".join(names)

    @property
    def skipped_images(self) -> Dict[int, str]:
        """Probe rows skipped in the last run (the model raised, or returned non-finite logits or maps) and why."""
        return dict(self._runner.skipped)

    @property
    def history(self) -> MapHistory:
        """The maps of the first and the previous run of each method, which drift is measured against."""
        return self._history

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            rank_zero_warn(message)

    # ------------------------------------------------------------------ preparation
    @override
    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        check_strategy(trainer.strategy)
        layers: List[Any] = list(self.target_layer) if isinstance(self.target_layer, (list, tuple)) else [self.target_layer]
        for layer in layers:
            if isinstance(layer, nn.Module) or layer != "auto":
                resolve_named_layer(pl_module, layer)
        if self.probe is None:
            self._set_probe(early_probe(trainer, stage, self.num_probe), trainer)
        if self.probe is not None:
            self._prepare(pl_module)

    @override
    def on_validation_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if self.probe is None:
            self._set_probe(probe_from_loaders(trainer.val_dataloaders, self.num_probe), trainer)
        if self._runner.layer_names is None:
            self._prepare(pl_module)

    def _prepare(self, pl_module: "pl.LightningModule") -> None:
        """Resolve the layer and dry-run every method on two probe images, so bad setups fail before training."""
        first_time = self._runner.layer_names is None
        names = self._runner.prepare(pl_module)
        if first_time:
            rank_zero_info(f"CAMMonitor: explaining target layer {'+'.join(names)!r} with {self.methods} on {len(self.probe or ())} probe images")
        self._apply_pending_state()  # a checkpoint loaded before the layer was known (the probe came late) is checked now

    def _set_probe(self, probe: Optional[Probe], trainer: Optional["pl.Trainer"] = None) -> None:
        if trainer is not None and trainer.world_size > 1:
            # every process uses rank 0's probe (iterable datasets or samplers may give ranks different samples)
            probe = trainer.strategy.broadcast(probe, src=0)
        self._runner.probe = probe
        self._apply_pending_state()

    # ------------------------------------------------------------------ running
    def _should_run(self, trainer: "pl.Trainer") -> bool:
        if trainer.sanity_checking:
            return False
        if trainer.state.fn != TrainerFn.FITTING:
            return True  # trainer.validate(): every call
        epoch = trainer.current_epoch
        return (epoch + 1) % self.every_n_epochs == 0 and self._last_run != ("fit", epoch)

    @override
    def on_validation_epoch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if not self._should_run(trainer):
            return
        self._last_run = ("fit" if trainer.state.fn == TrainerFn.FITTING else "other", trainer.current_epoch)
        self.run(trainer, pl_module)

    def compute(
        self, pl_module: nn.Module, precision_plugin: Optional[Any] = None, rows: Optional[Tensor] = None,
        methods: Optional[Sequence[str]] = None,
    ) -> ScoredExplanation:  # fmt: skip
        """Maps and per-row faithfulness fractions for the probe set with the model as it is now.

        Rows are the probe images, or (multi-hot labels) one row per positive label of each image.

        Args:
            pl_module: The model.
            precision_plugin: A Lightning precision plugin whose ``convert_input`` and ``forward_context``
                apply (the training precision), or None for the model's own dtype without autocast.
            rows: Only these rows (a rank's share under DDP); all by default.
            methods: Only these methods; all by default.

        Returns:
            ``(explanation, scores)``: a :class:`~cam_callbacks.ScoredExplanation`.
        """
        return self._runner.compute(pl_module, precision_plugin, rows, methods)

    def analyze(self, explanation: Explanation) -> Dict[str, MethodAnalysis]:
        """Localisation, shortcut and drift of each method's maps (see :func:`cam_callbacks.metrics.watch.analyze_maps`).

        Skipped rows (images the model cannot handle) are left out; per-image values and the grid
        order refer to probe rows, with NaN for skipped ones.
        """
        view = self._runner.view()
        return self._history.analyze(explanation.maps, view.masks, view.nuisance, self._runner.skipped)

    def run(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> Dict[str, float]:
        """Compute, check the alarm rule and log once for the current epoch; returns the logged scalars."""
        if self.probe is None or self._runner.layer_names is None:
            self.on_validation_start(trainer, pl_module)
        start = time.perf_counter()
        due = self._budget.due(self.methods)
        explanation, scores = self._runner.timed_compute(trainer, pl_module, due, self._budget, self.compute)
        computed = time.perf_counter()
        message = self._runner.new_skips_message(trainer.current_epoch)
        if message:
            rank_zero_warn(message)
        analyses = self.analyze(explanation)
        scalars = run_scalars(scores, due, analyses)
        per_image = {f"cam/{m}/{metric}": values for m, a in analyses.items() for metric, values in a.per_image.items()}
        hits = self.alarm.evaluate(scalars, per_image) if self.alarm is not None else []
        if self.alarm is not None:
            scalars["cam/alarm"] = 1.0 if hits else 0.0
        scalars["cam/skipped_images"] = float(len(self._runner.skipped))
        analyzed = time.perf_counter()
        scalars["cam/time_s"] = analyzed - start  # the callback's own cost of this run (maps, metrics, watch)
        changes = self._budget.update(scalars["cam/time_s"]) if trainer.state.fn == TrainerFn.FITTING else {}
        for method, stride in changes.items():
            rank_zero_info(f"CAMMonitor: {self._budget.explain(method)}; {method} now runs every {stride} run(s) of the callback")
        scalars.update({f"cam/{m}/every_n_runs": float(self._budget.stride(m)) for m in self.methods if self._budget.stride(m) > 1})
        for name, value in scalars.items():  # identical on every process: sync_dist only keeps Lightning's DDP check quiet
            pl_module.log(name, value, on_step=False, on_epoch=True, logger=False, batch_size=len(self.probe or ()), sync_dist=trainer.world_size > 1)
        self._raise_alarm(trainer, hits)
        if trainer.is_global_zero:
            self._log(trainer, explanation, scalars, analyses, hits)
        end = time.perf_counter()
        self.last_timings = {"compute": computed - start, "analyze": analyzed - computed, "log": end - analyzed, "total": end - start}
        rank_zero_debug(f"CAMMonitor: epoch {trainer.current_epoch} explained in {end - start:.2f}s")
        return scalars

    def _raise_alarm(self, trainer: "pl.Trainer", hits: List[AlarmHit]) -> None:
        change = self._alarm_state.update(hits)
        if change == "fired":
            rank_zero_warn(f"CAMMonitor alarm at epoch {trainer.current_epoch}: " + " ".join(hit.message for hit in hits))
        elif change == "cleared":
            rank_zero_info(f"CAMMonitor: the alarm cleared at epoch {trainer.current_epoch}")
        if self.stop_on_alarm and trainer.state.fn == TrainerFn.FITTING:
            stop = trainer.strategy.reduce_boolean_decision(bool(hits), all=False)
            if stop:
                trainer.should_stop = True
                rank_zero_info("CAMMonitor: stopping training because the alarm fired (stop_on_alarm=True)")

    def _log(
        self, trainer: "pl.Trainer", explanation: Explanation, scalars: Dict[str, float], analyses: Dict[str, MethodAnalysis],
        hits: List[AlarmHit],
    ) -> None:  # fmt: skip
        style = ImageStyle(self.max_images, self.max_labels, self.mean, self.std, self.overlay_alpha, self.colormap)
        summary = RunSummary(
            self.methods, self.faithfulness,
            f"target layer `{self.layer_name}`, methods {self.methods}, {len(self.probe or ())} probe images, target={self.target!r}",
        )  # fmt: skip
        view = self._runner.view()
        self._logger.log(trainer, trainer.current_epoch, scalars, lambda: run_images(view, explanation, analyses, style), hits, summary)

    # ------------------------------------------------------------------ end of fit / validate
    @override
    def on_train_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._budget.start()

    @override
    def on_fit_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._logger.flush()

    @override
    def on_validation_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if trainer.state.fn != TrainerFn.FITTING:  # trainer.validate(): the images are complete when it returns
            self._logger.flush()

    @override
    def on_exception(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", exception: BaseException) -> None:
        self._logger.close()

    @override
    def teardown(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        self._logger.close()  # every image is written when fit/validate returns; the thread ends

    # ------------------------------------------------------------------ checkpointing
    @override
    def state_dict(self) -> Dict[str, Any]:
        """What a checkpoint needs to resume: the version, the layer, the last run, the probe set's fingerprint (and its
        tensors when it was given explicitly), the maps of the first and the previous run (drift) and the alarm state."""
        probe = self.probe
        return {
            "version": STATE_VERSION,
            "layer_name": self.layer_name,
            "last_run": self._last_run,
            "probe_fingerprint": probe.fingerprint() if probe is not None else None,
            "probe": probe.tensors() if probe is not None and self._probe_source is not None else None,
            **self._history.state_dict(),
            **self._alarm_state.state_dict(),
        }

    @override
    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`. The history is kept only for the same version, layer and probe set; a change is reported.
        It is applied once the probe set and the layer are known (at once after ``setup``, else at the first validation)."""
        self._last_run = tuple(state_dict["last_run"]) if state_dict.get("last_run") else None
        saved_probe = state_dict.get("probe")
        if self._probe_source is None and saved_probe is not None:
            # the checkpointed run was given its probe explicitly and this one is not: continue with the same images
            # (replacing one taken from the validation data at setup, which runs before checkpoints are restored)
            self._runner.probe = Probe(**saved_probe)
        self._pending_state = dict(state_dict)
        self._apply_pending_state()

    def _apply_pending_state(self) -> None:
        if self._pending_state is None or self.probe is None or self._runner.layer_names is None:
            return  # not yet: the version, layer and probe checks need the probe set and the resolved layer
        state, self._pending_state = self._pending_state, None
        reason = None
        if state.get("version") != STATE_VERSION:
            reason = f"the checkpoint's CAMMonitor state has version {state.get('version')!r}, this one {STATE_VERSION}"
        elif state.get("layer_name") is not None and self.layer_name is not None and state["layer_name"] != self.layer_name:
            reason = f"the checkpoint explained layer {state['layer_name']!r}, this monitor {self.layer_name!r}"
        elif state.get("probe_fingerprint") is not None and state["probe_fingerprint"] != self.probe.fingerprint():
            reason = "the probe set differs from the one in the checkpoint (other images, labels or masks)"
        if reason is not None:
            rank_zero_warn(f"CAMMonitor: {reason}; drift is measured from this run on and the alarm state starts afresh")
            return
        self._history.load_state_dict(state, self.methods)
        self._alarm_state.load_state_dict(state)
