"""The spurious-cue detector on the scenario generator: examples/catch_shortcut.py, short fixed-seed CPU runs.

The same CNN is trained on the clean and the shortcut variant (a corner patch whose colour is the
label in training); CAMMonitor, with its default alarm, must flag the shortcut run and stay
quiet on the clean run. The runs are deterministic (seed 0, one CPU thread); the thresholds below
leave wide margins around the measured values (in comments).
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import io
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import cam_callbacks as cc_public
from cam_callbacks.datasets.shapes import SHAPES_MEAN, SHAPES_STD
from cam_callbacks.monitor.alarm import DEFAULT_ALARM

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "catch_shortcut.py"
CONFIG = ROOT / "configs" / "shortcut.yaml"
#: About 6 s of training for both runs on one core: 3 epochs of 640 images of 48x48.
SHORT = ["--max-epochs", "3", "--num-train", "640", "--num-val", "160", "--num-probe", "32", "--batch-size", "32", "--seed", "0"]
#: The example's default probe (object masks, no nuisance mask), trained long enough for the shortcut model to be
#: confident (the per-class rule needs a mean confidence of 0.8): about 25 s per run on one busy core.
UNMASKED = ["--max-epochs", "3", "--num-train", "1500", "--num-val", "160", "--num-probe", "64", "--batch-size", "64", "--seed", "0"]
#: The runs with the patch (nuisance) masks: the energy_in_nuisance_ratio rule.
WITH_NUISANCE = [*SHORT, "--probe-masks", "nuisance"]


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("catch_shortcut_example", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def short_runs(example, tmp_path_factory):
    """Both variants, trained once for the module: the result of ``main`` and what it printed."""
    logdir = tmp_path_factory.mktemp("runs")
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        for name in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS"):  # set by seed_everything; restored afterwards
            patch.delenv(name, raising=False)
        threads = torch.get_num_threads()
        with contextlib.redirect_stdout(out):
            result = example.main(["--logdir", str(logdir), *WITH_NUISANCE])
        assert torch.get_num_threads() == threads  # --threads is undone on return
    return {"result": result, "stdout": out.getvalue(), "logdir": logdir}


@pytest.fixture(scope="module")
def unmasked_runs(example, tmp_path_factory):
    """Both variants with the example's default probe: object masks, no nuisance mask (nobody told us about the patch)."""
    logdir = tmp_path_factory.mktemp("unmasked")
    with pytest.MonkeyPatch.context() as patch:
        for name in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS"):
            patch.delenv(name, raising=False)
        with contextlib.redirect_stdout(io.StringIO()):
            return example.main(["--logdir", str(logdir), *UNMASKED])


def column(rows: List[Dict], key: str) -> List[float]:
    return [row[key] for row in rows]


def read_scalars(root) -> Dict[str, List]:
    """tag -> [(step, value)] of all event files under root."""
    scalars: Dict[str, List] = {}
    files = sorted(glob.glob(os.path.join(str(root), "**", "events.out.tfevents.*"), recursive=True))
    assert files, f"no TensorBoard event file under {root}"
    for path in files:
        acc = EventAccumulator(path, size_guidance={"scalars": 0, "images": 1})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
        for tag in acc.Tags()["images"]:
            scalars.setdefault(f"image:{tag}", [])
    return scalars


@pytest.mark.slow
def test_shortcut_run_is_flagged(short_runs):
    rows = short_runs["result"]["runs"]["shortcut"]["rows"]
    clean = short_runs["result"]["runs"]["clean"]["rows"]
    assert [row["epoch"] for row in rows] == [0, 1, 2]
    assert max(column(rows, "alarm")) == 1.0
    first = short_runs["result"]["runs"]["shortcut"]["first_alarm"]
    assert first is not None and first <= 2  # measured: epoch 1
    assert all(row["alarm"] == 1.0 for row in rows[first:]), "the alarm stays on once the model reads the patch"
    assert any("nuis>2" in hit for row in rows for hit in row["fired"])
    for method in ("gradcam", "layercam"):
        key = f"{method}/energy_in_nuisance_ratio"
        assert rows[-1][key] > 2.5  # measured 3.60 (gradcam), 3.25 (layercam)
        assert rows[-1][key] > 4.0 * max(column(clean, key))  # clean: at most 0.63


@pytest.mark.slow
def test_the_per_class_rule_finds_the_patch_without_nuisance_masks(unmasked_runs):
    shortcut, clean = unmasked_runs["runs"]["shortcut"], unmasked_runs["runs"]["clean"]
    assert clean["first_alarm"] is None and all(row["fired"] == [] for row in clean["rows"])
    assert shortcut["first_alarm"] is not None and shortcut["first_alarm"] <= 2  # measured: epoch 1
    last = shortcut["rows"][-1]
    assert math.isnan(last["gradcam/energy_in_nuisance_ratio"])  # no nuisance mask, no nuisance metric
    assert any("class_shortcut_score" in message for message in last["hits"])
    message = next(m for m in last["hits"] if "class_shortcut_score" in m)
    # the region is the top-left corner where the patch is (7x7 pixels of 48x48) and hiding it moves the predictions
    assert "rows 0-" in message and "columns 0-" in message and "occlusion effect" in message
    effect = float(re.search(r"occlusion effect ([0-9.]+)", message).group(1))
    assert effect > 0.3  # measured 0.8
    assert last["gradcam/class_shortcut_score"] > 2 * max(column(clean["rows"], "gradcam/class_shortcut_score"))


@pytest.mark.slow
def test_clean_run_stays_quiet(short_runs):
    rows = short_runs["result"]["runs"]["clean"]["rows"]
    assert [row["epoch"] for row in rows] == [0, 1, 2]
    assert column(rows, "alarm") == [0.0, 0.0, 0.0]
    assert short_runs["result"]["runs"]["clean"]["first_alarm"] is None
    assert all(row["fired"] == [] for row in rows)
    for method in ("gradcam", "layercam"):
        # the clean model looks at the patch less than chance would (1.0) at every epoch: measured 0.29-0.63
        assert max(column(rows, f"{method}/energy_in_nuisance_ratio")) < 1.0
        # and its maps prefer the object by the end (measured 1.61-1.62)
        assert rows[-1][f"{method}/energy_in_mask_ratio"] > 1.2


@pytest.mark.slow
def test_validation_accuracy_does_not_reveal_the_shortcut(short_runs):
    """The biased validation split praises the shortcut run; only cue-randomised images expose it."""
    shortcut = short_runs["result"]["runs"]["shortcut"]["rows"][-1]
    clean = short_runs["result"]["runs"]["clean"]["rows"][-1]
    assert shortcut["val_acc"] > 0.95 and shortcut["val_acc"] > clean["val_acc"]  # measured 0.994 vs 0.825
    assert shortcut["randcue_acc"] < 0.6  # measured 0.394 (chance: 0.25)
    assert clean["randcue_acc"] > shortcut["randcue_acc"] + 0.2  # measured 0.875


@pytest.mark.slow
def test_printed_tables_and_summary(short_runs):
    stdout = short_runs["stdout"]
    first = short_runs["result"]["runs"]["shortcut"]["first_alarm"]
    assert f"Summary: first alarm epoch: clean=never, shortcut={first};" in stdout
    assert "clean run: alarm first fired at never (in 3 epochs)" in stdout
    assert re.search(rf"shortcut run: alarm first fired at epoch {first} \(val_acc 0\.\d{{3}}, randcue_acc 0\.\d{{3}}\)", stdout)
    headers = [line for line in stdout.splitlines() if line.startswith("epoch")]
    assert len(headers) == 2
    for name in ("val_acc", "randcue_acc", "gradcam nuis", "gradcam mask", "gradcam short", "layercam nuis", "alarm", "rules fired"):
        assert name in headers[0], name
    table_rows = [line for line in stdout.splitlines() if re.match(r"^\s+\d+\s+\d\.\d{3}\s+\d\.\d{3}\s", line)]
    assert len(table_rows) == 6  # 3 epochs x 2 runs
    assert "tensorboard --logdir" in stdout


@pytest.mark.slow
def test_tensorboard_logs_of_both_runs(short_runs):
    root = Path(short_runs["logdir"]) / "catch_shortcut"
    runs = short_runs["result"]["runs"]
    for variant in ("clean", "shortcut"):
        assert Path(runs[variant]["log_dir"]) == root / variant / "version_0"

        scalars = read_scalars(root / variant)
        alarm = scalars["cam/alarm"]
        assert [step for step, _ in alarm] == [step for step, _ in scalars["val_acc"]] and len(alarm) == 3  # Lightning's x-axis
        report = (root / variant / "version_0" / "cam" / "report.html").read_text(encoding="utf-8")  # written by the example
        assert ("The alarm never fired" in report) == (max(value for _, value in alarm) == 0.0)
        assert [value for _, value in alarm] == [row["alarm"] for row in runs[variant]["rows"]]
        for tag in ("val_acc", "randcue_acc", "cam/gradcam/energy_in_nuisance_ratio", "cam/layercam/shortcut_score", "image:cam/gradcam/grid"):
            assert tag in scalars, (variant, tag, sorted(scalars))
        logged = dict(scalars["cam/gradcam/energy_in_nuisance_ratio"])
        assert logged[max(logged)] == pytest.approx(runs[variant]["rows"][-1]["gradcam/energy_in_nuisance_ratio"], rel=1e-5)


def test_data_variants(example):
    """Same images in both variants; the patch gives the label away in train and val, not in the probe set."""
    sets = {}
    for shortcut in (False, True):
        data = example.ShortcutDataModule(shortcut=shortcut, num_train=24, num_val=24, num_randcue=24, image_size=32)
        data.setup("fit")
        sets[shortcut] = data
    clean, biased = sets[False], sets[True]
    for data in sets.values():
        randcue = data.randcue_set.batch
        assert bool(randcue.nuisance_masks.any(dim=(1, 2)).all())  # the patch is in every probe image
        assert not bool((randcue.cue_labels == randcue.labels).all())  # and independent of the label
    assert torch.equal(clean.randcue_set.batch.images, biased.randcue_set.batch.images)  # identical probe for both runs
    for name in ("train_set", "val_set"):
        a, b = getattr(clean, name).batch, getattr(biased, name).batch
        assert torch.equal(a.labels, b.labels) and torch.equal(a.masks, b.masks)
        assert not bool(a.nuisance_masks.any())
        assert torch.equal(b.cue_labels, b.labels)  # the biased validation split is drawn like training
        same_pixels = (a.images == b.images).all(dim=1)
        assert torch.equal(same_pixels, ~b.nuisance_masks)  # the shortcut twin is the clean image plus the patch
    loaders = biased.val_dataloader()
    assert [loader.dataset for loader in loaders] == [biased.randcue_set, biased.val_set]
    assert example.VAL_STAGES == ("randcue", "val")
    with pytest.raises(ValueError, match="differ"):
        example.ShortcutDataModule(train_seed=2, val_seed=2)
    with pytest.raises(ValueError, match="choose from"):
        example.ShortcutDataModule(scenario="tiny")


@pytest.mark.slow
def test_explaining_the_label_hides_the_cue(short_runs):
    """Why the example explains the prediction: on probe images whose patch names another class than the
    label, the patch speaks against the label, and Grad-CAM of the label's logit drops it (ReLU)."""
    from cam_callbacks import explain
    from cam_callbacks.metrics.localization import localization_scores

    run = short_runs["result"]["runs"]["shortcut"]
    model, probe = run["model"].eval(), run["probe"]
    ratios = {}
    for target, targets in (("prediction", None), ("label", probe.labels)):
        maps = explain(model, probe.images, method="gradcam", target_layer=model.last_block, targets=targets)
        ratios[target] = float(localization_scores(maps, nuisance=probe.nuisance)["energy_in_nuisance_ratio"].mean())
    assert ratios["prediction"] == pytest.approx(run["rows"][-1]["gradcam/energy_in_nuisance_ratio"], rel=1e-4)
    assert ratios["label"] < 2.0 < ratios["prediction"], ratios  # measured 0.91 and 3.60


def test_subcommand_selects_the_cli(example):
    assert example._wants_cli(["fit", "--config", "x.yaml"])
    assert not example._wants_cli(["--max-epochs", "2"])


def test_config_matches_the_example(example):
    config = yaml.safe_load(CONFIG.read_text())
    monitor = [c for c in config["trainer"]["callbacks"] if c["class_path"] == "cam_callbacks.CAMMonitor"]
    assert len(monitor) == 1
    args = monitor[0]["init_args"]
    assert args["style"]["mean"] == pytest.approx(list(SHAPES_MEAN)) and args["style"]["std"] == pytest.approx(list(SHAPES_STD))
    model = example.ShortcutClassifier(**config["model"])
    assert args["target_layer"] == model.last_block
    assert args["methods"] == example.parse_args([]).methods and args["target"] == example.parse_args([]).target
    policies = tuple(getattr(cc_public, entry["class_path"].split(".")[-1])(**entry["init_args"]) for entry in args["alarm"])
    assert policies == DEFAULT_ALARM  # the config spells out the defaults
    defaults = example.parse_args([])
    data = config["data"]
    assert (data["num_train"], data["num_val"], data["image_size"], data["batch_size"]) == (
        defaults.num_train, defaults.num_val, defaults.image_size, defaults.batch_size
    )  # fmt: skip
    assert config["trainer"]["max_epochs"] == defaults.max_epochs and args["probe"] == defaults.num_probe


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
        "--trainer.logger.init_args.name=clean",
        "--data.shortcut=false",
        "--data.num_train=96",
        "--data.num_val=32",
        "--data.num_randcue=32",
        "--data.image_size=32",
        "--data.batch_size=32",
    ]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "cam/alarm at the last epoch: 0" in done.stdout and "tensorboard --logdir" in done.stdout
    scalars = read_scalars(tmp_path / "runs")
    # the probe came from the first validation loader, the cue-randomised set, with its masks
    for tag in ("cam/alarm", "cam/gradcam/energy_in_nuisance_ratio", "cam/layercam/energy_in_mask_ratio", "val_acc", "randcue_acc"):
        assert tag in scalars, (tag, sorted(scalars))
    saved = glob.glob(str(tmp_path / "runs" / "clean" / "version_*" / "config.yaml"))
    assert saved and yaml.safe_load(Path(saved[0]).read_text())["data"]["shortcut"] is False
