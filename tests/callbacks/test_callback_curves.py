"""``CAMMonitor(metrics=(..., "road"))``: deletion/insertion AUC and ROAD logged per method next to (or instead of) faithfulness,
equal to ``cc.perturbation_scores`` on the probe at the last epoch; the argument checked at construction."""

from __future__ import annotations

import pytest

import cam_callbacks as cc

from _lightning_models import fit, read_events


@pytest.mark.slow  # a 2-epoch fit with ROAD's 18 imputed copies per probe image: ~5 s
def test_curves_are_logged_and_equal_the_functional_api(tmp_path):
    monitor = cc.CAMMonitor(methods=["gradcam"], probe=4, metrics=("deletion_auc", "insertion_auc", "road"), budget=None)
    model, trained = fit(tmp_path, monitor, max_epochs=2)
    events = read_events(tmp_path)
    val_steps = sorted(step for step, _ in events["scalars"]["val_loss"])  # logged at Lightning's step, once per epoch
    assert len(val_steps) == 2
    for metric in ("deletion_auc", "insertion_auc", "road"):
        tag = f"cam/gradcam/{metric}"
        assert sorted(step for step, _ in events["scalars"][tag]) == val_steps, tag
    assert "cam/gradcam/adcc" not in events["scalars"]  # "faithfulness" not in metrics: only the curves
    direct = cc.perturbation_scores(model, monitor.probe.images, "gradcam", monitor.layer_name, targets=monitor.probe.labels)
    for metric, value in direct.items():
        assert float(trained.callback_metrics[f"cam/gradcam/{metric}"]) == pytest.approx(value, abs=1e-5)  # fractions, as the functional API


@pytest.mark.parametrize(
    "metrics, message",
    [
        (["deletion"], r"metrics contains 'deletion', which is not a metric; did you mean 'deletion_auc'\? Choose from \['faithfulness', 'deletion_auc'"),
        ([1], "metrics contains 1, which is not a metric"),
        (["road", "road"], "metrics lists a name twice"),
        (1, "metrics must be a list of names"),
    ],
)
def test_bad_curves_refused_at_construction(metrics, message):
    with pytest.raises(ValueError, match=message):
        cc.CAMMonitor(metrics=metrics)


def test_curves_off_by_default():
    assert cc.CAMMonitor().curves is None and cc.CAMMonitor().curves is None
    assert cc.CAMMonitor(metrics=("faithfulness", "road")).curves.metrics == ("road",)
