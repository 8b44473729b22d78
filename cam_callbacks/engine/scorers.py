"""Batched, memory-bounded forward passes for the perturbation methods.

Score-CAM runs the whole model on one masked copy of the image per channel, Ablation-CAM and
Recipro-CAM run the network's *tail* (see ``cam_callbacks.capture.tail``) on one modified copy of the
target layer's feature map per channel or per position. The methods do not build all copies at once
(``N x K x C x H x W`` does not fit anywhere for real models); they hand a ``build(start, stop)``
callable to the scorers below, which call it for as many rows as fit in memory at a time:

- ``ModelScorer`` ``(count, build) -> (count, classes)`` logits of the whole model;
- ``TailScorer`` ``(copies, build) -> (n, copies, classes)`` logits of the tail, ``build``
  returning ``(n, r, K, h, w)`` feature maps: ``r`` copies of each of the ``n`` images at once.

The rows per pass come from ``rows_per_pass``: a share of the memory free on the model's device
divided by the bytes one row needs, which ``ForwardCost`` measures once per model and input
shape (the sizes of every leaf module's output in one forward pass, an upper bound of what a pass
without autograd keeps alive).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, List, Optional

import torch
from torch import Tensor, nn

from cam_callbacks.capture.layouts import TokenGrid
from cam_callbacks.utils.outputs import OutputTransform, logits_of

if TYPE_CHECKING:
    from cam_callbacks.capture.tail import Tail


#: Share of the free memory of the model's device that one perturbation pass may use.
MEMORY_FRACTION = 0.25
#: Upper bound on the rows of one pass (larger batches gain nothing and delay the first result).
MAX_ROWS = 1024
#: Upper bound on CPU. Measured (resnet18 and mobilenet_v3_small at 112 px, 1 thread): the arithmetic per image is
#: flat from 16 rows on, but passes of hundreds of rows spend as much again in page faults (every large
#: activation is freshly mapped), 1.3-2x the time of 64-row passes. Large passes pay off on GPUs only.
CPU_MAX_ROWS = 64
_CPU_FALLBACK_BYTES = 4 << 30
#: Models whose forward failed on a channels-last input (held weakly); ``ModelScorer`` gives them plain inputs.
#: Channels-last inputs make the CPU's convolutions faster (measured on resnet18 at 224 px, 1 thread: ~1.3x per
#: pass) with the same weights and the same maths (float32 rounding differences ~1e-6 in the logits).
CHANNELS_LAST_REFUSED: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()


def available_memory(device: torch.device) -> int:
    """Bytes free on ``device``: ``torch.cuda.mem_get_info`` on CUDA, ``MemAvailable`` of ``/proc/meminfo`` on CPU (4 GiB if unknown)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return _CPU_FALLBACK_BYTES


def rows_per_pass(bytes_per_row: int, device: torch.device, override: Optional[int] = None) -> int:
    """How many rows one pass takes: ``override`` if given, else ``MEMORY_FRACTION`` of the free memory / ``bytes_per_row``,
    in ``[1, MAX_ROWS]`` (``[1, CPU_MAX_ROWS]`` on CPU).

    Example::

        >>> rows_per_pass(10**6, torch.device("cpu"), override=7)
        7
    """
    if override is not None:
        return override
    cap = CPU_MAX_ROWS if device.type == "cpu" else MAX_ROWS
    return int(max(1, min(cap, MEMORY_FRACTION * available_memory(device) // max(1, bytes_per_row))))


@dataclass(frozen=True)
class RowBytes:
    """Measured bytes per row: ``model`` for one image through the whole model, ``tail`` for one copy through the tail."""

    model: int
    tail: int


class ForwardCost:
    """Measure, during one forward pass, the bytes per image of every leaf module's output, and of those after ``layer``.

    Use as a context manager around a forward pass of ``batch`` images; hooks are removed on exit.
    """

    def __init__(self, model: nn.Module, layer: nn.Module, batch: int) -> None:
        self.model = model
        self.layer = layer
        self.batch = max(1, batch)
        self.total = 0
        self.after = 0
        self._layer_done = False
        self._handles: List[Any] = []

    def _count(self, module: nn.Module, inputs: Any, output: Any) -> None:
        size = output.numel() * output.element_size() if isinstance(output, Tensor) else 0
        self.total += size
        if self._layer_done:
            self.after += size

    def _mark(self, module: nn.Module, inputs: Any, output: Any) -> None:
        self._layer_done = True

    def __enter__(self) -> "ForwardCost":
        for module in self.model.modules():
            if next(module.children(), None) is None:  # leaf modules only: containers would count twice
                self._handles.append(module.register_forward_hook(self._count))
        self._handles.append(self.layer.register_forward_hook(self._mark))
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def result(self, layer_output_bytes: int) -> RowBytes:
        """Bytes per image; the tail row also holds its input, one copy of the layer's output."""
        return RowBytes(model=-(-self.total // self.batch), tail=-(-(self.after + layer_output_bytes) // self.batch))


class ModelScorer:
    """Logits of the whole model for rows built on demand, ``rows`` at a time, without autograd (taken from the
    model's output by ``output_transform``, see ``logits_of``).

    Example::

        >>> net = nn.Linear(4, 2)
        >>> scorer = ModelScorer(net, rows=3)
        >>> scorer(5, lambda start, stop: torch.ones(stop - start, 4)).shape  # 2 passes: 3 + 2 rows
        torch.Size([5, 2])
    """

    def __init__(self, model: nn.Module, rows: int, output_transform: OutputTransform = None, channels_last: Optional[bool] = None) -> None:
        self.model = model
        self.rows = max(1, int(rows))
        self.output_transform = output_transform
        self.channels_last = channels_last

    def __call__(self, count: int, build: Callable[[int, int], Tensor]) -> Tensor:
        outputs = []
        with torch.no_grad():
            for start in range(0, count, self.rows):
                x = build(start, min(count, start + self.rows))
                outputs.append(logits_of(self._forward(x), self.output_transform, x.shape[0]))
        return torch.cat(outputs)

    def _forward(self, x: Tensor) -> Any:
        """The model on ``x``, handed over in channels-last memory order on the CPU (see ``CHANNELS_LAST_REFUSED``)."""
        wanted = self.channels_last if self.channels_last is not None else x.device.type == "cpu"
        if not wanted or x.dim() != 4 or self.model in CHANNELS_LAST_REFUSED:
            return self.model(x)
        try:
            return self.model(x.contiguous(memory_format=torch.channels_last))
        except RuntimeError:  # e.g. a forward that calls .view() on a feature map: run it as before, from now on
            CHANNELS_LAST_REFUSED.add(self.model)
            return self.model(x)


class TailScorer:
    """Logits of the network's tail for ``copies`` modified feature maps of each of ``n`` images.

    Args:
        tail: A ``Tail``, called as ``tail(maps, r)`` on ``(n * r, *layer_output)``
            rows, image ``i``'s copies in rows ``[i*r:(i+1)*r]``.
        n: Images in the chunk.
        rows: Rows (``n * r``) per pass; at least ``n`` (one copy of each image).
        reshape: For token layers, turns ``(M, C, h, w)`` maps back into tokens with ``prefix``.
        prefix: ``(n, P, C)`` prefix tokens of the layer's real output (with ``reshape``).
    """

    def __init__(self, tail: "Tail", n: int, rows: int, reshape: Optional[TokenGrid] = None, prefix: Optional[Tensor] = None) -> None:
        self.tail = tail
        self.n = n
        self.copies_per_pass = max(1, int(rows) // max(1, n))
        self.reshape = reshape
        self.prefix = prefix

    def __call__(self, copies: int, build: Callable[[int, int], Tensor]) -> Tensor:
        outputs = []
        with torch.no_grad():
            for start in range(0, copies, self.copies_per_pass):
                stop = min(copies, start + self.copies_per_pass)
                maps = build(start, stop)  # (n, r, C, h, w)
                r = stop - start
                flat = maps.reshape(self.n * r, *maps.shape[2:])
                if self.reshape is not None:
                    assert self.prefix is not None
                    flat = self.reshape.to_tokens(flat, self.prefix.repeat_interleave(r, dim=0))
                logits = self.tail(flat, r)
                outputs.append(logits.reshape(self.n, r, -1))
        return torch.cat(outputs, dim=1)
