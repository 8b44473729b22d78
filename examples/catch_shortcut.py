"""Catch a shortcut with CAMMonitor: the same CNN trained on clean data and on data with a spurious cue.

Each image shows one coloured shape on a textured background (scenario ``"large"`` of
:mod:`cam_callbacks.datasets`); the class is the shape. The *shortcut* variant adds a solid patch in the
top-left corner whose colour is the label in every training image, so a model can read one corner
instead of learning shapes; the *clean* variant has no patch. Both runs train :class:`ShapesClassifier`
(from ``train_shapes.py``) with the same seeds. CAMMonitor (settings: :data:`MONITOR`) probes both on the
same images, whose patch colour is random, with object masks but no patch mask by default (``--probe-masks``:
nobody told the callback where the shortcut is; the per-class rule, :class:`~cam_callbacks.ShortcutAlarm`, finds it),
and the script prints per epoch ``val_acc`` (a split drawn
like the training data: it does not reveal the shortcut), ``randcue_acc`` (the random-colour images:
ground truth a user normally lacks), the watch metrics, the alarm and the rules that fired, then the
epoch at which each run's alarm first fired. The README ("Catching a shortcut") shows its output::

    python examples/catch_shortcut.py
    python examples/catch_shortcut.py --max-epochs 3 --num-train 800 --logdir /tmp/runs
    tensorboard --logdir runs/catch_shortcut --samples_per_plugin images=100

One variant with Lightning's command line (``LightningCLI``; needs ``pip install "jsonargparse[signatures]"``)::

    python examples/catch_shortcut.py fit --config configs/shortcut.yaml [--data.shortcut=false]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.loggers import TensorBoardLogger
from torch import Tensor
from torch.utils.data import DataLoader

import cam_callbacks as cc
from cam_callbacks.datasets import SCENARIOS, SHAPE_NAMES, SHAPES_MEAN, SHAPES_STD, ScenarioDataset

if os.path.dirname(os.path.abspath(__file__)) not in sys.path:  # the model of the neighbouring example
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_shapes import CLI_SUBCOMMANDS, ShapesClassifier

# The callback: what CAMMonitor watches in both runs (configs/shortcut.yaml repeats it for LightningCLI).
# _train adds the probe: the cue-randomised images with object and patch masks, identical for both runs.

MONITOR: Dict[str, Any] = dict(
    methods=["gradcam", "layercam"],  # --methods
    target_layer="features.block4",  # ShapesClassifier's last conv block: 6x6 maps for 48x48 images
    probe=64,  # --num-probe (_train replaces it with the cue-randomised images)
    # --target. Explain the top-1 prediction: on images whose patch names another class than the label, the
    # patch speaks against the label, and Grad-CAM of the label (its ReLU) would hide the cue.
    target="prediction",
    # how the images are normalised: the grids show them in their real colours
    style=cc.ImageStyle(mean=SHAPES_MEAN, std=SHAPES_STD),
    # The default alarm: energy_in_nuisance_ratio (share of the map on the patch, in multiples of the
    # patch's area share; 1 = chance) above 2 (only with --probe-masks nuisance), shortcut_score above 0.5,
    # and the per-class rule, which needs no mask: a class whose maps gather on one region (class_shortcut_score
    # above 0.15) while the model is confident on it (0.8) and hiding the region moves its predictions
    # (occlusion effect 0.1). It sets cam/alarm to 1. --stop-on-alarm sets stop=True on each policy.
    alarm=[
        cc.ThresholdAlarm("energy_in_nuisance_ratio", above=2.0),
        cc.ThresholdAlarm("shortcut_score", above=0.5),
        cc.ShortcutAlarm(),
    ],
)


def make_monitor(**overrides: Any) -> "cc.CAMMonitor":
    """:class:`CAMMonitor` with :data:`MONITOR`'s settings; keyword arguments replace or add settings."""
    return cc.CAMMonitor(**{**MONITOR, **overrides})


# The two runs: data, model, CAMMonitor and a table of the watch metrics per epoch.

#: The two variants, in the order they are trained.
VARIANTS: Tuple[str, ...] = ("clean", "shortcut")
#: Watch metrics printed per method (short column names).
COLUMNS: Tuple[Tuple[str, str], ...] = (
    ("energy_in_nuisance_ratio", "nuis"),
    ("energy_in_mask_ratio", "mask"),
    ("shortcut_score", "short"),
    ("class_shortcut_score", "class"),
)
#: ``--probe-masks``: the masks the probe set carries. "objects" (the default) is the usual case: object masks
#: (or none, "none") but no nuisance mask, since nobody told you where the shortcut is; the per-class rule
#: finds it. "nuisance" adds the patch masks (the energy_in_nuisance_ratio rule).
PROBE_MASKS: Dict[str, Callable[[Any], Tuple[Any, ...]]] = {
    "nuisance": lambda batch: (batch.masks, batch.nuisance_masks),
    "objects": lambda batch: (batch.masks,),
    "none": lambda batch: (),
}
#: The validation loaders, in order: the cue-randomised set (the first: CAMMonitor's probe source) and the ordinary split.
VAL_STAGES: Tuple[str, ...] = ("randcue", "val")


def _train(args: argparse.Namespace, variant: str) -> Dict[str, Any]:
    """One run of ``variant`` (``"clean"`` or ``"shortcut"``) with the command-line settings."""
    start = time.perf_counter()
    pl.seed_everything(args.seed, workers=True, verbose=False)
    data = ShortcutDataModule(
        shortcut=variant == "shortcut",
        scenario=args.scenario,
        num_train=args.num_train,
        num_val=args.num_val,
        num_randcue=max(args.num_val, args.num_probe),
        image_size=args.image_size,
        batch_size=args.batch_size,
    )
    data.setup("fit")
    model = ShortcutClassifier(num_classes=data.hparams.num_classes, lr=args.lr)
    randcue = data.randcue_set.batch  # identical for both variants; --probe-masks: which masks CAMMonitor gets
    probe = tuple(t[: args.num_probe] for t in (randcue.images, randcue.labels, *PROBE_MASKS[args.probe_masks](randcue)))
    alarm = MONITOR["alarm"]
    if args.stop_on_alarm:
        alarm = [dataclasses.replace(policy, stop=True) for policy in alarm]
    monitor = make_monitor(probe=probe, methods=args.methods, target=args.target, alarm=alarm)
    description = "patch colour = label in training and val_acc" if variant == "shortcut" else "no patch in training and val_acc"
    table = EpochTable(monitor, title=f"{variant} run ({description}; probe and randcue_acc: patch colour random)")
    logger = TensorBoardLogger(save_dir=os.path.join(args.logdir, args.name), name=variant)
    trainer = pl.Trainer(
        max_epochs=args.max_epochs,
        accelerator=args.accelerator,
        devices=1,
        logger=logger,
        callbacks=[monitor, table],
        log_every_n_steps=10,
        enable_checkpointing=False,
        enable_progress_bar=args.progress,
        enable_model_summary=args.progress,
    )
    trainer.fit(model, datamodule=data)
    return {
        "rows": table.rows,
        "first_alarm": table.first_alarm,
        "table": table.table(),
        "log_dir": logger.log_dir,
        "elapsed": time.perf_counter() - start,
        "model": model,
        "probe": monitor.probe,
    }


def _print_summary(args: argparse.Namespace, runs: Dict[str, Dict[str, Any]], elapsed: float) -> None:
    print()
    for variant, run in runs.items():
        rows = run["rows"]
        first = run["first_alarm"]
        if first is None:
            verdict = f"never (in {len(rows)} epochs)"
        else:
            row = next(r for r in rows if r["epoch"] == first)
            verdict = f"epoch {first} (val_acc {row['val_acc']:.3f}, randcue_acc {row['randcue_acc']:.3f})"
        print(f"{variant} run: alarm first fired at {verdict}; {run['elapsed']:.1f} s")
    summary = ", ".join(f"{v}={'never' if r['first_alarm'] is None else r['first_alarm']}" for v, r in runs.items())
    print(f"Summary: first alarm epoch: {summary}; total {elapsed:.1f} s")
    print(f"TensorBoard logs: {os.path.abspath(os.path.join(args.logdir, args.name))}")
    print(f"View them with:   tensorboard --logdir {os.path.join(args.logdir, args.name)} --samples_per_plugin images=100")


# The data: a training split, a validation split and the cue-randomised set, per variant.


class ShortcutDataModule(pl.LightningDataModule):
    """Clean or shortcut variant of a scenario: a training split, a validation split, a cue-randomised set.

    Samples are ``(image, label, mask, nuisance_mask)`` (:class:`~cam_callbacks.datasets.ScenarioDataset`).

    - ``train_set``: ``split="train"`` of ``train_seed``; with ``shortcut`` the patch colour is the label.
    - ``val_set``: ``split="train"`` of ``val_seed``: other images drawn like the training data
      (biased like it), the split a user would watch.
    - ``randcue_set``: ``split="val"`` of ``val_seed`` with the patch always drawn and its colour
      random: the same images whatever ``shortcut`` is. Its first images are CAMMonitor's probe set.

    ``val_dataloader`` returns ``[randcue, val]`` (the first is where CAMMonitor takes its probe set
    by default).

    Args:
        shortcut: Train (and validate) on the shortcut variant.
        scenario: One of :data:`cam_callbacks.datasets.SCENARIOS`.
        num_train: Training images.
        num_val: Images of the validation split.
        num_randcue: Cue-randomised images (at least the probe size).
        image_size: Side of the square images.
        num_classes: Number of shape classes.
        batch_size: Batch size of all loaders.
        train_seed: Seed of the training images.
        val_seed: Seed of the validation split and of the cue-randomised set.
        num_workers: DataLoader workers (the data is in memory; 0 is fastest).
    """

    def __init__(
        self,
        shortcut: bool = True,
        scenario: str = "large",
        num_train: int = 1500,
        num_val: int = 400,
        num_randcue: int = 400,
        image_size: int = 48,
        num_classes: int = 4,
        batch_size: int = 64,
        train_seed: int = 0,
        val_seed: int = 1,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if scenario not in SCENARIOS:
            raise ValueError(f"scenario={scenario!r} is not known; choose from {list(SCENARIOS)}")
        if train_seed == val_seed:
            raise ValueError(f"train_seed and val_seed must differ (both are {train_seed}), or validation repeats training images")
        self.save_hyperparameters()
        self.train_set: Optional[ScenarioDataset] = None
        self.val_set: Optional[ScenarioDataset] = None
        self.randcue_set: Optional[ScenarioDataset] = None

    @property
    def class_names(self) -> Tuple[str, ...]:
        """The shape names, for CAMMonitor's captions (it looks for ``class_names`` on the datamodule)."""
        return SHAPE_NAMES[: self.hparams.num_classes]

    def _dataset(self, num: int, split: str, shortcut: bool, seed: int) -> ScenarioDataset:
        h = self.hparams
        return ScenarioDataset(num, h.scenario, split, shortcut=shortcut, image_size=h.image_size, num_classes=h.num_classes, seed=seed)

    def setup(self, stage: Optional[str] = None) -> None:
        h = self.hparams
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = self._dataset(h.num_train, "train", h.shortcut, h.train_seed)
        if self.val_set is None:
            self.val_set = self._dataset(h.num_val, "train", h.shortcut, h.val_seed)
        if self.randcue_set is None:
            self.randcue_set = self._dataset(h.num_randcue, "val", True, h.val_seed)

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None, "call setup('fit') first"
        workers = self.hparams.num_workers
        return DataLoader(
            self.train_set, batch_size=self.hparams.batch_size, shuffle=True, drop_last=True, num_workers=workers, persistent_workers=workers > 0
        )

    def val_dataloader(self) -> List[DataLoader]:
        assert self.val_set is not None and self.randcue_set is not None, "call setup() first"
        h = self.hparams
        return [DataLoader(dataset, batch_size=h.batch_size, num_workers=h.num_workers) for dataset in (self.randcue_set, self.val_set)]


# The model: train_shapes.py's CNN for (image, label, mask, nuisance) batches and two validation loaders.


class ShortcutClassifier(ShapesClassifier):
    """:class:`ShapesClassifier` for ``(image, label, mask, nuisance)`` batches and two validation loaders.

    Logs ``train_loss``/``train_acc``, and per validation loader (see :data:`VAL_STAGES`)
    ``randcue_loss``/``randcue_acc`` and ``val_loss``/``val_acc``. The masks are not used for training.
    """

    def training_step(self, batch: Sequence[Tensor], batch_idx: int) -> Tensor:
        return self._step((batch[0], batch[1]), "train")

    def validation_step(self, batch: Sequence[Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        images, labels = batch[0], batch[1]
        logits = self(images)
        stage = VAL_STAGES[dataloader_idx]
        loss = F.cross_entropy(logits, labels)
        accuracy = (logits.argmax(dim=1) == labels).float().mean()
        options: Dict[str, Any] = {"on_step": False, "on_epoch": True, "batch_size": len(labels), "add_dataloader_idx": False}
        self.log(f"{stage}_loss", loss, **options)
        self.log(f"{stage}_acc", accuracy, prog_bar=True, **options)

    def test_step(self, batch: Sequence[Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._step((batch[0], batch[1]), "test")


# The printed table.


class EpochTable(pl.Callback):
    """Collects (and prints) one row per validation epoch: accuracies, watch metrics, alarm.

    Reads ``trainer.callback_metrics`` in ``on_validation_end``, after CAMMonitor's values have
    reached them; the rules that fired are the monitor's ``last_hits``.

    Args:
        monitor: The run's CAMMonitor.
        title: Printed above the table.
        verbose: Print the rows as they come.
    """

    def __init__(self, monitor: "cc.CAMMonitor", title: str = "", verbose: bool = True) -> None:
        super().__init__()
        self.monitor = monitor
        self.title = title
        self.verbose = verbose
        self.rows: List[Dict[str, Any]] = []

    def header(self) -> str:
        cells = [f"{'epoch':>5}", f"{'val_acc':>7}", f"{'randcue_acc':>11}"]
        for method in self.monitor.methods:
            cells += [f"{method + ' ' + short:>{max(8, len(method) + len(short) + 1)}}" for _, short in COLUMNS]
        return "  ".join(cells + ["alarm", "rules fired"])

    def format_row(self, row: Dict[str, Any]) -> str:
        cells = [f"{row['epoch']:>5}", f"{row['val_acc']:>7.3f}", f"{row['randcue_acc']:>11.3f}"]
        for method in self.monitor.methods:
            for metric, short in COLUMNS:
                cells.append(f"{row[f'{method}/{metric}']:>{max(8, len(method) + len(short) + 1)}.2f}")
        return "  ".join(cells + [f"{int(row['alarm']):>5}", ", ".join(row["fired"]) or "-"])

    def table(self) -> str:
        return "\n".join([self.header()] + [self.format_row(row) for row in self.rows])

    def on_fit_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if self.verbose:
            print(f"\n{self.title}\n{self.header()}", flush=True)

    def on_validation_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if trainer.sanity_checking:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if isinstance(v, Tensor) and v.numel() == 1}
        if "cam/alarm" not in metrics:  # CAMMonitor did not run this epoch (every_n_epochs)
            return
        row: Dict[str, Any] = {
            "epoch": trainer.current_epoch,
            "val_acc": metrics.get("val_acc", math.nan),
            "randcue_acc": metrics.get("randcue_acc", math.nan),
            "alarm": metrics["cam/alarm"],
        }
        for method in self.monitor.methods:
            for metric, _ in COLUMNS:
                row[f"{method}/{metric}"] = metrics.get(f"cam/{method}/{metric}", math.nan)
        short = dict(COLUMNS)
        row["fired"] = [
            f"{h.method} {'' if h.class_index is None else f'class{h.class_index} '}{short.get(h.metric, h.metric)}"
            f"{'>' if h.direction == 'above' else '<'}{h.threshold:g}"
            for h in self.monitor.last_hits
        ]
        row["hits"] = [h.message for h in self.monitor.last_hits]
        self.rows.append(row)
        if self.verbose:
            print(self.format_row(row), flush=True)

    @property
    def first_alarm(self) -> Optional[int]:
        """The first epoch whose alarm fired, or None."""
        return next((row["epoch"] for row in self.rows if row["alarm"] >= 1.0), None)


# Command line: flags (main) or LightningCLI (cli_main) when the first argument is a subcommand.


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train the same small CNN on clean and shortcut data with CAMMonitor and show which run the alarm flags.",
        epilog="LightningCLI (one variant): python examples/catch_shortcut.py fit --config configs/shortcut.yaml [--data.shortcut=false ...]",
    )
    parser.add_argument("--logdir", default="runs", help="TensorBoard root directory (default: runs)")
    parser.add_argument("--name", default="catch_shortcut", help="experiment folder under --logdir; the runs are <name>/clean and <name>/shortcut")
    parser.add_argument("--max-epochs", type=int, default=6)
    parser.add_argument("--num-train", type=int, default=1500)
    parser.add_argument("--num-val", type=int, default=400, help="images of the validation split and of the cue-randomised set")
    parser.add_argument("--scenario", default="large", choices=SCENARIOS)
    parser.add_argument("--image-size", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--methods", nargs="+", default=list(MONITOR["methods"]), help="CAM methods (default: gradcam layercam)")
    parser.add_argument("--num-probe", type=int, default=MONITOR["probe"], help="probe images (the first cue-randomised images)")
    parser.add_argument(
        "--target", default=MONITOR["target"], choices=["prediction", "label"], help="class the maps explain (default: prediction)"
    )
    parser.add_argument(
        "--probe-masks", default="objects", choices=list(PROBE_MASKS), help="masks given to CAMMonitor's probe (default: objects)"
    )
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS, help="runs to train (default: both)")
    parser.add_argument("--stop-on-alarm", action="store_true", help="stop a run when its alarm fires")
    parser.add_argument("--seed", type=int, default=0, help="seed of the model initialisation and shuffling (the same for both runs)")
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads. Default: 1 on machines with at most 2 CPU cores, torch's default otherwise.",
    )
    parser.add_argument("--progress", action="store_true", help="show Lightning's progress bar and model summary")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Train the requested variants and print the tables and the summary.

    Args:
        argv: Command-line flags (default: ``sys.argv[1:]``), see ``--help``.

    Returns:
        ``{"runs": {variant: run}, "elapsed": seconds}``; each run holds ``rows`` (one dict per epoch:
        ``epoch``, ``val_acc``, ``randcue_acc``, ``<method>/<metric>``, ``alarm``, ``fired``),
        ``first_alarm`` (epoch or None), ``table`` (the printed table), ``log_dir``, ``elapsed``,
        the trained ``model`` and the CAMMonitor ``probe``.
    """
    args = parse_args(argv)
    threads = args.threads if args.threads is not None else (1 if (os.cpu_count() or 1) <= 2 else 0)
    previous_threads = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            # the data is in memory: DataLoader workers would only slow it down
            warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
            runs = {variant: _train(args, variant) for variant in args.variants}
    finally:
        torch.set_num_threads(previous_threads)
    elapsed = time.perf_counter() - start
    _print_summary(args, runs, elapsed)
    return {"runs": runs, "elapsed": elapsed}


def cli_main(args: Optional[Sequence[str]] = None) -> Any:
    """One variant with LightningCLI, e.g. ``fit --config configs/shortcut.yaml [--data.shortcut=false]``.

    Args:
        args: Command-line arguments (default: ``sys.argv[1:]``).
    """
    from pytorch_lightning.cli import LightningCLI

    cli = LightningCLI(
        ShortcutClassifier,
        ShortcutDataModule,
        args=None if args is None else list(args),
        save_config_kwargs={"overwrite": True},
    )
    logger = cli.trainer.logger
    if isinstance(logger, TensorBoardLogger):
        root = os.path.dirname(os.path.dirname(os.path.abspath(logger.log_dir)))
        alarm = cli.trainer.callback_metrics.get("cam/alarm")
        if alarm is not None:
            print(f"\ncam/alarm at the last epoch: {float(alarm):g}")
        print(f"\nTensorBoard logs: {os.path.abspath(logger.log_dir)}")
        print(f"View them with:   tensorboard --logdir {root} --samples_per_plugin images=100")
    return cli


def _wants_cli(argv: Sequence[str]) -> bool:
    return bool(argv) and argv[0] in CLI_SUBCOMMANDS


if __name__ == "__main__":
    if _wants_cli(sys.argv[1:]):
        cli_main()
    else:
        main()
