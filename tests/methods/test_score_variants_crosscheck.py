"""SS-CAM and IS-CAM against torchcam 0.5.0 (``SSCAM``, ``ISCAM``), with SS-CAM's noise reproduced draw for draw.

Why the noise can be reproduced exactly: torchcam draws ``Normal(0, std).sample((N, K, H, W))`` from the *global* CPU
generator once per sample, in sample order; ours draws standard normal rows from a private generator seeded with the
``seed`` option, in the order (sample, image, channel), in whole blocks of 16 values (see ``NoiseRows``). torch's CPU
normal sampler turns uniforms into normals 16 at a time, so when ``N*K*H*W`` is a multiple of 16 (here: 16x16 and
32x32 inputs) both sequences are the same numbers: ``torch.manual_seed(seed)`` before torchcam's call and
``seed=seed`` for ours give the same noise, and the maps agree to float rounding. A different seed changes our map by
O(0.1-1) (checked), so the agreement is not trivial.

The masks: torchcam min-max normalises at feature resolution (``+1e-8``) then upsamples, ours upsamples then
normalises (tests/methods/test_perturbation_crosscheck.py explains why the two agree on a layer at input resolution
and on 2x2 feature maps, the two cases used here). Both score the target logit; torchcam subtracts the logit of the
unmodified image (a per-image constant the softmax cancels).
"""

from __future__ import annotations

import copy
from typing import Sequence

import pytest
import torch
import torchcam.methods
from test_perturbation_crosscheck import FullResolutionNet, assert_informative, images, max_diff, our_convention, prepare
from torch import Tensor, nn

import cam_callbacks as cc

pytestmark = pytest.mark.crosscheck


def torchcam_maps(cls, model: nn.Module, layer: str, x: Tensor, targets: Sequence[int], seed: int, **kwargs) -> Tensor:
    reference = copy.deepcopy(model)
    size = x.shape[-1]
    with cls(reference, target_layer=layer, batch_size=128, input_shape=(3, size, size), **kwargs) as extractor:
        with torch.no_grad():
            reference(x)
        state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        try:
            (raw,) = extractor(class_idx=list(targets), normalized=False)
        finally:
            torch.random.set_rng_state(state)
    return our_convention(raw, size)


@pytest.fixture(scope="module")
def full_resolution_net() -> nn.Module:
    torch.manual_seed(0)
    model = FullResolutionNet()
    with torch.no_grad():
        model.head[-1].weight.mul_(30.0)  # scores spread over a few units: weights far from uniform
    return prepare(model, 16, 1.0)


def test_sscam_same_noise_as_torchcam(full_resolution_net):
    """16x16 input, target layer at input resolution. Tolerance 1e-5 (float rounding of logits in other batch sizes;
    measured 3.0e-7). Another seed moves the map by > 0.05 (measured 0.46)."""
    x, targets = images(2, 16), [0, 5]
    ours = cc.explain(full_resolution_net, x, "sscam", "features", targets=targets, method_options={"num_samples": 4, "seed": 7})
    theirs = torchcam_maps(torchcam.methods.SSCAM, full_resolution_net, "features", x, targets, 7, num_samples=4, std=2.0)
    assert_informative(ours, "ours")
    assert max_diff(ours, theirs) <= 1e-5, max_diff(ours, theirs)
    other_seed = cc.explain(full_resolution_net, x, "sscam", "features", targets=targets, method_options={"num_samples": 4, "seed": 8})
    assert max_diff(other_seed, theirs) > 0.05


def test_iscam_vs_torchcam(full_resolution_net):
    """Deterministic. Tolerance 1e-5; measured 2.4e-7. IS-CAM differs from Score-CAM here (> 1e-3)."""
    x, targets = images(2, 16), [0, 5]
    ours = cc.explain(full_resolution_net, x, "iscam", "features", targets=targets, method_options={"num_samples": 5})
    theirs = torchcam_maps(torchcam.methods.ISCAM, full_resolution_net, "features", x, targets, 0, num_samples=5)
    assert_informative(ours, "ours")
    assert max_diff(ours, theirs) <= 1e-5, max_diff(ours, theirs)
    assert max_diff(ours, cc.explain(full_resolution_net, x, "scorecam", "features", targets=targets)) > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("method", ["sscam", "iscam"])
def test_resnet18_layer3_vs_torchcam(method):
    """resnet18 ``layer3`` at 32 px (2x2 feature maps, 256 channels: torchcam's masks equal ours). Tolerance 1e-5 on
    maps in [0, 1]; measured 6.4e-7 (SS-CAM, 3 samples) and 3.4e-6 (IS-CAM, 4 samples), with channels-last passes."""
    import torchvision

    torch.manual_seed(0)
    model = prepare(torchvision.models.resnet18(weights=None, num_classes=10), 32, 10.0)
    x, targets = images(2, 32), [0, 5]
    if method == "sscam":
        ours = cc.explain(model, x, "sscam", "layer3", targets=targets, method_options={"num_samples": 3, "seed": 3})
        theirs = torchcam_maps(torchcam.methods.SSCAM, model, "layer3", x, targets, 3, num_samples=3, std=2.0)
    else:
        ours = cc.explain(model, x, "iscam", "layer3", targets=targets, method_options={"num_samples": 4})
        theirs = torchcam_maps(torchcam.methods.ISCAM, model, "layer3", x, targets, 0, num_samples=4)
    assert_informative(ours, "ours")
    assert max_diff(ours, theirs) <= 1e-5, max_diff(ours, theirs)
