"""Validated samples -> torch Datasets and DataLoaders."""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator, Sequence

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
        # a 1-image last batch breaks BatchNorm; counted in this process's share (the sampler's) under torchrun
        drop_last=train and len(sampler if sampler is not None else dataset) > batch_size,
        num_workers=num_workers,
        # Fresh workers each epoch take their seeds from the generator that fit() reseeds per epoch, so an
        # epoch after a resume shuffles and augments exactly as in an uninterrupted run.
        persistent_workers=False,
        generator=generator,
        pin_memory=pin_memory,
    )


class DecodingLoader:
    """Batches of an ImageDataset in order, decoded by a thread pool one batch ahead of the one in use: decoding
    (Pillow releases the GIL) runs beside inference instead of taking turns with it. What a frozen network's pass
    over the data uses; training keeps DataLoader (shuffling, samplers, seeded workers). Measured on 2 cores
    (bench/speed.py): hymenoptera decoded and resized at 241 images/s on one thread, 353 on two."""

    def __init__(self, dataset: ImageDataset, batch_size: int, threads: int):
        self.dataset, self.batch_size, self.threads = dataset, batch_size, max(1, threads)

    def __len__(self) -> int:
        return -(-len(self.dataset) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        starts = range(0, len(self.dataset), self.batch_size)
        pool = ThreadPoolExecutor(self.threads, thread_name_prefix="decode")
        try:
            def submit(start: int) -> list[Future]:
                stop = min(start + self.batch_size, len(self.dataset))
                return [pool.submit(self.dataset.__getitem__, i) for i in range(start, stop)]

            ahead = submit(starts[0]) if starts else []
            for k in range(len(starts)):
                current, ahead = ahead, (submit(starts[k + 1]) if k + 1 < len(starts) else [])
                items = [f.result() for f in current]
                yield torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])
        finally:  # also when the consumer stops early: drop the batch decoded ahead
            pool.shutdown(wait=True, cancel_futures=True)
