"""The Lightning layer: ``CAMMonitor`` and what it needs to run inside a Trainer (the probe set, the
runner with precision/DDP/bad-image handling, argument checks, loggers). The only layer that imports Lightning."""
