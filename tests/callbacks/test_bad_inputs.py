"""Every bad CAMMonitor argument fails before the first training step, with a message that names the argument, shows the
value and says what is valid: one table row per bad argument.

- ``CONSTRUCTION``: refused by ``CAMMonitor(...)`` itself;
- ``SETUP``: refused by the dry run at ``setup`` (:meth:`~cam_callbacks.callbacks.runner.ProbeRunner.prepare`), checked
  with a real ``trainer.fit`` on TinyNet: the error comes before any training batch and the weights are unchanged;
- then :class:`~cam_callbacks.callbacks.runner.ProbeRunner` checks tested directly (display mean/std against the probe's
  channels, meta-device models, ``(N, 1)`` label columns) and the argument helpers.
"""

from __future__ import annotations

import math
import pathlib
from typing import Any, Dict, Iterator, List

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

import cam_callbacks as cc
from cam_callbacks.callbacks.arguments import check_bool, check_number
from cam_callbacks.callbacks.probe import Probe, split_batch
from cam_callbacks.callbacks.runner import ProbeRunner
from cam_callbacks.capture.hooks import OneByOneMapError

from _lightning_models import NUM_CLASSES, TinyNet, loaders, trainer

IMAGES = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
LABELS = torch.tensor([0, 1, 2, 0])
METHODS = r"\['cam', 'gradcam', 'gradcampp'"
MEAN_SEQUENCE = (
    r"ImageStyle: mean must be one finite number for all channels or a sequence of finite numbers, one per image channel "
    r"\(e\.g\. mean=\[0\.5, 0\.5, 0\.5\]\), got "
)
STD_SEQUENCE = (
    r"ImageStyle: std must be one finite number for all channels or a sequence of finite positive numbers, one per image "
    r"channel \(e\.g\. std=\[0\.5, 0\.5, 0\.5\]\), got "
)
PROBE_CHOICES = r"probe must be an images tensor \(N, C, H, W\), an \(images, labels\[, masks\[, nuisance\]\]\) tuple, a map-style Dataset or a DataLoader"
BUDGET = r"budget must be None or a share of the training time in \(0, 1\] \(a number, e\.g\. budget=0\.05\), got "
ALPHA = r"ImageStyle: overlay_alpha must be a number in \[0, 1\] \(the heatmap's opacity\), got "
ADCC_IN_FAITHFULNESS = r"metrics contains 'adcc', which is not a metric; 'adcc' is one of the scores of 'faithfulness' \(all five come together\)\. "
GRADCAN = rf"methods contains 'gradcan', which is not a known CAM method; did you mean one of \['gradcam', .*\]\? choose from {METHODS}"
METRIC_CHOICES = r"Choose from \['faithfulness', 'deletion_auc', 'insertion_auc', 'road_morf', 'road_lerf', 'road', 'arcc'\]"


def _row(error: type, kwargs: Dict[str, Any], message: str, marks: Any = ()) -> Any:
    return pytest.param(error, kwargs, message, id=",".join(f"{k}={v!r}"[:40] for k, v in kwargs.items()), marks=marks)


#: CAMMonitor's own arguments.
CONSTRUCTION = [
    # methods
    _row(ValueError, dict(methods=None), rf"methods must be a method name or a list of method names, got None; choose from {METHODS}"),
    _row(ValueError, dict(methods=5), rf"methods must be a method name or a list of method names, got 5; choose from {METHODS}"),
    _row(ValueError, dict(methods={"gradcam": 1}), r"methods must be a method name or a list of method names, got \{'gradcam': 1\}"),
    _row(ValueError, dict(methods=[]), rf"methods must name at least one method; choose from {METHODS}"),
    _row(ValueError, dict(methods=["gradcan"]), GRADCAN),
    _row(ValueError, dict(methods="gradcan"), GRADCAN),
    _row(ValueError, dict(methods=["gradcam", 5]), rf"methods contains 5, which is not a known CAM method; choose from {METHODS}"),
    _row(ValueError, dict(methods=["gradcam", "gradcam"]), r"methods lists a method twice: \['gradcam', 'gradcam'\]"),
    # target, target_layer
    _row(ValueError, dict(target="truth"), r"target='truth' is not valid; choose from \['label', 'prediction'\]"),
    _row(TypeError, dict(target_layer=5), r"target_layer must be a dotted module name, a module, 'auto' or a non-empty list of them, got 5"),
    _row(TypeError, dict(target_layer=[]), r"target_layer must be .* a non-empty list of them, got \[\]"),
    _row(TypeError, dict(target_layer=["features", 3]), r"target_layer must be .*, got \['features', 3\]"),
    # probe as a size
    _row(ValueError, dict(probe=-1), r"probe must be a positive int \(how many validation images to explain\) or the probe images, got -1"),
    _row(ValueError, dict(probe=0), r"probe must be a positive int .*, got 0"),
    _row(ValueError, dict(probe=True), r"probe must be a positive int \(a probe size\) or the probe images, got True"),
    _row(ValueError, dict(probe=None), r"probe must be a positive int \(how many validation images to explain, e\.g\. probe=32\), an images tensor"),
    # every_n_epochs
    _row(ValueError, dict(every_n_epochs=0), "every_n_epochs must be a positive int, got 0"),
    _row(ValueError, dict(every_n_epochs=True), "every_n_epochs must be a positive int, got True"),
    _row(ValueError, dict(every_n_epochs=2.5), "every_n_epochs must be a positive int, got 2.5"),
    # metrics
    _row(ValueError, dict(metrics=["faithfulnes"]), rf"metrics contains 'faithfulnes', which is not a metric; did you mean 'faithfulness'\? {METRIC_CHOICES}"),
    _row(ValueError, dict(metrics=["adcc"]), ADCC_IN_FAITHFULNESS + METRIC_CHOICES),
    _row(ValueError, dict(metrics=["accuracy"]), rf"metrics contains 'accuracy', which is not a metric\. {METRIC_CHOICES}"),
    _row(ValueError, dict(metrics=["ROAD"]), rf"metrics contains 'ROAD', which is not a metric; did you mean 'road'\? {METRIC_CHOICES}"),
    _row(ValueError, dict(prefix=".."), r"prefix must be .* starting with a letter, a digit or '_' .*, got '\.\.'"),
    _row(ValueError, dict(budget=10**400), BUDGET + "1000000"),
    _row(ValueError, dict(metrics=5), r"metrics must be a list of names from \['faithfulness', .*\] \(or \(\) for maps only\), got 5"),
    _row(ValueError, dict(metrics=["road", "road"]), r"metrics lists a name twice: \['road', 'road'\]"),
    _row(ValueError, dict(metrics=True), r"metrics must be a list of names"),
    # alarm
    _row(ValueError, dict(alarm="x"), (
         r"alarm must be None or a list of ThresholdAlarm / ShortcutAlarm objects, e\.g\. alarm=\[ShortcutAlarm\(score=0\.2\)\], got 'x'"
     )),
    _row(ValueError, dict(alarm={"max_shortcut_score": 0.5}), r"alarm must be None or a list of ThresholdAlarm / ShortcutAlarm objects"),
    _row(ValueError, dict(alarm=[5]), r"alarm must hold ThresholdAlarm or ShortcutAlarm objects, got a int"),
    _row(ValueError, dict(alarm=[cc.ShortcutAlarm(), cc.ShortcutAlarm(score=0.3)]), r"alarm holds two ShortcutAlarm objects; give one"),
    # budget
    _row(ValueError, dict(budget=0), BUDGET + "0"),
    _row(ValueError, dict(budget=1.5), BUDGET + "1.5"),
    _row(ValueError, dict(budget="0.1"), BUDGET + "'0.1'"),
    _row(ValueError, dict(budget=True), BUDGET + "True"),
    _row(ValueError, dict(budget=math.nan), BUDGET + "nan"),
    _row(ValueError, dict(budget=[0.1]), BUDGET + r"\[0.1\]"),
    # on_error, prefix, step, report
    _row(ValueError, dict(on_error="ignore"), r"on_error='ignore' is not valid; choose from \['warn', 'raise'\]"),
    _row(ValueError, dict(prefix="cam/x"), r"prefix must be a non-empty string of letters, digits, '_', '-' or '\.'"),
    _row(ValueError, dict(prefix=""), r"prefix must be a non-empty string"),
    _row(ValueError, dict(step="steps"), r"step='steps' is not valid; choose from \['global_step', 'epoch'\]"),
    _row(ValueError, dict(report="yes"), "report must be True or False, got 'yes'"),
    # the option objects
    _row(ValueError, dict(explain_options={"batch_size": 8}), (
         r"explain_options must be an ExplainOptions, e\.g\. explain_options=ExplainOptions\(\*\*\{'batch_size': 8\}\); got a dict"
     )),
    _row(ValueError, dict(explain_options=5), r"explain_options must be a cam_callbacks\.ExplainOptions, got int"),
    _row(ValueError, dict(methods=["gradcam"], explain_options=cc.ExplainOptions(method_options={"gradcampp": {}})),
         r"explain_options\.method_options names \['gradcampp'\], which are not in methods=\['gradcam'\]"),
    _row(ValueError, dict(style={"mean": [0.5]}), r"style must be an ImageStyle, e\.g\. style=ImageStyle\(\*\*\{'mean': \[0\.5\]\}\); got a dict"),
    _row(ValueError, dict(style="jet"), r"style must be a cam_callbacks\.ImageStyle, got str"),
    # probe as images
    _row(TypeError, dict(probe="probe.pt"), PROBE_CHOICES + r".*; got the path 'probe.pt'; to use a saved probe set, load it first, e\.g\. "
         r"probe=torch\.load\('probe\.pt'\)"),
    _row(TypeError, dict(probe=pathlib.Path("probe.pt")), PROBE_CHOICES + r".*; got the path PosixPath\('probe.pt'\)|WindowsPath"),
    _row(TypeError, dict(probe=2.5), PROBE_CHOICES + r".*; got float$"),
    _row(TypeError, dict(probe={"image": IMAGES, "label": LABELS}), PROBE_CHOICES + r".*; got a dict with keys \['image', 'label'\]; for one collated "
         r"batch pass its tensors, e\.g\. probe=\(batch\['image'\], batch\['label'\]\)"),
    _row(TypeError, dict(probe=(IMAGES.numpy(), LABELS)), "probe images must be a tensor, got ndarray"),
    _row(TypeError, dict(probe=(IMAGES, "abc")), r"probe labels must be a tensor of \(N,\) integer class indices or \(N, num_classes\) 0/1 values, "
         r"got str 'abc'"),
    _row(TypeError, dict(probe=(IMAGES, LABELS, "mask")), r"probe masks must be a tensor of \(N, H, W\) bool values, got str 'mask'"),
    _row(TypeError, dict(probe=IMAGES.long()), "probe images must be floating point"),
    _row(ValueError, dict(probe=(torch.empty(0, 3, 16, 16), None)), "probe set is empty"),
    _row(ValueError, dict(probe=IMAGES[0]), r"probe images must be a batch \(N, C, H, W\), got a single image of shape \(3, 16, 16\)"),
    _row(ValueError, dict(probe=(IMAGES, LABELS, None, None, None)), "probe as a tuple must be .* got 5 elements"),
    _row(ValueError, dict(probe=(IMAGES, LABELS.float() + 0.5)), r"probe labels must be 4 integer class indices, or an \(4, num_classes\) multi-hot tensor"),
    _row(ValueError, dict(probe=(IMAGES, torch.full((4, 3), 2))), r"probe labels of shape \(N, num_classes\) must be multi-hot"),
    _row(ValueError, dict(probe=(IMAGES, LABELS, torch.ones(4, 8, 8))), r"probe masks must have shape \(4, 16, 16\) like the images"),
]  # fmt: skip

#: The fields of ExplainOptions (``CAMMonitor(explain_options=...)``, and ``options=`` of the functions).
EXPLAIN_OPTIONS = [
    _row(ValueError, dict(batch_size=0), "batch_size must be a positive int, got 0"),
    _row(ValueError, dict(batch_size="8"), "batch_size must be a positive int, got '8'"),
    _row(ValueError, dict(precision="16"), r"precision='16' is not valid; choose from \['auto', '32'\]"),
    _row(ValueError, dict(precision=32), r"precision=32 is not valid; choose from \['auto', '32'\]"),
    _row(ValueError, dict(method_options=5), r"method_options must be a dict of method name -> options \(e\.g\. .*\), got 5"),
    _row(ValueError, dict(method_options={"reciprocam": True}), r"method_options\['reciprocam'\] must be a dict of option -> value .*, got True"),
    _row(ValueError, dict(method_options={"reciprocam": {"gausian": True}}), r"method 'reciprocam' has no option\(s\) \['gausian'\]"),
    _row(ValueError, dict(reshape="bad"), r"reshape='bad' is not valid; choose from \[None, 'vit'"),
    _row(TypeError, dict(tail=5), "tail must be a callable activations -> logits, got int"),
    _row(ValueError, dict(smooth="blur"), r"smooth='blur' is not valid; choose from \[None, 'noise', 'aug'\]"),
    _row(ValueError, dict(smooth="noise", smooth_samples=0), "smooth_samples must be a positive int, got 0"),
    _row(ValueError, dict(smooth="noise", smooth_sigma=-1.0), (
         r"smooth_sigma must be a finite number >= 0 \(noise std relative to each image's range\), got -1.0"
     )),
    _row(ValueError, dict(smooth="noise", smooth_sigma="a"), "smooth_sigma must be a finite number >= 0"),
    _row(ValueError, dict(smooth="aug", smooth_scales=[]), (
         r"smooth_scales must be a non-empty sequence of positive numbers \(e\.g\. \(0\.9, 1\.0, 1\.1\)\), got \[\]"
     )),
    _row(ValueError, dict(smooth="aug", smooth_scales=[1.0, 0.0]), r"smooth_scales must be a non-empty sequence of positive numbers .*, got \[1.0, 0.0\]"),
    _row(ValueError, dict(smooth="aug", smooth_scales=5), r"smooth_scales must be a non-empty sequence of positive numbers .*, got 5"),
    _row(ValueError, dict(perturbation_batch=0), "perturbation_batch must be None or a positive int, got 0"),
    _row(TypeError, dict(seed=1.5), "seed must be an int, got float 1.5"),
]  # fmt: skip

#: The fields of ImageStyle (``CAMMonitor(style=...)``).
STYLE = [
    _row(ValueError, dict(max_images="16"), "ImageStyle: max_images must be a positive int, got '16'"),
    _row(ValueError, dict(max_labels=0), "ImageStyle: max_labels must be a positive int, got 0"),
    _row(ValueError, dict(mean=[0.5] * 3), r"give both mean and std .* or neither, got mean=\[0.5, 0.5, 0.5\] and std=None"),
    _row(ValueError, dict(std=[0.5, 0.5, 0.5]), r"give both mean and std .* or neither, got mean=None and std=\[0.5, 0.5, 0.5\]"),
    _row(ValueError, dict(mean="abc", std=[0.2] * 3), MEAN_SEQUENCE + "'abc'"),
    _row(ValueError, dict(mean=[], std=[]), MEAN_SEQUENCE + r"\[\]"),
    _row(ValueError, dict(mean=[0.5, "x", 0.5], std=[0.2] * 3), MEAN_SEQUENCE + r"\[0.5, 'x', 0.5\]"),
    _row(ValueError, dict(mean=[0.5, math.nan, 0.5], std=[0.2] * 3), MEAN_SEQUENCE + r"\[0.5, nan, 0.5\]"),
    _row(ValueError, dict(mean=[0.5, 0.5, math.inf], std=[0.2] * 3), MEAN_SEQUENCE + r"\[0.5, 0.5, inf\]"),
    _row(ValueError, dict(mean=torch.zeros(3, 2), std=[0.2] * 3), MEAN_SEQUENCE + "tensor"),
    _row(ValueError, dict(mean=True, std=0.2), MEAN_SEQUENCE + "True"),
    _row(ValueError, dict(mean=[0.5] * 3, std="x"), STD_SEQUENCE + "'x'"),
    _row(ValueError, dict(mean=[0.5] * 3, std=[0.2, math.inf, 0.2]), STD_SEQUENCE + r"\[0.2, inf, 0.2\]"),
    _row(ValueError, dict(mean=[0.5] * 3, std=[0, 1, 1]), STD_SEQUENCE + r"\[0, 1, 1\]"),
    _row(ValueError, dict(mean=[0.5] * 3, std=[-0.2] * 3), STD_SEQUENCE + r"\[-0.2, -0.2, -0.2\]"),
    _row(ValueError, dict(mean=[0.5] * 3, std=[0.2] * 2), r"ImageStyle: mean has 3 values and std 2: give the same number, one per image channel"),
    _row(ValueError, dict(colormap="rainbowz"), r"colormap='rainbowz' is not a matplotlib colormap"),
    _row(ValueError, dict(colormap=5), r"ImageStyle: colormap must be a Matplotlib colormap name such as 'jet' or 'viridis', got 5"),
    _row(ValueError, dict(overlay_alpha=1.5), ALPHA + "1.5"),
    _row(ValueError, dict(overlay_alpha=-0.1), ALPHA + "-0.1"),
    _row(ValueError, dict(overlay_alpha="x"), ALPHA + "'x'"),
    _row(ValueError, dict(overlay_alpha=math.nan), ALPHA + "nan"),
    _row(ValueError, dict(overlay_alpha=None), ALPHA + "None"),
    _row(ValueError, dict(class_names="cat"), r"ImageStyle: class_names must be a list of names, one per model output, got 'cat'"),
    _row(ValueError, dict(class_names=[]), r"ImageStyle: class_names must name at least one class, got an empty list"),
]  # fmt: skip


@pytest.mark.parametrize("error, kwargs, message", CONSTRUCTION)
def test_bad_argument_fails_at_construction(error, kwargs, message):
    with pytest.raises(error, match=message):
        cc.CAMMonitor(**kwargs)


@pytest.mark.parametrize("error, kwargs, message", EXPLAIN_OPTIONS)
def test_bad_explain_option_fails_when_built(error, kwargs, message):
    with pytest.raises(error, match=message):
        cc.ExplainOptions(**kwargs)


@pytest.mark.parametrize("error, kwargs, message", STYLE)
def test_bad_style_fails_when_built(error, kwargs, message):
    with pytest.raises(error, match=message):
        cc.ImageStyle(**kwargs)


def test_good_values_are_accepted_and_normalised():
    style = cc.ImageStyle(mean=torch.tensor([0.5, 0.4, 0.3]), std=(1, 2, 3), overlay_alpha=0.25)
    monitor = cc.CAMMonitor(budget=1, style=style)
    assert monitor.style.mean == pytest.approx((0.5, 0.4, 0.3)) and monitor.style.std == (1.0, 2.0, 3.0)
    assert monitor.style.overlay_alpha == 0.25
    assert cc.ImageStyle(mean=[0.5], std=[0.25, 0.25, 0.25]).mean == (0.5,)  # one value for every channel
    assert cc.ImageStyle(mean=0.5, std=0.25).std == (0.25,)  # one number, as the message offers
    assert cc.CAMMonitor(methods="gradcam", budget=None).methods == ["gradcam"]
    assert cc.CAMMonitor(methods=("gradcam", "layercam")).methods == ["gradcam", "layercam"]
    assert (cc.CAMMonitor(metrics=()).faithfulness, cc.CAMMonitor(metrics=()).curves) == (False, None)
    assert cc.CAMMonitor(metrics=("road",)).curves.metrics == ("road",) and not cc.CAMMonitor(metrics=("road",)).faithfulness
    assert cc.CAMMonitor(alarm=None).alarm == () and cc.CAMMonitor(alarm=cc.ShortcutAlarm()).alarm == (cc.ShortcutAlarm(),)
    assert cc.CAMMonitor(probe=7).num_probe == 7


# ---------------------------------------------------------------- refused at setup, before the first training step


class TwoLinearHead(TinyNet):
    """Not GAP + linear after the features: method='cam' cannot run."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, NUM_CLASSES))


def _monitor(**kwargs: Any) -> cc.CAMMonitor:
    return cc.CAMMonitor(**{"methods": ["gradcam"], "metrics": (), **kwargs})


SETUP: List[Any] = [
    pytest.param(
        TinyNet, lambda: _monitor(target_layer="featurs.4"), ValueError, r"target_layer='featurs.4' is not a module of TinyNet\. Did you mean.*'features.4'",
        id="unknown-layer",
    ),
    pytest.param(
        TinyNet, lambda: _monitor(target_layer=nn.Conv2d(3, 3, 1)), ValueError, r"target_layer=Conv2d module is not a submodule of the model \(TinyNet\)",
        id="foreign-module",
    ),
    pytest.param(
        TinyNet, lambda: _monitor(target_layer="fc"), ValueError, r"target_layer='fc' outputs a 2-D tensor of shape \(2, 3\); CAM methods need a 4-D",
        id="2d-layer",
    ),
    pytest.param(
        TinyNet, lambda: _monitor(target_layer="pool"), OneByOneMapError,
        r"target_layer='pool' outputs \(N, C, 1, 1\) = \(2, 12, 1, 1\): a 1x1 map cannot localise anything\. Choose an earlier layer "
        r"with spatial size > 1 .*For this model and input: e\.g\. target_layer='features', whose output is \(1, 12, 8, 8\)\.",
        id="1x1-layer",
    ),
    pytest.param(
        TinyNet, lambda: _monitor(target_layer=["features", "pool"]), OneByOneMapError, r"target_layer='pool' outputs \(N, C, 1, 1\)", id="1x1-layer-in-fusion",
    ),
    pytest.param(
        TinyNet, lambda: _monitor(probe=(torch.randn(4, 1, 16, 16), LABELS)), ValueError, r"the model rejects the probe images of shape \(1, 16, 16\)",
        id="probe-channels",
    ),
    pytest.param(
        TinyNet, lambda: _monitor(probe=(IMAGES, torch.tensor([0, 1, 7, 0]))), ValueError,
        rf"probe label 7 \(probe image 2\) is out of range: the model has {NUM_CLASSES} classes, valid class indices are 0..{NUM_CLASSES - 1}",
        id="label-out-of-range",
    ),
    pytest.param(
        TinyNet, lambda: _monitor(probe=(IMAGES, torch.tensor([[0], [1], [7], [0]]))), ValueError, r"probe label 7 \(probe image 2\) is out of range",
        id="label-column-out-of-range",
    ),
    pytest.param(
        TinyNet, lambda: _monitor(probe=(IMAGES, torch.eye(5)[:4])), ValueError,
        rf"the probe's multi-hot labels have shape \(4, 5\): 5 classes, but the model returns {NUM_CLASSES} logits per image; "
        rf"give \(N, {NUM_CLASSES}\) multi-hot labels, or \(N,\) class indices",
        id="multi-hot-width",
    ),
    pytest.param(TwoLinearHead, lambda: _monitor(methods=["cam"]), ValueError, "method='cam' needs target_layer='features' to be followed", id="cam-head"),
    pytest.param(
        TinyNet, lambda: _monitor(style=cc.ImageStyle(mean=[0.5] * 4, std=[0.2] * 4)), ValueError,
        r"style=ImageStyle\(mean=\[0.5, 0.5, 0.5, 0.5\]\) has 4 values but the probe images have 3 channel\(s\)",
        id="mean-channels",
    ),
    pytest.param(
        TinyNet, lambda: _monitor(style=cc.ImageStyle(class_names=["a", "b"])), ValueError,
        rf"CAMMonitor: style=ImageStyle\(class_names=\.\.\.\) has 2 names but the model has {NUM_CLASSES} outputs; give one name per class",
        id="class-names-length",
    ),
]  # fmt: skip


class _CountSteps(pl.Callback):
    def __init__(self) -> None:
        self.batches = 0

    def on_train_batch_start(self, *args: Any) -> None:
        self.batches += 1


@pytest.mark.parametrize("make_model, make_monitor, error, message", SETUP)
def test_bad_setup_fails_in_fit_before_any_training_step(tmp_path, make_model, make_monitor, error, message):
    pl.seed_everything(0)
    model = make_model()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    train, val = loaders(n_train=16, n_val=8)
    steps = _CountSteps()
    with pytest.raises(error, match=message):
        trainer(tmp_path, [make_monitor(), steps], max_epochs=1, logger=False).fit(model, train, val)
    assert steps.batches == 0, "the error must come before any training step"
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())


def _chain(error: BaseException) -> Iterator[BaseException]:
    current: Any = error
    while current is not None:
        yield current
        current = current.__cause__ or current.__context__


def test_meta_device_model_fails_at_setup_with_a_clear_message(tmp_path):
    """Our ValueError comes at setup; Lightning's teardown then raises its own error moving the meta model to the CPU
    (also without the callback), which is not replaced: ours is in its context."""
    with torch.device("meta"):
        model = TinyNet()
    train, val = loaders(n_train=16, n_val=8)
    steps = _CountSteps()
    with pytest.raises(BaseException) as raised:
        trainer(tmp_path, [_monitor(), steps], max_epochs=1, logger=False).fit(model, train, val)
    ours = [e for e in _chain(raised.value) if isinstance(e, ValueError) and "meta device" in str(e)]
    assert ours, f"no CAMMonitor error in {[type(e).__name__ for e in _chain(raised.value)]}"
    assert "Materialise it (e.g. model.to_empty(device='cpu') and load the weights) before fitting" in str(ours[0])
    assert "Tensor.item() cannot be called on meta tensors" not in "".join(str(e) for e in _chain(raised.value))
    assert steps.batches == 0


# ---------------------------------------------------------------- ProbeRunner's dry run, directly


def _runner(probe: Probe, target_layer: Any = "auto", **kwargs: Any) -> ProbeRunner:
    runner = ProbeRunner(["gradcam"], target_layer, True, cc.ExplainOptions(precision="32"), False, lambda key, message: None, **kwargs)
    runner.probe = probe
    return runner


@pytest.mark.parametrize(
    "mean, std, message",
    [
        (
            [0.5] * 4, [0.2] * 4,
            r"CAMMonitor: style=ImageStyle\(mean=\[0.5, 0.5, 0.5, 0.5\]\) has 4 values but the probe images have 3 channel\(s\) "
            r"\(shape \(3, 16, 16\) per image\); give 3 numbers, one per channel, or one number for all channels",
        ),
        ([0.5] * 3, [0.2] * 2, r"CAMMonitor: style=ImageStyle\(std=\[0.2, 0.2\]\) has 2 values but the probe images have 3 channel\(s\)"),
        ([0.5, 0.5], [0.2], r"CAMMonitor: style=ImageStyle\(mean=\[0.5, 0.5\]\) has 2 values"),
    ],
)  # fmt: skip
def test_runner_refuses_display_mean_std_of_another_channel_count(mean, std, message):
    runner = _runner(Probe(IMAGES, LABELS), display_mean=mean, display_std=std)
    with pytest.raises(ValueError, match=message):
        runner.prepare(TinyNet())
    assert runner.layer_names is None


@pytest.mark.parametrize("mean, std", [(None, None), ([0.5] * 3, [0.2] * 3), ([0.5], [0.2]), ([0.5], [0.2] * 3)])
def test_runner_accepts_display_mean_std_per_channel_or_one_for_all(mean, std):
    runner = _runner(Probe(IMAGES, LABELS), display_mean=mean, display_std=std)
    assert runner.prepare(TinyNet()) == ["features"]
    assert (runner.display_mean, runner.display_std) == (mean, std)


def test_runner_refuses_a_meta_device_model():
    with torch.device("meta"):
        model = TinyNet()
    with pytest.raises(ValueError, match=r"CAMMonitor: the model's parameters are on the meta device \(\d+ parameters and buffers, e\.g\. 'features.0.weight'"):
        _runner(Probe(IMAGES, LABELS)).prepare(model)


def test_runner_refuses_a_model_with_some_meta_parameters():
    model = TinyNet()
    model.fc = nn.Linear(12, NUM_CLASSES, device="meta")
    with pytest.raises(ValueError, match=r"meta device \(2 parameters and buffers, e\.g\. 'fc.weight'"):
        _runner(Probe(IMAGES, LABELS)).prepare(model)


def test_runner_refuses_a_1x1_layer_and_names_one_that_works():
    with pytest.raises(ValueError, match=r"target_layer='pool' outputs .*1x1 map cannot localise anything.*e\.g\. target_layer='features'"):
        _runner(Probe(IMAGES, LABELS), "pool").prepare(TinyNet())


# ---------------------------------------------------------------- (N, 1) label columns are class indices


def test_probe_label_column_is_class_indices():
    column = LABELS[:, None]
    probe = Probe(IMAGES, column)
    assert probe.labels is not None and probe.labels.shape == (4,) and torch.equal(probe.labels, LABELS) and not probe.multilabel
    assert torch.equal(cc.CAMMonitor(probe=(IMAGES, column.int())).probe.labels, LABELS)  # any integer dtype
    found = split_batch((IMAGES, column))  # a validation batch whose labels are a column: kept (were dropped)
    assert found.labels is not None and torch.equal(Probe(found.images, found.labels).labels, LABELS)


def test_probe_bool_or_float_column_stays_one_multi_hot_label():
    for column in (torch.tensor([[True], [False], [True], [False]]), torch.tensor([[1.0], [0.0], [1.0], [0.0]])):
        probe = Probe(IMAGES, column)
        assert probe.multilabel and probe.labels is not None and probe.labels.shape == (4, 1)


def test_runner_explains_a_label_column_as_class_indices():
    runner = _runner(Probe(IMAGES, LABELS[:, None]))
    assert runner.prepare(TinyNet()) == ["features"]
    view = runner.view()
    assert view.probability == "softmax" and view.targets is not None and torch.equal(view.targets, LABELS)
    explanation, _ = runner.compute(TinyNet())
    assert torch.equal(explanation.targets.cpu(), LABELS)


def test_single_output_model_with_a_label_column_says_how_to_label_it():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 1))
    with pytest.raises(ValueError, match=r"probe label 1 \(probe image 1\) is out of range: .* 0..0 \(for a single sigmoid output give \(N, 1\) float"):
        _runner(Probe(IMAGES, torch.tensor([[0], [1], [1], [0]]))).prepare(model)
    assert _runner(Probe(IMAGES, torch.tensor([[0.0], [1.0], [1.0], [0.0]]))).prepare(model) == ["1"]


# ---------------------------------------------------------------- the argument helpers (for the checks CAMMonitor will call)


@pytest.mark.parametrize("value", ["no", 0, 1, None, "False"])
def test_check_bool_refuses_anything_but_a_bool(value):
    with pytest.raises(ValueError, match=rf"faithfulness must be True or False, got {value!r}"):
        check_bool("faithfulness", value)
    assert check_bool("faithfulness", False) is False


def test_check_number():
    assert check_number("x", 1, "a number") == 1.0 and check_number("x", torch.tensor(0.5), "a number") == 0.5
    for bad in ("1", True, None, math.inf, [1.0], b"1"):
        with pytest.raises(ValueError, match="x must be a number, got "):
            check_number("x", bad, "a number")


