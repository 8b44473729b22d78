"""Recipro-CAM against its authors' algorithm and against OpenVINO XAI 1.1.0 (the authors' company's library).

The published algorithm (Byun & Lee 2022, arXiv 2209.14074; the authors' PyTorch reference ``ReciproCam.__call__``):
the target layer's feature map ``F`` (``C x h x w``) is copied ``h * w`` times, copy ``k = i * w + j`` keeping only
position ``(i, j)`` (one-hot; or, with the Gaussian option, ``F`` times the 3x3 kernel ``[[1,2,1],[2,4,2],[1,2,1]]/16``
centred there and cut at the borders); the network's head runs on the copies, a **softmax** turns its outputs into
probabilities, and the map at ``(i, j)`` is the target class's probability of copy ``k``. ``numpy_reciprocam`` below
writes it in NumPy (float64), with the heads of the two architectures in NumPy too: a ResNet-18-shaped network
(torchvision's resnet18, ``layer4``: global average pooling + linear) and a VGG-shaped one (its last ReLU: 2x2 max
pooling, flatten, linear, ReLU, linear: a non-linear head where positions interact). Our maps (``cc.explain``, the
tail derived with torch.fx) equal it to float32 precision (measured max abs on maps in [0, 1]: resnet18 4.2e-7,
Gaussian 7.7e-7; VGG-shaped 3.0e-7, Gaussian 8.3e-7).

OpenVINO XAI (``crosscheck``; skipped where ``openvino_xai`` cannot be imported). Not in the ``test`` extra:
``openvino-xai`` 1.1.0 (the newest) requires ``numpy==1.*`` and ``openvino-dev==2024.4`` (``networkx<=3.1``,
``openvino==2024.4.0``), and this project's environment has numpy 2 (as do the opencv and scipy it uses); installing it
there would downgrade numpy under every other package. It runs in a separate virtual environment whose own
site-packages hold ``openvino-xai`` and numpy 1.26 and whose ``.pth`` file appends this project's site-packages (torch
2.14 imports with numpy 1.26)::

    python3.11 -m venv /tmp/ovxai && /tmp/ovxai/bin/pip install openvino-xai==1.1.0
    .venv/bin/python -c "import sysconfig; print(sysconfig.get_path('purelib'))" > /tmp/ovxai/lib/python3.11/site-packages/main.pth
    /tmp/ovxai/bin/python -m pytest tests/methods/test_reciprocam_reference.py

Both of its Recipro-CAMs are compared, on the two architectures (and resnet18 ``layer3``, whose tail holds the
convolutions and skip connections of ``layer4``): ``ReciproCAM`` on an OpenVINO model (``openvino.convert_model`` of the
torch model, dynamic batch), which rewires the graph after the target node, and ``TorchReciproCAM`` (forward hooks on
the torch model). Both differ from the authors' algorithm, and from us, by construction in their score: they take the
model's output **logits** (the IR path looks for a Softmax and takes the node *before* it), not probabilities; and by
default they min-max each class's map at feature resolution and cast it to uint8 (``embed_scaling``). With
``embed_scaling=False`` they return every class's raw logits at every position, so the test applies the softmax over
the classes itself: then OpenVINO XAI equals ours (measured max abs, maps in [0, 1]: the IR path 9.7e-6 on resnet18
``layer4``, 6.8e-6 on ``layer3``, 6.0e-7 on the VGG-shaped network, OpenVINO's CPU kernels summing in another order;
TorchReciproCAM 1.8e-7 and 3.6e-7). Its logit maps themselves differ from the probability maps by up to 0.41
(resnet18 ``layer4``), 0.63 (``layer3``) and 0.29 (VGG-shaped): a different map, not an error in either; we follow the
authors' softmax.
"""

from __future__ import annotations

import copy
from typing import Callable, Dict, List, Tuple

import numpy as np
import pytest
import torch
import torchvision
from _calibration import calibrate_batchnorm
from torch import Tensor, nn

import cam_callbacks as cc
from cam_callbacks.utils.maps import upsample_and_normalize

GAUSSIAN = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=np.float64) / 16


# --- the authors' algorithm in NumPy -----------------------------------------------------------------------


def numpy_mosaic(feature_map: np.ndarray, gaussian: bool) -> np.ndarray:
    """``(h*w, C, h, w)``: copy ``k = i*w + j`` of ``feature_map`` (``C, h, w``) keeping position ``(i, j)`` only (or the
    Gaussian kernel centred there, cut at the borders)."""
    c, h, w = feature_map.shape
    copies = np.zeros((h * w, c, h, w))
    for i in range(h):
        for j in range(w):
            k = i * w + j
            if not gaussian:
                copies[k, :, i, j] = feature_map[:, i, j]
                continue
            for di in (-1, 0, 1):
                for dj in (-1, 0, 1):
                    a, b = i + di, j + dj
                    if 0 <= a < h and 0 <= b < w:
                        copies[k, :, a, b] = feature_map[:, a, b] * GAUSSIAN[di + 1, dj + 1]
    return copies


def numpy_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


def numpy_reciprocam(feature_maps: np.ndarray, head: Callable[[np.ndarray], np.ndarray], targets: List[int], gaussian: bool) -> np.ndarray:
    """``(N, h, w)`` maps: the target's softmax probability of the head on each position's copy."""
    n, _, h, w = feature_maps.shape
    maps = np.zeros((n, h, w))
    for image in range(n):
        probabilities = numpy_softmax(head(numpy_mosaic(feature_maps[image], gaussian)))  # (h*w, classes)
        maps[image] = probabilities[:, targets[image]].reshape(h, w)
    return maps


def resnet_head(model: nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    weight = model.fc.weight.detach().double().numpy()
    bias = model.fc.bias.detach().double().numpy()
    return lambda f: f.mean(axis=(2, 3)) @ weight.T + bias


def vgg_head(model: nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    first, last = model.classifier[0], model.classifier[3]
    w1 = first.weight.detach().double().numpy()
    b1 = first.bias.detach().double().numpy()
    w2 = last.weight.detach().double().numpy()
    b2 = last.bias.detach().double().numpy()

    def head(f: np.ndarray) -> np.ndarray:
        m, c, h, w = f.shape
        pooled = f.reshape(m, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))
        return np.maximum(pooled.reshape(m, -1) @ w1.T + b1, 0) @ w2.T + b2

    return head


# --- the two architectures ----------------------------------------------------------------------------------


class VGGShaped(nn.Module):
    """VGG-shaped: 3x3 conv + ReLU stages with 2x2 max pooling, then flatten and a two-layer MLP (no global pooling)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 48, 3, padding=1), nn.ReLU(), nn.Conv2d(48, 48, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Linear(48 * 6 * 6, 64), nn.ReLU(), nn.Dropout(0.5), nn.Linear(64, num_classes))
        with torch.no_grad():
            self.classifier[0].weight.mul_(4.0)
            self.classifier[3].weight.mul_(40.0)  # probabilities that vary from position to position
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def resnet18_shaped() -> nn.Module:
    torch.manual_seed(0)
    return calibrate_batchnorm(torchvision.models.resnet18(weights=None, num_classes=10), 96, logit_scale=10.0)


#: name -> (model builder, input size, target layer, NumPy head builder)
ARCHITECTURES: Dict[str, Tuple[Callable[[], nn.Module], int, str, Callable[[nn.Module], Callable[[np.ndarray], np.ndarray]]]] = {
    "resnet18": (resnet18_shaped, 96, "layer4", resnet_head),  # 3x3 maps, 512 channels
    "vgg": (VGGShaped, 48, "features.9", vgg_head),  # the last ReLU: 12x12 maps, 48 channels
}
_BUILT: Dict[str, nn.Module] = {}


def built(name: str) -> nn.Module:
    if name not in _BUILT:
        _BUILT[name] = ARCHITECTURES[name][0]()
    return _BUILT[name]


def inputs(size: int) -> Tensor:
    return torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(7))


def feature_maps(model: nn.Module, layer: str, x: Tensor) -> np.ndarray:
    store: Dict[str, Tensor] = {}
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: store.setdefault("f", o.detach().clone()))
    with torch.no_grad():
        model(x)
    handle.remove()
    return store["f"].double().numpy()


def to_maps(raw: np.ndarray, size: int) -> Tensor:
    """Our post-processing of raw ``(N, h, w)`` maps: bilinear (``align_corners=False``) to the input size, min-max."""
    return upsample_and_normalize(torch.as_tensor(raw, dtype=torch.float64), (size, size)).float()


@pytest.mark.parametrize("architecture", ["resnet18", "vgg"])
@pytest.mark.parametrize("gaussian", [False, True])
def test_same_as_the_authors_algorithm_in_numpy(architecture, gaussian):
    model = built(architecture)
    _, size, layer, head = ARCHITECTURES[architecture]
    x = inputs(size)
    with torch.no_grad():
        targets = model(x).argmax(1).tolist()
    raw = numpy_reciprocam(feature_maps(model, layer, x), head(model), targets, gaussian)
    ours = cc.explain(model, x, "reciprocam", layer, targets=targets, method_options={"gaussian": gaussian})
    difference = float((ours - to_maps(raw, size)).abs().max())
    print(f"reciprocam({architecture}, gaussian={gaussian}) vs NumPy: max abs {difference:.1e}; raw span {np.ptp(raw, axis=(1, 2)).round(3)}")
    assert difference < 1e-4
    assert (np.ptp(raw, axis=(1, 2)) > 0.01).all()  # informative: the probabilities vary over the positions


def test_the_numpy_mosaic_by_hand():
    feature_map = np.arange(1.0, 5.0).reshape(1, 2, 2)  # [[1, 2], [3, 4]]
    one_hot = numpy_mosaic(feature_map, gaussian=False)
    np.testing.assert_array_equal(one_hot[1, 0], [[0, 2], [0, 0]])
    spread = numpy_mosaic(feature_map, gaussian=True)
    np.testing.assert_allclose(spread[0, 0], [[1 * 4 / 16, 2 * 2 / 16], [3 * 2 / 16, 4 * 1 / 16]])


# --- against OpenVINO XAI ------------------------------------------------------------------------------------


def _ov_target_node(ov_model, layer: str) -> str:
    """The friendly name of the last node of module ``layer`` (or of its submodules) in the converted model: the node
    whose output OpenVINO XAI's ReciproCAM replaces by the copies."""
    prefix = f"__module.{layer}"
    names = [op.get_friendly_name() for op in ov_model.get_ordered_ops() if op.get_friendly_name().startswith((prefix + "/", prefix + "."))]
    assert names, f"no node of {layer} in the converted model"
    return names[-1]


def _openvino_ir_logits(model: nn.Module, x: Tensor, layer: str) -> np.ndarray:
    """OpenVINO XAI's ``ReciproCAM`` on the converted model, ``embed_scaling=False``: ``(N, classes, h, w)`` logits."""
    import openvino as ov
    from openvino_xai.methods.white_box.recipro_cam import ReciproCAM

    ov_model = ov.convert_model(copy.deepcopy(model), example_input=x[:1], input=[(-1, *x.shape[1:])])
    method = ReciproCAM(ov_model, target_layer=_ov_target_node(ov_model, layer), embed_scaling=False)
    return np.concatenate([method.generate_saliency_map(x[i : i + 1].numpy()) for i in range(x.shape[0])])


def _openvino_torch_logits(model: nn.Module, x: Tensor, layer: str) -> np.ndarray:
    """OpenVINO XAI's ``TorchReciproCAM`` (forward hooks), ``embed_scaling=False``: ``(N, classes, h, w)`` logits.

    Its ``target_layer`` matches module names by substring and takes the last match (``"layer4"`` would hook
    ``layer4.1.bn2``, before the block's skip connection); where the name is ambiguous its automatic search (the last
    module with a spatial 4-D output) is used, and checked to find ``layer``."""
    from openvino_xai.methods.white_box.torch import TorchReciproCAM

    ambiguous = sum(layer in name for name, _ in model.named_modules()) > 1
    method = TorchReciproCAM(copy.deepcopy(model), target_layer=None if ambiguous else layer, embed_scaling=False, input_size=tuple(x.shape[-2:]))
    if ambiguous:
        names = {id(module): name for name, module in method._model_compiled.named_modules()}
        assert names[id(method._feature_module)] == layer
    return np.asarray(method.generate_saliency_map(x.numpy()))


OPENVINO_CASES = [
    ("ir", "resnet18", "layer4"),
    ("ir", "resnet18", "layer3"),  # the tail: layer4's convolutions and skip connections
    ("ir", "vgg", "features.9"),
    ("torch", "resnet18", "layer4"),
    ("torch", "vgg", "features.9"),
]


@pytest.mark.crosscheck
@pytest.mark.slow
@pytest.mark.parametrize(("path", "architecture", "layer"), OPENVINO_CASES)
def test_same_as_openvino_xai_with_the_softmax_applied(path, architecture, layer):
    pytest.importorskip("openvino_xai", reason="openvino-xai 1.1.0 needs numpy 1.x (see the module docstring)")
    model = built(architecture)
    size = ARCHITECTURES[architecture][1]
    x = inputs(size)
    with torch.no_grad():
        targets = model(x).argmax(1)
    logits = torch.as_tensor((_openvino_ir_logits if path == "ir" else _openvino_torch_logits)(model, x, layer), dtype=torch.float64)
    assert logits.shape[:2] == (x.shape[0], 10)
    rows = torch.arange(x.shape[0])
    theirs_probability = logits.softmax(dim=1)[rows, targets]  # (N, h, w): the authors' score
    theirs_logit = logits[rows, targets]  # OpenVINO XAI's own score
    ours = cc.explain(model, x, "reciprocam", layer, targets=targets)
    same = float((ours - to_maps(theirs_probability.numpy(), size)).abs().max())
    by_construction = float((ours - to_maps(theirs_logit.numpy(), size)).abs().max())
    print(f"reciprocam({architecture} {layer}) vs OpenVINO XAI {path}: softmax applied {same:.1e}; its logit maps {by_construction:.2f}")
    assert same < 1e-4
