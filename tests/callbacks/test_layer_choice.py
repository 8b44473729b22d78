"""What target_layer='auto' chose, layer and layout, is said once at setup where a user sees it: a warning when the
choice carries a layout (transformer tokens), the setup's info line and the run's text entry for a plain feature map."""

from __future__ import annotations

import logging
import warnings

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import torchvision

import cam_callbacks as cc

from _lightning_models import TinyNet, make_data, trainer


class TinyViT(pl.LightningModule):
    """torchvision's VisionTransformer, two small blocks: 'auto' must choose a block's tokens with their layout."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torchvision.models.VisionTransformer(image_size=16, patch_size=4, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_a_choice_with_a_token_layout_is_warned_once_at_setup(tmp_path):
    pl.seed_everything(0)
    monitor = cc.CAMMonitor(methods=["gradcam"], probe=make_data(4, seed=1))
    said = (
        r"CAMMonitor: target_layer='auto' chose 'net\.encoder\.layers\.encoder_layer_1\.ln_1' of TinyViT \(.*prefix token.*\); "
        r"to fix the choice, pass target_layer='net\.encoder\.layers\.encoder_layer_1\.ln_1' and reshape=TokenGrid\(prefix_tokens=1"
    )
    with pytest.warns(UserWarning, match=said) as warned:
        monitor.setup(trainer(tmp_path, [monitor]), TinyViT(), stage="fit")
    assert sum("target_layer='auto' chose" in str(w.message) for w in warned) == 1
    assert "explain_options=ExplainOptions(reshape=...)" in next(str(w.message) for w in warned if "chose" in str(w.message))


def test_a_plain_feature_map_is_said_without_a_warning(tmp_path, caplog):
    pl.seed_everything(0)
    monitor = cc.CAMMonitor(methods=["gradcam"], probe=make_data(4, seed=1))
    with warnings.catch_warnings(), caplog.at_level(logging.INFO):
        warnings.simplefilter("error", UserWarning)  # a CNN's usual choice is not worth a warning in every run
        monitor.setup(trainer(tmp_path, [monitor]), TinyNet(), stage="fit")
    assert monitor.layer_name == "features"
    assert "target_layer='auto' chose 'features' of TinyNet (an (N, C, H, W) feature map)" in caplog.text
