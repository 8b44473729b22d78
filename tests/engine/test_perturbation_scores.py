"""``cc.perturbation_scores``: the functional API of deletion/insertion AUC and ROAD.

The metric functions themselves are checked against NumPy references (tests/metrics/test_perturbation_curves.py) and
the reference libraries (test_perturbation_curves_crosscheck.py); here: the API composes ``explain``'s maps with them
(same numbers), checks its arguments (messages list the valid choices), leaves model and global RNG as found, and puts
NaN for images that cannot be explained.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import cam_callbacks as cc
from cam_callbacks.engine.scorers import ModelScorer
from cam_callbacks.metrics.perturbation_curves import CURVE_METRICS, deletion_insertion, road


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    ).eval()  # fmt: skip


@pytest.fixture
def images():
    return torch.randn(3, 3, 12, 12, generator=torch.Generator().manual_seed(1))


#: The curves themselves (ARCC, which combines ROAD with coherency and complexity, has tests of its own).
CURVES = [metric for metric in CURVE_METRICS if metric != "arcc"]


def test_same_numbers_as_the_metric_functions_on_explains_maps(images):
    net = small_net()
    got = cc.perturbation_scores(
        net,
        images,
        "gradcam",
        "3",
        targets=[0, 1, 2],
        metrics=CURVES,
        reduction="none",
        steps=5,
        baseline="blur",
        percentiles=[25, 75],
        seed=3,
    )
    maps = cc.explain(net, images, "gradcam", "3", targets=[0, 1, 2])
    targets = torch.tensor([0, 1, 2])
    want = deletion_insertion(images, maps, targets, ModelScorer(net, 7), steps=5, baseline="blur")
    want.update(road(images, maps, targets, ModelScorer(net, 7), percentiles=[25, 75], seed=3))
    assert list(got) == CURVES
    for metric in CURVES:
        torch.testing.assert_close(got[metric], want[metric], rtol=1e-5, atol=1e-6)
    means = cc.perturbation_scores(net, images, "gradcam", "3", targets=[0, 1, 2], steps=5, baseline="blur", percentiles=[25, 75], seed=3)
    assert sorted(means) == ["deletion_auc", "insertion_auc", "road"]
    assert means["road"] == pytest.approx(float(want["road"].mean()), abs=1e-6)


def test_model_and_global_rng_left_as_found(images):
    net = small_net().train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    torch.manual_seed(9)
    state = torch.random.get_rng_state()
    cc.perturbation_scores(net, images, "scorecam", "3", steps=3, percentiles=[50])
    assert torch.equal(torch.random.get_rng_state(), state)
    assert net.training and all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    assert all(p.grad is None for p in net.parameters())


def test_nonfinite_image_gets_nan_and_is_left_out_of_the_mean(images):
    net = small_net()
    clean = cc.perturbation_scores(net, images[[0, 2]], "gradcam", "3", reduction="none", steps=3, percentiles=[50])
    broken = images.clone()
    broken[1, 0, 0, 0] = float("nan")
    with pytest.warns(UserWarning, match="1 of 3 images are not finite"):
        got = cc.perturbation_scores(net, broken, "gradcam", "3", reduction="none", steps=3, percentiles=[50])
    for metric, values in got.items():
        assert math.isnan(float(values[1]))
        torch.testing.assert_close(values[[0, 2]], clean[metric])


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"metrics": ["deletion", "road"]}, ValueError, r"'deletion' is not valid; choose from \['deletion_auc', 'insertion_auc', 'road_morf'"),
        ({"metrics": []}, ValueError, "metrics is empty"),
        ({"steps": 0}, ValueError, "steps must be a positive int"),
        ({"baseline": "black"}, ValueError, r"choose from \['zero', 'blur'\]"),
        ({"percentiles": [50, 101]}, ValueError, r"numbers in \[0, 100\]"),
        ({"road_noise": -1.0}, ValueError, "road_noise must be >= 0"),
        ({"reduction": "sum"}, ValueError, r"choose from \['mean', 'none'\]"),
        ({"targets": torch.ones(3, 4, dtype=torch.bool)}, ValueError, "not multi-hot"),
        ({"smoth": "noise"}, TypeError, "did you mean 'smooth'"),
    ],
)
def test_bad_arguments(images, kwargs, error, message):
    with pytest.raises(error, match=message):
        cc.perturbation_scores(small_net(), images, "gradcam", "3", **kwargs)
