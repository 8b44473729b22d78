"""The callback's per-class shortcut wiring (callbacks/shortcut_watch.py) on a hand-set model: outcome in, confirmed hits out."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cam_callbacks.callbacks.shortcut_watch import probe_outcome, shortcut_hits
from cam_callbacks.engine.result import Explanation
from cam_callbacks.monitor.alarm import ShortcutAlarm
from cam_callbacks.monitor.history import MapHistory
from cam_callbacks.render.publish import ProbeView


class Reader(nn.Module):
    """Class 1 wins by ``2 v - 4``, ``v`` = 8 x the top-left 3x3 mean of channel 0 when ``corner``, else that of the object (rows 8-10, columns 1-3)."""

    def __init__(self, corner: bool) -> None:
        super().__init__()
        self.corner = corner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        part = x[:, 0, :3, :3] if self.corner else x[:, 0, 8:11, 1:4]
        value = 8 * part.mean(dim=(1, 2))
        return torch.stack([4 - value, value], dim=1)


def probe():
    """16 images of 12x12; class 1 has a bright corner and a bright object; maps of class 1 sit on the corner."""
    labels = torch.arange(16) % 2
    images = torch.zeros(16, 3, 12, 12)
    images[labels == 1, 0, :3, :3] = 1.0
    images[labels == 1, 0, 8:11, 1:4] = 1.0
    maps = torch.zeros(16, 12, 12)
    maps[labels == 1, :3, :3] = 1.0
    for i in range(0, 16, 2):  # class 0: spots that move
        maps[i, i % 9 : i % 9 + 3, (2 * i) % 9 : (2 * i) % 9 + 3] = 1.0
    return images, labels, maps


def run(model: nn.Module, rule: ShortcutAlarm):
    images, labels, maps = probe()
    with torch.no_grad():
        logits = model(images)
    view = ProbeView(images, labels, None, None, torch.arange(16), "softmax")
    explanation = Explanation({"gradcam": maps}, logits, labels, "layer")
    outcome = probe_outcome(explanation, view, rule)
    analyses = MapHistory().analyze({"gradcam": maps}, **outcome)
    scalars: dict = {}
    return outcome, analyses, shortcut_hits(rule, analyses, model, view, scalars, "cam"), scalars, logits


def test_probe_outcome_is_right_or_wrong_and_confidence():
    rule = ShortcutAlarm(score=0.3, min_occlusion_effect=0.1)
    outcome, _, _, _, logits = run(Reader(corner=True), rule)
    _, labels, _ = probe()
    assert torch.equal(outcome["targets"], labels) and outcome["clusters"] == rule.clusters
    assert torch.equal(outcome["correct"], logits.argmax(1) == labels)
    assert torch.allclose(outcome["confidence"], torch.softmax(logits, 1)[torch.arange(16), labels])
    images, labels, maps = probe()
    explanation = Explanation({"gradcam": maps}, logits, labels, "layer")
    view = ProbeView(images, None, None, None, torch.arange(16), "softmax")
    assert probe_outcome(explanation, view, rule)["correct"] is None  # explaining predictions: right or wrong unknown
    assert probe_outcome(explanation, view, None) == {}  # no per-class rule: no per-class findings
    assert probe_outcome(explanation, view._replace(probability="sigmoid"), rule) == {}


def test_a_region_the_model_reads_is_confirmed():
    rule = ShortcutAlarm(score=0.3, min_accuracy=0.9, min_occlusion_effect=0.1)
    _, analyses, hits, scalars, _ = run(Reader(corner=True), rule)
    assert analyses["gradcam"].scalars["class_shortcut_class"] == 1.0
    assert [(h.class_index, h.box) for h in hits] == [(1, (0, 0, 3, 3))]
    # hiding the corner (filled with the image's mean, 18/144) takes class 1 from sigmoid(2 * 8 - 4) to sigmoid(2 * 1 - 4);
    # the control (the corner shifted by 6, 6) covers nothing the model reads
    expected = torch.sigmoid(torch.tensor(12.0)) - torch.sigmoid(torch.tensor(-2.0))
    assert scalars["cam/gradcam/occlusion_effect"] == pytest.approx(float(expected), abs=1e-5)
    assert all(i % 2 == 1 for i in hits[0].worst)


def test_a_region_the_model_ignores_is_not():
    rule = ShortcutAlarm(score=0.3, min_accuracy=0.9, min_occlusion_effect=0.1)
    _, _, hits, scalars, _ = run(Reader(corner=False), rule)  # same maps, but the model reads the object
    assert hits == [] and scalars["cam/gradcam/occlusion_effect"] == pytest.approx(0.0, abs=1e-6)
