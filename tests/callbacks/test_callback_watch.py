"""CAMMonitor's spurious-cue watch: localisation metrics, drift, shortcut images, alarm, multi-label, on real fits.

Expected numbers come from independent computations: NumPy on maps obtained with the functional
``explain`` (itself checked against references elsewhere), or hand-set models whose maps are known.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from matplotlib import image as mpimg
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import cam_callbacks as cc
from cam_callbacks.render.grids import cell_boxes

from _lightning_models import TinyNet, fit, read_events, trainer

SIZE = 16


class CornerNet(pl.LightningModule):
    """A frozen (lr = 0) model that looks at the red channel: its Grad-CAM follows red pixels.

    features: 1x1 conv with weight 1 on channel 0 (red), 0 elsewhere -> ReLU; GAP; fc = [+1, -1].
    For class 0 the Grad-CAM weight of the single feature channel is +1/(h w) > 0, so the map is
    relu(red): a bright red corner patch gets all of the map.
    """

    def __init__(self, num_classes: int = 2) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 1, 1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(1, num_classes)
        with torch.no_grad():
            self.features[0].weight.zero_()
            self.features[0].weight[0, 0] = 1.0
            self.features[0].bias.zero_()
            self.fc.weight.copy_(torch.tensor([[1.0], [-1.0]] + [[0.5]] * (num_classes - 2)))
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))

    def training_step(self, batch, batch_idx):
        return nn.functional.cross_entropy(self(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def corner_probe(n: int = 6):
    """Dim noise, a bright red 4x4 patch in the top-left corner (the nuisance), the object mask elsewhere."""
    g = torch.Generator().manual_seed(0)
    images = torch.rand(n, 3, SIZE, SIZE, generator=g) * 0.1
    images[:, 0, :4, :4] = 5.0
    nuisance = torch.zeros(n, SIZE, SIZE, dtype=torch.bool)
    nuisance[:, :4, :4] = True
    masks = torch.zeros(n, SIZE, SIZE, dtype=torch.bool)
    masks[:, 8:14, 8:14] = True
    labels = torch.zeros(n, dtype=torch.long)
    return images, labels, masks, nuisance


def _train_loader(n: int = 8):
    images, labels, _, _ = corner_probe(n)
    return DataLoader(TensorDataset(images, labels), batch_size=4)


def _np_energy(maps, masks):
    maps, masks = maps.numpy().astype(np.float64), masks.numpy()
    return (maps * masks).sum((1, 2)) / maps.sum((1, 2))


@pytest.mark.slow
def test_localisation_metrics_logged_and_equal_to_numpy_on_explain_maps(tmp_path):
    images, labels, masks, nuisance = corner_probe()
    monitor = cc.CAMMonitor(methods=["gradcam"], probe=(images, labels, masks, nuisance), metrics=(), alarm=None, step="epoch")
    model = CornerNet()
    t = trainer(tmp_path, [monitor], max_epochs=1)
    t.fit(model, _train_loader(), DataLoader(TensorDataset(images, labels), batch_size=3))
    maps = cc.explain(model, images, "gradcam", "features", targets=labels)
    area_nuisance = 16 / SIZE**2
    area_object = 36 / SIZE**2
    expected = {
        "energy_in_nuisance": _np_energy(maps, nuisance).mean(),
        "energy_in_nuisance_ratio": (_np_energy(maps, nuisance) / area_nuisance).mean(),
        "energy_in_mask": _np_energy(maps, masks).mean(),
        "energy_in_mask_ratio": (_np_energy(maps, masks) / area_object).mean(),
        # argmax of relu(red) is inside the red patch, never inside the object mask
        "pointing_game": 0.0,
    }
    for metric, value in expected.items():
        assert float(t.callback_metrics[f"cam/gradcam/{metric}"]) == pytest.approx(value, abs=1e-5), metric
    # the corner holds most of the map: 16 px of red 5.0 against 240 px of dim noise (mean 0.05): 80 / (80 + 12) = 0.87
    assert float(t.callback_metrics["cam/gradcam/energy_in_nuisance"]) > 0.8
    assert "cam/gradcam/drift_prev" not in t.callback_metrics  # nothing to compare with at the first run
    events = read_events(tmp_path)
    for tag in ["cam/gradcam/grid", "cam/gradcam/worst", "cam/gradcam/mean_map", "cam/gradcam/class_means", "cam/gradcam/evolution"]:
        assert events["images"][tag] == [0], tag


@pytest.mark.slow
def test_alarm_fires_warns_writes_text_and_can_stop_training(tmp_path):
    images, labels, masks, nuisance = corner_probe()
    alarm = [
        cc.ThresholdAlarm("energy_in_nuisance_ratio", above=2.0, stop=True),
        cc.ThresholdAlarm("shortcut_score", above=0.5, stop=True),
        cc.ShortcutAlarm(stop=True),
    ]  # the default alarm, every policy with stop=True
    monitor = cc.CAMMonitor(methods=["gradcam"], probe=(images, labels, masks, nuisance), metrics=(), alarm=alarm, step="epoch")
    model = CornerNet()
    t = trainer(tmp_path, [monitor], max_epochs=5)
    with pytest.warns(UserWarning, match=r"CAMMonitor alarm at epoch 0: .*gradcam.*energy_in_nuisance_ratio"):
        t.fit(model, _train_loader(), DataLoader(TensorDataset(images, labels), batch_size=3))
    assert t.current_epoch == 1, "stop=True ends training after the epoch that raised the alarm"
    assert float(t.callback_metrics["cam/alarm"]) == 1.0
    events = read_events(tmp_path)
    assert [step for step, _ in events["scalars"]["cam/alarm"]] == [0]
    text = events["tensors"]["cam/alarm/text_summary"][-1].tensor_proto.string_val[0].decode()
    ratio = float(t.callback_metrics["cam/gradcam/energy_in_nuisance_ratio"])
    assert "| gradcam | energy_in_nuisance_ratio |" in text and "> 2" in text, text
    assert f"{ratio:.3g}"[:3] in text
    # every probe image shows the cue equally; the worst images listed are valid probe indices
    row = [line for line in text.splitlines() if "energy_in_nuisance_ratio" in line][0]
    worst = [int(v) for v in row.split("|")[-2].split(",")]
    assert len(worst) == 4 and all(0 <= i < len(images) for i in worst)


@pytest.mark.slow
def test_no_alarm_without_the_cue(tmp_path):
    images, labels, masks, nuisance = corner_probe()
    images[:, 0, :4, :4] = 0.05  # no bright corner: the red channel is dim noise everywhere
    images[:, 0, 8:14, 8:14] = 5.0  # the object is red instead
    monitor = cc.CAMMonitor(methods=["gradcam"], probe=(images, labels, masks, nuisance), metrics=())
    model = CornerNet()
    t = trainer(tmp_path, [monitor], max_epochs=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        t.fit(model, _train_loader(), DataLoader(TensorDataset(images, labels), batch_size=3))
    assert float(t.callback_metrics["cam/alarm"]) == 0.0
    assert float(t.callback_metrics["cam/gradcam/energy_in_mask_ratio"]) > 3.0
    # a frozen model explains the same images identically: no drift
    assert float(t.callback_metrics["cam/gradcam/drift_prev"]) == pytest.approx(1.0, abs=1e-6)
    assert float(t.callback_metrics["cam/gradcam/drift_first"]) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.slow
def test_drift_is_the_correlation_with_earlier_maps(tmp_path):
    saved = []

    class Save(pl.Callback):  # the maps the functional API gives at the end of each validation
        def on_validation_epoch_end(self, trainer, pl_module):
            if not trainer.sanity_checking:
                saved.append(cc.explain(pl_module, monitor.probe.images, "gradcam", "features", targets=monitor.probe.labels))

    monitor = cc.CAMMonitor(methods=["gradcam"], probe=8, metrics=(), step="epoch")
    _, t = fit(tmp_path, [monitor, Save()], model=lambda: TinyNet(lr=0.2), seed=3, max_epochs=3)

    def pearson(a, b):
        a, b = a.flatten(1).double().numpy(), b.flatten(1).double().numpy()
        a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
        return (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))

    scalars = read_events(tmp_path)["scalars"]
    prev = dict(scalars["cam/gradcam/drift_prev"])
    first = dict(scalars["cam/gradcam/drift_first"])
    assert sorted(prev) == [1, 2]
    assert prev[1] == pytest.approx(pearson(saved[1], saved[0]).mean(), abs=1e-5)
    assert prev[2] == pytest.approx(pearson(saved[2], saved[1]).mean(), abs=1e-5)
    assert first[2] == pytest.approx(pearson(saved[2], saved[0]).mean(), abs=1e-5)
    assert prev[2] < 1.0 - 1e-4  # the model learned, so the maps moved


@pytest.mark.slow
def test_grid_keeps_probe_order_worst_puts_worst_first_and_both_outline_the_regions(tmp_path):
    images, labels, masks, nuisance = corner_probe(4)
    images[:, 0, :4, :4] = torch.tensor([0.2, 5.0, 0.2, 0.2]).view(4, 1, 1)  # only image 1 shows the bright cue
    monitor = cc.CAMMonitor(methods=["gradcam"], probe=(images, labels, masks, nuisance), metrics=(), alarm=None, style=cc.ImageStyle(max_images=4))
    model = CornerNet()
    t = trainer(tmp_path, [monitor], max_epochs=1)
    t.fit(model, _train_loader(), DataLoader(TensorDataset(images, labels), batch_size=4))
    events = read_events(tmp_path)["image_data"]
    tile_side = SIZE * 6
    boxes = cell_boxes(4, 2, tile_side, tile_side)

    def tile(tag, cell, overlay=True):
        pixels = mpimg.imread(io.BytesIO(events[tag][-1].encoded_image_string), format="png")[..., :3]
        top, left, overlay_left = boxes[cell]
        left = overlay_left if overlay else left
        return pixels[top : top + tile_side, left : left + tile_side]

    # image 1 (the only one with the bright cue) comes first in "worst", second (probe order) in "grid"
    assert np.array_equal(tile("cam/gradcam/worst", 0, False), tile("cam/gradcam/grid", 1, False))
    for cell in (0, 2, 3):
        assert not np.array_equal(tile("cam/gradcam/worst", 0, False), tile("cam/gradcam/grid", cell, False))
    cue = tile("cam/gradcam/worst", 0)[6 * 1 + 2, 6 * 1 + 2]
    assert cue[0] > 0.55 and cue[2] < 0.1  # the map's top colour (jet's dark red at 75 % opacity) on the cue
    first = tile("cam/gradcam/worst", 0)
    # the object mask (rows/cols 8..13) is outlined in white, one pixel thin: the first enlarged row 6 * 8
    np.testing.assert_allclose(first[6 * 8, 6 * 10 + 3], [1.0, 1.0, 1.0], atol=1 / 255)
    assert not np.allclose(first[6 * 8 + 1, 6 * 10 + 3], [1.0, 1.0, 1.0], atol=1 / 255)
    # the nuisance region (rows/cols 0..3) in magenta: its top row and its right column (enlarged column 23)
    np.testing.assert_allclose(first[0, 10], [1.0, 0.0, 1.0], atol=1 / 255)
    np.testing.assert_allclose(first[10, 6 * 4 - 1], [1.0, 0.0, 1.0], atol=1 / 255)


class SigmoidNet(pl.LightningModule):
    """Multi-label: conv features -> GAP -> 3 independent logits, trained with BCE."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))

    def training_step(self, batch, batch_idx):
        return nn.functional.binary_cross_entropy_with_logits(self(batch[0]), batch[1].float())

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.slow
def test_multilabel_probe_one_map_per_positive_label(tmp_path):
    g = torch.Generator().manual_seed(1)
    images = torch.randn(6, 3, SIZE, SIZE, generator=g)
    multi_hot = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1], [1, 0, 0], [0, 1, 1]])
    monitor = cc.CAMMonitor(methods=["gradcam", "reciprocam"], probe=(images, multi_hot), alarm=None, style=cc.ImageStyle(max_labels=2))
    data = [DataLoader(TensorDataset(images, multi_hot), batch_size=3) for _ in range(2)]
    model, t = fit(tmp_path, monitor, model=SigmoidNet, seed=0, data=data, max_epochs=1)
    direct = cc.faithfulness(model, images, "reciprocam", "features", targets=multi_hot)
    for metric, value in direct.items():
        assert float(t.callback_metrics[f"cam/reciprocam/{metric}"]) == pytest.approx(value, abs=1e-5), metric
    images_logged = read_events(tmp_path)["images"]
    # labels 0, 1, 2 each have 3 positives; the two first in frequency order (ties: lowest index) get grids
    assert sorted(tag for tag in images_logged if tag.startswith("cam/gradcam/label_")) == [
        "cam/gradcam/label_0/grid", "cam/gradcam/label_1/grid",
    ]  # fmt: skip


@pytest.mark.slow
def test_probe_with_masks_from_a_dataset(tmp_path):
    images, labels, masks, nuisance = corner_probe(6)
    dataset = TensorDataset(images, labels, masks, nuisance)
    monitor = cc.CAMMonitor(methods=["gradcam"], probe=5, metrics=(), alarm=None)
    model = CornerNet()
    t = trainer(tmp_path, [monitor], max_epochs=1)
    t.fit(model, _train_loader(), DataLoader(dataset, batch_size=3))
    assert torch.equal(monitor.probe.masks, masks[:5]) and torch.equal(monitor.probe.nuisance, nuisance[:5])
    assert "cam/gradcam/energy_in_nuisance_ratio" in t.callback_metrics


@pytest.mark.parametrize(
    "probe, message",
    [
        ((torch.zeros(2, 3, 8, 8), torch.zeros(2, dtype=torch.long), torch.zeros(2, 4, 4)), r"masks must have shape \(2, 8, 8\)"),
        ((torch.zeros(2, 3, 8, 8), None, None, torch.full((2, 8, 8), 0.5)), "nuisance must be boolean or hold only 0/1"),
        ((torch.zeros(2, 3, 8, 8), torch.tensor([[0, 2], [1, 0]])), "multi-hot"),
    ],
)
def test_bad_probe_masks_and_labels(probe, message):
    with pytest.raises(ValueError, match=message):
        cc.CAMMonitor(probe=probe)


def test_bad_alarm_argument():
    with pytest.raises(ValueError, match="alarm must be None or a list of ThresholdAlarm / ShortcutAlarm objects"):
        cc.CAMMonitor(alarm={"max_shortcut_score": 0.5})
    nuisance_only = cc.CAMMonitor(alarm=[cc.ThresholdAlarm("energy_in_nuisance_ratio", above=2.0), cc.ShortcutAlarm()]).alarm
    assert [(p.metric, p.direction, p.bound) for p in nuisance_only if isinstance(p, cc.ThresholdAlarm)] == [("energy_in_nuisance_ratio", "above", 2.0)]


def test_shortcut_score_ignores_objects_at_a_fixed_place_when_masks_are_given():
    from cam_callbacks.metrics.watch import analyze_maps

    n = 12
    masks = torch.zeros(n, SIZE, SIZE, dtype=torch.bool)
    masks[:, 5:11, 5:11] = True  # a centred object in every image
    on_object = masks.float()
    # without masks, maps on the same central object look like a shortcut; with masks they do not
    assert analyze_maps(on_object).scalars["shortcut_score"] > 0.8
    assert analyze_maps(on_object, masks=masks).scalars["shortcut_score"] == 0.0
    # a corner that holds 3/4 of every map's mass (outside the objects) is a shortcut either way:
    # outside share 0.75; the outside maps are identical corner spots -> score near 1, scaled by 0.75
    corner = on_object.clone()
    corner[:, :2, :2] = 27.0  # 4 px * 27 = 108 = 3 * 36 (the object's mass)
    with_masks = analyze_maps(corner, masks=masks).scalars["shortcut_score"]
    assert with_masks == pytest.approx(0.75 * (1 - 4 / SIZE**2), abs=1e-6)
