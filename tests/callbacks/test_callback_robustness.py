"""CAMMonitor in production: no growth over many runs, everything restored on every exit path, torch.compile.

Three groups of tests, all with a real Trainer (no mocks):

- *No growth*: 50 ``trainer.validate`` runs (and a 25-epoch fit) of a monitor with gradient, perturbation and
  guided methods and faithfulness on: process RSS, Python objects, live tensors, the derived-tail and cost caches
  stay flat; no hooks, no autograd graph, no open figure remain; a dropped model is freed.
- *Interrupts*: ``KeyboardInterrupt`` raised at every kind of forward pass of the callback's computation (the
  main pass with its capture and cost hooks, guided backprop's ``TorchFunctionMode``, Score-CAM's and Recipro-CAM's
  batched passes, the tail derivation, the faithfulness passes) and inside a method, also through ``Trainer.fit``
  (Lightning turns Ctrl+C into ``SystemExit``): modes, ``requires_grad``, ``param.grad``, buffers, hooks (also the
  global ones), grad/inference mode, RNG states and the torch-function-mode stack are as before.
- *torch.compile* (class :class:`TestTorchCompile`, select with ``-k compile``): what ``explain`` and
  ``CAMMonitor`` do with compiled modules. The default ``aot_eager`` backend runs dynamo and AOTAutograd without
  a C++ compiler, in seconds; set ``CAM_CALLBACKS_TEST_INDUCTOR=1`` to also run the inductor backend (it compiles
  C++ with gcc: 40-90 s on 2 cores).
"""

from __future__ import annotations

import ctypes
import gc
import os
import random
import signal
import sys
import time
import warnings
import weakref
from typing import Any, Dict, Iterator, List, Optional, Set, Tuple

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.nn.modules import module as module_globals

import cam_callbacks as cc
from cam_callbacks.engine.caches import cache_info, clear_caches
from cam_callbacks.methods.registry import available_methods, register_method, unregister_method

from _lightning_models import NUM_CLASSES, TinyNet, loaders, make_data, trainer

METHODS = ["gradcam", "scorecam", "reciprocam", "guidedbackprop"]

HOOK_DICTS = [
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_state_dict_hooks",
    "_state_dict_pre_hooks",
    "_load_state_dict_pre_hooks",
    "_load_state_dict_post_hooks",
]
GLOBAL_HOOK_DICTS = [
    "_global_forward_hooks",
    "_global_forward_hooks_with_kwargs",
    "_global_forward_hooks_always_called",
    "_global_forward_pre_hooks",
    "_global_backward_hooks",
    "_global_backward_pre_hooks",
    "_global_buffer_registration_hooks",
    "_global_module_registration_hooks",
    "_global_parameter_registration_hooks",
]




@pytest.fixture(autouse=True)
def quiet_lightning() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*is not a valid rank_zero.*")
        yield


# ------------------------------------------------------------------ helpers


def _rss_bytes() -> int:
    """Resident set size of this process now (not the peak), from /proc/self/statm."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _settle() -> None:
    """Collect garbage and hand freed heap pages back to the OS, so RSS tracks live memory, not allocator slack."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: RSS is noisier, the bound still holds for real leaks
        pass


def _count_tensors() -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # isinstance() on deprecated lazy module attributes warns
        return sum(1 for obj in gc.get_objects() if isinstance(obj, Tensor))


def _tensors_in(root: Any) -> List[Tuple[str, Tensor]]:
    """Every tensor reachable from ``root`` through dicts, sequences, sets, dataclasses and plain objects' __dict__."""
    found: List[Tuple[str, Tensor]] = []
    seen: Set[int] = set()

    def walk(obj: Any, path: str) -> None:
        if id(obj) in seen or isinstance(obj, (str, bytes, int, float, bool, type(None), type)):
            return
        seen.add(id(obj))
        if isinstance(obj, Tensor):
            found.append((path, obj))
            if obj.grad is not None:
                walk(obj.grad, path + ".grad")
            return
        if isinstance(obj, nn.Module):
            found.append((path + " (a module!)", torch.empty(0)))
            return
        if isinstance(obj, dict):
            for key, value in obj.items():
                walk(value, f"{path}[{key!r}]")
        elif isinstance(obj, (list, tuple, set, frozenset)):
            for index, value in enumerate(obj):
                walk(value, f"{path}[{index}]")
        elif hasattr(obj, "__dict__") and not callable(obj):
            for key, value in vars(obj).items():
                walk(value, f"{path}.{key}")
        elif hasattr(obj, "__slots__"):
            for key in obj.__slots__:
                if hasattr(obj, key):
                    walk(getattr(obj, key), f"{path}.{key}")

    walk(vars(root), type(root).__name__)
    return found


def _hooks(model: nn.Module) -> Dict[str, Any]:
    """Every non-empty hook dict of the model's modules and of torch.nn.modules.module's globals."""
    found = {
        f"{name or '<root>'}.{attr}": dict(getattr(module, attr))
        for name, module in model.named_modules()
        for attr in HOOK_DICTS
        if getattr(module, attr, None)
    }
    found.update({attr: dict(getattr(module_globals, attr)) for attr in GLOBAL_HOOK_DICTS if getattr(module_globals, attr, None)})
    return found


def _snapshot(model: nn.Module) -> Dict[str, Any]:
    return {
        "training": {name: m.training for name, m in model.named_modules()},
        "requires_grad": {name: p.requires_grad for name, p in model.named_parameters()},
        "grad_objects": {name: p.grad for name, p in model.named_parameters()},
        "grad_values": {name: None if p.grad is None else p.grad.clone() for name, p in model.named_parameters()},
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "hooks": _hooks(model),
        "grad_enabled": torch.is_grad_enabled(),
        "inference_mode": torch.is_inference_mode_enabled(),
        "function_modes": torch._C._len_torch_function_stack(),
        "dispatch_modes": torch._C._len_torch_dispatch_stack(),
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": np.random.get_state()[1].copy(),
        "python_rng": random.getstate(),
    }


def _assert_restored(model: nn.Module, before: Dict[str, Any], where: str = "") -> None:
    after = _snapshot(model)
    assert after["training"] == before["training"], where
    assert after["requires_grad"] == before["requires_grad"], where
    for name, grad in before["grad_objects"].items():
        assert after["grad_objects"][name] is grad, f"{where}: {name}.grad replaced"  # None stays None
        if grad is not None:
            assert torch.equal(after["grad_values"][name], before["grad_values"][name]), f"{where}: {name}.grad changed"
    for key, value in before["state"].items():  # BatchNorm statistics and num_batches_tracked too
        assert torch.equal(after["state"][key], value), f"{where}: {key}"
    assert after["hooks"] == before["hooks"], f"{where}: hooks left behind: {after['hooks']}"
    assert after["grad_enabled"] == before["grad_enabled"], where
    assert after["inference_mode"] == before["inference_mode"], where
    assert after["function_modes"] == before["function_modes"], f"{where}: a TorchFunctionMode is still active"
    assert after["dispatch_modes"] == before["dispatch_modes"], where
    assert torch.equal(after["torch_rng"], before["torch_rng"]), f"{where}: torch RNG state changed"
    assert np.array_equal(after["numpy_rng"], before["numpy_rng"]), f"{where}: numpy RNG state changed"
    assert after["python_rng"] == before["python_rng"], f"{where}: python RNG state changed"


def _cache_sizes(model: nn.Module) -> Tuple[int, int, int, int]:
    """(models with cached tails, tail entries for this model, models with cached costs, cost entries for this model)."""
    everything, mine = cache_info(), cache_info(model)
    return (everything.tail_models, mine.tail_entries, everything.cost_models, mine.cost_entries)


# ------------------------------------------------------------------ no growth


@pytest.mark.slow
def test_fifty_validations_keep_memory_objects_and_caches_flat(tmp_path):
    """50 runs of the callback (``trainer.validate``, TensorBoard logger, 4 methods, faithfulness on) grow nothing.

    RSS bound: 20 MB between run 10 and run 50. One run allocates ~1 MB of float grids per method for TensorBoard
    (4 methods: ~4 MB), Score-CAM/Recipro-CAM copies and the autograd graph of the tail: leaking any of them once per
    run would add 40-160 MB over 40 runs, while the allocator's noise after ``malloc_trim`` is ~1 MB. Small leaks (a
    map, a dict per run) would not show in RSS; the object and tensor counts catch those.
    """
    import matplotlib.pyplot as plt

    pl.seed_everything(0)
    model = TinyNet()
    _, val = loaders(n_val=8)
    # every method, every run; no report: trainer.validate() writes one per call (its matplotlib charts of the growing
    # history cost ~2 s a call here, 50 calls ~110 s of this test); the report keeps one dict of scalars per run and at
    # most MAX_ALARMS alarm records (callbacks/report.py), and the 25-epoch fit below runs with it
    monitor = cc.CAMMonitor(methods=METHODS, probe=4, budget=None, report=False)
    ran: List[float] = []

    class Spy(pl.Callback):  # after the monitor: sees each run's own timing scalar
        def on_validation_epoch_end(self, trainer, pl_module):
            ran.append(float(trainer.callback_metrics["cam/time_s"]))

    t = trainer(tmp_path, [monitor, Spy()])
    samples: Dict[int, Dict[str, Any]] = {}
    start = time.perf_counter()
    for run in range(1, 51):
        t.validate(model, val, verbose=False)
        if run in (5, 10, 20, 30, 40, 50):  # 1-5: warm-up (tails derived, costs measured, lazy imports)
            _settle()
            samples[run] = {
                "rss_mb": _rss_bytes() / 2**20,
                "objects": len(gc.get_objects()),
                "tensors": _count_tensors(),
                "caches": _cache_sizes(model),
                "seconds": time.perf_counter() - start,
            }
    for run, sample in samples.items():
        print(f"run {run:2d}: rss {sample['rss_mb']:.1f} MB, {sample['objects']} objects, {sample['tensors']} tensors, "
              f"caches (tails models/entries, costs models/entries) {sample['caches']}, {sample['seconds']:.1f} s")  # fmt: skip
    assert len(ran) == 50 and len(set(ran)) > 1, "the monitor must run on every validate() call"
    assert "cam/reciprocam/adcc" in t.callback_metrics and "cam/guidedbackprop/adcc" in t.callback_metrics

    first, last = samples[10], samples[50]
    rss_growth = last["rss_mb"] - first["rss_mb"]
    assert rss_growth < 20.0, f"RSS grew {rss_growth:.1f} MB over 40 runs: {samples}"
    assert last["objects"] - first["objects"] < 200, f"Python objects grew: {first['objects']} -> {last['objects']}"
    assert last["tensors"] - first["tensors"] <= 8, f"live tensors grew: {first['tensors']} -> {last['tensors']}"
    # this model's entries are fixed after the warm-up; the number of models in the caches does not grow
    # (it may shrink: models of earlier tests can still be collected)
    warm = samples[5]["caches"]
    assert warm[1] >= 1 and warm[3] >= 1, "Recipro-CAM's tail and the costs are cached"
    assert first["caches"][1::2] == last["caches"][1::2] == warm[1::2], "derived-tail / cost cache entries grew with the runs"
    assert last["caches"][0] <= first["caches"][0] and last["caches"][2] <= first["caches"][2], "caches hold more models"

    assert not _hooks(model), "hooks left on the model"
    assert plt.get_fignums() == [], "matplotlib figures left open"
    held = _tensors_in(monitor)
    graphs = [path for path, tensor in held if tensor.grad_fn is not None or tensor.requires_grad]
    assert not graphs, f"the monitor holds tensors of an autograd graph: {graphs}"
    assert not [path for path, _ in held if "module" in path], "the monitor holds a module"
    assert torch.is_grad_enabled() and torch._C._len_torch_function_stack() == 0


@pytest.mark.slow
def test_twenty_five_epochs_of_fit_keep_objects_and_tensors_flat(tmp_path):
    """The fit path (alarm, drift history, every epoch) over 25 epochs of 1 training batch."""
    counts: Dict[int, Tuple[int, int, int]] = {}

    class Measure(pl.Callback):  # after the monitor, at the end of each validation epoch
        def on_validation_epoch_end(self, trainer, pl_module):
            epoch = trainer.current_epoch
            if epoch in (4, 9, 24):
                _settle()
                counts[epoch] = (len(gc.get_objects()), _count_tensors(), _rss_bytes() // 2**20)

    pl.seed_everything(0)
    model = TinyNet()
    train, val = loaders(n_train=16, n_val=8)
    monitor = cc.CAMMonitor(methods=METHODS, probe=4, budget=None)  # every method every epoch: the worst case
    t = trainer(tmp_path, [monitor, Measure()], max_epochs=25, limit_train_batches=1, limit_val_batches=1, num_sanity_val_steps=0)
    t.fit(model, train, val)
    print("epoch: (objects, tensors, rss MB)", counts)
    assert set(counts) == {4, 9, 24} and "cam/scorecam/drift_first" in t.callback_metrics
    assert counts[24][0] - counts[9][0] < 200, counts
    assert counts[24][1] - counts[9][1] <= 8, counts
    assert counts[24][2] - counts[9][2] < 20, counts
    assert set(monitor.history.first) == set(monitor.history.previous) == set(METHODS)  # one map set each, not a history
    assert not _hooks(model)


@pytest.mark.parametrize(
    "method", ["gradcam"] + [pytest.param(m, marks=pytest.mark.slow) for m in ("scorecam", "guidedbackprop", "reciprocam", "ablationcam")]
)
def test_explain_does_not_keep_the_model_alive(method):
    """The per-model caches are WeakKeyDictionaries: once the user drops the model it must be freed.

    Regression test: the cached fx ``Tail`` (a value of the engine's tail cache) used to hold ``_FxTail.model``, a strong
    reference to its own key, so models explained with Recipro-CAM/Ablation-CAM were never freed.
    """
    gc.collect()
    tails_before = cache_info().tail_models
    model = TinyNet().eval()
    cc.explain(model, make_data(2, seed=3)[0], method=method, target_layer="features")
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None, (
        f"{method}: the model is still alive after explain; referrers: {[type(r).__name__ for r in gc.get_referrers(ref())]}"
    )
    assert cache_info().tail_models <= tails_before


@pytest.mark.slow
def test_dropped_trainer_monitor_and_model_are_freed(tmp_path):
    """A sweep that builds a model, a monitor and a trainer per trial must not keep every trial's model alive."""
    refs = []
    for trial in range(3):
        pl.seed_everything(trial)
        model = TinyNet()
        _, val = loaders(n_val=8)
        monitor = cc.CAMMonitor(methods=["gradcam", "reciprocam"], probe=4)
        t = trainer(tmp_path / str(trial), [monitor])
        t.validate(model, val, verbose=False)
        refs.append(weakref.ref(model))
        del model, monitor, t, val
        gc.collect()
    alive = [i for i, ref in enumerate(refs) if ref() is not None]
    assert not alive, f"models of trials {alive} are still alive ({cache_info().tail_models} models in the tail cache)"


# ------------------------------------------------------------------ interrupts


class _InterruptAt:
    """Replaces a module's forward: counts calls, notes where each happens, raises KeyboardInterrupt at call ``at``.

    Before raising it draws from the torch, NumPy and Python RNGs, which the callback must undo.
    """

    def __init__(self, module: nn.Module, model: nn.Module, target: nn.Module, at: Optional[int] = None) -> None:
        self.forward = module.forward
        self.model = model
        self.target = target
        self.at = at
        self.calls = 0
        self.contexts: List[Tuple[str, ...]] = []

    def _where(self) -> Tuple[str, ...]:
        names = []
        frame = sys._getframe(2)
        while frame is not None:
            if "cam_callbacks" in frame.f_code.co_filename:
                names.append(frame.f_code.co_qualname)
            frame = frame.f_back
        flags = []
        if torch._C._len_torch_function_stack() > 0:
            flags.append("torch-function-mode")
        if any(m._forward_hooks for m in self.model.modules() if m is not self.target):
            flags.append("cost-hooks")
        if self.target._forward_hooks:
            flags.append("capture-hook")
        if torch.is_grad_enabled():
            flags.append("grad")
        return tuple(flags) + tuple(sorted(set(names)))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        self.contexts.append(self._where())
        if self.calls == self.at:
            torch.rand(3)
            np.random.rand()
            random.random()
            raise KeyboardInterrupt(f"interrupt at forward call {self.at}")
        return self.forward(*args, **kwargs)


def _interrupt_model() -> nn.Module:
    """TinyNet in train mode with a frozen BatchNorm, a frozen parameter, some grads set (mid accumulation), some None."""
    pl.seed_everything(0)
    model = TinyNet()
    model.train()
    model.features[1].eval()
    model.features[0].bias.requires_grad_(False)
    model.fc.weight.grad = torch.full_like(model.fc.weight, 0.25)
    model.features[4].weight.grad = torch.arange(model.features[4].weight.numel(), dtype=torch.float32).view_as(model.features[4].weight)
    return model


def _ready_monitor(tmp_path, model: nn.Module, methods=tuple(METHODS)) -> cc.CAMMonitor:
    """A monitor that has run once in a real ``trainer.validate`` (probe taken, layer resolved, caches filled)."""
    images, labels = make_data(3, seed=4)
    monitor = cc.CAMMonitor(methods=list(methods), probe=(images, labels), explain_options=cc.ExplainOptions(batch_size=2, perturbation_batch=4))
    _, val = loaders(n_val=4)
    training = {name: m.training for name, m in model.named_modules()}
    trainer(tmp_path, [monitor]).validate(model, val, verbose=False)
    for name, m in model.named_modules():  # validate() leaves the model in eval mode: put the fixture's modes back
        m.training = training[name]
    return monitor


def _signature_points(contexts: List[Tuple[str, ...]]) -> List[int]:
    """1-based call indices to interrupt: the first, a middle and the last call of each distinct context."""
    by_context: Dict[Tuple[str, ...], List[int]] = {}
    for index, context in enumerate(contexts, start=1):
        by_context.setdefault(context, []).append(index)
    points = set()
    for indices in by_context.values():
        points.update({indices[0], indices[len(indices) // 2], indices[-1]})
    return sorted(points)


@pytest.mark.slow
@pytest.mark.parametrize("caches", ["warm", "cold"])
@pytest.mark.parametrize("grad_context", ["enabled", "inference_mode"])
def test_keyboard_interrupt_at_any_forward_of_the_callbacks_passes_restores_everything(tmp_path, caches, grad_context):
    """``monitor.compute`` interrupted at every kind of forward call of the classifier head ``fc``.

    ``inference_mode`` is where ``trainer.validate`` runs the callback; ``cold`` clears the per-model caches first,
    so the interrupt also lands in the cost measurement (hooks on every leaf module) and the tail derivation.
    """
    model = _interrupt_model()
    monitor = _ready_monitor(tmp_path, model)
    context = torch.inference_mode if grad_context == "inference_mode" else torch.enable_grad

    def clear() -> None:
        if caches == "cold":
            clear_caches(model)

    with context():
        clear()
        want, want_scores = monitor.compute(model)
        counter = _InterruptAt(model.fc, model, model.features)
        model.fc.forward = counter
        try:
            clear()
            monitor.compute(model)
        finally:
            del model.fc.forward
        contexts = counter.contexts
        seen = {flag for c in contexts for flag in c}
        # the interrupts below land in every kind of pass
        for required in ["torch-function-mode", "capture-hook", "ModelScorer.__call__", "TailScorer.__call__",
                         "input_gradients", "compute_faithfulness"]:  # fmt: skip
            assert required in seen, f"no forward call in {required}: {sorted(seen)}"
        if caches == "cold":
            assert "cost-hooks" in seen and "tail_from_reference" in seen, sorted(seen)
        points = _signature_points(contexts)
        print(f"{len(contexts)} forward calls of fc, {len(set(contexts))} kinds of pass, interrupted at {len(points)} of them")
        assert len(points) >= 12
        for at in points:
            before = _snapshot(model)
            model.fc.forward = _InterruptAt(model.fc, model, model.features, at=at)
            try:
                clear()
                with pytest.raises(KeyboardInterrupt, match=f"call {at}$"):
                    monitor.compute(model)
            finally:
                del model.fc.forward
            _assert_restored(model, before, where=f"interrupt at call {at} of {len(contexts)} in {contexts[at - 1]}")
        # nothing half-done stayed in the caches or the monitor: the next run gives the same maps and scores
        got, got_scores = monitor.compute(model)
    for method in METHODS:
        torch.testing.assert_close(got.maps[method], want.maps[method], atol=1e-6, rtol=0)
        for metric, values in want_scores[method].items():
            torch.testing.assert_close(got_scores[method][metric], values, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_keyboard_interrupt_inside_a_method_restores_everything(tmp_path):
    """A registered method that draws random numbers and raises KeyboardInterrupt (after the main and guided passes)."""
    name = "interrupting_method_for_test"
    armed = {"on": False}

    @register_method(name, needs=("activations", "gradients"))
    def interrupting(activations, gradients):
        if armed["on"]:
            torch.rand(2)
            np.random.rand()
            raise KeyboardInterrupt("Ctrl+C inside a CAM method")
        return torch.relu((gradients.mean((2, 3), keepdim=True) * activations).sum(1))

    try:
        model = _interrupt_model()
        monitor = _ready_monitor(tmp_path, model, methods=("guidedbackprop", "scorecam", name))
        armed["on"] = True
        for context in (torch.enable_grad, torch.no_grad, torch.inference_mode):
            with context():
                before = _snapshot(model)
                with pytest.raises(KeyboardInterrupt, match="inside a CAM method"):
                    monitor.compute(model)
                _assert_restored(model, before, where=context.__name__)
    finally:
        if name in available_methods():
            unregister_method(name)


def test_ctrl_c_during_the_callback_in_fit(tmp_path):
    """Ctrl+C while the callback computes inside ``Trainer.fit``: Lightning shuts down (``SystemExit``); the model,
    autograd, hooks, function modes and RNG are as they were right before the callback started."""
    name = "ctrl_c_method_for_test"
    calls = {"n": 0}

    @register_method(name, needs=("activations", "gradients"))
    def ctrl_c(activations, gradients):
        calls["n"] += 1
        if calls["n"] > 1:  # the first call is the dry run at setup
            torch.rand(5)
            raise KeyboardInterrupt("Ctrl+C in the callback")
        return torch.relu((gradients.mean((2, 3), keepdim=True) * activations).sum(1))

    snapshots: List[Dict[str, Any]] = []

    class Snapshot(pl.Callback):  # before the monitor in the list: runs right before it
        def on_validation_epoch_end(self, trainer, pl_module):
            snapshots.append(_snapshot(pl_module))

    sigint = signal.getsignal(signal.SIGINT)
    try:
        pl.seed_everything(0)
        model = TinyNet()
        train, val = loaders(n_train=16, n_val=8)
        monitor = cc.CAMMonitor(methods=["guidedbackprop", "reciprocam", name], probe=4)
        t = trainer(tmp_path, [Snapshot(), monitor], max_epochs=2, num_sanity_val_steps=0, limit_train_batches=2)
        with pytest.raises(SystemExit):
            t.fit(model, train, val)
        assert t.interrupted and calls["n"] == 2 and len(snapshots) == 1
        expected = dict(snapshots[0], grad_enabled=True, inference_mode=False)  # outside fit's no_grad validation again
        _assert_restored(model, expected, where="after Ctrl+C in fit")
    finally:
        signal.signal(signal.SIGINT, sigint)  # Lightning ignores SIGINT from the interrupt on
        if name in available_methods():
            unregister_method(name)


# ------------------------------------------------------------------ torch.compile

_BACKENDS = [
    "aot_eager",
    pytest.param(
        "inductor",
        marks=pytest.mark.skipif(not os.environ.get("CAM_CALLBACKS_TEST_INDUCTOR"), reason="set CAM_CALLBACKS_TEST_INDUCTOR=1: 40-90 s of C++ compilation"),
    ),
]


class _SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, NUM_CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


class _CompiledSubmoduleNet(TinyNet):
    """A LightningModule whose network is compiled (``self.net = torch.compile(net)``), a common Lightning pattern."""

    def __init__(self, backend: str) -> None:
        super().__init__()
        net = nn.Sequential(self.features, self.pool, nn.Flatten(), self.dropout, self.fc)
        del self.features, self.pool, self.dropout, self.fc
        self.net = torch.compile(net, backend=backend)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


@pytest.fixture
def fresh_dynamo() -> Iterator[None]:
    """Empty dynamo caches around each test; dynamo's DEBUG trace records kept out of pytest's failure reports."""
    import logging

    trace = logging.getLogger("torch.__trace")
    propagate, trace.propagate = trace.propagate, False
    torch._dynamo.reset()
    try:
        yield
    finally:
        torch._dynamo.reset()
        trace.propagate = propagate


@pytest.mark.usefixtures("fresh_dynamo")
class TestTorchCompile:
    """torch.compile'd models (torch 2.14, CPU). What was found:

    - the compiled wrapper (``OptimizedModule``) names its modules ``_orig_mod.<name>``: ``target_layer="features"``
      fails with a ValueError that suggests ``'_orig_mod.features'``; that name, ``"auto"`` or the module object work;
    - on a model compiled afresh (or first run with grad enabled), Grad-CAM, Recipro-CAM (with the slower re-run tail
      and a warning: torch.fx cannot trace an ``OptimizedModule``) and guided backprop equal the eager maps;
    - BUG: once the compiled model has run under ``torch.no_grad()`` (any inference, Lightning's sanity check and
      validation, the callback's own setup pass), dynamo reuses that graph for the callback's main pass (which runs
      under ``no_grad`` too) and skips the forward hook registered afterwards (dynamo does not guard on module hooks:
      ``torch._dynamo.config.skip_nnmodule_hook_guards``); ``explain`` raises "target_layer ... was not called during
      the forward pass", and a LightningModule with a compiled submodule fails ``CAMMonitor``'s setup.
    """

    @pytest.mark.parametrize("backend", _BACKENDS)
    @pytest.mark.parametrize("method", ["gradcam", "reciprocam", "guidedbackprop"])
    def test_fresh_compiled_model_gives_the_eager_maps(self, method, backend):
        torch.manual_seed(0)
        model = _SmallCNN().eval()
        x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
        want = cc.explain(model, x, method=method, target_layer="features")
        compiled = torch.compile(model, backend=backend)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for layer in ["_orig_mod.features", "auto", model.features]:
                got = cc.explain(compiled, x, method=method, target_layer=layer)
                torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
        fallback = [w for w in caught if "no automatic tail for OptimizedModule" in str(w.message)]
        assert bool(fallback) == (method == "reciprocam")  # the re-run tail, announced once
        if method == "guidedbackprop":  # the guided ReLUs were applied inside the compiled code
            plain = cc.explain(model, x, method="saliency", target_layer="features")
            assert float((got - plain).abs().max()) > 0.1
        assert not _hooks(model) and torch._C._len_torch_function_stack() == 0

    def test_uncompiled_layer_name_fails_with_the_compiled_name_suggested(self):
        compiled = torch.compile(_SmallCNN().eval(), backend="aot_eager")
        with pytest.raises(ValueError, match=r"target_layer='features' is not a module of OptimizedModule.*'_orig_mod\.features'"):
            cc.explain(compiled, torch.randn(2, 3, 16, 16), method="gradcam", target_layer="features")

    @pytest.mark.parametrize("method", ["gradcam", "reciprocam", "scorecam"])
    def test_compiled_model_that_already_ran_without_grad(self, method):
        """BUG (fails): the graph compiled under ``no_grad`` without hooks is reused and the capture hook never runs.

        Now: RuntimeError "target_layer='_orig_mod.features' was not called during the forward pass" (misleading: it
        was called, inside compiled code). Fix: run the callback's/explain's forward passes with
        ``torch.compiler.set_stance("force_eager")`` (torch >= 2.6), e.g. around the body of
        ``engine.compute_explanations``; with that the maps equal the eager ones (checked by hand).
        """
        torch.manual_seed(0)
        model = _SmallCNN().eval()
        x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
        want = cc.explain(model, x, method=method, target_layer="features")
        compiled = torch.compile(model, backend="aot_eager")
        with torch.no_grad():
            compiled(x)  # e.g. a validation step or any inference before explaining
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            got = cc.explain(compiled, x, method=method, target_layer="_orig_mod.features")
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
        assert not _hooks(model)

    @pytest.mark.slow
    def test_lightning_module_with_a_compiled_submodule(self, tmp_path):
        """BUG (fails): ``self.net = torch.compile(net)`` + CAMMonitor: setup's dry run fails.

        ``_prepare`` first runs ``pl_module(example)`` under ``no_grad`` (compiled without hooks), then the dry run's
        main pass under ``no_grad`` reuses that graph: RuntimeError "target_layer='net._orig_mod.0' was not called
        during the forward pass" from ``CAMMonitor.setup``, before training starts. Expected: the callback works and
        its maps equal those of the same weights without compile.
        """
        pl.seed_everything(0)
        model = _CompiledSubmoduleNet("aot_eager")
        train, val = loaders(n_train=16, n_val=8)
        monitor = cc.CAMMonitor(methods=["gradcam", "reciprocam"], probe=4)
        t = trainer(tmp_path, [monitor], max_epochs=1, limit_train_batches=2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t.fit(model, train, val)
        assert monitor.layer_name == "net._orig_mod.0"
        assert "cam/reciprocam/adcc" in t.callback_metrics
        eager = TinyNet()
        inner = model.net._orig_mod
        eager.features, eager.pool, eager.dropout, eager.fc = inner[0], inner[1], inner[3], inner[4]
        got, _ = monitor.compute(model)
        for method in ["gradcam", "reciprocam"]:
            want = cc.explain(eager, monitor.probe.images, method=method, target_layer="features", targets=monitor.probe.labels)
            torch.testing.assert_close(got.maps[method], want, atol=1e-5, rtol=0)
        assert not _hooks(model)
