"""The methods added for issue 14 against maps worked out by hand on hand-set tensors and tiny hand-set models.

Grad-CAM element-wise, Eigen-Grad-CAM, KPCA-CAM (also against scikit-learn's KernelPCA, which pytorch-grad-cam
calls), FEM, Random-CAM, Sobel-CAM and Smooth Grad-CAM++ (its noise, its averaging and the engine's
``layer_gradients`` input); every new method through ``cc.explain`` and ``cc.faithfulness`` (through ``CAMMonitor``:
tests/callbacks/test_callback_methods.py).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision
from sklearn.decomposition import KernelPCA
from torch import nn

import cam_callbacks as cc
from cam_callbacks.engine.layer_gradients import LayerGradients
from cam_callbacks.methods.activation_variants import fem
from cam_callbacks.methods.baselines import grayscale, random_channel_weights, randomcam, sobelcam
from cam_callbacks.methods.decomposition import eigencam
from cam_callbacks.methods.decomposition_variants import KPCA_KERNELS, eigengradcam, kpcacam
from cam_callbacks.methods.gradient import gradcampp, hirescam
from cam_callbacks.methods.gradient_variants import gradcamelementwise, smoothgradcampp
from cam_callbacks.methods.registry import get_method

NEW_METHODS = ["gradcamelementwise", "smoothgradcampp", "eigengradcam", "kpcacam", "fem", "randomcam", "sobelcam"]
SEEDED = {"smoothgradcampp": "seed", "randomcam": "seed"}


def test_registered_after_the_existing_methods():
    names = cc.available_methods()
    assert names[names.index("guidedgradcam") + 1 :][: len(NEW_METHODS)] == NEW_METHODS
    assert get_method("sobelcam").uses_layer is False and get_method("smoothgradcampp").uses_layer is True


# --- Grad-CAM element-wise -------------------------------------------------------------------------------


def test_gradcamelementwise_hand_computed():
    # A: channel 0 = [1, 2], channel 1 = [3, -1]; g: channel 0 = [1, -1], channel 1 = [-1, 2]
    # products g*A: channel 0 = [1, -2], channel 1 = [-3, -2]
    # element-wise ReLU then sum: [1 + 0, 0 + 0] = [1, 0]; HiResCAM sums first: ReLU([-2, -4]) = [0, 0]
    a = torch.tensor([[[[1.0, 2.0]], [[3.0, -1.0]]]])
    g = torch.tensor([[[[1.0, -1.0]], [[-1.0, 2.0]]]])
    assert torch.equal(gradcamelementwise(a, g), torch.tensor([[[1.0, 0.0]]]))
    assert torch.equal(hirescam(a, g), torch.tensor([[[0.0, 0.0]]]))


# --- Eigen-Grad-CAM -----------------------------------------------------------------------------------------


def test_eigengradcam_hand_computed():
    # A: both channels [[1, 2], [3, 4]]; g = 1 on channel 0 and 2 on channel 1, so the samples of g*A
    # (positions x channels) are t * (1, 2), t = 1..4; centred: (t - 2.5)(1, 2); v1 = (1, 2)/sqrt5 up to sign;
    # projection = sqrt5 * [-1.5, -0.5, 0.5, 1.5]; mean_k g_k A_k = 1.5 t rises with it: sign kept; ReLU.
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).expand(1, 2, 2, 2).clone()
    g = torch.tensor([1.0, 2.0]).reshape(1, 2, 1, 1).expand(1, 2, 2, 2).clone()
    s5 = math.sqrt(5.0)
    np.testing.assert_allclose(eigengradcam(a, g)[0].numpy(), [[0, 0], [0.5 * s5, 1.5 * s5]], atol=1e-6)
    # negative gradients: g*A falls left to right, and so does the map (Eigen-CAM of A alone still rises)
    np.testing.assert_allclose(eigengradcam(a, -g)[0].numpy(), [[1.5 * s5, 0.5 * s5], [0, 0]], atol=1e-6)
    assert float(eigencam(a)[0, 1, 1]) > 0 and float(eigencam(a)[0, 0, 0]) == 0


# --- KPCA-CAM --------------------------------------------------------------------------------------------


def test_kpcacam_hand_computed_two_positions():
    # one channel, values [0, 2] at two positions: centred samples x1 = -1, x2 = +1; gamma = 1/K = 1, coef0 = 1:
    # sigmoid kernel K11 = K22 = tanh(1 + 1) = tanh 2, K12 = tanh(-1 + 1) = 0. Double centring of a symmetric
    # 2x2 matrix with equal diagonal: Kc = (K11 - K12)/2 [[1, -1], [-1, 1]], eigenvalue tanh 2, v = (1, -1)/sqrt2;
    # score sqrt(tanh 2) v = sqrt(tanh(2)/2) (1, -1), flipped to rise with the channel mean [0, 2]; ReLU.
    a = torch.tensor([[[[0.0, 2.0]]]])
    np.testing.assert_allclose(kpcacam(a)[0].numpy(), [[0.0, math.sqrt(math.tanh(2.0) / 2)]], atol=1e-6)
    # rbf, gamma = 0.5: K12 = exp(-0.5 * 4) = e^-2, eigenvalue 1 - e^-2
    want = math.sqrt((1 - math.exp(-2.0)) / 2)
    np.testing.assert_allclose(kpcacam(a, kernel="rbf", gamma=0.5)[0].numpy(), [[0.0, want]], atol=1e-6)


def test_kpcacam_linear_kernel_is_eigencam():
    # a linear kernel's principal scores are the PCA projections: Eigen-CAM's hand example, [[0, 0], [0.5, 1.5]] * sqrt2
    a = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[1.0, 2.0], [3.0, 4.0]]]).unsqueeze(0)
    s2 = math.sqrt(2.0)
    np.testing.assert_allclose(kpcacam(a, kernel="linear")[0].numpy(), [[0, 0], [0.5 * s2, 1.5 * s2]], atol=1e-6)
    g = torch.Generator().manual_seed(3)
    b = torch.randn(3, 5, 4, 4, generator=g)
    torch.testing.assert_close(kpcacam(b, kernel="linear"), eigencam(b), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kernel", KPCA_KERNELS)
def test_kpcacam_matches_sklearn_kernel_pca_up_to_sign(kernel):
    """scikit-learn's KernelPCA (what pytorch-grad-cam's KPCA_CAM calls) on the per-channel centred samples, for each kernel."""
    g = torch.Generator().manual_seed(0)
    a = torch.relu(torch.randn(3, 6, 5, 4, generator=g) + torch.linspace(-1, 1, 20).reshape(1, 1, 5, 4))
    ours = kpcacam(a, kernel=kernel, gamma=0.3, coef0=0.5, degree=2).double().numpy()
    for i in range(3):
        x = a[i].reshape(6, 20).T.double().numpy()
        x = x - x.mean(axis=0)
        score = KernelPCA(n_components=1, kernel=kernel, gamma=0.3, coef0=0.5, degree=2).fit_transform(x)[:, 0]
        if np.corrcoef(score, a[i].mean(0).flatten().numpy())[0, 1] < 0:  # our documented sign rule
            score = -score
        np.testing.assert_allclose(ours[i].flatten(), np.maximum(score, 0), atol=1e-6)


def test_kpcacam_rejects_bad_options():
    a = torch.ones(1, 2, 2, 2)
    with pytest.raises(ValueError, match=r"kernel='laplace'.*'sigmoid', 'rbf', 'poly', 'linear', 'cosine'"):
        kpcacam(a, kernel="laplace")
    with pytest.raises(ValueError, match="gamma"):
        kpcacam(a, gamma=-1.0)
    with pytest.raises(ValueError, match="degree"):
        kpcacam(a, degree=0)


# --- FEM -------------------------------------------------------------------------------------------------


def test_fem_hand_computed():
    # 3x3 channels, k = 2, population std over the 9 positions:
    #   c0: 9 at (0, 0), 0 elsewhere: mean 1, std sqrt((64 + 8)/9) = sqrt8, threshold 1 + 2 sqrt8 = 6.66 -> (0, 0) kept, weight 1
    #   c1: -9 at (0, 1): mean -1, threshold -1 + 5.66 = 4.66 -> nothing above
    #   c2: 9 at (0, 2) and (1, 0): mean 2, std sqrt((2*49 + 7*4)/9) = sqrt14, threshold 2 + 7.48 -> nothing above
    #   c3: 6 at (2, 2), -3 elsewhere: mean -2, std sqrt((64 + 8)/9) = sqrt8, threshold 3.66 -> (2, 2) kept, weight -2
    #   c4: 18 at (1, 1): mean 2, std sqrt((256 + 32)/9) = sqrt32, threshold 2 + 11.3 = 13.3 -> (1, 1) kept, weight 2
    # map sum_k mean_k B_k = 1 at (0, 0), 2 at (1, 1), -2 at (2, 2) -> ReLU -> 0 there
    a = torch.zeros(1, 5, 3, 3)
    a[0, 0, 0, 0] = 9
    a[0, 1, 0, 1] = -9
    a[0, 2, 0, 2] = a[0, 2, 1, 0] = 9
    a[0, 3] = -3
    a[0, 3, 2, 2] = 6
    a[0, 4, 1, 1] = 18
    assert torch.equal(fem(a), torch.tensor([[[1.0, 0, 0], [0, 2, 0], [0, 0, 0]]]))
    # k = 1: c2's threshold 2 + sqrt14 = 5.74 now keeps its two 9s (weight 2)
    assert torch.equal(fem(a, k=1.0), torch.tensor([[[1.0, 0, 2], [2, 2, 0], [0, 0, 0]]]))


def test_fem_constant_channels_give_zero():
    assert torch.equal(fem(torch.ones(2, 3, 4, 4)), torch.zeros(2, 4, 4))


# --- Random-CAM ------------------------------------------------------------------------------------------


def test_randomcam_hand_computed_and_seeded():
    # channel k is 1 at position k of a 2x2 map: the map is ReLU(w) laid out on the grid
    a = torch.eye(4).reshape(1, 4, 2, 2).expand(3, 4, 2, 2).clone()
    w = 2 * torch.rand(4, generator=torch.Generator().manual_seed(5)) - 1
    state = torch.random.get_rng_state()
    got = randomcam(a, seed=5)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(got, torch.relu(w).reshape(1, 2, 2).expand(3, 2, 2))  # the same weights for every image
    assert torch.equal(random_channel_weights(4, 5, torch.device("cpu")), w)
    assert torch.equal(randomcam(a, seed=5), got)
    assert not torch.equal(randomcam(a, seed=6), got)
    with pytest.raises(ValueError, match="seed must be an int"):
        randomcam(a, seed=1.5)  # type: ignore[arg-type]


# --- Sobel-CAM -------------------------------------------------------------------------------------------


def test_sobelcam_hand_computed_vertical_edge():
    # rows [0, 0, 1]; reflected without repeating the edge (OpenCV's BORDER_REFLECT_101): padded row [0, 0, 0, 1, 0].
    # Every row equal: G_y = 0 and G_x(j) = (1 + 2 + 1) * (p[j+2] - p[j]) = 4 * [0, 1, 0]; map (|G_x| + |G_y|)/2 = [0, 2, 0].
    # (With the edge repeated instead, the last column would be 2 as well.)
    image = torch.tensor([[0.0, 0.0, 1.0]]).expand(3, 3).reshape(1, 1, 3, 3)
    assert torch.equal(sobelcam(image), torch.tensor([[0.0, 2.0, 0.0]]).expand(3, 3).unsqueeze(0))
    # horizontal edge: the transpose
    assert torch.equal(sobelcam(image.transpose(2, 3)), torch.tensor([[0.0, 2.0, 0.0]]).expand(3, 3).t().unsqueeze(0))


def test_sobelcam_grayscale_weights():
    rgb = torch.zeros(1, 3, 3, 3)
    rgb[0, 0, :, 2] = 1.0  # a red edge: luma 0.299
    torch.testing.assert_close(sobelcam(rgb), 0.299 * torch.tensor([[0.0, 2.0, 0.0]]).expand(3, 3).unsqueeze(0))
    two = torch.stack([torch.zeros(3, 3), torch.full((3, 3), 4.0)]).unsqueeze(0)
    assert torch.equal(grayscale(two), torch.full((1, 1, 3, 3), 2.0))  # other channel counts: the mean
    with pytest.raises(ValueError, match="at least 2x2"):
        sobelcam(torch.zeros(1, 3, 1, 5))


# --- Smooth Grad-CAM++ -----------------------------------------------------------------------------------


def test_smoothgradcampp_hand_computed_averages():
    # one channel, A = [1, 1] (sum 2); two copies with gradients g1 = [1, 0], g2 = [-1, 2]:
    # D1 = [0, 1], D2 = [1, 2], D3 = [0, 4]; alpha = D2 / (2 D2 + 2 D3) = [1/2, 2/12];
    # w = 1/2 relu(0) + 1/6 relu(1) = 1/6; map ReLU(w A) = [1/6, 1/6]
    a = torch.ones(1, 1, 1, 2)
    sequence = iter([torch.tensor([[[[1.0, 0.0]]]]), torch.tensor([[[[-1.0, 2.0]]]])])
    got = smoothgradcampp(a, torch.zeros(1, 1, 2, 2), torch.tensor([0]), lambda x, t: next(sequence), num_samples=2)
    torch.testing.assert_close(got, torch.full((1, 1, 2), 1 / 6))


def test_smoothgradcampp_noise_is_private_seeded_and_shared_by_the_images():
    images = torch.randn(3, 2, 4, 5, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([2, 0, 1])
    seen = []

    def record(x, t):
        seen.append((x.clone(), t.clone()))
        return torch.ones(3, 1, 2, 2)

    state = torch.random.get_rng_state()
    smoothgradcampp(torch.ones(3, 1, 2, 2), images, targets, record, num_samples=3, std=0.5, seed=11)
    assert torch.equal(torch.random.get_rng_state(), state)
    generator = torch.Generator().manual_seed(11)
    for x, t in seen:  # copy s adds the s-th (C, H, W) draw times std to every image
        noise = torch.randn(2, 4, 5, generator=generator)
        torch.testing.assert_close(x, images + 0.5 * noise)
        assert torch.equal(t, targets)
    assert len(seen) == 3


def test_smoothgradcampp_without_noise_is_gradcampp():
    g = torch.Generator().manual_seed(1)
    a, grads = torch.rand(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    got = smoothgradcampp(a, torch.zeros(2, 1, 8, 8), torch.zeros(2, dtype=torch.long), lambda x, t: grads, std=0.0)
    torch.testing.assert_close(got, gradcampp(a, grads))


@pytest.mark.parametrize("options, message", [({"num_samples": 0}, "num_samples"), ({"std": -1.0}, "std"), ({"seed": "a"}, "seed")])
def test_smoothgradcampp_rejects_bad_options(options, message):
    with pytest.raises(ValueError, match=message):
        smoothgradcampp(torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), torch.tensor([0]), lambda x, t: x, **options)


class LinearHead(nn.Module):
    """1x1 conv (identity, the target layer) -> GAP over 4 pixels -> fc W: the gradient at the conv is W[t, k] / 4 everywhere."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2, 3)
        with torch.no_grad():
            self.conv.weight.copy_(torch.eye(2).view(2, 2, 1, 1))
            self.conv.bias.zero_()
            self.fc.weight.copy_(torch.tensor([[1.0, -2.0], [3.0, 0.5], [0.0, 1.0]]))
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(self.pool(self.conv(x)).flatten(1))


def test_layer_gradients_hand_computed_and_leave_param_grad_alone():
    net = LinearHead().eval()
    x = torch.randn(3, 2, 2, 2, generator=torch.Generator().manual_seed(0))
    grads = LayerGradients(net, "conv", net.conv)(x, torch.tensor([0, 1, 2]))
    want = torch.tensor([[1.0, -2.0], [3.0, 0.5], [0.0, 1.0]])[:, :, None, None].expand(3, 2, 2, 2) / 4
    assert torch.equal(grads, want)
    assert all(p.grad is None for p in net.parameters())


def test_smoothgradcampp_through_explain_equals_gradcampp_when_gradients_do_not_depend_on_the_input():
    # LinearHead's gradients are W[t, k] / 4 for every input, so the noisy copies change nothing: D_p = g^p
    net = LinearHead().eval()
    x = torch.rand(4, 2, 2, 2, generator=torch.Generator().manual_seed(2)) + torch.tensor([0.0, 1.0]).reshape(1, 2, 1, 1)
    smooth = cc.explain(net, x, method="smoothgradcampp", target_layer="conv", targets=[0, 1, 2, 1], method_options={"std": 1.0})
    plain = cc.explain(net, x, method="gradcampp", target_layer="conv", targets=[0, 1, 2, 1])
    assert torch.equal(smooth, plain)
    assert float(smooth.std()) > 0.1


def test_smoothgradcampp_on_transformer_tokens_and_dict_outputs():
    """``layer_gradients`` takes the layout (``reshape="vit"``) and ``output_transform`` of the call: without noise the
    maps are Grad-CAM++'s, computed by the main pass with the same settings; with noise they differ."""
    torch.manual_seed(0)
    vit = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=4)
    with torch.no_grad():  # torchvision zero-initialises the head
        vit.heads.head.weight.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(1))
    vit.eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    layer, targets = "encoder.layers.encoder_layer_0.ln_1", [1, 3]
    plain = cc.explain(vit, x, method="gradcampp", target_layer=layer, targets=targets, reshape="vit")
    quiet = cc.explain(vit, x, method="smoothgradcampp", target_layer=layer, targets=targets, reshape="vit", method_options={"std": 0.0})
    noisy = cc.explain(vit, x, method="smoothgradcampp", target_layer=layer, targets=targets, reshape="vit")
    torch.testing.assert_close(quiet, plain, atol=1e-6, rtol=0)
    assert float(plain.std()) > 0.05 and float((noisy - plain).abs().max()) > 1e-3

    class DictOutput(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = small_cnn()

        def forward(self, x):
            return {"logits": self.net(x)}

    model, images = DictOutput().eval(), torch.randn(3, 3, 12, 12, generator=torch.Generator().manual_seed(5))
    want = cc.explain(model, images, method="gradcampp", target_layer="net.1", output_transform="logits")
    got = cc.explain(model, images, method="smoothgradcampp", target_layer="net.1", output_transform="logits", method_options={"std": 0.0})
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


# --- every new method through the public entry points ----------------------------------------------------


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    ).eval()  # fmt: skip


@pytest.mark.parametrize("method", NEW_METHODS)
def test_explain_and_faithfulness_run_every_new_method(method):
    net = small_cnn()
    x = torch.randn(5, 3, 12, 12, generator=torch.Generator().manual_seed(4))
    state = torch.random.get_rng_state()
    maps = cc.explain(net, x, method=method, target_layer="1")
    assert torch.equal(torch.random.get_rng_state(), state)
    assert maps.shape == (5, 12, 12) and float(maps.min()) == 0.0 and float(maps.max()) == 1.0
    assert float(maps.std()) > 0.05
    # a different batch size gives the same maps (the seeded methods draw per copy, not per image position)
    torch.testing.assert_close(cc.explain(net, x, method=method, target_layer="1", batch_size=2), maps, atol=1e-5, rtol=0)
    if method in SEEDED:
        again = cc.explain(net, x, method=method, target_layer="1", method_options={SEEDED[method]: 0})
        other = cc.explain(net, x, method=method, target_layer="1", method_options={SEEDED[method]: 1})
        assert torch.equal(again, maps) and float((other - maps).abs().max()) > 1e-3
    scores = cc.faithfulness(net, x, method=method, target_layer="1")
    assert 0.0 <= scores["adcc"] <= 1.0


def test_unknown_option_of_a_new_method_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"\['num_samples', 'seed', 'std'\]"):
        cc.explain(small_cnn(), torch.zeros(1, 3, 8, 8), method="smoothgradcampp", target_layer="1", method_options={"sigma": 1})
