"""Run by tests/callbacks/test_callback_precision_ddp.py: a 2-process CPU DDP fit (gloo) with CAMMonitor.

Usage: python ddp_fit.py OUT_DIR [fail]. Writes, from every rank, rows_rank<r>.json (the probe rows that
rank explained and whether the probes agreed), and from rank 0 metrics.json (callback_metrics) and
model.pt (the final weights).
"""

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import pytorch_lightning as pl
import torch

import cam_callbacks as cc

from _lightning_models import TinyNet, loaders


class Recorder(pl.Callback):
    def __init__(self, monitor, out, fail):
        self.monitor, self.out, self.fail, self.rows = monitor, out, fail, []
        original = monitor.compute

        def compute(pl_module, precision_plugin=None, rows=None, methods=None):
            self.rows.append(None if rows is None else rows.tolist())
            if self.fail and pl_module.global_rank == 1:
                raise RuntimeError("deliberate failure on rank 1")
            return original(pl_module, precision_plugin, rows, methods)

        monitor.compute = compute

    def on_fit_end(self, trainer, pl_module):
        rank = trainer.global_rank
        with open(os.path.join(self.out, f"rows_rank{rank}.json"), "w") as handle:
            json.dump({"rows": self.rows, "probe": self.monitor.probe.fingerprint()}, handle)
        if rank == 0:
            metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("cam/")}
            with open(os.path.join(self.out, "metrics.json"), "w") as handle:
                json.dump(metrics, handle)
            torch.save(pl_module.state_dict(), os.path.join(self.out, "model.pt"))


def main():
    out = sys.argv[1]
    fail = "fail" in sys.argv[2:]
    on_error = "raise" if "raise" in sys.argv[2:] else "warn"
    torch.set_num_threads(1)
    pl.seed_everything(0)
    model = TinyNet()
    train, val = loaders()
    monitor = cc.CAMMonitor(methods=["gradcam", "reciprocam"], probe=7, alarm=None, budget=None, on_error=on_error)
    trainer = pl.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_epochs=2, default_root_dir=out, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, logger=False, num_sanity_val_steps=0,
        callbacks=[monitor, Recorder(monitor, out, fail)],
    )  # fmt: skip
    trainer.fit(model, train, val)


if __name__ == "__main__":
    main()
