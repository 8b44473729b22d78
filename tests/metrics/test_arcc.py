"""ARCC ("How to Evaluate and Refine your CAM", arXiv 2605.14641): the harmonic mean of Coherency, 1 - Complexity and
``clip(2 * ROAD, 0, 1)``, ROAD-combined at the percentiles 20, 40, 60, 80 (pytorch-grad-cam 1.5.7's ``ARCC``; its
docstring says "geometric mean", its code computes the harmonic one, and so do we).

By hand against NumPy; ``perturbation_scores(metrics=["arcc"])`` composed of ``faithfulness``'s Coherency and
Complexity and ROAD at those percentiles; the callback logs it (``CAMMonitor(metrics=(..., "arcc"))``).

Against pytorch-grad-cam's ``ARCC`` (``crosscheck``), with ROAD's imputation noise handled as in
``test_perturbation_curves_crosscheck.py``: without noise (its ``ARCC`` with the ``NoisyLinearImputer(noise=0)`` of
the classes ``ROADCombined`` is built from) the only difference left is our conjugate-gradient imputation against its
``spsolve``, tolerance 2e-3 (measured 1.3e-5 on ARCC values 0.03 to 0.31); with noise (its ``ARCC`` as it is: std 0.01
from the global RNG; ours from a private generator) the draws differ, tolerance 0.05 (measured 1.7e-2; our own ARCC
with four different seeds spreads by up to 3.6e-2 on these images: the noise's effect, not a bias; ARCC is sensitive
to it where ROAD is small, through ``1 / clip(2 * ROAD)``). One difference of convention is taken out:
pytorch-grad-cam uses one target object both for the map of the explanation image (Coherency) and for ROAD's scores. Our maps are
gradients of the target **logit** and ROAD scores the target **probability** (ARCC rescales ROAD as ``2 * ROAD``,
which assumes probabilities); so the test's target returns the logit of outputs autograd tracks (the reference's
backward pass) and the softmax probability of the others (ROAD's scores, computed under ``no_grad``). Its Coherency
adds 1e-8 to the Pearson denominator and gives 0.5 to a constant map (ours: 0, as for ADCC), its ARCC 1e-8 to each
term; the maps here are not constant.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torchvision
from _calibration import calibrate_batchnorm
from torch import nn

import cam_callbacks as cc
from cam_callbacks.engine.scorers import ModelScorer
from cam_callbacks.metrics.faithfulness import ARCC_ROAD_PERCENTILES, arcc
from cam_callbacks.metrics.perturbation_curves import CURVE_METRICS, road


def numpy_arcc(coherency, complexity, road_combined) -> np.ndarray:
    terms = np.stack([np.asarray(coherency, float), 1 - np.asarray(complexity, float), np.clip(2 * np.asarray(road_combined, float), 0, 1)])
    out = np.zeros(terms.shape[1])
    defined = (terms > 0).all(axis=0)
    out[defined] = 3 / (1 / terms[:, defined]).sum(axis=0)
    return out


def test_arcc_by_hand():
    coherency = torch.tensor([0.9, 0.9, 0.8, 0.0, 0.7, 0.6], dtype=torch.float64)
    complexity = torch.tensor([0.25, 0.25, 0.1, 0.2, 1.0, 0.3], dtype=torch.float64)
    road_combined = torch.tensor([0.3, -0.1, 0.7, 0.2, 0.2, 0.5], dtype=torch.float64)  # 0.7 -> clipped to 1
    got = arcc(coherency, complexity, road_combined)
    np.testing.assert_allclose(got.numpy(), numpy_arcc(coherency, complexity, road_combined), atol=1e-12)
    assert got[0] == pytest.approx(3 / (1 / 0.9 + 1 / 0.75 + 1 / 0.6))
    assert got[2] == pytest.approx(3 / (1 / 0.8 + 1 / 0.9 + 1))
    assert got[1] == 0 and got[3] == 0 and got[4] == 0  # a zero term: 0, never NaN or a division by zero
    assert got[5] == pytest.approx(3 / (1 / 0.6 + 1 / 0.7 + 1))
    with pytest.raises(ValueError, match="same length"):
        arcc(coherency, complexity[:2], road_combined)


def test_arcc_is_a_perturbation_metric_and_a_callback_metric():
    assert "arcc" in CURVE_METRICS and ARCC_ROAD_PERCENTILES == (20, 40, 60, 80)
    from cam_callbacks.monitor.alarm import ALARM_METRICS

    assert "arcc" in ALARM_METRICS
    cc.ThresholdAlarm("arcc", below=0.5)


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    ).eval()


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(3, 3, 12, 12, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("method", ["gradcam", "refinecam"])
def test_composed_of_faithfulness_and_road(images, method):
    net = small_net()
    layer = "4" if method == "gradcam" else ["2", "4"]
    targets = [0, 1, 2]
    got = cc.perturbation_scores(net, images, method, layer, targets=targets, metrics=["arcc"], reduction="none", seed=3)
    assert list(got) == ["arcc"]
    parts = cc.faithfulness(net, images, method, layer, targets=targets, reduction="none")
    maps = cc.explain(net, images, method, layer, targets=targets)
    road_combined = road(images, maps, torch.tensor(targets), ModelScorer(net, 7), percentiles=ARCC_ROAD_PERCENTILES, seed=3)["road"]
    want = numpy_arcc(parts["coherency"], parts["complexity"], road_combined)
    np.testing.assert_allclose(got["arcc"].numpy(), want, atol=1e-6)


def test_shares_road_at_its_percentiles_and_computes_its_own_otherwise(images):
    net = small_net()
    shared = cc.perturbation_scores(net, images, "gradcam", "4", targets=[0, 1, 2], metrics=["road", "arcc"], percentiles=[20, 40, 60, 80], reduction="none")
    alone = cc.perturbation_scores(net, images, "gradcam", "4", targets=[0, 1, 2], metrics=["arcc"], percentiles=[50], reduction="none")
    with_other_road = cc.perturbation_scores(net, images, "gradcam", "4", targets=[0, 1, 2], metrics=["road", "arcc"], percentiles=[50], reduction="none")
    torch.testing.assert_close(shared["arcc"], alone["arcc"])
    torch.testing.assert_close(with_other_road["arcc"], alone["arcc"])
    assert not torch.allclose(with_other_road["road"], shared["road"])  # "road" keeps its own percentiles


def test_nan_for_images_that_cannot_be_explained(images):
    bad = images.clone()
    bad[1, 0, 0, 0] = float("nan")
    with pytest.warns(UserWarning, match="1 of 3 images"):
        got = cc.perturbation_scores(small_net(), bad, "gradcam", "4", metrics=["arcc"], reduction="none")
    assert torch.isnan(got["arcc"][1]) and bool(torch.isfinite(got["arcc"][[0, 2]]).all())


@pytest.mark.slow
def test_callback_logs_arcc(tmp_path):
    import pytorch_lightning as pl

    from _lightning_models import TinyNet, loaders, read_events, trainer

    pl.seed_everything(0)
    monitor = cc.CAMMonitor(methods=["gradcam"], target_layer="features.6", probe=4, budget=None, metrics=("faithfulness", "arcc"))
    fit = trainer(tmp_path, [monitor], max_epochs=1)
    fit.fit(TinyNet(), *loaders())
    value = float(fit.callback_metrics["cam/gradcam/arcc"])
    assert 0.0 <= value <= 1.0
    assert "cam/gradcam/arcc" in read_events(tmp_path)["scalars"] and "cam/gradcam/adcc" in fit.callback_metrics


# --- against pytorch-grad-cam's ARCC ------------------------------------------------------------------------


class LogitForMapsProbabilityForScores:
    """A pytorch-grad-cam target: the logit of outputs that autograd tracks (the CAM's backward pass: our maps are
    gradients of the logit), the softmax probability of outputs computed without autograd (ROAD's scores)."""

    def __init__(self, category: int) -> None:
        self.category = category

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        if model_output.requires_grad:
            return model_output[..., self.category]
        return torch.softmax(model_output, dim=-1)[..., self.category]


@pytest.fixture(scope="module")
def setup():
    """resnet18 (BN calibrated on one batch, last layer x10), 4 images at 64 px, their Grad-CAM maps (layer4), on which
    ROAD is positive for every image (so no ARCC term is clipped to 0)."""
    torch.manual_seed(0)
    model = calibrate_batchnorm(torchvision.models.resnet18(weights=None, num_classes=10), 64, logit_scale=10.0)
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(123))
    with torch.no_grad():
        targets = model(x).argmax(1)
    maps = cc.explain(model, x, "gradcam", "layer4", targets=targets)
    return model, x, targets, maps


def _reference_arcc(model: nn.Module, x: torch.Tensor, maps: torch.Tensor, targets: torch.Tensor, noise: bool) -> np.ndarray:
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.metrics.arcc import ARCC
    from pytorch_grad_cam.metrics.perturbation_confidence import PerturbationConfidenceMetric, RemoveLeastRelevantFirst, RemoveMostRelevantFirst
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer

    reference = copy.deepcopy(model)  # pytorch-grad-cam calls zero_grad()/backward()
    metric = ARCC(base_method=GradCAM(reference, [reference.layer4]))
    assert tuple(metric.road.percentiles) == ARCC_ROAD_PERCENTILES
    if not noise:  # the same classes ROADCombined builds, with the imputer's noise set to 0
        for averager, remover in ((metric.road.morf_averager, RemoveMostRelevantFirst), (metric.road.lerf_averager, RemoveLeastRelevantFirst)):
            averager.imputer = lambda p, remover=remover: PerturbationConfidenceMetric(remover(p, NoisyLinearImputer(noise=0.0)))
    state = torch.random.get_rng_state()
    torch.manual_seed(0)
    try:
        return np.asarray(metric(x, maps.numpy(), [LogitForMapsProbabilityForScores(int(c)) for c in targets], reference), dtype=np.float64)
    finally:
        torch.random.set_rng_state(state)


@pytest.mark.crosscheck
@pytest.mark.slow
def test_without_noise_vs_pytorch_grad_cam(setup):
    model, x, targets, maps = setup
    ours = cc.perturbation_scores(model, x, "gradcam", "layer4", targets=targets, metrics=["arcc"], road_noise=0.0, reduction="none")["arcc"]
    theirs = _reference_arcc(model, x, maps, targets, noise=False)
    difference = float(np.abs(ours.numpy() - theirs).max())
    print(f"ARCC without noise vs pytorch-grad-cam: ours {ours.numpy().round(4)}, theirs {theirs.round(4)}, max abs {difference:.1e}")
    assert difference < 2e-3
    assert float(ours.min()) > 0.02 and float(ours.max() - ours.min()) > 0.1  # informative: no term clipped to 0, values differ


@pytest.mark.crosscheck
@pytest.mark.slow
def test_with_noise_vs_pytorch_grad_cam(setup):
    model, x, targets, maps = setup
    ours = cc.perturbation_scores(model, x, "gradcam", "layer4", targets=targets, metrics=["arcc"], reduction="none")["arcc"]
    theirs = _reference_arcc(model, x, maps, targets, noise=True)
    difference = float(np.abs(ours.numpy() - theirs).max())
    print(f"ARCC with noise 0.01 vs pytorch-grad-cam: ours {ours.numpy().round(4)}, theirs {theirs.round(4)}, max abs {difference:.1e}")
    assert difference < 0.05
