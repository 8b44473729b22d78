"""MapHistory (drift against earlier runs, skipped rows, state round trip) and AlarmState (fired / changed / cleared)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cam_callbacks.monitor.alarm import AlarmHit, AlarmState
from cam_callbacks.monitor.history import MapHistory


def _np_pearson_rows(a, b):
    a, b = a.reshape(a.shape[0], -1).astype(np.float64), b.reshape(b.shape[0], -1).astype(np.float64)
    x, y = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
    den = np.sqrt((x * x).sum(1) * (y * y).sum(1))
    return np.where(den > 0, (x * y).sum(1) / np.where(den > 0, den, 1.0), 0.0)


@pytest.fixture
def runs():
    g = torch.Generator().manual_seed(0)
    return [torch.rand(5, 6, 6, generator=g) for _ in range(3)]


def test_first_run_has_no_drift_and_becomes_first_and_previous(runs):
    history = MapHistory()
    analysis = history.analyze({"gradcam": runs[0]})["gradcam"]
    assert "drift_prev" not in analysis.scalars and "drift_first" not in analysis.scalars
    assert "drift_prev" not in analysis.per_image
    assert history.methods == ["gradcam"]
    assert torch.equal(history.first["gradcam"], runs[0]) and torch.equal(history.previous["gradcam"], runs[0])
    assert "shortcut_score" in analysis.scalars


def test_drift_is_the_numpy_pearson_against_previous_and_first(runs):
    history = MapHistory()
    history.analyze({"gradcam": runs[0]})
    second = history.analyze({"gradcam": runs[1]})["gradcam"]
    want = _np_pearson_rows(runs[1].numpy(), runs[0].numpy())
    np.testing.assert_allclose(second.per_image["drift_prev"].numpy(), want, rtol=1e-6, atol=1e-7)
    assert second.scalars["drift_prev"] == pytest.approx(want.mean(), abs=1e-6)
    assert second.scalars["drift_first"] == pytest.approx(want.mean(), abs=1e-6)  # first == previous here
    third = history.analyze({"gradcam": runs[2]})["gradcam"]
    assert third.scalars["drift_prev"] == pytest.approx(_np_pearson_rows(runs[2].numpy(), runs[1].numpy()).mean(), abs=1e-6)
    assert third.scalars["drift_first"] == pytest.approx(_np_pearson_rows(runs[2].numpy(), runs[0].numpy()).mean(), abs=1e-6)
    assert torch.equal(history.first["gradcam"], runs[0]) and torch.equal(history.previous["gradcam"], runs[2])


def test_identical_maps_have_drift_one_and_methods_are_separate(runs):
    history = MapHistory()
    history.analyze({"gradcam": runs[0]})
    result = history.analyze({"gradcam": runs[0], "layercam": runs[1]})
    assert result["gradcam"].scalars["drift_prev"] == pytest.approx(1.0, abs=1e-6)
    assert "drift_prev" not in result["layercam"].scalars  # layercam's first run
    assert history.methods == ["gradcam", "layercam"]


def test_skipped_rows_get_nan_and_are_left_out_of_the_means(runs):
    history = MapHistory()
    history.analyze({"gradcam": runs[0]})
    analysis = history.analyze({"gradcam": runs[1]}, skipped=[1, 3])["gradcam"]
    kept = [0, 2, 4]
    per_image = analysis.per_image["drift_prev"]
    assert per_image.shape == (5,)
    assert math.isnan(per_image[1]) and math.isnan(per_image[3])
    want = _np_pearson_rows(runs[1].numpy()[kept], runs[0].numpy()[kept])
    np.testing.assert_allclose(per_image[kept].numpy(), want, rtol=1e-6, atol=1e-7)
    assert analysis.scalars["drift_prev"] == pytest.approx(want.mean(), abs=1e-6)
    for name, values in analysis.per_image.items():
        assert values.shape == (5,) and bool(values[[1, 3]].isnan().all()), name
    assert sorted(analysis.order.tolist()) == kept  # the grid order names probe rows, skipped ones left out
    assert torch.equal(history.previous["gradcam"], runs[1])  # stored whole


def test_history_of_another_shape_restarts(runs):
    history = MapHistory()
    history.analyze({"gradcam": runs[0]})
    other = torch.rand(4, 6, 6, generator=torch.Generator().manual_seed(9))  # a changed probe set
    analysis = history.analyze({"gradcam": other})["gradcam"]
    assert "drift_prev" not in analysis.scalars and "drift_first" not in analysis.scalars
    assert torch.equal(history.first["gradcam"], other)
    following = history.analyze({"gradcam": other})["gradcam"]
    assert following.scalars["drift_first"] == pytest.approx(1.0, abs=1e-6)


def test_state_dict_round_trip_drops_methods_not_listed(runs):
    history = MapHistory()
    history.analyze({"gradcam": runs[0], "layercam": runs[1]})
    history.analyze({"gradcam": runs[2], "layercam": runs[0]})
    state = history.state_dict()
    assert set(state) == {"first_maps", "previous_maps"}
    restored = MapHistory()
    restored.load_state_dict(state, methods=["gradcam", "scorecam"])
    assert restored.methods == ["gradcam"]
    assert set(restored.previous) == {"gradcam"}
    assert torch.equal(restored.first["gradcam"], runs[0]) and torch.equal(restored.previous["gradcam"], runs[2])
    # the restored history measures drift like the original would
    after = restored.analyze({"gradcam": runs[1]})["gradcam"]
    assert after.scalars["drift_prev"] == pytest.approx(_np_pearson_rows(runs[1].numpy(), runs[2].numpy()).mean(), abs=1e-6)
    assert after.scalars["drift_first"] == pytest.approx(_np_pearson_rows(runs[1].numpy(), runs[0].numpy()).mean(), abs=1e-6)
    empty = MapHistory()
    empty.load_state_dict({}, methods=["gradcam"])
    assert empty.methods == [] and empty.previous == {}
    history.reset()
    assert history.first == {} and history.previous == {}


def _hit(method, metric):
    return AlarmHit(method, metric, 3.0, 2.0, "above")


def test_alarm_state_fired_none_changed_cleared():
    state = AlarmState()
    a, b = _hit("gradcam", "energy_in_nuisance_ratio"), _hit("layercam", "shortcut_score")
    assert state.update([]) is None  # nothing before, nothing now
    assert state.update([a]) == "fired"
    assert state.update([a]) is None  # still the same rule: not told again
    assert state.update([AlarmHit("gradcam", "energy_in_nuisance_ratio", 9.0, 2.0, "above")]) is None  # other value, same rule
    assert state.update([a, b]) == "fired"  # changed
    assert state.update([b]) == "fired"  # changed again
    assert state.active == (("layercam", "shortcut_score", -1),)
    assert state.update([]) == "cleared"
    assert state.update([]) is None
    assert state.active == ()


def test_alarm_state_state_dict_round_trip():
    state = AlarmState()
    state.update([_hit("gradcam", "energy_in_nuisance_ratio"), _hit("", "adcc")])
    saved = state.state_dict()
    assert saved == {"alarm_state": [["", "adcc", -1], ["gradcam", "energy_in_nuisance_ratio", -1]]}
    restored = AlarmState()
    restored.load_state_dict(saved)
    assert restored.active == state.active
    assert restored.update([_hit("gradcam", "energy_in_nuisance_ratio"), _hit("", "adcc")]) is None  # continues: no new alarm
    assert restored.update([]) == "cleared"
    fresh = AlarmState()
    fresh.load_state_dict({})
    assert fresh.active == () and fresh.update([_hit("gradcam", "x")]) == "fired"


def test_alarm_state_a_per_class_alarm_that_moves_to_another_class_is_a_change():
    state = AlarmState()
    one = AlarmHit("gradcam", "class_shortcut_score", 0.6, 0.15, "above", class_index=1)
    two = AlarmHit("gradcam", "class_shortcut_score", 0.6, 0.15, "above", class_index=2)
    assert state.update([one]) == "fired"
    assert state.update([one]) is None
    assert state.update([two]) == "fired"  # the same method and metric, another class: told
    assert state.active == (("gradcam", "class_shortcut_score", 2),)
    restored = AlarmState()
    restored.load_state_dict(state.state_dict())
    assert restored.update([two]) is None and restored.update([one]) == "fired"  # the class survives a checkpoint


def test_alarm_state_loads_entries_of_older_checkpoints():
    state = AlarmState()
    state.load_state_dict({"alarm_state": [["gradcam", "energy_in_nuisance_ratio"]]})  # before 1.0: no class
    assert state.active == (("gradcam", "energy_in_nuisance_ratio", -1),)
    assert state.update([_hit("gradcam", "energy_in_nuisance_ratio")]) is None
