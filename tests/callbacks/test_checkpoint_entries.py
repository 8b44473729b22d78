"""CAMMonitor's checkpoint entry (callbacks/checkpoint.py): an empty entry, a partial one and maps holding NaN are
reported with the reason and their history is not used; never loaded silently."""

from __future__ import annotations

import math
from typing import Any, Dict

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger

import cam_callbacks as cc
from cam_callbacks.callbacks.checkpoint import REQUIRED_KEYS, state_problem

from _lightning_models import TinyNet, loaders, make_data, read_events, trainer


def _entry(**changes: Any) -> Dict[str, Any]:
    maps = torch.rand(4, 16, 16)
    entry = {
        "version": 2,
        "layer_name": "features",
        "last_run": ("fit", 0),
        "probe_fingerprint": "0" * 64,
        "probe": None,
        "first_maps": {"gradcam": maps},
        "previous_maps": {"gradcam": maps.clone()},
        "alarm_state": [],
    }
    entry.update(changes)
    return entry


def test_a_complete_entry_has_no_problem():
    assert state_problem(_entry()) is None


def test_an_empty_entry_is_reported():
    assert state_problem({}) == "the entry is empty: the checkpoint holds no state of this monitor (saved without it, or edited)"


@pytest.mark.parametrize("missing", REQUIRED_KEYS)
def test_a_partial_entry_is_reported_with_the_keys_it_lacks(missing):
    partial = {key: value for key, value in _entry().items() if key != missing}
    assert state_problem(partial) == f"the entry is partial: it lacks ['{missing}'] (saved by another version of cam_callbacks, or edited)"


@pytest.mark.parametrize("field", ["first_maps", "previous_maps"])
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_maps_holding_nan_or_inf_are_reported(field, value):
    """Before: NaN first maps loaded, and drift_first was logged as 0.0 from them."""
    maps = torch.rand(4, 16, 16)
    maps[1, 2, 3] = value
    maps[2] = value
    problem = state_problem(_entry(**{field: {"gradcam": maps}}))
    assert problem == f"{field}['gradcam'] holds 257 NaN or inf values of 1024: drift against it would be meaningless"


def _fit(tmp_path, max_epochs: int, ckpt_path=None):
    pl.seed_everything(3)
    images, labels = make_data(4, seed=2)
    monitor = cc.CAMMonitor(methods=["gradcam"], probe=(images, labels), step="epoch")
    checkpoint = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_last=True, save_top_k=0)
    logger = TensorBoardLogger(str(tmp_path), name="tb", version=0)
    train, val = loaders(n_train=16, n_val=8)
    fit = trainer(tmp_path, [monitor, checkpoint], max_epochs=max_epochs, logger=logger, enable_checkpointing=True)
    fit.fit(TinyNet(), train, val, ckpt_path=ckpt_path)
    return monitor


def test_nan_first_maps_in_a_checkpoint_are_reported_and_drift_starts_afresh(tmp_path):
    _fit(tmp_path, max_epochs=1)
    path = tmp_path / "ckpt" / "last.ckpt"
    checkpoint = torch.load(str(path), weights_only=False)
    (key,) = [k for k in checkpoint["callbacks"] if "CAMMonitor" in k]
    checkpoint["callbacks"][key]["first_maps"]["gradcam"][:] = math.nan
    broken = tmp_path / "nan_first_maps.ckpt"
    torch.save(checkpoint, str(broken))
    with pytest.warns(UserWarning, match=r"loading the checkpoint's CAMMonitor entry failed \(ValueError: first_maps\['gradcam'\] holds 1024 NaN"):
        resumed = _fit(tmp_path, max_epochs=3, ckpt_path=str(broken))
    drift_first = dict(read_events(tmp_path / "tb")["scalars"]["cam/gradcam/drift_first"])
    assert sorted(drift_first) == [2], "epoch 1 had no first maps to compare with (the broken ones were not loaded)"
    assert bool(torch.isfinite(resumed.history.first["gradcam"]).all())


def test_an_empty_entry_in_a_checkpoint_is_reported_at_resume(tmp_path):
    """Lightning calls load_state_dict only for a non-empty entry, so an empty one passed silently."""
    _fit(tmp_path, max_epochs=1)
    checkpoint = torch.load(str(tmp_path / "ckpt" / "last.ckpt"), weights_only=False)
    (key,) = [k for k in checkpoint["callbacks"] if "CAMMonitor" in k]
    checkpoint["callbacks"][key] = {}
    torch.save(checkpoint, str(tmp_path / "empty.ckpt"))
    with pytest.warns(UserWarning, match=r"loading the checkpoint's CAMMonitor entry failed \(ValueError: the entry is empty"):
        _fit(tmp_path, max_epochs=2, ckpt_path=str(tmp_path / "empty.ckpt"))


def test_a_bad_entry_resets_the_history_the_monitor_had(tmp_path):
    monitor = _fit(tmp_path, max_epochs=1)
    assert "gradcam" in monitor.history.first
    nan_maps = torch.full_like(monitor.history.first["gradcam"], math.nan)
    with pytest.warns(UserWarning, match=r"first_maps\['gradcam'\] holds .* NaN"):
        monitor.load_state_dict({**monitor.state_dict(), "first_maps": {"gradcam": nan_maps}})
    assert monitor.history.first == {} and monitor.history.previous == {} and monitor.state_dict()["last_run"] is None
