"""Shared pytest fixtures."""

from __future__ import annotations

import pytest
import torch
import torchvision

# --- fixtures for the functional-core tests (test_methods / test_crosscheck) -----------------


@pytest.fixture(scope="session")
def random_vgg11() -> torch.nn.Module:
    """torchvision vgg11, random weights, 10 classes, eval mode (built once: ~130M parameters).

    Shared across test files: do not mutate it; ``copy.deepcopy`` it first.
    """
    torch.manual_seed(0)
    return torchvision.models.vgg11(weights=None, num_classes=10).eval()
