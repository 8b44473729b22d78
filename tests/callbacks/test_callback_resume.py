"""Resuming from a checkpoint: curves continue without duplicate or missing steps, drift keeps its history, the probe is checked."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger

import cam_callbacks as cc

from _lightning_models import TinyNet, fit, read_events


def _pearson(a, b):
    """Per-image Pearson correlation; 0 when either map is constant (the convention of cam_callbacks.metrics.drift)."""
    a, b = a.flatten(1).double().numpy(), b.flatten(1).double().numpy()
    a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
    norms = np.sqrt((a * a).sum(1) * (b * b).sum(1))
    return np.where(norms > 0, (a * b).sum(1) / np.where(norms > 0, norms, 1.0), 0.0)


class SaveMaps(pl.Callback):
    """The functional API's Grad-CAM of the monitor's probe at the end of each validation."""

    def __init__(self, monitor, saved):
        self.monitor, self.saved = monitor, saved

    def on_validation_epoch_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            probe = self.monitor.probe
            self.saved[trainer.current_epoch] = cc.explain(pl_module, probe.images, "gradcam", "features", targets=probe.labels)


def _fit_checkpointed(tmp_path, monitor, max_epochs, ckpt_path=None, saved=None):
    """The shared :func:`fit` with a ``last.ckpt`` checkpoint and one TensorBoard run that a resumed fit continues."""
    checkpoint = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_last=True, save_top_k=0)
    logger = TensorBoardLogger(str(tmp_path), name="tb", version=0)
    callbacks = [monitor, checkpoint] + ([SaveMaps(monitor, saved)] if saved is not None else [])
    _, t = fit(
        tmp_path, callbacks, model=lambda: TinyNet(lr=0.2), seed=11, max_epochs=max_epochs, logger=logger, enable_checkpointing=True,
        ckpt_path=ckpt_path,
    )  # fmt: skip
    return t


@pytest.mark.slow
def test_resume_continues_curves_and_drift_history(tmp_path):
    saved = {}
    _fit_checkpointed(tmp_path, cc.CAMMonitor(methods=["gradcam"], probe=6, step="epoch"), max_epochs=2, saved=saved)
    resumed = cc.CAMMonitor(methods=["gradcam"], probe=6, step="epoch")
    t = _fit_checkpointed(tmp_path, resumed, max_epochs=4, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"), saved=saved)
    scalars = read_events(tmp_path / "tb")["scalars"]
    for tag in ["cam/gradcam/adcc", "cam/gradcam/shortcut_score", "cam/alarm"]:
        assert sorted(step for step, _ in scalars[tag]) == [0, 1, 2, 3], tag  # no duplicate, none missing
    assert sorted(step for step, _ in scalars["cam/gradcam/drift_prev"]) == [1, 2, 3]
    first = dict(scalars["cam/gradcam/drift_first"])
    prev = dict(scalars["cam/gradcam/drift_prev"])
    # after the resume (epoch 2) drift still refers to the maps of epochs 0 and 1 of the first fit
    assert first[2] == pytest.approx(_pearson(saved[2], saved[0]).mean(), abs=1e-5)
    assert prev[2] == pytest.approx(_pearson(saved[2], saved[1]).mean(), abs=1e-5)
    assert first[3] == pytest.approx(_pearson(saved[3], saved[0]).mean(), abs=1e-5)
    assert float(t.callback_metrics["cam/gradcam/drift_first"]) == pytest.approx(first[3], abs=1e-6)


@pytest.mark.slow
def test_changed_probe_set_is_reported_and_history_restarts(tmp_path):
    _fit_checkpointed(tmp_path, cc.CAMMonitor(methods=["gradcam"], probe=6, step="epoch"), max_epochs=1)
    changed = cc.CAMMonitor(methods=["gradcam"], probe=5, step="epoch")  # other probe images than in the checkpoint
    with pytest.warns(UserWarning, match="probe set differs from the one in the checkpoint"):
        _fit_checkpointed(tmp_path, changed, max_epochs=3, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    drift = dict(read_events(tmp_path / "tb")["scalars"]["cam/gradcam/drift_prev"])
    assert sorted(drift) == [2], "epoch 1 has nothing to compare with: the old maps were of other images"


@pytest.mark.slow
def test_explicit_probe_comes_back_from_the_checkpoint(tmp_path):
    g = torch.Generator().manual_seed(5)
    images, labels = torch.randn(5, 3, 16, 16, generator=g), torch.tensor([0, 1, 2, 0, 1])
    _fit_checkpointed(tmp_path, cc.CAMMonitor(methods=["gradcam"], probe=(images, labels)), max_epochs=1)
    state = torch.load(str(tmp_path / "ckpt" / "last.ckpt"), weights_only=False)["callbacks"]
    (monitor_state,) = [v for k, v in state.items() if k.startswith("CAMMonitor")]
    assert torch.equal(monitor_state["probe"]["images"], images)
    restored = cc.CAMMonitor(methods=["gradcam"])  # no probe given: the checkpoint's is used
    _fit_checkpointed(tmp_path, restored, max_epochs=2, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert torch.equal(restored.probe.images, images) and torch.equal(restored.probe.labels, labels)


@pytest.mark.slow
def test_a_checkpoint_written_while_the_alarm_fires_restores_the_history_and_the_alarm_state(tmp_path):
    """The alarm state is saved as ``[method, metric, class]`` entries (class -1: not a per-class hit); a checkpoint
    written while an alarm fires must load like any other: drift keeps its history, and the alarm that goes on firing
    after the resume is not announced again."""
    always = [cc.ThresholdAlarm("adcc", above=0.0)]  # fires at every run (an ADCC of exactly 0 is all it lets through)

    def monitor():
        return cc.CAMMonitor(methods=["gradcam"], probe=6, step="epoch", alarm=always)

    with pytest.warns(UserWarning, match="CAMMonitor alarm at epoch 0"):
        _fit_checkpointed(tmp_path, monitor(), max_epochs=2)
    state = torch.load(str(tmp_path / "ckpt" / "last.ckpt"), weights_only=False)["callbacks"]
    (monitor_state,) = [v for k, v in state.items() if k.startswith("CAMMonitor")]
    assert monitor_state["alarm_state"] == [["gradcam", "adcc", -1]]
    resumed = monitor()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _fit_checkpointed(tmp_path, resumed, max_epochs=3, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    said = [str(w.message) for w in caught if "CAMMonitor" in str(w.message)]
    assert not [m for m in said if "checkpoint" in m], said  # the entry was read, not refused
    assert not [m for m in said if "CAMMonitor alarm at epoch" in m], said  # still the same alarm: not told again
    assert resumed.state_dict()["alarm_state"] == [["gradcam", "adcc", -1]]
    drift = dict(read_events(tmp_path / "tb")["scalars"]["cam/gradcam/drift_prev"])
    assert sorted(drift) == [1, 2], "the resumed epoch 2 compares with the checkpoint's maps of epoch 1"
