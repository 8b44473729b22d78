"""target_layer='auto' on attention models is never silently wrong: per family (timm, torchvision, Hugging Face ViT, DeiT,
BEiT, Dinov2, Swin, ConvNeXt; tiny models built from configs, no downloads) it chooses a block's tokens with their
layout, or refuses; every layer a refusal or a bad-layer message suggests exists in *this* model and works."""

from __future__ import annotations

import logging
import re
from typing import Callable, Dict, List, Optional, Tuple

import pytest
import torch
from torch import nn

import cam_callbacks as cc
from cam_callbacks.capture.layers import auto_layer, resolve_layers
from cam_callbacks.capture.layouts import ChannelsLast, TokenGrid

timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")
transformers = pytest.importorskip("transformers")


SIZE = 32
HF_VIT = {
    "image_size": SIZE,
    "patch_size": 8,
    "num_hidden_layers": 2,
    "hidden_size": 16,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "num_labels": 4,
}
TIMM_VIT = {"pretrained": False, "img_size": SIZE, "patch_size": 8, "depth": 2, "embed_dim": 16, "num_heads": 2, "num_classes": 4}


def _hf(model: str, config: str, **fields) -> nn.Module:
    return getattr(transformers, model)(getattr(transformers, config)(**fields))


# family -> (builder, the layer 'auto' chooses, its layout (None: an (N, C, H, W) map), output_transform)
FAMILIES: Dict[str, Tuple[Callable[[], nn.Module], str, Optional[TokenGrid], Optional[str]]] = {
    "timm-vit": (lambda: timm.create_model("vit_tiny_patch16_224", **TIMM_VIT), "blocks.1.norm1", TokenGrid(1, 4, 4), None),
    "timm-deit-distilled": (lambda: timm.create_model("deit_tiny_distilled_patch16_224", **TIMM_VIT), "blocks.1.norm1", TokenGrid(2, 4, 4), None),
    "timm-swin": (
        lambda: timm.create_model(
            "swin_tiny_patch4_window7_224", pretrained=False, img_size=SIZE, window_size=2, embed_dim=16, depths=(1, 1), num_heads=(1, 1), num_classes=4
        ),
        "layers.1",
        ChannelsLast(),
        None,
    ),
    "torchvision-vit": (
        lambda: torchvision.models.VisionTransformer(image_size=SIZE, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=4),
        "encoder.layers.encoder_layer_1.ln_1",
        TokenGrid(1, 4, 4),
        None,
    ),
    "torchvision-swin": (
        lambda: torchvision.models.swin_transformer.SwinTransformer(
            patch_size=[4, 4], embed_dim=16, depths=[1, 1], num_heads=[1, 1], window_size=[2, 2], num_classes=4
        ),
        "features.3",
        ChannelsLast(),
        None,
    ),
    "hf-vit": (lambda: _hf("ViTForImageClassification", "ViTConfig", **HF_VIT), "vit.layers.1.layernorm_before", TokenGrid(1, 4, 4), "logits"),
    "hf-deit": (
        lambda: _hf("DeiTForImageClassificationWithTeacher", "DeiTConfig", **HF_VIT),
        "deit.layers.1.layernorm_before",
        TokenGrid(2, 4, 4),
        "logits",
    ),
    "hf-beit": (lambda: _hf("BeitForImageClassification", "BeitConfig", **HF_VIT), "beit.layers.1.layernorm_before", TokenGrid(1, 4, 4), "logits"),
    "hf-dinov2": (lambda: _hf("Dinov2ForImageClassification", "Dinov2Config", **HF_VIT), "dinov2.encoder.layer.1.norm1", TokenGrid(1, 4, 4), "logits"),
    "hf-dinov2-registers": (
        lambda: _hf("Dinov2WithRegistersForImageClassification", "Dinov2WithRegistersConfig", num_register_tokens=4, **HF_VIT),
        "dinov2_with_registers.encoder.layer.1.norm1",
        TokenGrid(5, 4, 4),
        "logits",
    ),
    "hf-swin": (
        lambda: _hf(
            "SwinForImageClassification",
            "SwinConfig",
            image_size=SIZE,
            patch_size=4,
            embed_dim=16,
            depths=[1, 1],
            num_heads=[1, 1],
            window_size=2,
            num_labels=4,
        ),
        "swin.layernorm",
        TokenGrid(0, 4, 4),
        "logits",
    ),
    "hf-convnext": (
        lambda: _hf("ConvNextForImageClassification", "ConvNextConfig", num_stages=2, hidden_sizes=[16, 32], depths=[1, 1], num_labels=4),
        "convnext.encoder.stages.1",
        None,
        "logits",
    ),
}


def _model(family: str) -> nn.Module:
    torch.manual_seed(0)
    return FAMILIES[family][0]().eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5))


_SUGGESTED = re.compile(
    r"(?:e\.g\.|pass) target_layer='([^']+)'(?:, reshape=(?:TokenGrid\(prefix_tokens=(\d+)(?:, height=(\d+), width=(\d+))?\)|'(nhwc|vit)'))?"
)


def _suggestions(message: str) -> List[Tuple[str, object]]:
    """Every ``target_layer=..., reshape=...`` a message suggests (``e.g. ...`` or ``pass ...``), reshape as an object."""
    found: List[Tuple[str, object]] = []
    for name, prefix, height, width, word in _SUGGESTED.findall(message):
        if prefix:
            reshape: object = TokenGrid(int(prefix), int(height) if height else None, int(width) if width else None)
        else:
            reshape = word or None
        found.append((name, reshape))
    return found


def _assert_suggestions_work(model: nn.Module, message: str, images: torch.Tensor, output_transform: Optional[str]) -> None:
    suggested = _suggestions(message)
    assert suggested, f"the message suggests no layer: {message}"
    modules = dict(model.named_modules())
    for name, reshape in suggested:
        assert name in modules, f"{name!r} is not a module of {type(model).__name__}: {message}"
        maps = cc.explain(model, images, method="gradcam", target_layer=name, reshape=reshape, output_transform=output_transform)
        assert maps.shape == (2, SIZE, SIZE) and bool(torch.isfinite(maps).all())


@pytest.mark.parametrize("family", list(FAMILIES))
def test_auto_chooses_a_block_s_tokens_with_their_layout(family, images):
    """The choice per family; never a patch embedding (Hugging Face Dinov2 chose its patch-embedding convolution, and
    Swin was refused with names of other libraries); the maps equal those of the same layer and layout named."""
    model = _model(family)
    _, expected, layout, output_transform = FAMILIES[family]
    name, module, chosen = auto_layer(model, images[:1])
    assert (name, repr(chosen)) == (expected, repr(layout))
    assert not isinstance(module, nn.Conv2d)
    automatic = cc.explain(model, images, method="gradcam", target_layer="auto", output_transform=output_transform)
    named = cc.explain(model, images, method="gradcam", target_layer=name, reshape=chosen, output_transform=output_transform)
    torch.testing.assert_close(automatic, named, atol=0, rtol=0)


def test_hf_dinov2_auto_maps_are_the_last_block_token_maps(images):
    """The issue's case: the maps of 'auto' on Dinov2 are those of the last block's tokens, not of the patch embedding."""
    model = _model("hf-dinov2")
    automatic = cc.explain(model, images, method="gradcam", target_layer="auto", output_transform="logits")
    embedding = cc.explain(model, images, method="gradcam", target_layer="dinov2.embeddings.patch_embeddings.projection", output_transform="logits")
    tokens = cc.explain(model, images, method="gradcam", target_layer="dinov2.encoder.layer.1.norm1", reshape="vit", output_transform="logits")
    torch.testing.assert_close(automatic, tokens, atol=0, rtol=0)
    assert not torch.equal(automatic, embedding)


def test_the_choice_is_said_with_its_layout(images, caplog):
    model = _model("hf-swin")
    said: List[str] = []
    with caplog.at_level(logging.INFO, logger="cam_callbacks"):
        resolve_layers(model, "auto", images[:1], choices=said)
    assert said == [
        "target_layer='auto' chose 'swin.layernorm' of SwinForImageClassification (0 prefix tokens + a 4x4 patch grid); to fix the "
        "choice, pass target_layer='swin.layernorm' and reshape=TokenGrid(prefix_tokens=0)"
    ]
    assert said[0] in caplog.text


# --- refusals and bad layers: every suggestion exists here and works -----------------------------------------------------


class _Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, 2, batch_first=True)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.attn(h, h, h)[0]
        return x + self.mlp(self.ln2(x))


class HomeMadeViT(nn.Module):
    """A vision transformer in a layout 'auto' does not know (a conv patch embedding, ``prefix`` learned tokens, blocks)."""

    def __init__(self, prefix: int = 1, width: int = 16) -> None:
        super().__init__()
        self.tok = nn.Conv2d(3, width, 8, stride=8)
        self.extra = nn.Parameter(torch.randn(1, prefix, width))
        self.layers = nn.ModuleList([_Block(width), _Block(width)])
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.tok(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.extra.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        for block in self.layers:
            tokens = block(tokens)
        return self.head(self.norm(tokens).mean(dim=1))


@pytest.mark.parametrize("prefix, height, width", [(1, 32, 32), (2, 32, 32), (0, 32, 48)])
def test_auto_refuses_the_embedding_of_an_unknown_transformer_and_its_suggestion_works(prefix, height, width):
    """Before: 'auto' explained the patch embedding 'tok' silently. Now it refuses, naming the last block's first norm
    with the layout it checked (prefix tokens, grid of a non-square input)."""
    torch.manual_seed(0)
    model = HomeMadeViT(prefix).eval()
    x = torch.randn(2, 3, height, width)
    with pytest.raises(ValueError, match=r"will not explain 'tok' .*feeds the attention blocks") as refusal:
        cc.explain(model, x, method="gradcam", target_layer="auto")
    grid = "" if height == width else f", height={height // 8}, width={width // 8}"
    assert f"pass target_layer='layers.1.ln1', reshape=TokenGrid(prefix_tokens={prefix}{grid})" in str(refusal.value)
    suggested = _suggestions(str(refusal.value))
    assert len(suggested) == 1
    name, reshape = suggested[0]
    assert name in dict(model.named_modules())
    assert cc.explain(model, x, method="gradcam", target_layer=name, reshape=reshape).shape == (2, height, width)


# (family, target_layer, reshape): what strangers tried (the Hugging Face Swin attempts among them)
BAD_CHOICES = [
    ("hf-swin", "swin.encoder.layers.1", "nhwc"),
    ("hf-swin", "swin.encoder.layers.1", None),
    ("hf-swin", "swin.layernorm", "vit"),
    ("hf-swin", "swin.layernorm", None),
    ("hf-swin", "swin.encoder.layers.1.blocks.0", None),
    ("hf-dinov2", "dinov2.encoder.layer.1", None),
    ("hf-dinov2", "dinov2.encoder.layer.1.attention", None),
    ("timm-deit-distilled", "blocks.1.norm1", "vit"),
    ("timm-vit", "blocks.1.attn.qkv", None),
    ("torchvision-vit", "encoder.layers.encoder_layer_1", None),
    ("hf-vit", "vit.layers.1.attention", None),
]


@pytest.mark.parametrize("family, target_layer, reshape", BAD_CHOICES)
def test_every_layer_a_bad_layer_message_suggests_exists_and_works(family, target_layer, reshape, images):
    model = _model(family)
    output_transform = FAMILIES[family][3]
    with pytest.raises(ValueError) as refused:
        cc.explain(model, images, method="gradcam", target_layer=target_layer, reshape=reshape, output_transform=output_transform)
    _assert_suggestions_work(model, str(refused.value), images, output_transform)


def test_hf_swin_messages_name_its_final_layernorm(images):
    """The issue: every suggestion for Hugging Face Swin failed ('blocks.11.norm1', 'layers.3', 'features.7' are not its
    modules); what works, 'swin.layernorm' with TokenGrid(prefix_tokens=0), was never suggested."""
    model = _model("hf-swin")
    with pytest.raises(ValueError) as refused:
        cc.explain(model, images, method="gradcam", target_layer="swin.encoder.layers.1", reshape="nhwc", output_transform="logits")
    message = str(refused.value)
    assert "e.g. target_layer='swin.layernorm', reshape=TokenGrid(prefix_tokens=0)" in message
    assert not any(name in message for name in ("blocks.11", "layers.3", "features.7"))


def test_auto_with_reshape_names_this_model_s_layer(images):
    model = _model("hf-dinov2")
    with pytest.raises(ValueError, match="chooses the layout itself") as refused:
        cc.explain(model, images, method="gradcam", target_layer="auto", reshape="vit", output_transform="logits")
    assert [(name, repr(reshape)) for name, reshape in _suggestions(str(refused.value))] == [
        ("dinov2.encoder.layer.1.norm1", repr(TokenGrid(prefix_tokens=1)))
    ]
    _assert_suggestions_work(model, str(refused.value), images, "logits")


def test_vit_reshape_on_two_prefix_tokens_states_the_number(images):
    """reshape='vit' on a distilled DeiT (class + distillation token): the message says 2, not 'the right prefix_tokens'."""
    model = _model("timm-deit-distilled")
    with pytest.raises(ValueError) as refused:
        cc.explain(model, images, method="gradcam", target_layer="blocks.1.norm1", reshape="vit")
    message = str(refused.value)
    assert "18 tokens fit 2 prefix tokens + a 4x4 patch grid" in message and "pass reshape=TokenGrid(prefix_tokens=2)" in message
    assert "the right prefix_tokens" not in message
    assert cc.explain(model, images, method="gradcam", target_layer="blocks.1.norm1", reshape=TokenGrid(prefix_tokens=2)).shape == (2, SIZE, SIZE)
