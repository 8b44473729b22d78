"""Eigen-CAM: hand-computed map, a NumPy reference, and pytorch-grad-cam (up to its arbitrary sign)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torchvision
from pytorch_grad_cam import EigenCAM

import cam_callbacks as cc
from cam_callbacks.methods.decomposition import eigencam


def _numpy_projection(a: np.ndarray) -> np.ndarray:
    """First-principal-component projection of one (K, h, w) activation, sign fixed by the channel mean."""
    k, h, w = a.shape
    x = a.reshape(k, h * w).T.astype(np.float64)
    xc = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(xc, full_matrices=False)
    p = xc @ vt[0]
    m = x.mean(axis=1)
    if np.sum((p - p.mean()) * (m - m.mean())) < 0:
        p = -p
    return p.reshape(h, w)


def _minmax(m: np.ndarray) -> np.ndarray:
    span = m.max() - m.min()
    return (m - m.min()) / span if span > 0 else np.zeros_like(m)


def test_hand_computed_map():
    # channels equal: X (positions x channels) = [[1,1],[2,2],[3,3],[4,4]]; centred rows -1.5..1.5 times [1,1];
    # v1 = [1,1]/sqrt2 up to sign; projection = sqrt2 * [-1.5,-0.5,0.5,1.5]; the channel mean [1,2,3,4]
    # rises with it, so this sign is kept; ReLU -> [0, 0, 0.5 sqrt2, 1.5 sqrt2].
    a = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[1.0, 2.0], [3.0, 4.0]]]).unsqueeze(0)
    s2 = np.sqrt(2.0)
    np.testing.assert_allclose(eigencam(a)[0].numpy(), [[0, 0], [0.5 * s2, 1.5 * s2]], atol=1e-6)
    # negated activations: the channel mean now falls left to right, the kept sign follows it
    np.testing.assert_allclose(eigencam(-a)[0].numpy(), [[1.5 * s2, 0.5 * s2], [0, 0]], atol=1e-6)


def test_matches_numpy_reference_on_random_activations():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(5, 7, 4, 3, generator=g) + torch.linspace(0, 2, 12).reshape(1, 1, 4, 3)
    got = eigencam(a).double().numpy()
    for i in range(5):
        np.testing.assert_allclose(got[i], np.maximum(_numpy_projection(a[i].numpy()), 0), atol=1e-5)


def test_constant_activations_give_zero_map():
    maps = cc.explain(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.Flatten(2), torch.nn.Unflatten(2, (4, 4)),
                                          torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 2)),
                      torch.ones(2, 3, 4, 4), method="eigencam", target_layer="0")
    assert torch.equal(maps, torch.zeros(2, 4, 4))


@pytest.mark.crosscheck
def test_against_pytorch_grad_cam_up_to_sign():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    x = torch.randn(6, 3, 128, 128)
    ours = cc.explain(model, x, method="eigencam", target_layer="layer4").numpy()
    reference = copy.deepcopy(model)
    theirs = EigenCAM(reference, target_layers=[reference.layer4])(input_tensor=x, targets=None)
    with torch.no_grad():
        feats = {}
        handle = model.layer4.register_forward_hook(lambda m, i, o: feats.setdefault("a", o.clone()))
        model(x)
        handle.remove()
    upsample = lambda m: torch.nn.functional.interpolate(torch.tensor(m)[None, None], size=(128, 128), mode="bilinear",
                                                         align_corners=False)[0, 0].numpy()
    agreeing_sign = 0
    for i in range(6):
        p = _numpy_projection(feats["a"][i].numpy())
        positive = _minmax(upsample(np.maximum(p, 0)))
        negative = _minmax(upsample(np.maximum(-p, 0)))
        assert positive.std() > 0.05 and np.abs(positive - negative).max() > 0.5  # the sign matters here
        np.testing.assert_allclose(ours[i], positive, atol=1e-3)  # our sign rule, independently computed
        # pytorch-grad-cam keeps whatever sign its SVD returns: its map is one of the two candidates
        if np.abs(theirs[i] - positive).max() <= 1e-3:
            agreeing_sign += 1
            np.testing.assert_allclose(ours[i], theirs[i], atol=1e-3)
        else:
            np.testing.assert_allclose(theirs[i], negative, atol=1e-3)
    assert agreeing_sign >= 1


@pytest.mark.slow
def test_faithfulness_runs_with_eigencam():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    scores = cc.faithfulness(model, torch.randn(3, 3, 64, 64), method="eigencam", target_layer="layer4")
    assert all(np.isfinite(v) for v in scores.values())
    assert 0 <= scores["adcc"] <= 1
