"""CAMMonitor with every registered method, on short real fits: the first fifteen methods, issue 14's variants and
baselines, Shapley-CAM, Finer-CAM and FullGrad (LeGrad needs a ViT: see tests/methods/test_second_order_methods.py);
method options, smoothing and fused layers; bad method options refused at construction."""

from __future__ import annotations

import pytest
import torch

import cam_callbacks as cc

from _lightning_models import fit, read_events

METRICS = ["average_drop", "increase_in_confidence", "coherency", "complexity", "adcc"]
EVERY_METHOD = ["cam", "gradcam", "gradcampp", "xgradcam", "hirescam", "layercam", "eigencam",
                "scorecam", "sscam", "iscam", "ablationcam", "reciprocam", "saliency", "guidedbackprop", "guidedgradcam"]  # fmt: skip
#: Issue 14's variants and baselines (tests/methods/test_variants_and_baselines.py).
VARIANTS = ["gradcamelementwise", "smoothgradcampp", "eigengradcam", "kpcacam", "fem", "randomcam", "sobelcam"]
#: Issue 14's second-order methods that run on a CNN (tests/methods/test_second_order_methods.py), with options.
SECOND_ORDER = ["shapleycam", "finercam", "fullgrad"]
SECOND_ORDER_OPTIONS = {"finercam": {"alpha": 1.0, "k": 1}, "shapleycam": {"objective": "rest"}}


def test_registry_holds_every_method_of_the_seeds():
    assert cc.available_methods()[: len(EVERY_METHOD)] == EVERY_METHOD  # methods added later (issue 14) follow them


@pytest.mark.slow
def test_every_method_on_a_short_fit_is_logged_and_invisible_to_training(tmp_path):
    baseline, _ = fit(tmp_path / "a", [], max_epochs=2)
    monitor = cc.CAMMonitor(
        methods=EVERY_METHOD, probe=6, budget=None, step="epoch", explain_options=cc.ExplainOptions(method_options={"reciprocam": {"gaussian": True}})
    )  # budget=None: every method at every epoch (on this toy model the expensive ones would be slowed down)
    watched, t = fit(tmp_path / "b", [monitor], max_epochs=2)
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


@pytest.mark.slow
def test_variants_and_baselines_through_the_callback(tmp_path):
    monitor = cc.CAMMonitor(
        methods=VARIANTS, probe=4, budget=None, explain_options=cc.ExplainOptions(method_options={"smoothgradcampp": {"num_samples": 2}})
    )
    _, t = fit(tmp_path, monitor, seed=0, max_epochs=1)
    for method in VARIANTS:
        value = float(t.callback_metrics[f"cam/{method}/adcc"])
        assert 0.0 <= value <= 1.0, (method, value)


@pytest.mark.slow
def test_second_order_methods_through_the_callback_are_logged_and_invisible_to_training(tmp_path):
    baseline, _ = fit(tmp_path / "a", [], max_epochs=1)
    monitor = cc.CAMMonitor(methods=SECOND_ORDER, probe=4, budget=None, explain_options=cc.ExplainOptions(method_options=SECOND_ORDER_OPTIONS))
    watched, t = fit(tmp_path / "b", [monitor], max_epochs=1)
    for (name, a), (_, b) in zip(baseline.state_dict().items(), watched.state_dict().items()):
        assert torch.equal(a, b), name
    events = read_events(tmp_path / "b")
    val_steps = sorted(step for step, _ in events["scalars"]["val_loss"])  # one epoch: one image at Lightning's step
    assert len(val_steps) == 1
    for method in SECOND_ORDER:
        assert sorted(events["images"][f"cam/{method}/grid"]) == val_steps, method
        direct = cc.faithfulness(
            watched, monitor.probe.images, method, "features", targets=monitor.probe.labels, method_options=SECOND_ORDER_OPTIONS.get(method)
        )
        for metric, value in direct.items():
            assert 0.0 <= value <= 1.0, (method, metric, value)
            assert float(t.callback_metrics[f"cam/{method}/{metric}"]) == pytest.approx(value, abs=1e-5), (method, metric)


@pytest.mark.slow
def test_smoothing_and_fused_layers_through_the_callback(tmp_path):
    monitor = cc.CAMMonitor(
        methods=["gradcam", "saliency"], target_layer=["features.2", "features.6"], probe=4, step="epoch",
        explain_options=cc.ExplainOptions(smooth="aug", smooth_scales=(1.0,)),
    )  # fmt: skip
    model, t = fit(tmp_path, [monitor], max_epochs=1)
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


@pytest.mark.parametrize(
    "method, options, message",
    [
        ("shapleycam", {"objective": "soft"}, r"objective='soft' is not valid; choose from \['logit', 'rest'\]"),
        ("finercam", {"k": 0}, "k must be a positive int"),
        ("fullgrad", {"normalize": "image"}, r"normalize='image' is not valid; choose from \['layer', 'channel'\]"),
        ("legrad", {"blocks": -1}, r"blocks must be None \(all\) or an int in 1"),
    ],
)
def test_bad_option_values_of_the_second_order_methods_are_refused_at_construction(method, options, message):
    with pytest.raises(ValueError, match=message):
        cc.CAMMonitor(methods=[method], explain_options=cc.ExplainOptions(method_options={method: options}))
