"""Catch a shortcut with CAMMonitor: the same CNN trained on clean data and on data with a spurious cue.

The data (:mod:`cam_callbacks.datasets.scenarios`, scenario ``"large"``): one coloured shape per image on a
textured background; the class is the shape. The *shortcut* variant adds a solid patch in the
top-left corner whose colour encodes the class (red = disc, green = square, ...): in its training
data the patch colour always equals the label, so a model can get every training image right by
reading the colour of one corner and never learning shapes. The *clean* variant is the same images
without the patch. Both runs train :class:`ShapesClassifier` (from ``examples/train_shapes.py``)
with the same initialisation, seeds and hyper-parameters.

What each run is validated on, and why:

- ``val_acc``: an ordinary validation split drawn like the run's training data (other images, same
  generator). In real life this is the split a user watches, and it carries the same bias as the
  training data: for the shortcut run the patch is there and gives the label away, so ``val_acc``
  looks *better* than the clean run's. This is what "validation accuracy does not reveal it" means.
- ``randcue_acc``: images with the patch present but its colour drawn at random, independent of the
  label (the ``"val"`` split of the shortcut scenario), identical for both runs. Its accuracy
  exposes the shortcut (near chance, 25%, for a model that reads the patch), but a user normally
  has no such cue-randomised data: it is printed as ground truth, to check the alarm.
- The :class:`~cam_callbacks.CAMMonitor` probe set is the first ``--num-probe`` of those
  cue-randomised images, with their object masks and nuisance (patch) masks. Both runs are probed
  on *identical* images that all contain the cue, so a difference in where the maps go can only come
  from the models. Because the patch colour is independent of the label on these images, a large
  share of the map on the patch cannot be excused as "the patch also shows the class": the model
  looks there because it uses the patch. The maps explain the model's top-1 *prediction*
  (``target="prediction"``): explaining the true label would hide the cue on the three images in
  four whose patch names another class (the patch then speaks *against* the label, and the ReLU of
  Grad-CAM removes it). Measured on the final shortcut model of the default run, Grad-CAM nuisance
  ratio on these images: 4.24 for the prediction, 0.69 for the label. On images drawn like its
  validation split (patch colour = label) label and prediction agree and give 3.47; the clean
  model gives 0.34-0.44 on either set.

CAMMonitor runs Grad-CAM and LayerCAM after every validation epoch and logs, per method,
``cam/<method>/energy_in_nuisance_ratio`` (share of the map on the patch, in multiples of the
patch's area share: 1 = chance), ``energy_in_mask_ratio`` (the same for the object),
``shortcut_score`` (one small region salient in all images, looking outside the objects) and
``cam/alarm`` (1 when a rule of the default :class:`~cam_callbacks.monitor.alarm.AlarmRule` fires for any
method: nuisance ratio above 2 or shortcut score above 0.5; its object-ratio rule is off by default
because it also fires for a model that has not learnt the objects *yet*). The script prints these
per epoch for both runs, the rules that fired, and the epoch at which each run's alarm first fired.

What it prints with the defaults (seed 0): the shortcut run's ``val_acc`` is 0.998 at epoch 1
(the clean run's 0.717) and 1.000 after, while ``randcue_acc`` stays at 0.30-0.43; its alarm fires
from epoch 0 (LayerCAM nuisance ratio 2.01, then 3.5-4.3 for both methods). The clean run's
nuisance ratio stays at 0.23-0.47 and its alarm never fires. With ``--seed 1``, ``2`` and ``3`` the
clean run stays quiet too and the shortcut run is flagged from epoch 1.

Runs on a 2-core CPU in about a minute (two runs of 6 epochs on 1500 images of 48x48; about 30 s
of CPU time)::

    python examples/catch_shortcut.py
    python examples/catch_shortcut.py --max-epochs 3 --num-train 800 --logdir /tmp/runs
    tensorboard --logdir runs/catch_shortcut --samples_per_plugin images=100

TensorBoard shows the two runs as ``clean/version_N`` and ``shortcut/version_N``: the scalars
``cam/gradcam/energy_in_nuisance_ratio``, ``cam/alarm``, ``val_acc`` and ``randcue_acc`` side by
side, and the heatmap grids ``cam/<method>/grid`` (worst probe images first) and
``cam/<method>/mean_map`` (where the maps of all probe images gather: the top-left corner for the
shortcut run).

One variant at a time with Lightning's command line (``LightningCLI``; needs
``pip install "jsonargparse[signatures]"``), when the first argument is a subcommand::

    python examples/catch_shortcut.py fit --config configs/shortcut.yaml
    python examples/catch_shortcut.py fit --config configs/shortcut.yaml --data.shortcut=false --trainer.logger.init_args.name=clean
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.loggers import TensorBoardLogger
from torch import Tensor
from torch.utils.data import DataLoader

from cam_callbacks import CAMMonitor
from cam_callbacks.monitor.alarm import AlarmRule
from cam_callbacks.datasets.scenarios import SCENARIOS, ScenarioDataset
from cam_callbacks.datasets.shapes import SHAPES_MEAN, SHAPES_STD

if os.path.dirname(os.path.abspath(__file__)) not in sys.path:  # the model of the neighbouring example
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_shapes import CLI_SUBCOMMANDS, ShapesClassifier  # noqa: E402

#: The two variants, in the order they are trained.
VARIANTS: Tuple[str, ...] = ("clean", "shortcut")
#: Watch metrics printed per method (short column names).
COLUMNS: Tuple[Tuple[str, str], ...] = (
    ("energy_in_nuisance_ratio", "nuis"),
    ("energy_in_mask_ratio", "mask"),
    ("shortcut_score", "short"),
)
#: The validation loaders, in order: the cue-randomised set (the first: CAMMonitor's probe source) and the ordinary split.
VAL_STAGES: Tuple[str, ...] = ("randcue", "val")


class ShortcutDataModule(pl.LightningDataModule):
    """Clean or shortcut variant of a scenario: a training split, a validation split, a cue-randomised set.

    Samples are ``(image, label, mask, nuisance_mask)`` (:class:`~cam_callbacks.datasets.scenarios.ScenarioDataset`).

    - ``train_set``: ``split="train"`` of ``train_seed``; with ``shortcut`` the patch colour is the label.
    - ``val_set``: ``split="train"`` of ``val_seed``: other images drawn like the training data
      (biased like it), the split a user would watch.
    - ``randcue_set``: ``split="val"`` of ``val_seed`` with the patch always drawn and its colour
      random: the same images whatever ``shortcut`` is. Its first images are CAMMonitor's probe set.

    ``val_dataloader`` returns ``[randcue, val]`` (the first is where CAMMonitor takes its probe set
    by default).

    Args:
        shortcut: Train (and validate) on the shortcut variant.
        scenario: One of :data:`cam_callbacks.datasets.scenarios.SCENARIOS`.
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


class EpochTable(pl.Callback):
    """Collects (and prints) one row per validation epoch: accuracies, watch metrics, alarm.

    Reads ``trainer.callback_metrics`` in ``on_validation_end``, after CAMMonitor's values have
    reached them; the rules that fired are recomputed with the monitor's own :class:`AlarmRule`.

    Args:
        monitor: The run's CAMMonitor.
        title: Printed above the table.
        verbose: Print the rows as they come.
    """

    def __init__(self, monitor: CAMMonitor, title: str = "", verbose: bool = True) -> None:
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
        rule = self.monitor.alarm
        cam = {k: v for k, v in metrics.items() if k.startswith("cam/") and k != "cam/alarm"}
        hits = rule.evaluate(cam) if rule is not None else []
        short = dict(COLUMNS)
        row["fired"] = [f"{h.method} {short.get(h.metric, h.metric)}{'>' if h.direction == 'above' else '<'}{h.threshold:g}" for h in hits]
        self.rows.append(row)
        if self.verbose:
            print(self.format_row(row), flush=True)

    @property
    def first_alarm(self) -> Optional[int]:
        """The first epoch whose alarm fired, or None."""
        return next((row["epoch"] for row in self.rows if row["alarm"] >= 1.0), None)


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
    parser.add_argument("--methods", nargs="+", default=["gradcam", "layercam"], help="CAM methods (default: gradcam layercam)")
    parser.add_argument("--num-probe", type=int, default=64, help="probe images (the first cue-randomised images)")
    parser.add_argument("--target", default="prediction", choices=["prediction", "label"], help="class the maps explain (default: prediction)")
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


def _train(args: argparse.Namespace, variant: str) -> Dict[str, Any]:
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
    monitor = CAMMonitor(
        methods=args.methods,
        target_layer=model.last_block,
        probe=data.randcue_set,  # identical for both variants; with object and nuisance masks
        num_probe=args.num_probe,
        target=args.target,
        mean=SHAPES_MEAN,
        std=SHAPES_STD,
        alarm=AlarmRule(),  # the defaults: energy_in_nuisance_ratio > 2 or shortcut_score > 0.5
        stop_on_alarm=args.stop_on_alarm,
    )
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
