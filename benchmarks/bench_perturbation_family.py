#!/usr/bin/env python
"""The perturbation family in one run: Score-CAM, SS-CAM, IS-CAM, deletion/insertion and ROAD, ours against
pytorch-grad-cam and torchcam and against the floor (plain forward passes of as many perturbed images).

For each row, one group of callables is timed round-robin in the same process (one warm-up call each, whose output
is compared, then ``--repeats`` rounds, minimum reported), so the machine's load affects ours and the references
alike. The floor is measured in the same group: ``--floor-rows`` random images of the input size in batches of 64,
the time scaled to the number of perturbed images the method scores.

- Score-CAM: ours; pytorch-grad-cam ``ScoreCAM`` (batch 32); torchcam ``ScoreCAM`` (batch 32). Floor: ``N*K``.
- SS-CAM: ours (``seed``); torchcam ``SSCAM`` after ``torch.manual_seed(seed)`` (the same noise: see
  tests/methods/test_score_variants_crosscheck.py). Floor: ``S*N*K``. pytorch-grad-cam has no SS-CAM.
- IS-CAM: ours; torchcam ``ISCAM``. Floor: ``S*N*K``.
- deletion/insertion (20 steps, zero baseline, target softmax): ours; torchcam ``DeletionInsertionMetric`` with a
  stand-in extractor returning our Grad-CAM maps (difference: of the mean AUCs). Floor: ``N*(2T-2)``.
- ROAD (percentiles 10..90): ours; pytorch-grad-cam ``ROADCombined`` with ``ClassifierOutputSoftmaxTarget``
  (difference: noise draws differ, so ~1e-3..1e-2 is expected). Floor: ``19*N`` (the images and 18 imputed copies).

With the defaults (resnet18 ``layer4`` at 64 px: 2x2 feature maps, where torchcam's normalise-then-upsample masks
equal ours) the map differences are round-off. Run from the repository root::

    python benchmarks/bench_perturbation_family.py                 # resnet18, 2 images, 64 px, 1 thread: ~3-5 min
    python benchmarks/bench_perturbation_family.py --size 224 --batch 1 --rows scorecam road --markdown
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from contextlib import contextmanager
from functools import partialmethod
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
import torchvision
from torch import Tensor, nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from bench_gradient_methods import (  # isort: skip
    fmt_diff, fmt_ratio, fmt_s, machine_facts, make_timer, max_abs_diff, prepare_model, render, time_group, torch_postprocess, version,
)  # fmt: skip

import cam_callbacks as cc
from cam_callbacks.engine.scorers import ModelScorer
from cam_callbacks.metrics.perturbation_curves import curve_counts, deletion_insertion, road

try:
    import tqdm

    tqdm.tqdm.__init__ = partialmethod(tqdm.tqdm.__init__, disable=True)
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.metrics.road import ROADCombined
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget, ClassifierOutputTarget
except ImportError:  # pragma: no cover - optional reference
    pgc = None  # type: ignore[assignment]
try:
    import torchcam.methods as tcm
    from torchcam.metrics import DeletionInsertionMetric
except ImportError:  # pragma: no cover - optional reference
    tcm = None  # type: ignore[assignment]

ROWS = ["scorecam", "sscam", "iscam", "deletion_insertion", "road"]


class FixedMaps:
    """A stand-in torchcam extractor returning given maps (torchcam's deletion/insertion only ranks pixels by them)."""

    def __init__(self, model: nn.Module, maps: Tensor) -> None:
        self.model, self.maps = model, maps

    @contextmanager
    def _hooks_off(self):
        yield

    def __call__(self, class_idx: Any, scores: Any) -> List[Tensor]:
        return [self.maps]

    @staticmethod
    def fuse_cams(cams: List[Tensor]) -> Tensor:
        return cams[0]


def floor_call(model: nn.Module, x: Tensor, rows: int) -> Callable[[], None]:
    images = torch.randn(rows, *x.shape[1:], generator=torch.Generator().manual_seed(5)).to(x.device)

    def run() -> None:
        with torch.no_grad():
            for start in range(0, rows, 64):
                model(images[start : start + 64])

    return run


def torchcam_extractor_call(cls: Any, model: nn.Module, layer: str, x: Tensor, targets: List[int], seed: int, **kwargs: Any) -> Callable[[], Tensor]:
    extractor = cls(model, target_layer=layer, batch_size=32, input_shape=tuple(x.shape[1:]), **kwargs)

    def run() -> Tensor:
        with torch.no_grad():
            model(x)
        state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        try:
            (raw,) = extractor(class_idx=targets, normalized=False)
        finally:
            torch.random.set_rng_state(state)
        return torch_postprocess(raw, (x.shape[-2], x.shape[-1]))

    return run


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet18")
    p.add_argument("--layer", default="layer4")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--samples", type=int, default=2, help="SS-CAM and IS-CAM num_samples (torchcam: 35 and 10)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--floor-rows", type=int, default=128)
    p.add_argument("--rows", nargs="+", default=ROWS, choices=ROWS)
    p.add_argument("--markdown", action="store_true")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
    start_time = time.perf_counter()
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    timed = make_timer(torch.device("cpu"))
    load_start = os.getloadavg()[0]
    torch.manual_seed(0)
    model = prepare_model(getattr(torchvision.models, args.model)(weights=None), 1.0, args.size)
    x = torch.randn(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(123))
    with torch.no_grad():
        targets = model(x).argmax(1)
    target_list = [int(t) for t in targets]
    acts: Dict[str, Tensor] = {}
    handle = model.get_submodule(args.layer).register_forward_hook(lambda m, i, o: acts.__setitem__("a", o.detach()))
    with torch.no_grad():
        model(x)
    handle.remove()
    n, k = acts["a"].shape[:2]
    maps = cc.explain(model, x, "gradcam", args.layer, targets=targets)
    points = len(curve_counts(args.size * args.size, 20))
    counts = {"scorecam": n * k, "sscam": args.samples * n * k, "iscam": args.samples * n * k, "deletion_insertion": n * (2 * points - 2), "road": 19 * n}
    results: List[List[str]] = []
    for row in args.rows:
        group: Dict[str, Callable[[], Any]] = {"floor": floor_call(model, x, args.floor_rows)}
        options = {"num_samples": args.samples} if row in ("sscam", "iscam") else None
        if row in ("scorecam", "sscam", "iscam"):
            group["ours"] = lambda row=row, options=options: cc.explain(model, x, row, args.layer, targets=targets, method_options=options)
            if tcm is not None:
                cls = {"scorecam": tcm.ScoreCAM, "sscam": tcm.SSCAM, "iscam": tcm.ISCAM}[row]
                kwargs = {"num_samples": args.samples} if row != "scorecam" else {}
                group["torchcam"] = torchcam_extractor_call(cls, copy.deepcopy(model), args.layer, x, target_list, 0, **kwargs)
            if pgc is not None and row == "scorecam":
                ref = copy.deepcopy(model)
                cam = pgc.ScoreCAM(ref, target_layers=[ref.get_submodule(args.layer)])
                cam.batch_size = 32
                group["pgc"] = lambda cam=cam: cam(x, targets=[ClassifierOutputTarget(c) for c in target_list])
        elif row == "deletion_insertion":
            group["ours"] = lambda: deletion_insertion(x, maps, targets, ModelScorer(model, 64))
            if tcm is not None:
                metric = DeletionInsertionMetric(FixedMaps(copy.deepcopy(model), maps), lambda out: torch.softmax(out, -1), steps=20, batch_size=32)

                def torchcam_di(metric: Any = metric) -> Dict[str, float]:
                    metric.reset()
                    metric.update(x.clone(), class_idx=target_list)
                    return metric.summary()

                group["torchcam"] = torchcam_di
        else:
            group["ours"] = lambda: road(x, maps, targets, ModelScorer(model, 64))
            if pgc is not None:
                ref = copy.deepcopy(model)
                group["pgc"] = lambda ref=ref: ROADCombined()(x, maps.numpy(), [ClassifierOutputSoftmaxTarget(c) for c in target_list], ref)
        best, outputs = time_group(group, args.repeats, timed)
        floor = best["floor"] * counts[row] / args.floor_rows
        diffs: Dict[str, Optional[float]] = {"pgc": None, "torchcam": None}
        for ref_name in ("pgc", "torchcam"):
            if ref_name not in outputs:
                continue
            ours_out, theirs = outputs["ours"], outputs[ref_name]
            if row == "deletion_insertion":
                diffs[ref_name] = max(abs(float(ours_out[key].mean()) - theirs[key]) for key in ("deletion_auc", "insertion_auc"))
            elif row == "road":
                diffs[ref_name] = max_abs_diff(ours_out["road"], theirs)
            else:
                diffs[ref_name] = max_abs_diff(ours_out, theirs)
        results.append(
            [
                row, fmt_s(best["ours"]), fmt_s(best.get("pgc")), fmt_s(best.get("torchcam")), f"{fmt_s(floor)} ({counts[row]} passes)",
                fmt_ratio(best["ours"], floor), fmt_ratio(best.get("pgc"), best["ours"]), fmt_ratio(best.get("torchcam"), best["ours"]),
                fmt_diff(diffs["pgc"]), fmt_diff(diffs["torchcam"]),
            ]
        )  # fmt: skip
    header = ["row", "ours (s)", "pytorch-grad-cam (s)", "torchcam (s)", "floor (s)", "ours / floor", "pgc / ours", "torchcam / ours"]
    header += ["max |diff| vs pgc", "vs torchcam"]
    facts = [
        f"torch {torch.__version__}, grad-cam {version('grad-cam')}, torchcam {version('torchcam')}; {machine_facts(torch.device('cpu'), args.threads)}",
        f"model {args.model} (random weights, BN calibrated), layer {args.layer}: {k} channels x {tuple(acts['a'].shape[-2:])}, "
        f"{n} images of {args.size} px, SS-CAM/IS-CAM num_samples {args.samples}, min of {args.repeats} timed calls after 1 warm-up",
        f"1-min load average {load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end ({os.cpu_count()} cores): "
        "above the core count, times are inflated and noisy",
        f"total wall time {time.perf_counter() - start_time:.0f} s",
    ]
    table = render(results, header, args.markdown)
    print("\n".join(("- " if args.markdown else "") + f for f in facts) + "\n\n" + table)


if __name__ == "__main__":
    main()
