"""The callback under multi-process training: which strategies work, and gathering each rank's share of the probe.

Under Lightning's DDP (and ``ddp_spawn``, gloo or NCCL) every process explains rows ``rank, rank +
world, ...`` of the probe set with its own replica of the model, and ``gather_rows`` puts the
results of all processes back in probe order on every process; rank zero logs. Strategies that
shard the parameters (FSDP, DeepSpeed, model parallel) are refused by ``check_strategy``: a
process holds only part of the weights, so calling the LightningModule outside the strategy's
wrapped forward would be wrong.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from cam_callbacks.engine.result import Explanation, ScoredExplanation

#: Strategy class names the callback refuses (sharded parameters).
UNSUPPORTED_STRATEGIES = ("FSDPStrategy", "DeepSpeedStrategy", "ModelParallelStrategy")


def check_strategy(strategy: Any) -> None:
    """Raise a clear error for strategies that shard the model's parameters."""
    names = {cls.__name__ for cls in type(strategy).__mro__}
    refused = sorted(names.intersection(UNSUPPORTED_STRATEGIES))
    if refused:
        raise ValueError(
            f"CAMMonitor does not support {refused[0]}: each process holds only a shard of the parameters, so the model "
            "cannot be run outside the strategy's forward. Use DDP (strategy='ddp'), or run cam_callbacks.explain after "
            "training on a full copy of the model."
        )


def _padded(tensor: Tensor, rows: int) -> Tensor:
    out = tensor.new_zeros((rows, *tensor.shape[1:]))
    out[: tensor.shape[0]] = tensor
    return out


def gather_tensor(strategy: Any, tensor: Tensor, total: int) -> Tensor:
    """One tensor of a rank's rows (``rank, rank + world, ...``) gathered into all ``total`` rows in probe order."""
    world = strategy.world_size
    rows = -(-total // world)
    gathered = strategy.all_gather(_padded(tensor.detach(), rows))  # (world, rows, ...)
    return gathered.transpose(0, 1).reshape(world * rows, *tensor.shape[1:])[:total]


def gather_rows(strategy: Any, result: ScoredExplanation, total: int) -> ScoredExplanation:
    """All ranks' rows (rank ``r`` computed rows ``r, r + world, ...``) in probe order, on every rank.

    Each tensor is padded to ``ceil(total / world)`` rows, all-gathered to ``(world, rows, ...)``; row
    ``k`` of rank ``r`` is probe row ``k * world + r``, so a transpose and a reshape restore the order.
    """

    def gather(tensor: Tensor) -> Tensor:
        return gather_tensor(strategy, tensor, total)

    explanation, scores = result
    maps = {name: gather(value.float()) for name, value in explanation.maps.items()}
    merged = Explanation(maps, gather(explanation.logits.float()), gather(explanation.targets), explanation.layer_name)
    gathered_scores = {method: {metric: gather(values.float()) for metric, values in per.items()} for method, per in scores.items()}
    return ScoredExplanation(merged, gathered_scores)
