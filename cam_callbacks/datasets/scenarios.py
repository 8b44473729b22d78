"""Benchmark scenarios with known object and nuisance masks: object size, several objects, shortcuts.

Built on ``cam_callbacks.datasets.shapes`` (same textured backgrounds, shapes, colours and geometry
conventions). Scenarios (``scenario=``, see ``SCENARIOS``); sizes are circumradii as fractions
of the image side:

- ``"large"``: one object of size 0.30-0.38.
- ``"small"``: one object of size 0.07-0.11.
- ``"multi_same"``: 2 or 3 objects of the label's class, size 0.12-0.19 each (own colour and angle).
- ``"multi_class"``: 2 or 3 objects of *different* classes (at most ``num_classes``): a primary
  one of size 0.20-0.26 and smaller ones of size 0.07-0.12. The label is the class of the object
  with the most pixels (by construction nearly always the primary; ties go to the primary);
  ``ScenarioBatch.multi_hot`` marks every class present, for multi-label use.

Objects never overlap one another (their circumscribed circles are at least one pixel apart) and
stay one pixel clear of the four corner squares where a nuisance patch may go, whether or not the
patch is drawn, so an image with ``shortcut=True`` is its ``shortcut=False`` twin plus the patch.

Shortcut (``shortcut=True``): a solid square patch of side ``round(0.15 * image_size)`` in a corner
(``CORNERS``). Its *cue class* decides ``cue="color"``: the patch colour
(``PATCH_COLORS[cue class]``, always top-left) or ``cue="corner"``: the corner
(``CORNERS[cue class]``, always white). In the ``"train"`` split the cue class is the label (a
perfect spurious correlation); in the ``"val"`` split it is drawn uniformly, independently of the
label, so a model that learnt the cue instead of the shapes fails there. Without a shortcut there
is no patch and the nuisance masks are all False.

Every image ``index`` of ``(seed, split)`` is drawn from its own generator (see
``scenario_generator``), in a fixed order (label, background, objects, cue), so images do not
depend on how many are generated or in what order, the global RNG is never used, and the train and
val splits of one seed are independent. For a given seed and split, all scenarios share their
first draws (the label, i.e. the primary object's class, and the background): a "large" and a
"small" dataset differ only in their objects.

Example::

    >>> batch = make_scenario(8, scenario="small", shortcut=True, image_size=32, seed=0)
    >>> batch.images.shape, batch.masks.shape, batch.nuisance_masks.shape, batch.multi_hot.shape
    (torch.Size([8, 3, 32, 32]), torch.Size([8, 32, 32]), torch.Size([8, 32, 32]), torch.Size([8, 4]))
    >>> bool((batch.cue_labels == batch.labels).all())  # train split: the cue gives the label away
    True
    >>> image, label, mask, nuisance = ScenarioDataset(8, scenario="small", shortcut=True, image_size=32)[0]
    >>> torch.equal(image, batch.images[0]) and label == int(batch.labels[0])
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, NamedTuple, Sequence, Tuple

import torch
from torch import Tensor
from torch.utils.data import Dataset

from cam_callbacks.datasets.backgrounds import BackgroundParams, image_generator, render_backgrounds, sample_background, single_threaded
from cam_callbacks.datasets.drawing import SHAPE_NAMES, random_object_color, shape_masks
from cam_callbacks.datasets.patches import CORNER_CUE_COLOR, CORNERS, PATCH_COLORS, PATCH_FRACTION, corner_boxes, patch_mask
from cam_callbacks.datasets.shapes import normalize
from cam_callbacks.utils.checks import check_choice

__all__ = [
    "SCENARIOS",
    "SPLITS",
    "CUES",
    "CORNERS",
    "PATCH_COLORS",
    "PATCH_FRACTION",
    "ScenarioBatch",
    "ScenarioDataset",
    "make_scenario",
    "scenario_generator",
    "patch_mask",
]

#: Scenario names accepted by ``make_scenario``.
SCENARIOS: Tuple[str, ...] = ("large", "small", "multi_same", "multi_class")
#: Splits: the shortcut cue follows the label in ``"train"`` and is random in ``"val"``.
SPLITS: Tuple[str, ...] = ("train", "val")
#: What the nuisance patch encodes: its colour or its corner.
CUES: Tuple[str, ...] = ("color", "corner")

#: Size ranges (circumradius / image side).
_SIZES = {
    "large": (0.30, 0.38),
    "small": (0.07, 0.11),
    "multi_same": (0.12, 0.19),
    "multi_primary": (0.20, 0.26),
    "multi_secondary": (0.07, 0.12),
}
#: Gap in pixels between objects, and between an object and the corner squares.
_MARGIN = 1.0
#: Placement candidates drawn at once, rounds before shrinking the object, shrink factor.
_CANDIDATES, _ROUNDS, _SHRINK = 16, 8, 0.9
#: Offset that separates the scenario streams from those of ``cam_callbacks.datasets.shapes.make_shapes``.
_STREAM_OFFSET = 1 << 40
#: Images rendered per chunk.
_CHUNK = 256


@dataclass
class ScenarioBatch:
    """Images of one scenario with their labels and masks.

    Attributes:
        images: ``(N, 3, H, W)`` float32, normalised with ``SHAPES_MEAN``
            and ``SHAPES_STD``
            (or in ``[0, 1]`` with ``normalize=False``).
        labels: ``(N,)`` long class indices into ``SHAPE_NAMES``.
        masks: ``(N, H, W)`` bool, union of the pixels of all objects.
        nuisance_masks: ``(N, H, W)`` bool, the patch's pixels (all False without a shortcut).
        multi_hot: ``(N, num_classes)`` float32, 1 for every class present in the image.
        cue_labels: ``(N,)`` long, the class the patch encodes; -1 without a shortcut.
        num_objects: ``(N,)`` long, objects in each image.
    """

    images: Tensor
    labels: Tensor
    masks: Tensor
    nuisance_masks: Tensor
    multi_hot: Tensor
    cue_labels: Tensor
    num_objects: Tensor

    def __len__(self) -> int:
        return self.images.shape[0]


class _Object(NamedTuple):
    label: int
    center: Tuple[float, float]
    size: float
    angle: float
    color: Tensor


class _Draw(NamedTuple):
    background: BackgroundParams
    objects: List[_Object]
    cue: int  # the cue class drawn for the val split (the train split uses the label)


def scenario_generator(seed: int, split: str, index: int) -> torch.Generator:
    """The private generator of image ``index`` of split ``split`` of scenario seed ``seed``.

    ``image_generator(2**40 + 2 * seed + s, index)`` with ``s = 0`` for train and 1 for val: the two
    splits, and ``cam_callbacks.datasets.shapes.make_shapes`` datasets, use unrelated streams.

    Example::

        >>> a = torch.rand(2, generator=scenario_generator(0, "train", 3))
        >>> b = torch.rand(2, generator=scenario_generator(0, "val", 3))
        >>> torch.equal(a, torch.rand(2, generator=scenario_generator(0, "train", 3))), torch.equal(a, b)
        (True, False)
    """
    check_choice("split", split, SPLITS)
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be non-negative, got seed={seed}, index={index}")
    return image_generator(_STREAM_OFFSET + 2 * seed + SPLITS.index(split), index)


def _check_args(scenario: str, split: str, shortcut: bool, cue: str, image_size: int, num_classes: int, seed: int) -> None:
    check_choice("scenario", scenario, SCENARIOS)
    check_choice("split", split, SPLITS)
    check_choice("cue", cue, CUES)
    if not isinstance(shortcut, bool):
        raise ValueError(f"shortcut must be True or False, got {shortcut!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 32:
        raise ValueError(f"image_size must be an int >= 32 (small objects need room), got {image_size!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or not 1 <= num_classes <= len(SHAPE_NAMES):
        raise ValueError(f"num_classes must be an int in 1..{len(SHAPE_NAMES)} (shapes {list(SHAPE_NAMES)}), got {num_classes!r}")
    if scenario == "multi_class" and num_classes < 2:
        raise ValueError(f"scenario='multi_class' needs num_classes >= 2, got {num_classes}")
    if shortcut and cue == "corner" and num_classes > len(CORNERS):
        raise ValueError(f"cue='corner' encodes at most {len(CORNERS)} classes (one per corner), got num_classes={num_classes}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")


def _place(
    generator: torch.Generator,
    size: float,
    image_size: int,
    placed: Sequence[_Object],
    boxes: Sequence[Tuple[float, float, float, float]],
) -> Tuple[Tuple[float, float], float]:
    """A centre for a circle of radius ``size`` inside the image, clear of ``placed`` and ``boxes``.

    Candidates are drawn ``_CANDIDATES`` at a time and the first valid one is kept; after
    ``_ROUNDS`` rounds without one the object shrinks by ``_SHRINK``. Deterministic given the generator.
    """
    for _ in range(60):
        for _ in range(_ROUNDS):
            span = image_size - 1 - 2 * size
            for tx, ty in torch.rand((_CANDIDATES, 2), generator=generator).tolist():
                cx, cy = size + span * tx, size + span * ty
                clear = all(math.hypot(max(x_lo - cx, 0.0, cx - x_hi), max(y_lo - cy, 0.0, cy - y_hi)) > size + _MARGIN for x_lo, x_hi, y_lo, y_hi in boxes)
                if clear and all(math.hypot(cx - o.center[0], cy - o.center[1]) > size + o.size + _MARGIN for o in placed):
                    return (cx, cy), size
        size *= _SHRINK
    raise RuntimeError(f"could not place an object of size {size:.2f} in a {image_size}x{image_size} image")  # pragma: no cover


def _sample(index: int, scenario: str, split: str, image_size: int, num_classes: int, seed: int) -> _Draw:
    """All random draws of one image, in a fixed order: label, background, objects, cue."""
    generator = scenario_generator(seed, split, index)
    label = int(torch.randint(0, num_classes, (), generator=generator))
    background = sample_background(generator, image_size)
    if scenario in ("large", "small"):
        classes, ranges = [label], [_SIZES[scenario]]
    else:
        count = int(torch.randint(2, 4, (), generator=generator))
        if scenario == "multi_same":
            classes, ranges = [label] * count, [_SIZES["multi_same"]] * count
        else:
            count = min(count, num_classes)
            others = [k for k in range(num_classes) if k != label]
            order = torch.randperm(len(others), generator=generator).tolist()
            classes = [label] + [others[k] for k in order[: count - 1]]
            ranges = [_SIZES["multi_primary"]] + [_SIZES["multi_secondary"]] * (count - 1)
    boxes = corner_boxes(image_size)
    objects: List[_Object] = []
    for cls, (low, high) in zip(classes, ranges):
        size_draw, angle_draw = torch.rand(2, generator=generator).tolist()
        center, size = _place(generator, (low + (high - low) * size_draw) * image_size, image_size, objects, boxes)
        objects.append(_Object(cls, center, size, 2 * math.pi * angle_draw, random_object_color(generator)))
    cue = int(torch.randint(0, num_classes, (), generator=generator))
    return _Draw(background, objects, cue)


def _render(draws: Sequence[_Draw], split: str, shortcut: bool, cue: str, image_size: int, num_classes: int) -> Tuple[Tensor, ...]:
    """Pixels of a chunk of images, batched over images and objects."""
    n, size = len(draws), image_size
    objects = [o for d in draws for o in d.objects]
    owner = torch.tensor([i for i, d in enumerate(draws) for _ in d.objects], dtype=torch.long)
    m = len(objects)
    centers = torch.tensor([o.center for o in objects], dtype=torch.float32).view(m, 2)
    sizes = torch.tensor([o.size for o in objects], dtype=torch.float32)
    angles = torch.tensor([o.angle for o in objects], dtype=torch.float32)
    colors = torch.stack([o.color for o in objects]).view(m, 3)
    classes = torch.tensor([o.label for o in objects], dtype=torch.long)
    object_masks = shape_masks([SHAPE_NAMES[o.label] for o in objects], size, centers, sizes, angles)  # (M, H, W)

    # objects are disjoint: a sum per image composes them
    weights = object_masks.float()
    masks = torch.zeros((n, size, size)).index_add_(0, owner, weights) > 0
    paint = torch.zeros((n, 3, size, size)).index_add_(0, owner, weights.unsqueeze(1) * colors.view(m, 3, 1, 1))
    images = torch.where(masks.unsqueeze(1), paint, render_backgrounds([d.background for d in draws], size))

    # label: the class of the object with the most pixels, ties to the first (primary) object
    pixels = object_masks.flatten(1).sum(dim=1)
    most = torch.zeros(n, dtype=pixels.dtype).scatter_reduce_(0, owner, pixels, reduce="amax", include_self=False)
    rank = torch.arange(m)
    first = torch.full((n,), m, dtype=torch.long).scatter_reduce_(
        0, owner, torch.where(pixels == most[owner], rank, torch.full_like(rank, m)), reduce="amin", include_self=True
    )
    labels = classes[first]
    multi_hot = torch.zeros((n, num_classes)).index_put_((owner, classes), torch.ones(m))
    num_objects = torch.bincount(owner, minlength=n)

    nuisance = torch.zeros((n, size, size), dtype=torch.bool)
    cue_labels = torch.full((n,), -1, dtype=torch.long)
    if shortcut:
        cue_labels = labels.clone() if split == "train" else torch.tensor([d.cue for d in draws], dtype=torch.long)
        corner_masks = torch.stack([patch_mask(size, c) for c in CORNERS])
        if cue == "color":
            nuisance = corner_masks[0].expand(n, size, size).clone()
            patch_colors = torch.tensor(PATCH_COLORS, dtype=torch.float32)[cue_labels]
        else:
            nuisance = corner_masks[cue_labels]
            patch_colors = torch.tensor(CORNER_CUE_COLOR, dtype=torch.float32).expand(n, 3)
        images = torch.where(nuisance.unsqueeze(1), patch_colors.view(n, 3, 1, 1), images)
    return images, labels, masks, nuisance, multi_hot, cue_labels, num_objects


def make_scenario(
    num_images: int,
    scenario: str = "large",
    split: str = "train",
    shortcut: bool = False,
    cue: str = "color",
    image_size: int = 64,
    num_classes: int = 4,
    seed: int = 0,
    start: int = 0,
    normalize: bool = True,
) -> ScenarioBatch:
    """Images ``start .. start + num_images - 1`` of a scenario (see the module docstring).

    Args:
        num_images: Number of images (>= 0).
        scenario: One of ``SCENARIOS``.
        split: ``"train"`` (the cue follows the label) or ``"val"`` (the cue is random).
        shortcut: Draw the nuisance patch.
        cue: What the patch encodes, one of ``CUES`` (``"corner"`` allows at most 4 classes).
        image_size: Side of the square images in pixels (>= 32).
        num_classes: Number of classes, the first ``num_classes`` of ``SHAPE_NAMES``.
        seed: Dataset seed (>= 0).
        start: Index of the first image, to generate a dataset in pieces.
        normalize: Normalise the images with ``SHAPES_MEAN`` and
            ``SHAPES_STD`` (default) or return them in ``[0, 1]``.

    Returns:
        A ``ScenarioBatch``.

    Example::

        >>> batch = make_scenario(6, scenario="multi_class", image_size=32, seed=1, normalize=False)
        >>> batch.labels.dtype, batch.masks.dtype, batch.multi_hot.dtype
        (torch.int64, torch.bool, torch.float32)
        >>> bool((batch.multi_hot.sum(1) == batch.num_objects).all()), bool((batch.num_objects >= 2).all())
        (True, True)
        >>> bool((batch.multi_hot[torch.arange(6), batch.labels] == 1).all()), bool(batch.nuisance_masks.any())
        (True, False)
    """
    _check_args(scenario, split, shortcut, cue, image_size, num_classes, seed)
    if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 0:
        raise ValueError(f"num_images must be an int >= 0, got {num_images!r}")
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise ValueError(f"start must be an int >= 0, got {start!r}")
    n, size = num_images, image_size
    batch = ScenarioBatch(
        images=torch.empty((n, 3, size, size), dtype=torch.float32),
        labels=torch.empty(n, dtype=torch.long),
        masks=torch.empty((n, size, size), dtype=torch.bool),
        nuisance_masks=torch.empty((n, size, size), dtype=torch.bool),
        multi_hot=torch.empty((n, num_classes), dtype=torch.float32),
        cue_labels=torch.empty(n, dtype=torch.long),
        num_objects=torch.empty(n, dtype=torch.long),
    )
    fields = (batch.images, batch.labels, batch.masks, batch.nuisance_masks, batch.multi_hot, batch.cue_labels, batch.num_objects)
    with single_threaded():
        for first in range(0, n, _CHUNK):
            count = min(_CHUNK, n - first)
            draws = [_sample(start + first + i, scenario, split, size, num_classes, seed) for i in range(count)]
            for target, part in zip(fields, _render(draws, split, shortcut, cue, size, num_classes)):
                target[first : first + count] = part
        if normalize:
            batch.images = _normalize_images(batch.images)
    return batch


_normalize_images = normalize  # the argument `normalize` shadows the function


class ScenarioDataset(Dataset):
    """Map-style dataset of a scenario: ``dataset[i] == (image, label, mask, nuisance_mask)``.

    ``image`` is ``(3, H, W)`` float32 (normalised by default), ``label`` an int, ``mask`` and
    ``nuisance_mask`` ``(H, W)`` bool. All images are generated at construction by
    ``make_scenario`` with the same arguments (sample ``i`` is its image ``i``).

    Args:
        num_images, scenario, split, shortcut, cue, image_size, num_classes, seed, normalize:
            As in ``make_scenario``.

    Attributes:
        batch: The underlying ``ScenarioBatch``.

    Example::

        >>> train = ScenarioDataset(16, "large", "train", shortcut=True, image_size=32)
        >>> val = ScenarioDataset(16, "large", "val", shortcut=True, image_size=32)
        >>> image, label, mask, nuisance = val[3]
        >>> image.shape, type(label), mask.dtype, int(nuisance.sum())
        (torch.Size([3, 32, 32]), <class 'int'>, torch.bool, 25)
    """

    def __init__(
        self,
        num_images: int,
        scenario: str = "large",
        split: str = "train",
        shortcut: bool = False,
        cue: str = "color",
        image_size: int = 64,
        num_classes: int = 4,
        seed: int = 0,
        normalize: bool = True,
    ) -> None:
        self.batch = make_scenario(num_images, scenario, split, shortcut, cue, image_size, num_classes, seed, normalize=normalize)
        self.num_images = num_images
        self.scenario = scenario
        self.split = split
        self.shortcut = shortcut
        self.cue = cue
        self.image_size = image_size
        self.num_classes = num_classes
        self.seed = seed
        self.normalized = normalize

    @property
    def labels(self) -> Tensor:
        """``(N,)`` long labels."""
        return self.batch.labels

    @property
    def masks(self) -> Tensor:
        """``(N, H, W)`` bool object masks."""
        return self.batch.masks

    @property
    def nuisance_masks(self) -> Tensor:
        """``(N, H, W)`` bool nuisance (patch) masks."""
        return self.batch.nuisance_masks

    @property
    def multi_hot(self) -> Tensor:
        """``(N, num_classes)`` float32 classes present."""
        return self.batch.multi_hot

    @property
    def class_names(self) -> Tuple[str, ...]:
        """Shape name of each class index."""
        return SHAPE_NAMES[: self.num_classes]

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> Tuple[Tensor, int, Tensor, Tensor]:
        if index < 0:
            index += self.num_images
        if not 0 <= index < self.num_images:
            raise IndexError(f"index {index} out of range for a dataset of {self.num_images} images")
        b = self.batch
        return b.images[index].clone(), int(b.labels[index]), b.masks[index].clone(), b.nuisance_masks[index].clone()
