"""benchmarks/bench_shortcut_detection.py: its offline rule equals the callback's path, its rates count right (tiny runs)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from cam_callbacks.monitor.alarm import DEFAULT_ALARM, shortcut_policy

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_shortcut_detection.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_shortcut_detection", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def record(new: bool, old: bool = False, candidates=()):
    return {g: {"new": new, "old": old, "hits": [], "candidates": list(candidates)} for g in ("nuisance", "objects", "none")}


def test_rates_count_detections_false_alarms_and_first_epochs(bench):
    runs = [
        {"kind": "patch", "classes": "one", "seed": 1, "epochs": [record(False), record(True), record(True)]},
        {"kind": "frame", "classes": "all", "seed": 1, "epochs": [record(False), record(False), record(False)]},
        {"kind": "clean", "classes": "-", "seed": 1, "epochs": [record(False), record(False), record(True)]},
        {"kind": "clean", "classes": "-", "seed": 1, "epochs": [record(False), record(False), record(False)]},
    ]
    rates = bench.rates(runs, "none", lambda e, g: e[g]["new"])
    assert rates == {"detected": 1, "shortcut_runs": 2, "false": 1, "clean_runs": 2, "epochs": 2.0}


def test_offline_rule_follows_alarm_rule(bench):
    cand = {"class": 1, "score": 0.4, "accuracy": float("nan"), "confidence": 0.85, "effect": 0.3}
    epoch = record(False, candidates=[cand])
    assert bench._fires(epoch, "none", 0.15, None, 0.1, False, 0.8)
    assert not bench._fires(epoch, "none", 0.15, None, 0.5, False, 0.8)  # occlusion does not confirm
    assert not bench._fires(epoch, "none", 0.15, None, 0.1, False, 0.9)  # still guessing
    assert not bench._fires(epoch, "none", 0.5, None, 0.1, False, 0.8)  # score too low


@pytest.mark.slow
def test_a_tiny_run_records_what_the_callback_path_decided(bench):
    rule = DEFAULT_ALARM
    policy = shortcut_policy(rule)
    run = bench.train_run("watermark", "one", 1, 1, epochs=2, num_train=128, num_probe=24, rule=rule)
    assert run["kind"] == "watermark" and len(run["epochs"]) == 2
    limits = (policy.score, policy.min_accuracy, policy.min_occlusion_effect)
    for epoch in run["epochs"]:
        assert 0.0 <= epoch["val_acc"] <= 1.0
        for regime in bench.REGIMES:
            # the table rebuilds the new rule from the recorded candidates: it must agree with ShortcutAlarm + shortcut_hits
            assert bench._fires(epoch, regime, *limits, False, policy.min_confidence) == epoch[regime]["new"]
    text = bench.table([run], rule)
    assert "| none | new (default alarm) |" in text and "| watermark (one) |" in text
