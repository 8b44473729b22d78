"""Images where each logger's users look: MLflow run artifacts, W&B run images, CSV run directories (real libraries, no mocks)."""

from __future__ import annotations

import glob
import os
import warnings

import pytest
from pytorch_lightning.loggers import CSVLogger, Logger, TensorBoardLogger

import cam_callbacks as cc
from cam_callbacks.callbacks.compat import is_mlflow, is_wandb
from cam_callbacks.callbacks.destinations import destinations, run_directory

from _lightning_models import fit, read_events, trainer


@pytest.fixture(autouse=True)
def _file_store(monkeypatch):
    """MLflow 3 refuses the file store (the issue's ``mlruns`` folder) unless allowed."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")


NAMES = ["class_means", "evolution", "grid", "mean_map"]


def _monitor():
    return cc.CAMMonitor(methods=["gradcam"], probe=4, step="epoch")


def _mlflow_logger(tmp_path, namespace="pytorch_lightning", **kwargs):
    pytest.importorskip("mlflow")
    if namespace == "pytorch_lightning":
        from pytorch_lightning.loggers import MLFlowLogger
    else:
        MLFlowLogger = pytest.importorskip("lightning.pytorch.loggers").MLFlowLogger
    return MLFlowLogger(experiment_name="cam", tracking_uri=f"file:{tmp_path}/mlruns", **kwargs)


def _artifacts(store, run_id, path=""):
    """Every artifact file of ``run_id`` under ``path``, recursively."""
    from mlflow import MlflowClient

    client = MlflowClient(store)
    found = []
    for info in client.list_artifacts(run_id, path or None):
        found.extend(_artifacts(store, run_id, info.path) if info.is_dir else [info.path])
    return sorted(found)


def _wandb_env(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")


def _wandb_images(tmp_path):
    """``{key: [file names]}`` of the images in the offline runs under tmp_path (``files/media/images/<key>_<step>_<hash>.png``)."""
    found = glob.glob(os.path.join(str(tmp_path), "**", "files", "media", "images", "**", "*.png"), recursive=True)
    files = {os.path.realpath(f) for f in found}  # wandb/latest-run links to the offline run's folder
    return sorted(os.path.relpath(f, os.path.join(f.split(os.sep + "files" + os.sep)[0], "files", "media", "images")) for f in files)


@pytest.mark.slow
@pytest.mark.parametrize("namespace", ["pytorch_lightning", "lightning.pytorch"])
def test_mlflow_two_runs_each_get_their_grids_as_artifacts_and_the_store_stays_valid(tmp_path, namespace):
    from mlflow import MlflowClient

    store = f"file:{tmp_path}/mlruns"
    runs = []
    for attempt in range(2):
        logger = _mlflow_logger(tmp_path, namespace)
        assert is_mlflow(logger)
        fit(tmp_path / f"fit{attempt}", _monitor(), logger=logger, max_epochs=2)
        runs.append(logger.run_id)
    assert runs[0] != runs[1]
    for run_id in runs:
        pngs = [f"cam/gradcam/{n}_epoch={e:04d}.png" for n in NAMES for e in (0, 1)]
        assert _artifacts(store, run_id, "cam") == pngs + ["cam/report.html"]  # the HTML report is an artifact of the run too
        metrics = MlflowClient(store).get_run(run_id).data.metrics
        assert "cam/gradcam/adcc" in metrics
    # nothing of ours in the store's root: only MLflow's own folders (experiments by id, .trash, models)
    root = os.listdir(tmp_path / "mlruns")
    assert "cam" not in root
    experiments = MlflowClient(store).search_experiments()  # "Malformed experiment 'cam'" before the fix
    ids = {e.experiment_id for e in experiments}
    assert {name for name in root if not name.startswith(".") and name != "models"} <= ids
    assert [e.name for e in experiments if e.name == "cam"] == ["cam"]
    # the artifact is a real PNG of the grid
    from PIL import Image

    local = MlflowClient(store).download_artifacts(runs[1], "cam/gradcam/grid_epoch=0001.png", str(tmp_path / "down"))
    assert Image.open(local).size[0] > 16


@pytest.mark.slow
def test_wandb_offline_run_holds_the_images(tmp_path, monkeypatch):
    _wandb_env(tmp_path, monkeypatch)
    import wandb
    from pytorch_lightning.loggers import WandbLogger

    logger = WandbLogger(project="cam-test", save_dir=str(tmp_path), offline=True)
    assert is_wandb(logger)
    try:
        fit(tmp_path, _monitor(), logger=logger, max_epochs=2)
    finally:
        wandb.finish()
    images = _wandb_images(tmp_path)
    for name in NAMES:
        logged = [path for path in images if path.startswith(f"cam/gradcam/{name}_")]
        assert len(logged) == 2, (name, images)  # one per epoch
    # nothing written beside the run (the old behaviour: PNG files under save_dir/cam); the report is a file of the run
    assert not os.path.exists(tmp_path / "cam")
    assert glob.glob(os.path.join(str(tmp_path), "**", "files", "cam", "report.html"), recursive=True)


@pytest.mark.slow
def test_csv_two_runs_write_into_their_own_version_folders(tmp_path):
    dirs = []
    for _ in range(2):
        logger = CSVLogger(str(tmp_path), name="csv")
        fit(tmp_path, _monitor(), logger=logger, max_epochs=1)
        dirs.append(logger.log_dir)
    assert [os.path.basename(d) for d in dirs] == ["version_0", "version_1"]
    for directory in dirs:
        assert os.path.exists(os.path.join(directory, "cam", "gradcam", "grid_epoch=0000.png"))
    assert not os.path.exists(os.path.join(str(tmp_path), "csv", "cam"))


@pytest.mark.slow
def test_mlflow_wandb_and_tensorboard_together_all_get_images(tmp_path, monkeypatch):
    _wandb_env(tmp_path, monkeypatch)
    import wandb
    from pytorch_lightning.loggers import WandbLogger

    mlflow_logger = _mlflow_logger(tmp_path)
    loggers = [TensorBoardLogger(str(tmp_path), name="tb"), mlflow_logger, WandbLogger(project="cam-test", save_dir=str(tmp_path), offline=True)]
    try:
        fit(tmp_path, _monitor(), logger=loggers, max_epochs=1)
    finally:
        wandb.finish()
    assert read_events(tmp_path / "tb")["images"]["cam/gradcam/grid"] == [0]
    assert "cam/gradcam/grid_epoch=0000.png" in _artifacts(f"file:{tmp_path}/mlruns", mlflow_logger.run_id, "cam")
    assert any(path.startswith("cam/gradcam/grid_") for path in _wandb_images(tmp_path))
    assert not glob.glob(os.path.join(str(tmp_path / "mlruns"), "cam"))


class _SharedDirLogger(Logger):
    """A logger with only a shared ``save_dir`` (like Neptune's or Comet's), and a name and version or not."""

    def __init__(self, save_dir, version=None):
        super().__init__()
        self._save_dir, self._version = save_dir, version

    @property
    def name(self):
        return "shared"

    @property
    def version(self):
        return self._version

    @property
    def save_dir(self):
        return self._save_dir

    def log_metrics(self, metrics, step=None):
        pass

    def log_hyperparams(self, params, *args, **kwargs):
        pass


@pytest.mark.slow
def test_a_logger_with_only_a_shared_save_dir_gets_a_run_folder_or_nothing_with_one_warning(tmp_path):
    assert run_directory(_SharedDirLogger(str(tmp_path), version=3)) == os.path.join(str(tmp_path), "shared", "version_3")
    assert run_directory(_SharedDirLogger(str(tmp_path), version="abc12")) == os.path.join(str(tmp_path), "shared", "abc12")
    fit(tmp_path / "fit", _monitor(), logger=_SharedDirLogger(str(tmp_path / "a"), version="run7"), max_epochs=1)
    assert os.path.exists(tmp_path / "a" / "shared" / "run7" / "cam" / "gradcam" / "grid_epoch=0000.png")
    assert not os.path.exists(tmp_path / "a" / "cam")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(tmp_path / "fit2", _monitor(), logger=_SharedDirLogger(str(tmp_path / "b")), max_epochs=2)
    said = [str(w.message) for w in caught if "no run directory of their own" in str(w.message)]
    assert len(said) == 1 and "_SharedDirLogger" in said[0]
    assert not os.path.exists(tmp_path / "b")


@pytest.mark.slow
def test_destinations_sort_the_loggers(tmp_path):
    tb, csv = TensorBoardLogger(str(tmp_path), name="tb"), CSVLogger(str(tmp_path), name="csv")
    t = trainer(tmp_path, [], logger=[tb, csv, _mlflow_logger(tmp_path)])
    found = destinations(t)
    assert found.tensorboards == [tb] and len(found.mlflows) == 1 and found.wandbs == []
    assert found.directories == [csv.log_dir] and found.without_images == []


@pytest.mark.slow
def test_a_failing_mlflow_upload_is_reported_once_switched_off_and_the_csv_logger_goes_on(tmp_path):
    (tmp_path / "blocked").write_text("a file where the artifact folder should be: every upload fails")
    mlflow_logger = _mlflow_logger(tmp_path, artifact_location=f"file:{tmp_path}/blocked/artifacts")
    csv_logger = CSVLogger(str(tmp_path), name="csv")
    monitor = cc.CAMMonitor(methods=["gradcam"], probe=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, t = fit(tmp_path, monitor, max_epochs=3, logger=[mlflow_logger, csv_logger])
    said = [str(w.message) for w in caught if "writing images failed" in str(w.message)]
    assert len(said) == 1 and "MLflow run" in said[0], [str(w.message) for w in caught]
    assert t.current_epoch == 3
    for epoch in range(3):
        assert os.path.exists(os.path.join(csv_logger.log_dir, "cam", "gradcam", f"grid_epoch={epoch:04d}.png"))
    assert float(t.callback_metrics["cam/errors"]) == 1.0  # switched off after the first failure: not counted again
