"""``CAMMonitor(explain_options=ExplainOptions(output_transform=...))`` with a LightningModule whose ``forward`` returns a dict."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

import cam_callbacks as cc

from _lightning_models import TinyNet, fit, make_data, read_events


class DictNet(TinyNet):
    """TinyNet whose ``forward`` returns ``{"logits": ..., "features": ...}`` (as many Hugging Face-style modules do)."""

    def forward(self, x: torch.Tensor):  # type: ignore[override]
        if bool((x[:, 0, 0, 0] > 100).any()):
            raise ValueError("a marked image")  # for the bad-image screening
        features = self.features(x)
        return {"logits": self.fc(self.dropout(torch.flatten(self.pool(features), 1))), "features": features}

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x)["logits"], y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x)["logits"], y))


#: One short fit of DictNet: 2 training batches, 1 validation batch.
SHORT = dict(model=DictNet, seed=0, n_train=16, n_val=8, max_epochs=1, num_sanity_val_steps=0)


def test_a_dict_output_is_explained_with_output_transform(tmp_path):
    monitor = cc.CAMMonitor(methods=["gradcam", "reciprocam"], probe=4, budget=None, explain_options=cc.ExplainOptions(output_transform="logits"))
    _, t = fit(tmp_path, monitor, **SHORT)
    for method in ("gradcam", "reciprocam"):
        assert torch.isfinite(t.callback_metrics[f"cam/{method}/adcc"])
    assert monitor.skipped_images == {}
    assert float(t.callback_metrics["cam/errors"]) == 0.0
    assert "cam/gradcam/adcc" in read_events(tmp_path)["scalars"]


def test_the_bad_image_screening_takes_the_logits_from_the_output(tmp_path):
    images, labels = make_data(4, seed=3)
    images[3, 0, 0, 0] = 1000.0  # the model raises on this image (not among the two of the dry run)
    monitor = cc.CAMMonitor(methods=["gradcam"], probe=(images, labels), budget=None, explain_options=cc.ExplainOptions(output_transform="logits"))
    _, t = fit(tmp_path, monitor, **SHORT)
    assert list(monitor.skipped_images) == [3] and "a marked image" in monitor.skipped_images[3]
    assert torch.isfinite(t.callback_metrics["cam/gradcam/adcc"])


def test_without_output_transform_the_setup_error_suggests_it(tmp_path):
    calls = {"n": 0}

    class Count(pl.Callback):
        def on_train_batch_end(self, *args):
            calls["n"] += 1

    message = r"CAMMonitor: the model returned a dict with keys \['logits', 'features'\] .* pass output_transform='logits'"
    with pytest.raises(ValueError, match=message):
        fit(tmp_path, [cc.CAMMonitor(methods=["gradcam"], probe=4), Count()], **SHORT)
    assert calls["n"] == 0


def test_a_bad_output_transform_is_refused_at_construction():
    with pytest.raises(TypeError, match=r"output_transform must be None .* got float 0\.5"):
        cc.CAMMonitor(explain_options=cc.ExplainOptions(output_transform=0.5))  # type: ignore[arg-type]
