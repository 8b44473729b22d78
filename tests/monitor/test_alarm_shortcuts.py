"""The per-class rule, ShortcutAlarm: suspects, the "still guessing" gate, occlusion confirmation, the evidence in the hit."""

from __future__ import annotations

import math

import pytest
import torch

from cam_callbacks.metrics.shortcuts import find_shortcuts
from cam_callbacks.monitor.alarm import AlarmHit, ShortcutAlarm, format_alarm


def findings(accuracy_of_class0: float, confidence: float = 0.95, with_correct: bool = True):
    """Class 0 (8 maps) lights the top-left 4x4 corner; classes 1 and 2 look at moving spots."""
    maps = torch.zeros(24, 16, 16)
    labels = torch.arange(24) % 3
    maps[labels == 0, :4, :4] = 1.0
    for i in (labels != 0).nonzero().flatten().tolist():
        y, x = (3 * i) % 12, (5 * i) % 12
        maps[i, y : y + 4, x : x + 4] = 1.0
    correct = torch.ones(24, dtype=torch.bool)
    wrong = (labels == 0).nonzero().flatten()[: round((1 - accuracy_of_class0) * 8)]
    correct[wrong] = False
    conf = torch.full((24,), confidence)
    return find_shortcuts(maps, labels, correct=correct if with_correct else None, confidence=conf, clusters=0)


def test_a_learned_class_with_a_shared_region_fires_with_its_evidence():
    rule = ShortcutAlarm(score=0.3, min_accuracy=0.9, min_confidence=0.9, min_occlusion_effect=0.1)
    found = findings(1.0)
    suspects = rule.suspects(found)
    assert [found.candidates[i].class_index for i in suspects] == [0]
    hits = rule.evaluate("gradcam", found, {suspects[0]: 0.4})
    assert len(hits) == 1
    hit = hits[0]
    assert (hit.method, hit.metric, hit.class_index, hit.box, hit.direction) == ("gradcam", "class_shortcut_score", 0, (0, 0, 4, 4), "above")
    # the maps come without object masks: the bound is max_unmasked_class_shortcut_score (default 0.4), said in the hit
    assert hit.value == pytest.approx(found.candidates[suspects[0]].score) and hit.threshold == 0.4
    evidence = dict(hit.evidence)
    assert evidence["accuracy"] == 1.0 and evidence["occlusion effect"] == 0.4 and evidence["class size"] == 8
    assert len(hit.worst) == 4 and all(i % 3 == 0 for i in hit.worst)
    assert "class 0, rows 0-3, columns 0-3" in hit.message and "occlusion effect 0.4" in hit.message
    text = format_alarm(hits)
    assert "| gradcam | class_shortcut_score |" in text and "- gradcam, class 0, rows 0-3, columns 0-3: class size 8" in text


def test_a_class_still_guessed_does_not_fire():
    rule = ShortcutAlarm(score=0.3, min_accuracy=0.9, min_confidence=0.9)
    assert rule.evaluate("gradcam", findings(0.5, confidence=0.5)) == []  # neither accurate nor confident
    assert len(rule.evaluate("gradcam", findings(0.5, confidence=0.95))) == 1  # confidently wrong: past guessing
    assert len(rule.evaluate("gradcam", findings(1.0, confidence=0.3))) == 1  # right
    assert ShortcutAlarm(score=0.3, min_accuracy=None).evaluate("m", findings(1.0, confidence=0.5)) == []
    assert len(ShortcutAlarm(score=0.3, min_accuracy=None, min_confidence=None).evaluate(
        "m", findings(0.0, confidence=0.1)
    )) == 1  # no gate at all
    unknown = findings(0.0, confidence=float("nan"), with_correct=False)
    assert math.isnan(unknown.candidates[0].accuracy) and len(rule.evaluate("gradcam", unknown)) == 1


def test_occlusion_decides_when_measured():
    rule = ShortcutAlarm(score=0.3, min_occlusion_effect=0.1)
    found = findings(1.0)
    index = rule.suspects(found)[0]
    assert rule.evaluate("gradcam", found, {index: 0.05}) == []  # incidental: hiding it changes nothing
    assert len(rule.evaluate("gradcam", found, {})) == 1  # not measured (no model): the score decides
    assert len(ShortcutAlarm(score=0.3, min_occlusion_effect=None).evaluate("m", found, {index: 0.0})) == 1


def test_threshold_and_how_to_switch_it_off():
    found = findings(1.0)
    assert ShortcutAlarm(score=0.99, unmasked_score=0.99).suspects(found) == []
    with pytest.raises(ValueError, match="leave ShortcutAlarm out of alarm= to switch it off"):
        ShortcutAlarm(score=None)


def test_defaults_from_the_benchmark():
    rule = ShortcutAlarm()
    assert (rule.score, rule.min_accuracy, rule.min_confidence, rule.min_occlusion_effect) == (0.15, None, 0.8, 0.1)
    assert rule.clusters == 2 and rule.top_k == 4 and rule.stop is False
    assert (rule.unmasked_score, rule.min_consistency) == (0.4, None)


def test_validation():
    with pytest.raises(ValueError, match=r"ShortcutAlarm: score must be None \(off\) or a number in \[0, 1\], got 1.5"):
        ShortcutAlarm(score=1.5)
    with pytest.raises(ValueError, match="ShortcutAlarm: min_confidence"):
        ShortcutAlarm(min_confidence=1.5)
    with pytest.raises(ValueError, match="ShortcutAlarm: clusters must be an int >= 0"):
        ShortcutAlarm(clusters=-1)
    with pytest.raises(ValueError, match="ShortcutAlarm: stop must be True or False"):
        ShortcutAlarm(stop=1)


def test_plain_hits_read_as_before():
    hit = AlarmHit("gradcam", "shortcut_score", 0.9, 0.5, "above", (1,))
    assert hit.where == "" and hit.message == "gradcam: shortcut_score = 0.9 is above 0.5 (worst probe images: 1)"
    assert "\n- " not in format_alarm([hit])


def _corner_and_moving(corner_strength: float, masks: bool):
    """Class 0's maps: a fixed 4x4 top-left corner of height ``corner_strength`` over a moving 4x4 spot of height 1;
    class 1: the moving spot only. With ``masks``, each image's object is its moving spot."""
    maps, labels = torch.zeros(16, 16, 16), torch.arange(16) % 2
    objects = torch.zeros(16, 16, 16, dtype=torch.bool)
    for i in range(16):
        y, x = 4 + (3 * i) % 8, 4 + (5 * i) % 8
        maps[i, y : y + 4, x : x + 4] = 1.0
        objects[i, y : y + 4, x : x + 4] = True
    maps[labels == 0, :4, :4] = corner_strength
    return find_shortcuts(maps, labels, masks=objects if masks else None, confidence=torch.full((16,), 0.95), clusters=0)


def test_maps_without_object_masks_are_held_to_the_unmasked_bound():
    rule = ShortcutAlarm()  # score 0.15 with masks, unmasked_score 0.4 without
    unmasked, masked = _corner_and_moving(0.5, masks=False), _corner_and_moving(0.5, masks=True)
    score = next(c.score for c in unmasked.candidates if c.class_index == 0)
    assert 0.15 < score < 0.4, score  # the case the two bounds decide differently
    assert rule.score_limit(unmasked.candidates[0]) == 0.4 and rule.evaluate("m", unmasked) == []
    masked_class0 = next(c for c in masked.candidates if c.class_index == 0)
    assert masked_class0.score > 0.15 and rule.score_limit(masked_class0) == 0.15
    hits = rule.evaluate("m", masked)
    assert [(h.class_index, h.threshold) for h in hits] == [(0, 0.15)]
    same = ShortcutAlarm(unmasked_score=None)  # one bound for both
    assert [(h.class_index, h.threshold) for h in same.evaluate("m", unmasked)] == [(0, 0.15)]
    with pytest.raises(ValueError, match="unmasked_score must be None"):
        ShortcutAlarm(unmasked_score=1.5)


def test_the_consistency_gate_keeps_maps_that_disagree_quiet():
    found = findings(1.0)  # class 0: identical corner maps (consistency 1); classes 1, 2: moving spots
    class0 = next(c for c in found.candidates if c.class_index == 0)
    assert class0.consistency == pytest.approx(1.0)
    assert len(ShortcutAlarm(unmasked_score=0.3, min_consistency=0.99).evaluate("m", found)) == 1
    mixed = _corner_and_moving(1.0, masks=False)  # class 0: the corner plus a spot that moves: a high score, maps agree less
    best = mixed.candidates[0]
    assert best.class_index == 0 and best.score > 0.4 and 0.3 < best.consistency < 0.8
    assert len(ShortcutAlarm().evaluate("m", mixed)) == 1
    assert ShortcutAlarm(min_consistency=0.8).evaluate("m", mixed) == []
    with pytest.raises(ValueError, match="min_consistency must be None"):
        ShortcutAlarm(min_consistency=2.0)
