"""CAMMonitor with a real Trainer and real TensorBoard event files (no mocks of either)."""

from __future__ import annotations

import csv
import glob
import io
import os

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from matplotlib import image as mpimg
from pytorch_lightning.callbacks import EarlyStopping
from pytorch_lightning.loggers import CSVLogger
from tensorboard.plugins.custom_scalar import layout_pb2
from torch.utils.data import DataLoader, Subset, TensorDataset

import cam_callbacks as cc
from cam_callbacks.methods.registry import register_method, unregister_method
from cam_callbacks.render.grids import GAP, caption_height, cell_boxes

from _lightning_models import NUM_CLASSES, TinyNet, fit, loaders, make_data, read_events, trainer

METRICS = ["average_drop", "increase_in_confidence", "coherency", "complexity", "adcc"]


@pytest.mark.slow
def test_fit_logs_grids_scalars_layout_and_callback_metrics(tmp_path):
    methods = ["gradcam", "gradcampp", "cam"]
    monitor = cc.CAMMonitor(methods=methods, probe=8, every_n_epochs=1)
    model, t = fit(tmp_path, monitor, max_epochs=3)
    events = read_events(tmp_path)
    # x-axis: the step Lightning logs val_loss at (6 training batches per epoch: 5, 11, 17), so the curves line up
    val_steps = sorted(step for step, _ in events["scalars"]["val_loss"])
    assert val_steps == [5, 11, 17]
    for method in methods:
        # one grid per method per epoch, no image from the sanity check
        assert sorted(events["images"][f"cam/{method}/grid"]) == val_steps
        for metric in METRICS:
            tag = f"cam/{method}/{metric}"
            steps = [step for step, _ in events["scalars"][tag]]
            assert sorted(steps) == val_steps, tag
            assert tag in t.callback_metrics
            logged_last = [v for s, v in events["scalars"][tag] if s == 17][0]
            assert logged_last == pytest.approx(float(t.callback_metrics[tag]), rel=1e-6)
            assert 0.0 <= logged_last <= 1.0  # a fraction
    assert monitor.layer_name == "features"
    # the logged numbers are what the functional API gives for the probe at the last epoch
    direct = cc.faithfulness(model, monitor.probe.images, method="gradcampp", target_layer="features", targets=monitor.probe.labels)
    for metric in METRICS:
        assert float(t.callback_metrics[f"cam/gradcampp/{metric}"]) == pytest.approx(direct[metric], abs=1e-5)
    # one custom-scalars layout: ADCC of all methods in one chart, each method's components in another
    layout_events = events["tensors"]["custom_scalars__config__"]
    layout = layout_pb2.Layout.FromString(layout_events[-1].tensor_proto.string_val[0])
    charts = {chart.title: list(chart.multiline.tag) for category in layout.category for chart in category.chart}
    assert charts["ADCC: gradcam, gradcampp, cam"] == [f"cam/{m}/adcc" for m in methods]  # titled with the method set
    for method in methods:
        component_chart = [tags for title, tags in charts.items() if title.startswith(method + ":")]
        assert component_chart == [[f"cam/{method}/{k}" for k in METRICS if k != "adcc"]]


@pytest.mark.slow
def test_probe_is_first_samples_of_val_dataset_and_fixed(tmp_path):
    monitor = cc.CAMMonitor(methods=["gradcam"], probe=5)
    _, t = fit(tmp_path, monitor, max_epochs=2)
    xv, yv = make_data(16, seed=1)
    assert torch.equal(monitor.probe.images, xv[:5])
    assert torch.equal(monitor.probe.labels, yv[:5])
    assert not monitor.probe.images.is_inference()


@pytest.mark.slow
def test_grid_cells_show_originals_in_real_colours_beside_overlays_in_probe_order(tmp_path):
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    g = torch.Generator().manual_seed(3)
    originals = torch.rand(4, 3, 16, 16, generator=g)
    normalised = (originals - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    labels = torch.tensor([0, 1, 2, 0])
    monitor = cc.CAMMonitor(methods=["gradcam"], probe=(normalised, labels), style=cc.ImageStyle(mean=mean, std=std, max_images=4))
    fit(tmp_path, monitor, max_epochs=2)
    for event in read_events(tmp_path)["image_data"]["cam/gradcam/grid"]:  # the same image in the same place at every step
        grid = mpimg.imread(io.BytesIO(event.encoded_image_string), format="png")[..., :3]
        tile = 16 * 6  # 16 px images are enlarged 6x (nearest) to reach the 96 px minimum tile
        boxes = cell_boxes(4, 2, tile, tile)
        assert grid.shape[1] == boxes[-1][2] + tile + GAP  # rows of 2 cells
        for i, (top, left, overlay_left) in enumerate(boxes):
            original = grid[top : top + tile : 6, left : left + tile : 6]
            np.testing.assert_allclose(original, originals[i].permute(1, 2, 0).numpy(), atol=1.0 / 255 + 1e-6)
            overlay = grid[top : top + tile : 6, overlay_left : overlay_left + tile : 6]
            assert np.abs(overlay - original).max() > 0.05  # the overlay is coloured by the heatmap
            assert grid[top - caption_height() : top, left : left + 2 * tile].min() < 0.3  # a caption is written above


@pytest.mark.slow
def test_invisible_to_training_bit_identical_weights(tmp_path):
    baseline, _ = fit(tmp_path / "a", None, max_epochs=2)
    monitor = cc.CAMMonitor(methods=["gradcam", "gradcampp", "cam", "layercam"], probe=8)
    watched, t = fit(tmp_path / "b", monitor, max_epochs=2)
    assert "cam/gradcam/adcc" in t.callback_metrics
    for (name, a), (_, b) in zip(baseline.state_dict().items(), watched.state_dict().items()):
        assert torch.equal(a, b), name


@pytest.mark.slow
def test_invisible_with_gradient_accumulation_and_mid_epoch_validation(tmp_path):
    # 6 training batches per epoch, validation after batch 3: in the middle of a 2-batch accumulation
    options = dict(accumulate_grad_batches=2, val_check_interval=0.5)
    baseline, _ = fit(tmp_path / "a", None, max_epochs=2, **options)
    monitor = cc.CAMMonitor(methods=["gradcam", "hirescam"], probe=8)
    watched, t = fit(tmp_path / "b", monitor, max_epochs=2, **options)
    for (name, a), (_, b) in zip(baseline.state_dict().items(), watched.state_dict().items()):
        assert torch.equal(a, b), name
    # it ran once per epoch (at the end of the epoch's last validation), not once per validation
    events = read_events(tmp_path / "b")
    assert sorted(events["images"]["cam/gradcam/grid"]) == [1, 4]  # after batch 3 (1 optimizer step), then 3 + 1
    assert set(events["images"]["cam/gradcam/grid"]) <= {s for s, _ in events["scalars"]["val_loss"]}


@pytest.mark.slow
def test_validate_runs_in_inference_mode(tmp_path):
    pl.seed_everything(0)
    model = TinyNet()
    _, val = loaders()
    monitor = cc.CAMMonitor(methods=["gradcam", "xgradcam"], probe=6)
    t = trainer(tmp_path, [monitor])
    assert t.validate(model, val, verbose=False)
    for method in ["gradcam", "xgradcam"]:
        assert f"cam/{method}/adcc" in t.callback_metrics
    assert read_events(tmp_path)["images"]["cam/xgradcam/grid"] == [0]


@pytest.mark.slow
def test_every_n_epochs(tmp_path):
    monitor = cc.CAMMonitor(methods=["gradcam"], probe=4, every_n_epochs=2, step="epoch")
    fit(tmp_path, monitor, max_epochs=4)
    events = read_events(tmp_path)
    assert sorted(events["images"]["cam/gradcam/grid"]) == [1, 3]
    assert sorted(s for s, _ in events["scalars"]["cam/gradcam/adcc"]) == [1, 3]


@pytest.mark.slow
def test_early_stopping_can_monitor_adcc(tmp_path):
    monitor = cc.CAMMonitor(methods=["gradcam"], probe=4)
    stopper = EarlyStopping(monitor="cam/gradcam/adcc", mode="max", patience=50, strict=True)
    fit(tmp_path, [monitor, stopper], seed=0, max_epochs=2)
    logged = [value for _, value in read_events(tmp_path)["scalars"]["cam/gradcam/adcc"]]
    assert len(logged) == 2
    assert float(stopper.best_score) == pytest.approx(max(logged), rel=1e-6)


@pytest.mark.slow
def test_without_tensorboard_saves_pngs_and_logs_scalars(tmp_path):
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    originals = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    normalised = (originals - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    monitor = cc.CAMMonitor(methods=["gradcam"], probe=(normalised, torch.tensor([0, 1, 2, 0])), step="epoch", style=cc.ImageStyle(mean=mean, std=std))
    logger = CSVLogger(str(tmp_path), name="csv")
    fit(tmp_path, monitor, max_epochs=2, logger=logger)
    with open(glob.glob(os.path.join(str(tmp_path), "csv", "**", "metrics.csv"), recursive=True)[0]) as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("cam/gradcam/adcc")]
    assert sorted(int(row["step"]) for row in rows) == [0, 1]
    names = sorted(os.path.relpath(p, logger.log_dir) for p in glob.glob(os.path.join(logger.log_dir, "cam", "**", "*.png"), recursive=True))
    assert names == [
        f"cam/gradcam/{kind}_epoch={epoch:04d}.png" for kind in ["class_means", "evolution", "grid", "mean_map"] for epoch in (0, 1)
    ]  # fmt: skip
    grid = mpimg.imread(os.path.join(logger.log_dir, "cam", "gradcam", "grid_epoch=0001.png"))[..., :3]
    tile = 16 * 6
    top, left, _ = cell_boxes(4, 2, tile, tile)[0]
    top = grid[top : top + tile : 6, left : left + tile : 6]  # first original, un-normalised
    np.testing.assert_allclose(top, originals[0].permute(1, 2, 0).numpy(), atol=1.0 / 255 + 1e-6)


@pytest.mark.slow
def test_without_any_logger_pngs_go_to_the_root_dir_and_tensorboard_beside_csv_gets_images(tmp_path):
    monitor = cc.CAMMonitor(methods=["gradcam"], probe=4)
    fit(tmp_path / "none", monitor, max_epochs=1, logger=False)
    assert os.path.exists(os.path.join(str(tmp_path / "none"), "cam", "gradcam", "grid_epoch=0000.png"))
    from pytorch_lightning.loggers import TensorBoardLogger

    loggers = [TensorBoardLogger(str(tmp_path / "both"), name="tb"), CSVLogger(str(tmp_path / "both"), name="csv")]
    fit(tmp_path / "both", cc.CAMMonitor(methods=["gradcam"], probe=4), max_epochs=1, logger=loggers)
    assert read_events(tmp_path / "both" / "tb")["images"]["cam/gradcam/grid"] == [5]  # 6 batches: Lightning's step 5
    assert os.path.exists(os.path.join(loggers[1].log_dir, "cam", "gradcam", "grid_epoch=0000.png"))
    assert not glob.glob(os.path.join(str(tmp_path / "both" / "tb"), "**", "*.png"), recursive=True)


class _LazyDataModel(TinyNet):
    """Builds its validation data in setup(), after the callbacks' setup: the probe is taken at first validation."""

    def setup(self, stage):
        xv, yv = make_data(16, seed=1)
        self.val_set = TensorDataset(xv, yv)

    def train_dataloader(self):
        xt, yt = make_data(24, seed=0)
        return DataLoader(TensorDataset(xt, yt), batch_size=8)

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=8)


@pytest.mark.slow
def test_probe_from_dataloader_built_in_module_setup(tmp_path):
    monitor = cc.CAMMonitor(methods=["gradcam"], target_layer="features.5", probe=3)
    model = _LazyDataModel()
    trainer(tmp_path, [monitor], max_epochs=1).fit(model)
    assert torch.equal(monitor.probe.images, make_data(16, seed=1)[0][:3])
    assert monitor.layer_name == "features.5"


def test_exception_inside_a_method_restores_hooks_modes_and_grads(tmp_path):
    calls = {"n": 0}

    @register_method("boom_during_test", needs=("activations", "gradients"))
    def boom(activations, gradients):
        calls["n"] += 1
        if calls["n"] > 1:  # the first call is the dry run at setup
            raise RuntimeError("boom inside a CAM method")
        return torch.relu(gradients.mean((2, 3), keepdim=True) * activations).sum(1)

    try:
        # on_error="raise": the error reaches fit (the default, "warn", reports it and trains on: tests/callbacks/test_faults.py)
        monitor = cc.CAMMonitor(methods=["gradcam", "boom_during_test"], probe=4, on_error="raise")
        pl.seed_everything(0)
        model = TinyNet()
        with pytest.raises(RuntimeError, match="boom inside"):
            fit(tmp_path, monitor, model=model, seed=None, max_epochs=1)
        for module in model.modules():
            assert not module._forward_hooks and not module._forward_pre_hooks and not module._backward_hooks
        assert torch.is_grad_enabled()
        # direct call on a model in train mode with grads set: all as found after the exception
        model.train()
        model.fc.eval()
        for p in model.parameters():
            p.grad = torch.full_like(p, 0.5)
        model.features[0].weight.requires_grad_(False)
        running_mean = model.features[1].running_mean.clone()
        with pytest.raises(RuntimeError, match="boom inside"):
            monitor.compute(model)
        assert model.training and not model.fc.training
        assert all(m.training for m in model.features.modules())
        assert all(torch.equal(p.grad, torch.full_like(p, 0.5)) for p in model.parameters())
        assert not model.features[0].weight.requires_grad and model.features[3 + 1].weight.requires_grad
        assert torch.equal(model.features[1].running_mean, running_mean)
        for module in model.modules():
            assert not module._forward_hooks
    finally:
        unregister_method("boom_during_test")


# ---------------------------------------------------------------- bad configuration fails fast

def test_unknown_method_lists_choices():
    with pytest.raises(ValueError, match=r"'gradcan'.*\['cam', 'gradcam', 'gradcampp'"):
        cc.CAMMonitor(methods=["gradcan"])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(target="truth"), r"target='truth'.*\['label', 'prediction'\]"),
        (dict(every_n_epochs=0), "every_n_epochs must be a positive int, got 0"),
        (dict(probe=-1), "probe must be a positive int"),
        (dict(methods=[]), "at least one method"),
        (lambda: dict(style=cc.ImageStyle(mean=[0.5, 0.5, 0.5])), "both mean and std"),
        (lambda: dict(style=cc.ImageStyle(colormap="rainbowz")), "colormap='rainbowz'"),
        (dict(probe=(torch.empty(0, 3, 16, 16), None)), "probe set is empty"),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs, message):
    """``kwargs``, or a function that builds them (the option objects check their fields as they are built)."""
    with pytest.raises(ValueError, match=message):
        cc.CAMMonitor(**(kwargs() if callable(kwargs) else kwargs))


def _fit_expecting(tmp_path, monitor, message):
    steps = {"n": 0}

    class Count(pl.Callback):
        def on_train_batch_end(self, *args):
            steps["n"] += 1

    with pytest.raises(ValueError, match=message):
        fit(tmp_path, [monitor, Count()], seed=0, max_epochs=1, num_sanity_val_steps=0)
    assert steps["n"] == 0, "the error must come before any training step"


def test_unknown_layer_suggests_close_names(tmp_path):
    _fit_expecting(tmp_path, cc.CAMMonitor(methods=["gradcam"], target_layer="featurs.4"), r"'featurs.4'.*Did you mean.*'features.4'")


def test_layer_without_4d_output(tmp_path):
    _fit_expecting(tmp_path, cc.CAMMonitor(methods=["gradcam"], target_layer="fc"), r"target_layer='fc' outputs a 2-D tensor.*4-D")


def test_probe_shape_rejected_by_model(tmp_path):
    probe = (torch.randn(4, 1, 16, 16), torch.tensor([0, 1, 2, 0]))
    _fit_expecting(tmp_path, cc.CAMMonitor(methods=["gradcam"], probe=probe), r"rejects the probe images of shape \(1, 16, 16\)")


def test_probe_label_out_of_range(tmp_path):
    probe = (torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 7, 0]))
    _fit_expecting(
        tmp_path, cc.CAMMonitor(methods=["gradcam"], probe=probe), rf"probe label 7 \(probe image 2\).*0..{NUM_CLASSES - 1}"
    )


def test_empty_validation_dataset(tmp_path):
    train, _ = loaders()
    empty = DataLoader(TensorDataset(torch.empty(0, 3, 16, 16), torch.empty(0, dtype=torch.long)), batch_size=4)
    with pytest.raises(ValueError, match="probe set is empty"):
        fit(tmp_path, cc.CAMMonitor(methods=["gradcam"]), seed=0, data=(train, empty), max_epochs=1)


def test_cam_on_head_that_is_not_gap_linear(tmp_path):
    class TwoLinearHead(TinyNet):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Sequential(torch.nn.Linear(12, 12), torch.nn.ReLU(), torch.nn.Linear(12, NUM_CLASSES))

    with pytest.raises(ValueError, match="method='cam' needs"):
        fit(tmp_path, cc.CAMMonitor(methods=["cam"]), model=TwoLinearHead, seed=0, max_epochs=1)


@pytest.mark.slow
def test_every_tensorboard_logger_gets_grids_and_scalars(tmp_path):
    from pytorch_lightning.loggers import TensorBoardLogger

    first = TensorBoardLogger(str(tmp_path), name="first")
    second = TensorBoardLogger(str(tmp_path), name="second")
    fit(tmp_path, cc.CAMMonitor(methods=["layercam"], probe=4, step="epoch"), max_epochs=2, logger=[first, second])
    for name in ("first", "second"):
        events = read_events(tmp_path / name)
        assert sorted(events["images"]["cam/layercam/grid"]) == [0, 1]
        assert sorted(s for s, _ in events["scalars"]["cam/layercam/adcc"]) == [0, 1]


def test_probe_from_dataset_and_prediction_targets(tmp_path):
    xv, yv = make_data(10, seed=5)
    monitor = cc.CAMMonitor(methods=["gradcam"], probe=Subset(TensorDataset(xv, yv), range(6)), target="prediction")
    model, t = fit(tmp_path, monitor, max_epochs=1, limit_train_batches=1)
    assert torch.equal(monitor.probe.images, xv[:6]) and torch.equal(monitor.probe.labels, yv[:6])
    # target="prediction": the maps explain the top-1 class, not the label
    explanation, _ = monitor.compute(model)
    with torch.no_grad():
        predicted = model.eval()(xv[:6]).argmax(1)
    assert torch.equal(explanation.targets, predicted)
