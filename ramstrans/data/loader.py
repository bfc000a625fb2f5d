"""DataLoaders: an endless, resumable, rank-sharded training stream and plain sequential evaluation loaders."""
from typing import Iterator, Tuple

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .dataset import DataError, collate

__all__ = ["StepSampler", "StreamSampler", "train_loader", "eval_loader", "stratified_split"]


def _sample_seed(seed: int, epoch: int, position: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, position]).generate_state(1)[0])


class StepSampler(Sampler):
    """Endless (index, augmentation seed) pairs for step-based training.

    Epoch e is a permutation seeded by (seed, e); step s of an epoch holds positions [s * G, (s + 1) * G) with
    G = batch_size * world_size, and rank r takes its own batch_size of them. Starting at any step needs no
    replay, so a resumed run sees exactly the samples and augmentations it would have seen (same world size).

    Args:
        num_samples: size of the data set.
        batch_size: per-process batch.
        seed: base seed.
        start_step: first optimizer step to produce.
        rank: this process's rank.
        world_size: number of processes.
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int, start_step: int = 0, rank: int = 0,
                 world_size: int = 1) -> None:
        self.global_batch = batch_size * world_size
        if num_samples < self.global_batch:
            raise DataError(f"the training split has {num_samples} images, fewer than one global batch of "
                            f"{self.global_batch} ({batch_size} per process x {world_size} processes)")
        self.n, self.batch, self.seed, self.start_step = num_samples, batch_size, seed, start_step
        self.rank = rank
        self.steps_per_epoch = num_samples // self.global_batch  # the incomplete tail batch is dropped

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        step = self.start_step
        while True:
            epoch, s = divmod(step, self.steps_per_epoch)
            perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
            for s in range(s, self.steps_per_epoch):
                base = s * self.global_batch + self.rank * self.batch
                for pos in range(base, base + self.batch):
                    yield int(perm[pos]), _sample_seed(self.seed, epoch, pos)
            step = (epoch + 1) * self.steps_per_epoch

    def __len__(self) -> int:  # endless; DataLoader only needs a number
        return 2 ** 62


class StreamSampler(Sampler):
    """Positions 0, 1, 2, ... of an endless generated stream (each item drawn once), sharded like ``StepSampler``.

    Args:
        batch_size: per-process batch.
        seed: base seed of the augmentation seeds.
        start_step: first optimizer step to produce.
        rank: this process's rank.
        world_size: number of processes.
    """

    def __init__(self, batch_size: int, seed: int, start_step: int = 0, rank: int = 0, world_size: int = 1) -> None:
        self.batch, self.seed, self.start_step, self.rank, self.world = batch_size, seed, start_step, rank, world_size

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        step = self.start_step
        while True:
            base = (step * self.world + self.rank) * self.batch
            for pos in range(base, base + self.batch):
                yield pos, _sample_seed(self.seed, 0, pos)
            step += 1

    def __len__(self) -> int:
        return 2 ** 62


def train_loader(dataset: Dataset, batch_size: int, seed: int, start_step: int = 0, num_workers: int = 0,
                 rank: int = 0, world_size: int = 1) -> DataLoader:
    """The endless training loader starting at ``start_step`` (a generated stream is read in order)."""
    if getattr(dataset, "endless", False):
        sampler = StreamSampler(batch_size, seed, start_step, rank, world_size)
    else:
        sampler = StepSampler(len(dataset), batch_size, seed, start_step, rank, world_size)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, collate_fn=collate,
                      drop_last=True, pin_memory=torch.cuda.is_available(), persistent_workers=False)


def eval_loader(dataset: Dataset, batch_size: int, num_workers: int = 0, indices=None) -> DataLoader:
    """Sequential evaluation loader over all items (or over ``indices``, e.g. one rank's shard)."""
    ds = dataset if indices is None else torch.utils.data.Subset(dataset, list(indices))
    return DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate,
                      pin_memory=torch.cuda.is_available())


def stratified_split(table: pd.DataFrame, fraction: float, seed: int) -> Tuple[pd.DataFrame, pd.DataFrame]:
    """Carve a seeded, per-class share ``fraction`` of ``table`` out as validation (at least one image per class
    that has two or more).

    Returns:
        (train, val) tables.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"data.val_fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    val_rows = []
    for _, group in table.groupby("label", sort=True):
        n_val = int(round(fraction * len(group)))
        n_val = max(n_val, 1) if len(group) >= 2 else 0
        val_rows.extend(rng.permutation(group.index.to_numpy())[:n_val].tolist())
    val_mask = table.index.isin(val_rows)
    return table[~val_mask].reset_index(drop=True), table[val_mask].reset_index(drop=True)
