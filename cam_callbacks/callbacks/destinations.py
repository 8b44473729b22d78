"""Where each of the trainer's loggers shows images, and the uploads to the loggers that keep images in their run.

- TensorBoard loggers (either Lightning namespace): images in the event file (``cam_callbacks.callbacks.loggers``).
- MLflow loggers: artifacts of the logger's run, ``<prefix>/<method>/<name>_epoch=0003.png`` (``mlflow_upload``);
  never files in the tracking store's root, which every run shares.
- Weights & Biases loggers: images of the run, key ``<prefix>/<method>/<name>`` (``wandb_upload``).
- Every other logger: PNG files in the run's own directory (``run_directory``): its ``log_dir`` (a CSVLogger's
  ``<save_dir>/<name>/version_<n>``), else ``<save_dir>/<name>/<version>``; a logger with neither gets no images.
- No logger at all: PNG files in the trainer's ``default_root_dir``.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, NamedTuple, Optional

from torch import Tensor

from cam_callbacks.callbacks.compat import is_mlflow, is_tensorboard, is_wandb


class Destinations(NamedTuple):
    """The trainer's loggers sorted by where their images go."""

    tensorboards: List[Any]
    mlflows: List[Any]
    wandbs: List[Any]
    directories: List[str]
    #: names of the loggers that get no images (no directory of their own)
    without_images: List[str]

    def any(self) -> bool:
        """Whether some destination takes images."""
        return bool(self.tensorboards or self.mlflows or self.wandbs or self.directories)


def _attribute(logger: Any, name: str) -> Any:
    try:
        return getattr(logger, name, None)
    except Exception:  # noqa: BLE001 - a property that needs a service that is not there: no such directory
        return None


def run_directory(logger: Any) -> Optional[str]:
    """The directory of ``logger``'s run alone: ``log_dir``, else ``<save_dir>/<name>/<version>``; None without one.

    ``save_dir`` alone is never used: it is shared by every run of that logger (two runs would overwrite each
    other's files). An integer version becomes ``version_<n>``, as Lightning's CSV and TensorBoard loggers name it.
    """
    log_dir = _attribute(logger, "log_dir")
    if log_dir:
        return str(log_dir)
    save_dir, name, version = (_attribute(logger, key) for key in ("save_dir", "name", "version"))
    if not save_dir or name is None or version is None or str(version) == "":
        return None
    return os.path.join(str(save_dir), str(name), f"version_{version}" if isinstance(version, int) else str(version))


def destinations(trainer: Any) -> Destinations:
    """Where the images of ``trainer``'s loggers go (``default_root_dir`` when it has no logger, so grids are never lost)."""
    found = Destinations([], [], [], [], [])
    loggers = list(trainer.loggers)
    if not loggers:
        found.directories.append(str(trainer.default_root_dir))
    for logger in loggers:
        if is_tensorboard(logger):
            found.tensorboards.append(logger)
        elif is_mlflow(logger):
            found.mlflows.append(logger)
        elif is_wandb(logger):
            found.wandbs.append(logger)
        else:
            directory = run_directory(logger)
            if directory is None:
                found.without_images.append(type(logger).__name__)
            elif directory not in found.directories:
                found.directories.append(directory)
    return found


def _hwc(image: Tensor) -> Any:
    """A ``(3, H, W)`` uint8 tensor as an ``(H, W, 3)`` numpy array."""
    return image.permute(1, 2, 0).contiguous().numpy()


def mlflow_upload(client: Any, run_id: str, images: Dict[str, Dict[str, Tensor]], step: int, prefix: str, alarm_text: str = "") -> None:
    """Log ``{method: {name: (3, H, W) uint8 image}}`` as artifacts of MLflow run ``run_id``:
    ``<prefix>/<method>/<name>_epoch=<step>.png``, and ``alarm_text`` (when given) as ``<prefix>/alarm_epoch=<step>.md``."""
    for method, named in images.items():
        for name, image in named.items():
            client.log_image(run_id, _hwc(image), artifact_file=f"{prefix}/{method}/{name}_epoch={step:04d}.png")
    if alarm_text:
        client.log_text(run_id, alarm_text + "\n", artifact_file=f"{prefix}/alarm_epoch={step:04d}.md")


def wandb_upload(logger: Any, images: Dict[str, Dict[str, Tensor]], step: int, prefix: str) -> None:
    """Log ``{method: {name: (3, H, W) uint8 image}}`` to a WandbLogger's run under ``<prefix>/<method>/<name>``, all in
    one history row at ``step`` (what ``WandbLogger.log_image`` does, for one key per call)."""
    import wandb

    logged = {f"{prefix}/{method}/{name}": [wandb.Image(_hwc(image))] for method, named in images.items() for name, image in named.items()}
    if logged:
        logger.log_metrics(logged, step=step)
