"""The probe set: a fixed batch of images (and optional labels and region masks) owned by the callback.

Probes are taken from tensors, from a map-style Dataset by index (no iteration, no random draws,
the same on every DDP rank), or, for iterable datasets only, by iterating a DataLoader with the
RNG state saved and restored.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, default_collate

from cam_callbacks.capture.state import preserved_rng_state

#: What ``CAMMonitor(probe=...)`` accepts: images, or ``(images, labels[, masks[, nuisance]])``, or a Dataset/DataLoader.
ProbeLike = Union[Tensor, Tuple[Optional[Tensor], ...], Dataset]

_IMAGE_KEYS = ("image", "images", "img", "x", "input", "inputs", "pixel_values")
_LABEL_KEYS = ("label", "labels", "target", "targets", "y", "class", "cls")
_MASK_KEYS = ("mask", "masks", "object_mask", "object_masks", "segmentation", "box_mask")
_NUISANCE_KEYS = ("nuisance", "nuisance_mask", "nuisance_masks", "spurious_mask")


class Batch(NamedTuple):
    """The parts of a validation batch the probe uses (missing ones are None)."""

    images: Tensor
    labels: Optional[Tensor]
    masks: Optional[Tensor]
    nuisance: Optional[Tensor]


@dataclass
class Probe:
    """A fixed probe set on the CPU, owned by the callback (never inference tensors).

    Attributes:
        images: ``(N, C, H, W)`` float tensor, as the model receives it.
        labels: ``(N,)`` long class indices, ``(N, num_classes)`` multi-hot labels (multi-label
            models; stored as bool), or None. An ``(N, 1)`` column of integer class indices is stored as
            ``(N,)``; a bool or floating ``(N, 1)`` column stays a multi-hot label of one class (a single
            sigmoid output).
        masks: ``(N, H, W)`` bool: the region that *should* explain each image's label (object mask
            or box), or None. ``(N, 1, H, W)`` and 0/1 numbers are accepted.
        nuisance: ``(N, H, W)`` bool: a region that must *not* explain it (watermark, text,
            border), or None.
    """

    images: Tensor
    labels: Optional[Tensor] = None
    masks: Optional[Tensor] = None
    nuisance: Optional[Tensor] = None

    def __post_init__(self) -> None:
        with torch.inference_mode(False):
            images = self.images
            if not isinstance(images, Tensor):
                raise TypeError(f"probe images must be a tensor, got {type(images).__name__}; CAMMonitor(probe=...) accepts {PROBE_CHOICES}")
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
                self.labels = _check_labels(_as_tensor(self.labels, "labels", "(N,) integer class indices or (N, num_classes) 0/1"), images.shape[0])
            self.masks = _check_mask(self.masks, images, "masks")
            self.nuisance = _check_mask(self.nuisance, images, "nuisance")

    def fingerprint(self) -> str:
        """A SHA-256 of the probe's contents (images, labels, masks): equal fingerprints mean the same probe set.

        Example::

            >>> a = Probe(torch.zeros(2, 3, 4, 4), torch.tensor([0, 1]))
            >>> a.fingerprint() == Probe(torch.zeros(2, 3, 4, 4), torch.tensor([0, 1])).fingerprint()
            True
            >>> a.fingerprint() == Probe(torch.zeros(2, 3, 4, 4), torch.tensor([1, 1])).fingerprint()
            False
        """
        digest = hashlib.sha256()
        for name, tensor in (("images", self.images), ("labels", self.labels), ("masks", self.masks), ("nuisance", self.nuisance)):
            digest.update(name.encode())
            if tensor is not None:
                digest.update(str((tuple(tensor.shape), str(tensor.dtype))).encode())
                digest.update(tensor.contiguous().numpy().tobytes())
        return digest.hexdigest()

    def tensors(self) -> Dict[str, Optional[Tensor]]:
        """The probe's tensors by name (for checkpoints): ``images``, ``labels``, ``masks``, ``nuisance``."""
        return {"images": self.images, "labels": self.labels, "masks": self.masks, "nuisance": self.nuisance}

    @property
    def multilabel(self) -> bool:
        """Whether the labels are multi-hot ``(N, num_classes)``."""
        return self.labels is not None and self.labels.dim() == 2

    def __len__(self) -> int:
        return self.images.shape[0]


def _as_tensor(value: Any, name: str, valid: str) -> Tensor:
    """``value`` as a tensor (a tensor, a list of numbers, an array), or a TypeError saying what ``name`` must be."""
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"probe {name} must be a tensor of {valid} values, got {type(value).__name__} {value!r:.80}") from None


def _is_index_column(labels: Tensor, n: int) -> bool:
    """An ``(n, 1)`` integer tensor: one class index per image, as a column (not a multi-hot label)."""
    return tuple(labels.shape) == (n, 1) and not labels.is_floating_point() and labels.dtype != torch.bool


def _check_labels(labels: Tensor, n: int) -> Tensor:
    if _is_index_column(labels, n):
        labels = labels[:, 0]
    if labels.dim() == 2 and labels.shape[0] == n:
        values = labels.detach().cpu()
        if not bool(((values == 0) | (values == 1)).all()):
            raise ValueError("probe labels of shape (N, num_classes) must be multi-hot: 0/1 (or bool) values only")
        return values.clone().bool()
    if labels.is_floating_point() or labels.dim() != 1 or labels.shape[0] != n:
        raise ValueError(
            f"probe labels must be {n} integer class indices, or an ({n}, num_classes) multi-hot tensor, got dtype "
            f"{labels.dtype} and shape {tuple(labels.shape)}"
        )
    return labels.detach().cpu().clone().long()


def _check_mask(mask: Any, images: Tensor, name: str) -> Optional[Tensor]:
    if mask is None:
        return None
    mask = _as_tensor(mask, name, "(N, H, W) bool").detach().cpu()
    n, _, height, width = images.shape
    if mask.dim() == 4 and mask.shape[1] == 1:
        mask = mask[:, 0]
    if tuple(mask.shape) != (n, height, width):
        raise ValueError(f"probe {name} must have shape ({n}, {height}, {width}) like the images (N, H, W), got {tuple(mask.shape)}")
    if mask.dtype != torch.bool:
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError(f"probe {name} must be boolean or hold only 0/1 values")
        mask = mask != 0
    return mask.clone()


def _first_matching(mapping: dict, keys: Sequence[str]) -> Any:
    for key in keys:
        if key in mapping:
            return mapping[key]
    return None


def split_batch(batch: Any) -> Batch:
    """Find images, labels and region masks in a collated batch.

    A tensor (images), a tuple/list ``(images, labels, masks, nuisance, ...)`` or a dict (keys such
    as ``"image"``, ``"label"``, ``"mask"``, ``"nuisance"``). Labels are kept when they are ``(N,)``
    integers or ``(N, num_classes)`` 0/1 values; masks when they are ``(N, H, W)`` or ``(N, 1, H, W)``
    like the images.

    Raises:
        ValueError: If no 4-D image tensor can be found.
    """
    images: Any = None
    labels: Any = None
    masks: Any = None
    nuisance: Any = None
    if isinstance(batch, Tensor):
        images = batch
    elif isinstance(batch, dict):
        images = _first_matching(batch, _IMAGE_KEYS)
        labels = _first_matching(batch, _LABEL_KEYS)
        masks = _first_matching(batch, _MASK_KEYS)
        nuisance = _first_matching(batch, _NUISANCE_KEYS)
    elif isinstance(batch, (tuple, list)) and batch:
        images, labels, masks, nuisance = (list(batch) + [None] * 3)[:4]
    if not isinstance(images, Tensor) or images.dim() != 4:
        description = type(batch).__name__
        if isinstance(batch, dict):
            description += f" with keys {sorted(batch)}"
        raise ValueError(
            f"cannot find a 4-D image tensor in a validation batch ({description}); expected a tensor, a tuple "
            f"(images, labels, ...) or a dict with one of the keys {list(_IMAGE_KEYS)}. Pass probe=(images, labels) instead."
        )
    if not _is_labels(labels, images.shape[0]):
        labels = None
    return Batch(images, labels, _as_mask(masks, images), _as_mask(nuisance, images))


def _is_labels(labels: Any, n: int) -> bool:
    if not isinstance(labels, Tensor) or labels.shape[:1] != (n,):
        return False
    if labels.dim() == 1 or _is_index_column(labels, n):
        return not labels.is_floating_point()
    return labels.dim() == 2 and bool(((labels == 0) | (labels == 1)).all())


def _as_mask(mask: Any, images: Tensor) -> Optional[Tensor]:
    """``mask`` if it is shaped like the images' pixels, else None."""
    if not isinstance(mask, Tensor):
        return None
    n, _, height, width = images.shape
    if tuple(mask.shape) in ((n, height, width), (n, 1, height, width)):
        return mask
    return None


def _is_map_style(dataset: Any) -> bool:
    return hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__") and not isinstance(dataset, torch.utils.data.IterableDataset)


def _sample_image(sample: Any) -> Any:
    """The image of one dataset sample: the sample itself, its first element, or its image key."""
    if isinstance(sample, Mapping):
        return _first_matching(dict(sample), _IMAGE_KEYS)
    if isinstance(sample, (tuple, list)) and sample:
        return sample[0]
    return sample


def _first_rows(rows: List[int]) -> str:
    return ", ".join(map(str, rows[:3])) + (", ..." if len(rows) > 3 else "")


def _sizes_message(shapes: Sequence[Tuple[int, ...]], source: str) -> str:
    """The error for probe images of several sizes: the sizes seen (with the first images of each) and the ways out."""
    seen: Dict[Tuple[int, ...], List[int]] = {}
    for index, shape in enumerate(shapes):
        seen.setdefault(shape, []).append(index)
    listed = ", ".join(f"{shape} (image{'s' if len(rows) > 1 else ''} {_first_rows(rows)})" for shape, rows in seen.items())
    first = next(iter(seen))
    size = f"({first[-2]}, {first[-1]})" if len(first) >= 2 else "(H, W)"
    return (
        f"CAMMonitor(probe=...): the probe images taken from {source} have {len(seen)} different sizes: {listed}. The probe set "
        "is one batch, so its images need one size: resize them in the dataset's transforms (e.g. "
        f"torchvision.transforms.Resize({size}) or CenterCrop), or pass probe= a tensor of images of one size, e.g. "
        "probe=(images, labels)"
    )


def _collate_probe(samples: List[Any], collate_fn: Callable[[List[Any]], Any], source: str) -> Any:
    """``collate_fn(samples)``; images of several sizes get a message that names the sizes and the way out."""
    shapes = [tuple(image.shape) for image in map(_sample_image, samples) if isinstance(image, Tensor)]
    if len(shapes) == len(samples) and len(set(shapes)) > 1:
        raise ValueError(_sizes_message(shapes, source))
    return collate_fn(samples)


def _from_dataset(dataset: Any, num: int, collate_fn: Callable[[List[Any]], Any]) -> Probe:
    count = min(num, len(dataset))
    if count == 0:
        raise ValueError("probe set is empty: the dataset has no samples")
    source = f"the first {count} samples of {type(dataset).__name__}"
    return Probe(*split_batch(_collate_probe([dataset[i] for i in range(count)], collate_fn, source)))


def probe_from_dataloader(loader: Any, num: int) -> Probe:
    """The first ``num`` samples of a DataLoader's dataset (by index, in dataset order).

    Map-style datasets are indexed directly (the loader's sampler and workers are not used, so no
    random numbers are drawn); iterable ones are iterated under ``preserved_rng_state``.
    """
    dataset = getattr(loader, "dataset", None)
    collate_fn = getattr(loader, "collate_fn", None) or default_collate
    if dataset is not None and _is_map_style(dataset):
        return _from_dataset(dataset, num, collate_fn)
    parts: List[Batch] = []
    seen = 0
    with preserved_rng_state():
        for batch in loader:
            part = split_batch(batch)
            parts.append(part)
            seen += part.images.shape[0]
            if seen >= num:
                break
    if not parts:
        raise ValueError("probe set is empty: the validation dataloader yielded no batches")
    shapes = [tuple(image.shape) for part in parts for image in part.images]
    if len(set(shapes)) > 1:
        raise ValueError(_sizes_message(shapes[:num], f"the batches of {type(loader).__name__}"))

    def joined(field: int) -> Optional[Tensor]:
        values = [part[field] for part in parts]
        present = [v for v in values if v is not None]
        return torch.cat(present)[:num] if len(present) == len(values) else None

    return Probe(torch.cat([part.images for part in parts])[:num], joined(1), joined(2), joined(3))


#: What ``probe=`` accepts, for error messages.
PROBE_CHOICES = (
    "an images tensor (N, C, H, W), an (images, labels[, masks[, nuisance]]) tuple, a map-style Dataset or a DataLoader "
    "(whose samples are (image, label[, mask[, nuisance]]) tuples or dicts)"
)


def _unsupported_probe(probe: Any) -> TypeError:
    """The error for a ``probe=`` of a type that is not accepted, with a hint for the likely mix-ups."""
    if isinstance(probe, (str, bytes, os.PathLike)):
        got, hint = f"the path {probe!r}", f"; to use a saved probe set, load it first, e.g. probe=torch.load({str(probe)!r})"
    elif isinstance(probe, Mapping):
        got = f"a {type(probe).__name__} with keys {sorted(map(str, probe))}"
        hint = "; for one collated batch pass its tensors, e.g. probe=(batch['image'], batch['label'])"
    else:
        got, hint = f"{type(probe).__name__}", ""
    return TypeError(f"probe must be {PROBE_CHOICES}; got {got}{hint}")


def _samples_hint(probe: Sequence[Any]) -> str:
    """For a list of samples (``[(image, label), ...]``) or of single images, what it is and how to stack it ("" otherwise)."""
    first = probe[0] if probe else None
    if isinstance(first, (tuple, list)) and first and isinstance(first[0], Tensor):
        return (
            f"a {type(probe).__name__} of {len(probe)} samples ({type(first).__name__}s such as (image, label)); stack them into one "
            "batch: images = torch.stack([s[0] for s in samples]), labels = torch.tensor([s[1] for s in samples]), then "
            "probe=(images, labels)"
        )
    if isinstance(first, Tensor) and first.dim() == 3 and all(isinstance(x, Tensor) and x.dim() == 3 for x in probe):
        return f"a {type(probe).__name__} of {len(probe)} single images (C, H, W); stack them: probe=torch.stack(images) or (torch.stack(images), labels)"
    return ""


def make_probe(probe: ProbeLike, num: int) -> Probe:
    """Build a ``Probe`` from ``probe=`` (tensor, ``(images, labels)`` tuple, Dataset or DataLoader).

    Tensors are used whole; datasets contribute their first ``num`` samples.

    Raises:
        TypeError: For anything else (a file path, a dict, a number...), listing what is accepted.
    """
    if isinstance(probe, Tensor):
        return Probe(probe)
    if isinstance(probe, (tuple, list)):
        hint = _samples_hint(probe)
        if hint:
            raise TypeError(f"probe must be {PROBE_CHOICES}; got {hint}")
        if not 1 <= len(probe) <= 4:
            raise ValueError(f"probe as a tuple must be (images, labels, masks, nuisance) or a prefix of it, got {len(probe)} elements")
        return Probe(*probe)  # type: ignore[arg-type]  # Probe checks the types
    if isinstance(probe, DataLoader):
        return probe_from_dataloader(probe, num)
    if isinstance(probe, (str, bytes, os.PathLike, Mapping)) or not _is_map_style(probe):
        raise _unsupported_probe(probe)
    return _from_dataset(probe, num, default_collate)


def probe_from_loaders(loaders: Any, num: int) -> Probe:
    """The probe from the first of the trainer's validation dataloaders (a single loader, a list or a dict of them)."""
    if isinstance(loaders, dict):
        loaders = list(loaders.values())
    if isinstance(loaders, (list, tuple)):
        if not loaders:
            raise ValueError("CAMMonitor: probe set is empty: there is no validation dataloader; pass probe=(images, labels)")
        loaders = loaders[0]
    return probe_from_dataloader(loaders, num)


def early_probe(trainer: Any, stage: str, num: int) -> Optional[Probe]:
    """Take the probe from the validation data source before validation runs, when possible (else None).

    Dataloaders built by ``LightningModule.val_dataloader`` may need the module's ``setup`` (which
    Lightning calls after the callbacks'); then the probe is taken at the first validation instead.
    """
    loops = {"fit": lambda: trainer.fit_loop.epoch_loop.val_loop, "validate": lambda: trainer.validate_loop}
    if stage not in loops:
        return None
    try:
        source = loops[stage]()._data_source
        if not source.is_defined():
            return None
        with preserved_rng_state():
            loaders = source.dataloader()
    except Exception:  # noqa: BLE001 - any failure here only postpones taking the probe
        return None
    return probe_from_loaders(loaders, num)
