"""Images that cannot be explained (NaN/inf in the image, the model's logits or maps): NaN maps and scores, a warning, left out of the means.

The reference for the finite rows is a call on the finite images alone: the same numbers computed
without the bad images ever entering a batch. The means are recomputed with NumPy from those per-image values.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import cam_callbacks as cc
from cam_callbacks.engine.finite import nonfinite_images

METRICS = ("average_drop", "increase_in_confidence", "coherency", "complexity", "adcc")


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4)).eval()  # fmt: skip


def _mixed(n: int = 6):
    """``n`` random images, image 1 with one NaN pixel and image 4 with one -inf pixel; the finite rows."""
    torch.manual_seed(1)
    x = torch.randn(n, 3, 8, 8)
    bad = x.clone()
    bad[1, 0, 2, 2] = float("nan")
    if n > 4:
        bad[4, 2, 7, 0] = -float("inf")
    return bad, [row for row in range(n) if row not in (1, 4)]


def _quiet(function, *args, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = function(*args, **kwargs)
    return result, [w for w in caught if issubclass(w.category, UserWarning) and str(w.message).startswith("cam_callbacks:")]


def test_nonfinite_images_by_hand():
    x = torch.zeros(4, 1, 2, 2)
    x[1, 0, 1, 1] = float("nan")
    x[3, 0, 0, 0] = float("inf")
    assert nonfinite_images(x).tolist() == [False, True, False, True]


@pytest.mark.parametrize(
    "method, extra",
    [("gradcam", {}), ("scorecam", {}), ("reciprocam", {}), ("saliency", {}), ("gradcam", {"smooth": "noise", "smooth_samples": 2})],
)
def test_explain_gives_nan_maps_for_nonfinite_images_and_exact_maps_for_the_rest(method, extra):
    images, finite = _mixed()
    maps, caught = _quiet(cc.explain, _model(), images, method, "3", batch_size=4, **extra)
    alone = cc.explain(_model(), images[finite], method, "3", batch_size=4, **extra)
    assert torch.isnan(maps[[1, 4]]).all()
    assert torch.equal(maps[finite], alone)  # bit for bit, also with the noise of smooth="noise"
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "2 of 6 images are not finite" in message and "2 hold NaN or inf" in message and "maps are NaN" in message
    assert "images [1, 4]" in message


def test_faithfulness_leaves_nonfinite_images_out_of_the_means():
    images, finite = _mixed()
    per_image, caught = _quiet(cc.faithfulness, _model(), images, "gradcam", "3", reduction="none")
    mean, _ = _quiet(cc.faithfulness, _model(), images, "gradcam", "3")
    alone = cc.faithfulness(_model(), images[finite], "gradcam", "3", reduction="none")
    for metric in METRICS:
        assert torch.isnan(per_image[metric][[1, 4]]).all(), metric
        assert torch.equal(per_image[metric][finite], alone[metric]), metric
        # the mean over the 4 finite images, by NumPy; before the fix the two bad images entered it as zeros
        # (ADCC 51.4 instead of 85.6 here)
        assert mean[metric] == pytest.approx(float(np.mean(alone[metric].numpy().astype(np.float64))), rel=1e-12, abs=1e-12), metric
    assert "per-image scores are NaN and the means leave them out" in str(caught[0].message)


class Overflowing(nn.Module):
    """``body(exp(x))``: a finite image with a pixel above ~89 overflows float32 (inf, then NaN logits); the others are finite."""

    def __init__(self) -> None:
        super().__init__()
        self.body = _model()

    def forward(self, x):
        return self.body(torch.exp(x))


@pytest.mark.parametrize("method", ["gradcam", "reciprocam", "saliency"])
def test_rows_with_nonfinite_logits_are_left_out_too(method):
    torch.manual_seed(2)
    images = torch.randn(5, 3, 8, 8)
    images[2, 1, 3, 3] = 100.0  # a finite pixel, an overflowing activation
    model = Overflowing()
    with torch.no_grad():
        logits = model(images)
    assert torch.isfinite(images).all() and not torch.isfinite(logits[2]).all() and torch.isfinite(logits[[0, 1, 3, 4]]).all()
    finite = [0, 1, 3, 4]
    target_layer = "body.3" if method != "saliency" else "auto"
    maps, caught = _quiet(cc.explain, model, images, method, target_layer)
    assert torch.isnan(maps[2]).all()
    assert torch.equal(maps[finite], cc.explain(model, images[finite], method, target_layer))
    message = str(caught[0].message)
    assert "1 of 5 images are not finite" in message and "for 1 the model's logits, maps or scores are NaN or inf" in message
    scores, _ = _quiet(cc.faithfulness, model, images, method, target_layer, reduction="none")
    alone = cc.faithfulness(model, images[finite], method, target_layer, reduction="none")
    for metric in METRICS:
        assert torch.isnan(scores[metric][2]) and torch.equal(scores[metric][finite], alone[metric]), metric


class NaNOnExplanationImages(nn.Module):
    """Finite logits on the images; NaN logits on the explanation images ``x * map`` of the images whose channel 2 is negative.

    An explanation image is 0 where the map is 0 (every min-max normalised map has such a pixel), and the
    model returns NaN for a zero pixel in those images: only the faithfulness' second pass sees NaN.
    """

    def __init__(self) -> None:
        super().__init__()
        self.body = _model()

    def forward(self, x):
        logits = self.body(x)
        marked = x[:, 2].sum(dim=(1, 2)) < 0
        has_zero = (x == 0).flatten(1).any(dim=1)
        nan = torch.where(marked & has_zero, torch.full_like(logits[:, 0], float("nan")), torch.zeros_like(logits[:, 0]))
        return logits + nan[:, None]


def test_nan_on_the_explanation_images_gives_nan_scores_not_zeros():
    torch.manual_seed(3)
    images = torch.rand(4, 3, 8, 8) + 0.1  # no zero pixel
    images[:, 2] = 1.0
    images[1, 2] = -1.0  # marked: NaN logits on its explanation image only
    model = NaNOnExplanationImages()
    assert torch.isfinite(model(images)).all()
    scores, caught = _quiet(cc.faithfulness, model, images, "gradcam", "body.3", reduction="none")
    alone = cc.faithfulness(model, images[[0, 2, 3]], "gradcam", "body.3", reduction="none")
    for metric in METRICS:
        assert torch.isnan(scores[metric][1]), metric  # before: ADCC and coherency 0, increase in confidence 0
        assert torch.equal(scores[metric][[0, 2, 3]], alone[metric]), metric
    assert "1 of 4 images are not finite" in str(caught[0].message)
    # the maps themselves are fine: explain keeps image 1 and warns about nothing
    maps, caught = _quiet(cc.explain, model, images, "gradcam", "body.3")
    assert torch.isfinite(maps).all() and not caught


def test_multi_hot_targets_nan_maps_for_the_positive_labels_of_a_nonfinite_image():
    images, _ = _mixed(3)  # image 1 holds NaN
    multi_hot = torch.tensor([[1, 0, 1, 0], [1, 1, 0, 0], [0, 0, 0, 1]])
    maps, caught = _quiet(cc.explain, _model(), images, "gradcam", "3", targets=multi_hot)
    assert torch.isnan(maps[1, :2]).all() and (maps[1, 2:] == 0).all()  # negative labels stay zero
    alone = cc.explain(_model(), images[[0, 2]], "gradcam", "3", targets=multi_hot[[0, 2]])
    assert torch.equal(maps[[0, 2]], alone)
    assert "1 of 3 images are not finite" in str(caught[0].message)
    scores, _ = _quiet(cc.faithfulness, _model(), images, "gradcam", "3", targets=multi_hot, reduction="none")
    assert torch.isnan(scores["adcc"][1]).all() and torch.isfinite(scores["adcc"][0, [0, 2]]).all()


def test_every_image_nonfinite_raises():
    images = torch.full((3, 3, 8, 8), float("nan"))
    for function in (cc.explain, cc.faithfulness):
        with pytest.raises(ValueError, match=r"images: all 3 images hold NaN or inf values; there is nothing to explain"):
            function(_model(), images, "gradcam", "3")
    overflowing = torch.full((2, 3, 8, 8), 100.0)
    with pytest.raises(ValueError, match=r"not finite \(NaN or inf\) for every one of the 2 finite images of 2"):
        cc.explain(Overflowing(), overflowing, "gradcam", "body.3")


def test_finite_batches_are_unchanged_and_silent():
    torch.manual_seed(4)
    images = torch.randn(3, 3, 8, 8)
    maps, caught = _quiet(cc.explain, _model(), images, "gradcam", "3")
    assert torch.isfinite(maps).all() and not caught
