"""Deletion/insertion AUC and ROAD (cam_callbacks.metrics.perturbation_curves) against small NumPy references written
here from the definitions (RISE, torchcam's step convention; ROAD, pytorch-grad-cam's percentiles and imputation),
and by hand on tiny cases. Cross-checks against torchcam and pytorch-grad-cam: test_perturbation_curves_crosscheck.py.

The model is a fixed linear classifier on the flattened image (logits = W x + b), so every score the references need is
one NumPy matrix product; the functions get it through a ``model_scorer`` that runs a few rows at a time (chunking
must not change the results).
"""

from __future__ import annotations

from typing import Callable, List, Optional

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from cam_callbacks.metrics.perturbation_curves import (
    baseline_images,
    curve_counts,
    deletion_insertion,
    linear_imputation,
    road,
    road_known_masks,
)  # fmt: skip

C, H, W_ = 2, 4, 5
CLASSES = 3


def linear_model(seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(C * H * W_, CLASSES))
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(CLASSES, C * H * W_, generator=g) * 0.5)
        model[1].bias.copy_(torch.randn(CLASSES, generator=g))
    return model.eval()


def chunked_scorer(model: nn.Module, rows: int = 3, calls: Optional[List[int]] = None):
    def scorer(count: int, build: Callable[[int, int], Tensor]) -> Tensor:
        if calls is not None:
            calls.append(count)
        with torch.no_grad():
            return torch.cat([model(build(s, min(count, s + rows))) for s in range(0, count, rows)])

    return scorer


def softmax_np(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def target_prob(model: nn.Module, x: np.ndarray, target: int) -> float:
    weight = model[1].weight.detach().double().numpy()
    bias = model[1].bias.detach().double().numpy()
    return float(softmax_np(weight @ x.reshape(-1) + bias)[target])


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(3)
    images = torch.randn(3, C, H, W_, generator=g)
    maps = torch.rand(3, H, W_, generator=g)
    maps[1, 0, :3] = maps[1, 2, 1]  # ties: the stable sort decides by position
    return images, maps, torch.tensor([0, 2, 1])


# --------------------------------------------------------------------------------------------- deletion / insertion


def reference_curves(model, images, maps, targets, steps, baseline):
    """One image, one count at a time, written from the definition with NumPy."""
    n, p = images.shape[0], H * W_
    step = int(np.ceil(p / steps))
    counts = list(range(0, p, step)) + [p]
    fractions = np.array(counts) / p
    out = {"deletion_auc": [], "insertion_auc": []}
    for i in range(n):
        x, base = images[i].numpy().astype(np.float64), baseline[i].numpy().astype(np.float64)
        order = np.argsort(-maps[i].numpy().reshape(-1), kind="stable")  # descending, ties by position
        dele, ins = [], []
        for c in counts:
            top = np.zeros(p, dtype=bool)
            top[order[:c]] = True
            top = top.reshape(H, W_)
            dele.append(target_prob(model, np.where(top, base, x), int(targets[i])))
            ins.append(target_prob(model, np.where(top, x, base), int(targets[i])))
        out["deletion_auc"].append(np.trapezoid(dele, fractions) if hasattr(np, "trapezoid") else np.trapz(dele, fractions))
        out["insertion_auc"].append(np.trapezoid(ins, fractions) if hasattr(np, "trapezoid") else np.trapz(ins, fractions))
    return out, fractions


@pytest.mark.parametrize("steps", [1, 3, 7, 20, 100])
@pytest.mark.parametrize("baseline", ["zero", "blur"])
def test_deletion_insertion_vs_numpy(data, steps, baseline):
    images, maps, targets = data
    model = linear_model()
    calls: List[int] = []
    got = deletion_insertion(images, maps, targets, chunked_scorer(model, 4, calls), steps=steps, baseline=baseline)
    want, fractions = reference_curves(model, images, maps, targets, steps, baseline_images(images, baseline))
    np.testing.assert_allclose(got["fractions"].numpy(), fractions, rtol=1e-6)
    for key in ("deletion_auc", "insertion_auc"):
        np.testing.assert_allclose(got[key].double().numpy(), want[key], rtol=1e-5, atol=1e-6)
    points = len(fractions)
    assert calls == [3 * (2 * points - 2)]  # one batched call: the images, the baseline, 2 per interior point


def test_deletion_insertion_by_hand():
    """1x2 image, 1 channel; a model whose class-0 logit is ``10 * (pixel 0) + (pixel 1)`` against 0 for class 1.

    Map ranks pixel 0 first. steps = 2: counts 0, 1, 2 (fractions 0, .5, 1), zero baseline:
    deletion inputs [3, 1], [0, 1], [0, 0] -> sigmoid(31), sigmoid(1), sigmoid(0) = .5;
    insertion inputs [0, 0], [3, 0], [3, 1] -> .5, sigmoid(30), sigmoid(31).
    AUC = (a + b) / 4 + (b + c) / 4 for the three points a, b, c."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(2, 2)).eval()
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[10.0, 1.0], [0.0, 0.0]]))
        model[1].bias.zero_()
    x = torch.tensor([[[[3.0, 1.0]]]])
    got = deletion_insertion(x, torch.tensor([[[0.9, 0.1]]]), torch.tensor([0]), chunked_scorer(model), steps=2)
    s = lambda v: 1 / (1 + np.exp(-v))
    dele, ins = [s(31), s(1), 0.5], [0.5, s(30), s(31)]
    auc = lambda a, b, c: (a + b) / 4 + (b + c) / 4
    assert float(got["deletion_auc"][0]) == pytest.approx(auc(*dele), abs=1e-6)
    assert float(got["insertion_auc"][0]) == pytest.approx(auc(*ins), abs=1e-6)
    np.testing.assert_allclose(got["deletion"][0].numpy(), dele, atol=1e-6)


def test_curve_counts_and_bad_arguments(data):
    images, maps, targets = data
    assert curve_counts(20, 20) == list(range(21)) and curve_counts(20, 3) == [0, 7, 14, 20] and curve_counts(5, 1) == [0, 5]
    with pytest.raises(ValueError, match="steps must be a positive int"):
        curve_counts(20, 0)
    with pytest.raises(ValueError, match=r"choose from \['zero', 'blur'\]"):
        deletion_insertion(images, maps, targets, chunked_scorer(linear_model()), baseline="black")
    with pytest.raises(ValueError, match="maps must be"):
        deletion_insertion(images, maps[:, :2], targets, chunked_scorer(linear_model()))
    with pytest.raises(ValueError, match="percentiles must be"):
        road(images, maps, targets, chunked_scorer(linear_model()), percentiles=[120])


# ---------------------------------------------------------------------------------------------------------- ROAD

OFFSETS = [((1, 1), 1 / 12), ((0, 1), 1 / 6), ((-1, 1), 1 / 12), ((1, -1), 1 / 12), ((0, -1), 1 / 6), ((-1, -1), 1 / 12), ((1, 0), 1 / 6), ((-1, 0), 1 / 6)]


def reference_imputation(image: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Dense NumPy solve of ROAD's equations: for an unknown pixel, sum of in-image neighbour weights times its value
    equals the weighted sum of its neighbours' values."""
    h, w = known.shape
    unknown = [(i, j) for i in range(h) for j in range(w) if not known[i, j]]
    index = {pix: k for k, pix in enumerate(unknown)}
    out = image.astype(np.float64).copy()
    a = np.zeros((len(unknown), len(unknown)))
    b = np.zeros((len(unknown), image.shape[0]))
    for k, (i, j) in enumerate(unknown):
        for (di, dj), weight in OFFSETS:
            ni, nj = i + di, j + dj
            if 0 <= ni < h and 0 <= nj < w:
                a[k, k] += weight
                if known[ni, nj]:
                    b[k] += weight * image[:, ni, nj]
                else:
                    a[k, index[(ni, nj)]] -= weight
    if unknown:
        solution = np.linalg.solve(a, b)
        for k, (i, j) in enumerate(unknown):
            out[:, i, j] = solution[k]
    return out


def test_linear_imputation_vs_dense_numpy_solve():
    g = torch.Generator().manual_seed(0)
    images = torch.randn(4, 3, 9, 11, generator=g)
    known = torch.rand(4, 9, 11, generator=g) < torch.tensor([0.1, 0.5, 0.9, 0.02])[:, None, None]
    known[3] = False
    known[3, 8, 10] = True  # one known pixel: everything else is filled from it (a constant image)
    got = linear_imputation(images, known, tol=1e-7)
    for i in range(4):
        want = reference_imputation(images[i].numpy(), known[i].numpy())
        np.testing.assert_allclose(got[i].double().numpy(), want, atol=2e-5)
    np.testing.assert_allclose(got[3].numpy(), np.broadcast_to(images[3, :, 8, 10].numpy()[:, None, None], (3, 9, 11)), atol=2e-5)
    assert torch.equal(got[known[:, None].expand_as(got)], images[known[:, None].expand_as(images)])  # kept pixels untouched


def test_linear_imputation_keeps_the_dtype_and_solves_half_precision_in_float32():
    g = torch.Generator().manual_seed(2)
    images = torch.randn(2, 3, 6, 7, generator=g)
    known = torch.rand(2, 6, 7, generator=g) < 0.4
    reference = linear_imputation(images.double(), known, tol=1e-10)
    assert reference.dtype == torch.float64
    for dtype, atol in ((torch.float32, 1e-4), (torch.bfloat16, 5e-2)):
        got = linear_imputation(images.to(dtype), known)
        assert got.dtype == dtype
        want = linear_imputation(images.to(dtype).double(), known, tol=1e-10)  # the same (rounded) inputs, solved exactly
        torch.testing.assert_close(got.double(), want, atol=atol, rtol=0)
    torch.testing.assert_close(linear_imputation(images, known).double(), reference, atol=1e-4, rtol=0)


def test_road_masks_vs_numpy_percentile(data):
    _, maps, _ = data
    for most in (True, False):
        masks = road_known_masks(maps, (10, 35, 90), most)
        for k, p in enumerate((10, 35, 90)):
            for i in range(3):
                values = maps[i].numpy() if most else 1 - maps[i].numpy()
                assert np.array_equal(masks[k, i].numpy(), values < np.percentile(values, p))


def test_road_without_noise_vs_numpy(data):
    images, maps, targets = data
    model = linear_model()
    percentiles = (20, 50, 80)
    got = road(images, maps, targets, chunked_scorer(model, 5), percentiles=percentiles, noise=0.0)
    for i in range(3):
        before = target_prob(model, images[i].numpy(), int(targets[i]))
        changes = {}
        for name, values in (("road_morf", maps[i].numpy()), ("road_lerf", 1 - maps[i].numpy())):
            changes[name] = np.mean(
                [target_prob(model, reference_imputation(images[i].numpy(), values < np.percentile(values, p)), int(targets[i])) - before for p in percentiles]
            )
            assert float(got[name][i]) == pytest.approx(changes[name], abs=1e-5)
        assert float(got["road"][i]) == pytest.approx((changes["road_lerf"] - changes["road_morf"]) / 2, abs=1e-5)


def test_road_noise_private_generator_and_reproducible(data):
    images, maps, targets = data
    model = linear_model()
    built: List[Tensor] = []

    def recording(count, build):
        rows = build(0, count)
        built.append(rows)
        with torch.no_grad():
            return model(rows)

    torch.manual_seed(1)
    state = torch.random.get_rng_state()
    first = road(images, maps, targets, recording, percentiles=(50,), noise=0.01, seed=4)
    assert torch.equal(torch.random.get_rng_state(), state)
    clean = road(images, maps, targets, recording, percentiles=(50,), noise=0.0)
    noisy_rows, clean_rows = built[0], built[1]
    known = torch.cat([road_known_masks(maps, (50,), True), road_known_masks(maps, (50,), False)]).flatten(0, 1)[:, None]
    difference = (noisy_rows - clean_rows)[3:]  # the first 3 rows are the images
    assert torch.equal(difference[known.expand_as(difference)], torch.zeros(int(known.expand_as(difference).sum())))
    drawn = difference[~known.expand_as(difference)]
    assert 0.006 < float(drawn.std()) < 0.014 and abs(float(drawn.mean())) < 0.004  # N(0, 0.01^2) on imputed pixels
    again = road(images, maps, targets, chunked_scorer(model, 2), percentiles=(50,), noise=0.01, seed=4)
    for key in first:
        torch.testing.assert_close(again[key], first[key])  # same seed, other chunking (draws per row in row order)
    assert float((first["road_morf"] - clean["road_morf"]).abs().max()) > 0
