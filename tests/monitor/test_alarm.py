"""Tests of the alarm rules (cam_callbacks.monitor.alarm)."""

from __future__ import annotations

import doctest
import math

import pytest
import torch

from cam_callbacks.monitor import alarm
from cam_callbacks.monitor.alarm import DIRECTIONS, AlarmHit, AlarmRule, format_alarm


def test_defaults():
    rule = AlarmRule()
    assert rule.rules() == {
        "energy_in_nuisance_ratio": ("max", 2.0),
        "shortcut_score": ("max", 0.5),
    }
    assert rule.min_energy_in_mask_ratio is None  # off by default: it also fires for a model that has not learnt yet
    assert rule.top_k == 4 and DIRECTIONS == ("max", "min")


def test_no_alarm_on_healthy_metrics():
    metrics = {"energy_in_nuisance_ratio": 0.8, "energy_in_mask_ratio": 2.4, "shortcut_score": 0.05, "adcc": 12.0}
    assert AlarmRule().evaluate(metrics) == []


def test_each_builtin_rule_fires_in_its_direction():
    rule = AlarmRule(min_energy_in_mask_ratio=1.2, min_pointing_game=0.5, max_energy_in_nuisance=0.3)
    metrics = {
        "energy_in_nuisance_ratio": 2.5,
        "energy_in_mask_ratio": 1.1,
        "shortcut_score": 0.7,
        "pointing_game": 0.25,
        "energy_in_nuisance": 0.31,
    }
    hits = rule.evaluate(metrics)
    assert [(h.metric, h.direction, h.value, h.threshold) for h in hits] == [
        ("energy_in_nuisance_ratio", "above", 2.5, 2.0),
        ("energy_in_mask_ratio", "below", 1.1, 1.2),
        ("shortcut_score", "above", 0.7, 0.5),
        ("pointing_game", "below", 0.25, 0.5),
        ("energy_in_nuisance", "above", 0.31, 0.3),
    ]
    assert all(h.method == "" and h.worst == () for h in hits)


def test_threshold_itself_does_not_fire_and_nan_never_fires():
    rule = AlarmRule(min_energy_in_mask_ratio=1.2)
    assert rule.evaluate({"energy_in_nuisance_ratio": 2.0, "energy_in_mask_ratio": 1.2, "shortcut_score": 0.5}) == []
    assert AlarmRule().evaluate({"energy_in_mask_ratio": 0.1}) == []  # the default has no object rule
    assert rule.evaluate({"energy_in_nuisance_ratio": float("nan"), "energy_in_mask_ratio": math.nan}) == []


def test_rules_can_be_switched_off():
    rule = AlarmRule(max_energy_in_nuisance_ratio=None, min_energy_in_mask_ratio=None, max_shortcut_score=None)
    assert rule.rules() == {}
    assert rule.evaluate({"energy_in_nuisance_ratio": 100.0, "shortcut_score": 1.0}) == []


def test_method_is_parsed_from_names_and_tensor_values_accepted():
    metrics = {
        "gradcam/shortcut_score": torch.tensor(0.9),
        "cam/layercam/energy_in_nuisance_ratio": 3.0,
        "cam/layercam/energy_in_mask_ratio": 1.5,  # fine
        "cam/layercam/adcc": 1.0,  # no rule
    }
    hits = AlarmRule().evaluate(metrics)
    assert [(h.method, h.metric) for h in hits] == [("gradcam", "shortcut_score"), ("layercam", "energy_in_nuisance_ratio")]
    assert isinstance(hits[0].value, float) and hits[0].value == pytest.approx(0.9)


def test_worst_images():
    per_image = {
        # max rule: largest first, ties by index, NaN skipped
        "m/energy_in_nuisance_ratio": torch.tensor([1.0, 9.0, float("nan"), 9.0, 4.0, 0.5]),
        # min rule: smallest first
        "m/energy_in_mask_ratio": torch.tensor([2.0, 0.3, 1.0, 0.1, 5.0]),
    }
    metrics = {"m/energy_in_nuisance_ratio": 4.7, "m/energy_in_mask_ratio": 0.9}
    hits = AlarmRule(min_energy_in_mask_ratio=1.2, top_k=3).evaluate(metrics, per_image)
    assert hits[0].worst == (1, 3, 4) and hits[1].worst == (3, 1, 2)
    assert AlarmRule(top_k=0).evaluate(metrics, per_image)[0].worst == ()
    assert AlarmRule(top_k=10).evaluate(metrics, per_image)[0].worst == (1, 3, 4, 0, 5)
    # per-image values under another name are not used
    assert AlarmRule(min_energy_in_mask_ratio=1.2).evaluate({"energy_in_mask_ratio": 0.9}, per_image)[0].worst == ()
    with pytest.raises(ValueError, match=r"\(N,\)"):
        AlarmRule(min_energy_in_mask_ratio=1.2).evaluate(metrics, {"m/energy_in_mask_ratio": torch.zeros(2, 2)})


def test_extra_rules():
    rule = AlarmRule(extra={"adcc": ("min", 50.0), "complexity": ("max", 40.0)})
    hits = rule.evaluate({"gradcam/adcc": 42.0, "gradcam/complexity": 20.0, "gradcam/coherency": 0.0})
    assert [(h.metric, h.direction, h.threshold) for h in hits] == [("adcc", "below", 50.0)]
    assert rule.rules()["complexity"] == ("max", 40.0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_energy_in_nuisance_ratio": -1.0}, "max_energy_in_nuisance_ratio"),
        ({"max_energy_in_nuisance_ratio": float("inf")}, "finite"),
        ({"min_energy_in_mask_ratio": "1.2"}, "min_energy_in_mask_ratio"),
        ({"max_shortcut_score": 1.5}, r"max_shortcut_score must be None \(rule off\) or a number \[0, 1\]"),
        ({"min_pointing_game": -0.1}, "min_pointing_game"),
        ({"max_energy_in_nuisance": 2.0}, "max_energy_in_nuisance"),
        ({"top_k": -1}, "top_k"),
        ({"top_k": 2.0}, "top_k"),
        ({"extra": {"adcc": ("above", 50.0)}}, r"direction must be one of \['max', 'min'\]"),
        ({"extra": {"adcc": 50.0}}, r"\(direction, threshold\) pair with direction in \['max', 'min'\]"),
        ({"extra": {"adcc": ("min", float("nan"))}}, "finite"),
        ({"extra": {"gradcam/adcc": ("min", 1.0)}}, "without '/'"),
        ({"extra": {"shortcut_score": ("max", 0.2)}}, r"set max_shortcut_score=\.\.\. instead"),
        ({"extra": [("adcc", ("min", 1.0))]}, "mapping"),
    ],
)
def test_constructor_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AlarmRule(**kwargs)


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
    """A map set that sits on a fixed corner patch fires the nuisance and shortcut rules."""
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
    hits = AlarmRule().evaluate(metrics, per_image)
    fired = {h.metric: h for h in hits}
    assert set(fired) == {"energy_in_nuisance_ratio", "shortcut_score"}
    assert 5 not in fired["energy_in_nuisance_ratio"].worst and 5 not in fired["shortcut_score"].worst
    assert "shortcut_score" in format_alarm(hits)


def test_docstring_examples():
    result = doctest.testmod(alarm, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 5 and result.failed == 0
