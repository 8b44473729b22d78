"""A LightningCLI of the ``lightning`` package (``import lightning as L``) whose config names ``cam_callbacks.CAMMonitor``.

    python tests/scripts/lightning_cli_fit.py fit --config CONFIG.yaml

After the fit, the settings of every CAMMonitor the CLI built (explain options, image style, alarm policies) are
written to ``cam_monitors.json`` in the working directory, so the test can check how the YAML was read.
"""

import dataclasses
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import lightning as L
import torch
from lightning.pytorch.cli import LightningCLI

from _lightning_models import make_data


class Net(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU())
        self.head = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", torch.nn.functional.cross_entropy(self(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


class Data(L.LightningDataModule):
    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*make_data(32, seed=0)), batch_size=16)

    def val_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*make_data(16, seed=1)), batch_size=16)


class RecordingCLI(LightningCLI):
    def after_fit(self) -> None:
        import cam_callbacks as cc

        monitors = [
            {
                "batch_size": callback.options.batch_size,
                "mean": list(callback.style.mean or ()),
                "std": list(callback.style.std or ()),
                "alarm": [{"type": type(policy).__name__, **dataclasses.asdict(policy)} for policy in callback.alarm],
            }
            for callback in self.trainer.callbacks
            if isinstance(callback, cc.CAMMonitor)
        ]
        with open("cam_monitors.json", "w") as handle:
            json.dump(monitors, handle)


if __name__ == "__main__":
    torch.set_num_threads(1)
    RecordingCLI(Net, Data)
