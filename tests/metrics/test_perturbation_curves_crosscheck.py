"""Deletion/insertion AUC against torchcam 0.5.0's ``DeletionInsertionMetric`` and ROAD against pytorch-grad-cam 1.5.7
(``RemoveMostRelevantFirst``/``RemoveLeastRelevantFirst`` with ``NoisyLinearImputer``, ``ROADCombined``).

Fair conventions: torchcam's metric ranks the pixels by its extractor's map; a stand-in extractor hands it our maps
(torchcam's own Grad-CAM would differ: inside the metric it differentiates the *softmax* scores), and its
``logits_fn`` is the softmax (our scores are target probabilities). pytorch-grad-cam scores with
``ClassifierOutputSoftmaxTarget`` (target probability; ``ClassifierOutputTarget`` would be the logit).

ROAD's noise: pytorch-grad-cam draws it from the global RNG for the imputed pixels of one image at a time; ours from a
private generator for every row. So the exact comparison is without noise (``NoisyLinearImputer(noise=0)``, the same
classes ``ROADCombined`` is built from): the only difference left is our conjugate-gradient solve against scipy's
direct ``spsolve`` (pixel errors ~1e-4, measured), tolerance 2e-3 on the probability changes (measured 1.8e-5).
With noise (``ROADCombined`` itself, std 0.01) the draws differ; the scores agree within 0.03 (measured 4.6e-3): the
noise's own effect, not a bias.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import List

import numpy as np
import pytest
import torch
import torchvision
from pytorch_grad_cam.metrics.perturbation_confidence import PerturbationConfidenceMetric, RemoveLeastRelevantFirst, RemoveMostRelevantFirst
from pytorch_grad_cam.metrics.road import NoisyLinearImputer, ROADCombined
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget
from torch import Tensor, nn
from torchcam.metrics import DeletionInsertionMetric

import cam_callbacks as cc
from cam_callbacks.engine.scorers import ModelScorer
from cam_callbacks.metrics.perturbation_curves import baseline_images, deletion_insertion, road

pytestmark = pytest.mark.crosscheck


class FixedMaps:
    """A stand-in torchcam extractor whose map is given: torchcam's metric only ranks the pixels by it."""

    def __init__(self, model: nn.Module, maps: Tensor) -> None:
        self.model, self.maps = model, maps

    @contextmanager
    def _hooks_off(self):
        yield

    def __call__(self, class_idx, scores) -> List[Tensor]:
        return [self.maps]

    @staticmethod
    def fuse_cams(cams: List[Tensor]) -> Tensor:
        return cams[0]


@pytest.fixture(scope="module")
def setup():
    """resnet18 (BN calibrated on one batch, last layer x10), 3 images at 64 px, their Grad-CAM maps (layer3)."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    with torch.no_grad():
        model.train()
        model(torch.randn(8, 3, 64, 64, generator=torch.Generator().manual_seed(1)))
        model.fc.weight.mul_(10.0)
    model.eval()
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(123))
    with torch.no_grad():
        targets = model(x).argmax(1)
    maps = cc.explain(model, x, "gradcam", "layer3", targets=targets)
    return model, x, targets, maps


@pytest.mark.slow
@pytest.mark.parametrize("baseline", ["zero", "blur"])
def test_deletion_insertion_vs_torchcam(setup, baseline):
    """Tolerance 1e-5 on AUCs in [0, 1] (float32 logits in other batches); measured <= 1.2e-7."""
    model, x, targets, maps = setup
    ours = deletion_insertion(x, maps, targets, ModelScorer(model, 64), steps=20, baseline=baseline)
    reference = copy.deepcopy(model)
    blur = None if baseline == "zero" else (lambda images: baseline_images(images, "blur"))
    for i in range(3):  # one image per update: torchcam accumulates the batch's mean
        metric = DeletionInsertionMetric(FixedMaps(reference, maps[i : i + 1]), lambda out: torch.softmax(out, -1), steps=20, baseline=blur)
        metric.update(x[i : i + 1].clone(), class_idx=int(targets[i]))
        theirs = metric.summary()
        assert float(ours["deletion_auc"][i]) == pytest.approx(theirs["deletion_auc"], abs=1e-5)
        assert float(ours["insertion_auc"][i]) == pytest.approx(theirs["insertion_auc"], abs=1e-5)
    assert float(ours["insertion_auc"].std()) > 0.05 and float(ours["deletion_auc"].std()) > 0.05  # informative


def _pgc_changes(model, x, maps, targets, remover) -> np.ndarray:
    wanted = [ClassifierOutputSoftmaxTarget(int(c)) for c in targets]
    per_percentile = [
        PerturbationConfidenceMetric(remover(p, NoisyLinearImputer(noise=0.0)))(x, maps.numpy(), wanted, model) for p in range(10, 100, 10)
    ]
    return np.mean(np.float32(per_percentile), axis=0)


@pytest.mark.slow
def test_road_without_noise_vs_pytorch_grad_cam(setup):
    """MoRF, LeRF and their combination at percentiles 10..90. Tolerance 2e-3 (our CG stops at relative residual 1e-5:
    pixel errors ~1e-4 against spsolve); measured 1.8e-5 (MoRF) and 1.2e-5 (LeRF)."""
    model, x, targets, maps = setup
    ours = road(x, maps, targets, ModelScorer(model, 64), noise=0.0)
    reference = copy.deepcopy(model)
    morf = _pgc_changes(reference, x, maps, targets, RemoveMostRelevantFirst)
    lerf = _pgc_changes(reference, x, maps, targets, RemoveLeastRelevantFirst)
    np.testing.assert_allclose(ours["road_morf"].numpy(), morf, atol=2e-3)
    np.testing.assert_allclose(ours["road_lerf"].numpy(), lerf, atol=2e-3)
    np.testing.assert_allclose(ours["road"].numpy(), (lerf - morf) / 2, atol=2e-3)
    assert float(np.abs(morf).max()) > 0.05 and float(np.abs(lerf - morf).max()) > 0.05  # informative


@pytest.mark.slow
def test_road_combined_with_noise_vs_pytorch_grad_cam(setup):
    """``ROADCombined`` (noise 0.01 from the global RNG) against ours (noise 0.01, private generator): other draws, so
    tolerance 0.03 (the noise's effect on the probabilities; measured 4.6e-3)."""
    model, x, targets, maps = setup
    state = torch.random.get_rng_state()
    torch.manual_seed(0)
    try:
        theirs = ROADCombined()(x, maps.numpy(), [ClassifierOutputSoftmaxTarget(int(c)) for c in targets], copy.deepcopy(model))
    finally:
        torch.random.set_rng_state(state)
    ours = road(x, maps, targets, ModelScorer(model, 64))
    np.testing.assert_allclose(ours["road"].numpy(), theirs, atol=0.03)
