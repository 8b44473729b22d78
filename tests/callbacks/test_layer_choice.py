"""What target_layer='auto' chose, layer and layout, is said once at setup where a user sees it (a warning)."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl

import cam_callbacks as cc

from _lightning_models import TinyNet, make_data, trainer


def test_the_auto_choice_is_warned_once_at_setup(tmp_path):
    pl.seed_everything(0)
    monitor = cc.CAMMonitor(methods=["gradcam"], probe=make_data(4, seed=1))
    model = TinyNet()
    said = r"CAMMonitor: target_layer='auto' chose 'features' of TinyNet \(an \(N, C, H, W\) feature map\); to fix the choice, pass target_layer='features'"
    with pytest.warns(UserWarning, match=said) as warned:
        monitor.setup(trainer(tmp_path, [monitor]), model, stage="fit")
    assert sum("target_layer='auto' chose" in str(w.message) for w in warned) == 1
