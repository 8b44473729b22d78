"""CAMMonitor's public surface after the restructure: state keys, two monitors in one Trainer, timings, checkpoint state."""

from __future__ import annotations

import dataclasses
import typing
from typing import Dict

import pytest
import torch

import cam_callbacks as cc
from cam_callbacks.monitor.history import MapHistory

from _lightning_models import TinyNet, fit, loaders, trainer


def _fit_two(tmp_path):
    """One short fit (1 epoch, 2 train and 1 val batches) with two monitors that differ in their method."""
    g = torch.Generator().manual_seed(4)
    probe = (torch.randn(4, 3, 16, 16, generator=g), torch.tensor([0, 1, 2, 0]))
    first = cc.CAMMonitor(methods=["gradcam"], target_layer="features", probe=probe, metrics=())
    second = cc.CAMMonitor(methods=["layercam"], target_layer="features", probe=4, metrics=(), prefix="cam_layercam")
    model, t = fit(
        tmp_path, [first, second], seed=3, n_train=16, n_val=8, max_epochs=1, limit_train_batches=2, limit_val_batches=1, logger=False,
        num_sanity_val_steps=0,
    )  # fmt: skip
    return model, t, first, second


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """One small fit (~1.5 s) shared by the state and property tests below, which keeps them in the quick subset."""
    return _fit_two(tmp_path_factory.mktemp("fit"))


def test_state_key_depends_on_methods_and_target_layer():
    base = cc.CAMMonitor(methods=["gradcam"], target_layer="features")
    assert base.state_key == cc.CAMMonitor(methods=["gradcam"], target_layer="features").state_key
    assert base.state_key != cc.CAMMonitor(methods=["layercam"], target_layer="features").state_key
    assert base.state_key != cc.CAMMonitor(methods=["gradcam", "layercam"], target_layer="features").state_key
    assert base.state_key != cc.CAMMonitor(methods=["gradcam"], target_layer="features.3").state_key
    assert base.state_key != cc.CAMMonitor(methods=["gradcam"], target_layer=["features", "features.3"]).state_key
    assert base.state_key != cc.CAMMonitor(methods=["gradcam"], target_layer="features", prefix="cam2").state_key
    assert base.state_key.startswith("CAMMonitor")
    # settings that do not change what the state means keep the key
    assert base.state_key == cc.CAMMonitor(methods=["gradcam"], target_layer="features", probe=5, budget=None).state_key


def test_two_monitors_with_the_same_prefix_are_refused_before_training(tmp_path):
    monitors = [cc.CAMMonitor(methods=["gradcam"]), cc.CAMMonitor(methods=["layercam"])]  # different keys, same tags
    model = TinyNet()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="2 monitors in this Trainer log under prefix='cam'.*own prefix="):
        trainer(tmp_path, monitors).fit(model, *loaders(n_train=8, n_val=8))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # no training step ran


def test_lightning_refuses_two_monitors_with_the_same_state_key(tmp_path):
    monitors = [cc.CAMMonitor(methods=["gradcam"]), cc.CAMMonitor(methods=["gradcam"])]
    with pytest.raises(RuntimeError, match="more than one stateful callback"):
        trainer(tmp_path, monitors).fit(TinyNet(), *loaders(n_train=8, n_val=8))


def test_two_monitors_with_different_methods_run_in_one_trainer(fitted):
    _, t, first, second = fitted
    assert first.state_key != second.state_key
    assert first.layer_name == "features" and second.layer_name == "features"
    assert "cam/gradcam/shortcut_score" in t.callback_metrics and "cam_layercam/layercam/shortcut_score" in t.callback_metrics
    assert not any(name.startswith("cam/layercam") for name in t.callback_metrics)  # each monitor under its own prefix
    for monitor in (first, second):
        timings = monitor.last_timings
        assert set(timings) == {"compute", "analyze", "log", "total"}
        assert all(isinstance(v, float) and v >= 0.0 for v in timings.values()), timings
        assert timings["total"] >= timings["compute"]
        assert timings["total"] == pytest.approx(timings["compute"] + timings["analyze"] + timings["log"], abs=1e-6)
    assert set(first.state_dict()["first_maps"]) == {"gradcam"} and set(second.state_dict()["first_maps"]) == {"layercam"}


def _new_monitor(probe=32, **kwargs):
    """A monitor with ``probe`` given explicitly, or (an int) none of its own: it would take the validation data's."""
    return cc.CAMMonitor(methods=["gradcam"], target_layer="features", metrics=(), probe=probe, **kwargs)


def _set_up(monitor, model, tmp_path):
    """Lightning's ``setup`` hook with an (unfitted) Trainer: takes an explicit probe and resolves the layer."""
    monitor.setup(trainer(tmp_path, [monitor]), model, stage="fit")
    return monitor


def test_state_dict_round_trip_restores_history_and_probe(fitted, tmp_path):
    model, _, first, _ = fitted
    saved = first.state_dict()
    assert saved["version"] == 2 and saved["layer_name"] == "features" and saved["last_run"] == ("fit", 0)
    assert saved["probe"] is not None  # given explicitly: the tensors travel with the checkpoint
    saved = {**saved, "alarm_state": [["gradcam", "shortcut_score", -1]]}
    restored = _new_monitor()  # no probe of its own: it takes the checkpoint's
    restored.load_state_dict(saved)
    assert torch.equal(restored.probe.images, saved["probe"]["images"]) and torch.equal(restored.probe.labels, saved["probe"]["labels"])
    assert restored.history.first == {}, "applied before the layer is known, so the layer check could not run"
    _set_up(restored, model, tmp_path)
    assert restored.layer_name == "features"
    assert set(restored.history.first) == {"gradcam"}
    assert torch.equal(restored.history.first["gradcam"], saved["first_maps"]["gradcam"])
    assert torch.equal(restored.history.previous["gradcam"], saved["previous_maps"]["gradcam"])
    again = restored.state_dict()
    for key in ("version", "layer_name", "last_run", "probe_fingerprint", "alarm_state"):
        assert again[key] == saved[key], key


def test_state_of_another_version_is_not_restored_and_warns(fitted, tmp_path):
    model, _, first, _ = fitted
    saved = first.state_dict()
    restored = _set_up(_new_monitor(probe=(saved["probe"]["images"], saved["probe"]["labels"])), model, tmp_path)
    with pytest.warns(UserWarning, match=r"version 1, this one 2.*drift is measured from this run on"):
        restored.load_state_dict({**saved, "version": 1, "alarm_state": [["gradcam", "shortcut_score", -1]]})
    assert restored.history.first == {} and restored.history.previous == {}
    assert restored.state_dict()["alarm_state"] == []


def test_state_of_another_layer_is_not_restored_and_warns(fitted, tmp_path):
    model, _, first, _ = fitted
    saved = first.state_dict()
    restored = _set_up(_new_monitor(probe=(saved["probe"]["images"], saved["probe"]["labels"])), model, tmp_path)
    assert restored.layer_name == "features"
    with pytest.warns(UserWarning, match=r"layer 'features\.3', this monitor 'features'"):
        restored.load_state_dict({**saved, "layer_name": "features.3", "alarm_state": [["gradcam", "shortcut_score", -1]]})
    assert restored.history.first == {} and restored.state_dict()["alarm_state"] == []
    # the same layer restores
    restored.load_state_dict(saved)
    assert torch.equal(restored.history.first["gradcam"], saved["first_maps"]["gradcam"])


def test_every_state_key_is_read_or_reported_when_missing(fitted, tmp_path):
    """A partial entry (a key of the history or of its identity missing) is reported, never loaded; the probe tensors and
    the alarm state are optional."""
    model, _, first, _ = fitted
    saved = first.state_dict()
    probe = (saved["probe"]["images"], saved["probe"]["labels"])
    handled = {"version", "layer_name", "last_run", "probe_fingerprint", "probe", "first_maps", "previous_maps", "alarm_state"}
    assert set(saved) == handled, "a new key in CAMMonitor.state_dict needs a case here"
    saved = {**saved, "alarm_state": [["gradcam", "shortcut_score", -1]]}
    for key in sorted(handled):
        partial = {k: v for k, v in saved.items() if k != key}
        restored = _set_up(_new_monitor(probe=probe), model, tmp_path)
        if key not in ("probe", "alarm_state"):
            with pytest.warns(UserWarning, match=rf"the entry is partial: it lacks \['{key}'\]"):
                restored.load_state_dict(partial)
            assert restored.history.first == {} and restored.state_dict()["alarm_state"] == [], key
            continue
        restored.load_state_dict(partial)  # optional keys
        state = restored.state_dict()
        assert state["alarm_state"] == ([] if key == "alarm_state" else saved["alarm_state"]), key
        assert state["last_run"] == (None if key == "last_run" else saved["last_run"]), key
        assert ("gradcam" in restored.history.first) == (key != "first_maps"), key
        assert ("gradcam" in restored.history.previous) == (key != "previous_maps"), key
    # changed values are read: another fingerprint or layer keeps the history out
    for key, value, message in (("probe_fingerprint", "0" * 64, "probe set differs"), ("layer_name", "pool", "explained layer 'pool'")):
        restored = _set_up(_new_monitor(probe=probe), model, tmp_path)
        with pytest.warns(UserWarning, match=message):
            restored.load_state_dict({**saved, key: value})
        assert restored.history.first == {}, key
    # the checkpoint's probe tensors are read by a monitor without a probe of its own
    restored = _new_monitor()
    restored.load_state_dict(saved)
    assert torch.equal(restored.probe.images, probe[0])


def test_each_monitor_keeps_its_own_copy_of_a_shared_alarm():
    policies = [cc.ThresholdAlarm("shortcut_score", above=0.3, top_k=2), cc.ThresholdAlarm("adcc", below=0.4, top_k=2)]
    m1, m2 = cc.CAMMonitor(methods=["gradcam"], alarm=policies), cc.CAMMonitor(methods=["layercam"], alarm=policies)
    assert isinstance(m1.alarm, tuple) and isinstance(m2.alarm, tuple)
    assert m1.alarm == m2.alarm == tuple(policies)
    d1, d2 = cc.CAMMonitor(methods=["gradcam"]), cc.CAMMonitor(methods=["layercam"])  # the default alarm
    default = (cc.ThresholdAlarm("energy_in_nuisance_ratio", above=2.0), cc.ThresholdAlarm("shortcut_score", above=0.5), cc.ShortcutAlarm())
    assert d1.alarm == d2.alarm == default
    # changing the caller's list afterwards changes no monitor's alarm, and a policy itself cannot be changed
    policies.append(cc.ThresholdAlarm("complexity", above=0.8))
    policies[0] = cc.ThresholdAlarm("shortcut_score", above=0.9)
    assert m1.alarm == m2.alarm == (cc.ThresholdAlarm("shortcut_score", above=0.3, top_k=2), cc.ThresholdAlarm("adcc", below=0.4, top_k=2))
    with pytest.raises(dataclasses.FrozenInstanceError):
        m1.alarm[0].above = 0.9  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        d1.alarm[2].score = 0.9  # type: ignore[misc]
    assert cc.CAMMonitor(methods=["gradcam"], alarm=None).alarm == ()


def test_skipped_images_and_history_are_typed_properties(fitted):
    _, _, first, second = fitted
    for name, hint in (("skipped_images", Dict[int, str]), ("history", MapHistory)):
        attribute = getattr(cc.CAMMonitor, name)
        assert isinstance(attribute, property), name
        assert attribute.fset is None, f"{name} is read-only"
        assert typing.get_type_hints(attribute.fget)["return"] == hint, name
    for monitor in (first, second):
        assert monitor.skipped_images == {}
        assert isinstance(monitor.history, MapHistory) and monitor.history is monitor.history
        monitor.skipped_images[3] = "changed a copy"
        assert monitor.skipped_images == {}  # a copy each time
    assert cc.CAMMonitor().skipped_images == {} and cc.CAMMonitor().history.methods == []


class _LateDataNet(TinyNet):
    """TinyNet whose dataloaders exist only after its own ``setup`` (which Lightning calls after the callbacks')."""

    def setup(self, stage):
        self.train_set, self.val_set = (loader.dataset for loader in loaders(n_train=16, n_val=8))

    def train_dataloader(self):
        return torch.utils.data.DataLoader(self.train_set, batch_size=8)

    def val_dataloader(self):
        return torch.utils.data.DataLoader(self.val_set, batch_size=8)


class _LateDataNetWithPost(_LateDataNet):
    """The same weights plus a parameter-free module after ``features``: ``target_layer="auto"`` now finds ``post``."""

    def __init__(self) -> None:
        super().__init__()
        self.post = torch.nn.Identity()

    def forward(self, x):
        return self.fc(self.dropout(torch.flatten(self.pool(self.post(self.features(x))), 1)))


@pytest.mark.slow
def test_resume_where_auto_finds_another_layer_warns_when_the_probe_comes_late(tmp_path):
    """``target_layer="auto"`` (same state key) resolving to another layer after a model change is reported, also when the
    probe, and so the layer, is known only at the first validation (the dataloaders need the module's ``setup``)."""
    from pytorch_lightning.callbacks import ModelCheckpoint

    def fit_checkpointed(model, max_epochs, ckpt_path=None):
        monitor = cc.CAMMonitor(methods=["gradcam"], target_layer="auto", probe=4, metrics=())
        checkpoint = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_last=True, save_top_k=0)
        fit(
            tmp_path, [monitor, checkpoint], model=model, seed=5, data=(), max_epochs=max_epochs, limit_train_batches=1, limit_val_batches=1,
            logger=False, num_sanity_val_steps=0, enable_checkpointing=True, ckpt_path=ckpt_path,
        )  # fmt: skip
        return monitor

    before = fit_checkpointed(_LateDataNet, max_epochs=1)
    assert before.layer_name == "features"
    with pytest.warns(UserWarning, match=r"the checkpoint explained layer 'features', this monitor 'post'"):
        after = fit_checkpointed(_LateDataNetWithPost, max_epochs=2, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert after.layer_name == "post"
    assert after.state_dict()["last_run"] == ("fit", 1)


@pytest.mark.slow
def test_two_prefixes_share_one_tensorboard_layout(tmp_path):
    """TensorBoard keeps one custom-scalars layout per writer (the last one written): it must hold both monitors' charts."""
    from pytorch_lightning.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.custom_scalar import layout_pb2

    probe = (torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(4)), torch.tensor([0, 1, 2, 0]))
    monitors = [
        cc.CAMMonitor(methods=["gradcam"], target_layer="features", probe=probe, alarm=None, budget=None, prefix="cam_a"),
        cc.CAMMonitor(methods=["layercam"], target_layer="features.3", probe=probe, alarm=None, budget=None, prefix="cam_b"),
    ]
    t = trainer(tmp_path, monitors, max_epochs=1, limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=0,
                logger=TensorBoardLogger(str(tmp_path), name="tb"))  # fmt: skip
    t.fit(TinyNet(), *loaders(n_train=16, n_val=8))
    (path,) = [str(p) for p in tmp_path.rglob("events.out.tfevents.*")]
    accumulator = EventAccumulator(path, size_guidance={"tensors": 0})
    accumulator.Reload()
    last = layout_pb2.Layout()
    last.ParseFromString(accumulator.Tensors("custom_scalars__config__")[-1].tensor_proto.string_val[0])
    assert [c.title for c in last.category] == ["cam_callbacks (cam_a)", "cam_callbacks (cam_b)"]
    tags = {tag for c in last.category for chart in c.chart for tag in chart.multiline.tag}
    assert "cam_a/gradcam/adcc" in tags and "cam_b/layercam/adcc" in tags
