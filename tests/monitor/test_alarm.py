"""Tests of the alarm policies' thresholds (ThresholdAlarm), the default alarm, hits and their Markdown."""

from __future__ import annotations

import dataclasses
import doctest
import math

import pytest
import torch

from cam_callbacks.monitor import alarm
from cam_callbacks.monitor.alarm import (
    ALARM_METRICS,
    DEFAULT_ALARM,
    AlarmHit,
    ShortcutAlarm,
    ThresholdAlarm,
    format_alarm,
    shortcut_policy,
    stops_training,
    threshold_hits,
)


def test_default_alarm():
    assert DEFAULT_ALARM == (
        ThresholdAlarm("energy_in_nuisance_ratio", above=2.0),
        ThresholdAlarm("shortcut_score", above=0.5),
        ShortcutAlarm(),
    )
    # no bound on the object's share by default: it also fires for a model that has not learnt yet
    assert not any(isinstance(p, ThresholdAlarm) and p.metric == "energy_in_mask_ratio" for p in DEFAULT_ALARM)
    assert all(p.top_k == 4 and not p.stop for p in DEFAULT_ALARM)
    assert shortcut_policy(DEFAULT_ALARM) == ShortcutAlarm() and shortcut_policy(DEFAULT_ALARM[:2]) is None


def test_no_alarm_on_healthy_metrics():
    metrics = {"energy_in_nuisance_ratio": 0.8, "energy_in_mask_ratio": 2.4, "shortcut_score": 0.05, "adcc": 0.12}
    assert threshold_hits(DEFAULT_ALARM, metrics) == []


def test_each_bound_fires_in_its_direction():
    policies = [
        ThresholdAlarm("energy_in_nuisance_ratio", above=2.0),
        ThresholdAlarm("energy_in_mask_ratio", below=1.2),
        ThresholdAlarm("shortcut_score", above=0.5),
        ThresholdAlarm("pointing_game", below=0.5),
        ThresholdAlarm("energy_in_nuisance", above=0.3),
    ]
    metrics = {
        "energy_in_nuisance_ratio": 2.5,
        "energy_in_mask_ratio": 1.1,
        "shortcut_score": 0.7,
        "pointing_game": 0.25,
        "energy_in_nuisance": 0.31,
    }
    hits = threshold_hits(policies, metrics)
    assert [(h.metric, h.direction, h.value, h.threshold) for h in hits] == [
        ("energy_in_nuisance_ratio", "above", 2.5, 2.0),
        ("energy_in_mask_ratio", "below", 1.1, 1.2),
        ("shortcut_score", "above", 0.7, 0.5),
        ("pointing_game", "below", 0.25, 0.5),
        ("energy_in_nuisance", "above", 0.31, 0.3),
    ]
    assert all(h.method == "" and h.worst == () and h.class_index is None for h in hits)


def test_the_bound_itself_does_not_fire_and_nan_never_fires():
    below = ThresholdAlarm("energy_in_mask_ratio", below=1.2)
    assert below.evaluate({"energy_in_mask_ratio": 1.2}) == []
    assert threshold_hits(DEFAULT_ALARM, {"energy_in_nuisance_ratio": 2.0, "shortcut_score": 0.5}) == []
    assert threshold_hits(DEFAULT_ALARM, {"energy_in_mask_ratio": 0.1}) == []  # no object bound by default
    assert below.evaluate({"energy_in_mask_ratio": math.nan}) == []
    assert ThresholdAlarm("energy_in_nuisance_ratio", above=2.0).evaluate({"energy_in_nuisance_ratio": float("nan")}) == []


def test_method_is_parsed_from_names_and_tensor_values_accepted():
    metrics = {
        "gradcam/shortcut_score": torch.tensor(0.9),
        "cam/layercam/energy_in_nuisance_ratio": 3.0,
        "cam/layercam/energy_in_mask_ratio": 1.5,  # no bound on it
        "cam/layercam/adcc": 1.0,  # no bound on it
    }
    hits = threshold_hits(DEFAULT_ALARM, metrics)
    assert sorted((h.method, h.metric) for h in hits) == [("gradcam", "shortcut_score"), ("layercam", "energy_in_nuisance_ratio")]
    assert all(isinstance(h.value, float) for h in hits)
    assert [h.value for h in hits if h.metric == "shortcut_score"] == [pytest.approx(0.9)]


def test_worst_images():
    per_image = {
        # an "above" bound: largest first, ties by index, NaN skipped
        "m/energy_in_nuisance_ratio": torch.tensor([1.0, 9.0, float("nan"), 9.0, 4.0, 0.5]),
        # a "below" bound: smallest first
        "m/energy_in_mask_ratio": torch.tensor([2.0, 0.3, 1.0, 0.1, 5.0]),
    }
    metrics = {"m/energy_in_nuisance_ratio": 4.7, "m/energy_in_mask_ratio": 0.9}
    above = ThresholdAlarm("energy_in_nuisance_ratio", above=2.0, top_k=3)
    below = ThresholdAlarm("energy_in_mask_ratio", below=1.2, top_k=3)
    assert above.evaluate(metrics, per_image)[0].worst == (1, 3, 4)
    assert below.evaluate(metrics, per_image)[0].worst == (3, 1, 2)
    assert dataclasses.replace(above, top_k=0).evaluate(metrics, per_image)[0].worst == ()
    assert dataclasses.replace(above, top_k=10).evaluate(metrics, per_image)[0].worst == (1, 3, 4, 0, 5)
    # per-image values under another name are not used
    assert below.evaluate({"energy_in_mask_ratio": 0.9}, per_image)[0].worst == ()
    with pytest.raises(ValueError, match=r"\(N,\)"):
        below.evaluate(metrics, {"m/energy_in_mask_ratio": torch.zeros(2, 2)})


def test_any_logged_metric_can_be_bounded():
    policies = [ThresholdAlarm("adcc", below=0.5), ThresholdAlarm("complexity", above=0.4)]
    hits = threshold_hits(policies, {"gradcam/adcc": 0.42, "gradcam/complexity": 0.2, "gradcam/coherency": 0.0})
    assert [(h.metric, h.direction, h.threshold) for h in hits] == [("adcc", "below", 0.5)]
    assert set(ALARM_METRICS) >= {"adcc", "road", "deletion_auc", "energy_in_nuisance_ratio", "drift_prev"}
    assert "class_shortcut_class" not in ALARM_METRICS  # a class index is no quantity to bound


@pytest.mark.parametrize(
    "args, kwargs, message",
    [
        (("energy_in_nuisance_ratio",), {"above": -1.0}, r"above must be None \(off\) or a number >= 0"),
        (("energy_in_nuisance_ratio",), {"above": float("inf")}, "finite"),
        (("energy_in_mask_ratio",), {"below": "1.2"}, "below must be None"),
        (("shortcut_score",), {"above": 1.5}, r"ThresholdAlarm\('shortcut_score'\): above must be None \(off\) or a number in \[0, 1\]"),
        (("adcc",), {"below": 50.0}, r"in \[0, 1\], got 50.0"),  # a bound in percent: scores are fractions
        (("pointing_game",), {"below": -0.1}, "below"),
        (("energy_in_nuisance",), {"above": 2.0}, r"in \[0, 1\]"),
        (("adcc",), {}, "exactly one of above= and below="),
        (("adcc",), {"above": 0.2, "below": 0.9}, "exactly one of above= and below="),
        (("adcc",), {"below": 0.5, "top_k": -1}, "top_k must be an int >= 0"),
        (("adcc",), {"below": 0.5, "top_k": 2.0}, "top_k"),
        (("adcc",), {"below": 0.5, "stop": "yes"}, "stop must be True or False"),
        (("ADCC",), {"below": 0.5}, "did you mean 'adcc'"),
        (("gradcam/adcc",), {"below": 0.5}, "did you mean .adcc.*the metric.s name alone"),
        (("accuracy",), {"below": 0.5}, r"not a logged metric\. Choose from"),
        (("energy_in_nuisance_ration",), {"above": 2.0}, "did you mean 'energy_in_nuisance_ratio'"),
    ],
)
def test_threshold_constructor_errors(args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        ThresholdAlarm(*args, **kwargs)


def test_policies_are_frozen_values():
    rule = ThresholdAlarm("adcc", below=0.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        rule.below = 0.2  # type: ignore[misc]
    assert rule == ThresholdAlarm("adcc", below=0.5) and hash(rule) == hash(ThresholdAlarm("adcc", below=0.5))


def test_stop_follows_the_policy_that_fired():
    nuisance = AlarmHit("gradcam", "energy_in_nuisance_ratio", 3.0, 2.0, "above")
    per_class = AlarmHit("gradcam", "class_shortcut_score", 0.6, 0.15, "above", class_index=1)
    policies = (ThresholdAlarm("energy_in_nuisance_ratio", above=2.0, stop=True), ShortcutAlarm())
    assert stops_training(policies, [nuisance]) and not stops_training(policies, [per_class])
    policies = (ThresholdAlarm("energy_in_nuisance_ratio", above=2.0), ShortcutAlarm(stop=True))
    assert not stops_training(policies, [nuisance]) and stops_training(policies, [per_class])
    assert not stops_training(DEFAULT_ALARM, [nuisance, per_class])


def test_hit_message():
    hit = AlarmHit("gradcam", "energy_in_nuisance_ratio", 6.54321, 2.0, "above", (1, 3))
    assert hit.message == "gradcam: energy_in_nuisance_ratio = 6.543 is above 2 (worst probe images: 1, 3)"
    assert AlarmHit("", "shortcut_score", 0.7, 0.5, "above").message == "shortcut_score = 0.7 is above 0.5"


def test_format_alarm_markdown():
    hits = [
        AlarmHit("gradcam", "shortcut_score", 0.81234, 0.5, "above", (4, 0, 7)),
        AlarmHit("", "energy_in_mask_ratio", 1.05, 1.2, "below"),
    ]
    assert format_alarm(hits, title="Epoch 7").splitlines() == [
        "**Epoch 7**: 2 rules fired.",
        "",
        "| method | metric | value | rule | worst probe images |",
        "|---|---|---|---|---|",
        "| gradcam | shortcut_score | 0.8123 | > 0.5 | 4, 0, 7 |",
        "| - | energy_in_mask_ratio | 1.05 | < 1.2 | - |",
    ]
    assert format_alarm([]) == "**CAM alarm**: no rule fired."


def test_end_to_end_with_localization_and_shortcut():
    """A map set that sits on a fixed corner patch fires the nuisance and shortcut bounds of the default alarm."""
    from cam_callbacks.datasets.scenarios import make_scenario
    from cam_callbacks.metrics.drift import shortcut_score
    from cam_callbacks.metrics.localization import localization_scores, localization_summary

    batch = make_scenario(16, scenario="small", shortcut=True, image_size=32, seed=0)
    maps = batch.nuisance_masks.float() * 0.9 + 0.1 * batch.masks.float()
    maps[5] = batch.masks[5].float()  # one image explained by its object
    scores = localization_scores(maps, batch.masks, batch.nuisance_masks)
    report = shortcut_score(maps)
    metrics = {f"gradcam/{k}": v for k, v in localization_summary(scores, batch.masks, batch.nuisance_masks).items()}
    metrics["gradcam/shortcut_score"] = float(report.score)
    per_image = {f"gradcam/{k}": v for k, v in scores.items()}
    per_image["gradcam/shortcut_score"] = report.per_image
    hits = threshold_hits(DEFAULT_ALARM, metrics, per_image)
    fired = {h.metric: h for h in hits}
    assert set(fired) == {"energy_in_nuisance_ratio", "shortcut_score"}
    assert 5 not in fired["energy_in_nuisance_ratio"].worst and 5 not in fired["shortcut_score"].worst
    assert "shortcut_score" in format_alarm(hits)


def test_docstring_examples():
    result = doctest.testmod(alarm, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 5 and result.failed == 0
