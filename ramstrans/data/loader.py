"""DataLoaders: an endless, resumable, rank-sharded training stream and plain sequential evaluation loaders."""

from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from ramstrans.data.dataset import collate
from ramstrans.errors import DataError, UsageError

__all__ = [
    "StepSampler",
    "StreamSampler",
    "train_loader",
    "eval_loader",
    "stratified_split",
    "sampling_weights",
    "SAMPLERS",
]

SAMPLERS = ("uniform", "class_balanced", "sqrt")


def sampling_weights(labels: np.ndarray, sampler: str, num_classes: int) -> Tensor | None:
    """(N,) float64 per-image probabilities of ``data.sampler`` (None for uniform: a permutation per epoch instead).

    class_balanced: every class is equally likely (an image of class c: 1 / (K' n_c), K' the classes present);
    sqrt: class c is drawn with probability ∝ √n_c (an image: √n_c / (n_c Σ_k √n_k)).

    Args:
        labels: (N,) class of every training image.
        sampler: "uniform", "class_balanced" or "sqrt".
        num_classes: K.
    """
    if sampler not in SAMPLERS:
        raise UsageError(f"data.sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    if sampler == "uniform":
        return None
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    mass = np.where(counts > 0, 1.0 if sampler == "class_balanced" else np.sqrt(counts), 0.0)  # per class
    per_image = (mass / np.maximum(counts, 1.0))[labels]
    return torch.from_numpy(per_image / per_image.sum())


def _sample_seed(seed: int, epoch: int, position: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, position]).generate_state(1)[0])


class StepSampler(Sampler):
    """Endless (index, augmentation seed) pairs for step-based training, batch by batch.

    One optimizer step takes G = batch_size x grad_accum x world_size positions of an epoch's permutation (seeded by
    (seed, epoch)); rank r's a-th batch of step s holds positions s·G + (r·grad_accum + a)·batch_size + [0, batch_size).
    So one process with a batch of G, or grad_accum batches, or world_size processes see the same images per step.
    Starting at any batch position needs no replay, so a resumed run sees exactly the samples and augmentations it
    would have seen (same batch size, accumulation and world size). With ``weights`` an epoch's order is instead N
    draws with replacement from those probabilities (``torch.multinomial``, seeded by (seed, epoch)): the same layout,
    so sharding and exact resume hold as they do for the permutation.

    Args:
        num_samples: size of the data set.
        batch_size: per-process batch.
        seed: base seed.
        start_batch: this process's first batch position (step x grad_accum when nothing was skipped).
        rank: this process's rank.
        world_size: number of processes.
        grad_accum: batches per optimizer step.
        weights: (num_samples,) probabilities of each image (``sampling_weights``); None: a permutation per epoch.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        seed: int,
        start_batch: int = 0,
        rank: int = 0,
        world_size: int = 1,
        grad_accum: int = 1,
        weights: Tensor | None = None,
    ) -> None:
        self.step_size = batch_size * grad_accum * world_size
        if num_samples < self.step_size:
            raise DataError(
                f"the training split has {num_samples} images, fewer than one optimizer step of "
                f"{self.step_size} ({batch_size} per batch x {grad_accum} accumulated x {world_size} "
                "processes): lower data.val_fraction (the validation images it carves out of training) or "
                "train.batch_size"
            )
        self.n, self.batch, self.seed, self.start_batch = num_samples, batch_size, seed, start_batch
        self.rank, self.accum = rank, grad_accum
        self.steps_per_epoch = num_samples // self.step_size  # the incomplete tail is dropped
        self.weights = weights

    def epoch_order(self, epoch: int) -> Tensor:
        """(N,) image indices of ``epoch``: a permutation, or N weighted draws with replacement."""
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        if self.weights is None:
            return torch.randperm(self.n, generator=generator)
        return torch.multinomial(self.weights, self.n, replacement=True, generator=generator)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        position, perm, perm_epoch = self.start_batch, torch.empty(0, dtype=torch.long), -1
        while True:
            step, a = divmod(position, self.accum)
            epoch, s = divmod(step, self.steps_per_epoch)
            if epoch != perm_epoch:
                perm, perm_epoch = self.epoch_order(epoch), epoch
            base = s * self.step_size + (self.rank * self.accum + a) * self.batch
            for pos in range(base, base + self.batch):
                yield int(perm[pos]), _sample_seed(self.seed, epoch, pos)
            position += 1

    def __len__(self) -> int:  # endless; DataLoader only needs a number
        return 2**62


class StreamSampler(Sampler):
    """Positions 0, 1, 2, ... of an endless generated stream (each item drawn once), laid out like ``StepSampler``.

    Args:
        batch_size: per-process batch.
        seed: base seed of the augmentation seeds.
        start_batch: this process's first batch position.
        rank: this process's rank.
        world_size: number of processes.
        grad_accum: batches per optimizer step.
    """

    def __init__(
        self, batch_size: int, seed: int, start_batch: int = 0, rank: int = 0, world_size: int = 1, grad_accum: int = 1
    ) -> None:
        self.batch, self.seed, self.start_batch, self.rank = batch_size, seed, start_batch, rank
        self.world, self.accum = world_size, grad_accum

    def __iter__(self) -> Iterator[tuple[int, int]]:
        position = self.start_batch
        while True:
            step, a = divmod(position, self.accum)
            base = ((step * self.world + self.rank) * self.accum + a) * self.batch
            for pos in range(base, base + self.batch):
                yield pos, _sample_seed(self.seed, 0, pos)
            position += 1

    def __len__(self) -> int:
        return 2**62


def train_loader(
    dataset: Dataset,
    batch_size: int,
    seed: int,
    start_batch: int = 0,
    num_workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
    grad_accum: int = 1,
    weights: Tensor | None = None,
) -> DataLoader:
    """The endless training loader starting at batch position ``start_batch`` (a generated stream is read in order;
    ``weights``: per-image probabilities of a class-aware sampler, see ``sampling_weights``)."""
    sampler: StreamSampler | StepSampler
    if getattr(dataset, "endless", False):
        sampler = StreamSampler(batch_size, seed, start_batch, rank, world_size, grad_accum)
    else:
        n = len(dataset)  # type: ignore[arg-type]  # a map-style data set has a length
        sampler = StepSampler(n, batch_size, seed, start_batch, rank, world_size, grad_accum, weights)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate,
        drop_last=True,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=False,
    )


def eval_loader(
    dataset: Dataset, batch_size: int, num_workers: int = 0, indices: Sequence[int] | None = None
) -> DataLoader:
    """Sequential evaluation loader over all items (or over ``indices``, e.g. one rank's shard)."""
    ds = dataset if indices is None else torch.utils.data.Subset(dataset, list(indices))
    return DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=torch.cuda.is_available(),
    )


def stratified_split(table: pd.DataFrame, fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Carve a seeded, per-class share ``fraction`` of ``table`` out as validation (at least one image per class
    that has two or more, and never a class's last training image).

    Returns:
        (train, val) tables.
    """
    if not 0.0 < fraction < 1.0:
        raise UsageError(f"data.val_fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    val_rows = []
    for _, group in table.groupby("label", sort=True):
        n_val = int(round(fraction * len(group)))
        n_val = min(max(n_val, 1), len(group) - 1) if len(group) >= 2 else 0
        val_rows.extend(rng.permutation(group.index.to_numpy())[:n_val].tolist())
    val_mask = table.index.isin(val_rows)
    return table[~val_mask].reset_index(drop=True), table[val_mask].reset_index(drop=True)
