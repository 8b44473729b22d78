"""Quickstart: add CAMMonitor to a Lightning Trainer and watch a small CNN's Grad-CAM maps while it trains.

Generated shape images (no downloads), a few epochs on a CPU. After every validation epoch the callback
logs heatmap grids (``cam/<method>/grid``) and faithfulness curves (``cam/<method>/adcc``, ...) to
``runs/quickstart``. Run ``python examples/quickstart.py``, then ``tensorboard --logdir runs``.
"""

import argparse

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

import cam_callbacks as cc
from cam_callbacks.datasets import SHAPES_MEAN, SHAPES_STD, ShapesDataset


def conv_block(c_in, c_out, pool=True):
    layers = [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]
    return nn.Sequential(*layers, nn.MaxPool2d(2) if pool else nn.Identity())


class SmallCNN(pl.LightningModule):
    """Conv blocks, global average pooling, one linear layer: the classic CAM-friendly layout."""

    def __init__(self, num_classes=4):
        super().__init__()
        self.features = nn.Sequential(conv_block(3, 8), conv_block(8, 16), conv_block(16, 32), conv_block(32, 64, pool=False))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes))

    def forward(self, x):
        return self.head(self.features(x))

    def training_step(self, batch, batch_idx):
        images, labels = batch
        return F.cross_entropy(self(images), labels)

    def validation_step(self, batch, batch_idx):
        images, labels = batch
        self.log("val_acc", (self(images).argmax(dim=1) == labels).float().mean(), prog_bar=True)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=3e-3)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="CAMMonitor quickstart")
    parser.add_argument("--logdir", default="runs", help="TensorBoard root; the run goes to <logdir>/quickstart")
    parser.add_argument("--max-epochs", type=int, default=6)
    args = parser.parse_args()

    monitor = cc.CAMMonitor(methods=["gradcam", "gradcampp"], target_layer="features", probe=16, style=cc.ImageStyle(mean=SHAPES_MEAN, std=SHAPES_STD))
    logger = pl.loggers.TensorBoardLogger(args.logdir, name="quickstart")
    trainer = pl.Trainer(max_epochs=args.max_epochs, callbacks=[monitor], logger=logger, log_every_n_steps=10)
    torch.set_num_threads(1)  # plenty for this tiny CNN; avoids thread contention on small shared CPUs
    pl.seed_everything(0)
    train = DataLoader(ShapesDataset(1500, image_size=32, seed=0), batch_size=32, shuffle=True)
    val = DataLoader(ShapesDataset(160, image_size=32, seed=1), batch_size=64)
    trainer.fit(SmallCNN(), train, val)
    print(f"Logged to {logger.log_dir}; look with: tensorboard --logdir {args.logdir}")
