"""The probe set: a fixed batch of images (and optional labels) owned by the callback.

Probes are taken from tensors, from a map-style Dataset by index (no iteration, no random draws,
the same on every DDP rank), or, for iterable datasets only, by iterating a DataLoader with the
RNG state saved and restored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, default_collate

from .capture import preserved_rng_state

__all__ = ["Probe", "ProbeLike", "make_probe", "probe_from_dataloader", "split_batch"]

#: What ``CAMMonitor(probe=...)`` accepts.
ProbeLike = Union[Tensor, Tuple[Tensor, Optional[Tensor]], Dataset]

_IMAGE_KEYS = ("image", "images", "img", "x", "input", "inputs", "pixel_values")
_LABEL_KEYS = ("label", "labels", "target", "targets", "y", "class", "cls")


@dataclass
class Probe:
    """A fixed probe set on the CPU, owned by the callback (never inference tensors).

    Attributes:
        images: ``(N, C, H, W)`` float tensor, as the model receives it.
        labels: ``(N,)`` long tensor or None.
    """

    images: Tensor
    labels: Optional[Tensor] = None

    def __post_init__(self) -> None:
        with torch.inference_mode(False):
            images = self.images
            if not isinstance(images, Tensor):
                raise TypeError(f"probe images must be a tensor, got {type(images).__name__}")
            if images.dim() == 3:
                raise ValueError(f"probe images must be a batch (N, C, H, W), got a single image of shape {tuple(images.shape)}")
            if images.dim() != 4:
                raise ValueError(f"probe images must have shape (N, C, H, W), got {tuple(images.shape)}")
            if images.shape[0] == 0:
                raise ValueError("probe set is empty: it has 0 images; give at least one image (num_probe >= 1)")
            if not images.is_floating_point():
                raise TypeError(f"probe images must be floating point (as the model receives them), got {images.dtype}")
            self.images = images.detach().cpu().clone()
            if self.labels is not None:
                labels = torch.as_tensor(self.labels)
                if labels.is_floating_point() or labels.dim() != 1 or labels.shape[0] != images.shape[0]:
                    raise ValueError(
                        f"probe labels must be {images.shape[0]} integer class indices, got dtype {labels.dtype} "
                        f"and shape {tuple(labels.shape)}"
                    )
                self.labels = labels.detach().cpu().clone().long()

    def __len__(self) -> int:
        return self.images.shape[0]


def _first_matching(mapping: dict, keys: Sequence[str]) -> Any:
    for key in keys:
        if key in mapping:
            return mapping[key]
    return None


def split_batch(batch: Any) -> Tuple[Tensor, Optional[Tensor]]:
    """Find ``(images, labels)`` in a collated batch: a tensor, a tuple/list ``(images, labels, ...)``, or a dict.

    Raises:
        ValueError: If no 4-D image tensor can be found.
    """
    images: Any = None
    labels: Any = None
    if isinstance(batch, Tensor):
        images = batch
    elif isinstance(batch, dict):
        images = _first_matching(batch, _IMAGE_KEYS)
        labels = _first_matching(batch, _LABEL_KEYS)
    elif isinstance(batch, (tuple, list)) and batch:
        images = batch[0]
        labels = batch[1] if len(batch) > 1 else None
    if not isinstance(images, Tensor) or images.dim() != 4:
        description = type(batch).__name__
        if isinstance(batch, dict):
            description += f" with keys {sorted(batch)}"
        raise ValueError(
            f"cannot find a 4-D image tensor in a validation batch ({description}); expected a tensor, a tuple "
            f"(images, labels, ...) or a dict with one of the keys {list(_IMAGE_KEYS)}. Pass probe=(images, labels) instead."
        )
    if not (isinstance(labels, Tensor) and labels.dim() == 1 and not labels.is_floating_point()):
        labels = None
    return images, labels


def _is_map_style(dataset: Any) -> bool:
    return hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__") and not isinstance(dataset, torch.utils.data.IterableDataset)


def _from_dataset(dataset: Any, num: int, collate_fn: Callable[[List[Any]], Any]) -> Probe:
    count = min(num, len(dataset))
    if count == 0:
        raise ValueError("probe set is empty: the dataset has no samples")
    images, labels = split_batch(collate_fn([dataset[i] for i in range(count)]))
    return Probe(images, labels)


def probe_from_dataloader(loader: Any, num: int) -> Probe:
    """The first ``num`` samples of a DataLoader's dataset (by index, in dataset order).

    Map-style datasets are indexed directly (the loader's sampler and workers are not used, so no
    random numbers are drawn); iterable ones are iterated under :func:`preserved_rng_state`.
    """
    dataset = getattr(loader, "dataset", None)
    collate_fn = getattr(loader, "collate_fn", None) or default_collate
    if dataset is not None and _is_map_style(dataset):
        return _from_dataset(dataset, num, collate_fn)
    images: List[Tensor] = []
    labels: List[Tensor] = []
    seen = 0
    with preserved_rng_state():
        for batch in loader:
            batch_images, batch_labels = split_batch(batch)
            images.append(batch_images)
            if batch_labels is not None:
                labels.append(batch_labels)
            seen += batch_images.shape[0]
            if seen >= num:
                break
    if not images:
        raise ValueError("probe set is empty: the validation dataloader yielded no batches")
    all_images = torch.cat(images)[:num]
    all_labels = torch.cat(labels)[:num] if len(labels) == len(images) else None
    return Probe(all_images, all_labels)


def make_probe(probe: ProbeLike, num: int) -> Probe:
    """Build a :class:`Probe` from ``probe=`` (tensor, ``(images, labels)`` tuple, Dataset or DataLoader).

    Tensors are used whole; datasets contribute their first ``num`` samples.
    """
    if isinstance(probe, Tensor):
        return Probe(probe)
    if isinstance(probe, (tuple, list)):
        if len(probe) not in (1, 2):
            raise ValueError(f"probe as a tuple must be (images,) or (images, labels), got {len(probe)} elements")
        return Probe(probe[0], probe[1] if len(probe) == 2 else None)
    if isinstance(probe, DataLoader):
        return probe_from_dataloader(probe, num)
    if _is_map_style(probe):
        return _from_dataset(probe, num, default_collate)
    raise TypeError(
        f"probe must be an images tensor, an (images, labels) tuple, a map-style Dataset or a DataLoader, got {type(probe).__name__}"
    )
