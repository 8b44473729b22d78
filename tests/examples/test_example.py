"""End-to-end runs of the examples (tiny data or 1 epoch): examples/quickstart.py, and examples/train_shapes.py as
the default script and with the LightningCLI config."""

from __future__ import annotations

import glob
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cam_callbacks.datasets.shapes import SHAPES_MEAN, SHAPES_STD

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "train_shapes.py"
QUICKSTART = ROOT / "examples" / "quickstart.py"
CONFIG = ROOT / "configs" / "shapes.yaml"
METRICS = ("average_drop", "increase_in_confidence", "coherency", "complexity", "adcc")
TINY = ["--max-epochs", "1", "--log-every-n-steps", "1", "--num-train", "96", "--num-val", "48", "--image-size", "32", "--batch-size", "32"]


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("train_shapes_example", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_tensorboard(root) -> Dict[str, Dict[str, List]]:
    """Scalars (tag -> [(step, value)]) and images (tag -> [(step, width, height)]) of all event files under root."""
    scalars: Dict[str, List] = {}
    images: Dict[str, List] = {}
    files = sorted(glob.glob(os.path.join(str(root), "**", "events.out.tfevents.*"), recursive=True))
    assert files, f"no TensorBoard event file under {root}"
    for path in files:
        acc = EventAccumulator(path, size_guidance={"images": 0, "scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
        for tag in acc.Tags()["images"]:
            images.setdefault(tag, []).extend((e.step, e.width, e.height) for e in acc.Images(tag))
    return {"scalars": scalars, "images": images}


def check_cam_logs(events, methods=("gradcam", "gradcampp"), epochs=1):
    scalars, images = events["scalars"], events["images"]
    val_steps = [step for step, _ in scalars["val_loss"]]  # the CAM entries share Lightning's x-axis (the global step)
    assert len(val_steps) == epochs
    for method in methods:
        for metric in METRICS:
            tag = f"cam/{method}/{metric}"
            assert tag in scalars, f"{tag} missing; scalars: {sorted(scalars)}"
            steps = [step for step, _ in scalars[tag]]
            assert steps == val_steps, (tag, steps)
            assert all(0.0 <= value <= 100.0 for _, value in scalars[tag]), (tag, scalars[tag])
        grid = f"cam/{method}/grid"
        assert grid in images, f"{grid} missing; images: {sorted(images)}"
        assert [step for step, _, _ in images[grid]] == val_steps
        assert all(width > 64 and height > 64 for _, width, height in images[grid])
    assert "val_acc" in scalars and "val_loss" in scalars


def test_default_example_end_to_end(example, tmp_path, monkeypatch):
    for name in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS"):  # set by seed_everything; restored after the test
        monkeypatch.delenv(name, raising=False)
    threads = torch.get_num_threads()
    result = example.main(["--logdir", str(tmp_path), "--num-probe", "8", "--quiet", *TINY])
    assert torch.get_num_threads() == threads  # --threads is undone on return
    assert Path(result["log_dir"]).is_dir() and str(tmp_path) in result["log_dir"]
    check_cam_logs(read_tensorboard(tmp_path))
    report = (Path(result["log_dir"]) / "cam" / "report.html").read_text(encoding="utf-8")  # the page a person can send
    assert "cam/gradcam/grid" in report and "cam/gradcampp/evolution" in report  # the final grids and the evolution strips
    metrics = result["metrics"]
    assert 0.0 <= metrics["val_acc"] <= 1.0
    assert 0.0 <= metrics["cam/gradcam/adcc"] <= 1.0  # reaches callback_metrics (EarlyStopping can monitor it)


def test_model_has_a_cam_compatible_head(example):
    model = example.ShapesClassifier(num_classes=3, channels=(4, 8, 8))
    names = dict(model.named_modules())
    assert model.last_block == "features.block3" and model.last_block in names
    assert isinstance(names["classifier.pool"], torch.nn.AdaptiveAvgPool2d)
    assert isinstance(names["classifier.fc"], torch.nn.Linear)
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    from cam_callbacks import explain

    maps = explain(model, torch.randn(2, 3, 32, 32), method="cam", target_layer=model.last_block)
    assert maps.shape == (2, 32, 32)


def test_datamodule_splits(example):
    data = example.ShapesDataModule(num_train=20, num_val=10, image_size=16, batch_size=8)
    data.setup("fit")
    assert len(data.train_set) == 20 and len(data.val_set) == 10
    assert not torch.equal(data.train_set[0][0], data.val_set[0][0])
    images, labels = next(iter(data.val_dataloader()))
    assert images.shape == (8, 3, 16, 16) and torch.equal(labels, data.val_set.labels[:8])
    with pytest.raises(ValueError, match="differ"):
        example.ShapesDataModule(train_seed=3, val_seed=3)


def test_subcommand_selects_the_cli(example):
    assert example._wants_cli(["fit", "--config", "x.yaml"])
    assert example._wants_cli(["validate"])
    assert not example._wants_cli([])
    assert not example._wants_cli(["--max-epochs", "2", "--logdir", "runs"])


def test_config_matches_the_example(example):
    config = yaml.safe_load(CONFIG.read_text())
    callbacks = config["trainer"]["callbacks"]
    monitor = [c for c in callbacks if c["class_path"] == "cam_callbacks.CAMMonitor"]
    assert len(monitor) == 1
    args = monitor[0]["init_args"]
    assert args["style"]["mean"] == pytest.approx(list(SHAPES_MEAN)) and args["style"]["std"] == pytest.approx(list(SHAPES_STD))
    assert args["probe"] == example.MONITOR["probe"] and args["methods"] == example.MONITOR["methods"]
    model = example.ShapesClassifier(**config["model"])
    assert args["target_layer"] == model.last_block
    assert config["trainer"]["logger"]["class_path"].endswith("TensorBoardLogger")


@pytest.mark.slow
def test_lightning_cli_config(tmp_path):
    pytest.importorskip("jsonargparse")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    command = [
        sys.executable,
        str(SCRIPT),
        "fit",
        "--config",
        str(CONFIG),
        "--trainer.max_epochs=1",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--trainer.log_every_n_steps=1",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
        "--data.num_train=96",
        "--data.num_val=48",
        "--data.image_size=32",
        "--data.batch_size=32",
    ]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "tensorboard --logdir" in done.stdout
    events = read_tensorboard(tmp_path / "runs")
    check_cam_logs(events)
    # LightningCLI saved the resolved config beside the event file
    assert glob.glob(str(tmp_path / "runs" / "shapes_cli" / "version_*" / "config.yaml"))


@pytest.mark.slow
def test_quickstart_runs_and_logs_maps(tmp_path):
    """The file users copy: run as a script (1 epoch), it logs grids and ADCC under <logdir>/quickstart."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    command = [sys.executable, str(QUICKSTART), "--logdir", str(tmp_path / "runs"), "--max-epochs", "1"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    events = read_tensorboard(tmp_path / "runs" / "quickstart")
    scalars, images = events["scalars"], events["images"]
    for method in ("gradcam", "gradcampp"):
        grid = f"cam/{method}/grid"
        assert grid in images, f"{grid} missing; images: {sorted(images)}"
        assert [step for step, _, _ in images[grid]] == [step for step, _ in scalars["val_acc"]]
        assert all(width > 64 and height > 64 for _, width, height in images[grid])
    adcc = scalars.get("cam/gradcam/adcc")
    assert adcc, f"cam/gradcam/adcc missing; scalars: {sorted(scalars)}"
    assert [step for step, _ in adcc] == [step for step, _ in scalars["val_acc"]] and all(0.0 <= value <= 1.0 for _, value in adcc), adcc
    assert "val_acc" in scalars
    assert not (tmp_path / "lightning_logs").exists()  # everything went to --logdir
