"""What ``CAMMonitor(probe=...)`` says about probe sources it cannot use (callbacks/probe.py): validation images of several
sizes, a list of samples, a list of single images. Each message names the monitor or ``probe=``, what was seen, and the
way out."""

from __future__ import annotations

from typing import List, Tuple

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

import cam_callbacks as cc
from cam_callbacks.callbacks.probe import PROBE_CHOICES, Probe, make_probe, probe_from_dataloader

from _lightning_models import TinyNet, loaders, trainer

SIZES = [(16, 16), (20, 16), (16, 16), (24, 24), (16, 16)]


class MixedSizes(Dataset):
    """(image, label) samples whose images have different sizes (what a dataset without a Resize transform gives)."""

    def __len__(self) -> int:
        return len(SIZES)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        height, width = SIZES[index]
        return torch.randn(3, height, width, generator=torch.Generator().manual_seed(index)), index % 3


class MixedSizesStream(IterableDataset):
    def __iter__(self):
        for index in range(len(SIZES)):
            yield MixedSizes()[index]


SIZES_MESSAGE = (
    r"CAMMonitor\(probe=\.\.\.\): the probe images taken from the first 5 samples of MixedSizes have 3 different sizes: "
    r"\(3, 16, 16\) \(images 0, 2, 4\), \(3, 20, 16\) \(image 1\), \(3, 24, 24\) \(image 3\)\. The probe set is one batch, so its "
    r"images need one size: resize them in the dataset's transforms \(e\.g\. torchvision\.transforms\.Resize\(\(16, 16\)\) or "
    r"CenterCrop\), or pass probe= a tensor of images of one size, e\.g\. probe=\(images, labels\)"
)


@pytest.mark.parametrize("source", ["dataset", "dataloader"])
def test_images_of_several_sizes_are_named_with_the_way_out(source):
    """Before: default_collate's RuntimeError 'stack expects each tensor to be equal size', naming neither the monitor nor probe=."""
    probe = MixedSizes() if source == "dataset" else DataLoader(MixedSizes(), batch_size=1)
    with pytest.raises(ValueError, match=SIZES_MESSAGE):
        make_probe(probe, 8)


def test_images_of_several_sizes_in_an_iterable_dataset():
    with pytest.raises(ValueError, match=r"the probe images taken from the batches of DataLoader have 3 different sizes: \(3, 16, 16\) \(images 0, 2, 4\)"):
        probe_from_dataloader(DataLoader(MixedSizesStream(), batch_size=1), 8)


def test_images_of_several_sizes_stop_the_fit_at_setup(tmp_path):
    """The validation loader of a fit (batch size 1, so Lightning itself can batch it) gives images of several sizes: the
    monitor refuses at setup, before any training step, with the message above."""
    pl.seed_everything(0)
    train, _ = loaders(n_train=8)
    val = DataLoader(MixedSizes(), batch_size=1)
    with pytest.raises(ValueError, match=SIZES_MESSAGE):
        trainer(tmp_path, [cc.CAMMonitor(methods=["gradcam"])], max_epochs=1, logger=False).fit(TinyNet(), train, val)


def _samples(n: int = 3) -> List[Tuple[torch.Tensor, int]]:
    return [(torch.randn(3, 8, 8), i) for i in range(n)]


@pytest.mark.parametrize("count", [2, 6])
def test_a_list_of_samples_lists_the_accepted_forms_and_how_to_stack_it(count):
    """Before: 'probe images must be a tensor, got tuple' (2-4 samples) or 'probe as a tuple must be (images, labels, ...)'."""
    with pytest.raises(TypeError) as refused:
        make_probe(_samples(count), 8)
    message = str(refused.value)
    assert message.startswith(f"probe must be {PROBE_CHOICES}; got a list of {count} samples (tuples such as (image, label)); stack them")
    assert "images = torch.stack([s[0] for s in samples]), labels = torch.tensor([s[1] for s in samples]), then probe=(images, labels)" in message
    samples = _samples(count)
    following = make_probe((torch.stack([s[0] for s in samples]), torch.tensor([s[1] for s in samples])), 8)
    assert following.images.shape == (count, 3, 8, 8) and following.labels.tolist() == list(range(count))


def test_a_list_of_single_images_says_to_stack_them():
    with pytest.raises(TypeError, match=r"got a list of 3 single images \(C, H, W\); stack them: probe=torch\.stack\(images\)"):
        make_probe([torch.randn(3, 8, 8) for _ in range(3)], 8)


def test_images_that_are_not_a_tensor_list_the_accepted_forms():
    with pytest.raises(TypeError, match=r"probe images must be a tensor, got str; CAMMonitor\(probe=\.\.\.\) accepts an images tensor"):
        Probe("images.pt")  # type: ignore[arg-type]
