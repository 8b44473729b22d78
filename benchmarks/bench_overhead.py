"""What CAMMonitor costs a real training run: the example workload with and without the callback, in one run.

Trains ``examples/train_shapes.py``'s CNN on its generated shapes (same data, seed and settings) once
without and once with ``CAMMonitor`` (the README's default configuration, or the methods given),
alternating the order over ``--repeats`` pairs, and prints the fit times, the overhead ratio (min
over repeats) and where the callback's time goes (maps and metrics, watch analysis, logging).

    python benchmarks/bench_overhead.py                    # 2 pairs of 10-epoch fits, ~3 min on 2 CPU cores
    python benchmarks/bench_overhead.py --max-epochs 3 --repeats 1 --methods gradcam
    python benchmarks/bench_overhead.py --markdown
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))

from train_shapes import ShapesClassifier, ShapesDataModule

from cam_callbacks import CAMMonitor, ImageStyle
from cam_callbacks.datasets.shapes import SHAPES_MEAN, SHAPES_STD

#: CAMMonitor.last_timings phase -> label in the report
PHASES = {
    "compute": "maps + faithfulness",
    "analyze": "watch (localisation, drift, shortcut)",
    "log": "logging (grids, PNG encoding, scalars)",
    "total": "callback total",
}


class _PhaseTotals(pl.Callback):
    """Adds up the monitor's per-phase timings (``CAMMonitor.last_timings``) after each of its runs."""

    def __init__(self, monitor: CAMMonitor, totals: Dict[str, float]) -> None:
        self.monitor, self.totals = monitor, totals
        self.seen: Optional[Dict[str, float]] = None

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        timings = self.monitor.last_timings
        if timings and timings is not self.seen:  # a new dict per run of the monitor
            self.seen = timings
            for phase, label in PHASES.items():
                self.totals[label] = self.totals.get(label, 0.0) + timings[phase]


def fit(args: argparse.Namespace, with_callback: bool, logdir: str) -> Dict[str, float]:
    pl.seed_everything(0, workers=True)
    data = ShapesDataModule(num_train=args.num_train, num_val=args.num_val, image_size=args.image_size, batch_size=64)
    model = ShapesClassifier(num_classes=4)
    callbacks: List[pl.Callback] = []
    totals: Dict[str, float] = {}
    if with_callback:
        monitor = CAMMonitor(methods=args.methods, target_layer=model.last_block, style=ImageStyle(mean=SHAPES_MEAN, std=SHAPES_STD))
        callbacks += [monitor, _PhaseTotals(monitor, totals)]
    trainer = pl.Trainer(
        max_epochs=args.max_epochs, accelerator="cpu", devices=1, callbacks=callbacks, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=10,
        logger=TensorBoardLogger(logdir, name="with" if with_callback else "without"),
    )  # fmt: skip
    start = time.perf_counter()
    trainer.fit(model, datamodule=data)
    totals["fit"] = time.perf_counter() - start
    return totals


def render_timing(repeats: int = 10, num_probe: int = 32, image_size: int = 48, methods: Sequence[str] = ("gradcam", "gradcampp")) -> Dict[str, float]:
    """Median milliseconds per run of drawing the images of ``num_probe`` probe images and ``methods`` (with masks: grid,
    worst, class means, mean map, evolution), on the training thread, and of PNG-encoding them (on the writer thread).
    CPU time of this thread (``time.thread_time``), so that other processes on a shared machine do not count."""
    from cam_callbacks.engine.result import Explanation
    from cam_callbacks.metrics.watch import analyze_maps
    from cam_callbacks.render.evolution import MapStrip
    from cam_callbacks.render.png import encode_png
    from cam_callbacks.render.publish import ImageStyle, ProbeView, RunInfo, run_images, to_uint8

    g = torch.Generator().manual_seed(0)
    n, size = num_probe, image_size
    images, labels = torch.rand(n, 3, size, size, generator=g), torch.randint(0, 4, (n,), generator=g)
    masks = torch.zeros(n, size, size, dtype=torch.bool)
    masks[:, size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = True
    view = ProbeView(images, labels, masks, None, torch.arange(n), "softmax")
    strip, draw, encode = MapStrip(), [], []
    for run in range(repeats + 1):
        maps = {m: torch.rand(n, size, size, generator=g) for m in methods}
        explanation = Explanation(maps, torch.randn(n, 4, generator=g), labels, "layer")
        analyses = {m: analyze_maps(v, masks) for m, v in maps.items()}
        info = RunInfo({m: {"adcc": torch.rand(n, generator=g)} for m in methods}, ["disc", "square", "triangle", "cross"], f"ep {run}", strip)
        start = time.thread_time()
        built = {m: {k: to_uint8(v) for k, v in named.items()} for m, named in run_images(view, explanation, analyses, ImageStyle(), info).items()}
        drawn = time.thread_time()
        for named in built.values():
            for image in named.values():
                encode_png(image)
        if run:  # the first run loads fonts and colormaps
            draw.append(1000 * (drawn - start))
            encode.append(1000 * (time.thread_time() - drawn))
    return {"draw_ms": sorted(draw)[len(draw) // 2], "encode_ms": sorted(encode)[len(encode) // 2]}


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-epochs", type=int, default=10)
    parser.add_argument("--num-train", type=int, default=2000)
    parser.add_argument("--num-val", type=int, default=400)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--methods", nargs="+", default=["gradcam", "gradcampp"])
    parser.add_argument("--repeats", type=int, default=2, help="pairs of fits (order alternates); the minimum is reported")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--render-only", action="store_true", help="only time drawing + PNG encoding of one run's images (32 probe images, 2 methods)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    timing = render_timing()
    print(f"images of one run (32 probe images 48 px, 2 methods, masks): drawing {timing['draw_ms']:.1f} ms (training thread), "
          f"PNG encoding {timing['encode_ms']:.1f} ms (writer thread); CPU time, median of 10")  # fmt: skip
    if args.render_only:
        return
    without: List[float] = []
    with_runs: List[Dict[str, float]] = []
    with tempfile.TemporaryDirectory() as logdir:
        for repeat in range(args.repeats):
            for flag in ([False, True] if repeat % 2 == 0 else [True, False]):
                result = fit(args, flag, logdir)
                (with_runs.append(result) if flag else without.append(result["fit"]))
                print(f"  fit {'with' if flag else 'without'} the callback: {result['fit']:.2f} s", flush=True)
    base = min(without)
    best = min(with_runs, key=lambda r: r["fit"])
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{args.threads} thread(s); {args.max_epochs} epochs of {args.num_train} images {args.image_size}px; methods {args.methods}")  # fmt: skip
    rows = [
        ("fit without the callback (s)", f"{base:.2f}"),
        ("fit with the callback (s)", f"{best['fit']:.2f}"),
        ("overhead (with / without - 1)", f"{100 * (best['fit'] / base - 1):.1f}%"),
        ("callback's own time, summed over epochs (s)", f"{best.get('callback total', 0.0):.2f}"),
        ("callback's own time / fit without", f"{100 * best.get('callback total', 0.0) / base:.1f}%"),
    ]
    rows += [(f"  of which {label} (s)", f"{best[label]:.2f}") for label in
             ("maps + faithfulness", "watch (localisation, drift, shortcut)", "logging (grids, PNG encoding, scalars)") if label in best]  # fmt: skip
    if args.markdown:
        print("\n| quantity | value |\n|---|---:|")
        for name, value in rows:
            print(f"| {name.strip()} | {value} |")
    else:
        for name, value in rows:
            print(f"{name:<50} {value}")


if __name__ == "__main__":
    main()
