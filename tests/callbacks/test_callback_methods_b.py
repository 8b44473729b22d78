"""CAMMonitor with issue 14's Shapley-CAM, Finer-CAM and FullGrad on a short real fit (LeGrad needs a ViT: see
tests/methods/test_second_order_methods.py)."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

import cam_callbacks as cc

from _lightning_models import TinyNet, loaders, read_events, trainer

METHODS = ["shapleycam", "finercam", "fullgrad"]
OPTIONS = {"finercam": {"alpha": 1.0, "k": 1}, "shapleycam": {"objective": "rest"}}


def _fit(tmp_path, callbacks):
    pl.seed_everything(7)
    model = TinyNet()
    train, val = loaders()
    t = trainer(tmp_path, callbacks, max_epochs=1)
    t.fit(model, train, val)
    return model, t


@pytest.mark.slow
def test_new_methods_through_the_callback_are_logged_and_invisible_to_training(tmp_path):
    baseline, _ = _fit(tmp_path / "a", [])
    monitor = cc.CAMMonitor(methods=METHODS, probe=4, budget=None, explain_options=cc.ExplainOptions(method_options=OPTIONS))
    watched, t = _fit(tmp_path / "b", [monitor])
    for (name, a), (_, b) in zip(baseline.state_dict().items(), watched.state_dict().items()):
        assert torch.equal(a, b), name
    events = read_events(tmp_path / "b")
    val_steps = sorted(step for step, _ in events["scalars"]["val_loss"])  # one epoch: one image at Lightning's step
    assert len(val_steps) == 1
    for method in METHODS:
        assert sorted(events["images"][f"cam/{method}/grid"]) == val_steps, method
        direct = cc.faithfulness(
            watched, monitor.probe.images, method, "features", targets=monitor.probe.labels, method_options=OPTIONS.get(method)
        )
        for metric, value in direct.items():
            assert 0.0 <= value <= 1.0, (method, metric, value)
            assert float(t.callback_metrics[f"cam/{method}/{metric}"]) == pytest.approx(value, abs=1e-5), (method, metric)


@pytest.mark.parametrize(
    "method, options, message",
    [
        ("shapleycam", {"objective": "soft"}, r"objective='soft' is not valid; choose from \['logit', 'rest'\]"),
        ("finercam", {"k": 0}, "k must be a positive int"),
        ("fullgrad", {"normalize": "image"}, r"normalize='image' is not valid; choose from \['layer', 'channel'\]"),
        ("legrad", {"blocks": -1}, r"blocks must be None \(all\) or an int in 1"),
    ],
)
def test_bad_option_values_are_refused_at_construction(method, options, message):
    with pytest.raises(ValueError, match=message):
        cc.CAMMonitor(methods=[method], explain_options=cc.ExplainOptions(method_options={method: options}))
