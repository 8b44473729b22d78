"""Train a small CNN on generated shape images and watch its class activation maps in TensorBoard.

The README's main example. Each image shows one coloured shape (disc, square, triangle, cross) on a
textured background; the class is the shape. :class:`CAMMonitor` (settings: :data:`MONITOR`) explains
a fixed probe set of validation images after every validation epoch and logs heatmap grids and
faithfulness curves (``cam/<method>/...``)::

    python examples/train_shapes.py                      # 10 epochs, logs to runs/shapes
    python examples/train_shapes.py --max-epochs 3 --logdir /tmp/runs
    tensorboard --logdir runs --samples_per_plugin images=100

The same model and data with Lightning's command line (``LightningCLI``; needs
``pip install "jsonargparse[signatures]"``) when the first argument is a subcommand::

    python examples/train_shapes.py fit --config configs/shapes.yaml
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.loggers import TensorBoardLogger
from torch import Tensor, nn
from torch.utils.data import DataLoader

import cam_callbacks as cc
from cam_callbacks.datasets import SHAPE_NAMES, SHAPES_MEAN, SHAPES_STD, ShapesDataset

# The callback: what CAMMonitor does in this example (configs/shapes.yaml repeats it for LightningCLI).
# Everything not set here is CAMMonitor's default: explain the true label, faithfulness metrics on,
# 16 images per grid.

MONITOR: Dict[str, Any] = dict(
    methods=["gradcam", "gradcampp"],  # --methods
    target_layer="features.block4",  # ShapesClassifier's last conv block: 6x6 maps for 48x48 images
    probe=32,  # --num-probe: the first 32 validation images, the same ones every epoch
    every_n_epochs=1,  # --every-n-epochs
    # how ShapesDataset normalises: the grids show the images in their real colours (class names come from the data)
    style=cc.ImageStyle(mean=SHAPES_MEAN, std=SHAPES_STD),
)


def make_monitor(**overrides: Any) -> "cc.CAMMonitor":
    """:class:`CAMMonitor` with :data:`MONITOR`'s settings; keyword arguments replace or add settings."""
    return cc.CAMMonitor(**{**MONITOR, **overrides})


# The training run: model, data, callback, TensorBoard logger.


def _train(args: argparse.Namespace) -> Dict[str, Any]:
    """One run with the command-line settings; returns the log directory, final metrics and wall time."""
    start = time.perf_counter()
    pl.seed_everything(args.seed, workers=True)
    data = ShapesDataModule(
        num_train=args.num_train,
        num_val=args.num_val,
        image_size=args.image_size,
        num_classes=args.num_classes,
        batch_size=args.batch_size,
    )
    model = ShapesClassifier(num_classes=args.num_classes, lr=args.lr)
    monitor = make_monitor(methods=args.methods, probe=args.num_probe, every_n_epochs=args.every_n_epochs)
    logger = TensorBoardLogger(save_dir=args.logdir, name=args.name)
    trainer = pl.Trainer(
        max_epochs=args.max_epochs,
        accelerator=args.accelerator,
        devices=1,
        logger=logger,
        callbacks=[monitor],
        log_every_n_steps=args.log_every_n_steps,
        enable_checkpointing=False,
        enable_progress_bar=not args.quiet,
        enable_model_summary=not args.quiet,
    )
    trainer.fit(model, datamodule=data)
    elapsed = time.perf_counter() - start
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if isinstance(v, Tensor) and v.numel() == 1}
    log_dir = logger.log_dir
    print(
        f"\nFinished {trainer.current_epoch} epochs in {elapsed:.1f} s: val_acc={metrics.get('val_acc', float('nan')):.3f}, "
        f"cam/gradcam/adcc={metrics.get('cam/gradcam/adcc', float('nan')):.2f}"
    )
    print(f"TensorBoard logs: {os.path.abspath(log_dir)}")
    print(f"View them with:   tensorboard --logdir {args.logdir} --samples_per_plugin images=100")
    return {"log_dir": log_dir, "metrics": metrics, "elapsed": elapsed}


# The model: a small CNN with a CAM-compatible head.


def conv_block(in_channels: int, out_channels: int, pool: bool) -> nn.Sequential:
    """3x3 conv + BatchNorm + ReLU, optionally followed by 2x2 max pooling."""
    layers: List[Tuple[str, nn.Module]] = [
        ("conv", nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)),
        ("bn", nn.BatchNorm2d(out_channels)),
        ("relu", nn.ReLU(inplace=True)),
    ]
    if pool:
        layers.append(("pool", nn.MaxPool2d(2)))
    return nn.Sequential(OrderedDict(layers))


class ShapesClassifier(pl.LightningModule):
    """A small CNN with a CAM-compatible head: conv blocks, global average pooling, one linear layer.

    ``features.block1`` .. ``features.blockK`` (K = ``len(channels)``); every block but the last
    halves the resolution, so 48x48 inputs give 6x6 maps at ``features.blockK`` (the usual target
    layer, also the one ``target_layer="auto"`` picks up as ``features``).

    Args:
        num_classes: Output classes.
        channels: Output channels of each conv block.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        dropout: Dropout before the classifier.
    """

    def __init__(
        self,
        num_classes: int = 4,
        channels: Sequence[int] = (8, 16, 32, 64),
        lr: float = 3e-3,
        weight_decay: float = 1e-4,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        channels = list(channels)
        if not channels:
            raise ValueError("channels must list at least one conv block")
        blocks: List[Tuple[str, nn.Module]] = []
        in_channels = 3
        for index, out_channels in enumerate(channels):
            blocks.append((f"block{index + 1}", conv_block(in_channels, out_channels, pool=index < len(channels) - 1)))
            in_channels = out_channels
        self.features = nn.Sequential(OrderedDict(blocks))
        self.classifier = nn.Sequential(
            OrderedDict(
                [
                    ("pool", nn.AdaptiveAvgPool2d(1)),
                    ("flatten", nn.Flatten()),
                    ("dropout", nn.Dropout(dropout)),
                    ("fc", nn.Linear(in_channels, num_classes)),
                ]
            )
        )

    @property
    def last_block(self) -> str:
        """Dotted name of the last conv block (the CAM target layer)."""
        return f"features.block{len(self.hparams.channels)}"

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))

    def _step(self, batch: Tuple[Tensor, Tensor], stage: str) -> Tensor:
        images, labels = batch
        logits = self(images)
        loss = F.cross_entropy(logits, labels)
        accuracy = (logits.argmax(dim=1) == labels).float().mean()
        on_step = stage == "train"
        self.log(f"{stage}_loss", loss, on_step=on_step, on_epoch=True, prog_bar=stage != "train", batch_size=len(labels))
        self.log(f"{stage}_acc", accuracy, on_step=on_step, on_epoch=True, prog_bar=True, batch_size=len(labels))
        return loss

    def training_step(self, batch: Tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: Tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.Adam(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        if self.trainer is None or not self.trainer.max_epochs or self.trainer.max_epochs < 1:
            return optimizer
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.trainer.max_epochs)
        return {"optimizer": optimizer, "lr_scheduler": schedule}


# The data: generated train/val splits of ShapesDataset.


class ShapesDataModule(pl.LightningDataModule):
    """Train/val(/test) splits of :class:`~cam_callbacks.datasets.ShapesDataset`, generated from different seeds.

    Args:
        num_train: Training images.
        num_val: Validation images (also used by ``test``); the first ones are the callback's probe set.
        image_size: Side of the square images.
        num_classes: Number of shape classes (first ``num_classes`` of ``SHAPE_NAMES``).
        batch_size: Batch size of all loaders.
        train_seed: Seed of the training images.
        val_seed: Seed of the validation images.
        num_workers: DataLoader workers (the data is in memory; 0 is fastest for small images).
    """

    def __init__(
        self,
        num_train: int = 2000,
        num_val: int = 400,
        image_size: int = 48,
        num_classes: int = 4,
        batch_size: int = 64,
        train_seed: int = 0,
        val_seed: int = 1,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if train_seed == val_seed:
            raise ValueError(f"train_seed and val_seed must differ (both are {train_seed}), or validation repeats training images")
        self.save_hyperparameters()
        self.train_set: Optional[ShapesDataset] = None
        self.val_set: Optional[ShapesDataset] = None

    @property
    def class_names(self) -> Tuple[str, ...]:
        return SHAPE_NAMES[: self.hparams.num_classes]

    def setup(self, stage: Optional[str] = None) -> None:
        h = self.hparams
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = ShapesDataset(h.num_train, image_size=h.image_size, num_classes=h.num_classes, seed=h.train_seed)
        if self.val_set is None:
            self.val_set = ShapesDataset(h.num_val, image_size=h.image_size, num_classes=h.num_classes, seed=h.val_seed)

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None, "call setup('fit') first"
        return DataLoader(
            self.train_set,
            batch_size=self.hparams.batch_size,
            shuffle=True,
            drop_last=True,
            num_workers=self.hparams.num_workers,
            persistent_workers=self.hparams.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader:
        assert self.val_set is not None, "call setup() first"
        return DataLoader(self.val_set, batch_size=self.hparams.batch_size, num_workers=self.hparams.num_workers)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()


# Command line: flags (main) or LightningCLI (cli_main) when the first argument is a subcommand.

#: LightningCLI subcommands; any of them as the first argument selects the CLI.
CLI_SUBCOMMANDS = ("fit", "validate", "test", "predict")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train a small CNN on synthetic shapes with CAMMonitor logging Grad-CAM maps to TensorBoard.",
        epilog="LightningCLI: python examples/train_shapes.py fit --config configs/shapes.yaml [--trainer.max_epochs=N ...]",
    )
    parser.add_argument("--logdir", default="runs", help="TensorBoard root directory (default: runs)")
    parser.add_argument("--name", default="shapes", help="experiment name, a folder under --logdir (default: shapes)")
    parser.add_argument("--max-epochs", type=int, default=10)
    parser.add_argument("--num-train", type=int, default=2000)
    parser.add_argument("--num-val", type=int, default=400)
    parser.add_argument("--image-size", type=int, default=48)
    parser.add_argument("--num-classes", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--methods", nargs="+", default=list(MONITOR["methods"]), help="CAM methods to log")
    parser.add_argument("--num-probe", type=int, default=MONITOR["probe"], help="probe images (the first validation images)")
    parser.add_argument("--every-n-epochs", type=int, default=MONITOR["every_n_epochs"])
    parser.add_argument("--log-every-n-steps", type=int, default=10, help="training-step logging interval")
    parser.add_argument("--seed", type=int, default=0, help="seed of the model initialisation and shuffling")
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads. Default: 1 on machines with at most 2 CPU cores (this small CNN gains little from a "
        "second thread, and runs several times slower with two when another process is busy), torch's default otherwise.",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar and model summary")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Run the default example; returns the log directory, final metrics and wall time.

    Args:
        argv: Command-line flags (default: ``sys.argv[1:]``), see ``--help``.
    """
    args = parse_args(argv)
    threads = args.threads if args.threads is not None else (1 if (os.cpu_count() or 1) <= 2 else 0)
    previous_threads = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        return _train(args)
    finally:
        torch.set_num_threads(previous_threads)


def cli_main(args: Optional[Sequence[str]] = None) -> Any:
    """The same model and data with LightningCLI, e.g. ``fit --config configs/shapes.yaml``.

    Args:
        args: Command-line arguments (default: ``sys.argv[1:]``).
    """
    from pytorch_lightning.cli import LightningCLI

    cli = LightningCLI(
        ShapesClassifier,
        ShapesDataModule,
        args=None if args is None else list(args),
        save_config_kwargs={"overwrite": True},
    )
    logger = cli.trainer.logger
    if isinstance(logger, TensorBoardLogger):
        root = os.path.dirname(os.path.dirname(os.path.abspath(logger.log_dir)))
        print(f"\nTensorBoard logs: {os.path.abspath(logger.log_dir)}")
        print(f"View them with:   tensorboard --logdir {root} --samples_per_plugin images=100")
    return cli


def _wants_cli(argv: Sequence[str]) -> bool:
    return bool(argv) and argv[0] in CLI_SUBCOMMANDS


if __name__ == "__main__":
    if _wants_cli(sys.argv[1:]):
        cli_main()
    else:
        main()
