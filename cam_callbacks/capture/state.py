"""Context managers that change global or model state and always put it back as found.

- ``preserved_model_state``: eval mode for the duration, every module's ``.training`` flag and
  every parameter's ``requires_grad`` restored on exit (also on exceptions).
- ``eager``: ``torch.compile``'d modules run eagerly inside the block.
- ``preserved_rng_state``: torch (CPU and CUDA), NumPy and Python RNG states restored on exit.

The forward hook that captures the target layer's output is ``cam_callbacks.capture.hooks.LayerCapture``.
"""

from __future__ import annotations

import random
from contextlib import contextmanager
from typing import Iterator, List, Tuple

import numpy as np
import torch
from torch import nn


@contextmanager
def preserved_model_state(model: nn.Module, eval_mode: bool = True) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode inside the block; restore every flag on exit.

    Eval mode keeps BatchNorm statistics untouched and dropout off, so explaining a model never
    changes it. Restores each module's ``training`` flag and each parameter's ``requires_grad``.

    Example::

        >>> net = nn.Sequential(nn.Linear(2, 2), nn.Dropout()).train()
        >>> with preserved_model_state(net):
        ...     assert not net.training
        >>> net.training
        True
    """
    modes: List[Tuple[nn.Module, bool]] = [(m, m.training) for m in model.modules()]
    grads_required: List[Tuple[nn.Parameter, bool]] = [(p, p.requires_grad) for p in model.parameters()]
    try:
        if eval_mode and any(mode for _, mode in modes):
            model.eval()
        yield model
    finally:
        for module, mode in modes:
            if module.training != mode:  # setting only what changed keeps this cheap on big models
                module.training = mode
        for param, required in grads_required:
            if param.requires_grad != required:
                param.requires_grad_(required)


@contextmanager
def eager() -> Iterator[None]:
    """Run ``torch.compile``'d modules eagerly inside the block (``torch.compiler.set_stance("force_eager")``).

    A compiled module that already ran keeps using its compiled graph, and that graph does not call
    forward hooks registered later: the capture hook would never fire. Explaining therefore runs
    compiled models eagerly (the same weights and maths, without the compiler). No-op on torch < 2.6.
    """
    set_stance = getattr(getattr(torch, "compiler", None), "set_stance", None)
    if set_stance is None:
        yield
        return
    with set_stance("force_eager"):
        yield


@contextmanager
def preserved_rng_state() -> Iterator[None]:
    """Restore the torch (CPU + all CUDA devices), NumPy and Python RNG states on exit."""
    torch_state = torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    numpy_state = np.random.get_state()
    python_state = random.getstate()
    try:
        yield
    finally:
        torch.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
        np.random.set_state(numpy_state)
        random.setstate(python_state)
