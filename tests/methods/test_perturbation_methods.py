"""Score-CAM, Ablation-CAM and Recipro-CAM: hand-computed maps on tiny hand-set models, and their behaviour.

Every expected number below is worked out by hand (arithmetic in the comments) or in closed form with ``math``;
none is produced by calling a cam_callbacks function. The tiny models put the target layer right after the input
(``nn.Identity``), so the activations ``A`` are the input itself and the head (ReLU -> global average pool -> linear)
can be evaluated with pen and paper.

Conventions (GUIDE.md section 2): raw maps are upsampled bilinearly (``align_corners=False``) to the input size and
min-max normalised per image; a constant map becomes zeros. Score-CAM: ``w = softmax_k(y_c(X * M_k))`` with ``M_k``
channel ``k`` upsampled and min-max normalised (a constant channel gives an all-zero mask, so its score is the score
of the all-zero image). Ablation-CAM: ``w_k = (S_c - S_c^k) / S_c`` (``S_c - S_c^k`` where ``S_c == 0``).
Recipro-CAM: softmax probability of the target class of the tail on the feature map with only one position kept
(or the 3x3 kernel ``[[1,2,1],[2,4,2],[1,2,1]]/16`` centred there, cut at the borders).

The behaviour tests (chunking, targets, model state, ``tail=``, the re-run fallback, options, faithfulness) use small
random convolutional networks and compare with straightforward reference loops written here: the full model run once
per perturbation with a forward hook that replaces the target layer's output.
"""

from __future__ import annotations

import copy
import gc
import io
import math
import random
import warnings
import weakref
from typing import Callable, Dict, List, Optional

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules import module as module_globals

import cam_callbacks as cc
from cam_callbacks.methods.perturbation import ablationcam, position_masks, reciprocam, scorecam
from cam_callbacks.methods.registry import get_method

PERTURBATION_METHODS = ["scorecam", "ablationcam", "reciprocam"]


def sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


# ---------------------------------------------------------------------------------------------------
# Tiny hand-set models: target layer = identity, head = ReLU -> global average pool -> linear
# ---------------------------------------------------------------------------------------------------


class HeadNet(nn.Module):
    """``x -> feat (identity, the target layer) -> [pool] -> ReLU -> mean over all positions -> fc``.

    With ``pool=(1, 2)`` the target layer is an average pool of width 2 instead of the identity.
    """

    def __init__(self, weight, bias, pool=None) -> None:
        super().__init__()
        self.feat = nn.Identity() if pool is None else nn.AvgPool2d(pool)
        self.relu = nn.ReLU()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        weight = torch.tensor(weight, dtype=torch.float32)
        self.fc = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.fc.weight.copy_(weight)
            self.fc.bias.copy_(torch.tensor(bias, dtype=torch.float32))

    def head(self, maps: Tensor) -> Tensor:
        return self.fc(self.flatten(self.gap(self.relu(maps))))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.feat(x))


def hand_tail_scorer(net: HeadNet, calls: Optional[List[int]] = None):
    """A ``tail_scorer`` for the pure method functions: the head of ``net`` on every copy, one pass."""

    def scorer(copies: int, build: Callable[[int, int], Tensor]) -> Tensor:
        maps = build(0, copies)  # (n, copies, K, h, w)
        if calls is not None:
            calls.append(copies)
        with torch.no_grad():
            return net.head(maps.flatten(0, 1)).reshape(maps.shape[0], copies, -1)

    return scorer


def hand_model_scorer(net: nn.Module, calls: Optional[List[int]] = None):
    """A ``model_scorer`` for the pure Score-CAM function: the whole model on all rows at once."""

    def scorer(count: int, build: Callable[[int, int], Tensor]) -> Tensor:
        if calls is not None:
            calls.append(count)
        with torch.no_grad():
            return net(build(0, count))

    return scorer


# --- Score-CAM at input resolution, with constant channels ------------------------------------------
#
# ScoreNet: 3 channels, 2x2 images, fc W = [[1, 2, 5], [2, -1, 0]], b = [1, 0].
#
# Image 1:  x0 = [[0, 2], [4, 2]]   x1 = [[3, 1], [1, 1]]   x2 = -20 everywhere (constant)
#   masks (no upsampling: feature map = input size): M0 = x0 / 4 = [[0, .5], [1, .5]],
#   M1 = (x1 - 1) / 2 = [[1, 0], [0, 0]], M2 = 0 (constant channel -> all-zero mask -> the all-zero image)
#   X * M0: ch0 [[0, 1], [4, 1]] relu-mean 6/4 = 1.5; ch1 [[0, .5], [1, .5]] 2/4 = .5; ch2 <= 0 -> 0
#   X * M1: ch0 0; ch1 [[3, 0], [0, 0]] .75; ch2 <= 0 -> 0
#   X * M2 = 0: all means 0
#   class 0 scores: s = (1.5 + 2*.5 + 1, 2*.75 + 1, 0 + 1) = (3.5, 2.5, 1)  (the blank image scores the bias, 1)
#     w = (e^2.5, e^1.5, 1) / Z; Z * (w . A) = e^2.5 x0 + e^1.5 x1 - 20:
#     (0,0): 3 e^1.5 - 20 = -6.55 -> 0;  (0,1) = (1,1): 2 e^2.5 + e^1.5 - 20 = 8.85;  (1,0): 4 e^2.5 + e^1.5 - 20 = 33.21
#     normalised: [[0, r], [1, r]], r = (2 e^2.5 + e^1.5 - 20) / (4 e^2.5 + e^1.5 - 20) = 0.2664
#     (a blank score of 0 instead of the bias 1, or the score of the original image, would change r)
#   class 1 scores: s = (2*1.5 - .5, -.75, 0) = (2.5, -.75, 0); Z' * (w . A) = e^2.5 x0 + e^-.75 x1 - 20:
#     (0,0) < 0 -> 0; (0,1) = (1,1): 2 e^2.5 + e^-.75 - 20 = 4.84; (1,0): 4 e^2.5 + e^-.75 - 20 = 29.20 -> r' = 0.1656
#
# Image 2:  x0 = 1 everywhere (constant)   x1 = [[0, 2], [0, 2]]   x2 = [[4, 0], [0, 0]]
#   M0 = 0, M1 = [[0, 1], [0, 1]], M2 = [[1, 0], [0, 0]]
#   X * M1: ch0 [[0, 1], [0, 1]] .5; ch1 = x1 1; ch2 0          -> class 0: .5 + 2 + 0 + 1 = 3.5
#   X * M2: ch0 [[1, 0], [0, 0]] .25; ch1 0; ch2 [[4, 0], [0, 0]] 1 -> class 0: .25 + 5 + 1 = 6.25
#   class 0 scores (1, 3.5, 6.25): w ~ (1, e^2.5, e^5.25); w . A ~ (0,0): 1 + 4 e^5.25, (0,1) = (1,1): 1 + 2 e^2.5,
#   (1,0): 1 -> normalised [[1, q], [0, q]], q = 2 e^2.5 / (4 e^5.25) = e^-2.75 / 2 = 0.0320

SCORE_W = [[1.0, 2.0, 5.0], [2.0, -1.0, 0.0]]
SCORE_B = [1.0, 0.0]
SCORE_IMAGES = torch.tensor(
    [
        [[[0, 2], [4, 2]], [[3, 1], [1, 1]], [[-20, -20], [-20, -20]]],
        [[[1, 1], [1, 1]], [[0, 2], [0, 2]], [[4, 0], [0, 0]]],
    ],
    dtype=torch.float32,
)


def score_hand_expected():
    e = math.exp
    z1 = e(2.5) + e(1.5) + 1  # image 1, class 0
    raw1 = np.maximum(np.array([[3 * e(1.5) - 20, 2 * e(2.5) + e(1.5) - 20], [4 * e(2.5) + e(1.5) - 20, 2 * e(2.5) + e(1.5) - 20]]) / z1, 0)
    z1c1 = e(2.5) + e(-0.75) + 1  # image 1, class 1
    raw1c1 = np.maximum(np.array([[3 * e(-0.75) - 20, 2 * e(2.5) + e(-0.75) - 20], [4 * e(2.5) + e(-0.75) - 20, 2 * e(2.5) + e(-0.75) - 20]]) / z1c1, 0)
    z2 = 1 + e(2.5) + e(5.25)  # image 2, class 0 (scores shifted by -1)
    raw2 = np.array([[1 + 4 * e(5.25), 1 + 2 * e(2.5)], [1, 1 + 2 * e(2.5)]]) / z2
    r = (2 * e(2.5) + e(1.5) - 20) / (4 * e(2.5) + e(1.5) - 20)
    r1 = (2 * e(2.5) + e(-0.75) - 20) / (4 * e(2.5) + e(-0.75) - 20)
    q = e(-2.75) / 2
    normalised = {
        (0, 0): np.array([[0, r], [1, r]]),
        (0, 1): np.array([[0, r1], [1, r1]]),
        (1, 0): np.array([[1, q], [0, q]]),
    }
    return {(0, 0): raw1, (0, 1): raw1c1, (1, 0): raw2}, normalised


def test_scorecam_hand_numbers_sanity():
    """The arithmetic of the comment above, on the model itself (logits of the masked inputs)."""
    net = HeadNet(SCORE_W, SCORE_B).eval()
    x1 = SCORE_IMAGES[0]
    masks = [torch.tensor([[0, 0.5], [1, 0.5]]), torch.tensor([[1.0, 0], [0, 0]]), torch.zeros(2, 2)]
    with torch.no_grad():
        logits = net(torch.stack([x1 * m for m in masks]))
    torch.testing.assert_close(logits[:, 0], torch.tensor([3.5, 2.5, 1.0]))
    torch.testing.assert_close(logits[:, 1], torch.tensor([2.5, -0.75, 0.0]))
    _, normalised = score_hand_expected()
    assert normalised[(0, 0)][0, 1] == pytest.approx(0.2664, abs=1e-4)
    assert normalised[(0, 1)][0, 1] == pytest.approx(0.1656, abs=1e-4)
    assert normalised[(1, 0)][0, 1] == pytest.approx(0.0320, abs=1e-4)


def test_scorecam_pure_function_hand_weights_and_constant_channels():
    net = HeadNet(SCORE_W, SCORE_B).eval()
    raw_expected, _ = score_hand_expected()
    calls: List[int] = []
    raw = scorecam(SCORE_IMAGES.clone(), SCORE_IMAGES, torch.tensor([0, 0]), hand_model_scorer(net, calls))
    np.testing.assert_allclose(raw[0].double().numpy(), raw_expected[(0, 0)], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(raw[1].double().numpy(), raw_expected[(1, 0)], rtol=1e-5, atol=1e-6)
    # The constant channels (image 1 channel 2, image 2 channel 0) are not run: the all-zero image is scored once
    # for both, the 4 varying (image, channel) pairs once each.
    assert sorted(calls) == [1, 4]
    raw = scorecam(SCORE_IMAGES.clone(), SCORE_IMAGES, torch.tensor([1, 0]), hand_model_scorer(net))
    np.testing.assert_allclose(raw[0].double().numpy(), raw_expected[(0, 1)], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(raw[1].double().numpy(), raw_expected[(1, 0)], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("targets", [[0, 0], [1, 0], None])
def test_scorecam_end_to_end_hand_maps(targets):
    net = HeadNet(SCORE_W, SCORE_B).eval()
    _, normalised = score_hand_expected()
    # top-1: image 1 logits (1*2 + 2*1.5 + 0 + 1, 2*2 - 1.5) = (6, 2.5) -> 0; image 2 (1 + 2*1 + 5*1 + 1, 2 - 1) = (9, 1) -> 0
    classes = targets or [0, 0]
    maps = cc.explain(net, SCORE_IMAGES, "scorecam", "feat", targets=targets)
    assert maps.shape == (2, 2, 2) and maps.dtype == torch.float32
    for n in range(2):
        np.testing.assert_allclose(maps[n].double().numpy(), normalised[(n, classes[n])], atol=1e-6)


# --- Score-CAM with upsampled masks ------------------------------------------------------------------
#
# UpNet: 2 channels, 1x6 images; target layer AvgPool2d((1, 2)) -> 1x3 feature map; fc W = [[3, -3]], b = 0.
#   x0 = [0, 0, 1, 1, 2, 2] -> A0 = [0, 1, 2];   x1 = [2, 2, 0, 0, 0, 0] -> A1 = [2, 0, 0]
#   bilinear 3 -> 6, align_corners=False: source coordinate (o + .5) / 2 - .5 = o/2 - .25 (clamped to [0, 2]):
#     up([a, b, c]) = [a, .75a + .25b, .25a + .75b, .75b + .25c, .25b + .75c, c]
#   up(A0) = [0, .25, .75, 1.25, 1.75, 2] -> M0 = [0, .125, .375, .625, .875, 1]
#   up(A1) = [2, 1.5, .5, 0, 0, 0]        -> M1 = [1, .75, .25, 0, 0, 0]
#   X * M0: ch0 [0, 0, .375, .625, 1.75, 2] -> pooled [0, .5, 1.875] -> mean 2.375/3; ch1 [0, .25, 0, 0, 0, 0] -> .125/3
#   X * M1: ch0 [0, 0, .25, 0, 0, 0] -> pooled [0, .125, 0] -> .125/3; ch1 [2, 1.5, 0, 0, 0, 0] -> [1.75, 0, 0] -> 1.75/3
#   scores: s0 = 3 (2.375 - .125)/3 = 2.25, s1 = 3 (.125 - 1.75)/3 = -1.625 -> w0 = sigmoid(3.875), w1 = 1 - w0
#   raw = w0 A0 + w1 A1 = [2 w1, w0, 2 w0] = [a, b, c] (increasing), final map (up(raw) - a) / (c - a).
#   (Masks upsampled with align_corners=True would be M0 = [0, .2, .4, .6, .8, 1], other scores, another map.)


def test_scorecam_hand_upsampled_masks():
    net = HeadNet([[3.0, -3.0]], [0.0], pool=(1, 2)).eval()
    x = torch.tensor([[[[0, 0, 1, 1, 2, 2]], [[2, 2, 0, 0, 0, 0]]]], dtype=torch.float32)
    with torch.no_grad():  # the scores of the comment, on the model
        masked = torch.stack([x[0] * torch.tensor([0, 0.125, 0.375, 0.625, 0.875, 1]), x[0] * torch.tensor([1, 0.75, 0.25, 0, 0, 0])])
        torch.testing.assert_close(net(masked)[:, 0], torch.tensor([2.25, -1.625]))
    w0 = sigmoid(3.875)
    a, b, c = 2 * (1 - w0), w0, 2 * w0
    up = np.array([a, 0.75 * a + 0.25 * b, 0.25 * a + 0.75 * b, 0.75 * b + 0.25 * c, 0.25 * b + 0.75 * c, c])
    expected = (up - a) / (c - a)
    maps = cc.explain(net, x, "scorecam", "feat", targets=0)
    np.testing.assert_allclose(maps[0, 0].double().numpy(), expected, atol=1e-6)
    raw = scorecam(torch.tensor([[[[0.0, 1, 2]], [[2.0, 0, 0]]]]), x, torch.tensor([0]), hand_model_scorer(net))
    np.testing.assert_allclose(raw[0, 0].double().numpy(), [a, b, c], rtol=1e-6)


# --- Ablation-CAM ------------------------------------------------------------------------------------
#
# AblationNet: 3 channels, 2x2 images; A0 = [[1, 2], [3, -2]] (relu-mean 6/4 = 1.5), A1 = [[4, 0], [-4, 0]]
# (relu-mean 1), A2 = 0 everywhere (a dead channel); fc W = [[2, 1, 7], [-1, 3, 0], [1, -1.5, 0], [-2, 1, 0]],
# b = [.5, 0, 0, 0]. S^k: channel k set to 0.
#   class 0: S = 2*1.5 + 1 + .5 = 4.5; S^0 = 1.5, S^1 = 3.5, S^2 = 4.5 -> w = (3/4.5, 1/4.5, 0) = (2/3, 2/9, 0)
#            raw = relu((6 A0 + 2 A1) / 9) = relu([[14, 12], [10, -12]] / 9) = [[14, 12], [10, 0]] / 9
#   class 1: S = -1.5 + 3 = 1.5; S^0 = 3 -> w0 = -1; S^1 = -1.5 -> w1 = 2; raw = relu(-A0 + 2 A1) = [[7, 0], [0, 2]]
#   class 2: S = 1.5 - 1.5 = 0 -> w = S - S^k: S^0 = -1.5 -> 1.5, S^1 = 1.5 -> -1.5;
#            raw = relu(1.5 (A0 - A1)) = 1.5 relu([[-3, 2], [7, -2]]) = [[0, 3], [10.5, 0]]
#   class 3: S = -3 + 1 = -2 (negative: the division flips signs); S^0 = 1 -> w0 = (-2 - 1)/-2 = 1.5;
#            S^1 = -3 -> w1 = (-2 + 3)/-2 = -.5; raw = relu(1.5 A0 - .5 A1) = relu([[-.5, 3], [6.5, -3]]) = [[0, 3], [6.5, 0]]

ABLATION_W = [[2.0, 1.0, 7.0], [-1.0, 3.0, 0.0], [1.0, -1.5, 0.0], [-2.0, 1.0, 0.0]]
ABLATION_B = [0.5, 0.0, 0.0, 0.0]
ABLATION_IMAGE = torch.tensor([[[1, 2], [3, -2]], [[4, 0], [-4, 0]], [[0, 0], [0, 0]]], dtype=torch.float32)
ABLATION_RAW = {
    0: np.array([[14, 12], [10, 0]]) / 9,
    1: np.array([[7, 0], [0, 2]], dtype=np.float64),
    2: np.array([[0, 3], [10.5, 0]]),
    3: np.array([[0, 3], [6.5, 0]]),
}


def test_ablationcam_hand_numbers_sanity():
    net = HeadNet(ABLATION_W, ABLATION_B).eval()
    ablated = ABLATION_IMAGE.repeat(3, 1, 1, 1)
    for k in range(3):
        ablated[k, k] = 0
    with torch.no_grad():
        torch.testing.assert_close(net(ABLATION_IMAGE[None])[0], torch.tensor([4.5, 1.5, 0.0, -2.0]))
        torch.testing.assert_close(net(ablated), torch.tensor([[1.5, 3, -1.5, 1], [3.5, -1.5, 1.5, -3], [4.5, 1.5, 0, -2]]))


def test_ablationcam_pure_function_hand_weights_and_dead_channel():
    net = HeadNet(ABLATION_W, ABLATION_B).eval()
    images = ABLATION_IMAGE.repeat(4, 1, 1, 1)
    targets = torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        logits = net(images)
    calls: List[int] = []
    raw = ablationcam(images, logits, targets, hand_tail_scorer(net, calls))
    for c in range(4):
        np.testing.assert_allclose(raw[c].double().numpy(), ABLATION_RAW[c], rtol=1e-6, atol=1e-6)
    assert not torch.isnan(raw).any()
    # the dead channel (0 in every image) is not ablated at all: 2 copies per image, not 3
    assert calls == [2]


@pytest.mark.parametrize("target", [0, 1, 2, 3, None])
def test_ablationcam_end_to_end_hand_maps(target):
    net = HeadNet(ABLATION_W, ABLATION_B).eval()
    maps = cc.explain(net, ABLATION_IMAGE[None], "ablationcam", "feat", targets=target)
    c = 0 if target is None else target  # top-1 of the logits (4.5, 1.5, 0, -2)
    raw = ABLATION_RAW[c]
    np.testing.assert_allclose(maps[0].double().numpy(), raw / raw.max(), atol=1e-6)


def test_ablationcam_dead_channel_in_one_image_only():
    """Channel 2 is dead in image 1 but alive in image 2: image 1's map is unchanged, image 2's uses its weight.

    Image 2 = image 1 with A2 = [[0, 0], [0, 1]] (relu-mean .25). Class 0: S = 4.5 + 7 * .25 = 6.25; S^0 = 6.25 - 3 = 3.25,
    S^1 = 5.25, S^2 = 4.5 -> w = (3, 1, 1.75) / 6.25; 6.25 w . A = 3 A0 + A1 + 1.75 A2 = [[7, 6], [5, -4.25]]
    -> relu, normalised [[1, 6/7], [5/7, 0]].
    """
    net = HeadNet(ABLATION_W, ABLATION_B).eval()
    second = ABLATION_IMAGE.clone()
    second[2, 1, 1] = 1.0
    maps = cc.explain(net, torch.stack([ABLATION_IMAGE, second]), "ablationcam", "feat", targets=0)
    np.testing.assert_allclose(maps[0].double().numpy(), ABLATION_RAW[0] / ABLATION_RAW[0].max(), atol=1e-6)
    np.testing.assert_allclose(maps[1].double().numpy(), [[1, 6 / 7], [5 / 7, 0]], atol=1e-6)


# --- Recipro-CAM -------------------------------------------------------------------------------------
#
# ReciproNet: 2 channels, 2x2 images, fc = identity (class c reads channel c), b = 0, so with 2 classes the target
# probability of class 0 is sigmoid(z0 - z1), z_k = relu-mean of the kept copy of channel k (over 4 positions).
#   A0 = [[4, 0], [8, -4]], A1 = [[0, 4], [4, 0]]
#   one-hot: (0,0): z = (4/4, 0) = (1, 0) -> s(1); (0,1): (0, 1) -> s(-1); (1,0): (2, 1) -> s(1); (1,1): (0, 0) -> s(0)
#            map = [[s(1), s(-1)], [s(1), 1/2]]; s(-1) + s(1) = 1, so 1/2 is the midpoint: normalised [[1, 0], [1, .5]]
#   gaussian (kernel cut at the borders, not renormalised):
#     (0,0): M = [[.25, .125], [.125, .0625]]: A0 M = [[1, 0], [1, -.25]] -> 2/4; A1 M = [[0, .5], [.5, 0]] -> 1/4
#            -> s(.5 - .25) = s(.25)
#     (0,1): M = [[.125, .25], [.0625, .125]]: A0 M -> (.5 + .5)/4 = .25; A1 M -> (1 + .25)/4 = .3125 -> s(-.0625)
#     (1,0): M = [[.125, .0625], [.25, .125]]: A0 M -> (.5 + 2)/4 = .625; A1 M -> (.25 + 1)/4 = .3125 -> s(.3125)
#     (1,1): M = [[.0625, .125], [.125, .25]]: A0 M -> (.25 + 1)/4 = .3125; A1 M -> (.5 + .5)/4 = .25 -> s(.0625)
#   class 1 = 1 - class 0.

RECIPRO_IMAGE = torch.tensor([[[4, 0], [8, -4]], [[0, 4], [4, 0]]], dtype=torch.float32)
RECIPRO_RAW = {
    False: np.array([[sigmoid(1), sigmoid(-1)], [sigmoid(1), 0.5]]),
    True: np.array([[sigmoid(0.25), sigmoid(-0.0625)], [sigmoid(0.3125), sigmoid(0.0625)]]),
}


def recipro_net() -> HeadNet:
    return HeadNet([[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0]).eval()


@pytest.mark.parametrize("gaussian", [False, True])
def test_reciprocam_pure_function_hand_probabilities(gaussian):
    net = recipro_net()
    images = RECIPRO_IMAGE.repeat(2, 1, 1, 1)
    calls: List[int] = []
    raw = reciprocam(images, torch.tensor([0, 1]), hand_tail_scorer(net, calls), gaussian=gaussian)
    np.testing.assert_allclose(raw[0].double().numpy(), RECIPRO_RAW[gaussian], rtol=1e-6)
    np.testing.assert_allclose(raw[1].double().numpy(), 1 - RECIPRO_RAW[gaussian], rtol=1e-6)
    assert sum(calls) == 4  # one copy per position


@pytest.mark.parametrize("gaussian", [False, True])
@pytest.mark.parametrize("target", [0, 1])
def test_reciprocam_end_to_end_hand_maps(gaussian, target):
    net = recipro_net()
    maps = cc.explain(net, RECIPRO_IMAGE[None], "reciprocam", "feat", targets=target, method_options={"gaussian": gaussian})
    raw = RECIPRO_RAW[gaussian] if target == 0 else 1 - RECIPRO_RAW[gaussian]
    expected = (raw - raw.min()) / (raw.max() - raw.min())
    if not gaussian:
        np.testing.assert_allclose(expected, [[1, 0], [1, 0.5]] if target == 0 else [[0, 1], [0, 0.5]], atol=1e-12)
    np.testing.assert_allclose(maps[0].double().numpy(), expected, atol=1e-6)


def test_position_masks_by_hand():
    # one-hot, row-major: p = i * w + j
    masks = position_masks(2, 3)
    assert masks.shape == (6, 2, 3)
    for p in range(6):
        want = torch.zeros(2, 3)
        want[p // 3, p % 3] = 1
        assert torch.equal(masks[p], want)
    g = position_masks(3, 3, gaussian=True) * 16
    assert torch.equal(g[4], torch.tensor([[1.0, 2, 1], [2, 4, 2], [1, 2, 1]]))  # centre: the whole kernel
    assert torch.equal(g[0], torch.tensor([[4.0, 2, 0], [2, 1, 0], [0, 0, 0]]))  # corner: cut, not renormalised
    assert torch.equal(g[5], torch.tensor([[0.0, 1, 2], [0, 2, 4], [0, 1, 2]]))  # right edge (1, 2)


# ---------------------------------------------------------------------------------------------------
# Small random networks and straightforward references
# ---------------------------------------------------------------------------------------------------


class SkipNet(nn.Module):
    """BN + dropout, the target ``block`` (conv, no ReLU: signed, no exact zeros) and a skip crossing the cut."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Dropout2d(0.3))
        self.block = nn.Conv2d(6, 8, 3, padding=1, stride=4)
        self.bn = nn.BatchNorm2d(8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.skip = nn.Linear(6, 8)
        self.dropout = nn.Dropout(0.5)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: Tensor) -> Tensor:
        s = self.stem(x)
        f = F.relu(self.bn(self.block(s)))
        return self.fc(self.dropout(torch.flatten(self.pool(f), 1) + self.skip(torch.flatten(self.pool(s), 1))))


def seeded_skipnet() -> SkipNet:
    torch.manual_seed(0)
    model = SkipNet()
    with torch.no_grad():
        model.train()
        model(torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(7)) * 2 + 0.5)  # BN stats away from (0, 1)
        # Spread the logits and weaken the skip, so that one kept position moves the target probability by >= 1e-2
        # (Recipro-CAM) and the float32 noise of the logits (~1e-6) stays far below the maps' resolution.
        model.fc.weight.mul_(20.0)
        model.skip.weight.mul_(0.3)
        model.skip.bias.mul_(0.3)
    return model.eval()


def images(n: int = 3, size: int = 16, seed: int = 1) -> Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def layer_output(model: nn.Module, layer: str, x: Tensor) -> Tensor:
    out: Dict[str, Tensor] = {}

    def hook(module, inputs, output):  # returns None: a hook that returns a value replaces the output
        out["a"] = output.detach().clone()

    handle = model.get_submodule(layer).register_forward_hook(hook)
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return out["a"]


def replaced_logits(model: nn.Module, layer: str, x: Tensor, activations: Tensor) -> Tensor:
    """The whole model on ``x`` with the layer's output replaced by (a fresh copy of) ``activations``."""
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: activations.clone())
    try:
        with torch.no_grad():
            return model(x)
    finally:
        handle.remove()


def normalise(raw: Tensor, size) -> Tensor:
    up = F.interpolate(raw[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]
    low, high = up.amin(dim=(1, 2), keepdim=True), up.amax(dim=(1, 2), keepdim=True)
    return torch.where(high > low, (up - low) / (high - low).clamp_min(1e-30), torch.zeros_like(up))


def kernel_mask(h: int, w: int, i: int, j: int, gaussian: bool) -> Tensor:
    kernel = torch.tensor([[1.0, 2, 1], [2, 4, 2], [1, 2, 1]]) / 16 if gaussian else torch.tensor([[0.0, 0, 0], [0, 1, 0], [0, 0, 0]])
    mask = torch.zeros(h, w)
    for di in (-1, 0, 1):
        for dj in (-1, 0, 1):
            if 0 <= i + di < h and 0 <= j + dj < w:
                mask[i + di, j + dj] = kernel[1 + di, 1 + dj]
    return mask


def reference_reciprocam(model, layer, x, targets, gaussian=False, tail=None) -> Tensor:
    """One position at a time: the full model (or ``tail``) with the layer's output replaced by ``A * M_ij``."""
    a = layer_output(model, layer, x)
    n, _, h, w = a.shape
    raw = torch.zeros(n, h, w, dtype=torch.float64)
    for i in range(h):
        for j in range(w):
            kept = a * kernel_mask(h, w, i, j, gaussian)
            with torch.no_grad():
                logits = replaced_logits(model, layer, x, kept) if tail is None else tail(kept)
            raw[:, i, j] = torch.softmax(logits.double(), dim=1)[torch.arange(n), targets]
    # Guard: the probabilities must vary by >= 5e-3 over the positions. The maps are min-max normalised, so float32
    # noise of the probabilities (~1e-7: the batched tail and the full model round differently) is amplified by
    # 1 / span; with this span it stays below the 2e-5 tolerance used against this reference.
    span = raw.flatten(1).amax(1) - raw.flatten(1).amin(1)
    assert bool((span >= 5e-3).all()), f"Recipro-CAM reference map too flat to compare: spans {span.tolist()}"
    return normalise(raw, x.shape[-2:])


def reference_ablationcam(model, layer, x, targets, tail=None) -> Tensor:
    a = layer_output(model, layer, x)
    n, k = a.shape[:2]
    with torch.no_grad():
        base = model(x).double()[torch.arange(n), targets]
    weights = torch.zeros(n, k, dtype=torch.float64)
    for channel in range(k):
        ablated = a.clone()
        ablated[:, channel] = 0
        with torch.no_grad():
            logits = replaced_logits(model, layer, x, ablated) if tail is None else tail(ablated)
        score = logits.double()[torch.arange(n), targets]
        weights[:, channel] = torch.where(base != 0, (base - score) / base, base - score)
    raw = torch.relu((weights[:, :, None, None] * a.double()).sum(1))
    return normalise(raw, x.shape[-2:])


def reference_scorecam(model, layer, x, targets) -> Tensor:
    a = layer_output(model, layer, x)
    n, k = a.shape[:2]
    masks = normalise(a.flatten(0, 1), x.shape[-2:]).reshape(n, k, *x.shape[-2:])  # constant channel -> zeros
    weights = torch.zeros(n, k, dtype=torch.float64)
    for i in range(n):
        with torch.no_grad():
            weights[i] = torch.softmax(model(x[i : i + 1] * masks[i][:, None]).double()[:, targets[i]], dim=0)
    raw = torch.relu((weights[:, :, None, None] * a.double()).sum(1))
    return normalise(raw, x.shape[-2:])


REFERENCES = {"scorecam": reference_scorecam, "ablationcam": reference_ablationcam, "reciprocam": reference_reciprocam}


def assert_informative(maps: Tensor) -> None:
    for m in maps:
        assert float(m.max()) == 1.0 and float(m.std()) > 0.05, "map is (near) constant: the comparison would be void"


@pytest.fixture(scope="module")
def skipnet_maps():
    """Default-settings maps of SkipNet for every method (and Recipro-CAM's gaussian option), explicit targets."""
    model = seeded_skipnet()
    x = images()
    targets = [0, 3, 1]
    maps = {m: cc.explain(model, x, m, "block", targets=targets) for m in PERTURBATION_METHODS}
    maps["reciprocam-gaussian"] = cc.explain(model, x, "reciprocam", "block", targets=targets, method_options={"gaussian": True})
    return model, x, targets, maps


@pytest.mark.parametrize("method", PERTURBATION_METHODS + ["reciprocam-gaussian"])
def test_skipnet_against_reference_loops(skipnet_maps, method):
    """The engine (fx tail with the skip repeated per copy, memory-bounded passes) vs one-at-a-time full-model loops."""
    model, x, targets, maps = skipnet_maps
    name, gaussian = method.split("-")[0], method.endswith("gaussian")
    kwargs = {"gaussian": gaussian} if name == "reciprocam" else {}
    want = REFERENCES[name](model, "block", x, torch.tensor(targets), **kwargs)
    assert_informative(maps[method])
    torch.testing.assert_close(maps[method], want, atol=2e-5, rtol=0)
    if name == "scorecam":  # the softmax weights matter: not the map of uniform weights (the channel mean)
        uniform = normalise(torch.relu(layer_output(model, "block", x).mean(1)), x.shape[-2:])
        assert (maps[method] - uniform).abs().amax() > 0.05


@pytest.mark.parametrize(
    "method", [pytest.param(m, marks=pytest.mark.slow) if m == "scorecam" else m for m in PERTURBATION_METHODS + ["reciprocam-gaussian"]]
)
def test_chunking_and_batch_size_do_not_change_maps(skipnet_maps, method):
    """Rows per perturbation pass and images per chunk change only float32 rounding (matmul blocking depends on the
    batch). Raw Score-/Ablation-CAM maps then move by ~1e-7 relative; Recipro-CAM's probabilities by ~6e-8 absolute,
    which min-max normalisation divides by the map's span (>= 1.3e-2 here, gaussian): measured up to ~5e-6."""
    model, x, targets, maps = skipnet_maps
    name = method.split("-")[0]
    options = {"gaussian": True} if method.endswith("gaussian") else None
    want = maps[method]
    for kwargs in ({"perturbation_batch": 1}, {"perturbation_batch": 3}, {"batch_size": 1}, {"batch_size": 2, "perturbation_batch": 5}):
        got = cc.explain(model, x, name, "block", targets=targets, method_options=options, **kwargs)
        torch.testing.assert_close(got, want, atol=1e-5 if name == "reciprocam" else 1e-6, rtol=0, msg=lambda m: f"{kwargs}: {m}")


@pytest.mark.parametrize("method", PERTURBATION_METHODS)
def test_targets_are_respected(skipnet_maps, method):
    model, x, targets, maps = skipnet_maps
    with torch.no_grad():
        top1 = model(x).argmax(1)
    other = [(int(t) + 2) % 5 for t in top1]
    got_other = cc.explain(model, x, method, "block", targets=other)
    torch.testing.assert_close(got_other, REFERENCES[method](model, "block", x, torch.tensor(other)), atol=2e-5, rtol=0)
    got_top1 = cc.explain(model, x, method, "block")
    torch.testing.assert_close(got_top1, cc.explain(model, x, method, "block", targets=top1.tolist()), atol=0, rtol=0)
    assert (got_top1 - got_other).abs().amax() > 0.05  # the class matters on this model
    with pytest.raises(ValueError, match="out of range"):
        cc.explain(model, x, method, "block", targets=5)


# --- the model is left exactly as found ----------------------------------------------------------------

HOOK_DICTS = [
    "_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs", "_backward_hooks", "_backward_pre_hooks", "_state_dict_hooks",
    "_load_state_dict_pre_hooks",
]  # fmt: skip
GLOBAL_HOOK_DICTS = ["_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks", "_global_backward_pre_hooks"]


def make_stateful(model: nn.Module) -> nn.Module:
    """Train mode with one submodule in eval, a frozen parameter and pending gradients (mid accumulation)."""
    model.train()
    params = list(model.parameters())
    params[1].requires_grad_(False)
    params[-1].grad = torch.full_like(params[-1], 0.25)
    params[0].grad = torch.arange(params[0].numel(), dtype=torch.float32).view_as(params[0])
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    (norms[0] if norms else model.fc).eval()
    return model


def snapshot(model: nn.Module) -> dict:
    return {
        "modules": {name: m for name, m in model.named_modules()},
        "training": {name: m.training for name, m in model.named_modules()},
        "state": {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
        "grad_objects": {name: p.grad for name, p in model.named_parameters()},
        "grad_values": {name: None if p.grad is None else p.grad.clone() for name, p in model.named_parameters()},
        "requires_grad": {name: p.requires_grad for name, p in model.named_parameters()},
        "hooks": {(name, d): dict(getattr(m, d)) for name, m in model.named_modules() for d in HOOK_DICTS},
        "global_hooks": {d: dict(getattr(module_globals, d)) for d in GLOBAL_HOOK_DICTS},
        "grad_enabled": torch.is_grad_enabled(),
        "rng": torch.get_rng_state(),
        "py_rng": random.getstate(),
    }


def assert_unchanged(model: nn.Module, before: dict) -> None:
    after = snapshot(model)
    assert after["modules"].keys() == before["modules"].keys()
    assert all(after["modules"][k] is v for k, v in before["modules"].items())  # no module replaced
    assert after["training"] == before["training"]
    assert after["state"].keys() == before["state"].keys()
    for key, value in before["state"].items():  # parameters and BN buffers bit-identical (incl. num_batches_tracked)
        assert torch.equal(after["state"][key], value), key
    for name, grad in before["grad_objects"].items():
        assert after["grad_objects"][name] is grad, name
        if grad is not None:
            assert torch.equal(after["grad_values"][name], before["grad_values"][name]), name
    assert after["requires_grad"] == before["requires_grad"]
    assert after["hooks"] == before["hooks"]
    assert after["global_hooks"] == before["global_hooks"]
    assert after["grad_enabled"] == before["grad_enabled"]
    assert torch.equal(after["rng"], before["rng"]) and after["py_rng"] == before["py_rng"]


@pytest.fixture
def global_hook():
    """A user's global forward hook, present during the call (it must survive, and nothing may be added)."""
    seen: List[int] = []
    handle = torch.nn.modules.module.register_module_forward_hook(lambda m, i, o: seen.append(1))
    yield seen
    handle.remove()


@pytest.mark.parametrize("method", PERTURBATION_METHODS)
def test_model_left_exactly_as_found(method, global_hook):
    model = make_stateful(seeded_skipnet())
    user_calls: List[int] = []
    user_hook = model.block.register_forward_hook(lambda m, i, o: user_calls.append(1))
    x = images()
    want = cc.explain(copy.deepcopy(model).eval(), x, method, "block")
    before = snapshot(model)
    got = cc.explain(model, x, method, "block")
    assert_unchanged(model, before)
    assert user_calls and global_hook  # the user's hooks are still there and were called
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)  # eval mode inside, as on an eval copy
    with torch.inference_mode():  # as in Lightning's validate(): inference tensors in, same maps out
        x_inference = x.clone()
        got_inference = cc.explain(model, x_inference, method, "block")
        assert torch.is_inference_mode_enabled()
    assert_unchanged(model, before)
    user_hook.remove()
    torch.testing.assert_close(got_inference, want, atol=1e-6, rtol=0)


@torch.fx.wrap
def refuse_zeros(features: Tensor) -> Tensor:
    """Raises for a feature map with an exact zero (every Ablation-/Recipro-CAM copy has some); fx keeps it a call."""
    if bool((features == 0).any()):
        raise RuntimeError("boom: the tail refuses modified feature maps")
    return features


class RaisingTailNet(nn.Module):
    """The tail raises for modified feature maps: traced by torch.fx (``refuse_zeros`` is wrapped)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.block = nn.Conv2d(6, 6, 3, padding=1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(F.relu(refuse_zeros(self.block(self.stem(x)))).mean(dim=(2, 3)))


class RaisingBranchyNet(RaisingTailNet):
    """The same, with data-dependent Python control flow: torch.fx cannot trace it (re-run fallback)."""

    def forward(self, x: Tensor) -> Tensor:
        features = self.block(self.stem(x))
        if bool((features == 0).any()):
            raise RuntimeError("boom: the tail refuses modified feature maps")
        return self.fc(F.relu(features).mean(dim=(2, 3)))


@pytest.mark.parametrize("model_cls", [RaisingTailNet, RaisingBranchyNet])
@pytest.mark.parametrize("method", ["ablationcam", "reciprocam"])
def test_model_left_exactly_as_found_when_the_tail_raises(model_cls, method, global_hook):
    torch.manual_seed(0)
    model = make_stateful(model_cls())
    x = images(2)
    before = snapshot(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the re-run fallback warns
        for context in (torch.enable_grad, torch.no_grad, torch.inference_mode):
            with context():
                inner = snapshot(model)
                with pytest.raises(RuntimeError, match="boom: the tail refuses"):
                    cc.explain(model, x, method, "block", perturbation_batch=3)
                assert_unchanged(model, inner)
    assert_unchanged(model, before)
    # Score-CAM runs the whole model on masked images (no exact zeros in the block's output): it works on this model
    assert cc.explain(model, x, "scorecam", "block").shape == (2, 16, 16)
    assert_unchanged(model, before)


@pytest.mark.parametrize("method", PERTURBATION_METHODS)
def test_model_left_exactly_as_found_on_bad_targets(method, global_hook):
    model = make_stateful(seeded_skipnet())
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"targets\[1\]=7 is out of range"):
        cc.explain(model, images(), method, "block", targets=[0, 7, 1])
    with pytest.raises(ValueError, match=r"has no option\(s\) \['gausian'\]"):
        cc.explain(model, images(), method, "block", method_options={"gausian": True})
    assert_unchanged(model, before)


# --- tail= --------------------------------------------------------------------------------------------


class PlainNet(nn.Module):
    """stem -> block (the target, a signed conv output) -> ReLU -> GAP -> fc: nothing crosses the cut."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU())
        self.block = nn.Conv2d(6, 6, 3, padding=1, stride=4)
        self.fc = nn.Linear(6, 4)

    def head(self, features: Tensor) -> Tensor:
        return self.fc(F.relu(features).mean(dim=(2, 3)))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.block(self.stem(x)))


def seeded_plainnet() -> PlainNet:
    torch.manual_seed(0)
    model = PlainNet().eval()
    with torch.no_grad():
        model.fc.weight.mul_(20.0)  # Recipro-CAM probabilities vary by >= 1e-2 over the positions
    return model


@pytest.mark.parametrize("method", ["reciprocam", "ablationcam"])
def test_user_tail_is_used(method):
    """A counted user tail that equals the model on the real feature map but not on modified copies: the maps must be
    the ones of that tail, so it really is what scores the copies."""
    model = seeded_plainnet()
    x = images(2)
    rows: List[int] = []

    def user_tail(features: Tensor) -> Tensor:
        rows.append(features.shape[0])
        zeros = (features == 0).flatten(1).float().mean(1, keepdim=True)  # 0 on the real (signed conv) feature map
        return model.head(features) + zeros * torch.tensor([0.0, 1.0, -1.0, 0.5])

    targets = torch.tensor([0, 2])
    got = cc.explain(model, x, method, "block", targets=targets, tail=user_tail)
    h, w = layer_output(model, "block", x).shape[-2:]
    copies = h * w if method == "reciprocam" else 6
    assert sum(rows) >= 2 * copies and all(r % 2 == 0 for r in rows)
    want = REFERENCES[method](model, "block", x, targets, tail=user_tail)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    default = cc.explain(model, x, method, "block", targets=targets)
    assert (got - default).abs().amax() > 0.05  # the user tail, not the derived one, scored the copies


def test_wrong_user_tail_raises_clear_error(global_hook):
    model = make_stateful(seeded_plainnet())
    before = snapshot(model)
    for method in ("reciprocam", "ablationcam"):
        with pytest.raises(ValueError, match="tail= does not reproduce PlainNet after layer 'block'"):
            cc.explain(model, images(2), method, "block", tail=lambda f: model.head(f) * 2.0)
        with pytest.raises(ValueError, match="tail= does not reproduce.*returned shape"):
            cc.explain(model, images(2), method, "block", tail=lambda f: f.mean(dim=(2, 3)))
    with pytest.raises(TypeError, match="tail must be a callable"):
        cc.explain(model, images(2), "reciprocam", "block", tail="fc")
    assert_unchanged(model, before)


class InPlaceHeadNet(nn.Module):
    """densenet's pattern: the forward applies ``F.relu(features, inplace=True)`` to the target layer's output."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 8, 3, padding=1, stride=4))
        self.classifier = nn.Linear(8, 4)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.features(x), inplace=True)
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


@pytest.mark.parametrize("user_tail", [False, True], ids=["derived-tail", "user-tail"])
@pytest.mark.parametrize("method", ["ablationcam", "reciprocam"])
def test_tail_writing_in_place_does_not_rewrite_the_activations(method, user_tail):
    """A tail that writes into its input (densenet's ``F.relu(features, inplace=True)``; a user who copies densenet's
    forward into ``tail=`` writes the same) must not change the activations the map is made of.

    Ablation-CAM's map is ``ReLU(sum_k w_k A_k)`` of the *signed* features; if the tail's check pass ReLUs them in
    place the map becomes ``ReLU(sum_k w_k ReLU(A_k))``. (Recipro-CAM's map only uses tail outputs, and
    ``ReLU(ReLU(A) M) = ReLU(A M)`` for masks M >= 0, so it cannot show the problem.)
    """
    torch.manual_seed(0)
    model = InPlaceHeadNet().eval()
    with torch.no_grad():
        model.classifier.weight.mul_(20.0)
    x = images(2)
    targets = torch.tensor([0, 1])
    assert float(layer_output(model, "features", x).min()) < 0  # the in-place ReLU really changes these values

    def densenet_style_tail(features: Tensor) -> Tensor:
        out = F.relu(features, inplace=True)
        return model.classifier(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))

    got = cc.explain(model, x, method, "features", targets=targets, tail=densenet_style_tail if user_tail else None)
    want = REFERENCES[method](model, "features", x, targets)
    assert_informative(got)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=0)


@pytest.mark.parametrize("method", PERTURBATION_METHODS)
def test_explained_model_can_be_garbage_collected(method):
    """The per-model caches (derived tails, measured costs) must not keep a model alive once the user drops it:
    a training script or notebook that explains many models (or re-creates one per run) would leak all of them."""
    model = seeded_plainnet()
    cc.explain(model, images(2), method, "block")
    alive = weakref.ref(model)
    del model
    gc.collect()
    assert alive() is None, f"{method}: the model is still referenced after explain() (by the library's caches)"


class RecordingNet(PlainNet):
    """A forward with Python side effects on the model (common in research code: shapes or features kept for later)."""

    def forward(self, x: Tensor) -> Tensor:
        features = self.block(self.stem(x))
        self.last_feature_shape = features.shape  # torch.Size on a real forward pass
        self.last_features = features.detach()
        return self.head(features)


@pytest.mark.parametrize("method", ["ablationcam", "reciprocam"])
def test_tracing_leaves_no_fx_objects_in_the_model(method):
    """Deriving the tail traces ``forward`` symbolically: the Python code runs with torch.fx Proxies in place of
    tensors, so attribute assignments in ``forward`` store Proxies on the user's model. What a real forward pass
    stores is fine; what tracing stores must be undone: afterwards ``torch.save(model)`` must work and the attributes
    must hold what the last real forward pass put there."""
    torch.manual_seed(0)
    model = RecordingNet().eval()
    x = images(2)
    cc.explain(model, x, method, "block")
    leftovers = {
        f"{name or type(model).__name__}.{key}": type(value).__name__
        for name, module in model.named_modules()
        for key, value in vars(module).items()
        if type(value).__module__.startswith("torch.fx")
    }
    assert not leftovers, f"torch.fx objects left in the model's attributes: {leftovers}"
    assert isinstance(model.last_feature_shape, torch.Size) and isinstance(model.last_features, Tensor)
    torch.save(model, io.BytesIO())


# --- torch.fx cannot trace: the re-run fallback -----------------------------------------------------------


class BranchyNet(nn.Module):
    """Data-dependent control flow before the target layer: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6))
        self.block = nn.Conv2d(6, 6, 3, padding=1, stride=4)
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(6, 4)

    def forward(self, x: Tensor) -> Tensor:
        stem = self.stem(x)
        if stem.sum() > 0:
            stem = stem * 2.0
        else:
            stem = -stem
        return self.fc(self.relu(self.block(stem)).mean(dim=(2, 3)))


def test_untraceable_model_uses_rerun_fallback_and_warns_once():
    torch.manual_seed(0)
    model = BranchyNet().eval()
    with torch.no_grad():
        model.fc.weight.mul_(20.0)
    x = images(2)
    targets = torch.tensor([1, 3])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        recipro = cc.explain(model, x, "reciprocam", "block", targets=targets, batch_size=1)  # two chunks
        gaussian = cc.explain(model, x, "reciprocam", "block", targets=targets, method_options={"gaussian": True})
        ablation = cc.explain(model, x, "ablationcam", "block", targets=targets, perturbation_batch=4)
    fallback = [w for w in caught if "Falling back to re-running" in str(w.message)]
    assert len(fallback) == 1, [str(w.message) for w in caught]
    assert "torch.fx cannot trace" in str(fallback[0].message)
    torch.testing.assert_close(recipro, reference_reciprocam(model, "block", x, targets), atol=1e-5, rtol=0)
    torch.testing.assert_close(gaussian, reference_reciprocam(model, "block", x, targets, gaussian=True), atol=1e-5, rtol=0)
    torch.testing.assert_close(ablation, reference_ablationcam(model, "block", x, targets), atol=1e-5, rtol=0)
    for maps in (recipro, gaussian, ablation):
        assert_informative(maps)
    assert not model.block._forward_hooks  # the replacement hook lives only during a pass


# --- options, faithfulness ---------------------------------------------------------------------------------


def test_method_options():
    assert dict(get_method("reciprocam").options) == {"gaussian": False}
    assert not get_method("scorecam").options and not get_method("ablationcam").options
    model = seeded_plainnet()
    x = images(2)
    plain = cc.explain(model, x, "reciprocam", "block")
    assert torch.equal(cc.explain(model, x, "reciprocam", "block", method_options={"gaussian": False}), plain)
    spread = cc.explain(model, x, "reciprocam", "block", method_options={"gaussian": True})
    assert (spread - plain).abs().amax() > 0.05
    with pytest.raises(ValueError, match=r"'reciprocam' has no option\(s\) \['sigma'\]; its options are \['gaussian'\]"):
        cc.explain(model, x, "reciprocam", "block", method_options={"sigma": 1.0})
    for method in ("scorecam", "ablationcam"):
        with pytest.raises(ValueError, match=rf"'{method}' has no option\(s\) \['gaussian'\]; its options are none"):
            cc.explain(model, x, method, "block", method_options={"gaussian": True})
    with pytest.raises(ValueError, match="no option"):
        cc.faithfulness(model, x, "reciprocam", "block", method_options={"sigma": 1.0})
    for bad in (0, -2, True, 2.5):
        with pytest.raises(ValueError, match="perturbation_batch must be None or a positive int"):
            cc.explain(model, x, "reciprocam", "block", perturbation_batch=bad)


@pytest.mark.parametrize("method, options", [("scorecam", None), ("ablationcam", None), ("reciprocam", None), ("reciprocam", {"gaussian": True})])
def test_faithfulness_runs(method, options):
    model = seeded_skipnet()
    x = images()
    before = snapshot(model)
    scores = cc.faithfulness(model, x, method, "block", method_options=options)
    assert sorted(scores) == ["adcc", "average_drop", "coherency", "complexity", "increase_in_confidence"]
    for name, value in scores.items():
        assert math.isfinite(value) and 0.0 <= value <= 1.0, (name, value)
    per_image = cc.faithfulness(model, x, method, "block", method_options=options, reduction="none")
    assert all(v.shape == (3,) for v in per_image.values())
    assert per_image["adcc"].mean().item() == pytest.approx(scores["adcc"], abs=1e-6)
    assert_unchanged(model, before)
