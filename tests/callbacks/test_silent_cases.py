"""Issue 19, item 9: the cases that went silently wrong now say so.

- display ``mean``/``std`` in 0-255 units for normalised images (every original in the grids blank): one warning at setup
  with the values divided by 255;
- ``limit_val_batches=0``, a fit without validation data and ``trainer.test()``: the monitor never runs there, and says so
  once;
- a model that raises on every probe image and one that returns NaN for every probe image: the same error count, the
  same skipped rows and one warning (the raising model kept ``skipped_images`` at 0 and said something else); no
  "the metrics are means over the other images" when none are left.

Resuming with other methods or another target layer: ``test_argument_promise.py`` (the checkpoint entries).
"""

from __future__ import annotations

import logging
import re
import warnings
from typing import Any, Dict, List, Tuple

import pytest
import pytorch_lightning as pl
import torch

import cam_callbacks as cc
from cam_callbacks.callbacks.runner import _display_range_problem

from _lightning_models import FailingNet, TinyNet, fit_with_checkpoint, loaders, make_data, trainer

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def _normalised(images01: torch.Tensor) -> torch.Tensor:
    return (images01 - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


# ---------------------------------------------------------------------------------------------- (a) mean/std in 0-255 units


def test_display_mean_std_in_0_255_units_are_found_and_divided_by_255():
    images = _normalised(torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0)))
    assert _display_range_problem(IMAGENET_MEAN, IMAGENET_STD, images) is None
    message = _display_range_problem([123.675, 116.28, 103.53], [58.395, 57.12, 57.375], images)
    assert message is not None
    assert message.startswith(
        "CAMMonitor: style=ImageStyle(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375]) turns 100% of the probe pixels into "
        "values outside [0, 1] (from "
    )
    assert message.endswith(
        "so the originals in every grid are clipped to blank images. mean and std look like 0-255 units for images normalised from "
        "[0, 1]: divide them by 255 (mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])"
    )


def test_other_display_mismatches_get_the_general_advice_and_a_few_clipped_pixels_none():
    raw = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 255  # images never normalised
    message = _display_range_problem(IMAGENET_MEAN, IMAGENET_STD, raw)
    assert message is not None and message.endswith("Give the mean and std the images were normalised with (x_normalised = (x - mean) / std, x in [0, 1])")
    images = _normalised(torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(2)))
    images[:, :, :4] = 40.0  # half of the pixels clip: shown, not warned of (a bright region is no unit mistake)
    assert _display_range_problem(IMAGENET_MEAN, IMAGENET_STD, images) is None
    images[0, 0, 0, 0] = float("nan")  # non-finite images are left out (the dry run skips them)
    assert _display_range_problem([0.5], [0.5], images[:1]) is None
    assert _display_range_problem(None, None, raw) is None


@pytest.mark.slow
def test_mean_std_in_0_255_units_are_warned_of_once_across_fit_and_validate(tmp_path):
    images, labels = make_data(4, seed=2)
    style = cc.ImageStyle(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375])
    monitor = cc.CAMMonitor(methods=["gradcam"], probe=(images, labels), metrics=(), report=False, style=style)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = trainer(tmp_path, [monitor], max_epochs=1, logger=False)
        model = TinyNet()
        train, val = loaders(n_train=16, n_val=8)
        fit.fit(model, train, val)
        fit.validate(model, val)
    said = [str(w.message) for w in caught if "into values outside [0, 1]" in str(w.message)]
    assert len(said) == 1 and "divide them by 255 (mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])" in said[0], said


# ---------------------------------------------------------------------------------------------- (b) runs where the monitor never runs


def _warnings_of(run: Any) -> List[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run()
    return [str(w.message) for w in caught if "CAMMonitor" in str(w.message)]


@pytest.mark.slow
def test_limit_val_batches_0_says_once_that_nothing_is_logged(tmp_path):
    monitor = cc.CAMMonitor(methods=["gradcam"], target_layer="features", probe=4, metrics=())
    box: Dict[str, pl.Trainer] = {}
    said = _warnings_of(lambda: box.update(fit=fit_with_checkpoint(tmp_path, [monitor], logger=False, limit_val_batches=0)))
    assert said == [
        "CAMMonitor: limit_val_batches=0 turns validation off, and the monitor runs at the end of validation epochs only: it logs "
        "nothing (maps, metrics, report) in this run"
    ]
    assert (tmp_path / "ckpt" / "last.ckpt").exists() and box["fit"].current_epoch == 2
    assert not any(name.startswith("cam/") for name in box["fit"].callback_metrics)


@pytest.mark.slow
def test_a_fit_without_validation_data_says_so(tmp_path):
    monitor = cc.CAMMonitor(methods=["gradcam"], target_layer="features", probe=4, metrics=())
    train, _ = loaders(n_train=16, n_val=8)
    said = _warnings_of(lambda: trainer(tmp_path, [monitor], max_epochs=1, logger=False).fit(TinyNet(), train))
    assert said == [
        "CAMMonitor: this fit has no validation data (no val_dataloaders= and no val_dataloader()), and the monitor runs at the "
        "end of validation epochs only: it logs nothing (maps, metrics, report) in this run"
    ]


@pytest.mark.slow
def test_trainer_test_says_once_that_the_monitor_runs_on_validation_only(tmp_path, caplog):
    """No dry run either: a probe the model cannot use (class names of another length) does not end trainer.test()."""
    monitor = cc.CAMMonitor(methods=["gradcam"], probe=4, metrics=(), style=cc.ImageStyle(class_names=["a", "b"]))
    _, val = loaders(n_train=16, n_val=8)
    fit = trainer(tmp_path, [monitor], logger=False)

    class Tested(TinyNet):
        def test_step(self, batch: Any, batch_idx: int) -> None:
            self.validation_step(batch, batch_idx)

    model = Tested()
    with caplog.at_level(logging.INFO):
        said = _warnings_of(lambda: (fit.test(model, val), fit.test(model, val)))
    messages = [record.getMessage() for record in caplog.records if "CAMMonitor" in record.getMessage()]
    assert said == [] and messages == [
        "CAMMonitor runs at the end of validation epochs only (trainer.fit and trainer.validate), so trainer.test() logs nothing "
        "from it; call trainer.validate(...) to explain the probe set with this model"
    ]


# ---------------------------------------------------------------------------------------------- (c) every probe image failing


def _probe(marked: int) -> Tuple[torch.Tensor, torch.Tensor]:
    images = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(7))
    images[:marked, 0, 0, 0] = 1000.0  # FailingNet raises on (or returns NaN for) these once training has started
    return images, torch.tensor([0, 1, 2, 0, 1, 2])


class _Counters(pl.Callback):
    """The monitor's counters after each of its runs (it is the callback before this one)."""

    def __init__(self, monitor: cc.CAMMonitor) -> None:
        self.monitor = monitor
        self.rows: List[Tuple[float, float, List[int]]] = []

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = trainer.callback_metrics
        self.rows.append((float(metrics["cam/errors"]), float(metrics["cam/skipped_images"]), sorted(self.monitor.skipped_images)))


def _run(tmp_path, mode: str, marked: int) -> Tuple[List[Tuple[float, float, List[int]]], List[str], Dict[int, str]]:
    pl.seed_everything(0)
    monitor = cc.CAMMonitor(methods=["gradcam"], target_layer="features", probe=_probe(marked), metrics=(), alarm=None, budget=None, report=False)
    counters = _Counters(monitor)
    said = _warnings_of(
        lambda: trainer(tmp_path / mode, [monitor, counters], max_epochs=2, logger=False, num_sanity_val_steps=0).fit(
            FailingNet(mode), *loaders(n_train=16, n_val=8)
        )
    )
    return counters.rows, said, monitor.skipped_images


@pytest.mark.slow
@pytest.mark.parametrize("marked", [6, 2], ids=["every probe image", "two probe images"])
def test_a_raising_model_and_a_nan_model_give_the_same_counters(tmp_path, marked: int):
    raised, said_raise, skipped_raise = _run(tmp_path, "raise", marked)
    nan, said_nan, skipped_nan = _run(tmp_path, "nan", marked)
    assert raised == nan, (raised, nan)
    if marked == 6:
        assert raised == [(1.0, 6.0, [0, 1, 2, 3, 4, 5]), (2.0, 6.0, [0, 1, 2, 3, 4, 5])]  # one error per run, every row skipped
        assert set(skipped_raise.values()) == {"the model raises RuntimeError: the model cannot handle this image"}
        assert set(skipped_nan.values()) == {"non-finite logits or map (NaN/inf)"}
        for said, reason in ((said_raise, r"the model raises RuntimeError: the model cannot handle this image"), (said_nan, r"non-finite logits")):
            assert len(said) == 1, said
            assert re.fullmatch(
                rf"CAMMonitor: every probe image failed at epoch 0 \(ValueError: 6 of 6 rows: {reason}.*\); this run is skipped \(no map "
                r"to score\); training goes on\.",
                said[0],
            ), said[0]
    else:
        assert raised == [(0.0, 2.0, [0, 1]), (0.0, 2.0, [0, 1])]  # skipped, not errors: the other images are explained
        assert [m for m in said_raise if "2 probe image(s) skipped at epoch 0" in m and "means over the other images" in m]
        assert [m for m in said_nan if "2 probe image(s) skipped at epoch 0" in m and "means over the other images" in m]
