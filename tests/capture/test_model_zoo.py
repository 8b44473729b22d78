"""target_layer='auto' on a zoo of timm, torchvision and Hugging Face models (random weights, no downloads): the layer and
layout it picks, and Grad-CAM / LayerCAM maps there against pytorch-grad-cam with its documented reshape transforms.

Conventions as in tests/methods/test_crosscheck.py: pytorch_grad_cam's maps (min-max, cv2 resize, min-max) equal bilinear
upsampling (align_corners=False) then min-max, so both outputs are compared as they are. BatchNorm statistics come from
one train-mode batch (random running statistics give ~1e-10 logits), and the last linear layer is scaled by 1e3 so that
pytorch_grad_cam's 1e-7 in its min-max denominator is negligible (Grad-CAM and LayerCAM maps are homogeneous in it).
"""

from __future__ import annotations

import contextlib
import copy
import time
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import pytest
import torch
from _calibration import calibrate_batchnorm
from pytorch_grad_cam import GradCAM, LayerCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from pytorch_grad_cam.utils.reshape_transforms import vit_reshape_transform
from torch import nn

import cam_callbacks as cc
from cam_callbacks.capture.layers import auto_layer
from cam_callbacks.capture.layouts import ChannelsLast, TokenGrid

timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")

pytestmark = pytest.mark.crosscheck

TOL = 1e-3
SIZE = 64
TARGETS = [0, 5]
# With random weights the map of a class is often all negative (ReLU -> a constant map, which the guard in _assert_agree
# rejects); these models use their predicted classes (targets=None) instead.
PREDICTED = {"timm/regnety_002"}
REFERENCES = {"gradcam": GradCAM, "layercam": LayerCAM}


class HFLogits(nn.Module):
    """A Hugging Face classifier returning its logits (``output_transform`` is not used here)."""

    def __init__(self, m: nn.Module) -> None:
        super().__init__()
        self.m = m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.m(pixel_values=x).logits


def _timm(name: str, **kw) -> Callable[[], nn.Module]:
    return lambda: timm.create_model(name, pretrained=False, num_classes=10, **kw)


def _hf(kind: str) -> nn.Module:
    transformers = pytest.importorskip("transformers")
    if kind == "vit":
        config = transformers.ViTConfig(
            image_size=SIZE, patch_size=16, num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64,
            num_labels=10,
        )  # fmt: skip
        return HFLogits(transformers.ViTForImageClassification(config))
    if kind == "resnet":
        config = transformers.ResNetConfig(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], num_labels=10)
        return HFLogits(transformers.ResNetForImageClassification(config))
    config = transformers.ConvNextConfig(num_stages=2, hidden_sizes=[16, 32], depths=[1, 1], num_labels=10)
    return HFLogits(transformers.ConvNextForImageClassification(config))


def _vit_transform(prefix: int, side: int) -> Callable[[torch.Tensor], torch.Tensor]:
    if prefix == 1:  # pytorch_grad_cam's own transform
        return lambda t: vit_reshape_transform(t, height=side, width=side)
    return lambda t: t[:, prefix:].reshape(t.shape[0], side, side, t.shape[2]).permute(0, 3, 1, 2)


def _nhwc_transform(t: torch.Tensor) -> torch.Tensor:
    # pytorch_grad_cam's swinT_reshape_transform expects (N, h*w, C) tokens; these stages output (N, H, W, C)
    return t.permute(0, 3, 1, 2)


# name -> (builder, layer 'auto' must pick, its layout (None: (N, C, H, W)), slow)
ZOO: Dict[str, Tuple[Callable[[], nn.Module], str, Optional[TokenGrid], bool]] = {
    "timm/resnet18": (_timm("resnet18"), "layer4", None, False),
    "timm/efficientnet_b0": (_timm("efficientnet_b0"), "bn2", None, True),
    "timm/convnext_atto": (_timm("convnext_atto"), "norm_pre", None, False),
    "timm/regnety_002": (_timm("regnety_002"), "final_conv", None, True),
    "timm/mobilenetv3_small_050": (_timm("mobilenetv3_small_050"), "blocks", None, True),
    "timm/vit_tiny_patch16_224": (_timm("vit_tiny_patch16_224", img_size=SIZE), "blocks.11.norm1", TokenGrid(1, 4, 4), True),
    "timm/deit_tiny_patch16_224": (_timm("deit_tiny_patch16_224", img_size=SIZE), "blocks.11.norm1", TokenGrid(1, 4, 4), True),
    "timm/deit_tiny_distilled_patch16_224": (
        _timm("deit_tiny_distilled_patch16_224", img_size=SIZE), "blocks.11.norm1", TokenGrid(2, 4, 4), True,
    ),  # fmt: skip
    "timm/swin_tiny_patch4_window7_224": (
        _timm("swin_tiny_patch4_window7_224", img_size=SIZE, window_size=2), "layers.3", ChannelsLast(), True,
    ),  # fmt: skip
    "torchvision/vit_b_16": (
        lambda: torchvision.models.vit_b_16(weights=None, num_classes=10, image_size=SIZE),
        "encoder.layers.encoder_layer_11.ln_1", TokenGrid(1, 4, 4), True,
    ),  # fmt: skip
    "torchvision/swin_t": (lambda: torchvision.models.swin_t(weights=None, num_classes=10), "features.7", ChannelsLast(), True),
    "hf/vit": (lambda: _hf("vit"), "m.vit.layers.1.layernorm_before", TokenGrid(1, 4, 4), False),
    "hf/resnet": (lambda: _hf("resnet"), "m.resnet.encoder.stages.1", None, False),
    "hf/convnext": (lambda: _hf("convnext"), "m.convnext.encoder.stages.1", None, False),
}

_BUILT: Dict[str, Tuple[nn.Module, nn.Module]] = {}


def _prepare(model: nn.Module) -> nn.Module:
    calibrate_batchnorm(model, SIZE)
    with torch.no_grad():
        head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
        if not bool(head.weight.any()):  # torchvision's ViT initialises its head to zeros: no gradient at all
            head.weight.normal_(0, 0.02, generator=torch.Generator().manual_seed(2))
        head.weight.mul_(1e3)
    return model


def _model(name: str) -> Tuple[nn.Module, nn.Module]:
    if name not in _BUILT:
        torch.manual_seed(0)
        model = _prepare(ZOO[name][0]())
        _BUILT.clear()  # one model at a time: the zoo does not fit a small machine's memory at once
        _BUILT[name] = (model, copy.deepcopy(model))
    return _BUILT[name]


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(123))


def _params(names):
    return [pytest.param(n, marks=pytest.mark.slow) if ZOO[n][3] else n for n in names]


def _transform(layout: Optional[TokenGrid]) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
    if layout is None:
        return None
    if isinstance(layout, ChannelsLast):
        return _nhwc_transform
    assert layout.height == layout.width
    return _vit_transform(layout.prefix_tokens, int(layout.height))  # type: ignore[arg-type]


def _assert_agree(ours: torch.Tensor, ref: np.ndarray, label: str) -> float:
    ours_np = ours.detach().double().numpy()
    ref = np.asarray(ref, dtype=np.float64)
    assert ours_np.shape == ref.shape == (2, SIZE, SIZE)
    for n in range(2):  # guard against trivial agreement
        assert ours_np[n].max() > 0 and ours_np[n].std() > 0.05, f"{label}: our map {n} is (near) constant"
    diff = float(np.abs(ours_np - ref).max())
    print(f"{label}: max abs diff {diff:.3g}")
    assert diff <= TOL, f"{label}: max abs diff {diff:.3g} > {TOL}"
    return diff


@pytest.mark.parametrize("name", _params(ZOO))
def test_auto_picks_layer_and_layout(name, images):
    model, _ = _model(name)
    layer, module, layout = auto_layer(model, images[:1])
    expected_layer, expected_layout = ZOO[name][1], ZOO[name][2]
    assert layer == expected_layer
    assert repr(layout) == repr(expected_layout)
    assert module is model.get_submodule(layer)


@pytest.mark.parametrize("method", list(REFERENCES))
@pytest.mark.parametrize("name", _params(ZOO))
def test_auto_maps_against_pytorch_grad_cam(name, method, images):
    model, ref = _model(name)
    start = time.perf_counter()
    targets = None if name in PREDICTED else TARGETS
    ours = cc.explain(model, images, method=method, target_layer="auto", targets=targets)
    layer, _, layout = auto_layer(model, images[:1])
    with REFERENCES[method](ref, target_layers=[ref.get_submodule(layer)], reshape_transform=_transform(layout)) as cam:
        expected = cam(images, targets=None if targets is None else [ClassifierOutputTarget(c) for c in targets])
    _assert_agree(ours, expected, f"{name}/{layer}/{method} vs pytorch_grad_cam ({time.perf_counter() - start:.1f} s)")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["timm/resnet18", "hf/resnet"])
def test_auto_ablationcam_against_pytorch_grad_cam(name, images):
    """Ablation-CAM where it is cheap and comparable: post-ReLU stage outputs (pytorch-grad-cam ablates with 0 there,
    as the paper and we do; see tests/methods/test_perturbation_crosscheck.py)."""
    from pytorch_grad_cam import AblationCAM

    model, ref = _model(name)
    layer, _, layout = auto_layer(model, images[:1])
    assert layout is None
    with torch.no_grad():
        feats: Dict[str, torch.Tensor] = {}
        handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: feats.setdefault("a", o))
        model(images)
        handle.remove()
    assert all(bool((feats["a"][i] == 0).any()) for i in range(2))  # pgc ablates with 0 on these images
    # Hugging Face models are not fx-traceable: the tail re-runs the whole model, and says so
    with pytest.warns(UserWarning, match="re-running") if name.startswith("hf/") else contextlib.nullcontext():
        ours = cc.explain(model, images, method="ablationcam", target_layer="auto", targets=TARGETS)
    with AblationCAM(ref, [ref.get_submodule(layer)], batch_size=128) as cam:
        expected = cam(images, targets=[ClassifierOutputTarget(c) for c in TARGETS])
    _assert_agree(ours, expected, f"{name}/{layer}/ablationcam vs pytorch_grad_cam")
