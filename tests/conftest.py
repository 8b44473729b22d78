"""Shared pytest fixtures."""

from __future__ import annotations

import pytest
import torch
import torchvision


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op torch thread for a test module, restored afterwards (use: ``pytestmark = pytest.mark.usefixtures("one_thread")``).

    Measured on the shared 2-core machine while other processes kept it busy (load average 4-6): three test
    modules took 133 s with torch's default 2 OpenMP threads (spinning threads competing for the cores) and 13 s
    with one thread. Small tensors gain nothing from a second thread; the tests pass either way.
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
