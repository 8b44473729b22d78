"""Shared pytest fixtures, and the Lightning namespace the tests run under.

``CAM_CALLBACKS_LIGHTNING=lightning pytest tests/callbacks`` runs the callback tests as a user who has only the
``lightning`` package (``import lightning as L``): every import of ``pytorch_lightning`` (the tests' and the
package's) is served by ``lightning.pytorch``. ``.ci/run`` runs the callback tests both ways.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import os
import sys
from types import ModuleType
from typing import Optional, Sequence

import pytest
import torch
import torchvision


class _LightningAlias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves ``pytorch_lightning[.x]`` from ``lightning.pytorch[.x]`` (the same modules, not copies)."""

    def find_spec(self, fullname: str, path: Optional[Sequence[str]] = None, target: Optional[ModuleType] = None):
        if fullname == "pytorch_lightning" or fullname.startswith("pytorch_lightning."):
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return importlib.import_module("lightning.pytorch" + spec.name[len("pytorch_lightning") :])

    def exec_module(self, module: ModuleType) -> None:
        pass


if os.environ.get("CAM_CALLBACKS_LIGHTNING") == "lightning":
    assert not any(name.startswith("pytorch_lightning") for name in sys.modules), "pytorch_lightning was imported before the alias"
    sys.meta_path.insert(0, _LightningAlias())
    import pytorch_lightning

    assert pytorch_lightning.__name__ == "lightning.pytorch"


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread_per_process():
    """Every test process computes with one intra-op torch thread (restored at the end of the session).

    The tests use small tensors and run on a shared 2-core machine, often two at a time (``pytest -n 2``): extra
    OpenMP threads only spin against each other and against the other processes. Measured while other processes
    kept the machine busy (load average 4-6): three test modules took 133 s with torch's default 2 threads and 13 s
    with one. Small tensors gain nothing from a second thread; the tests pass either way.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# --- fixtures for the functional-core tests (test_methods / test_crosscheck) -----------------


@pytest.fixture(scope="session")
def random_vgg11() -> torch.nn.Module:
    """torchvision vgg11, random weights, 10 classes, eval mode (built once: ~130M parameters).

    Shared across test files: do not mutate it; ``copy.deepcopy`` it first.
    """
    torch.manual_seed(0)
    return torchvision.models.vgg11(weights=None, num_classes=10).eval()
