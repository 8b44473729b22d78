"""Probe images that hold NaN or inf (callbacks/runner.py, the dry run at setup): all of them non-finite is refused
before any training step; some of them is said once, and the dry run explains finite images."""

from __future__ import annotations

from typing import List, Tuple

import pytest
import pytorch_lightning as pl
import torch

import cam_callbacks as cc
from cam_callbacks.callbacks.probe import Probe
from cam_callbacks.callbacks.runner import ProbeRunner

from _lightning_models import TinyNet, loaders, make_data, trainer

ALL_NAN = (
    r"CAMMonitor: all 4 probe images are non-finite \(they hold NaN or inf values\), so there is nothing to explain and every "
    r"run would be skipped; check the validation data and its transforms \(e\.g\. a normalisation dividing by a zero std\), or "
    r"pass probe= finite images"
)


def _probe(nonfinite: List[int], n: int = 4) -> Tuple[torch.Tensor, torch.Tensor]:
    images, labels = make_data(n, seed=3)
    for row in nonfinite:
        images[row, 0, 0, 0] = float("nan") if row % 2 == 0 else float("inf")
    return images, labels


def _runner(probe: Tuple[torch.Tensor, torch.Tensor], said: List[str]) -> ProbeRunner:
    runner = ProbeRunner(["gradcam"], "auto", True, cc.ExplainOptions(precision="32"), False, lambda key, message: said.append(message))
    runner.probe = Probe(*probe)
    return runner


def test_an_all_nan_probe_is_refused_by_the_dry_run():
    """Before: setup passed (the dry run's NaN maps went unnoticed), then every run was skipped."""
    with pytest.raises(ValueError, match=ALL_NAN):
        _runner(_probe([0, 1, 2, 3]), []).prepare(TinyNet())


def test_an_all_nan_probe_stops_the_fit_before_training(tmp_path):
    pl.seed_everything(0)
    train, val = loaders(n_train=8, n_val=4)
    with pytest.raises(ValueError, match=ALL_NAN):
        trainer(tmp_path, [cc.CAMMonitor(methods=["gradcam"], probe=_probe([0, 1, 2, 3]))], max_epochs=1, logger=False).fit(TinyNet(), train, val)


def test_some_nonfinite_probe_images_are_said_once_and_the_dry_run_uses_finite_ones():
    said: List[str] = []
    runner = _runner(_probe([0, 1]), said)
    assert runner.prepare(TinyNet()) == ["features"]
    assert said == ["CAMMonitor: 2 of 4 probe images hold NaN or inf values (images 0, 1); they are skipped in every run"]
