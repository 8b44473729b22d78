"""Unknown method names (methods/registry.py): every caller of the registry's lookup gets a did-you-mean for the ways
people write a method's name (``"GradCAM"``, ``"grad-cam"``, ``"gradcam++"``) and the list of valid names."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import cam_callbacks as cc
from cam_callbacks.engine.options import ExplainOptions
from cam_callbacks.methods.registry import get_method, method_choices


@pytest.mark.parametrize(
    "written, meant",
    [
        ("GradCAM", "gradcam"),
        ("grad-cam", "gradcam"),
        ("gradcam++", "gradcampp"),
        ("Grad-CAM++", "gradcampp"),
        ("Score_CAM", "scorecam"),
        ("layercamm", "layercam"),
    ],
)
def test_a_name_written_another_way_gets_a_did_you_mean(written, meant):
    """Before: "method='GradCAM' is not a known CAM method; choose from [...]", no did-you-mean."""
    with pytest.raises(ValueError) as refused:
        get_method(written)
    assert str(refused.value) == f"method={written!r} is not a known CAM method; did you mean {meant!r}? choose from {cc.available_methods()}"
    assert get_method(meant).name == meant


def test_no_did_you_mean_without_a_close_name():
    assert method_choices("occlusion") == f"choose from {cc.available_methods()}"
    assert method_choices(5) == f"choose from {cc.available_methods()}"


def test_explain_and_options_say_it_too():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)).eval()
    with pytest.raises(ValueError, match=r"method='GradCAM' is not a known CAM method; did you mean 'gradcam'\?"):
        cc.explain(net, torch.randn(1, 3, 8, 8), method="GradCAM")
    with pytest.raises(ValueError, match=r"method='gradcam\+\+' is not a known CAM method; did you mean 'gradcampp'\?"):
        ExplainOptions(method_options={"gradcam++": {}})


def test_the_monitor_s_methods_argument_says_it_too():
    with pytest.raises(ValueError, match=r"methods contains 'GradCAM', which is not a known CAM method; did you mean 'gradcam'\? choose from \["):
        cc.CAMMonitor(methods=["GradCAM"])
