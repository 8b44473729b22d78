"""Sending one run's scalars and images to the trainer's loggers.

Scalars go to every logger. Images go where each logger's users look
(``cam_callbacks.callbacks.destinations``): TensorBoard's images, MLflow's run artifacts, W&B's run
media, and PNG files in the run directory of every other logger that has one (the trainer's
``default_root_dir`` without any logger). Encoding and uploads run on a worker thread
(``cam_callbacks.callbacks.writer``). A destination that fails (a
closed writer, a folder that cannot be written) is reported through the monitor's
``ErrorReporter`` and not written to again; the others go on.
"""

from __future__ import annotations

import os
import weakref
from functools import partial
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence, Set

from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor

from cam_callbacks.callbacks.destinations import Destinations, destinations, mlflow_upload, wandb_upload
from cam_callbacks.callbacks.errors import ErrorReporter
from cam_callbacks.callbacks.writer import BackgroundWriter, add_png
from cam_callbacks.engine.result import Explanation, ProbeView, Scores
from cam_callbacks.metrics.faithfulness import FAITHFULNESS_METRICS
from cam_callbacks.metrics.watch import MethodAnalysis
from cam_callbacks.monitor.alarm import AlarmHit, format_alarm
from cam_callbacks.render.evolution import MapStrip
from cam_callbacks.render.png import save_pngs, save_text
from cam_callbacks.render.publish import RunInfo, evidence_grid, run_images, to_uint8
from cam_callbacks.render.report import RunReport, find_class_names, how_to_read
from cam_callbacks.render.style import ImageStyle

#: ``step=`` of ``CAMMonitor``: the x-axis of everything logged.
STEP_CHOICES = ("global_step", "epoch")


#: TensorBoard writer -> the custom-scalars categories written to it so far (by every monitor)
_LAYOUTS: "weakref.WeakKeyDictionary[Any, Dict[str, Dict[str, List[Any]]]]" = weakref.WeakKeyDictionary()


def lightning_step(trainer: Any) -> int:
    """The step Lightning logs ``self.log`` validation metrics at (``val_loss``): its fit loop's count of optimizer
    steps taken (``fit_loop.epoch_loop._batches_that_stepped``, which Lightning's logger connector uses), else
    ``trainer.global_step``. At the end-of-epoch validation it is one less than ``global_step``."""
    loop = getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None)
    value = getattr(loop, "_batches_that_stepped", None)
    return value if isinstance(value, int) and not isinstance(value, bool) else int(trainer.global_step)


def run_scalars(
    scores: Mapping[str, Mapping[str, Tensor]], methods: Sequence[str], analyses: Mapping[str, MethodAnalysis], prefix: str = "cam"
) -> Dict[str, float]:
    """The scalars of one run, by tag: each method's mean scores as fractions (faithfulness, and the deletion/insertion
    and ROAD scores of ``CAMMonitor(metrics=...)``; NaN rows left out), then its watch values.

    Example::

        >>> import torch
        >>> scores = {"gradcam": {m: torch.tensor([0.5, float("nan")]) for m in FAITHFULNESS_METRICS}}
        >>> run_scalars(scores, ["gradcam"], {})["cam/gradcam/adcc"]
        0.5
    """
    scalars = {f"{prefix}/{method}/{metric}": float(values.double().nanmean()) for method in methods for metric, values in scores.get(method, {}).items()}
    for method, analysis in analyses.items():
        scalars.update({f"{prefix}/{method}/{metric}": value for metric, value in analysis.scalars.items()})
    return scalars


class RunSummary(NamedTuple):
    """What the custom-scalars layout and the configuration text say about a monitor."""

    methods: Sequence[str]
    faithfulness: bool
    config: str
    how_to_read: str = ""


class RunLogger:
    """Logs the runs of one monitor: scalars everywhere, images where they can be shown, the layout once per writer.

    Args:
        errors: Where failures of a destination are reported.
        prefix: First part of every tag and the folder of the PNG files.
        style: How the images are drawn.
        methods: The monitor's methods (for the custom-scalars layout).
        faithfulness: Whether faithfulness is logged (for the layout).
        step: ``"global_step"`` (the x-axis of Lightning's own metrics) or ``"epoch"``.
        class_names: Names of the classes for the captions (None: looked up on the datamodule / dataset).
        report: Keep what ``<log_dir>/<prefix>/report.html`` needs and write it in ``write_report``.
    """

    def __init__(
        self,
        errors: ErrorReporter,
        prefix: str = "cam",
        style: Optional[ImageStyle] = None,
        methods: Sequence[str] = (),
        faithfulness: bool = True,
        step: str = "global_step",
        class_names: Optional[Sequence[str]] = None,
        report: bool = True,
    ) -> None:
        self.writer = BackgroundWriter()
        self.errors = errors
        self.prefix = prefix
        self.style = style or ImageStyle()
        self.methods = list(methods)
        self.faithfulness = faithfulness
        self._layout_written: Set[int] = set()
        self._alarm_logged: Dict[int, bool] = {}
        self._said: Set[str] = set()
        self._failed: Set[str] = set()  # destinations that failed once: not written to again
        self._step = 0
        self.step_mode, self.class_names = step, class_names
        self.strip = MapStrip()
        self.report: Optional[RunReport] = RunReport() if report else None
        self._names: Optional[List[str]] = None
        self._how_to = self._config = ""

    def _safely(self, key: str, what: str, action: Callable[[], Any]) -> None:
        """``action()`` unless ``key`` failed before; a failure is reported and ``key`` switched off."""
        if key in self._failed:
            return
        try:
            action()
        except Exception as error:  # noqa: BLE001 - reported; the other destinations go on
            self._fail(key, what, error)

    def _fail(self, key: str, what: str, error: BaseException) -> None:
        self._failed.add(key)
        self.errors.report(what, error, f"nothing more is written there ({key})", self._step)

    def collect_write_errors(self) -> None:
        """Report the image writes that failed on the worker thread, and stop writing where they failed."""
        for failed in self.writer.take_errors():
            if failed.key not in self._failed:
                self._fail(failed.key, "writing images", failed.error)

    def log_run(
        self,
        trainer: Any,
        view: ProbeView,
        explanation: Optional[Explanation],
        scalars: Dict[str, float],
        analyses: Mapping[str, MethodAnalysis],
        hits: List[AlarmHit],
        config: str,
        scores: Optional[Scores] = None,
        probe: Any = None,
    ) -> None:
        """Log one run of the monitor at the global step (or epoch): its scalars, and its images when it has an explanation.
        The captions show ``probe.labels`` also when the predictions are explained (``target="prediction"``)."""
        labels = getattr(probe, "labels", None)
        if view.targets is None and view.probability == "softmax" and labels is not None and labels.dim() == 1:
            view = view._replace(targets=labels)
        epoch = trainer.current_epoch
        step = lightning_step(trainer) if self.step_mode == "global_step" else epoch
        x_axis = "global step" if self.step_mode == "global_step" else "epoch"
        if explanation is not None and self._names is None:
            self._names = self._find_names(trainer, explanation.logits.shape[1])
        self._config = config
        self._how_to = how_to_read(self.prefix, self.methods, config, x_axis, view.masks is not None, view.nuisance is not None)
        summary = RunSummary(self.methods, self.faithfulness, config, self._how_to)
        style, info = self.style, RunInfo(scores, self._names, f"{'ep' if self.step_mode == 'epoch' else 'step'} {step}", self.strip)
        images = (lambda: run_images(view, explanation, dict(analyses), style, info)) if explanation is not None else dict
        self.log(trainer, step, scalars, images, hits, summary, epoch=epoch)
        if self.report is not None:
            self.report.add_run(step, epoch, scalars)
            if hits and explanation is not None:
                self._safely("alarm evidence", "drawing the alarm evidence", lambda: self._evidence(step, epoch, view, explanation, analyses, hits, info))

    def _evidence(
        self, step: int, epoch: int, view: ProbeView, explanation: Explanation, analyses: Mapping[str, MethodAnalysis], hits: List[AlarmHit], info: RunInfo
    ) -> None:
        evidence = {}
        for hit in hits:
            if hit.method in analyses and hit.worst and f"{hit.method}: {hit.metric}" not in evidence:
                grid = evidence_grid(view, explanation, hit.method, analyses[hit.method], self.style, info, hit.worst)
                if grid is not None:
                    evidence[f"{hit.method}: {hit.metric}"] = to_uint8(grid)
        assert self.report is not None
        self.report.add_alarm(step, epoch, hits, evidence)

    def _find_names(self, trainer: Any, num_classes: int) -> Optional[List[str]]:
        loaders = getattr(trainer, "val_dataloaders", None)
        loaders = loaders if isinstance(loaders, (list, tuple)) else [loaders]
        sources = [getattr(trainer, "datamodule", None)] + [getattr(loader, "dataset", None) for loader in loaders]
        names, problem = find_class_names(self.class_names, [s for s in sources if s is not None], num_classes)
        if problem:
            self._say_once("class-names", f"CAMMonitor: {problem}", warn=True)
        return names

    def write_report(self, trainer: Any) -> Optional[str]:
        """Write ``<log_dir>/<prefix>/report.html`` (the first TensorBoard logger's or other run directory; with only
        MLflow / W&B loggers an artifact of the MLflow run, or a file of the W&B run) after ``flush``; returns its
        path, or None when the report is off, nothing ran, or writing failed (reported)."""
        if self.report is None or not self.report.runs:
            return None
        found = destinations(trainer)
        directories = [str(logger.log_dir) for logger in found.tensorboards] + found.directories
        x_axis = "global step" if self.step_mode == "global_step" else "epoch"
        written: List[str] = []

        def write() -> None:
            if directories:
                written.append(self.report.write(directories[0], self.prefix, self._config, self._how_to, x_axis))  # type: ignore[union-attr]
            elif found.mlflows:
                import tempfile

                with tempfile.TemporaryDirectory() as folder:
                    path = self.report.write(folder, self.prefix, self._config, self._how_to, x_axis)  # type: ignore[union-attr]
                    logger = found.mlflows[0]
                    logger.experiment.log_artifact(logger.run_id, path, artifact_path=self.prefix)
                    written.append(f"{self.prefix}/report.html (artifact of MLflow run {logger.run_id})")
            elif found.wandbs:
                written.append(self.report.write(found.wandbs[0].experiment.dir, self.prefix, self._config, self._how_to, x_axis))  # type: ignore[union-attr]

        self._safely("report", "writing the HTML report", write)
        if written:
            self._say_once("report", f"CAMMonitor: report written to {written[0]}")
        return written[0] if written else None

    def log(
        self,
        trainer: Any,
        step: int,
        scalars: Dict[str, float],
        images: Callable[[], Dict[str, Dict[str, Tensor]]],
        hits: List[AlarmHit],
        summary: RunSummary,
        epoch: Optional[int] = None,
    ) -> None:
        """Log one run at ``step``; ``images()`` builds ``{method: {name: (3, H, W) image}}`` when some logger takes images.
        File and artifact names carry ``epoch`` (default: ``step``)."""
        self._step = step
        epoch = step if epoch is None else epoch
        self.collect_write_errors()
        for logger in trainer.loggers:
            if scalars:
                self._safely(f"scalars of {type(logger).__name__}", "logging scalars", partial(logger.log_metrics, scalars, step=step))
        found = destinations(trainer)
        if found.without_images:
            self._say_once(
                "without-images",
                f"CAMMonitor: {found.without_images} have no run directory of their own; heatmap grids are not sent there (scalars are)",
                warn=True,
            )
        if not found.any():
            self._say_once("no-image-logger", "CAMMonitor: no logger with a directory; heatmap grids are not saved, scalars still are", warn=True)
            return
        try:
            built = images()
            # PNG encoding is the slow part: it runs on a worker thread while training goes on
            as_bytes = {method: {name: to_uint8(image) for name, image in named.items()} for method, named in built.items()}
            if self.report is not None and as_bytes:  # a run without maps keeps the last images that had them
                self.report.last_images = as_bytes
        except Exception as error:  # noqa: BLE001 - reported; scalars are logged, images resume next run
            self.errors.report("drawing the images", error, "no images for this run", step)
            return
        alarm_text = format_alarm(hits, title=f"CAM alarm, epoch {epoch}" + (f" (step {step})" if step != epoch else ""))
        for logger in found.tensorboards:
            key = f"TensorBoard {logger.log_dir}"
            self._safely(key, "logging to TensorBoard", partial(self._log_tensorboard, key, logger, step, as_bytes, hits, alarm_text, summary))
        self._log_uploads(found, step, as_bytes, alarm_text if hits else "", epoch)
        for directory in found.directories:
            self._log_directory(directory, epoch, built, hits, alarm_text)
        if found.directories:
            self._say_once("png", f"CAMMonitor: heatmap grids are saved as PNG files under {[os.path.join(d, self.prefix) for d in found.directories]}")

    def _log_uploads(self, found: Destinations, step: int, images: Dict[str, Dict[str, Tensor]], alarm_text: str, epoch: int) -> None:
        """MLflow runs get the grids as artifacts, W&B runs as images; uploads run on the worker thread."""
        for logger in found.mlflows:
            key = f"MLflow run of {type(logger).__name__} {id(logger):x}"

            def submit(logger: Any = logger, key: str = key) -> None:
                client, run_id = logger.experiment, logger.run_id  # resolved here: Lightning creates the run lazily
                self.writer.submit(key, mlflow_upload, client, run_id, images, epoch, self.prefix, alarm_text)

            self._safely(key, "logging images to MLflow", submit)
        for logger in found.wandbs:
            key = f"W&B run of {type(logger).__name__} {id(logger):x}"
            self._safely(key, "logging images to W&B", partial(self.writer.submit, key, wandb_upload, logger, images, step, self.prefix))

    def _log_directory(self, directory: str, epoch: int, built: Dict[str, Dict[str, Tensor]], hits: List[AlarmHit], alarm_text: str) -> None:
        key = f"folder {os.path.join(directory, self.prefix)}"
        if key in self._failed:
            return
        self.writer.submit(key, save_pngs, directory, built, epoch, self.prefix)
        if hits:
            self._safely(key, "writing the alarm text", lambda: save_text(directory, f"alarm_epoch={epoch:04d}.md", alarm_text, self.prefix))

    def _log_tensorboard(
        self,
        key: str,
        logger: Any,
        step: int,
        images: Dict[str, Dict[str, Tensor]],
        hits: List[AlarmHit],
        alarm_text: str,
        summary: RunSummary,
    ) -> None:
        writer = logger.experiment
        self._write_layout(writer, summary)
        for method, named in images.items():
            for name, image in named.items():
                self.writer.submit(key, add_png, writer, f"{self.prefix}/{method}/{name}", image, step)
        if hits or self._alarm_logged.get(id(writer)):
            writer.add_text(f"{self.prefix}/alarm", alarm_text, global_step=step)
            self._alarm_logged[id(writer)] = bool(hits)
        for message in self.errors.take_messages():
            writer.add_text(f"{self.prefix}/errors", message, global_step=step)

    def _write_layout(self, writer: Any, summary: RunSummary) -> None:
        if id(writer) in self._layout_written:
            return
        self._layout_written.add(id(writer))
        p = self.prefix
        where = "" if p == "cam" else f" [{p}]"
        if summary.faithfulness:
            charts: Dict[str, List[Any]] = {f"ADCC{where}: {', '.join(summary.methods)}": ["Multiline", [f"{p}/{m}/adcc" for m in summary.methods]]}
            components = [k for k in FAITHFULNESS_METRICS if k != "adcc"]
            for method in summary.methods:
                charts[f"{method}{where}: AD, IC, coherency, complexity"] = ["Multiline", [f"{p}/{method}/{k}" for k in components]]
            # one layout per writer: monitors that share a writer (several prefixes) write the union of their categories
            layout = _LAYOUTS.setdefault(writer, {})
            layout["cam_callbacks" if p == "cam" else f"cam_callbacks ({p})"] = charts
            writer.add_custom_scalars(dict(layout))
        writer.add_text(f"{p}/config", summary.config, global_step=0)
        if summary.how_to_read:
            writer.add_text(f"{p}/how_to_read", summary.how_to_read, global_step=0)

    def _say_once(self, key: str, message: str, warn: bool = False) -> None:
        if key not in self._said:
            self._said.add(key)
            (rank_zero_warn if warn else rank_zero_info)(message)

    def flush(self) -> None:
        """Wait for every image write; failures are reported (never raised, unless ``on_error="raise"``)."""
        self.writer.flush()
        self.collect_write_errors()

    def close(self) -> None:
        """Flush and stop the worker thread."""
        try:
            self.writer.close()
        finally:
            self.collect_write_errors()
