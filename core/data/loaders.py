"""Validated samples -> torch Datasets and DataLoaders."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch
from torch.utils.data import DataLoader

from core.data.images import decode_image
from core.data.validation import Sample


class ImageDataset(torch.utils.data.Dataset):
    def __init__(self, data_dir: Path, samples: Sequence[Sample], transform: Callable, min_side: int | None):
        self.data_dir = data_dir
        self.samples = list(samples)
        self.transform = transform
        self.min_side = min_side  # lets JPEGs decode at reduced scale: large photos load several times faster

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        sample = self.samples[i]
        image = decode_image(self.data_dir / sample.path, min_side=self.min_side)
        return self.transform(image), sample.label


def make_loader(dataset: ImageDataset, batch_size: int, train: bool, num_workers: int = 0,
                generator: torch.Generator | None = None, pin_memory: bool = False,
                sampler: torch.utils.data.Sampler | None = None) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train and sampler is None,
        sampler=sampler,
        drop_last=train and len(dataset) > batch_size,  # a 1-image last batch breaks BatchNorm
        num_workers=num_workers,
        # Fresh workers each epoch take their seeds from the generator that fit() reseeds per epoch, so an
        # epoch after a resume shuffles and augments exactly as in an uninterrupted run.
        persistent_workers=False,
        generator=generator,
        pin_memory=pin_memory,
    )
