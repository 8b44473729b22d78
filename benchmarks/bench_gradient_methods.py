#!/usr/bin/env python
"""Per-call cost of cam_callbacks' gradient CAM methods against two floors and two reference libraries.

On one torchvision model with random weights, the same random images and fixed target classes, one run times:

- floor 1: one plain forward pass of the batch under ``torch.no_grad()`` (the physical floor of any CAM);
- floor 2: forward + backward through the tail only (a forward hook on the target layer returns a detached clone
  that requires grad, ``torch.autograd.grad`` of the target logits' sum w.r.t. it): the floor of gradient methods;
- ours: ``cam_callbacks.explain`` per method (``cam`` too where the head is GAP + linear: resnet);
- pytorch-grad-cam (grad-cam 1.5.x) with ``ClassifierOutputTarget`` targets; each CAM object is built once,
  outside the timing, on its own deep copy of the model;
- torchcam: forward pass + extractor + ReLU/bilinear upsampling/min-max to the input size with torch ops
  (torchcam returns raw feature-resolution maps), on another deep copy;
- ``cam_callbacks.faithfulness`` for Grad-CAM, reported in units of forward passes.

Every callable is called once to warm up (that output is the one compared), then ``--repeats`` times; the minimum is
reported. The callables of one method (and the floors, with Grad-CAM) are timed round-robin, so the ratios compare
calls made in the same window of a shared, noisy machine.

Run from the repository root::

    python benchmarks/bench_gradient_methods.py                      # resnet18, batch 16, 224x224, 1 thread
    python benchmarks/bench_gradient_methods.py --model mobilenet_v3_small --markdown
"""

from __future__ import annotations

import time

_T_START = time.perf_counter()

import argparse
import copy
import importlib.metadata
import os
import platform
import sys
from functools import partial
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # benchmark the working tree, not whatever is installed

import cam_callbacks as cc

try:
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
except ImportError:  # pragma: no cover - optional reference
    pgc = None  # type: ignore[assignment]
try:
    import torchcam.methods as tcm
except ImportError:  # pragma: no cover - optional reference
    tcm = None  # type: ignore[assignment]

#: model name -> (target layer, factor applied to the last linear layer's weights; see prepare_model)
MODELS: Dict[str, Tuple[str, float]] = {
    "resnet18": ("layer4", 1e3),
    "vgg11": ("features", 1e3),
    "densenet121": ("features.denseblock4", 1e3),
    "mobilenet_v3_small": ("features", 1e4),
}
METHODS = ["gradcam", "gradcampp", "xgradcam", "hirescam", "layercam", "cam"]
PGC_CLASSES = {
    "gradcam": "GradCAM",
    "gradcampp": "GradCAMPlusPlus",
    "xgradcam": "XGradCAM",
    "hirescam": "HiResCAM",
    "layercam": "LayerCAM",
}
TORCHCAM_CLASSES = {"gradcam": "GradCAM", "gradcampp": "GradCAMpp", "xgradcam": "XGradCAM", "layercam": "LayerCAM", "cam": "CAM"}


# --------------------------------------------------------------------------------------------------------------------
# Setup


def prepare_model(model: nn.Module, logit_scale: float, size: int) -> nn.Module:
    """Random weights made usable for comparisons (as in tests/methods/test_crosscheck.py).

    BatchNorm statistics come from one random batch (at init, mobilenet_v3_small's 'features' output is ~1e-8, where
    pytorch-grad-cam's 1e-7 epsilons dominate) and the last linear layer is scaled so that pytorch-grad-cam's 1e-6 in
    the Grad-CAM++ denominator is negligible. Neither changes the cost of a call.
    """
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None
    with torch.no_grad():
        model.train()
        model(torch.randn(8, 3, size, size, generator=torch.Generator().manual_seed(1)))
        last_linear = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
        last_linear.weight.mul_(logit_scale)
    return model.eval()


def machine_facts(device: torch.device, threads: int) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    cpu = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"cpu ({cpu}, {os.cpu_count()} logical cores, {threads} torch thread{'s' if threads != 1 else ''})"


def version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


# --------------------------------------------------------------------------------------------------------------------
# Timing


def make_timer(device: torch.device) -> Callable[[Callable[[], Any]], Tuple[float, Any]]:
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def timed(fn: Callable[[], Any]) -> Tuple[float, Any]:
        sync()
        start = time.perf_counter()
        out = fn()
        sync()
        return time.perf_counter() - start, out

    return timed


def time_group(
    callables: Dict[str, Callable[[], Any]], repeats: int, timed, warm: Sequence[str] = ()
) -> Tuple[Dict[str, float], Dict[str, Any]]:
    """Warm up each callable once (its output is returned), then ``repeats`` round-robin rounds; min per callable.

    Callables named in ``warm`` were warmed up in an earlier group and are not called again before timing.
    """
    outputs = {name: fn() for name, fn in callables.items() if name not in warm}
    samples: Dict[str, List[float]] = {name: [] for name in callables}
    names = list(callables)
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:  # rotate: no fixed position in the round
            seconds, _ = timed(callables[name])
            samples[name].append(seconds)
    return {name: min(s) for name, s in samples.items()}, outputs


# --------------------------------------------------------------------------------------------------------------------
# The callables


def floor_forward(model: nn.Module, x: Tensor) -> Callable[[], Tensor]:
    def run() -> Tensor:
        with torch.no_grad():
            return model(x)

    return run


def floor_tail_backward(model: nn.Module, layer: nn.Module, x: Tensor, targets: Tensor) -> Callable[[], Tensor]:
    """Forward without autograd up to the layer, autograd from a leaf at the layer, gradient w.r.t. that leaf."""

    def run() -> Tensor:
        captured: List[Tensor] = []

        def hook(module: nn.Module, inputs: Any, output: Tensor) -> Tensor:
            leaf = output.detach().clone().requires_grad_(True)
            captured.append(leaf)
            torch.set_grad_enabled(True)  # the tail records a graph; the no_grad block below restores the mode
            return leaf

        handle = layer.register_forward_hook(hook)
        try:
            with torch.no_grad():
                logits = model(x)
        finally:
            handle.remove()
        (grad,) = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), captured[0])
        return grad

    return run


def ours(model: nn.Module, x: Tensor, method: str, layer_name: str, targets: Tensor) -> Callable[[], Tensor]:
    return lambda: cc.explain(model, x, method=method, target_layer=layer_name, targets=targets, batch_size=x.shape[0])


def torch_postprocess(raw: Tensor, size: Tuple[int, int]) -> Tensor:
    """Raw (N, h, w) maps -> ReLU, bilinear (align_corners=False) to ``size``, per-image min-max (constant -> 0)."""
    up = F.interpolate(torch.relu(raw.detach().float())[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    low = up.amin(dim=(1, 2), keepdim=True)
    span = up.amax(dim=(1, 2), keepdim=True) - low
    return torch.where(span > 0, (up - low) / torch.where(span > 0, span, torch.ones_like(span)), torch.zeros_like(up))


def torchcam_call(extractor: Any, model: nn.Module, x: Tensor, targets: List[int], gradient: bool) -> Callable[[], Tensor]:
    size = (x.shape[-2], x.shape[-1])

    def run() -> Tensor:
        if gradient:
            scores = model(x)
            (raw,) = extractor(class_idx=targets, scores=scores, normalized=False)
        else:
            with torch.no_grad():
                model(x)
            (raw,) = extractor(class_idx=targets, normalized=False)
        return torch_postprocess(raw, size)

    return run


def max_abs_diff(a: Any, b: Any) -> float:
    a = a.detach().cpu().double().numpy() if isinstance(a, Tensor) else np.asarray(a, dtype=np.float64)
    b = b.detach().cpu().double().numpy() if isinstance(b, Tensor) else np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max())


# --------------------------------------------------------------------------------------------------------------------
# Output


def fmt_s(v: Optional[float]) -> str:
    return "—" if v is None else f"{v:.3f}"


def fmt_ratio(num: Optional[float], den: Optional[float]) -> str:
    return "—" if num is None or den is None else f"{num / den:.2f}x"


def fmt_diff(v: Optional[float]) -> str:
    return "—" if v is None else f"{v:.1e}"


def render(rows: List[List[str]], header: List[str], markdown: bool) -> str:
    if markdown:
        cell = lambda c: c.replace("|", "\\|")
        header, rows = [cell(c) for c in header], [[cell(c) for c in r] for r in rows]
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in rows])


# --------------------------------------------------------------------------------------------------------------------


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet18", choices=sorted(MODELS))
    p.add_argument("--batch", type=int, default=16, help="images per call (one chunk)")
    p.add_argument("--size", type=int, default=224, help="image height and width")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per callable after one warm-up; the min is reported")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (and OpenCV's, used by pytorch-grad-cam)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--markdown", action="store_true", help="print a Markdown table with a header of machine facts")
    args = p.parse_args(argv)
    if args.batch < 1 or args.size < 32 or args.repeats < 1 or args.threads < 1:
        p.error("--batch, --repeats and --threads must be >= 1 and --size >= 32")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available")
    return args


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        import cv2  # pytorch-grad-cam resizes with OpenCV

        cv2.setNumThreads(args.threads)
    except ImportError:
        pass
    device = torch.device(args.device)
    timed = make_timer(device)
    layer_name, logit_scale = MODELS[args.model]

    torch.manual_seed(0)
    model = getattr(torchvision.models, args.model)(weights=None)
    model = prepare_model(model, logit_scale, args.size).to(device)
    layer = dict(model.named_modules())[layer_name]
    ref_pgc = copy.deepcopy(model)  # pytorch-grad-cam: model.eval(), zero_grad(), backward() (fills param.grad)
    ref_tc = copy.deepcopy(model)  # torchcam
    snapshot = {k: v.detach().clone() for k, v in model.state_dict().items()}

    num_classes = [m for m in model.modules() if isinstance(m, nn.Linear)][-1].out_features
    x = torch.randn(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(123)).to(device)
    target_list = [(37 * i + 5) % num_classes for i in range(args.batch)]
    targets = torch.tensor(target_list, device=device)
    pgc_targets = [ClassifierOutputTarget(c) for c in target_list] if pgc is not None else None
    size = (args.size, args.size)
    is_resnet = args.model.startswith("resnet")

    methods = [m for m in METHODS if m != "cam" or is_resnet]
    times: Dict[str, Dict[str, Optional[float]]] = {}
    diffs: Dict[str, Dict[str, Optional[float]]] = {}
    floors: Dict[str, float] = {}
    faith_seconds = faith_floor1 = float("nan")
    floor2 = floor_tail_backward(model, layer, x, targets)
    for method in methods:
        # Floor 2 is timed with every method, so each row's 'ours / floor2' compares calls of the same window.
        group: Dict[str, Callable[[], Any]] = {"floor2": floor2}
        if method == "gradcam":  # floor 1 and faithfulness share Grad-CAM's timing window
            group["floor1"] = floor_forward(model, x)
        group["ours"] = ours(model, x, method, layer_name, targets)
        pgc_cam = extractor = None
        if pgc is not None and method in PGC_CLASSES:
            pgc_cam = getattr(pgc, PGC_CLASSES[method])(ref_pgc, target_layers=[dict(ref_pgc.named_modules())[layer_name]])
            group["pgc"] = partial(pgc_cam, input_tensor=x, targets=pgc_targets)
        if tcm is not None and method in TORCHCAM_CLASSES:
            kwargs = {"fc_layer": "fc"} if method == "cam" else {}
            extractor = getattr(tcm, TORCHCAM_CLASSES[method])(ref_tc, target_layer=layer_name, input_shape=(3, *size), **kwargs)
            group["torchcam"] = torchcam_call(extractor, ref_tc, x, target_list, gradient=method != "cam")
        if method == "gradcam":
            group["faithfulness"] = lambda: cc.faithfulness(model, x, "gradcam", layer_name, targets, batch_size=args.batch)
        try:
            best, outputs = time_group(group, args.repeats, timed, warm=() if method == "gradcam" else ("floor2",))
        finally:  # one set of reference hooks on a model at a time
            if pgc_cam is not None:
                pgc_cam.activations_and_grads.release()
            if extractor is not None:
                extractor.remove_hooks()
            ref_pgc.zero_grad(set_to_none=True)
        if method == "gradcam":
            floors = {"floor1": best["floor1"], "floor2": best["floor2"]}
            faith_seconds, faith_floor1 = best["faithfulness"], best["floor1"]
        times[method] = {k: best.get(k) for k in ("ours", "pgc", "torchcam", "floor2")}
        diffs[method] = {
            k: (max_abs_diff(outputs["ours"], outputs[k]) if k in outputs else None) for k in ("pgc", "torchcam")
        }

    unchanged = all(torch.equal(v, snapshot[k]) for k, v in model.state_dict().items())
    unchanged = unchanged and all(p.grad is None for p in model.parameters()) and not model.training

    # ---------------------------------------------------------------------------------------------------------- print
    header = [
        "method",
        "ours (s)",
        "pytorch-grad-cam (s)",
        "torchcam (s)",
        "ours / floor2",
        "pgc / ours",
        "torchcam / ours",
        "max |diff| vs pgc",
        "max |diff| vs torchcam",
    ]
    rows = []
    for method in methods:
        t, d = times[method], diffs[method]
        label = method + (" ¹" if method == "gradcampp" else "")
        rows.append(
            [
                label,
                fmt_s(t["ours"]),
                fmt_s(t["pgc"]),
                fmt_s(t["torchcam"]),
                fmt_ratio(t["ours"], t["floor2"]),
                fmt_ratio(t["pgc"], t["ours"]),
                fmt_ratio(t["torchcam"], t["ours"]),
                fmt_diff(d["pgc"]),
                fmt_diff(d["torchcam"]),
            ]
        )
    command = (
        f"python benchmarks/bench_gradient_methods.py --model {args.model} --batch {args.batch} --size {args.size} "
        f"--repeats {args.repeats} --threads {args.threads} --device {args.device}"
    )
    facts = [
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, grad-cam {version('grad-cam')}, "
        f"torchcam {version('torchcam')}, cam_callbacks {cc.__version__}, Python {platform.python_version()}",
        f"device: {machine_facts(device, args.threads)}",
        f"model: {args.model} (random weights, BatchNorm calibrated, {num_classes} classes), target layer '{layer_name}', "
        f"batch {args.batch}, size {args.size}x{args.size}, min of {args.repeats} timed calls after 1 warm-up",
        f"floor 1 (forward, no_grad): {floors['floor1']:.3f} s; floor 2 (forward + tail backward): {floors['floor2']:.3f} s "
        f"= {floors['floor2'] / floors['floor1']:.2f} forward passes",
    ]
    notes = [
        f"faithfulness (gradcam, 5 metrics): {faith_seconds:.3f} s = {faith_seconds / faith_floor1:.2f} forward passes "
        f"= {faith_seconds / (times['gradcam']['ours'] or float('nan')):.2f}x ours gradcam explain",
        "¹ torchcam's Grad-CAM++ is a different formula (`A*g^3` inside the spatial sum, not `sum(A)*g^3` as in the paper and "
        "pytorch-grad-cam): its |diff| is not an error.",
        "— : no such method in that library (pytorch-grad-cam has no CAM, torchcam no HiResCAM).",
        "'ours / floor2' divides by floor 2 timed in the same round-robin as that row (the header gives Grad-CAM's). "
        "Ratios > 1 in 'pgc / ours' and 'torchcam / ours' mean the reference is slower. torchcam times include the forward "
        "pass and ReLU + bilinear upsampling + min-max with torch ops.",
    ]
    if args.model == "densenet121":
        notes.append(
            "densenet121 'features.denseblock4' has signed activations: Grad-CAM++'s closed form is ill-conditioned there "
            "(denominators near 0), so its |diff| vs pytorch-grad-cam (1e-6 eps) can be large."
        )
    notes.append(f"our model unchanged by the run (weights, buffers, param.grad, eval mode): {'yes' if unchanged else 'NO'}")
    table = render(rows, header, args.markdown)
    wall = time.perf_counter() - _T_START
    if args.markdown:
        print(f"`{command}`\n")
        print("\n".join(f"- {f}" for f in facts) + "\n")
        print(table + "\n")
        print("\n".join(f"- {n}" for n in notes))
        print(f"- total wall time of the run: {wall:.0f} s")
    else:
        print(command)
        print("\n".join(facts) + "\n")
        print(table + "\n")
        print("\n".join(notes))
        print(f"total wall time of the run: {wall:.0f} s")
    if not unchanged:
        sys.exit("error: the benchmark changed the model that cam_callbacks explained")


if __name__ == "__main__":
    main()
