"""The per-class rule of AlarmRule: suspects, the "still guessing" gate, occlusion confirmation, the evidence in the hit."""

from __future__ import annotations

import math

import pytest
import torch

from cam_callbacks.metrics.shortcuts import find_shortcuts
from cam_callbacks.monitor.alarm import AlarmHit, AlarmRule, format_alarm


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
    rule = AlarmRule(max_class_shortcut_score=0.3, min_class_accuracy=0.9, min_class_confidence=0.9, min_occlusion_effect=0.1)
    found = findings(1.0)
    suspects = rule.shortcut_suspects(found)
    assert [found.candidates[i].class_index for i in suspects] == [0]
    hits = rule.evaluate_shortcuts("gradcam", found, {suspects[0]: 0.4})
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
    rule = AlarmRule(max_class_shortcut_score=0.3, min_class_accuracy=0.9, min_class_confidence=0.9)
    assert rule.evaluate_shortcuts("gradcam", findings(0.5, confidence=0.5)) == []  # neither accurate nor confident
    assert len(rule.evaluate_shortcuts("gradcam", findings(0.5, confidence=0.95))) == 1  # confidently wrong: past guessing
    assert len(rule.evaluate_shortcuts("gradcam", findings(1.0, confidence=0.3))) == 1  # right
    assert AlarmRule(max_class_shortcut_score=0.3, min_class_accuracy=None).evaluate_shortcuts("m", findings(1.0, confidence=0.5)) == []
    assert len(AlarmRule(max_class_shortcut_score=0.3, min_class_accuracy=None, min_class_confidence=None).evaluate_shortcuts(
        "m", findings(0.0, confidence=0.1)
    )) == 1  # no gate at all
    unknown = findings(0.0, confidence=float("nan"), with_correct=False)
    assert math.isnan(unknown.candidates[0].accuracy) and len(rule.evaluate_shortcuts("gradcam", unknown)) == 1


def test_occlusion_decides_when_measured():
    rule = AlarmRule(max_class_shortcut_score=0.3, min_occlusion_effect=0.1)
    found = findings(1.0)
    index = rule.shortcut_suspects(found)[0]
    assert rule.evaluate_shortcuts("gradcam", found, {index: 0.05}) == []  # incidental: hiding it changes nothing
    assert len(rule.evaluate_shortcuts("gradcam", found, {})) == 1  # not measured (no model): the score decides
    assert len(AlarmRule(max_class_shortcut_score=0.3, min_occlusion_effect=None).evaluate_shortcuts("m", found, {index: 0.0})) == 1


def test_rule_off_and_threshold():
    found = findings(1.0)
    assert AlarmRule(max_class_shortcut_score=None).shortcut_suspects(found) == []
    assert AlarmRule(max_class_shortcut_score=0.99, max_unmasked_class_shortcut_score=0.99).shortcut_suspects(found) == []
    assert AlarmRule(max_class_shortcut_score=None, max_unmasked_class_shortcut_score=0.1).shortcut_suspects(found) == []  # off


def test_defaults_from_the_benchmark():
    rule = AlarmRule()
    assert (rule.max_class_shortcut_score, rule.min_class_accuracy, rule.min_class_confidence, rule.min_occlusion_effect) == (0.15, None, 0.8, 0.1)
    assert rule.shortcut_clusters == 2 and "class_shortcut_score" not in rule.rules()  # not a name-based rule
    assert (rule.max_unmasked_class_shortcut_score, rule.min_class_consistency) == (0.4, None)


def test_validation():
    with pytest.raises(ValueError, match="max_class_shortcut_score"):
        AlarmRule(max_class_shortcut_score=1.5)
    with pytest.raises(ValueError, match="min_class_confidence"):
        AlarmRule(min_class_confidence=1.5)
    with pytest.raises(ValueError, match="shortcut_clusters"):
        AlarmRule(shortcut_clusters=-1)


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
    rule = AlarmRule()  # max_class_shortcut_score 0.15 with masks, max_unmasked_class_shortcut_score 0.4 without
    unmasked, masked = _corner_and_moving(0.5, masks=False), _corner_and_moving(0.5, masks=True)
    score = next(c.score for c in unmasked.candidates if c.class_index == 0)
    assert 0.15 < score < 0.4, score  # the case the two bounds decide differently
    assert rule.class_score_limit(unmasked.candidates[0]) == 0.4 and rule.evaluate_shortcuts("m", unmasked) == []
    masked_class0 = next(c for c in masked.candidates if c.class_index == 0)
    assert masked_class0.score > 0.15 and rule.class_score_limit(masked_class0) == 0.15
    hits = rule.evaluate_shortcuts("m", masked)
    assert [(h.class_index, h.threshold) for h in hits] == [(0, 0.15)]
    same = AlarmRule(max_unmasked_class_shortcut_score=None)  # one bound for both
    assert [(h.class_index, h.threshold) for h in same.evaluate_shortcuts("m", unmasked)] == [(0, 0.15)]
    with pytest.raises(ValueError, match="max_unmasked_class_shortcut_score must be None"):
        AlarmRule(max_unmasked_class_shortcut_score=1.5)


def test_the_consistency_gate_keeps_maps_that_disagree_quiet():
    found = findings(1.0)  # class 0: identical corner maps (consistency 1); classes 1, 2: moving spots
    class0 = next(c for c in found.candidates if c.class_index == 0)
    assert class0.consistency == pytest.approx(1.0)
    assert len(AlarmRule(max_unmasked_class_shortcut_score=0.3, min_class_consistency=0.99).evaluate_shortcuts("m", found)) == 1
    mixed = _corner_and_moving(1.0, masks=False)  # class 0: the corner plus a spot that moves: a high score, maps agree less
    best = mixed.candidates[0]
    assert best.class_index == 0 and best.score > 0.4 and 0.3 < best.consistency < 0.8
    assert len(AlarmRule().evaluate_shortcuts("m", mixed)) == 1
    assert AlarmRule(min_class_consistency=0.8).evaluate_shortcuts("m", mixed) == []
    with pytest.raises(ValueError, match="min_class_consistency must be None"):
        AlarmRule(min_class_consistency=2.0)
