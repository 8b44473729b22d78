"""Tiny LightningModules and data for the callback tests (CPU, seconds per fit), and the one way the tests fit:
:func:`fit` (seed, model, data, :func:`trainer`, ``Trainer.fit``)."""

from __future__ import annotations

import glob
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import pytorch_lightning as pl
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

NUM_CLASSES = 3


class TinyNet(pl.LightningModule):
    """Conv + BatchNorm + Dropout classifier with a GAP + linear head (CAM-compatible)."""

    def __init__(self, lr: float = 0.05, dropout: float = 0.3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 12, 3, padding=1),
            nn.BatchNorm2d(12),
            nn.ReLU(inplace=True),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(12, NUM_CLASSES)
        self.lr = lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(torch.flatten(self.pool(self.features(x)), 1)))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


def make_data(n: int = 48, size: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    images = torch.randn(n, 3, size, size, generator=g) * 0.5
    # a class-dependent bright blob, so there is something to learn and to explain
    images[labels == 0, 0, :6, :6] += 2.0
    images[labels == 1, 1, -6:, -6:] += 2.0
    images[labels == 2, 2, 5:11, 5:11] += 2.0
    return images, labels


def loaders(n_train: int = 48, n_val: int = 16, batch_size: int = 8):
    xt, yt = make_data(n_train, seed=0)
    xv, yv = make_data(n_val, seed=1)
    train = DataLoader(TensorDataset(xt, yt), batch_size=batch_size, shuffle=True)
    val = DataLoader(TensorDataset(xv, yv), batch_size=batch_size)
    return train, val


def trainer(tmp_path, callbacks: List[pl.Callback], **kwargs) -> pl.Trainer:
    options = dict(
        max_epochs=2,
        default_root_dir=str(tmp_path),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        log_every_n_steps=1,
        accelerator="cpu",
        devices=1,
    )
    options.update(kwargs)
    return pl.Trainer(callbacks=callbacks, **options)


def fit(
    root,
    callbacks: Union[None, pl.Callback, Sequence[pl.Callback]] = (),
    *,
    model: Union[pl.LightningModule, Callable[[], pl.LightningModule]] = TinyNet,
    seed: Optional[int] = 7,
    data: Optional[Sequence[DataLoader]] = None,
    n_train: int = 48,
    n_val: int = 16,
    ckpt_path: Optional[str] = None,
    **trainer_options,
) -> Tuple[pl.LightningModule, pl.Trainer]:
    """One fit, the way every callback test fits: returns ``(model, trainer)``.

    Args:
        root: The Trainer's ``default_root_dir`` (a test's ``tmp_path``: nothing is written elsewhere).
        callbacks: A callback, a list of them, or None.
        model: A LightningModule, or a class or function that builds one (called after seeding, so that its initial
            weights follow ``seed``).
        seed: ``pl.seed_everything(seed)`` first; None: the global RNG as it is.
        data: ``(train, val)`` loaders, ``(train,)``, or ``()`` for the module's own dataloaders; None:
            :func:`loaders` of ``n_train`` and ``n_val`` images.
        ckpt_path: Resume from this checkpoint.
        trainer_options: Passed to :func:`trainer` (``max_epochs`` is 2 unless given).
    """
    if seed is not None:
        pl.seed_everything(seed)
    module = model if isinstance(model, nn.Module) else model()
    if callbacks is None:
        callbacks = []
    elif isinstance(callbacks, pl.Callback):
        callbacks = [callbacks]
    fitted = trainer(root, list(callbacks), **trainer_options)
    fitted.fit(module, *(loaders(n_train, n_val) if data is None else data), ckpt_path=ckpt_path)
    return module, fitted


def read_events(root) -> Dict[str, Dict]:
    """All scalars (tag -> [(step, value)]), images (tag -> [steps]) and tensor tags of every event file under root."""
    scalars: Dict[str, list] = {}
    images: Dict[str, list] = {}
    tensors: Dict[str, list] = {}
    image_data: Dict[str, list] = {}
    for path in sorted(glob.glob(os.path.join(str(root), "**", "events.out.tfevents.*"), recursive=True)):
        acc = EventAccumulator(path, size_guidance={"images": 0, "scalars": 0, "tensors": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
        for tag in acc.Tags()["images"]:
            events = acc.Images(tag)
            images.setdefault(tag, []).extend(e.step for e in events)
            image_data.setdefault(tag, []).extend(events)
        for tag in acc.Tags()["tensors"]:
            tensors.setdefault(tag, []).extend(acc.Tensors(tag))
    return {"scalars": scalars, "images": images, "tensors": tensors, "image_data": image_data}


class CountTrainingBatches(pl.Callback):
    """Counts training batches: a refusal "before training" means ``batches == 0`` when the error reaches ``fit``."""

    def __init__(self) -> None:
        self.batches = 0

    def on_train_batch_start(self, *args, **kwargs) -> None:
        self.batches += 1


def fit_with_checkpoint(tmp_path, callbacks: List[pl.Callback], model=None, max_epochs: int = 2, ckpt_path=None, **kwargs) -> pl.Trainer:
    """A short fit of ``model`` (a new TinyNet) on 16 training and 8 validation images with a ``ModelCheckpoint(save_last=True)``
    into ``<tmp_path>/ckpt`` and, unless ``logger=`` is given, a TensorBoard and a CSV logger (both image destinations)."""
    from pytorch_lightning.callbacks import ModelCheckpoint
    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

    checkpoint = ModelCheckpoint(dirpath=os.path.join(str(tmp_path), "ckpt"), save_last=True, save_top_k=0)
    if "logger" not in kwargs:
        kwargs["logger"] = [TensorBoardLogger(str(tmp_path), name="tb", version=0), CSVLogger(str(tmp_path), name="csv", version=0)]
    fit = trainer(tmp_path, [*callbacks, checkpoint], max_epochs=max_epochs, enable_checkpointing=True, **kwargs)
    fit.fit(TinyNet() if model is None else model, *loaders(n_train=16, n_val=8), ckpt_path=ckpt_path)
    return fit


class FailingNet(TinyNet):
    """TinyNet that, once training has started (the dry run at setup passes), raises (``mode="raise"``) or returns NaN
    logits (``mode="nan"``) for images marked with 1000.0 at pixel (0, 0, 0); other images pass."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.armed = False

    def on_train_start(self) -> None:
        self.armed = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        marked = (x[:, 0, 0, 0] == 1000.0) & self.armed
        if self.mode == "raise" and bool(marked.any()):
            raise RuntimeError("the model cannot handle this image")
        logits = super().forward(x)
        if self.mode == "nan":
            logits = torch.where(marked[:, None], torch.full_like(logits, float("nan")), logits)
        return logits
