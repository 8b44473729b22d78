"""The two namespaces that ship Lightning: ``pytorch_lightning`` (the ``pytorch-lightning`` package) and
``lightning.pytorch`` (the ``lightning`` package, ``import lightning as L``).

They are the same code under two names, but their classes are distinct: a ``pytorch_lightning.Callback``
is not a ``lightning.pytorch.Callback`` (each LightningCLI rejects the other's callbacks) and
``isinstance(logger, pytorch_lightning.loggers.TensorBoardLogger)`` is False for the other's logger.
``CALLBACK_BASES`` and ``TENSORBOARD_LOGGERS`` hold the classes of every namespace installed,
so that one ``CAMMonitor`` is a callback of both and recognises the TensorBoard loggers of both;
``MLFLOW_LOGGERS`` and ``WANDB_LOGGERS`` likewise. Importing the logger classes needs neither
``mlflow`` nor ``wandb`` (Lightning imports them when a logger is created); a Lightning without them
simply contributes no class.
"""

from __future__ import annotations

from typing import Any, List, Tuple, Type

import pytorch_lightning
from pytorch_lightning.loggers import TensorBoardLogger


def _other_namespace() -> Tuple[List[Type[Any]], List[Type[Any]], List[str]]:
    try:
        import lightning.pytorch as lightning_pytorch
        from lightning.pytorch.loggers import TensorBoardLogger as LightningTensorBoardLogger
    except ImportError:  # only pytorch-lightning is installed
        return [], [], []
    return [lightning_pytorch.Callback], [LightningTensorBoardLogger], ["lightning.pytorch"]


def _logger_classes(name: str) -> Tuple[Type[Any], ...]:
    """The logger class ``name`` (e.g. ``"MLFlowLogger"``) of every installed namespace that has it."""
    import importlib

    classes = []
    for namespace in ("pytorch_lightning", "lightning.pytorch"):
        try:
            classes.append(getattr(importlib.import_module(f"{namespace}.loggers"), name))
        except (ImportError, AttributeError):  # namespace not installed, or a Lightning without that logger
            continue
    return tuple(classes)


_callbacks, _tensorboards, _names = _other_namespace()

#: ``Callback`` of every installed namespace: CAMMonitor derives from all of them.
CALLBACK_BASES: Tuple[Type[Any], ...] = tuple(dict.fromkeys((pytorch_lightning.Callback, *_callbacks)))  # distinct classes
#: ``TensorBoardLogger`` of every installed namespace.
TENSORBOARD_LOGGERS: Tuple[Type[Any], ...] = (TensorBoardLogger, *_tensorboards)
#: ``MLFlowLogger`` of every installed namespace (``mlflow`` itself need not be installed).
MLFLOW_LOGGERS: Tuple[Type[Any], ...] = _logger_classes("MLFlowLogger")
#: ``WandbLogger`` of every installed namespace (``wandb`` itself need not be installed).
WANDB_LOGGERS: Tuple[Type[Any], ...] = _logger_classes("WandbLogger")
#: The namespaces found, e.g. ``("pytorch_lightning", "lightning.pytorch")``.
NAMESPACES: Tuple[str, ...] = ("pytorch_lightning", *_names)


def is_tensorboard(logger: Any) -> bool:
    """Whether ``logger`` is a TensorBoard logger of either namespace (its images go to TensorBoard, not to PNG files)."""
    return isinstance(logger, TENSORBOARD_LOGGERS)


def is_mlflow(logger: Any) -> bool:
    """Whether ``logger`` is an MLflow logger of either namespace (its images go to the run's artifacts)."""
    return isinstance(logger, MLFLOW_LOGGERS)


def is_wandb(logger: Any) -> bool:
    """Whether ``logger`` is a Weights & Biases logger of either namespace (its images go to the run's media)."""
    return isinstance(logger, WANDB_LOGGERS)


def callback_base() -> Type[Any]:
    """One class deriving from the ``Callback`` of every installed namespace (just ``pytorch_lightning.Callback`` when
    ``lightning`` is not installed): a subclass is accepted by both Trainers and both LightningCLIs."""
    if len(CALLBACK_BASES) == 1:
        return CALLBACK_BASES[0]
    return type("LightningCallback", CALLBACK_BASES, {"__module__": __name__, "__doc__": callback_base.__doc__})
