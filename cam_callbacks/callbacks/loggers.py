"""Sending one run's scalars and images to the trainer's loggers.

Scalars go to every logger. Images go where each logger's users look
(:mod:`cam_callbacks.callbacks.destinations`): TensorBoard's images, MLflow's run artifacts, W&B's run
media, and PNG files in the run directory of every other logger that has one (the trainer's
``default_root_dir`` without any logger). Encoding and uploads run on a worker thread
(:mod:`cam_callbacks.callbacks.writer`). A destination that fails (a
closed writer, a folder that cannot be written) is reported through the monitor's
:class:`~cam_callbacks.callbacks.errors.ErrorReporter` and not written to again; the others go on.
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
from cam_callbacks.engine.result import Explanation
from cam_callbacks.metrics.faithfulness import FAITHFULNESS_METRICS
from cam_callbacks.metrics.watch import MethodAnalysis
from cam_callbacks.monitor.alarm import AlarmHit, format_alarm
from cam_callbacks.render.png import save_pngs, save_text
from cam_callbacks.render.publish import ImageStyle, ProbeView, run_images, to_uint8

__all__ = ["RunLogger", "RunSummary", "run_scalars"]


#: TensorBoard writer -> the custom-scalars categories written to it so far (by every monitor)
_LAYOUTS: "weakref.WeakKeyDictionary[Any, Dict[str, Dict[str, List[Any]]]]" = weakref.WeakKeyDictionary()


def run_scalars(
    scores: Mapping[str, Mapping[str, Tensor]], methods: Sequence[str], analyses: Mapping[str, MethodAnalysis], prefix: str = "cam"
) -> Dict[str, float]:
    """The scalars of one run, by tag: each method's mean scores in percent (faithfulness, and the deletion/insertion and
    ROAD scores of ``CAMMonitor(curves=...)``; NaN rows left out), then its watch values.

    Example::

        >>> import torch
        >>> scores = {"gradcam": {m: torch.tensor([0.5, float("nan")]) for m in FAITHFULNESS_METRICS}}
        >>> run_scalars(scores, ["gradcam"], {})["cam/gradcam/adcc"]
        50.0
    """
    scalars = {
        f"{prefix}/{method}/{metric}": float(100.0 * values.double().nanmean())
        for method in methods
        for metric, values in scores.get(method, {}).items()
    }
    for method, analysis in analyses.items():
        scalars.update({f"{prefix}/{method}/{metric}": value for metric, value in analysis.scalars.items()})
    return scalars


class RunSummary(NamedTuple):
    """What the custom-scalars layout and the configuration text say about a monitor."""

    methods: Sequence[str]
    faithfulness: bool
    config: str


class RunLogger:
    """Logs the runs of one monitor: scalars everywhere, images where they can be shown, the layout once per writer.

    Args:
        errors: Where failures of a destination are reported.
        prefix: First part of every tag and the folder of the PNG files.
        style: How the images are drawn.
        methods: The monitor's methods (for the custom-scalars layout).
        faithfulness: Whether faithfulness is logged (for the layout).
    """

    def __init__(
        self, errors: ErrorReporter, prefix: str = "cam", style: Optional[ImageStyle] = None, methods: Sequence[str] = (),
        faithfulness: bool = True,
    ) -> None:  # fmt: skip
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
        self, trainer: Any, view: ProbeView, explanation: Optional[Explanation], scalars: Dict[str, float],
        analyses: Mapping[str, MethodAnalysis], hits: List[AlarmHit], config: str,
    ) -> None:  # fmt: skip
        """Log one run of the monitor at the current epoch: its scalars, and its images when it has an explanation."""
        summary = RunSummary(self.methods, self.faithfulness, config)
        style = self.style
        images = (lambda: run_images(view, explanation, dict(analyses), style)) if explanation is not None else dict
        self.log(trainer, trainer.current_epoch, scalars, images, hits, summary)

    def log(
        self, trainer: Any, step: int, scalars: Dict[str, float], images: Callable[[], Dict[str, Dict[str, Tensor]]],
        hits: List[AlarmHit], summary: RunSummary,
    ) -> None:  # fmt: skip
        """Log one run at ``step``; ``images()`` builds ``{method: {name: (3, H, W) image}}`` when some logger takes images."""
        self._step = step
        self.collect_write_errors()
        for logger in trainer.loggers:
            if scalars:
                self._safely(f"scalars of {type(logger).__name__}", "logging scalars", partial(logger.log_metrics, scalars, step=step))
        found = destinations(trainer)
        if found.without_images:
            self._say_once("without-images", f"CAMMonitor: {found.without_images} have no run directory of their own; "
                           "heatmap grids are not sent there (scalars are)", warn=True)  # fmt: skip
        if not found.any():
            self._say_once("no-image-logger", "CAMMonitor: no logger with a directory; heatmap grids are not saved, scalars still are", warn=True)
            return
        try:
            built = images()
            # PNG encoding is the slow part: it runs on a worker thread while training goes on
            as_bytes = {method: {name: to_uint8(image) for name, image in named.items()} for method, named in built.items()}
        except Exception as error:  # noqa: BLE001 - reported; scalars are logged, images resume next run
            self.errors.report("drawing the images", error, "no images for this run", step)
            return
        alarm_text = format_alarm(hits, title=f"CAM alarm, epoch {step}")
        for logger in found.tensorboards:
            key = f"TensorBoard {logger.log_dir}"
            self._safely(key, "logging to TensorBoard", partial(self._log_tensorboard, key, logger, step, as_bytes, hits, alarm_text, summary))
        self._log_uploads(found, step, as_bytes, alarm_text if hits else "")
        for directory in found.directories:
            self._log_directory(directory, step, built, hits, alarm_text)
        if found.directories:
            self._say_once("png", f"CAMMonitor: heatmap grids are saved as PNG files under {[os.path.join(d, self.prefix) for d in found.directories]}")

    def _log_uploads(self, found: Destinations, step: int, images: Dict[str, Dict[str, Tensor]], alarm_text: str) -> None:
        """MLflow runs get the grids as artifacts, W&B runs as images; uploads run on the worker thread."""
        for logger in found.mlflows:
            key = f"MLflow run of {type(logger).__name__} {id(logger):x}"

            def submit(logger: Any = logger, key: str = key) -> None:
                client, run_id = logger.experiment, logger.run_id  # resolved here: Lightning creates the run lazily
                self.writer.submit(key, mlflow_upload, client, run_id, images, step, self.prefix, alarm_text)

            self._safely(key, "logging images to MLflow", submit)
        for logger in found.wandbs:
            key = f"W&B run of {type(logger).__name__} {id(logger):x}"
            self._safely(key, "logging images to W&B", partial(self.writer.submit, key, wandb_upload, logger, images, step, self.prefix))

    def _log_directory(self, directory: str, step: int, built: Dict[str, Dict[str, Tensor]], hits: List[AlarmHit], alarm_text: str) -> None:
        key = f"folder {os.path.join(directory, self.prefix)}"
        if key in self._failed:
            return
        self.writer.submit(key, save_pngs, directory, built, step, self.prefix)
        if hits:
            self._safely(key, "writing the alarm text", lambda: save_text(directory, f"alarm_epoch={step:04d}.md", alarm_text, self.prefix))

    def _log_tensorboard(
        self, key: str, logger: Any, step: int, images: Dict[str, Dict[str, Tensor]], hits: List[AlarmHit], alarm_text: str,
        summary: RunSummary,
    ) -> None:  # fmt: skip
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
        if summary.faithfulness:
            charts: Dict[str, List[Any]] = {"ADCC (all methods)": ["Multiline", [f"{p}/{m}/adcc" for m in summary.methods]]}
            components = [k for k in FAITHFULNESS_METRICS if k != "adcc"]
            for method in summary.methods:
                charts[f"{method}: AD, IC, coherency, complexity"] = ["Multiline", [f"{p}/{method}/{k}" for k in components]]
            # one layout per writer: monitors that share a writer (several prefixes) write the union of their categories
            layout = _LAYOUTS.setdefault(writer, {})
            layout["cam_callbacks" if p == "cam" else f"cam_callbacks ({p})"] = charts
            writer.add_custom_scalars(dict(layout))
        writer.add_text(f"{p}/config", summary.config, global_step=0)

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
