"""Fault injection: a monitor must never cost a training run.

Each row injects one fault into a 3-epoch fit of TinyNet with a CSV logger, a TensorBoard logger and a
ModelCheckpoint(save_last=True), and checks what a user who leaves the monitor on cares about:

- the fit reaches ``max_epochs``;
- the last checkpoint exists;
- the other loggers' data are complete (a ``val_loss`` row per epoch in the CSV file);
- the model is as found (no hooks left, train mode restored for the next epoch);
- the error was reported once (one warning naming CAMMonitor and the failing part), and counted
  (``cam/errors`` in ``trainer.callback_metrics``).

With ``on_error="raise"`` the same faults reach ``fit`` instead.
"""

from __future__ import annotations

import csv
import os
import warnings
from typing import Any, Callable, Dict, List

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

import cam_callbacks as cc
from cam_callbacks.callbacks import loggers as logger_module
from cam_callbacks.methods.registry import unregister_method

from _lightning_models import FailingNet, TinyNet, fit, trainer

EPOCHS = 3


def _probe(marked: int) -> tuple:
    g = torch.Generator().manual_seed(7)
    images = torch.randn(6, 3, 16, 16, generator=g)
    images[:marked, 0, 0, 0] = 1000.0
    return images, torch.tensor([0, 1, 2, 0, 1, 2])


class _CloseTensorBoardEarly(pl.Callback):
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.close()


class _BlockPngFolder(pl.Callback):
    """A file where the callback's PNG folder in the CSV logger's directory would go."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        folder = trainer.loggers[0].log_dir
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "cam"), "w") as handle:
            handle.write("not a folder")


def _raising_method(_: str) -> None:
    calls = {"n": 0}

    @cc.register_method("fault_method", needs=("activations", "gradients"))
    def fault_method(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] > 1:  # the first call is the dry run at setup
            raise RuntimeError("fault inside a CAM method")
        return torch.relu(activations.sum(1))


def _png_writes_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    def add_png(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(logger_module, "add_png", add_png)


#: name -> (model mode, probe images marked, methods, setup(root, monkeypatch), extra callbacks, the part named in the warning)
FAULTS: Dict[str, tuple] = {
    "png folder is a file": ("ok", 0, ["gradcam"], lambda root, mp: None, [_BlockPngFolder()], "writing images"),
    "disk full at the TensorBoard writer": ("ok", 0, ["gradcam"], lambda root, mp: _png_writes_fail(mp), [], "writing images"),
    "TensorBoard writer closed early": ("ok", 0, ["gradcam"], lambda root, mp: None, [_CloseTensorBoardEarly()], None),
    "a method raises": ("ok", 0, ["gradcam", "fault_method"], lambda root, mp: _raising_method(root), [], "method 'fault_method'"),
    "the model raises on some probe images": ("raise", 2, ["gradcam"], lambda root, mp: None, [], None),
    "the model raises on every probe image": ("raise", 6, ["gradcam"], lambda root, mp: None, [], "every probe image"),
    "NaN logits on every probe image": ("nan", 6, ["gradcam"], lambda root, mp: None, [], "every probe image"),
}


def _fit_logged(root: str, model: TinyNet, monitor: cc.CAMMonitor, extra: List[pl.Callback]) -> pl.Trainer:
    """The shared :func:`fit` as a user's run has it: CSV and TensorBoard loggers, a checkpoint every epoch."""
    checkpoint = ModelCheckpoint(dirpath=os.path.join(root, "ckpt"), save_last=True)
    loggers = [CSVLogger(root, name="csv"), TensorBoardLogger(root, name="tb")]
    _, trainer = fit(
        root, [monitor, checkpoint, *extra], model=model, seed=None, n_train=16, n_val=8, max_epochs=EPOCHS, logger=loggers,
        enable_checkpointing=True, num_sanity_val_steps=0,
    )  # fmt: skip
    return trainer


def _cleanup_method() -> None:
    if "fault_method" in cc.available_methods():
        unregister_method("fault_method")


#: One fault stays in the quick subset (a fit of ~1 s); the others are 2-epoch fits of ~2 s each.
QUICK_FAULT = "NaN logits on every probe image"


@pytest.mark.parametrize("fault", [f if f == QUICK_FAULT else pytest.param(f, marks=pytest.mark.slow) for f in FAULTS])
def test_a_fault_is_reported_once_and_training_goes_on(fault: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    mode, marked, methods, inject, extra, part = FAULTS[fault]
    root = str(tmp_path)
    try:
        inject(root, monkeypatch)
        pl.seed_everything(0)
        model = FailingNet(mode)
        monitor = cc.CAMMonitor(methods=methods, target_layer="features", probe=_probe(marked), alarm=None, budget=None)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer = _fit_logged(root, model, monitor, extra)
    finally:
        _cleanup_method()
    assert trainer.current_epoch == EPOCHS, fault  # the fit ran to the end
    assert os.path.exists(os.path.join(root, "ckpt", "last.ckpt")), fault
    with open(os.path.join(trainer.loggers[0].log_dir, "metrics.csv")) as handle:
        epochs = {row["epoch"] for row in csv.DictReader(handle) if row.get("val_loss")}
    assert epochs == {str(e) for e in range(EPOCHS)}, (fault, epochs)  # the other loggers' data are complete
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks and not module._backward_hooks, fault
    assert model.training, fault
    reports = [str(w.message) for w in caught if "CAMMonitor" in str(w.message) and "failed" in str(w.message)]
    if part is None:  # handled without an error: bad images are skipped, a closed writer is reopened by TensorBoard
        assert reports == [], (fault, reports)
        return
    mine = [message for message in reports if part in message]
    assert len(mine) == 1, (fault, reports)  # said once, although it happens at every epoch
    assert "training goes on" in mine[0]
    assert float(trainer.callback_metrics["cam/errors"]) >= 1.0, fault


@pytest.mark.slow
def test_a_method_that_fails_is_switched_off_and_the_others_are_logged(tmp_path: Any) -> None:
    try:
        _raising_method(str(tmp_path))
        pl.seed_everything(0)
        monitor = cc.CAMMonitor(methods=["gradcam", "fault_method"], target_layer="features", probe=_probe(0), alarm=None, budget=None)
        with pytest.warns(UserWarning, match="method 'fault_method' failed at epoch 0"):
            trainer = _fit_logged(str(tmp_path), TinyNet(), monitor, [])
    finally:
        _cleanup_method()
    assert "cam/gradcam/adcc" in trainer.callback_metrics
    assert "cam/fault_method/adcc" not in trainer.callback_metrics
    assert float(trainer.callback_metrics["cam/errors"]) == 1.0  # switched off: it fails once, not every epoch


def test_every_probe_image_failing_skips_the_runs_and_counts_them(tmp_path: Any) -> None:
    pl.seed_everything(0)
    monitor = cc.CAMMonitor(methods=["gradcam"], target_layer="features", probe=_probe(6), alarm=None, budget=None)
    with pytest.warns(UserWarning, match="every probe image failed at epoch 0"):
        trainer = _fit_logged(str(tmp_path), FailingNet("nan"), monitor, [])
    assert float(trainer.callback_metrics["cam/errors"]) == EPOCHS  # every run skipped and counted
    assert float(trainer.callback_metrics["cam/skipped_images"]) == 6
    assert "cam/gradcam/adcc" not in trainer.callback_metrics


ON_ERROR_RAISE: Dict[str, Callable[[str, pytest.MonkeyPatch], Any]] = {
    "a method raises": lambda root, mp: _raising_method(root),
    "disk full at the TensorBoard writer": lambda root, mp: _png_writes_fail(mp),
}


@pytest.mark.parametrize("fault", list(ON_ERROR_RAISE))
def test_on_error_raise_lets_the_fault_end_the_fit(fault: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    methods = ["gradcam", "fault_method"] if fault == "a method raises" else ["gradcam"]
    try:
        ON_ERROR_RAISE[fault](str(tmp_path), monkeypatch)
        monitor = cc.CAMMonitor(methods=methods, target_layer="features", probe=_probe(0), alarm=None, budget=None, on_error="raise")
        with pytest.raises((RuntimeError, OSError)):
            _fit_logged(str(tmp_path), TinyNet(), monitor, [])
    finally:
        _cleanup_method()


def test_lightnings_own_exception_is_not_replaced(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A training step that raises while image writes are failing: the user sees the training step's error."""
    _png_writes_fail(monkeypatch)

    class Broken(TinyNet):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            if self.current_epoch == 1:
                raise ValueError("the user's own bug")
            return super().training_step(batch, batch_idx)

    monitor = cc.CAMMonitor(methods=["gradcam"], target_layer="features", probe=_probe(0), alarm=None, budget=None, on_error="raise")
    with pytest.raises(ValueError, match="the user's own bug"):
        _fit_logged(str(tmp_path), Broken(), monitor, [])


def test_keyboard_interrupt_in_a_method_is_not_swallowed(tmp_path: Any) -> None:
    calls = {"n": 0}

    @cc.register_method("interrupting", needs=("activations",))
    def interrupting(activations: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] > 1:
            raise KeyboardInterrupt
        return activations.sum(1)

    try:
        model = TinyNet()
        monitor = cc.CAMMonitor(methods=["interrupting"], target_layer="features", probe=_probe(0), alarm=None, budget=None)
        trainer = None
        with pytest.raises((KeyboardInterrupt, SystemExit)):
            trainer = _fit_logged(str(tmp_path), model, monitor, [])
        assert trainer is None
    finally:
        unregister_method("interrupting")
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks, "hooks left after the interrupt"


@pytest.mark.slow
def test_a_monitor_reused_in_a_new_trainer_starts_afresh(tmp_path: Any) -> None:
    """Before: the second fit skipped its epoch 0 (the last run was 'fit, epoch 0') and measured drift against the
    previous model's maps."""
    monitor = cc.CAMMonitor(methods=["gradcam"], target_layer="features", probe=_probe(0), metrics=(), alarm=None, budget=None)
    pl.seed_everything(0)
    first = _fit_logged(str(tmp_path / "a"), TinyNet(), monitor, [])
    assert "cam/gradcam/drift_prev" in first.callback_metrics
    _, second = fit(tmp_path / "b", monitor, seed=1, n_train=16, n_val=8, max_epochs=1, logger=False, num_sanity_val_steps=0)
    assert "cam/gradcam/shortcut_score" in second.callback_metrics  # epoch 0 of the new fit ran
    assert "cam/gradcam/drift_prev" not in second.callback_metrics  # no drift against the other model's maps
    assert set(monitor.history.first) == {"gradcam"} and monitor.history.first["gradcam"].shape == (6, 16, 16)


BAD_STATES = {
    "maps of the wrong type": ({"first_maps": 5}, "first_maps must be a dict"),
    "a map of the wrong rank": ({"previous_maps": {"gradcam": torch.zeros(6, 16)}}, r"previous_maps\['gradcam'\] must be a floating \(N, H, W\)"),
    "last_run not a pair": ({"last_run": 3}, "last_run must be None or a"),
    "not a dict at all": (None, "the entry must be a dict"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(BAD_STATES))
def test_a_bad_checkpoint_entry_is_reported_and_the_run_goes_on(case: str, tmp_path: Any) -> None:
    monitor = cc.CAMMonitor(methods=["gradcam"], target_layer="features", probe=_probe(0), metrics=(), alarm=None, budget=None)
    pl.seed_everything(0)
    _fit_logged(str(tmp_path), TinyNet(), monitor, [])
    change, message = BAD_STATES[case]
    state = None if change is None else {**monitor.state_dict(), **change}
    restored = cc.CAMMonitor(methods=["gradcam"], target_layer="features", probe=_probe(0), alarm=None, budget=None)
    with pytest.warns(UserWarning, match=message):
        restored.load_state_dict(state)  # type: ignore[arg-type]
    assert restored.history.first == {} and restored.state_dict()["last_run"] is None


@pytest.mark.slow
def test_maps_of_another_shape_in_the_checkpoint_reset_the_history(tmp_path: Any) -> None:
    """Before: previous maps of the wrong shape loaded, and the first resumed validation died."""
    monitor = cc.CAMMonitor(methods=["gradcam"], target_layer="features", probe=_probe(0), metrics=(), alarm=None, budget=None)
    pl.seed_everything(0)
    model = TinyNet()
    _fit_logged(str(tmp_path), model, monitor, [])
    state = {**monitor.state_dict(), "previous_maps": {"gradcam": torch.zeros(6, 8, 8)}, "first_maps": {"gradcam": torch.zeros(6, 8, 8)}}
    state["probe_fingerprint"] = None  # only the shapes differ
    restored = cc.CAMMonitor(methods=["gradcam"], target_layer="features", probe=_probe(0), metrics=(), alarm=None, budget=None)
    restored.setup(trainer(tmp_path, [restored], logger=False), model, stage="fit")
    with pytest.warns(UserWarning, match=r"previous_maps\['gradcam'\] have shape \(6, 8, 8\), this run's maps \(6, 16, 16\)|first_maps"):
        restored.load_state_dict(state)
    assert restored.history.first == {}
