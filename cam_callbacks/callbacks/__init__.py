"""The Lightning layer: :class:`CAMMonitor` and what it needs to run inside a Trainer (the probe set, the
runner with precision/DDP/bad-image handling, argument checks, loggers). The only layer that imports Lightning."""

from cam_callbacks.callbacks.cam_monitor import CAMMonitor

__all__ = ["CAMMonitor"]
