"""Faithfulness metrics against a small NumPy reference of GUIDE.md section 2, and end to end against
maps from pytorch_grad_cam and probabilities from a plain forward pass."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torchvision
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

import cam_callbacks as cc
from cam_callbacks.metrics import faithfulness as metrics
from cam_callbacks.metrics.faithfulness import FAITHFULNESS_METRICS, faithfulness_scores

METRICS = ["average_drop", "increase_in_confidence", "coherency", "complexity", "adcc"]


# ---------------------------------------------------------------------------------------------
# NumPy reference (GUIDE.md section 2), one image at a time, float64
# ---------------------------------------------------------------------------------------------


def ref_scores(L, Lp, Y, O):
    """Per-image fractions for maps L, L' (N, H, W) and probabilities Y, O (N,)."""
    L, Lp, Y, O = (np.asarray(v, dtype=np.float64) for v in (L, Lp, Y, O))
    out = {m: np.zeros(len(Y)) for m in METRICS}
    for i in range(len(Y)):
        ad = max(0.0, Y[i] - O[i]) / Y[i]
        ic = 1.0 if O[i] > Y[i] else 0.0
        a, b = L[i].ravel(), Lp[i].ravel()
        if a.max() == a.min() or b.max() == b.min():
            coh = 0.0
        else:
            coh = (np.corrcoef(a, b)[0, 1] + 1.0) / 2.0
        com = a.sum() / a.size  # L1 norm / number of pixels (L >= 0)
        terms = [coh, 1.0 - com, 1.0 - ad]
        adcc = 0.0 if any(t == 0 for t in terms) else 3.0 / sum(1.0 / t for t in terms)
        for name, value in zip(METRICS, [ad, ic, coh, com, adcc]):
            out[name][i] = value
    return out


def test_reference_by_hand():
    # L = L' = [[0, 1], [0.5, 0.5]], Y = 0.8, O = 0.6: AD = 0.2/0.8 = 0.25, IC = 0, Coh = (1 + 1)/2 = 1,
    # Com = 2/4 = 0.5, ADCC = 3 / (1/1 + 1/0.5 + 1/0.75) = 3 / (13/3) = 9/13
    L = np.array([[[0.0, 1.0], [0.5, 0.5]]])
    r = ref_scores(L, L, [0.8], [0.6])
    np.testing.assert_allclose([r[m][0] for m in METRICS], [0.25, 0.0, 1.0, 0.5, 9 / 13], rtol=1e-12)
    # L' = 1 - L: Pearson -1 -> Coh 0 -> ADCC 0
    r = ref_scores(L, 1 - L, [0.5], [0.7])
    np.testing.assert_allclose([r[m][0] for m in METRICS], [0.0, 1.0, 0.0, 0.5, 0.0], atol=1e-12)


def _torch(v):
    return torch.tensor(np.asarray(v), dtype=torch.float32)


def _check_functions(L, Lp, Y, O, atol=1e-6):
    want = ref_scores(L, Lp, Y, O)
    L_t, Lp_t, Y_t, O_t = _torch(L), _torch(Lp), _torch(Y), _torch(O)
    got = {
        "average_drop": metrics.average_drop(Y_t, O_t),
        "increase_in_confidence": metrics.increase_in_confidence(Y_t, O_t),
        "coherency": metrics.coherency(L_t, Lp_t),
        "complexity": metrics.complexity(L_t),
    }
    got["adcc"] = metrics.adcc(got["average_drop"], got["coherency"], got["complexity"])
    scores = faithfulness_scores(L_t, Lp_t, Y_t, O_t)
    assert list(scores) == METRICS == list(FAITHFULNESS_METRICS)
    for name in METRICS:
        assert got[name].shape == (len(Y),) and scores[name].shape == (len(Y),)
        assert torch.isfinite(scores[name]).all()
        np.testing.assert_allclose(got[name].double().numpy(), want[name], atol=atol, err_msg=name)
        np.testing.assert_allclose(scores[name].double().numpy(), want[name], atol=atol, err_msg=name)
    return want


def test_functions_random_inputs():
    rng = np.random.default_rng(0)
    n = 8
    L = rng.random((n, 6, 7))
    Lp = np.clip(L + 0.3 * rng.standard_normal((n, 6, 7)), 0, 1)
    Y = rng.uniform(0.05, 1.0, n)
    O = rng.uniform(0.0, 1.0, n)
    want = _check_functions(L, Lp, Y, O)
    # guard: the random case covers both IC outcomes and non-trivial ADCC values
    assert 0 < want["increase_in_confidence"].sum() < n
    assert (want["adcc"] > 0.1).all()


def test_functions_edge_cases():
    rng = np.random.default_rng(1)
    base = rng.random((4, 4))
    L = np.stack([base, base, np.full((4, 4), 0.3), base, base, np.ones((4, 4)), base])
    Lp = np.stack([base, 1 - base, base, np.zeros((4, 4)), base**2, base, base])
    Y = np.array([0.6, 0.4, 0.5, 0.5, 0.7, 0.5, 0.3])
    O = np.array([0.6, 0.9, 0.2, 0.1, 0.0, 0.5, 0.3])
    #  0: Y == O -> AD 0, IC 0; identical maps -> Coh 1
    #  1: O > Y -> AD 0, IC 1; anti-correlated maps -> Coh 0 -> ADCC 0
    #  2: constant L -> Coh 0 -> ADCC 0
    #  3: constant L' (zeros) -> Coh 0 -> ADCC 0
    #  4: O = 0 -> AD = 1 -> ADCC 0
    #  5: L = ones: Com = 1 (and constant) -> ADCC 0
    #  6: Y == O, L == L'
    want = _check_functions(L, Lp, Y, O)
    np.testing.assert_allclose(want["average_drop"], [0, 0, 0.6, 0.8, 1, 0, 0], atol=1e-12)
    np.testing.assert_array_equal(want["increase_in_confidence"], [0, 1, 0, 0, 0, 0, 0])
    np.testing.assert_allclose(want["coherency"][[0, 2, 3, 5, 6]], [1, 0, 0, 0, 1], atol=1e-12)
    assert abs(want["coherency"][1]) < 1e-12
    np.testing.assert_array_equal(want["adcc"][[2, 3, 4, 5]], [0, 0, 0, 0])
    assert want["adcc"][0] > 0 and want["adcc"][6] > 0


def test_adcc_zero_term_and_harmonic_mean():
    ad = torch.tensor([0.0, 1.0, 0.5, 0.2])
    coh = torch.tensor([1.0, 0.9, 0.0, 0.5])
    com = torch.tensor([0.5, 0.3, 0.2, 1.0])
    out = metrics.adcc(ad, coh, com)
    # 0: 3 / (1 + 2 + 1) = 0.75; 1: 1 - AD = 0 -> 0; 2: Coh = 0 -> 0; 3: 1 - Com = 0 -> 0
    torch.testing.assert_close(out, torch.tensor([0.75, 0.0, 0.0, 0.0]))


def test_zero_probability_does_not_give_nan():
    out = metrics.average_drop(torch.tensor([0.0, 0.5]), torch.tensor([0.0, 0.25]))
    assert torch.isfinite(out).all()
    assert float(out[1]) == 0.5


def test_shape_checks():
    with pytest.raises(ValueError, match="shape"):
        metrics.coherency(torch.zeros(2, 3, 3), torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="same length"):
        metrics.average_drop(torch.ones(3), torch.ones(2))
    with pytest.raises(ValueError, match="same length"):
        metrics.adcc(torch.zeros(2), torch.zeros(2), torch.zeros(3))


# ---------------------------------------------------------------------------------------------
# cc.faithfulness end to end against independent references
# ---------------------------------------------------------------------------------------------


class SmallNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def _small_net():
    torch.manual_seed(11)
    return SmallNet().eval(), "features", torch.randn(4, 3, 32, 32)


def _resnet18():
    torch.manual_seed(12)
    return torchvision.models.resnet18(weights=None, num_classes=10).eval(), "layer4", torch.randn(3, 3, 64, 64)


def reference_faithfulness(model, layer_name, images, targets):
    """Everything from independent code: pytorch_grad_cam maps, a plain forward + torch.softmax, NumPy formulas."""
    ref = copy.deepcopy(model).eval()
    layer = dict(ref.named_modules())[layer_name]
    with torch.no_grad():
        logits = ref(images)
    if targets is None:
        targets = logits.argmax(dim=1).tolist()
    cam_targets = [ClassifierOutputTarget(int(c)) for c in targets]
    with GradCAM(ref, [layer]) as cam:
        L = cam(images, targets=cam_targets)  # (N, H, W), normalised, cv2-resized, normalised
        explanation_images = images * torch.from_numpy(L)[:, None]
        Lp = cam(explanation_images, targets=cam_targets)
    with torch.no_grad():
        Y = torch.softmax(ref(images), dim=1)[range(len(targets)), targets]
        O = torch.softmax(ref(explanation_images), dim=1)[range(len(targets)), targets]
    return ref_scores(L, Lp, Y.numpy(), O.numpy()), L, Lp


@pytest.mark.crosscheck
@pytest.mark.parametrize("build", [_small_net, pytest.param(_resnet18, marks=pytest.mark.slow)], ids=["smallnet", "resnet18"])
@pytest.mark.parametrize("explicit_targets", [False, True], ids=["top1", "explicit"])
def test_faithfulness_end_to_end_against_reference(build, explicit_targets):
    model, layer_name, images = build()
    num_classes = model(images[:1]).shape[1]
    targets = [(3 * i + 1) % num_classes for i in range(len(images))] if explicit_targets else None
    want, L, Lp = reference_faithfulness(model, layer_name, images, targets)
    # guards: non-constant maps, Coherency defined, a non-trivial ADCC
    assert (L.std(axis=(1, 2)) > 0).all() and (Lp.std(axis=(1, 2)) > 0).all()
    assert (want["adcc"] > 0).all()

    got = cc.faithfulness(model, images, method="gradcam", target_layer=layer_name, targets=targets, reduction="none")
    assert list(got) == METRICS
    # Tolerance: our maps and pytorch_grad_cam's agree to ~1e-6 (it adds 1e-7 to the min-max denominator and
    # round-trips through float32 NumPy/OpenCV); AD, Coh, Com and ADCC are smooth in the maps and in O (derivatives
    # of order 1/Y and 1/term^2, all O(1)-O(10) here), so the fractions agree to ~1e-6; 2e-5 leaves margin
    # while any convention error (another target, unnormalised x, Pearson on other pixels) moves them by >= 1e-3.
    for name in METRICS:
        assert isinstance(got[name], torch.Tensor) and got[name].shape == (len(images),)
        np.testing.assert_allclose(got[name].double().numpy(), want[name], atol=2e-5, rtol=0, err_msg=name)
    np.testing.assert_array_equal(got["increase_in_confidence"].numpy(), want["increase_in_confidence"])


def test_reduction_mean_fractions_and_invalid():
    model, layer_name, images = _small_net()
    per_image = cc.faithfulness(model, images, target_layer=layer_name, reduction="none")
    mean = cc.faithfulness(model, images, target_layer=layer_name, reduction="mean")
    default = cc.faithfulness(model, images, target_layer=layer_name)
    assert list(mean) == METRICS and default == mean
    for name in METRICS:
        assert isinstance(mean[name], float)
        assert mean[name] == pytest.approx(float(per_image[name].double().mean()), abs=1e-9)
        assert 0.0 <= mean[name] <= 1.0
        assert ((per_image[name] >= 0) & (per_image[name] <= 1)).all()
    # fractions, not percent: Complexity is the mean of the (independent) pytorch_grad_cam maps
    with torch.no_grad():
        top1 = model(images).argmax(1).tolist()
    ref = copy.deepcopy(model)
    with GradCAM(ref, [ref.features]) as cam:
        L = cam(images, targets=[ClassifierOutputTarget(c) for c in top1])
    assert mean["complexity"] == pytest.approx(L.mean(), abs=1e-5)
    assert 0.01 < mean["complexity"] < 1.0  # would be > 1 if percent were returned
    with pytest.raises(ValueError) as info:
        cc.faithfulness(model, images, target_layer=layer_name, reduction="sum")
    assert "'sum'" in str(info.value) and "'mean'" in str(info.value) and "'none'" in str(info.value)
