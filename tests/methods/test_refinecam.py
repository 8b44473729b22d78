"""RefineCAM (``refinecam``): the product of a base method's maps at two or more target layers.

By hand: the map is ``minmax(prod_l M_l)``, ``M_l`` the base method's map that ``cc.explain`` returns for layer ``l``
alone (upsampled to the input size, min-max normalised). Through ``explain``, ``faithfulness`` and ``CAMMonitor``;
one layer, or a base that needs more than the layer's activations and gradients, is refused with a message saying
what to pass.

Against the references (``crosscheck``), on resnet18 with BatchNorm statistics of one batch (``tests/_calibration.py``)
at 128 px, layers ``layer2`` (16x16), ``layer3`` (8x8) and ``layer4`` (4x4):

- pytorch-grad-cam 1.5.7's ``RefineCAM`` brings every layer's map to the **input size** and normalises it there
  (its base CAM's output: ReLU, min-max, ``cv2.resize``, min-max), multiplies, and min-max normalises the product.
  We follow this convention: each factor is then exactly the map ``cc.explain`` gives for that layer, the convention
  of every map in this package (GUIDE section 2), whatever the layers' sizes. Measured (max abs difference of maps
  in [0, 1]): Grad-CAM base 1.0e-6, LayerCAM 9.5e-7, XGrad-CAM 1.4e-6; Grad-CAM++ (default) 1.0e-6 against its
  ``RefineCAM`` over a base that computes
  the paper's closed form (its own ``GradCAMPlusPlus`` adds 1e-6 to the closed form's denominator, a different
  map; GUIDE section 5).
- torchcam 0.5.0's ``RefineCAM`` normalises every layer at its **feature resolution** and multiplies at the
  **largest layer's resolution** (16x16 here); the product is upsampled afterwards. Both steps differ from ours by
  construction (min-max before or after bilinear upsampling; a product before or after upsampling), so the maps
  differ: measured max abs 0.245 (Pearson 0.961) with the Grad-CAM base, 0.197 (Pearson 0.993) with LayerCAM, on
  these images. The test checks that the difference is only the fusion: torchcam's own per-layer maps fused our way
  equal ours (5.4e-7 Grad-CAM, 0 LayerCAM), and on a network whose target layers are at the input resolution, where
  the two constructions coincide, the two RefineCAMs agree (1.8e-7).
"""

from __future__ import annotations

import copy
from typing import List

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from _calibration import calibrate_batchnorm
from torch import nn

import cam_callbacks as cc
from cam_callbacks.methods.multi_layer import refine_bases, refine_layer_maps
from cam_callbacks.utils.maps import minmax_normalize, upsample_and_normalize

SIZE = 128
LAYERS = ["layer2", "layer3", "layer4"]


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    ).eval()


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))


# --- by hand ------------------------------------------------------------------------------------------------


def test_refine_layer_maps_by_hand():
    deep = torch.tensor([[[0.0, 0.5, 1.0, 1.0]]])
    shallow = torch.tensor([[[1.0, 1.0, 0.5, 0.0]]])
    torch.testing.assert_close(refine_layer_maps([deep, shallow]), torch.tensor([[[0.0, 1.0, 1.0, 0.0]]]))
    assert torch.equal(refine_layer_maps([deep, torch.zeros_like(deep)]), torch.zeros_like(deep))  # constant: zeros
    with pytest.raises(ValueError, match="at least one map"):
        refine_layer_maps([])


@pytest.mark.parametrize("base", ["gradcampp", "gradcam", "layercam", "eigencam"])
def test_product_of_the_per_layer_maps_of_explain(images, base):
    net = small_cnn()
    layers = ["1", "4", "7"]
    options = {} if base == "gradcampp" else {"base": base}
    got = cc.explain(net, images, "refinecam", layers, targets=[0, 1, 2], method_options=options)
    per_layer = [cc.explain(net, images, base, layer, targets=[0, 1, 2]) for layer in layers]
    torch.testing.assert_close(got, minmax_normalize(per_layer[0] * per_layer[1] * per_layer[2]), atol=1e-6, rtol=0)
    assert got.shape == (3, 16, 16) and float(got.amax()) == 1.0


def test_base_options_reach_the_base(images):
    net = small_cnn()
    got = cc.explain(net, images, "refinecam", ["4", "7"], method_options={"base": "fem", "base_options": {"k": 0.5}})
    per_layer = [cc.explain(net, images, "fem", layer, method_options={"k": 0.5}) for layer in ["4", "7"]]
    torch.testing.assert_close(got, minmax_normalize(per_layer[0] * per_layer[1]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("layer", ["7", "auto"])
def test_one_layer_is_refused_naming_what_to_pass(images, layer):
    message = r"'refinecam' needs at least 2 target layers .*got 1: \['7'\]; pass target_layer as a list .*e\.g\. target_layer=\['4', '7'\]"
    with pytest.raises(ValueError, match=message):
        cc.explain(small_cnn(), images, "refinecam", layer)


def test_resnet_suggestion_names_its_blocks():
    net = torchvision.models.resnet18(num_classes=3).eval()
    with pytest.raises(ValueError, match=r"e\.g\. target_layer=\['layer3', 'layer4'\]"):
        cc.explain(net, torch.randn(1, 3, 64, 64), "refinecam", "layer4")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"base": "scorecam"}, r"refinecam: base must be a method computed from the target layer's activations and gradients \('scorecam' needs more"),
        ({"base": "gradcm"}, r"choose from \['gradcam', 'gradcampp', .*got 'gradcm'"),
        ({"base": "refinecam"}, r"'refinecam' needs more .*or layer fusion of its own"),
        ({"base": "finercam"}, r"has a score"),
        ({"base": "fem", "base_options": {"kk": 1}}, r"refinecam: base_options: method 'fem' has no option\(s\) \['kk'\]; its options are \['k'\]"),
        ({"base_options": [1]}, r"base_options must be None or a dict"),
    ],
)
def test_bad_base_is_refused_when_the_options_are_built(options, message):
    with pytest.raises(ValueError, match=message):
        cc.ExplainOptions(method_options={"refinecam": options})


def test_bases_are_the_one_pass_layer_methods():
    bases = refine_bases()
    assert bases[:5] == ["gradcam", "gradcampp", "xgradcam", "hirescam", "layercam"]
    assert not {"scorecam", "reciprocam", "ablationcam", "saliency", "finercam", "shapleycam", "refinecam", "fullgrad"} & set(bases)


def test_faithfulness_and_model_left_as_found(images):
    net = small_cnn().train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    scores = cc.faithfulness(net, images, "refinecam", ["4", "7"], reduction="none")
    assert set(scores) == set(cc.faithfulness(net, images, "gradcam", "7"))
    assert all(bool(((v >= 0) & (v <= 1)).all()) for v in scores.values())
    assert net.training and all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    assert all(p.grad is None for p in net.parameters())


def test_mixed_with_other_methods_each_fuses_its_own_way(images):
    """With ``target_layer=[...]`` Grad-CAM keeps LayerCAM's fusion while RefineCAM multiplies."""
    from cam_callbacks.engine.compute import compute_explanations
    from cam_callbacks.utils.maps import fuse_layer_maps

    net = small_cnn()
    layers = [("4", net[4]), ("7", net[7])]
    targets = torch.tensor([0, 1, 2])
    both = compute_explanations(net, images, ["gradcam", "refinecam"], layers, targets)
    per_layer = [cc.explain(net, images, "gradcam", name, targets=targets) for name, _ in layers]
    torch.testing.assert_close(both.maps["gradcam"], fuse_layer_maps(per_layer), atol=1e-6, rtol=0)
    per_layer_pp = [cc.explain(net, images, "gradcampp", name, targets=targets) for name, _ in layers]
    torch.testing.assert_close(both.maps["refinecam"], refine_layer_maps(per_layer_pp), atol=1e-6, rtol=0)


@pytest.mark.slow
def test_callback_logs_refinecam_and_refuses_one_layer_before_training(tmp_path):
    import pytorch_lightning as pl

    from _lightning_models import TinyNet, loaders, trainer

    pl.seed_everything(0)
    monitor = cc.CAMMonitor(methods=["refinecam"], target_layer=["features.2", "features.6"], probe=4, budget=None)
    fit = trainer(tmp_path, [monitor], max_epochs=1)
    fit.fit(TinyNet(), *loaders())
    assert 0.0 <= float(fit.callback_metrics["cam/refinecam/adcc"]) <= 1.0

    single = cc.CAMMonitor(methods=["refinecam"], target_layer="features.6", probe=4, budget=None)
    with pytest.raises(ValueError, match=r"needs at least 2 target layers.*target_layer=\['features.2', 'features.6'\]"):
        trainer(tmp_path / "single", [single], max_epochs=1).fit(TinyNet(), *loaders())


# --- against pytorch-grad-cam and torchcam ------------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return calibrate_batchnorm(torchvision.models.resnet18(weights=None, num_classes=10), SIZE)


@pytest.fixture(scope="module")
def resnet_images() -> torch.Tensor:
    return torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(123))


TARGETS = [0, 5]


def _closed_form_gradcampp_weights(activations: np.ndarray, grads: np.ndarray) -> np.ndarray:
    """Grad-CAM++'s closed form (GUIDE section 2) in NumPy: alpha = g^2 / (2 g^2 + sum(A) g^3), 0 where undefined."""
    g2 = grads**2
    denominator = 2 * g2 + activations.sum(axis=(2, 3), keepdims=True) * g2 * grads
    alpha = np.divide(g2, denominator, out=np.zeros_like(g2), where=(grads != 0) & (denominator != 0))
    return (alpha * np.maximum(grads, 0)).sum(axis=(2, 3))


@pytest.mark.crosscheck
@pytest.mark.slow
@pytest.mark.parametrize("base", ["gradcam", "layercam", "xgradcam", "gradcampp"])
def test_same_as_pytorch_grad_cam(resnet, resnet_images, base):
    from pytorch_grad_cam import GradCAM, LayerCAM, RefineCAM, XGradCAM
    from pytorch_grad_cam.base_cam import BaseCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    class ClosedFormGradCAMPlusPlus(BaseCAM):
        def get_cam_weights(self, input_tensor, target_layer, target_category, activations, grads):
            return _closed_form_gradcampp_weights(np.float64(activations), np.float64(grads))

    reference_base = {"gradcam": GradCAM, "layercam": LayerCAM, "xgradcam": XGradCAM, "gradcampp": ClosedFormGradCAMPlusPlus}[base]
    reference = copy.deepcopy(resnet)  # pytorch-grad-cam calls zero_grad()/backward()
    refine = RefineCAM(reference, [getattr(reference, name) for name in LAYERS], base_method=reference_base)
    theirs = torch.from_numpy(refine(resnet_images, [ClassifierOutputTarget(t) for t in TARGETS]))
    ours = cc.explain(resnet, resnet_images, "refinecam", LAYERS, targets=TARGETS, method_options={"base": base})
    difference = float((ours - theirs).abs().max())
    print(f"refinecam({base}) vs pytorch-grad-cam RefineCAM: max abs {difference:.1e}")
    assert difference < 1e-4
    assert float(ours.std()) > 0.05  # informative: not a constant map


def _torchcam_per_layer(model: nn.Module, x: torch.Tensor, extractor_class) -> List[torch.Tensor]:
    reference = copy.deepcopy(model)
    with extractor_class(reference, LAYERS, input_shape=(3, SIZE, SIZE)) as extractor:
        scores = reference(x)
        return [cam.detach() for cam in extractor(class_idx=TARGETS, scores=scores, normalized=False)]


def _torchcam_refine(model: nn.Module, x: torch.Tensor, layers: List[str], base_class, size: int) -> torch.Tensor:
    from torchcam.methods import RefineCAM

    reference = copy.deepcopy(model)
    with RefineCAM(reference, layers, input_shape=(3, size, size), base_method=base_class) as extractor:
        scores = reference(x)
        (fused,) = extractor(class_idx=TARGETS, scores=scores)
    return upsample_and_normalize(fused.detach(), (size, size))  # torchcam's map is at the largest layer's size


@pytest.mark.crosscheck
@pytest.mark.slow
@pytest.mark.parametrize("base", ["gradcam", "layercam"])
def test_against_torchcam_only_the_fusion_differs(resnet, resnet_images, base):
    import torchcam.methods

    base_class = {"gradcam": torchcam.methods.GradCAM, "layercam": torchcam.methods.LayerCAM}[base]
    ours = cc.explain(resnet, resnet_images, "refinecam", LAYERS, targets=TARGETS, method_options={"base": base})
    per_layer = _torchcam_per_layer(resnet, resnet_images, base_class)
    ours_from_theirs = refine_layer_maps([upsample_and_normalize(cam, (SIZE, SIZE)) for cam in per_layer])
    same_maps = float((ours - ours_from_theirs).abs().max())
    theirs = _torchcam_refine(resnet, resnet_images, LAYERS, base_class, SIZE)
    by_construction = float((ours - theirs).abs().max())
    correlation = float(np.corrcoef(ours.flatten().numpy(), theirs.flatten().numpy())[0, 1])
    print(f"refinecam({base}): torchcam per-layer maps fused our way {same_maps:.1e}; vs torchcam RefineCAM {by_construction:.3f} (Pearson {correlation:.4f})")
    assert same_maps < 1e-4  # the per-layer maps agree: the difference below is the fusion alone
    assert 0.01 < by_construction < 0.5 and correlation > 0.95  # different by construction, same picture
    # torchcam's construction, written out: per-layer min-max at feature resolution, bilinear to the largest layer, product
    largest = tuple(per_layer[0].shape[-2:])
    factors = [F.interpolate(minmax_normalize(cam)[:, None], size=largest, mode="bilinear", align_corners=False)[:, 0] for cam in per_layer]
    torch.testing.assert_close(theirs, upsample_and_normalize(minmax_normalize(factors[0] * factors[1] * factors[2]), (SIZE, SIZE)), atol=1e-5, rtol=0)


@pytest.mark.crosscheck
def test_torchcam_agrees_where_the_layers_are_at_the_input_resolution():
    """Stride-1 layers: normalising before or after upsampling, and multiplying before or after, are the same."""
    import torchcam.methods

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10),
    ).eval()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    ours = cc.explain(net, x, "refinecam", ["1", "3"], targets=TARGETS, method_options={"base": "gradcam"})
    theirs = _torchcam_refine(net, x, ["1", "3"], torchcam.methods.GradCAM, 16)
    difference = float((ours - theirs).abs().max())
    print(f"refinecam(gradcam) vs torchcam RefineCAM, layers at input resolution: max abs {difference:.1e}")
    assert difference < 1e-5
