"""The promise of CAMMonitor's arguments, tested: nothing a user passes ends a run, and nothing goes silently wrong.

Every argument of ``CAMMonitor`` and every field of ``ExplainOptions`` and ``ImageStyle`` (passed through
``explain_options=`` and ``style=``) gets plausible wrong values: types, lengths, ranges, units and typos. Each case
ends in exactly one of the two outcomes the promise allows:

- ``CONSTRUCTION``: refused when the monitor (or its option object) is built, or ``SETUP``: refused by ``trainer.fit``
  before any training batch, in both cases with a message that names the argument or the field;
- ``FIT``: a real 2-epoch fit with a TensorBoard and a CSV logger completes, its last checkpoint is written, the monitor
  ran (``<prefix>/time_s`` logged) without a run-time error (``<prefix>/errors`` is 0), and the warning the row
  expects (if any) was given.

Never a third outcome: an exception during training, a crash after the first epoch, a missing checkpoint. Values
refused at construction need no fit (``test_refused_values_name_their_argument``); only values that construct go
through a fit (``test_constructed_values_are_refused_at_setup_or_fit``, ``slow``: one fit per value, about 1-2 s).
``test_junk_values_are_refused_with_the_argument_named`` throws generated junk (hypothesis, derandomised, a fixed
number of examples) at the constructors. The last part resumes fits from checkpoint entries that cannot be used as
they are (partial, of another layer, other methods, another version) or can (a 1.0 entry with an alarm firing, an
entry from before 1.0): the unusable ones are reported and their history reset, and every resumed fit completes.

A promise found broken gets a row marked ``xfail(strict=True)`` naming the file where the fix belongs (``_pending``),
until it is kept (none is open now).
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import cam_callbacks as cc

from _lightning_models import NUM_CLASSES, CountTrainingBatches, fit_with_checkpoint, make_data

CONSTRUCTION = "refused at construction"
SETUP = "refused at setup"
FIT = "fit completes"

IMAGES, LABELS = make_data(4, seed=2)


@dataclass(frozen=True)
class Case:
    """One wrong (or odd) value of one argument and the outcome the promise allows for it."""

    argument: str  #: "methods", or "ExplainOptions.batch_size" / "ImageStyle.mean" for a field of an option object
    value: str  #: the value as a user would write it
    make: Callable[[nn.Module], Dict[str, Any]]  #: the model -> CAMMonitor's keyword arguments (option objects built here)
    outcome: str
    names: str  #: a regex the refusal's message must match: the argument or field named
    warns: Optional[str] = None  #: FIT: a regex of a warning the fit must give
    errors: bool = False  #: FIT: run-time errors are expected (reported and counted, the fit goes on)
    runs: bool = True  #: FIT: the monitor runs in this 2-epoch fit (False: it says why not)
    stops: bool = False  #: FIT: an alarm with stop=True ends the fit early (its checkpoint is still written)
    report: bool = False  #: FIT: write the HTML report (its charts take 1-3 s: on in the rows whose value shows in it)


def _name_of(argument: str) -> str:
    return rf"\b{re.escape(argument.split('.')[-1])}\b"


def _kwargs(argument: str, value: Any) -> Dict[str, Any]:
    if argument.startswith("ExplainOptions."):
        return {"explain_options": cc.ExplainOptions(**{argument.split(".")[1]: value})}
    if argument.startswith("ImageStyle."):
        return {"style": cc.ImageStyle(**{argument.split(".")[1]: value})}
    return {argument: value}


def refused(
    argument: str, shown: str, value: Any = None, make: Optional[Callable[[nn.Module], Dict[str, Any]]] = None, names: str = "", marks: Any = ()
) -> Any:
    """A value refused when the monitor or its option object is built."""
    return _param(Case(argument, shown, make or (lambda model: _kwargs(argument, value)), CONSTRUCTION, names or _name_of(argument)), marks)


def at_setup(
    argument: str, shown: str, value: Any = None, make: Optional[Callable[[nn.Module], Dict[str, Any]]] = None, names: str = "", marks: Any = ()
) -> Any:
    """A value that constructs but that the setup (the dry run on two probe images) refuses before any training batch."""
    return _param(Case(argument, shown, make or (lambda model: _kwargs(argument, value)), SETUP, names or _name_of(argument)), marks)


def fits(argument: str, shown: str, value: Any = None, make: Optional[Callable[[nn.Module], Dict[str, Any]]] = None, marks: Any = (), **expect: Any) -> Any:
    """A value the fit works with (said with a warning where it would otherwise go silently wrong)."""
    return _param(Case(argument, shown, make or (lambda model: _kwargs(argument, value)), FIT, _name_of(argument), **expect), marks)


def _param(case: Case, marks: Any) -> Any:
    return pytest.param(case, id=f"{case.argument}={case.value}"[:60], marks=marks)


def _options(**fields: Any) -> Callable[[nn.Module], Dict[str, Any]]:
    return lambda model: {"explain_options": cc.ExplainOptions(**fields)}


def _style(**fields: Any) -> Callable[[nn.Module], Dict[str, Any]]:
    return lambda model: {"style": cc.ImageStyle(**fields)}


def _with(**kwargs: Any) -> Callable[[nn.Module], Dict[str, Any]]:
    return lambda model: dict(kwargs)


def _pending(where: str) -> Any:
    return pytest.mark.xfail(strict=True, reason=f"promise not kept yet; the fix belongs in {where}")


def _raising(output: Any) -> Any:
    return output["logits"]


def _raising_tail(activations: torch.Tensor) -> torch.Tensor:
    raise ZeroDivisionError("division by zero")


NAN_ROW = torch.where(torch.arange(4).view(4, 1, 1, 1) == 1, torch.full_like(IMAGES, math.nan), IMAGES)

CASES: List[Any] = [
    fits("(every default)", "CAMMonitor(probe=4)", make=_with(methods=("gradcam", "gradcampp")), report=True),
    # ------------------------------------------------------------------ methods
    refused("methods", "'GradCAM'", "GradCAM", names=r"methods contains 'GradCAM'.*did you mean 'gradcam'"),
    refused("methods", "['grad-cam']", ["grad-cam"], names=r"methods contains 'grad-cam'.*did you mean 'gradcam'"),
    refused("methods", "['gradcam++']", ["gradcam++"], names=r"methods contains 'gradcam\+\+'.*did you mean 'gradcampp'"),
    refused("methods", "[]", []),
    refused("methods", "None", None),
    refused("methods", "5", 5),
    refused("methods", "{'gradcam': 1}", {"gradcam": 1}),
    refused("methods", "['gradcam', 'gradcam']", ["gradcam", "gradcam"]),
    fits("methods", "'gradcam' (one name, not a list)", "gradcam"),
    fits("methods", "('layercam', 'ablationcam')", ("layercam", "ablationcam")),
    # ------------------------------------------------------------------ target_layer
    refused("target_layer", "5", 5),
    refused("target_layer", "[]", []),
    refused("target_layer", "None", None),
    refused("target_layer", "['features', 3]", ["features", 3]),
    at_setup("target_layer", "'Features' (case)", "Features", names=r"target_layer='Features' is not a module of TinyNet\. Did you mean.*'features'"),
    at_setup("target_layer", "'model.features'", "model.features", names=r"target_layer='model\.features' is not a module.*'features'"),
    at_setup("target_layer", "''", ""),
    at_setup("target_layer", "'fc' (2-D output)", "fc"),
    at_setup("target_layer", "'pool' (1x1 map)", "pool"),
    at_setup("target_layer", "['features', 'features']", ["features", "features"]),
    at_setup("target_layer", "a module of another model", make=lambda model: {"target_layer": nn.Conv2d(3, 8, 3)}),
    fits("target_layer", "'features.2' (an in-place ReLU)", "features.2"),
    fits("target_layer", "model.features (the module)", make=lambda model: {"target_layer": model.features}),
    fits("target_layer", "['features.0', 'features'] (fused)", ["features.0", "features"]),
    # ------------------------------------------------------------------ probe
    refused("probe", "0", 0),
    refused("probe", "-1", -1),
    refused("probe", "True", True),
    refused("probe", "None", None),
    refused("probe", "2.0", 2.0),
    refused("probe", "'probe.pt'", "probe.pt"),
    refused("probe", "[(image, label), ...]", [(IMAGES[i], LABELS[i]) for i in range(4)]),
    refused("probe", "(images, float labels)", (IMAGES, LABELS.float())),
    refused("probe", "(images, 3 labels for 4 images)", (IMAGES, LABELS[:3])),
    refused("probe", "(numpy images, labels)", (IMAGES.numpy(), LABELS)),
    at_setup("probe", "(float64 images, labels)", (IMAGES.double(), LABELS)),
    at_setup("probe", "(1-channel images, labels)", (IMAGES[:, :1], LABELS)),
    at_setup("probe", "(images, label 7 of 3 classes)", (IMAGES, torch.tensor([0, 1, 7, 0])), names=r"probe label 7 \(probe image 2\) is out of range"),
    at_setup("probe", "(images, label -1)", (IMAGES, torch.tensor([0, -1, 1, 2])), names=r"probe label -1"),
    at_setup("probe", "(all-NaN images, labels)", (torch.full_like(IMAGES, math.nan), LABELS), names=r"all 4 probe images are non-finite.*pass probe="),
    at_setup("probe", "(images, 5-wide multi-hot)", (IMAGES, torch.eye(5)[:4]), names=r"the probe's multi-hot labels have shape \(4, 5\)"),
    fits("probe", "1", 1),
    fits("probe", "1000 (more than the 8 validation images)", 1000),
    fits("probe", "images without labels", IMAGES, warns=r"the probe set has no labels; explaining the predicted class instead"),
    fits("probe", "(32x32 images, labels) (other size)", (torch.randn(4, 3, 32, 32), LABELS)),
    fits("probe", "a DataLoader", DataLoader(TensorDataset(IMAGES, LABELS), batch_size=2)),
    fits("probe", "(images with one NaN image, labels)", (NAN_ROW, LABELS), warns=r"1 of 4 probe images hold NaN or inf values \(images 1\)"),
    # ------------------------------------------------------------------ target
    refused("target", "'labels'", "labels"),
    refused("target", "'Label'", "Label"),
    refused("target", "None", None),
    fits("target", "'prediction'", "prediction"),
    # ------------------------------------------------------------------ every_n_epochs
    refused("every_n_epochs", "0", 0),
    refused("every_n_epochs", "2.5", 2.5),
    refused("every_n_epochs", "'1'", "1"),
    refused("every_n_epochs", "True", True),
    fits(
        "every_n_epochs",
        "100 (more than max_epochs)",
        100,
        runs=False,
        warns=r"CAMMonitor: every_n_epochs=100 makes the monitor run after epoch 100 first, but max_epochs=2: it logs nothing",
    ),
    # ------------------------------------------------------------------ metrics
    refused("metrics", "['faithfulnes']", ["faithfulnes"], names=r"metrics contains 'faithfulnes'.*did you mean 'faithfulness'"),
    refused("metrics", "['ROAD']", ["ROAD"]),
    refused("metrics", "['adcc'] (a score, not a metric group)", ["adcc"]),
    refused("metrics", "5", 5),
    refused("metrics", "True", True),
    refused("metrics", "['road', 'road']", ["road", "road"]),
    fits("metrics", "'faithfulness' (a string)", "faithfulness"),
    fits("metrics", "None", None),
    fits("metrics", "['deletion_auc']", ["deletion_auc"], report=True),
    # ------------------------------------------------------------------ alarm
    refused("alarm", "'shortcut'", "shortcut"),
    refused("alarm", "{'shortcut': ShortcutAlarm()}", make=lambda model: {"alarm": {"shortcut": cc.ShortcutAlarm()}}),
    refused("alarm", "[5]", [5]),
    refused("alarm", "two ShortcutAlarm", make=lambda model: {"alarm": [cc.ShortcutAlarm(), cc.ShortcutAlarm(score=0.3)]}),
    refused(
        "alarm",
        "ThresholdAlarm('adc', ...) (typo)",
        make=lambda model: {"alarm": [cc.ThresholdAlarm("adc", below=0.5)]},
        names=r"metric='adc'.*did you mean 'adcc'",
    ),
    refused(
        "alarm",
        "ThresholdAlarm(above=50) (percent)",
        make=lambda model: {"alarm": [cc.ThresholdAlarm("shortcut_score", above=50)]},
        names=r"ThresholdAlarm\('shortcut_score'\): above must be",
    ),
    refused("alarm", "ShortcutAlarm(score=15) (percent)", make=lambda model: {"alarm": [cc.ShortcutAlarm(score=15)]}, names=r"ShortcutAlarm.*score"),
    refused("alarm", "ShortcutAlarm(clusters=-1)", make=lambda model: {"alarm": [cc.ShortcutAlarm(clusters=-1)]}, names=r"ShortcutAlarm.*clusters"),
    fits("alarm", "ShortcutAlarm() (not in a list)", cc.ShortcutAlarm()),
    fits("alarm", "[]", []),
    fits(
        "alarm",
        "[ThresholdAlarm('shortcut_score', above=0.0, stop=True)]",
        [cc.ThresholdAlarm("shortcut_score", above=0.0, stop=True)],
        stops=True,
        report=True,
        warns=r"CAMMonitor alarm at epoch 0: gradcam: shortcut_score",
    ),
    fits(
        "alarm",
        "[ThresholdAlarm('adcc', below=0.5)] with metrics=()",
        make=_with(metrics=(), alarm=[cc.ThresholdAlarm("adcc", below=0.5)]),
        warns=r"ThresholdAlarm\('adcc'\).*metrics=",
    ),
    # ------------------------------------------------------------------ budget
    refused("budget", "0", 0),
    refused("budget", "5 (percent)", 5),
    refused("budget", "'5%'", "5%"),
    refused("budget", "True", True),
    refused("budget", "nan", math.nan),
    refused("budget", "10**400", 10**400),
    fits("budget", "1e-9", 1e-9),
    fits("budget", "None", None),
    # ------------------------------------------------------------------ on_error, prefix, step, report
    refused("on_error", "'Warn'", "Warn"),
    refused("on_error", "'ignore'", "ignore"),
    refused("on_error", "True", True),
    fits("on_error", "'raise'", "raise"),
    refused("prefix", "'cam/x'", "cam/x"),
    refused("prefix", "''", ""),
    refused("prefix", "' cam'", " cam"),
    refused("prefix", "5", 5),
    refused(
        "prefix",
        "'..' (the folder above the run's)",
        "..",
    ),
    fits("prefix", "'CAM'", "CAM", report=True),
    fits("prefix", "300 characters", "c" * 300, errors=True, report=True),  # file names too long: every write reported, the fit goes on
    refused("step", "'Epoch'", "Epoch"),
    refused("step", "'global-step'", "global-step"),
    refused("step", "None", None),
    fits("step", "'epoch'", "epoch"),
    refused("report", "'yes'", "yes"),
    refused("report", "1", 1),
    refused("report", "'report.html'", "report.html"),
    fits("report", "False", False),
    # ------------------------------------------------------------------ the option objects themselves
    refused("explain_options", "{'batch_size': 8}", {"batch_size": 8}),
    refused("explain_options", "5", 5),
    refused(
        "explain_options",
        "method_options for a method not in methods",
        make=lambda model: {"methods": ["gradcam"], "explain_options": cc.ExplainOptions(method_options={"gradcampp": {}})},
    ),
    refused("style", "{'mean': [0.5]}", {"mean": [0.5]}),
    refused("style", "'jet'", "jet"),
    # ------------------------------------------------------------------ ExplainOptions fields
    refused("ExplainOptions.batch_size", "0", 0),
    refused("ExplainOptions.batch_size", "8.0", 8.0),
    refused("ExplainOptions.batch_size", "'8'", "8"),
    fits("ExplainOptions.batch_size", "1", 1),
    fits("ExplainOptions.batch_size", "10000", 10000),
    refused("ExplainOptions.method_options", "5", 5),
    refused("ExplainOptions.method_options", "{'reciprocam': True}", {"reciprocam": True}),
    refused(
        "ExplainOptions.method_options", "{'reciprocam': {'gausian': True}} (typo)", {"reciprocam": {"gausian": True}}, names=r"no option\(s\) \['gausian'\]"
    ),
    refused(
        "ExplainOptions.method_options",
        "{'reciprocam': {'gaussian': 'yes'}}",
        {"reciprocam": {"gaussian": "yes"}},
        names=r"option 'gaussian' must be True or False",
    ),
    refused("ExplainOptions.method_options", "{'GradCAM': {}}", {"GradCAM": {}}, names=r"'GradCAM'.*did you mean 'gradcam'"),
    fits(
        "ExplainOptions.method_options",
        "{'reciprocam': {'gaussian': True}}",
        make=_with(methods=["reciprocam"], explain_options=cc.ExplainOptions(method_options={"reciprocam": {"gaussian": True}})),
    ),
    refused("ExplainOptions.reshape", "'VIT'", "VIT"),
    refused("ExplainOptions.reshape", "5", 5),
    at_setup("ExplainOptions.reshape", "'vit' with target_layer='auto'", "vit", names=r"target_layer='auto' chooses the layout itself \(reshape=None\)"),
    at_setup(
        "ExplainOptions.reshape",
        "'vit' on a CNN layer",
        make=_with(target_layer="features", explain_options=cc.ExplainOptions(reshape="vit")),
        names=r"reshape=TokenGrid.*needs a 3-D",
    ),
    at_setup(
        "ExplainOptions.reshape",
        "'nhwc' on an NCHW layer",
        make=_with(target_layer="features", explain_options=cc.ExplainOptions(reshape="nhwc")),
    ),
    refused("ExplainOptions.tail", "5", 5),
    refused("ExplainOptions.tail", "'fc'", "fc"),
    at_setup(
        "ExplainOptions.tail",
        "lambda a: a (not the logits)",
        make=_with(methods=["ablationcam"], explain_options=cc.ExplainOptions(tail=lambda a: a)),
        names=r"tail= does not reproduce TinyNet",
    ),
    at_setup(
        "ExplainOptions.tail",
        "a tail that raises",
        make=_with(methods=["ablationcam"], explain_options=cc.ExplainOptions(tail=_raising_tail)),
        names=r"ExplainOptions\(tail=_raising_tail\) raised ZeroDivisionError",
    ),
    fits(
        "ExplainOptions.tail",
        "the model after the layer",
        make=lambda model: {"methods": ["ablationcam"], "explain_options": cc.ExplainOptions(tail=lambda a: model.fc(torch.flatten(model.pool(a), 1)))},
    ),
    refused("ExplainOptions.perturbation_batch", "0", 0),
    refused("ExplainOptions.perturbation_batch", "1.5", 1.5),
    refused("ExplainOptions.perturbation_batch", "'auto'", "auto"),
    fits("ExplainOptions.perturbation_batch", "1", make=_with(methods=["scorecam"], explain_options=cc.ExplainOptions(perturbation_batch=1))),
    refused("ExplainOptions.smooth", "'blur'", "blur"),
    refused("ExplainOptions.smooth", "True", True),
    refused("ExplainOptions.smooth", "'Noise'", "Noise"),
    fits("ExplainOptions.smooth", "'aug'", "aug"),
    refused("ExplainOptions.smooth_samples", "0", make=_options(smooth="noise", smooth_samples=0)),
    refused("ExplainOptions.smooth_samples", "2.5", make=_options(smooth="noise", smooth_samples=2.5)),
    fits("ExplainOptions.smooth_samples", "1", make=_options(smooth="noise", smooth_samples=1)),
    fits("ExplainOptions.smooth_sigma", "0 (no noise)", make=_options(smooth="noise", smooth_sigma=0)),
    refused("ExplainOptions.smooth_sigma", "-1", make=_options(smooth="noise", smooth_sigma=-1)),
    refused("ExplainOptions.smooth_sigma", "nan", make=_options(smooth="noise", smooth_sigma=math.nan)),
    refused("ExplainOptions.smooth_sigma", "'a'", make=_options(smooth="noise", smooth_sigma="a")),
    refused(
        "ExplainOptions.smooth_sigma",
        "15 (percent)",
        make=_options(smooth="noise", smooth_sigma=15),
    ),
    refused("ExplainOptions.smooth_scales", "[]", make=_options(smooth="aug", smooth_scales=[])),
    refused("ExplainOptions.smooth_scales", "5", make=_options(smooth="aug", smooth_scales=5)),
    refused("ExplainOptions.smooth_scales", "[1.0, 0.0]", make=_options(smooth="aug", smooth_scales=[1.0, 0.0])),
    refused(
        "ExplainOptions.smooth_scales",
        "(90, 100, 110) (percent)",
        make=_options(smooth="aug", smooth_scales=(90, 100, 110)),
    ),
    fits("ExplainOptions.smooth_scales", "(0.75, 1.5)", make=_options(smooth="aug", smooth_scales=(0.75, 1.5))),
    at_setup(
        "ExplainOptions.smooth_scales",
        "(0.1,) (maps of 1x1)",
        make=_options(smooth="aug", smooth_scales=(0.1,)),
        names=r"ExplainOptions\(smooth='aug', smooth_scales=\(0\.1,\)\) fails",
    ),
    at_setup(
        "ExplainOptions.smooth_scales", "(0.01,) (images of 0 pixels)", make=_options(smooth="aug", smooth_scales=(0.01,)), names=r"smooth_scales=\(0\.01,\)"
    ),
    refused("ExplainOptions.seed", "1.5", 1.5),
    refused("ExplainOptions.seed", "'0'", "0"),
    refused("ExplainOptions.seed", "None", None),
    at_setup("ExplainOptions.seed", "2**70 with smooth='noise'", make=_options(smooth="noise", seed=2**70), names=r"seed=1180591620717411303424\) fails"),
    fits("ExplainOptions.seed", "-1 with smooth='noise'", make=_options(smooth="noise", seed=-1)),
    refused("ExplainOptions.output_transform", "1.0", 1.0),
    refused("ExplainOptions.output_transform", "[0]", [0]),
    at_setup(
        "ExplainOptions.output_transform",
        "'logits' (the model returns a tensor)",
        "logits",
        names=r"output_transform='logits'.*did you mean output_transform=None",
    ),
    at_setup("ExplainOptions.output_transform", "'logit' (typo)", "logit"),
    at_setup("ExplainOptions.output_transform", "0 (an index, no tuple)", 0),
    at_setup(
        "ExplainOptions.output_transform",
        "a callable that raises",
        _raising,
        names=r"ExplainOptions\(output_transform=<function _raising.*\) raised IndexError",
    ),
    at_setup(
        "ExplainOptions.output_transform",
        "a callable giving (N,)",
        lambda output: output[:, 0],
        names=r"output_transform=<function .*gives a tensor of shape \(2,\)",
    ),
    fits("ExplainOptions.output_transform", "a callable giving the logits", lambda output: output),
    refused("ExplainOptions.precision", "'16'", "16"),
    refused("ExplainOptions.precision", "32", 32),
    refused("ExplainOptions.precision", "'16-mixed'", "16-mixed"),
    fits("ExplainOptions.precision", "'32'", "32"),
    # ------------------------------------------------------------------ ImageStyle fields
    refused("ImageStyle.max_images", "0", 0, names=r"ImageStyle: max_images"),
    refused("ImageStyle.max_images", "'16'", "16", names=r"ImageStyle: max_images"),
    refused("ImageStyle.max_images", "1.5", 1.5, names=r"ImageStyle: max_images"),
    fits("ImageStyle.max_images", "10000", 10000),
    refused("ImageStyle.max_labels", "0", 0, names=r"ImageStyle: max_labels"),
    refused("ImageStyle.max_labels", "1.5", 1.5, names=r"ImageStyle: max_labels"),
    fits("ImageStyle.max_labels", "1000", 1000),
    refused("ImageStyle.mean", "mean without std", [0.5] * 3, names=r"ImageStyle: give both mean and std"),
    refused("ImageStyle.std", "std without mean", [0.5] * 3, names=r"ImageStyle: give both mean and std"),
    refused("ImageStyle.mean", "'abc'", make=_style(mean="abc", std=0.2), names=r"ImageStyle: mean must be"),
    refused("ImageStyle.mean", "[0.5, nan, 0.5]", make=_style(mean=[0.5, math.nan, 0.5], std=0.2), names=r"ImageStyle: mean must be"),
    refused("ImageStyle.mean", "a (3, 2) tensor", make=_style(mean=torch.zeros(3, 2), std=0.2), names=r"ImageStyle: mean must be"),
    refused("ImageStyle.std", "[0, 1, 1]", make=_style(mean=0.5, std=[0, 1, 1]), names=r"ImageStyle: std must be"),
    refused("ImageStyle.std", "3 means, 2 stds", make=_style(mean=[0.5] * 3, std=[0.2] * 2), names=r"ImageStyle: mean has 3 values and std 2"),
    at_setup(
        "ImageStyle.mean",
        "4 values for 3 channels",
        make=_style(mean=[0.5] * 4, std=[0.25] * 4),
        names=r"style=ImageStyle\(mean=\[0\.5, 0\.5, 0\.5, 0\.5\]\) has 4 values",
    ),
    at_setup(
        "ImageStyle.std", "2 values for 3 channels", make=_style(mean=0.5, std=[0.25] * 2), names=r"style=ImageStyle\(std=\[0\.25, 0\.25\]\) has 2 values"
    ),
    fits(
        "ImageStyle.mean",
        "[123.7, 116.3, 103.5] (0-255 units)",
        make=_style(mean=[123.7, 116.3, 103.5], std=[58.4, 57.1, 57.4]),
        warns=r"turns 100% of the probe pixels into values outside \[0, 1\].*divide them by 255 \(mean=\[0\.485, 0\.456, 0\.406\], std=\[0\.229, ",
    ),
    fits("ImageStyle.mean", "0.5 (one number)", make=_style(mean=0.5, std=0.25)),
    fits("ImageStyle.mean", "numpy arrays", make=_style(mean=np.array([0.5] * 3), std=np.array([0.25] * 3))),
    refused("ImageStyle.colormap", "'JET'", "JET", names=r"colormap='JET' is not a matplotlib colormap"),
    refused("ImageStyle.colormap", "'jte' (typo)", "jte"),
    refused("ImageStyle.colormap", "5", 5, names=r"ImageStyle: colormap"),
    refused("ImageStyle.colormap", "None", None, names=r"ImageStyle: colormap"),
    fits("ImageStyle.colormap", "'gray'", "gray"),
    refused("ImageStyle.overlay_alpha", "50 (percent)", 50, names=r"ImageStyle: overlay_alpha"),
    refused("ImageStyle.overlay_alpha", "-0.1", -0.1, names=r"ImageStyle: overlay_alpha"),
    refused("ImageStyle.overlay_alpha", "'x'", "x", names=r"ImageStyle: overlay_alpha"),
    refused("ImageStyle.overlay_alpha", "nan", math.nan, names=r"ImageStyle: overlay_alpha"),
    fits("ImageStyle.overlay_alpha", "0", 0),
    refused("ImageStyle.class_names", "'cat'", "cat", names=r"ImageStyle: class_names"),
    refused("ImageStyle.class_names", "[]", [], names=r"ImageStyle: class_names"),
    refused("ImageStyle.class_names", "{0: 'a', 1: 'b', 2: 'c'}", {0: "a", 1: "b", 2: "c"}, names=r"ImageStyle: class_names"),
    at_setup(
        "ImageStyle.class_names",
        "2 names for 3 classes",
        ["a", "b"],
        names=rf"style=ImageStyle\(class_names=\.\.\.\) has 2 names but the model has {NUM_CLASSES} outputs",
    ),
    at_setup("ImageStyle.class_names", "4 names for 3 classes", ["a", "b", "c", "d"], names=r"style=ImageStyle\(class_names=\.\.\.\) has 4 names"),
    fits("ImageStyle.class_names", "[0, 1, 2] (ints)", [0, 1, 2], report=True),
    fits("ImageStyle.class_names", "['a', 'a', 'a'] (repeated)", ["a", "a", "a"]),
    fits("ImageStyle.class_names", "HTML and 500-character names", ["<script>alert(1)</script>", "x" * 500, "a & b"], report=True),
]


def _construct(case: Case, model: nn.Module) -> cc.CAMMonitor:
    """The monitor of a row: 4 probe images, Grad-CAM, no report, unless the row sets them."""
    return cc.CAMMonitor(**{"probe": 4, "methods": ["gradcam"], "report": case.report, **case.make(model)})


def _cases(*outcomes: str) -> List[Any]:
    return [param for param in CASES if param.values[0].outcome in outcomes]


def test_the_table_covers_every_argument_and_field():
    """A new argument or field needs rows here: wrong values refused (naming it), and a value the fit works with."""
    import inspect
    from dataclasses import fields

    covered = {param.values[0].argument for param in CASES} - {"(every default)"}
    arguments = set(inspect.signature(cc.CAMMonitor.__init__).parameters) - {"self"}
    internal = {"probability", "target_classes"}  # set by explain()/faithfulness() themselves (SPEC-1.0)
    option_fields = {f"ExplainOptions.{f.name}" for f in fields(cc.ExplainOptions) if f.name not in internal}
    style_fields = {f"ImageStyle.{f.name}" for f in fields(cc.ImageStyle)}
    assert len(arguments) == 14
    assert arguments | option_fields | style_fields == covered, sorted((arguments | option_fields | style_fields) ^ covered)
    for argument in covered - {"explain_options", "style"}:
        outcomes = {param.values[0].outcome for param in CASES if param.values[0].argument == argument}
        assert CONSTRUCTION in outcomes or SETUP in outcomes, f"{argument}: no wrong value refused"
        # std: with mean (its rows); reshape: TinyNet has no token layer (tests/capture/test_auto_transformers.py has them)
        assert FIT in outcomes or argument in {"ImageStyle.std", "ExplainOptions.reshape"}, f"{argument}: no value the fit works with"


@pytest.mark.parametrize("case", _cases(CONSTRUCTION))
def test_refused_values_name_their_argument(case: Case):
    with pytest.raises((ValueError, TypeError)) as refusal:
        _construct(case, nn.Identity())
    assert re.search(case.names, str(refusal.value)), f"the message does not name {case.argument}: {refusal.value}"


@pytest.mark.parametrize("case", [pytest.param(param.values[0], id=param.id) for param in _cases(SETUP, FIT)])  # without the fit's xfails
def test_values_that_construct_are_kept_as_given(case: Case):
    """The fast half of the fit cases: the value constructs (its check is the fit's or the setup's)."""
    monitor = _construct(case, _model())
    assert isinstance(monitor, cc.CAMMonitor)


def _model() -> nn.Module:
    from _lightning_models import TinyNet

    return TinyNet()


@pytest.mark.slow
@pytest.mark.parametrize("case", _cases(SETUP, FIT))
def test_constructed_values_are_refused_at_setup_or_fit(case: Case, tmp_path):
    pl.seed_everything(0)
    model = _model()
    monitor = _construct(case, model)
    batches = CountTrainingBatches()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            trainer = fit_with_checkpoint(tmp_path, [monitor, batches], model=model)
        except Exception as error:  # noqa: BLE001 - which outcome it is, is the test
            assert case.outcome == SETUP, f"{case.argument}={case.value}: {type(error).__name__} after {batches.batches} training batches: {error}"
            assert batches.batches == 0, f"refused after {batches.batches} training batches: {error}"
            assert re.search(case.names, str(error)), f"the message does not name {case.argument}: {error}"
            return
    said = [str(w.message) for w in caught]
    assert case.outcome == FIT, f"{case.argument}={case.value} was not refused; warnings: {said}"
    assert (tmp_path / "ckpt" / "last.ckpt").exists(), "no checkpoint"
    assert trainer.current_epoch == (1 if case.stops else 2)
    p = monitor.prefix
    if case.runs:
        assert f"{p}/time_s" in trainer.callback_metrics, "the monitor did not run"
        errors = float(trainer.callback_metrics[f"{p}/errors"])
        # a failed write is counted in the next run's cam/errors; one found at the end of the fit (the background
        # writer finishing the last images, the report) is reported by its warning alone
        failed = [message for message in said if re.search(r"^CAMMonitor.*: .* failed at ", message)]
        assert (errors > 0 or bool(failed)) == case.errors, f"{errors} run-time errors; warnings: {said}"
    else:
        assert f"{p}/time_s" not in trainer.callback_metrics
    if case.warns:
        assert any(re.search(case.warns, message) for message in said), said
    if case.report and not case.errors:
        (report,) = tmp_path.rglob("report.html")
        page = report.read_text(encoding="utf-8")
        assert page.rstrip().endswith("</html>") and "<script>alert(1)</script>" not in page  # class names are escaped


# ---------------------------------------------------------------------------------------------- generated junk values

#: Values of every type a user may pass by mistake (numbers of every size and sign, strings, containers, None).
JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),  # 10**400 (an OverflowError in budget=) is a row of CASES
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.binary(max_size=4),
    st.lists(st.one_of(st.integers(-5, 300), st.floats(-1e3, 1e3), st.text(max_size=4)), max_size=4),
    st.tuples(st.floats(allow_nan=True), st.floats(allow_nan=True)),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
    st.sampled_from(["gradcam", "GradCAM", "auto", "features", "epoch", "jet", "cam", "logits", "vit", "noise", "32", "warn", "0.5"]),
)

JUNK_TARGETS = sorted(
    {param.values[0].argument for param in CASES} - {"explain_options", "style", "(every default)"}  # the objects: their fields are
)


@pytest.mark.parametrize("argument", JUNK_TARGETS)
@settings(max_examples=30, derandomize=True, database=None, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=JUNK)
def test_junk_values_are_refused_with_the_argument_named(argument: str, value: Any):
    """Any value either constructs, or is refused by a ValueError or TypeError naming the argument: never another
    exception (an OverflowError, a KeyError) and never a message that leaves the user guessing which argument."""
    try:
        cc.CAMMonitor(**_kwargs(argument, value))
    except (ValueError, TypeError) as refusal:
        assert re.search(_name_of(argument), str(refusal)), f"{argument}={value!r}: the message does not name it: {refusal}"


# ---------------------------------------------------------------------------------------------- checkpoint entries


def _resume_monitor(**changes: Any) -> cc.CAMMonitor:
    settings_ = {"methods": ["gradcam"], "target_layer": "features", "probe": (IMAGES, LABELS), "metrics": (), "step": "epoch", **changes}
    return cc.CAMMonitor(**settings_)


def _first_fit(tmp_path, **changes: Any) -> Dict[str, Any]:
    pl.seed_everything(3)
    fit_with_checkpoint(tmp_path, [_resume_monitor(**changes)], max_epochs=1, logger=False)
    return torch.load(str(tmp_path / "ckpt" / "last.ckpt"), weights_only=False)


def _entry(checkpoint: Dict[str, Any]) -> Dict[str, Any]:
    (key,) = [k for k in checkpoint["callbacks"] if k.startswith("CAMMonitor")]
    return checkpoint["callbacks"][key]


def _resume(tmp_path, checkpoint: Dict[str, Any], monitor: cc.CAMMonitor) -> pl.Trainer:
    path = tmp_path / "edited.ckpt"
    torch.save(checkpoint, str(path))
    pl.seed_everything(3)
    return fit_with_checkpoint(tmp_path, [monitor], max_epochs=2, logger=False, ckpt_path=str(path))


def _partial(checkpoint: Dict[str, Any]) -> None:
    del _entry(checkpoint)["previous_maps"]


def _version_1(checkpoint: Dict[str, Any]) -> None:
    _entry(checkpoint)["version"] = 1


@dataclass(frozen=True)
class Unusable:
    """A checkpoint entry the resumed monitor cannot use, and the warning that says so."""

    edit: Optional[Callable[[Dict[str, Any]], None]]  #: what is changed in the saved checkpoint (None: nothing)
    monitor: Dict[str, Any]  #: how the resumed monitor differs from the saved one
    warning: str  #: a regex of the warning


UNUSABLE = [
    pytest.param(
        Unusable(_partial, {}, r"loading the checkpoint's CAMMonitor entry failed \(ValueError: the entry is partial: it lacks \['previous_maps'\]"),
        id="partial entry",
    ),
    pytest.param(
        Unusable(_version_1, {}, r"the checkpoint's CAMMonitor state has version 1, this one 2; drift is measured from this run on"),
        id="another version",
    ),
    pytest.param(
        Unusable(
            None,
            {"methods": ["gradcam", "layercam"]},
            r"CAMMonitor: the checkpoint's CAMMonitor entry \(prefix 'cam'\) was saved with methods \['gradcam'\], this monitor "
            r"\['gradcam', 'layercam'\]; drift is measured from this run on and the alarm state starts afresh",
        ),
        id="other methods",
    ),
    pytest.param(
        Unusable(
            None,
            {"target_layer": "features.3"},
            r"CAMMonitor: the checkpoint's CAMMonitor entry \(prefix 'cam'\) was saved with target_layer \['features'\], this monitor "
            r"\['features\.3'\]; drift is measured from this run on",
        ),
        id="another target_layer",
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize("case", UNUSABLE)
def test_an_unusable_checkpoint_entry_is_reported_and_the_resumed_fit_completes(case: Unusable, tmp_path):
    """Empty entries and NaN first maps: test_checkpoint_entries.py; another probe set: test_callback_resume.py. Before:
    other methods or another named target_layer (another state key) got only Lightning's 'Please add the following
    callbacks'."""
    alarm = [cc.ThresholdAlarm("shortcut_score", above=0.0)]  # fires at every run: the alarm state must start afresh too
    checkpoint = _first_fit(tmp_path, alarm=alarm)
    assert _entry(checkpoint)["alarm_state"], "the saved alarm state is not empty"
    if case.edit is not None:
        case.edit(checkpoint)
    monitor = _resume_monitor(alarm=alarm, **case.monitor)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = _resume(tmp_path, checkpoint, monitor)
    said = [str(w.message) for w in caught]
    assert [m for m in said if re.search(case.warning, m)], said
    assert trainer.current_epoch == 2 and (tmp_path / "ckpt" / "last.ckpt").exists()
    assert "cam/gradcam/drift_first" not in trainer.callback_metrics, "drift against the old first maps: the history was used"
    assert monitor.history.first["gradcam"].shape == (4, 16, 16)  # the resumed run's maps are the new first ones
    assert [m for m in said if m.startswith("CAMMonitor alarm at epoch 1")], "the alarm state was not reset: the alarm was not said"


@pytest.mark.slow
@pytest.mark.parametrize("case", ["a 1.0 entry saved while an alarm fired", "an entry from before 1.0 ([method, metric] alarm pairs)"])
def test_a_usable_checkpoint_entry_keeps_its_history(case: str, tmp_path):
    """Before: a 1.0 entry with an alarm firing ([method, metric, class] triples) was refused as 'alarm_state must be a
    list of [method, metric] pairs', so every run resumed while its alarm fired lost its drift history."""
    alarm = [cc.ThresholdAlarm("shortcut_score", above=0.0)]
    checkpoint = _first_fit(tmp_path, alarm=alarm)
    saved = _entry(checkpoint)["alarm_state"]
    assert saved == [["gradcam", "shortcut_score", -1]]
    if "before 1.0" in case:
        _entry(checkpoint)["alarm_state"] = [entry[:2] for entry in saved]
    monitor = _resume_monitor(alarm=alarm)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = _resume(tmp_path, checkpoint, monitor)
    said = [str(w.message) for w in caught if "CAMMonitor" in str(w.message)]
    assert not [m for m in said if "checkpoint" in m], said
    assert not [m for m in said if "alarm at epoch 1" in m], "the alarm that was firing at the save was said again as new"
    assert "cam/gradcam/drift_first" in trainer.callback_metrics, "the history was not used"
    assert float(trainer.callback_metrics["cam/errors"]) == 0.0
