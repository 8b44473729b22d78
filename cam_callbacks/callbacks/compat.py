"""The two namespaces that ship Lightning: ``pytorch_lightning`` (the ``pytorch-lightning`` package) and
``lightning.pytorch`` (the ``lightning`` package, ``import lightning as L``).

They are the same code under two names, but their classes are distinct: a ``pytorch_lightning.Callback``
is not a ``lightning.pytorch.Callback`` (each LightningCLI rejects the other's callbacks) and
``isinstance(logger, pytorch_lightning.loggers.TensorBoardLogger)`` is False for the other's logger.
:data:`CALLBACK_BASES` and :data:`TENSORBOARD_LOGGERS` hold the classes of every namespace installed,
so that one ``CAMMonitor`` is a callback of both and recognises the TensorBoard loggers of both.
"""

from __future__ import annotations

from typing import Any, List, Tuple, Type

import pytorch_lightning
from pytorch_lightning.loggers import TensorBoardLogger

__all__ = ["CALLBACK_BASES", "NAMESPACES", "TENSORBOARD_LOGGERS", "callback_base", "is_tensorboard"]


def _other_namespace() -> Tuple[List[Type[Any]], List[Type[Any]], List[str]]:
    try:
        import lightning.pytorch as lightning_pytorch
        from lightning.pytorch.loggers import TensorBoardLogger as LightningTensorBoardLogger
    except ImportError:  # only pytorch-lightning is installed
        return [], [], []
    return [lightning_pytorch.Callback], [LightningTensorBoardLogger], ["lightning.pytorch"]


_callbacks, _tensorboards, _names = _other_namespace()

#: ``Callback`` of every installed namespace: CAMMonitor derives from all of them.
CALLBACK_BASES: Tuple[Type[Any], ...] = (pytorch_lightning.Callback, *_callbacks)
#: ``TensorBoardLogger`` of every installed namespace.
TENSORBOARD_LOGGERS: Tuple[Type[Any], ...] = (TensorBoardLogger, *_tensorboards)
#: The namespaces found, e.g. ``("pytorch_lightning", "lightning.pytorch")``.
NAMESPACES: Tuple[str, ...] = ("pytorch_lightning", *_names)


def is_tensorboard(logger: Any) -> bool:
    """Whether ``logger`` is a TensorBoard logger of either namespace (its images go to TensorBoard, not to PNG files)."""
    return isinstance(logger, TENSORBOARD_LOGGERS)


def callback_base() -> Type[Any]:
    """One class deriving from the ``Callback`` of every installed namespace (just ``pytorch_lightning.Callback`` when
    ``lightning`` is not installed): a subclass is accepted by both Trainers and both LightningCLIs."""
    if len(CALLBACK_BASES) == 1:
        return CALLBACK_BASES[0]
    return type("LightningCallback", CALLBACK_BASES, {"__module__": __name__, "__doc__": callback_base.__doc__})
