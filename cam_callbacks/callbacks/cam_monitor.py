"""CAMMonitor: the Lightning hooks. The work is done by ``ProbeRunner`` (maps and scores), ``MapHistory`` (drift),
``AlarmState``, ``CostBudget``, ``ErrorReporter`` and ``RunLogger``."""

from __future__ import annotations

import ast
import time
import weakref
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Set, Tuple, Union

import pytorch_lightning as pl
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from pytorch_lightning.utilities.rank_zero import rank_zero_debug
from torch import Tensor, nn
from typing_extensions import override

from cam_callbacks.callbacks.arguments import (
    TARGET_CHOICES,
    check_alarm,
    check_bool,
    check_budget,
    check_choice,
    check_explain_options,
    check_methods,
    check_metrics,
    check_named_layers,
    check_positive_int,
    check_prefix,
    check_probe,
    check_style,
    check_target_layer,
    check_unique_prefix,
    uncomputed_bounds,
)
from cam_callbacks.callbacks.checkpoint import STATE_VERSION, history_mismatch, state_problem
from cam_callbacks.callbacks.compat import callback_base
from cam_callbacks.callbacks.distributed import check_strategy
from cam_callbacks.callbacks.errors import ON_ERROR_CHOICES, ErrorReporter
from cam_callbacks.callbacks.loggers import STEP_CHOICES, RunLogger, run_scalars
from cam_callbacks.callbacks.probe import Probe, ProbeLike, early_probe, make_probe, probe_from_loaders
from cam_callbacks.callbacks.runner import ProbeRunner
from cam_callbacks.callbacks.shortcut_watch import probe_outcome, shortcut_hits
from cam_callbacks.capture.layers import LayersLike
from cam_callbacks.engine.options import ExplainOptions
from cam_callbacks.engine.result import Explanation, ScoredExplanation, Scores
from cam_callbacks.metrics.watch import MethodAnalysis
from cam_callbacks.monitor.alarm import DEFAULT_ALARM, AlarmHit, AlarmPolicy, AlarmState, shortcut_policy, stops_training, threshold_hits
from cam_callbacks.monitor.budget import CostBudget, is_expensive
from cam_callbacks.monitor.history import MapHistory
from cam_callbacks.render.style import ImageStyle
from cam_callbacks.utils.types import OnError, TargetMode

if TYPE_CHECKING:  # type checkers see pytorch_lightning's Callback; at run time it is the Callback of every namespace
    from pytorch_lightning.callbacks import Callback as _Callback
else:
    _Callback = callback_base()


class CAMMonitor(_Callback):
    r"""Explain a fixed probe set with the live model at the end of validation epochs, score the maps, log them.

    At the end of every ``every_n_epochs``-th validation epoch (in ``trainer.fit`` and ``trainer.validate``,
    never in the sanity check) the callback explains the probe images with each method, scores the maps and
    logs, under ``prefix``: heatmap grids and mean maps (images), ``<prefix>/<method>/<metric>`` scalars (every
    score a fraction in [0, 1]; also in ``trainer.callback_metrics`` for ``EarlyStopping``/``ModelCheckpoint``),
    ``<prefix>/alarm``, ``<prefix>/errors``, ``<prefix>/skipped_images``, ``<prefix>/time_s``, text entries and,
    at the end of fit/validate, an HTML report. Images go to TensorBoard, to the MLflow / W&B run, and as PNG
    files into every other logger's run directory.

    It never changes what the model learns: modes, hooks, ``param.grad``, ``requires_grad``, RNG state and
    BatchNorm statistics are left as found. It never ends the fit on its own: see ``on_error``.

    Args:
        methods: Method names (see ``available_methods``).
        target_layer: Dotted module name in the LightningModule (e.g. ``"model.layer4"``), a module, ``"auto"``,
            or a list of them (their maps are fused, LayerCAM-style).
        probe: The images to explain. An int: that many samples of the first validation dataset, by index (the
            same images every epoch, on every process). Or an images tensor, an ``(images, labels[, masks[,
            nuisance]])`` tuple (masks ``(N, H, W)``: the object, and a region that must not explain it), or a
            Dataset / DataLoader (its first 32 samples; use ``torch.utils.data.Subset`` for others).
        target: ``"label"`` (the true class when known, else the prediction) or ``"prediction"`` (top-1).
        every_n_epochs: Run after validation when ``(epoch + 1) % every_n_epochs == 0``; at most once per epoch.
        metrics: Scores of the maps: ``"faithfulness"`` (Average Drop, Increase in Confidence, Coherency, Complexity,
            ADCC: one extra pass per method) and the perturbation curves ``"deletion_auc"``, ``"insertion_auc"``,
            ``"road"``, ``"road_morf"``, ``"road_lerf"``, and ``"arcc"`` (ADCC with ROAD in place of Average Drop) (many
            passes each). ``()``: maps only.
        alarm: The alarm policies checked after every run: ``ThresholdAlarm`` and
            ``ShortcutAlarm`` objects (default: nuisance-region and shortcut-score bounds
            and the per-class shortcut rule). None: no alarm.
        budget: Share of the training time the callback may take (None: no limit); expensive methods run less
            often to stay inside it, and the callback says so.
        on_error: A failure *during* training (a method or the model raising, every probe image failing, a write
            failing): ``"warn"`` reports it (a warning and ``<prefix>/errors``), switches the failing part off and
            training goes on; ``"raise"`` raises it. Bad arguments always raise before training starts.
        prefix: First part of every tag (``<prefix>/<method>/adcc``) and the folder of the files; give each
            monitor of one Trainer its own (e.g. one per target layer).
        step: The x-axis of everything logged: ``"global_step"`` (as Lightning logs ``val_loss``) or ``"epoch"``.
        report: Write ``<log_dir>/<prefix>/report.html`` at the end of fit/validate.
        explain_options: How maps are computed (``ExplainOptions``: batch size, method
            options, token layout, smoothing, output transform, precision, ...).
        style: How images are drawn (``ImageStyle``: normalisation to undo, colormap,
            opacity, images per grid, class names).

    Raises:
        ValueError: At construction for bad arguments; at ``setup`` (or the first validation) for a model, layer
            or probe set that cannot work: the setup runs every method on two probe images first.

    Examples:
        >>> from cam_callbacks import CAMMonitor, ExplainOptions, ImageStyle
        >>> monitor = CAMMonitor(
        ...     methods=["gradcam", "layercam"],
        ...     probe=16,
        ...     explain_options=ExplainOptions(batch_size=16),
        ...     style=ImageStyle(mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25]),
        ... )
        >>> monitor.methods
        ['gradcam', 'layercam']
        >>> trainer = pl.Trainer(callbacks=[monitor], max_epochs=10)  # doctest: +SKIP
    """

    def __init__(
        self,
        methods: Sequence[str] = ("gradcam", "gradcampp"),
        target_layer: LayersLike = "auto",
        probe: Union[int, ProbeLike] = 32,
        target: TargetMode = "label",
        every_n_epochs: int = 1,
        metrics: Sequence[str] = ("faithfulness",),
        alarm: Optional[Sequence[AlarmPolicy]] = DEFAULT_ALARM,
        budget: Optional[float] = 0.05,
        on_error: OnError = "warn",
        prefix: str = "cam",
        step: str = "global_step",
        report: bool = True,
        explain_options: Optional[ExplainOptions] = None,
        style: Optional[ImageStyle] = None,
    ) -> None:
        super().__init__()
        self.methods: List[str] = check_methods(methods)
        check_target_layer(target_layer)
        self.target_layer = target_layer
        self.num_probe, self._probe_source = check_probe(probe)
        self.target = check_choice("target", target, TARGET_CHOICES)
        self.every_n_epochs = check_positive_int("every_n_epochs", every_n_epochs)
        self.faithfulness, self.curves = check_metrics(metrics)
        self.alarm: Tuple[AlarmPolicy, ...] = check_alarm(alarm)
        self._budget_share = check_budget(budget)
        self.on_error = check_choice("on_error", on_error, ON_ERROR_CHOICES)
        self.prefix = check_prefix(prefix)
        self.step = check_choice("step", step, STEP_CHOICES)
        self.report = check_bool("report", report)
        self.options = check_explain_options(explain_options, self.methods)
        self.style = check_style(style)
        self._build_parts(self._probe_source)
        #: Seconds the phases of the last run took: ``compute`` (maps and scores), ``analyze`` (watch), ``log``, ``total``.
        self.last_timings: Dict[str, float] = {}

    def _build_parts(self, probe: Optional[ProbeLike]) -> None:
        """The parts that do the work (runner, history, alarm state, budget, logger) and the run state."""
        self._runner = ProbeRunner(
            self.methods,
            self.target_layer,
            self.target == "label",
            self.options,
            self.faithfulness,
            self._warn_once,
            display_mean=self.style.mean_values,
            display_std=self.style.std_values,
            curves=self.curves,
            class_names=self.style.class_names,
        )
        self._runner.probe = make_probe(probe, self.num_probe) if probe is not None else None
        expensive = [m for m in self.methods if is_expensive(m, self_smooth=self.options.smooth)]
        self._budget = CostBudget(self._budget_share, expensive=expensive)
        self._history = MapHistory()
        self._alarm_state = AlarmState()
        self._errors = ErrorReporter(self.on_error, self.prefix)
        self._logger = RunLogger(
            self._errors,
            self.prefix,
            self.style,
            self.methods,
            self.faithfulness,
            self.step,
            self.style.class_names,
            self.report,
        )
        self._trainer_ref: Optional["weakref.ReferenceType[pl.Trainer]"] = None
        self._pending_state: Optional[Dict[str, Any]] = None
        self._last_run: Optional[tuple] = None
        self._warned: Set[str] = set()
        self.last_hits: List[AlarmHit] = []  #: The alarm hits of the last run (per-class ones with class, region and evidence).

    def _start_afresh(self) -> None:
        """A new Trainer: nothing of the previous one's runs (last epoch, drift history, alarm, budget, failed parts) carries over."""
        rank_zero_info("CAMMonitor: used in a new Trainer; the previous fit's history (drift, alarm state, last run) is dropped")
        keep = self._runner.probe if self._probe_source is not None else None  # a probe taken from the old data is taken again
        self._build_parts(None)
        self._runner.probe = keep

    # ------------------------------------------------------------------ identity and properties
    @property
    @override
    def state_key(self) -> str:
        layers = self.target_layer if isinstance(self.target_layer, (list, tuple)) else [self.target_layer]
        names = [layer if isinstance(layer, str) else type(layer).__name__ for layer in layers]
        return self._generate_state_key(prefix=self.prefix, methods=self.methods, target_layer=names)

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
        if stage in ("test", "predict"):  # nothing runs there: no dry run that could end the user's test, one line instead
            message = (
                f"CAMMonitor runs at the end of validation epochs only (trainer.fit and trainer.validate), so trainer.{getattr(stage, 'value', stage)}() "
                "logs nothing from it; call trainer.validate(...) to explain the probe set with this model"
            )
            self._say_once(stage, message, warn=False)
            return
        self._say_when_nothing_runs(trainer, stage)
        check_strategy(trainer.strategy)
        check_unique_prefix(self, getattr(trainer, "callbacks", []))
        check_named_layers(pl_module, self.target_layer)
        if self._trainer_ref is not None and self._trainer_ref() is not trainer:
            self._start_afresh()
        self._trainer_ref = weakref.ref(trainer)
        if self.probe is None:
            self._set_probe(early_probe(trainer, stage, self.num_probe), trainer)
        if self.probe is not None:
            self._prepare(pl_module)

    def _say_once(self, key: str, message: str, warn: bool = True) -> None:
        if key not in self._warned:
            self._warned.add(key)
            (rank_zero_warn if warn else rank_zero_info)(message)

    def _say_when_nothing_runs(self, trainer: "pl.Trainer", stage: str) -> None:
        """Warn once when this fit or validate will never reach the monitor (so a user knows why nothing is logged)."""
        only = "and the monitor runs at the end of validation epochs only"
        why = None
        if trainer.limit_val_batches == 0:
            why = f"limit_val_batches={trainer.limit_val_batches} turns validation off, {only}"
        elif stage == "fit" and not _has_validation_data(trainer):
            why = f"this fit has no validation data (no val_dataloaders= and no val_dataloader()), {only}"
        elif stage == "fit" and trainer.max_epochs is not None and 0 <= trainer.max_epochs < self.every_n_epochs:
            why = f"every_n_epochs={self.every_n_epochs} makes the monitor run after epoch {self.every_n_epochs} first, but max_epochs={trainer.max_epochs}"
        if why is not None:
            self._say_once(f"nothing-runs-{why}", f"CAMMonitor: {why}: it logs nothing (maps, metrics, report) in this run")

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
            for message in uncomputed_bounds(self.alarm, self.faithfulness, self.curves):
                rank_zero_warn(message)
            if self._runner.layer_choice:
                where = "CAMMonitor(target_layer=..., explain_options=ExplainOptions(reshape=...))"
                rank_zero_warn(f"CAMMonitor: {self._runner.layer_choice} (in the monitor: {where})")
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
        self,
        pl_module: nn.Module,
        precision_plugin: Optional[Any] = None,
        rows: Optional[Tensor] = None,
        methods: Optional[Sequence[str]] = None,
    ) -> ScoredExplanation:
        """Maps and per-row faithfulness fractions (a ``ScoredExplanation``) for the probe set with the
        model as it is now; rows are the probe images, or one per positive label of multi-hot labels. ``precision_plugin``:
        a Lightning precision plugin to compute in (None: the model's own dtype); ``rows``, ``methods``: only these."""
        return self._runner.compute(pl_module, precision_plugin, rows, methods)

    def analyze(self, explanation: Explanation) -> Dict[str, MethodAnalysis]:
        """Localisation, shortcut and drift of each method's maps (see ``cam_callbacks.metrics.watch.analyze_maps``).

        Skipped rows (images the model cannot handle) are left out; per-image values and the grid
        order refer to probe rows, with NaN for skipped ones.
        """
        view = self._runner.view()
        outcome = probe_outcome(explanation, view, shortcut_policy(self.alarm))  # explained classes, right or wrong, confidence
        return self._history.analyze(explanation.maps, view.masks, view.nuisance, self._runner.skipped, **outcome)

    def run(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> Dict[str, float]:
        """Compute, check the alarm rule and log once for the current epoch; returns the logged scalars."""
        if self.probe is None or self._runner.layer_names is None:
            self.on_validation_start(trainer, pl_module)
        start = time.perf_counter()
        p = self.prefix
        result = self._runner.compute_contained(trainer, pl_module, self._budget, self._errors, self.compute)
        computed = time.perf_counter()
        message = self._runner.new_skips_message(trainer.current_epoch)
        if message:
            rank_zero_warn(message)
        explanation, analyses, hits, scores = None, {}, [], None
        scalars: Dict[str, float] = {}
        if result is not None:
            explanation, scores = result
            analyses = self._analyze_contained(explanation, trainer.current_epoch)
            scalars = run_scalars(scores, list(explanation.maps), analyses, p)
            per_image = {f"{p}/{m}/{metric}": values for m, a in analyses.items() for metric, values in a.per_image.items()}
            hits = threshold_hits(self.alarm, scalars, per_image)
            hits += self._shortcut_hits_contained(trainer, pl_module, analyses, scalars)
            if self.alarm:
                scalars[f"{p}/alarm"] = 1.0 if hits else 0.0
        scalars[f"{p}/skipped_images"] = float(len(self._runner.skipped))
        analyzed = time.perf_counter()
        scalars[f"{p}/time_s"] = analyzed - start  # the callback's own cost of this run (maps, metrics, watch)
        for message in self._budget.after_run(scalars[f"{p}/time_s"], trainer.state.fn == TrainerFn.FITTING):
            rank_zero_info(f"CAMMonitor: {message}")
        scalars.update({f"{p}/{m}/every_n_runs": float(self._budget.stride(m)) for m in self.methods if self._budget.stride(m) > 1})
        self.last_hits = hits
        self._log_everywhere(trainer, pl_module, explanation, scalars, analyses, hits, scores)
        end = time.perf_counter()
        self.last_timings = {"compute": computed - start, "analyze": analyzed - computed, "log": end - analyzed, "total": end - start}
        rank_zero_debug(f"CAMMonitor: epoch {trainer.current_epoch} explained in {end - start:.2f}s")
        return scalars

    def _analyze_contained(self, explanation: Explanation, epoch: int) -> Dict[str, MethodAnalysis]:
        try:
            return self.analyze(explanation)
        except Exception as error:
            if self.on_error == "raise":
                raise
            self._errors.report("the spurious-cue watch", error, "no localisation, drift or alarm for this run", epoch)
            return {}

    def _shortcut_hits_contained(
        self,
        trainer: "pl.Trainer",
        pl_module: "pl.LightningModule",
        analyses: Dict[str, MethodAnalysis],
        scalars: Dict[str, float],
    ) -> List[AlarmHit]:
        """The per-class rule's hits, its suspects confirmed by occlusion through the model with the monitor's own
        output transform and precision; a failure is reported like any other (no per-class alarm for this run)."""
        plugin = self._runner.precision_plugin(trainer)
        try:
            return shortcut_hits(
                shortcut_policy(self.alarm),
                analyses,
                pl_module,
                self._runner.view(),
                scalars,
                self.prefix,
                self.options,
                plugin,
            )
        except Exception as error:
            if self.on_error == "raise":
                raise
            self._errors.report("the per-class shortcut check", error, "no per-class alarm for this run", trainer.current_epoch)
            return []

    def _log_everywhere(
        self,
        trainer: "pl.Trainer",
        pl_module: "pl.LightningModule",
        explanation: Optional[Explanation],
        scalars: Dict[str, float],
        analyses: Dict[str, MethodAnalysis],
        hits: List[AlarmHit],
        scores: Optional[Scores] = None,
    ) -> None:
        """``callback_metrics`` on every process (for EarlyStopping/ModelCheckpoint), the alarm, the loggers on rank zero."""
        if trainer.is_global_zero:
            self._logger.collect_write_errors()  # failed writes of the last run are counted in this run's errors
        scalars[f"{self.prefix}/errors"] = float(self._errors.count)
        errors_tag = f"{self.prefix}/errors"
        for name, value in scalars.items():  # identical on every process (sync_dist keeps Lightning's DDP check quiet), except
            # the error count: image writes happen on rank zero only, so the largest count is the run's
            pl_module.log(
                name,
                value,
                on_step=False,
                on_epoch=True,
                logger=False,
                batch_size=len(self.probe or ()),
                sync_dist=trainer.world_size > 1,
                reduce_fx="max" if name == errors_tag else "mean",
            )
        self._raise_alarm(trainer, hits)
        if trainer.is_global_zero:
            config = f"target layer `{self.layer_name}`, methods {self.methods}, {len(self.probe or ())} probe images, target={self.target!r}"
            self._logger.log_run(trainer, self._runner.view(), explanation, scalars, analyses, hits, config, scores, self.probe)

    def _raise_alarm(self, trainer: "pl.Trainer", hits: List[AlarmHit]) -> None:
        change = self._alarm_state.update(hits)
        if change == "fired":
            rank_zero_warn(f"CAMMonitor alarm at epoch {trainer.current_epoch}: " + " ".join(hit.message for hit in hits))
        elif change == "cleared":
            rank_zero_info(f"CAMMonitor: the alarm cleared at epoch {trainer.current_epoch}")
        if any(policy.stop for policy in self.alarm) and trainer.state.fn == TrainerFn.FITTING:
            stop = trainer.strategy.reduce_boolean_decision(stops_training(self.alarm, hits), all=False)
            if stop:
                trainer.should_stop = True
                rank_zero_info("CAMMonitor: stopping training because an alarm with stop=True fired")

    # ------------------------------------------------------------------ end of fit / validate
    @override
    def on_train_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._budget.start()

    @override
    def on_fit_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._logger.flush()  # failed writes are reported, never raised (unless on_error="raise")
        self._logger.write_report(trainer) if trainer.is_global_zero else None

    @override
    def on_validation_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if trainer.state.fn != TrainerFn.FITTING:  # trainer.validate(): the images are complete when it returns
            self.on_fit_end(trainer, pl_module)

    @override
    def on_exception(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", exception: BaseException) -> None:
        try:  # Lightning's exception is the one the user must see: nothing from here may replace it
            self._logger.close()
        except Exception as error:  # noqa: BLE001 - said, not raised
            rank_zero_warn(f"CAMMonitor: could not finish writing images after the error above ({type(error).__name__}: {error})")

    @override
    def teardown(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        self._logger.close()  # every image is written when fit/validate returns; the thread ends

    # ------------------------------------------------------------------ checkpointing
    @override
    def state_dict(self) -> Dict[str, Any]:
        """Version, layer, last run, probe fingerprint (and tensors if given explicitly), first/previous maps, alarm state."""
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
        """Restore a checked ``state_dict`` (see ``cam_callbacks.callbacks.checkpoint``); unusable entries are reported."""
        problem = state_problem(state_dict)
        if problem is not None:
            consequence = "its history is not used: drift is measured afresh and the alarm state starts empty"
            self._errors.report("loading the checkpoint's CAMMonitor entry", ValueError(problem), consequence)
            self._reset_history()
            return
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
        images = self._runner.view().images
        shape = (images.shape[0], images.shape[-2], images.shape[-1])
        reason = history_mismatch(state, self.layer_name or "", self.probe.fingerprint(), shape, self.methods)
        if reason is not None:
            rank_zero_warn(f"CAMMonitor: {reason}; drift is measured from this run on and the alarm state starts afresh")
            self._reset_history()
            return
        self._history.load_state_dict(state, self.methods)
        self._alarm_state.load_state_dict(state)

    @override
    def on_load_checkpoint(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", checkpoint: Dict[str, Any]) -> None:
        entries = checkpoint.get("callbacks") or {}
        entry = entries.get(self.state_key)
        if isinstance(entry, dict) and not entry:
            self.load_state_dict(entry)  # Lightning calls load_state_dict only for a non-empty entry: an empty one is reported here
        elif entry is None:
            others = {getattr(cb, "state_key", None) for cb in getattr(trainer, "callbacks", []) if cb is not self}
            reason = self._other_configuration([key for key in entries if key not in others])
            if reason is not None:  # the state key holds methods and layer: Lightning alone only says "add the callbacks"
                rank_zero_warn(f"CAMMonitor: {reason}; drift is measured from this run on and the alarm state starts afresh")
                self._reset_history()

    def _other_configuration(self, keys: Sequence[Any]) -> Optional[str]:
        """Why this monitor's entry is not in a checkpoint that holds one of a monitor with the same prefix (None: none)."""
        mine = _state_key_fields(self.state_key, type(self).__qualname__)
        for key in keys:
            saved = _state_key_fields(key, type(self).__qualname__)
            if mine is None or saved is None or saved.get("prefix") != mine["prefix"]:
                continue
            changed = [f"{name} {saved.get(name)!r}, this monitor {mine[name]!r}" for name in ("methods", "target_layer") if saved.get(name) != mine[name]]
            if changed:
                return f"the checkpoint's CAMMonitor entry (prefix {mine['prefix']!r}) was saved with " + " and ".join(changed)
        return None

    def _reset_history(self) -> None:
        """Forget the drift history, the alarm state and the last run (a checkpoint entry that cannot be used)."""
        self._pending_state = None
        self._last_run = None
        self._history.load_state_dict({}, self.methods)
        self._alarm_state.load_state_dict({})


def _state_key_fields(key: Any, name: str) -> Optional[Dict[str, Any]]:
    """The fields of a ``state_key`` of class ``name`` (``CAMMonitor{'prefix': 'cam', 'methods': [...], ...}``), or None."""
    if not isinstance(key, str) or not key.startswith(name + "{"):
        return None
    try:
        fields = ast.literal_eval(key[len(name) :])
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    return fields if isinstance(fields, dict) and "prefix" in fields else None


def _has_validation_data(trainer: "pl.Trainer") -> bool:
    """Whether the fit has a validation data source (True when it cannot be told)."""
    try:
        return bool(trainer.fit_loop.epoch_loop.val_loop._data_source.is_defined())
    except Exception:  # noqa: BLE001 - a Lightning without this private attribute: assume there is validation
        return True
