"""The cost budget: expensive methods run less often when the callback would exceed its share of the training time."""

from __future__ import annotations

import time

import pytest

import cam_callbacks as cc
from cam_callbacks.methods.registry import register_method, unregister_method
from cam_callbacks.monitor.budget import CostBudget

from _lightning_models import fit, read_events


def test_strides_share_what_the_cheap_methods_leave():
    budget = CostBudget(0.1, expensive=["scorecam", "reciprocam"])
    budget.start(now=100.0)
    budget.record(["gradcam"], 0.5)
    budget.record(["scorecam"], 6.0)
    budget.record(["reciprocam"], 0.2)
    # 20 s of training: 2 s allowed, 0.5 s used by the cheap methods, 1.5 s left, 0.75 s each
    assert budget.update(6.7, now=126.7) == {"scorecam": 8}  # ceil(6 / 0.75); reciprocam (0.2 s) fits: stride 1
    assert [budget.due(["gradcam", "scorecam", "reciprocam"]) for _ in range(1)] == [["gradcam", "reciprocam"]]
    assert "scorecam cost 6.00 s per run, 30% of the 20.0 s of training" in budget.explain("scorecam")


def test_cheap_methods_over_budget_still_run_and_expensive_ones_keep_a_share():
    budget = CostBudget(0.05, expensive=["scorecam"])
    budget.start(now=0.0)
    budget.record(["gradcam", "layercam"], 2.0)  # alone 4x the 0.5 s allowed by 10 s of training
    budget.record(["scorecam"], 1.0)
    changed = budget.update(3.0, now=13.0)
    # the expensive method gets at least 0.5 / 2 = 0.25 s per run: every 4th run
    assert changed == {"scorecam": 4}
    assert budget.stride("gradcam") == 1 and budget.stride("layercam") == 1


def test_no_budget_no_strides():
    budget = CostBudget(None, expensive=["scorecam"])
    budget.start(now=0.0)
    budget.record(["scorecam"], 100.0)
    assert budget.update(100.0, now=101.0) == {} and budget.stride("scorecam") == 1


@pytest.mark.slow
def test_callback_slows_an_expensive_method_down_and_says_so(tmp_path, caplog):
    @register_method("slow_tail_method_for_test", needs=("activations", "tail_scorer"))
    def slow(activations, tail_scorer):
        time.sleep(0.3)  # far more than 5% of a tiny training epoch
        return activations.sum(1)

    try:
        monitor = cc.CAMMonitor(methods=["gradcam", "slow_tail_method_for_test"], probe=4, metrics=(), alarm=None, step="epoch")
        with caplog.at_level("INFO"):
            _, t = fit(tmp_path, monitor, seed=0, max_epochs=4)
        events = read_events(tmp_path)
        assert events["images"]["cam/gradcam/grid"] == [0, 1, 2, 3]  # cheap: every epoch
        assert events["images"]["cam/slow_tail_method_for_test/grid"] == [0]  # expensive: not again within 4 epochs
        strides = dict(events["scalars"]["cam/slow_tail_method_for_test/every_n_runs"])
        assert min(strides.values()) > 3
        assert "slow_tail_method_for_test now runs every" in caplog.text
        times = [v for _, v in events["scalars"]["cam/time_s"]]
        assert times[0] > 0.3 > max(times[1:])
    finally:
        unregister_method("slow_tail_method_for_test")


def test_bad_budget():
    with pytest.raises(ValueError, match=r"budget must be None or a share of the training time in \(0, 1\]"):
        cc.CAMMonitor(budget=1.5)
