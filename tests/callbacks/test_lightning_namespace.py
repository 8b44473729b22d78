"""CAMMonitor with the ``lightning`` package (``import lightning as L``), the style of Lightning's own docs since 2.0.

``lightning.pytorch`` and ``pytorch_lightning`` are the same library under two names with distinct classes:
before, a ``lightning.pytorch.loggers.TensorBoardLogger`` was not recognised (its heatmaps silently became PNG
files beside the event files) and LightningCLI of ``lightning`` rejected ``class_path: cam_callbacks.CAMMonitor``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import lightning as L
import pytest
import pytorch_lightning as pl
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from scripts.lightning_cli_fit import Data, Net  # the LightningCLI script's model and data, in lightning's namespace

import cam_callbacks as cc

from _lightning_models import read_events

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "lightning_cli_fit.py")


def _loaders():
    data = Data()
    return data.train_dataloader(), data.val_dataloader()


def test_the_monitor_is_a_callback_of_both_namespaces():
    monitor = cc.CAMMonitor()
    assert isinstance(monitor, L.Callback) and isinstance(monitor, pl.Callback)


@pytest.mark.slow
def test_lightning_tensorboard_logger_gets_the_images_and_checkpoints_monitor_cam_metrics(tmp_path):
    torch.manual_seed(0)
    monitor = cc.CAMMonitor(methods=["gradcam"], target_layer="features", probe=8)
    checkpoint = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), monitor="cam/gradcam/adcc", mode="max", save_top_k=1)
    stopping = EarlyStopping(monitor="cam/gradcam/adcc", mode="max", patience=5)
    trainer = L.Trainer(
        max_epochs=2, accelerator="cpu", devices=1, enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1,
        default_root_dir=str(tmp_path),
        logger=[TensorBoardLogger(str(tmp_path), name="tb"), CSVLogger(str(tmp_path), name="csv")],
        callbacks=[monitor, checkpoint, stopping],
    )  # fmt: skip
    trainer.fit(Net(), *_loaders())
    events = read_events(tmp_path / "tb")
    val_steps = [step for step, _ in events["scalars"]["val_loss"]]
    assert len(val_steps) == 2  # at Lightning's step, like val_loss: one grid per epoch
    assert events["images"]["cam/gradcam/grid"] == val_steps  # the heatmaps reached TensorBoard, one per epoch
    assert [step for step, _ in events["scalars"]["cam/gradcam/adcc"]] == val_steps
    tensorboard_dir = trainer.loggers[0].log_dir
    assert os.listdir(os.path.join(tensorboard_dir, "cam")) == ["report.html"]  # no PNG files beside the event files
    csv_dir = trainer.loggers[1].log_dir
    assert os.path.exists(os.path.join(csv_dir, "cam", "gradcam", "grid_epoch=0001.png"))  # CSV users get the PNGs
    assert checkpoint.best_model_path and "cam/gradcam/adcc" in trainer.callback_metrics


@pytest.mark.slow
def test_lightning_cli_accepts_the_class_path(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(
        "trainer:\n  max_epochs: 1\n  accelerator: cpu\n  enable_progress_bar: false\n  enable_model_summary: false\n"
        "  enable_checkpointing: false\n  log_every_n_steps: 1\n"
        f"  logger:\n    class_path: lightning.pytorch.loggers.TensorBoardLogger\n    init_args:\n      save_dir: {tmp_path / 'runs'}\n"
        "  callbacks:\n    - class_path: cam_callbacks.CAMMonitor\n      init_args:\n        methods: [gradcam]\n"
        "        target_layer: features\n        probe: 8\n        prefix: cam_cli\n"
        "        explain_options: {batch_size: 4}\n"
        "        style: {mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25]}\n"
        "        alarm:\n          - class_path: cam_callbacks.ShortcutAlarm\n            init_args: {score: 0.2}\n"
        "          - class_path: cam_callbacks.ThresholdAlarm\n            init_args: {metric: shortcut_score, above: 0.6}\n"
    )
    done = subprocess.run([sys.executable, SCRIPT, "fit", "--config", str(config)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    events = read_events(tmp_path / "runs")
    assert len(events["images"]["cam_cli/gradcam/grid"]) == 1  # one epoch: one grid (at Lightning's step)
    # the nested 1.0 settings were read into their objects: explain options, image style, the alarm policies in order
    (monitor,) = json.loads((tmp_path / "cam_monitors.json").read_text())
    assert monitor["batch_size"] == 4
    assert monitor["mean"] == [0.5, 0.5, 0.5] and monitor["std"] == [0.25, 0.25, 0.25]
    assert [(policy["type"], policy.get("score"), policy.get("metric"), policy.get("above")) for policy in monitor["alarm"]] == [
        ("ShortcutAlarm", 0.2, None, None),
        ("ThresholdAlarm", None, "shortcut_score", 0.6),
    ]
