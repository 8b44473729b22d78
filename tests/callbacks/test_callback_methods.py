"""CAMMonitor with every registered method, method options, smoothing and fused layers, on short real fits."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

import cam_callbacks as cc

from _lightning_models import TinyNet, loaders, read_events, trainer

METRICS = ["average_drop", "increase_in_confidence", "coherency", "complexity", "adcc"]
EVERY_METHOD = ["cam", "gradcam", "gradcampp", "xgradcam", "hirescam", "layercam", "eigencam",
                "scorecam", "sscam", "iscam", "ablationcam", "reciprocam", "saliency", "guidedbackprop", "guidedgradcam"]  # fmt: skip


def _fit(tmp_path, callbacks, max_epochs=2, seed=7):
    pl.seed_everything(seed)
    model = TinyNet()
    train, val = loaders()
    t = trainer(tmp_path, callbacks, max_epochs=max_epochs)
    t.fit(model, train, val)
    return model, t


def test_registry_holds_every_method_of_the_seeds():
    assert cc.available_methods()[: len(EVERY_METHOD)] == EVERY_METHOD  # methods added later (issue 14) follow them


@pytest.mark.slow
def test_every_method_on_a_short_fit_is_logged_and_invisible_to_training(tmp_path):
    baseline, _ = _fit(tmp_path / "a", [], max_epochs=2)
    monitor = cc.CAMMonitor(
        methods=EVERY_METHOD, probe=6, budget=None, step="epoch", explain_options=cc.ExplainOptions(method_options={"reciprocam": {"gaussian": True}})
    )  # budget=None: every method at every epoch (on this toy model the expensive ones would be slowed down)
    watched, t = _fit(tmp_path / "b", [monitor], max_epochs=2)
    for (name, a), (_, b) in zip(baseline.state_dict().items(), watched.state_dict().items()):
        assert torch.equal(a, b), name
    events = read_events(tmp_path / "b")
    for method in EVERY_METHOD:
        assert sorted(events["images"][f"cam/{method}/grid"]) == [0, 1], method
        for metric in METRICS:
            value = float(t.callback_metrics[f"cam/{method}/{metric}"])
            assert 0.0 <= value <= 1.0, (method, metric, value)
    # what was logged at the last epoch is what the functional API gives, options included
    for method, options in [("scorecam", None), ("ablationcam", None), ("reciprocam", {"gaussian": True}), ("guidedgradcam", None)]:
        direct = cc.faithfulness(
            watched, monitor.probe.images, method, "features", targets=monitor.probe.labels, method_options=options
        )
        for metric in METRICS:
            assert float(t.callback_metrics[f"cam/{method}/{metric}"]) == pytest.approx(direct[metric], abs=1e-5), (method, metric)
    # the gaussian option changes Recipro-CAM's maps (so the option really reached it)
    plain = cc.explain(watched, monitor.probe.images, "reciprocam", "features", targets=monitor.probe.labels)
    spread = cc.explain(watched, monitor.probe.images, "reciprocam", "features", targets=monitor.probe.labels, method_options={"gaussian": True})
    assert (plain - spread).abs().max() > 1e-3


def test_smoothing_and_fused_layers_through_the_callback(tmp_path):
    monitor = cc.CAMMonitor(
        methods=["gradcam", "saliency"], target_layer=["features.2", "features.6"], probe=4, step="epoch",
        explain_options=cc.ExplainOptions(smooth="aug", smooth_scales=(1.0,)),
    )  # fmt: skip
    model, t = _fit(tmp_path, [monitor], max_epochs=1)
    assert monitor.layer_name == "features.2+features.6"
    direct = cc.faithfulness(
        model, monitor.probe.images, "gradcam", ["features.2", "features.6"], targets=monitor.probe.labels, smooth="aug", smooth_scales=(1.0,)
    )
    assert float(t.callback_metrics["cam/gradcam/adcc"]) == pytest.approx(direct["adcc"], abs=1e-5)
    assert sorted(read_events(tmp_path)["images"]["cam/saliency/grid"]) == [0]


@pytest.mark.parametrize(
    "methods, options, message",
    [
        (["gradcam"], dict(method_options={"reciprocam": {"gaussian": True}}), r"method_options names \['reciprocam'\]"),
        (["reciprocam"], dict(method_options={"reciprocam": {"sigma": 2}}), r"no option\(s\) \['sigma'\].*\['gaussian'\]"),
        (["gradcam"], dict(smooth="blur"), r"smooth='blur'.*\[None, 'noise', 'aug'\]"),
        (["gradcam"], dict(smooth="noise", smooth_samples=0), "smooth_samples must be a positive int"),
        (["gradcam"], dict(reshape="swin"), r"reshape='swin'.*'vit'"),
        (["gradcam"], dict(perturbation_batch=0), "perturbation_batch must be None or a positive int"),
    ],
)
def test_bad_method_options_fail_at_construction(methods, options, message):
    """Refused when the options are built (``ExplainOptions``) or given to the monitor (method options of other methods)."""
    with pytest.raises(ValueError, match=message):
        cc.CAMMonitor(methods=methods, explain_options=cc.ExplainOptions(**options))


def test_bad_target_layer_list_type():
    with pytest.raises(TypeError, match="non-empty list"):
        cc.CAMMonitor(target_layer=[])
