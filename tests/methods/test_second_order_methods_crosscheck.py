"""Cross-checks of Shapley-CAM, Finer-CAM, FullGrad and LeGrad against pytorch_grad_cam 1.5.7 and torchcam 0.5.0.

Models: torchvision with random weights whose BatchNorm statistics come from one training-mode batch
(``momentum=None``, ``reset_running_stats()``, one forward, ``eval()``). With the stock statistics (mean 0,
variance 1) a deep random network gives logits of ~1e-10, where each library's epsilon (1e-7 in pytorch_grad_cam's
min-max, 1e-9 in its Finer-CAM weights) decides the map instead of the method. Conventions applied to the references
(GUIDE.md section 2) are said where they are used; maximum differences are printed (``pytest -s``).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchcam.methods
import torchvision
from _calibration import calibrate_batchnorm
from pytorch_grad_cam import FullGrad, GradCAM, ShapleyCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputReST, ClassifierOutputTarget
from torch import nn

import cam_callbacks as cc

pytestmark = pytest.mark.crosscheck

SIZE = 64
TOL = 1e-3
TARGETS = [0, 5]


def calibrated(model: nn.Module) -> nn.Module:
    """BatchNorm statistics from one random training-mode batch, then eval mode."""
    return calibrate_batchnorm(model, SIZE)


@pytest.fixture(scope="module")
def resnet18():
    """(model for cam_callbacks, deep copy for the references)."""
    torch.manual_seed(0)
    model = calibrated(torchvision.models.resnet18(weights=None, num_classes=10))
    return model, copy.deepcopy(model)


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(123))


def assert_agree(ours: torch.Tensor, ref, label: str, tol: float = TOL) -> float:
    ours_np = ours.detach().double().numpy()
    ref_np = np.asarray(ref.detach() if isinstance(ref, torch.Tensor) else ref, dtype=np.float64)
    assert ours_np.shape == ref_np.shape == (2, SIZE, SIZE)
    for n in range(2):  # guard against trivial agreement
        assert ours_np[n].std() > 0.05, f"{label}: our map {n} is (near) constant"
        assert ref_np[n].std() > 0.05, f"{label}: reference map {n} is (near) constant"
    diff = float(np.abs(ours_np - ref_np).max())
    print(f"{label}: max abs diff {diff:.3g}")
    assert diff <= tol, f"{label}: max abs diff {diff:.3g} > {tol}"
    return diff


def torch_convention(raw: torch.Tensor) -> torch.Tensor:
    """Raw (N, h, w) reference maps -> bilinear (align_corners=False) to the input size, min-max per image."""
    up = F.interpolate(raw.detach().float()[:, None], size=(SIZE, SIZE), mode="bilinear", align_corners=False)[:, 0]
    low, high = up.amin(dim=(1, 2), keepdim=True), up.amax(dim=(1, 2), keepdim=True)
    return (up - low) / (high - low)


# --- Shapley-CAM -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layer", ["layer4", "layer3"])
def test_shapleycam_rest_against_pytorch_grad_cam(resnet18, images, layer):
    """The paper's ReST score (z_t - CE): its Hessian through the softmax is not zero, so H A matters here."""
    model, ref = resnet18
    ours = cc.explain(model, images, method="shapleycam", target_layer=layer, targets=TARGETS, method_options={"objective": "rest"})
    with ShapleyCAM(ref, [dict(ref.named_modules())[layer]]) as cam:
        expected = cam(images, targets=[ClassifierOutputReST(c) for c in TARGETS])
    assert all(p.grad is None for p in model.parameters())
    assert_agree(ours, expected, f"resnet18/{layer}/shapleycam(rest) vs pytorch_grad_cam")
    # Guard: the Hessian term changes the map (else this would only re-check Grad-CAM of the ReST score).
    with GradCAM(ref, [dict(ref.named_modules())[layer]]) as cam:
        first_order = cam(images, targets=[ClassifierOutputReST(c) for c in TARGETS])
    assert np.abs(first_order - expected).max() > 0.01


def test_shapleycam_logit_against_pytorch_grad_cam(resnet18, images):
    """pytorch_grad_cam's default target (the logit). resnet18's tail after layer4 (pool, fc) is linear: H A = 0 and
    both equal Grad-CAM, which the test also checks."""
    model, ref = resnet18
    ours = cc.explain(model, images, method="shapleycam", target_layer="layer4", targets=TARGETS)
    with ShapleyCAM(ref, [ref.layer4]) as cam:
        expected = cam(images, targets=[ClassifierOutputTarget(c) for c in TARGETS])
    assert_agree(ours, expected, "resnet18/layer4/shapleycam(logit) vs pytorch_grad_cam")
    gradcam = cc.explain(model, images, method="gradcam", target_layer="layer4", targets=TARGETS)
    assert float((ours - gradcam).abs().max()) < 1e-5


# --- Finer-CAM ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha, k", [(0.6, 3), (1.0, 1)])
def test_finercam_against_torchcam(resnet18, images, alpha, k):
    """torchcam's FinerCAM on GradCAM: the same score z_t - gamma * mean of the k closest logits."""
    model, ref = resnet18
    ours = cc.explain(model, images, method="finercam", target_layer="layer4", targets=TARGETS, method_options={"alpha": alpha, "k": k})
    with torchcam.methods.FinerCAM(ref, "layer4", input_shape=(3, SIZE, SIZE), gamma=alpha, num_references=k) as extractor:
        scores = ref(images)
        (raw,) = extractor(class_idx=TARGETS, scores=scores, normalized=False)
    assert_agree(ours, torch_convention(torch.relu(raw)), f"resnet18/layer4/finercam(alpha={alpha}, k={k}) vs torchcam")
    gradcam = cc.explain(model, images, method="gradcam", target_layer="layer4", targets=TARGETS)
    assert float((ours - gradcam).abs().max()) > 0.05  # guard: the contrast changes the map


def test_finercam_against_pytorch_grad_cam_target(resnet18, images):
    """pytorch_grad_cam's FinerCAM differentiates another score, sum_j p_j (z_t - alpha z_j) / sum_j p_j. With one
    similar class (k=1) that score is z_t - alpha z_j (times p_j / (p_j + 1e-9)), so its GradCAM with FinerWeightedTarget(t, [j], alpha)
    equals ours with k=1, the same j (the closest logit) and alpha."""
    from pytorch_grad_cam.utils.model_targets import FinerWeightedTarget

    model, ref = resnet18
    with torch.no_grad():
        logits = model(images)
    distances = (logits - logits[range(2), TARGETS][:, None]).abs()
    distances[range(2), TARGETS] = float("inf")
    closest = distances.argmin(dim=1).tolist()
    ours = cc.explain(model, images, method="finercam", target_layer="layer4", targets=TARGETS, method_options={"alpha": 1.0, "k": 1})
    with GradCAM(ref, [ref.layer4]) as cam:
        expected = cam(images, targets=[FinerWeightedTarget(t, [j], 1.0) for t, j in zip(TARGETS, closest)])
    assert_agree(ours, expected, "resnet18/layer4/finercam(k=1) vs pytorch_grad_cam FinerWeightedTarget")


# --- FullGrad ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fullgrad_reference(resnet18, images):
    """pytorch_grad_cam's FullGrad output and the terms it captured: its bias-gradients (folded BatchNorm bias x the
    gradient its hooks recorded) and the input-gradient x input (taken here with autograd on the reference copy)."""
    _, ref = resnet18
    with FullGrad(ref, []) as cam:
        output = cam(images, targets=[ClassifierOutputTarget(c) for c in TARGETS])
        terms = [torch.as_tensor(b)[None, :, None, None] * g for b, g in zip(cam.bias_data, cam.activations_and_grads.gradients)]
    ref.zero_grad(set_to_none=True)
    x = images.clone().requires_grad_(True)
    (input_grad,) = torch.autograd.grad(ref(x)[range(2), TARGETS].sum(), x)
    return output, [input_grad * images, *terms]


@pytest.mark.slow  # ~2.8 s: the reference upsamples 4800 channels in float64
@pytest.mark.parametrize("normalize", ["channel", "layer"])
def test_fullgrad_against_pytorch_grad_cam(resnet18, images, fullgrad_reference, normalize):
    """pytorch_grad_cam normalises each channel of each term (``normalize="channel"``) with ``/(max - min + 1e-7)``;
    resnet18 has channels whose bias-gradients span ~1e-6, where that 1e-7 moves its map by ~1e-3 (measured 1.06e-3).
    So: (1) its output against ours with tolerance 2e-3, (2) its captured gradients and folded BatchNorm biases
    post-processed here without the epsilon against ours at 1e-4, for both normalisations (the paper's per-layer one
    is not in pytorch_grad_cam)."""
    model, _ = resnet18
    ours = cc.explain(model, images, method="fullgrad", targets=TARGETS, method_options={"normalize": normalize})
    output, terms = fullgrad_reference
    assert len(terms) == 21  # input + 20 BatchNorms (resnet18's convs have no bias)
    dims = (2, 3) if normalize == "channel" else (1, 2, 3)
    total = torch.zeros(2, SIZE, SIZE, dtype=torch.float64)
    for term in terms:
        mag = term.detach().abs().double()
        span = mag.amax(dim=dims, keepdim=True) - mag.amin(dim=dims, keepdim=True)
        scaled = torch.where(span > 0, (mag - mag.amin(dim=dims, keepdim=True)) / span.clamp_min(1e-300), torch.zeros_like(mag))
        total += F.interpolate(scaled, size=(SIZE, SIZE), mode="bilinear", align_corners=False).sum(dim=1)
    low, high = total.amin(dim=(1, 2), keepdim=True), total.amax(dim=(1, 2), keepdim=True)
    assert_agree(ours, (total - low) / (high - low), f"resnet18/fullgrad({normalize}) vs pytorch_grad_cam gradients", tol=1e-4)
    if normalize == "channel":
        assert_agree(ours, output, "resnet18/fullgrad(channel) vs pytorch_grad_cam output", tol=2e-3)
    assert all(p.grad is None for p in model.parameters())


# --- LeGrad ------------------------------------------------------------------------------------------------
# Vision transformers have no BatchNorm: built with random weights (torchvision's zero-initialised head re-drawn, else
# every gradient is 0), no calibration needed.

VIT_SIZE = 32


def _vit_images() -> torch.Tensor:
    return torch.randn(2, 3, VIT_SIZE, VIT_SIZE, generator=torch.Generator().manual_seed(7))


def _upsampled(raw: torch.Tensor) -> torch.Tensor:
    up = F.interpolate(raw.detach().float()[:, None], size=(VIT_SIZE, VIT_SIZE), mode="bilinear", align_corners=False)[:, 0]
    low, high = up.amin(dim=(1, 2), keepdim=True), up.amax(dim=(1, 2), keepdim=True)
    return (up - low) / (high - low)


def _assert_vit_agree(ours: torch.Tensor, want: torch.Tensor, label: str, tol: float = 1e-5) -> None:
    assert ours.shape == want.shape == (2, VIT_SIZE, VIT_SIZE)
    assert float(ours.std()) > 0.05 and float(want.std()) > 0.05, label
    diff = float((ours - want).abs().max())
    print(f"{label}: max abs diff {diff:.3g}")
    assert diff <= tol, f"{label}: max abs diff {diff:.3g} > {tol}"


@pytest.mark.parametrize("blocks", [None, 2])
def test_legrad_against_torchcam_torchvision_vit(blocks):
    """torchcam's LeGrad on every block (or the last two), given our block score: the model's own head on the block's
    class token, ``heads(encoder.ln(tokens)[:, 0])`` (torchcam's default projection averages the tokens instead)."""
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(
        image_size=VIT_SIZE, patch_size=8, num_layers=3, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=10
    ).eval()
    nn.init.normal_(model.heads.head.weight, std=0.5)
    ref = copy.deepcopy(model)
    images = _vit_images()
    ours = cc.explain(model, images, method="legrad", targets=TARGETS, method_options={"blocks": blocks})
    layers = list(ref.encoder.layers)[-(blocks or 3) :]
    with torchcam.methods.LeGrad(ref, layers, score_projection=lambda t: ref.heads(ref.encoder.ln(t)[:, 0])) as extractor:
        ref(images)
        (raw,) = extractor(class_idx=TARGETS, normalized=False)
    _assert_vit_agree(ours, _upsampled(raw), f"torchvision vit/legrad(blocks={blocks}) vs torchcam")


@pytest.mark.slow  # importing timm takes ~4.6 s cold on the 2-core machine; the test itself ~0.2 s
def test_legrad_timm_against_manual_attention():
    """timm (torchcam supports only nn.MultiheadAttention): a reference loop written here runs the blocks by hand,
    computing each block's attention softmax(q k^T * scale) as an autograd leaf, and differentiates the block score
    ``forward_head(norm(tokens))`` w.r.t. it; ReLU, mean over heads and queries, class key dropped, mean over blocks."""
    import timm

    torch.manual_seed(0)
    model = timm.models.vision_transformer.VisionTransformer(
        img_size=VIT_SIZE, patch_size=8, embed_dim=32, depth=3, num_heads=2, num_classes=10
    ).eval()
    images = _vit_images()
    ours = cc.explain(model, images, method="legrad", targets=TARGETS)
    target = torch.tensor(TARGETS)
    relevance = []
    with torch.no_grad():
        x = model.norm_pre(model._pos_embed(model.patch_embed(images)))
    for block in model.blocks:
        attn_module = block.attn
        h = block.norm1(x)
        n, t, c = h.shape
        q, k, v = attn_module.qkv(h).reshape(n, t, 3, attn_module.num_heads, c // attn_module.num_heads).permute(2, 0, 3, 1, 4)
        attention = torch.softmax((q * attn_module.scale) @ k.transpose(-2, -1), dim=-1).detach().requires_grad_(True)
        out = attn_module.proj(attn_module.norm((attention @ v).transpose(1, 2).reshape(n, t, c)))
        y = x + block.ls1(out)
        y = y + block.ls2(block.mlp(block.norm2(y)))
        score = model.forward_head(model.norm(y)).gather(1, target[:, None]).sum()
        (grad,) = torch.autograd.grad(score, attention)
        relevance.append(torch.relu(grad).mean(dim=(1, 2))[:, 1:])
        x = y.detach()
    with torch.no_grad():
        torch.testing.assert_close(model.forward_head(model.norm(x)), model(images))  # the hand loop is the model
    raw = torch.stack(relevance).mean(dim=0).reshape(2, 4, 4)
    _assert_vit_agree(ours, _upsampled(raw), "timm vit/legrad vs manual attention loop")
