#!/usr/bin/env python
"""Per-call cost of cam_callbacks' perturbation CAM methods against floors and two reference libraries.

On one torchvision model with random weights, the same random images and fixed target classes, one run times:

- floor 1: one plain forward pass of the batch under ``torch.no_grad()``;
- floor 2: forward + backward through the tail only (as in ``bench_gradient_methods.py``), for scale;
- the Score-CAM floor: ``N*K`` plain forward passes of masked images (``N`` images, ``K`` channels of the target
  layer) in batches of ``--floor-batch``, masks built outside the timing: what Score-CAM costs at least when it
  skips no channel. By default only the first ``--floor-rows`` masked images are timed and the time is scaled by
  ``N*K / rows`` (the output says so);
- ours: ``cam_callbacks.explain`` with ``scorecam``, ``ablationcam`` and ``reciprocam`` (``gaussian`` False and
  True). Recipro-CAM's first call on a model (tail derived with torch.fx, bytes per row measured) is timed apart
  from later calls (tail cached per model): each of its calls gets a fresh deep copy of the model, made outside the
  timing;
- pytorch-grad-cam: ``ScoreCAM`` (its ``batch_size`` attribute set to ``--ref-batch``, and once more at its default
  16) and ``AblationCAM(batch_size=--ref-batch)``, with ``ClassifierOutputTarget`` targets, each built once on its
  own deep copy of the model; its tqdm progress bars are disabled;
- torchcam: forward pass + ``ScoreCAM(batch_size=--ref-batch)`` + ReLU/bilinear upsampling/min-max to the input size
  with torch ops, on another deep copy. torchcam has no Ablation-CAM or Recipro-CAM, pytorch-grad-cam no Recipro-CAM;
- for Recipro-CAM, a naive reference written here: the whole model re-run once per feature position with a forward
  hook replacing the target layer's output by the masked copy (``N*h*w`` full forward passes).

Every callable is called once to warm up (that output is the one compared), then ``--repeats`` times round-robin
with the other callables of the same method; the minimum is reported. Helpers (model preparation, timing,
post-processing, table) are shared with ``bench_gradient_methods.py``.

Run from the repository root::

    python benchmarks/bench_perturbation_methods.py                      # resnet18 layer4, batch 4, 112x112, 1 thread
    python benchmarks/bench_perturbation_methods.py --model mobilenet_v3_small --markdown
"""

from __future__ import annotations

import time

_T_START = time.perf_counter()

import argparse
import copy
import os
import platform
import sys
from functools import partialmethod
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torchvision
from torch import Tensor, nn

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)  # benchmark the working tree, not whatever is installed
sys.path.insert(0, HERE)  # the shared helpers of bench_gradient_methods.py

from bench_gradient_methods import (
    MODELS,
    floor_forward,
    floor_tail_backward,
    fmt_diff,
    fmt_ratio,
    fmt_s,
    machine_facts,
    make_timer,
    max_abs_diff,
    prepare_model,
    render,
    time_group,
    torch_postprocess,
    torchcam_call,
    version,
)

import cam_callbacks as cc
from cam_callbacks.engine.scorers import ForwardCost, rows_per_pass
from cam_callbacks.methods.perturbation import position_masks

try:
    import tqdm

    tqdm.tqdm.__init__ = partialmethod(tqdm.tqdm.__init__, disable=True)  # pytorch-grad-cam's per-image progress bars
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
except ImportError:  # pragma: no cover - optional reference
    pgc = None  # type: ignore[assignment]
try:
    import torchcam.methods as tcm
except ImportError:  # pragma: no cover - optional reference
    tcm = None  # type: ignore[assignment]

METHODS = ["scorecam", "ablationcam", "reciprocam"]


# --------------------------------------------------------------------------------------------------------------------
# The callables


def capture_activations(model: nn.Module, layer: nn.Module, x: Tensor) -> Tensor:
    """The target layer's output for ``x`` (one forward pass without autograd)."""
    captured: List[Tensor] = []
    handle = layer.register_forward_hook(lambda module, inputs, output: captured.append(output.detach()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return captured[0]


def scorecam_floor(model: nn.Module, x: Tensor, activations: Tensor, rows: int, batch: int) -> Callable[[], None]:
    """Plain forward passes of the first ``rows`` masked images (image-major order) in batches of ``batch``.

    The masked images (bilinear upsampling + min-max of each channel, times its image) are built here, outside the
    timing: the floor is the network alone.
    """
    n, k = activations.shape[:2]
    pairs = torch.cartesian_prod(torch.arange(n), torch.arange(k))[:rows].to(x.device)
    masks = cc.upsample_and_normalize(activations[pairs[:, 0], pairs[:, 1]], (x.shape[-2], x.shape[-1]))
    masked = x[pairs[:, 0]] * masks.unsqueeze(1).to(x.dtype)

    def run() -> None:
        with torch.no_grad():
            for start in range(0, masked.shape[0], batch):
                model(masked[start : start + batch])

    return run


def ours(model: nn.Module, x: Tensor, method: str, layer_name: str, targets: Tensor, **kwargs: Any) -> Callable[[], Tensor]:
    return lambda: cc.explain(model, x, method=method, target_layer=layer_name, targets=targets, batch_size=x.shape[0], **kwargs)


class FreshModelCalls:
    """``explain`` on a model never explained before, at every call: deep copies made up front, one used per call.

    cam_callbacks caches the derived tail and the measured bytes per row per model object (weak references), so
    a fresh copy pays for both again, as the first call on a model does.
    """

    def __init__(self, model: nn.Module, calls: int, x: Tensor, method: str, layer_name: str, targets: Tensor, **kwargs: Any) -> None:
        self.copies = [copy.deepcopy(model) for _ in range(calls)]
        self.args = (x, method, layer_name, targets)
        self.kwargs = kwargs

    def __call__(self) -> Tensor:
        model = self.copies.pop()  # the copy is dropped after the call (and with it its cache entries)
        return ours(model, *self.args, **self.kwargs)()


def naive_reciprocam(model: nn.Module, layer: nn.Module, x: Tensor, targets: Tensor, gaussian: bool) -> Callable[[], Tensor]:
    """Recipro-CAM the slow, obvious way: per image, the whole model on ``h*w`` copies, the layer's output replaced."""
    size = (x.shape[-2], x.shape[-1])

    def run() -> Tensor:
        activations = capture_activations(model, layer, x)
        n, _, h, w = activations.shape
        masks = position_masks(h, w, gaussian, activations.device, activations.dtype)  # (h*w, h, w)
        maps = []
        for i in range(n):
            replacement = activations[i : i + 1] * masks[:, None]  # (h*w, K, h, w)
            handle = layer.register_forward_hook(lambda module, inputs, output, replacement=replacement: replacement)
            try:
                with torch.no_grad():
                    logits = model(x[i : i + 1].expand(h * w, *x.shape[1:]))
            finally:
                handle.remove()
            maps.append(torch.softmax(logits.float(), dim=1)[:, targets[i]].reshape(h, w))
        return torch_postprocess(torch.stack(maps), size)

    return run


def pgc_call(cam: Any, x: Tensor, targets: List[Any], batch_size: Optional[int] = None) -> Callable[[], Any]:
    """``cam(input_tensor=x, targets=...)``, with ``cam.batch_size`` set first where given (pytorch-grad-cam's ScoreCAM
    reads the attribute at each call, 16 when it is missing)."""

    def run() -> Any:
        if batch_size is not None:
            cam.batch_size = batch_size
        return cam(input_tensor=x, targets=targets)

    return run


# --------------------------------------------------------------------------------------------------------------------


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet18", choices=sorted(MODELS))
    p.add_argument("--layer", default=None, help="target layer (dotted name); default: the model's usual one, see README")
    p.add_argument(
        "--logit-scale",
        type=float,
        default=1.0,
        help="factor on the last linear layer's weights (bench_gradient_methods.py uses 1e3-1e4, which makes Score-CAM's "
        "softmax over channels one-hot, see README)",
    )
    p.add_argument("--batch", type=int, default=4, help="images per call (one chunk)")
    p.add_argument("--size", type=int, default=112, help="image height and width")
    p.add_argument("--repeats", type=int, default=2, help="timed calls per callable after one warm-up; the min is reported")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (and OpenCV's, used by pytorch-grad-cam)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS, help="which methods to time (default: all)")
    p.add_argument("--ref-batch", type=int, default=32, help="batch_size of the references' perturbation passes")
    p.add_argument(
        "--perturbation-batch", type=int, default=None, help="our perturbation_batch (rows per pass); default: chosen from free memory"
    )
    p.add_argument("--floor-batch", type=int, default=64, help="images per forward pass of the Score-CAM floor")
    p.add_argument(
        "--floor-rows", type=int, default=256, help="masked images timed for the Score-CAM floor, then extrapolated to N*K; 0: all N*K"
    )
    p.add_argument("--markdown", action="store_true", help="print a Markdown table with a header of machine facts")
    args = p.parse_args(argv)
    if args.batch < 1 or args.size < 32 or args.repeats < 1 or args.threads < 1 or args.ref_batch < 1 or args.floor_batch < 1:
        p.error("--batch, --repeats, --threads, --ref-batch and --floor-batch must be >= 1 and --size >= 32")
    if args.floor_rows < 0 or (args.perturbation_batch is not None and args.perturbation_batch < 1):
        p.error("--floor-rows must be >= 0 and --perturbation-batch >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available")
    args.methods = [m for m in METHODS if m in args.methods]
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
    layer_name = args.layer or MODELS[args.model][0]
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")

    torch.manual_seed(0)
    model = getattr(torchvision.models, args.model)(weights=None)
    model = prepare_model(model, args.logit_scale, args.size).to(device)
    modules = dict(model.named_modules())
    if layer_name not in modules:
        sys.exit(f"error: {args.model} has no module {layer_name!r}")
    layer = modules[layer_name]
    snapshot = {k: v.detach().clone() for k, v in model.state_dict().items()}

    num_classes = [m for m in model.modules() if isinstance(m, nn.Linear)][-1].out_features
    x = torch.randn(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(123)).to(device)
    target_list = [(37 * i + 5) % num_classes for i in range(args.batch)]
    targets = torch.tensor(target_list, device=device)
    pgc_targets = [ClassifierOutputTarget(c) for c in target_list] if pgc is not None else []
    size = (args.size, args.size)

    # What ours will do for Score-CAM (the same measurement and rule as the engine; read-only here).
    activations = capture_activations(model, layer, x)
    n, k, h, w = activations.shape
    flat = activations.flatten(2)
    varying_pairs = int((flat.amax(2) > flat.amin(2)).sum())
    with torch.no_grad(), ForwardCost(model, layer, n) as meter:
        model(x)
    row_bytes = meter.result(activations.numel() * activations.element_size())
    model_rows = rows_per_pass(row_bytes.model, device, args.perturbation_batch)
    tail_rows = max(n, rows_per_pass(row_bytes.tail, device, args.perturbation_batch))
    floor_rows = n * k if args.floor_rows == 0 else min(n * k, args.floor_rows)

    times: Dict[str, Dict[str, Optional[float]]] = {}
    diffs: Dict[str, Dict[str, Optional[float]]] = {}
    floors: Dict[str, float] = {}
    extra: Dict[str, float] = {}
    floor_sc: Optional[float] = None
    floor1 = floor_forward(model, x)
    floor2 = floor_tail_backward(model, layer, x, targets)
    first_group = True

    def run_group(group: Dict[str, Callable[[], Any]]) -> Tuple[Dict[str, float], Dict[str, Any]]:
        nonlocal first_group
        if first_group:  # floor 2 (for the header) shares the first group's window
            group = {"floor2": floor2, **group}
        best, outputs = time_group(group, args.repeats, timed, warm=() if first_group else ("floor1",))
        if first_group:
            floors["floor1"], floors["floor2"] = best["floor1"], best["floor2"]
        first_group = False
        return best, outputs

    # -------------------------------------------------------------------------------------------------- Score-CAM
    if "scorecam" in args.methods:
        group: Dict[str, Callable[[], Any]] = {
            "floor1": floor1,
            "floor_sc": scorecam_floor(model, x, activations, floor_rows, args.floor_batch),
            "ours": ours(model, x, "scorecam", layer_name, targets, perturbation_batch=args.perturbation_batch),
        }
        pgc_cam = extractor = None
        if pgc is not None:
            ref = copy.deepcopy(model)
            pgc_cam = pgc.ScoreCAM(ref, target_layers=[dict(ref.named_modules())[layer_name]])
            group["pgc"] = pgc_call(pgc_cam, x, pgc_targets, batch_size=args.ref_batch)
            group["pgc16"] = pgc_call(pgc_cam, x, pgc_targets, batch_size=16)
        if tcm is not None:
            ref_tc = copy.deepcopy(model)
            extractor = tcm.ScoreCAM(ref_tc, target_layer=layer_name, batch_size=args.ref_batch, input_shape=(3, *size))
            group["torchcam"] = torchcam_call(extractor, ref_tc, x, target_list, gradient=False)
        try:
            best, outputs = run_group(group)
        finally:
            if pgc_cam is not None:
                pgc_cam.activations_and_grads.release()
            if extractor is not None:
                extractor.remove_hooks()
        floor_sc = best["floor_sc"] * (n * k) / floor_rows
        times["scorecam"] = {"ours": best["ours"], "pgc": best.get("pgc"), "torchcam": best.get("torchcam"), "floor": floor_sc}
        diffs["scorecam"] = {key: max_abs_diff(outputs["ours"], outputs[key]) if key in outputs else None for key in ("pgc", "torchcam")}
        if "pgc16" in best:
            times["scorecam16"] = {"ours": best["ours"], "pgc": best["pgc16"], "torchcam": None, "floor": floor_sc}
            diffs["scorecam16"] = {"pgc": max_abs_diff(outputs["ours"], outputs["pgc16"]), "torchcam": None}

    # ----------------------------------------------------------------------------------------------- Ablation-CAM
    if "ablationcam" in args.methods:
        group = {"floor1": floor1, "ours": ours(model, x, "ablationcam", layer_name, targets, perturbation_batch=args.perturbation_batch)}
        pgc_cam = None
        if pgc is not None:
            ref = copy.deepcopy(model)
            pgc_cam = pgc.AblationCAM(ref, target_layers=[dict(ref.named_modules())[layer_name]], batch_size=args.ref_batch)
            group["pgc"] = pgc_call(pgc_cam, x, pgc_targets)
        try:
            best, outputs = run_group(group)
        finally:
            if pgc_cam is not None:
                pgc_cam.activations_and_grads.release()
        times["ablationcam"] = {"ours": best["ours"], "pgc": best.get("pgc"), "torchcam": None, "floor": best["floor1"]}
        diffs["ablationcam"] = {"pgc": max_abs_diff(outputs["ours"], outputs["pgc"]) if "pgc" in outputs else None, "torchcam": None}

    # ------------------------------------------------------------------------------------------------ Recipro-CAM
    if "reciprocam" in args.methods:
        kwargs: Dict[str, Any] = {"perturbation_batch": args.perturbation_batch}
        group = {
            "floor1": floor1,
            "first": FreshModelCalls(model, args.repeats + 1, x, "reciprocam", layer_name, targets, **kwargs),
            "ours": ours(model, x, "reciprocam", layer_name, targets, **kwargs),
            "gauss": ours(model, x, "reciprocam", layer_name, targets, method_options={"gaussian": True}, **kwargs),
            "naive": naive_reciprocam(model, layer, x, targets, gaussian=False),
            "naive_gauss": naive_reciprocam(model, layer, x, targets, gaussian=True),
        }
        best, outputs = run_group(group)
        for key, out, ref_key in (("reciprocam_first", "first", "naive"), ("reciprocam", "ours", "naive"), ("reciprocam_gauss", "gauss", "naive_gauss")):
            times[key] = {"ours": best[out], "pgc": None, "torchcam": None, "floor": best["floor1"]}
            diffs[key] = {"pgc": None, "torchcam": None, "naive": max_abs_diff(outputs[out], outputs[ref_key])}
        extra = {"naive": best["naive"], "naive_gauss": best["naive_gauss"]}

    unchanged = all(torch.equal(v, snapshot[key]) for key, v in model.state_dict().items())
    unchanged = unchanged and all(p.grad is None for p in model.parameters()) and not model.training

    # ---------------------------------------------------------------------------------------------------------- print
    header = [
        "method",
        "ours (s)",
        "pytorch-grad-cam (s)",
        "torchcam (s)",
        "floor (s)",
        "ours / floor",
        "pgc / ours",
        "torchcam / ours",
        "max |diff| vs pgc",
        "max |diff| vs torchcam",
    ]
    labels = {
        "scorecam": f"scorecam ¹ (references: batch {args.ref_batch})",
        "scorecam16": "scorecam ¹ (pgc: default batch 16)",
        "ablationcam": "ablationcam ²",
        "reciprocam_first": "reciprocam ³, first call",
        "reciprocam": "reciprocam ³",
        "reciprocam_gauss": "reciprocam ³, gaussian",
    }
    rows = []
    for key, label in labels.items():
        if key not in times:
            continue
        t, d = times[key], diffs[key]
        blank = key == "scorecam16"  # torchcam has its row above
        rows.append(
            [
                label,
                fmt_s(t["ours"]),
                fmt_s(t["pgc"]),
                "" if blank else fmt_s(t["torchcam"]),
                fmt_s(t["floor"]),
                fmt_ratio(t["ours"], t["floor"]),
                fmt_ratio(t["pgc"], t["ours"]),
                "" if blank else fmt_ratio(t["torchcam"], t["ours"]),
                fmt_diff(d["pgc"]),
                "" if blank else fmt_diff(d["torchcam"]),
            ]
        )
    command = (
        f"python benchmarks/bench_perturbation_methods.py --model {args.model} --layer {layer_name} --batch {args.batch} "
        f"--size {args.size} --logit-scale {args.logit_scale:g} --repeats {args.repeats} --threads {args.threads} --device {args.device} "
        f"--methods {' '.join(args.methods)} "
        f"--ref-batch {args.ref_batch} --floor-batch {args.floor_batch} --floor-rows {args.floor_rows}"
        + (f" --perturbation-batch {args.perturbation_batch}" if args.perturbation_batch is not None else "")
    )
    load_end = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    cores = os.cpu_count() or 1
    busy = device.type == "cpu" and max(load_start, load_end) > cores
    facts = [
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, grad-cam {version('grad-cam')}, "
        f"torchcam {version('torchcam')}, cam_callbacks {cc.__version__}, Python {platform.python_version()}",
        f"device: {machine_facts(device, args.threads)}; 1-min load average {load_start:.1f} at the start, {load_end:.1f} at "
        f"the end" + (f" (above the {cores} cores: other processes competed for them, times are inflated and noisy)" if busy else ""),
        f"model: {args.model} (random weights, BatchNorm calibrated, last linear x {args.logit_scale:g}, {num_classes} classes), "
        f"target layer '{layer_name}' "
        f"-> {k} channels x {h}x{w}, batch {n}, size {args.size}x{args.size}, min of {args.repeats} timed calls after 1 warm-up",
        f"floor 1 (forward, no_grad): {floors['floor1']:.3f} s; floor 2 (forward + tail backward): {floors['floor2']:.3f} s "
        f"= {floors['floor2'] / floors['floor1']:.2f} forward passes",
    ]
    if floor_sc is not None:
        how = "all of them" if floor_rows == n * k else f"the first {floor_rows} timed, x {n * k / floor_rows:.2f} (extrapolated)"
        facts.append(
            f"Score-CAM floor: N*K = {n * k} masked forward passes in batches of {args.floor_batch} ({how}): "
            f"{floor_sc:.3f} s = {floor_sc / floors['floor1']:.0f} x floor 1"
        )
    rows_how = "--perturbation-batch" if args.perturbation_batch is not None else "rows_per_pass: 25% of free memory / measured bytes per row"
    facts.append(
        f"ours, rows per perturbation pass ({rows_how}): whole model {model_rows} ({row_bytes.model / 2**20:.1f} MiB/row), "
        f"tail {tail_rows} ({row_bytes.tail / 2**10:.0f} KiB/row)"
        + (
            f"; Score-CAM (image, channel) pairs scored: {varying_pairs} of {n * k} (constant channels share one blank-image pass)"
            if floor_sc is not None
            else ""
        )
    )
    notes = []
    if floor_sc is not None:
        notes.append(
            "¹ Score-CAM maps differ by construction: pytorch-grad-cam upsamples the masks with "
            "`UpsamplingBilinear2d` (align_corners=True) and divides by max - min + 1e-8; torchcam min-max normalises at "
            "feature resolution, then upsamples (align_corners=False); ours upsamples (align_corners=False), then min-max "
            "normalises. Different masks give different scores, and the softmax over channels amplifies score differences, "
            "so these |diff| are not round-off. 'ours / floor' divides by the Score-CAM floor."
        )
    if "ablationcam" in times:
        notes.append(
            "² pytorch-grad-cam's Ablation-CAM re-runs the layers *before* the target layer for every batch of ablated copies "
            "(it swaps the target layer for an `AblationLayer`); ours runs only the network's tail. Where the layer's output "
            "has negative values, pytorch-grad-cam ablates a channel to min - 1e7, not to 0 (its comment: 'deviating from the "
            "paper'), so the maps differ. 'ours / floor' is in forward passes (floor 1)."
        )
    if "reciprocam" in times:
        notes.append(
            "³ No reference library implements Recipro-CAM: |diff| vs a naive version written here (the whole model re-run "
            f"on each of the N*h*w = {n * h * w} masked copies through a forward hook; {extra['naive']:.3f} s plain, "
            f"{extra['naive_gauss']:.3f} s gaussian): {fmt_diff(diffs['reciprocam']['naive'])} plain, "
            f"{fmt_diff(diffs['reciprocam_gauss']['naive'])} gaussian, {fmt_diff(diffs['reciprocam_first']['naive'])} first call. "
            "'first call' runs on a model never explained before (fresh deep copy each time): it derives the tail with "
            "torch.fx and measures the bytes per row; later calls reuse both (cached per model). 'ours / floor' is in "
            "forward passes (floor 1)."
        )
    notes += [
        "— : no such method in that library (torchcam: no Ablation-CAM, no Recipro-CAM; pytorch-grad-cam: no Recipro-CAM).",
        "Ratios > 1 in 'pgc / ours' and 'torchcam / ours' mean the reference is slower. Each row's floor was timed in the "
        "same round-robin as that row; torchcam times include the forward pass and ReLU + bilinear upsampling + min-max "
        "with torch ops.",
        f"our model unchanged by the run (weights, buffers, param.grad, eval mode): {'yes' if unchanged else 'NO'}",
    ]
    table = render(rows, header, args.markdown)
    wall = time.perf_counter() - _T_START
    if args.markdown:
        print(f"`{command}`\n")
        print("\n".join(f"- {f}" for f in facts) + "\n")
        print(table + "\n")
        print("\n".join(f"- {note}" for note in notes))
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
