"""reshape='nhwc' (ChannelsLast), target_layer='auto' on transformers (layer and layout), and the refusal of 4-D outputs
that are not (N, C, H, W) feature maps (attention tensors, channels-last maps)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cam_callbacks as cc
from cam_callbacks.capture.hooks import LayerCapture, NotAFeatureMapError, feature_map_problem
from cam_callbacks.capture.layers import auto_layer, resolve_layers
from cam_callbacks.capture.layouts import ChannelsLast, TokenGrid, as_token_grid, remembered_layout
from cam_callbacks.engine.options import ExplainOptions


class ChannelsLastNet(nn.Module):
    """A conv net whose middle block works channels-last (N, H, W, C), like a Swin stage."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, stride=2, padding=1)
        self.stage = nn.Sequential(nn.Linear(6, 20), nn.GELU())  # per-pixel MLP on (N, H, W, C)
        self.head = nn.Linear(20, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stage(self.conv(x).permute(0, 2, 3, 1))
        return self.head(y.mean(dim=(1, 2)))


def test_channels_last_round_trip_and_as_token_grid():
    x = torch.randn(2, 3, 5, 7)
    layout = as_token_grid("nhwc")
    assert isinstance(layout, ChannelsLast) and isinstance(layout, TokenGrid) and layout.prefix_tokens == 0
    maps = layout.to_grid(x)
    assert maps.shape == (2, 7, 3, 5) and torch.equal(maps, x.permute(0, 3, 1, 2))
    assert torch.equal(layout.to_tokens(maps, x[:, :0]), x)
    assert ExplainOptions(reshape="nhwc").token_grid == ChannelsLast()
    with pytest.raises(ValueError, match="channels-last"):
        layout.to_grid(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="'nhwc'"):
        as_token_grid("NHWC")


def test_nhwc_gradcam_equals_manual_and_gradients_flow():
    torch.manual_seed(0)
    net = ChannelsLastNet().eval()
    x = torch.randn(2, 3, 16, 16)
    ours = cc.explain(net, x, method="gradcam", target_layer="stage", reshape="nhwc", targets=[1, 2])
    feats = net.stage(net.conv(x).permute(0, 2, 3, 1)).detach().requires_grad_(True)
    logits = net.head(feats.mean(dim=(1, 2)))
    (grads,) = torch.autograd.grad(logits[[0, 1], [1, 2]].sum(), feats)
    raw = torch.relu((grads.mean(dim=(1, 2))[:, None, None, :] * feats.detach()).sum(-1))
    up = F.interpolate(raw[:, None], size=(16, 16), mode="bilinear", align_corners=False)[:, 0]
    lo, hi = up.amin(dim=(1, 2), keepdim=True), up.amax(dim=(1, 2), keepdim=True)
    torch.testing.assert_close(ours, (up - lo) / (hi - lo), atol=1e-5, rtol=0)
    # Ablation-CAM (tail evaluated on channels-last copies) runs with the layout too
    assert cc.explain(net, x, method="ablationcam", target_layer="stage", reshape="nhwc").shape == (2, 16, 16)


def test_channels_last_output_without_reshape_is_refused_with_advice():
    torch.manual_seed(0)
    net = ChannelsLastNet().eval()
    x = torch.randn(1, 3, 16, 16)
    with LayerCapture(net.stage, "stage", input_shape=x.shape), pytest.raises(NotAFeatureMapError, match="reshape='nhwc'"):
        net(x)
    assert auto_layer(net, x)[0] == "conv"  # auto skips the channels-last output


def test_feature_map_problem_is_conservative():
    inp = (2, 3, 224, 224)
    assert feature_map_problem((2, 3, 197, 64), inp) is not None  # ViT-B/16 attention (N, heads, tokens, head_dim)
    assert feature_map_problem((2, 12, 197, 197), inp) is not None  # attention matrix
    assert feature_map_problem((2, 3, 198, 64), inp) is not None  # distilled: 2 prefix tokens
    assert feature_map_problem((8, 3, 49, 32), inp) is not None  # windows folded into the batch
    assert feature_map_problem((2, 7, 7, 768), inp) is not None  # channels-last
    assert feature_map_problem((2, 7, 7, 768), inp, ChannelsLast()) is None  # with a layout only the batch is checked
    for shape in [(2, 512, 7, 7), (2, 64, 56, 56), (2, 2048, 14, 14), (2, 96, 112, 112), (2, 16, 222, 222), (2, 24, 28, 28)]:
        assert feature_map_problem(shape, inp) is None, shape
    assert feature_map_problem((2, 3, 17, 64), (2, 3, 64, 64)) is not None
    assert feature_map_problem((2, 32, 16, 16), (2, 3, 64, 64)) is None


def test_layer_capture_checks_against_input_shape():
    layer = nn.Identity()
    with LayerCapture(layer, "attn", input_shape=(1, 3, 64, 64)):
        with pytest.raises(NotAFeatureMapError, match="attention tensor"):
            layer(torch.zeros(1, 3, 17, 16))
    with LayerCapture(layer, "conv", input_shape=(1, 3, 64, 64)) as cap:
        layer(torch.zeros(1, 8, 16, 16))
    assert cap.activation is not None and cap.activation.shape == (1, 8, 16, 16)


def _small_torchvision_vit() -> nn.Module:
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    return torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=5
    ).eval()


def test_auto_on_torchvision_vit_picks_last_ln_1_with_grid_and_matches_explicit():
    model = _small_torchvision_vit()
    x = torch.randn(2, 3, 32, 32)
    name, module, layout = auto_layer(model, x[:1])
    assert name == "encoder.layers.encoder_layer_1.ln_1" and repr(layout) == repr(TokenGrid(1, 4, 4))
    layers = resolve_layers(model, "auto", x[:1])
    assert layers == [(name, module)] and repr(remembered_layout(module)) == repr(layout)
    auto = cc.explain(model, x, method="gradcam", target_layer="auto", targets=[0, 1])
    explicit = cc.explain(model, x, method="gradcam", target_layer=name, reshape="vit", targets=[0, 1])
    torch.testing.assert_close(auto, explicit, atol=0, rtol=0)
    resolve_layers(model, name, x[:1], TokenGrid(1))  # an explicit layer forgets the auto layout
    assert remembered_layout(module) is None


def test_auto_with_reshape_is_refused():
    model = _small_torchvision_vit()
    with pytest.raises(ValueError, match="chooses the layout itself"):
        resolve_layers(model, "auto", torch.randn(1, 3, 32, 32), TokenGrid(1))


class UnknownTransformer(nn.Module):
    """Patch tokens through torch's MultiheadAttention, in a layout auto does not know."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 8, 8, stride=8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.qk = nn.Identity()
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x).flatten(2).transpose(1, 2)  # (N, 16, 8)
        cls = t.mean(1, keepdim=True)
        t = torch.cat([cls, t], 1)  # (N, 17, 8)
        heads = self.qk(t.reshape(t.shape[0], 17, 2, 4).transpose(1, 2))  # (N, 2, 17, 4): not an image
        t = heads.transpose(1, 2).reshape(t.shape[0], 17, 8)
        out, _ = self.attn(t, t, t)
        return self.head(out[:, 0])


def test_auto_never_explains_an_attention_tensor_as_an_image():
    torch.manual_seed(0)
    model = UnknownTransformer().eval()
    x = torch.randn(1, 3, 32, 32)
    # the only 4-D outputs are the patch embedding (read by the attention afterwards: an embedding, refused) and the
    # heads tensor (not an image); no module outputs the tokens, so no layer is suggested
    with pytest.raises(ValueError, match="will not explain 'embed'.*feeds the attention") as refusal:
        auto_layer(model, x)
    assert refusal.value.suggestion is None and "pass target_layer= a module whose output is a transformer block's tokens" in str(refusal.value)
    with LayerCapture(model.qk, "qk", input_shape=x.shape), pytest.raises(NotAFeatureMapError, match="attention tensor"):
        model(x)


def test_auto_refuses_a_layer_inside_attention():
    class Inner(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.num_heads = 2
            self.conv = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x)

    model = nn.Sequential(Inner(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)).eval()
    with pytest.raises(ValueError, match="inside an attention module.*reshape="):
        auto_layer(model, torch.randn(1, 3, 8, 8))


@pytest.mark.parametrize("method", ["ablationcam", "reciprocam", "gradcam"])
def test_auto_layout_reaches_the_perturbation_methods(method):
    """'auto' on a timm ViT: the maps equal those with the same layer and layout named explicitly."""
    import timm  # the test extra installs it
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, num_classes=4).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    automatic = cc.explain(model, x, method, "auto")
    explicit = cc.explain(model, x, method, "blocks.11.norm1", reshape=cc.TokenGrid(prefix_tokens=1))
    assert torch.allclose(automatic, explicit, atol=1e-6), float((automatic - explicit).abs().max())
