"""Probe images that make the model raise or return NaN are reported and skipped; training goes on."""

from __future__ import annotations

import pytest
import torch

import cam_callbacks as cc

from _lightning_models import TinyNet, fit, make_data


class FragileNet(TinyNet):
    """TinyNet that raises on images marked with +1000 at pixel (0, 0, 0) and returns NaN logits for -1000 there."""

    def forward(self, x):
        marker = x[:, 0, 0, 0]
        if bool((marker > 999).any()):
            raise ValueError("marked image")
        logits = super().forward(x)
        return torch.where((marker < -999).view(-1, 1), torch.full_like(logits, float("nan")), logits)


@pytest.mark.slow
def test_bad_probe_images_are_reported_skipped_and_training_continues(tmp_path):
    images, labels = make_data(8, seed=1)
    images[2, 0, 0, 0] = 1000.0  # the model raises on this one
    images[5, 0, 0, 0] = -1000.0  # and returns NaN for this one
    monitor = cc.CAMMonitor(methods=["gradcam", "reciprocam"], probe=(images, labels), alarm=None, budget=None)
    with pytest.warns(UserWarning, match=r"2 probe image\(s\) skipped at epoch 0 \(row 2: the model raises ValueError: marked image; row 5: non-finite"):
        model, t = fit(tmp_path, monitor, model=FragileNet, seed=0, max_epochs=2)
    assert t.current_epoch == 2  # training went on
    assert float(t.callback_metrics["cam/skipped_images"]) == 2.0
    keep = [0, 1, 3, 4, 6, 7]
    for method in ["gradcam", "reciprocam"]:
        reference = cc.faithfulness(_plain(model), images[keep], method, "features", targets=labels[keep])
        for metric, value in reference.items():
            assert float(t.callback_metrics[f"cam/{method}/{metric}"]) == pytest.approx(value, abs=1e-5), (method, metric)
    assert set(monitor.skipped_images) == {2, 5}


def _plain(model):
    """The same weights in a plain TinyNet (no markers), as the reference."""
    plain = TinyNet()
    plain.load_state_dict(model.state_dict())
    return plain


@pytest.mark.slow
def test_an_error_that_is_not_about_images_still_raises(tmp_path):
    class Broken(TinyNet):
        def forward(self, x):
            if not torch.is_grad_enabled() and x.shape[0] > 0 and getattr(self, "armed", False):
                raise RuntimeError("broken for every input")
            return super().forward(x)

    monitor = cc.CAMMonitor(methods=["gradcam"], probe=4, alarm=None)
    model, _ = fit(tmp_path, monitor, model=Broken, seed=0, max_epochs=1, num_sanity_val_steps=0)
    model.armed = True
    with pytest.raises(RuntimeError, match="broken for every input"):
        monitor.compute(model)
