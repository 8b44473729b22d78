"""Sending one run's scalars and images to the trainer's loggers.

Scalars go to every logger. Images go to each TensorBoard logger (PNG-encoded on a worker thread,
:mod:`cam_callbacks.callbacks.writer`), and as PNG files into the directory of every other logger
that has one (the trainer's ``default_root_dir`` without any logger).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Sequence, Set

from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor

from cam_callbacks.callbacks.writer import BackgroundWriter, add_png
from cam_callbacks.metrics.faithfulness import FAITHFULNESS_METRICS
from cam_callbacks.metrics.watch import MethodAnalysis
from cam_callbacks.monitor.alarm import AlarmHit, format_alarm
from cam_callbacks.render.png import save_pngs, save_text
from cam_callbacks.render.publish import to_uint8

__all__ = ["RunLogger", "RunSummary", "png_directories", "run_scalars"]


def png_directories(trainer: Any) -> List[str]:
    """Directories of the trainer's loggers that cannot show images (all but TensorBoard loggers), e.g. a CSVLogger's ``log_dir``.

    With no logger at all (``logger=False``) the trainer's ``default_root_dir`` is used, so grids are never lost.
    """
    loggers = list(trainer.loggers)
    if not loggers:
        return [str(trainer.default_root_dir)]
    directories = []
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            continue
        directory = getattr(logger, "log_dir", None) or getattr(logger, "save_dir", None)
        if directory and str(directory) not in directories:
            directories.append(str(directory))
    return directories


def run_scalars(scores: Mapping[str, Mapping[str, Tensor]], methods: Sequence[str], analyses: Mapping[str, MethodAnalysis]) -> Dict[str, float]:
    """The scalars of one run, by tag: each method's mean faithfulness in percent (NaN rows left out), then its watch values.

    Example::

        >>> import torch
        >>> scores = {"gradcam": {m: torch.tensor([0.5, float("nan")]) for m in FAITHFULNESS_METRICS}}
        >>> run_scalars(scores, ["gradcam"], {})["cam/gradcam/adcc"]
        50.0
    """
    scalars = {
        f"cam/{method}/{metric}": float(100.0 * scores[method][metric].double().nanmean())
        for method in methods
        for metric in (FAITHFULNESS_METRICS if scores else ())
    }
    for method, analysis in analyses.items():
        scalars.update({f"cam/{method}/{metric}": value for metric, value in analysis.scalars.items()})
    return scalars


class RunSummary(NamedTuple):
    """What the custom-scalars layout and the configuration text say about a monitor."""

    methods: Sequence[str]
    faithfulness: bool
    config: str


class RunLogger:
    """Logs the runs of one monitor: scalars everywhere, images where they can be shown, the layout once per writer."""

    def __init__(self) -> None:
        self.writer = BackgroundWriter()
        self._layout_written: Set[int] = set()
        self._alarm_logged: Dict[int, bool] = {}
        self._said: Set[str] = set()

    def log(
        self, trainer: Any, step: int, scalars: Dict[str, float], images: Callable[[], Dict[str, Dict[str, Tensor]]],
        hits: List[AlarmHit], summary: RunSummary,
    ) -> None:  # fmt: skip
        """Log one run at ``step``; ``images()`` builds ``{method: {name: (3, H, W) image}}`` when some logger takes images."""
        for logger in trainer.loggers:
            if scalars:
                logger.log_metrics(scalars, step=step)
        tensorboards = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        directories = png_directories(trainer)
        if not tensorboards and not directories:
            self._say_once("no-image-logger", "CAMMonitor: no logger with a directory; heatmap grids are not saved, scalars still are", warn=True)
            return
        built = images()
        alarm_text = format_alarm(hits, title=f"CAM alarm, epoch {step}")
        # PNG encoding is the slow part: it runs on a worker thread while training goes on
        as_bytes = {method: {name: to_uint8(image) for name, image in named.items()} for method, named in built.items()}
        for logger in tensorboards:
            self._log_tensorboard(logger.experiment, step, as_bytes, hits, alarm_text, summary)
        for directory in directories:
            self.writer.submit(save_pngs, directory, built, step)
            if hits:
                save_text(directory, f"alarm_epoch={step:04d}.md", alarm_text)
        if directories:
            self._say_once("png", f"CAMMonitor: heatmap grids are saved as PNG files under {[os.path.join(d, 'cam') for d in directories]}")

    def _log_tensorboard(
        self, writer: Any, step: int, images: Dict[str, Dict[str, Tensor]], hits: List[AlarmHit], alarm_text: str, summary: RunSummary
    ) -> None:
        self._write_layout(writer, summary)
        for method, named in images.items():
            for name, image in named.items():
                self.writer.submit(add_png, writer, f"cam/{method}/{name}", image, step)
        if hits or self._alarm_logged.get(id(writer)):
            writer.add_text("cam/alarm", alarm_text, global_step=step)
            self._alarm_logged[id(writer)] = bool(hits)

    def _write_layout(self, writer: Any, summary: RunSummary) -> None:
        if id(writer) in self._layout_written:
            return
        self._layout_written.add(id(writer))
        if summary.faithfulness:
            charts: Dict[str, List[Any]] = {"ADCC (all methods)": ["Multiline", [f"cam/{m}/adcc" for m in summary.methods]]}
            components = [k for k in FAITHFULNESS_METRICS if k != "adcc"]
            for method in summary.methods:
                charts[f"{method}: AD, IC, coherency, complexity"] = ["Multiline", [f"cam/{method}/{k}" for k in components]]
            writer.add_custom_scalars({"cam_callbacks": charts})
        writer.add_text("cam/config", summary.config, global_step=0)

    def _say_once(self, key: str, message: str, warn: bool = False) -> None:
        if key not in self._said:
            self._said.add(key)
            (rank_zero_warn if warn else rank_zero_info)(message)

    def flush(self) -> None:
        """Wait for every image write (re-raises the first error of one)."""
        self.writer.flush()

    def close(self) -> None:
        """Flush and stop the worker thread."""
        self.writer.close()
