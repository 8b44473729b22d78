"""SS-CAM and IS-CAM: hand-computed weights on a tiny hand-set model, the noise's generator and order, options.

The model is ``HeadNet`` of tests/methods/test_perturbation_methods.py written again here (target layer = the
identity, head = ReLU -> global average pool -> linear), so the activations are the input and every score can be
worked out with pen and paper. Cross-checks against torchcam are in test_score_variants_crosscheck.py.

Hand example (3 channels, 2x2 image, fc W = [[1, 2, 0.2]], b = [1]):
  x0 = [[0, 2], [4, 2]]   x1 = [[3, 1], [1, 1]]   x2 = 5 everywhere (constant)
  masks: M0 = x0 / 4 = [[0, .5], [1, .5]], M1 = (x1 - 1) / 2 = [[1, 0], [0, 0]], M2 = 0 (constant channel)
  X * M0: ch0 [[0, 1], [4, 1]] mean 1.5; ch1 [[0, .5], [1, .5]] .5; ch2 [[0, 2.5], [5, 2.5]] 2.5 -> 1.5 + 1 + .5 = 3
  X * M1: ch0 0; ch1 [[3, 0], [0, 0]] .75; ch2 [[5, 0], [0, 0]] 1.25 -> 0 + 1.5 + .25 = 1.75
  X * M2 = 0 -> 0.   Scores (bias included): (4, 2.75, 1).
  Every masked input is >= 0, so the ReLU does nothing and the score of ``c * X * M`` is ``c * s + 1``.
  Score-CAM: w = softmax(4, 2.75, 1) = softmax(3, 1.75, 0).
  IS-CAM, N = 3: factors c = 1/3, 1/3 + 2/3 = 1, 1 + 3/3 = 2 (mean 10/9); the blank image scores 1 at every factor,
    so the averaged scores are (10/9 * 3 + 1, 10/9 * 1.75 + 1, 1): w = softmax(10/3, 35/18, 0).
  IS-CAM, N = 2: c = 1/2, 3/2 (mean 1): the weights of Score-CAM.
  raw map = ReLU(w0 x0 + w1 x1 + w2 x2).
"""

from __future__ import annotations

import math
from typing import Callable, List, Optional

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import cam_callbacks as cc
from cam_callbacks.methods.perturbation import integration_scales, iscam, scorecam, sscam
from cam_callbacks.methods.registry import get_method


class HeadNet(nn.Module):
    """``x -> feat (identity, the target layer) -> ReLU -> mean over all positions -> fc`` (``relu=False``: no ReLU)."""

    def __init__(self, weight, bias, relu: bool = True) -> None:
        super().__init__()
        self.feat = nn.Identity()
        self.relu = nn.ReLU() if relu else nn.Identity()
        weight = torch.tensor(weight, dtype=torch.float32)
        self.fc = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.fc.weight.copy_(weight)
            self.fc.bias.copy_(torch.tensor(bias, dtype=torch.float32))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.relu(self.feat(x)).mean(dim=(2, 3)))


def recording_scorer(net: nn.Module, calls: Optional[List[int]] = None, rows: int = 1000, built: Optional[List[Tensor]] = None):
    """A ``model_scorer``: the whole model on ``rows`` rows at a time, recording the counts (and the rows built)."""

    def scorer(count: int, build: Callable[[int, int], Tensor]) -> Tensor:
        if calls is not None:
            calls.append(count)
        outputs = []
        with torch.no_grad():
            for start in range(0, count, rows):
                x = build(start, min(count, start + rows))
                if built is not None:
                    built.append(x.clone())
                outputs.append(net(x))
        return torch.cat(outputs)

    return scorer


W = [[1.0, 2.0, 0.2]]
B = [1.0]
X0 = [[0.0, 2.0], [4.0, 2.0]]
X1 = [[3.0, 1.0], [1.0, 1.0]]
IMAGE = torch.tensor([[X0, X1, [[5.0, 5.0], [5.0, 5.0]]]])


def hand_raw(scores) -> np.ndarray:
    w = np.exp(np.array(scores) - max(scores))
    w = w / w.sum()
    return np.maximum(w[0] * np.array(X0) + w[1] * np.array(X1) + w[2] * 5.0, 0.0)


def test_hand_scores_on_the_model():
    """The comment's scores, on the model itself."""
    net = HeadNet(W, B).eval()
    m0, m1 = torch.tensor([[0.0, 0.5], [1.0, 0.5]]), torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    with torch.no_grad():
        logits = net(torch.stack([IMAGE[0] * m0, IMAGE[0] * m1, IMAGE[0] * 0, 2 * IMAGE[0] * m0]))[:, 0]
    torch.testing.assert_close(logits, torch.tensor([4.0, 2.75, 1.0, 7.0]))


def test_integration_scales_by_hand():
    assert integration_scales(1) == [1.0]
    assert integration_scales(2) == [0.5, 1.5]
    np.testing.assert_allclose(integration_scales(3), [1 / 3, 1.0, 2.0])
    assert integration_scales(10)[-1] == pytest.approx(5.5)  # torchcam's default: factors up to (N + 1) / 2


def test_iscam_hand_weights_and_passes():
    net = HeadNet(W, B).eval()
    calls: List[int] = []
    raw = iscam(IMAGE.clone(), IMAGE, torch.tensor([0]), recording_scorer(net, calls), num_samples=3)
    np.testing.assert_allclose(raw[0].double().numpy(), hand_raw([10 / 3, 35 / 18, 0.0]), rtol=1e-5, atol=1e-6)
    assert sorted(calls) == [1, 6]  # the blank image once; 2 distinct masks x 3 factors
    two = iscam(IMAGE.clone(), IMAGE, torch.tensor([0]), recording_scorer(net), num_samples=2)  # mean factor 1
    np.testing.assert_allclose(two[0].double().numpy(), hand_raw([3.0, 1.75, 0.0]), rtol=1e-5, atol=1e-6)
    plain = scorecam(IMAGE.clone(), IMAGE, torch.tensor([0]), recording_scorer(net))
    np.testing.assert_allclose(plain[0].double().numpy(), hand_raw([3.0, 1.75, 0.0]), rtol=1e-5, atol=1e-6)
    assert float((raw - plain).abs().max()) > 0.05  # the factors matter at N = 3


def test_iscam_end_to_end_hand_map():
    net = HeadNet(W, B).eval()
    raw = hand_raw([10 / 3, 35 / 18, 0.0])
    expected = (raw - raw.min()) / (raw.max() - raw.min())
    maps = cc.explain(net, IMAGE, "iscam", "feat", targets=0, method_options={"num_samples": 3})
    np.testing.assert_allclose(maps[0].double().numpy(), expected, atol=1e-6)


def test_sscam_without_noise_is_scorecam_by_hand():
    """std = 0: every sample is Score-CAM's masked input, so the weights are Score-CAM's (by hand: softmax(3, 1.75, 0))."""
    net = HeadNet(W, B).eval()
    calls: List[int] = []
    raw = sscam(IMAGE.clone(), IMAGE, torch.tensor([0]), recording_scorer(net, calls), num_samples=4, std=0.0)
    np.testing.assert_allclose(raw[0].double().numpy(), hand_raw([3.0, 1.75, 0.0]), rtol=1e-5, atol=1e-6)
    assert calls == [12]  # no channel is skipped: 4 samples x 1 image x 3 channels (noise makes every row distinct)


def test_sscam_noise_order_generator_and_hand_scores():
    """With noise: row ``s*N*K + n*K + k`` is ``X_n * (M_k + std * delta)``, the deltas drawn from ``Generator().manual_seed(seed)``
    in row order, chunk by chunk; on a model without ReLU the score of a row is ``W . mean(X * (M + std delta)) + b``
    (linear), and the weights are the softmax of the scores averaged over samples."""
    net = HeadNet(W, B, relu=False).eval()
    images = torch.cat([IMAGE, IMAGE.flip(-1) + 1.0])  # 2 images: the second one's channels all vary
    masks = torch.stack(
        [torch.tensor(X0) / 4, (torch.tensor(X1) - 1) / 2, torch.zeros(2, 2), torch.tensor(X0).flip(-1) / 4,
         (torch.tensor(X1).flip(-1) - 1) / 2, torch.zeros(2, 2)]
    ).reshape(2, 3, 2, 2)  # fmt: skip
    samples, std, seed = 3, 0.5, 11
    # One draw of all rows, rounded up to whole blocks of 16 values (18 rows x 4 values -> 20 rows): torch's sampler
    # recomputes a last partial block of 16 with fresh numbers, so only whole blocks are chunking-independent.
    delta = torch.randn(20, 2, 2, generator=torch.Generator().manual_seed(seed))[: samples * 6].reshape(samples, 2, 3, 2, 2)
    built: List[Tensor] = []
    raw = sscam(images.clone(), images, torch.tensor([0, 0]), recording_scorer(net, rows=5, built=built), num_samples=samples, std=std, seed=seed)
    rows = torch.cat(built)  # chunks of 5 rows: the draws continue across chunks
    expected_rows = images[None, :, None] * (masks[None] + std * delta)[:, :, :, None]  # (S, N, K, C, 2, 2)
    torch.testing.assert_close(rows, expected_rows.reshape(-1, 3, 2, 2))
    w = torch.tensor(W[0])
    scores = (expected_rows.mean(dim=(-2, -1)) * w).sum(-1) + B[0]  # (S, N, K), linear model
    weights = torch.softmax(scores.mean(0), dim=1)
    expected_raw = torch.relu(torch.einsum("nk,nkhw->nhw", weights, images))
    torch.testing.assert_close(raw, expected_raw, rtol=1e-5, atol=1e-5)
    again = sscam(images.clone(), images, torch.tensor([0, 0]), recording_scorer(net), num_samples=samples, std=std, seed=seed)
    torch.testing.assert_close(again, raw)  # same seed, other chunking: same draws
    other = sscam(images.clone(), images, torch.tensor([0, 0]), recording_scorer(net), num_samples=samples, std=std, seed=seed + 1)
    assert float((other - raw).abs().max()) > 1e-3


def test_sscam_leaves_the_global_rng_untouched():
    net = HeadNet(W, B).eval()
    torch.manual_seed(5)
    state = torch.random.get_rng_state()
    maps = cc.explain(net, IMAGE, "sscam", "feat", targets=0, method_options={"num_samples": 2, "seed": 3})
    assert torch.equal(torch.random.get_rng_state(), state)
    again = cc.explain(net, IMAGE, "sscam", "feat", targets=0, method_options={"num_samples": 2, "seed": 3})
    torch.testing.assert_close(maps, again)  # reproducible: the seed, not the global RNG, decides


def test_registry_entries_and_option_checks():
    assert get_method("sscam").options == {"num_samples": 35, "std": 2.0, "seed": 0}  # torchcam's defaults
    assert get_method("iscam").options == {"num_samples": 10}
    names = cc.available_methods()
    assert names.index("scorecam") + 1 == names.index("sscam") and names.index("sscam") + 1 == names.index("iscam")
    net = HeadNet(W, B).eval()
    for method, options, message in [
        ("sscam", {"num_samples": 0}, "num_samples must be a positive int"),
        ("iscam", {"num_samples": 2.5}, "num_samples must be a positive int"),
        ("sscam", {"std": -1.0}, "std must be a number >= 0"),
        ("sscam", {"seed": "a"}, "seed must be an int"),
        ("iscam", {"std": 1.0}, "its options are"),
    ]:
        with pytest.raises(ValueError, match=message):
            cc.explain(net, IMAGE, method, "feat", targets=0, method_options=options)
        with pytest.raises(ValueError, match=message):  # checked when the options are built, before any work
            cc.ExplainOptions(method_options={method: options})
    with pytest.raises(ValueError, match="num_samples must be a positive int"):
        sscam(IMAGE.clone(), IMAGE, torch.tensor([0]), recording_scorer(net), num_samples=-1)  # the pure function too


@pytest.mark.parametrize("method", ["sscam", "iscam"])
def test_faithfulness_runs(method):
    net = HeadNet(W, B).eval()
    scores = cc.faithfulness(net, IMAGE, method, "feat", targets=0, method_options={"num_samples": 2})
    assert set(scores) >= {"adcc", "average_drop"} and all(math.isfinite(v) for v in scores.values())
