"""Data: loaders of each distributed format -> DatasetIndex -> ImageDataset with albumentations transforms."""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from torch.utils.data import Dataset

from ramstrans.config import DataConfig
from ramstrans.data.dataset import (
    DataError,
    DatasetIndex,
    ImageDataset,
    ImageReadError,
    collate,
    missing_files,
    read_image,
)
from ramstrans.data.formats.cub import load_cub
from ramstrans.data.formats.dogs import load_dogs
from ramstrans.data.formats.folder import load_csv, load_folder
from ramstrans.data.formats.inat import load_inat17
from ramstrans.data.formats.nabirds import load_nabirds
from ramstrans.data.loader import StepSampler, eval_loader, sampling_weights, stratified_split, train_loader
from ramstrans.data.synthetic.birds import ensure_synthetic, long_tailed
from ramstrans.data.synthetic.pretext import FAMILIES, PretextDataset
from ramstrans.data.transforms import Transform
from ramstrans.errors import UsageError
from ramstrans.runtime.files import register_read

__all__ = [
    "DATASETS",
    "DataBundle",
    "DataError",
    "DatasetIndex",
    "ImageDataset",
    "ImageReadError",
    "Transform",
    "build_data",
    "split_tables",
    "sampling_weights",
    "load_index",
    "read_image",
    "collate",
    "train_loader",
    "eval_loader",
    "StepSampler",
]

# name -> function(root) -> DatasetIndex, one per distributed format
DATASETS: dict[str, Callable[[Path], DatasetIndex]] = {
    "cub": load_cub,
    "synthetic": load_cub,
    "dogs": load_dogs,
    "inat17": load_inat17,
    "nabirds": load_nabirds,
    "folder": load_folder,
    "csv": load_csv,
}


@dataclass
class DataBundle:
    """The datasets of a run's splits, and the classes of its training images (None for a generated stream)."""

    index: DatasetIndex
    train: Dataset
    test: Dataset
    val: Dataset | None
    train_labels: np.ndarray | None = None  # (N,) int64

    @property
    def class_counts(self) -> np.ndarray | None:
        """(K,) training images per class (the prior of logit adjustment, the shot groups of evaluation)."""
        if self.train_labels is None:
            return None
        return np.bincount(self.train_labels, minlength=len(self.index.class_names))


def load_index(data_cfg: DataConfig, generate: bool = True) -> DatasetIndex:
    """Index the configured data set (generating the synthetic one on first use unless ``generate`` is off, e.g. for
    a copy at another root; the pretext stream has no files)."""
    if data_cfg.dataset == "pretext":
        return DatasetIndex(root=Path("."), class_names=list(FAMILIES), splits={})
    if data_cfg.dataset not in DATASETS:
        raise UsageError(f"unknown data.dataset '{data_cfg.dataset}' (known: {', '.join(sorted(DATASETS))}, pretext)")
    root = Path(data_cfg.root)
    if data_cfg.dataset == "synthetic" and generate:
        s = data_cfg.synthetic
        root = ensure_synthetic(
            data_cfg.root, s.num_classes, s.train_per_class, s.test_per_class, s.image_size, s.seed, s.detail
        )
    index = DATASETS[data_cfg.dataset](Path(root).expanduser())
    register_read(index.root, tree=True)  # its lists and images: no output of this command may replace one
    if data_cfg.dataset == "synthetic" and data_cfg.synthetic.imbalance > 1:  # a long tail of the training split only
        index.splits["train"] = long_tailed(index.splits["train"], data_cfg.synthetic.imbalance)
    return index


def build_data(
    data_cfg: DataConfig,
    index: DatasetIndex,
    img_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    seed: int,
    resize: int | None = None,
    uint8_train: bool = False,
) -> DataBundle:
    """Datasets of every split of ``index`` with their transforms (the val split carved from train when configured):
    crops of ``img_size`` after the shortest side went to ``resize`` (default ``data.resize``); a run's are
    ``Config.pipeline_size`` (the source's with ``model.zoom_source: source``). With ``uint8_train`` the training
    split delivers uint8 crops, normalised on the device by the training step (a run does so for a source batch)."""
    resize = data_cfg.resize if resize is None else resize
    train_t = Transform(
        train=True, crop=img_size, resize=resize, mean=mean, std=std, hflip=data_cfg.hflip, uint8=uint8_train
    )
    test_t = Transform(train=False, crop=img_size, resize=resize, mean=mean, std=std)
    if data_cfg.dataset == "pretext":
        size, s = data_cfg.synthetic.image_size, data_cfg.synthetic.seed
        return DataBundle(
            index=index,
            train=PretextDataset(size, s, train_t),
            val=None,
            test=PretextDataset(size, s + 1, test_t, length=data_cfg.pretext_test_size),
        )
    tables = split_tables(data_cfg, index, seed)
    make = lambda table, t: ImageDataset(index.root, table, index.class_names, t, data_cfg.skip_corrupt)  # noqa
    train = make(tables["train"], train_t)
    return DataBundle(
        index=index,
        train=train,
        test=make(tables["test"], test_t),
        val=make(tables["val"], test_t) if "val" in tables else None,
        train_labels=train.labels,
    )


def split_tables(data_cfg: DataConfig, index: DatasetIndex, seed: int) -> dict[str, pd.DataFrame]:
    """The train / [val] / test tables a run uses: the data set's own splits, or a validation split carved from train
    (``data.val_fraction``, stratified, seeded with the run's seed, so evaluation finds the same one)."""
    tables = dict(index.splits)
    if data_cfg.val_fraction > 0:
        if "val" in tables:
            raise UsageError(f"data set at {index.root} has its own val split; set data.val_fraction to 0")
        tables["train"], tables["val"] = stratified_split(index.split("train"), data_cfg.val_fraction, seed)
        if len(tables["val"]) == 0:
            raise DataError(
                f"data.val_fraction {data_cfg.val_fraction} leaves no validation images (no class of the "
                f"data set at {index.root} has two training images)"
            )
    if not data_cfg.skip_corrupt:  # fail now, not when the missing file is drawn
        for name, table in tables.items():
            missing = missing_files(index.root, table["path"])
            if missing:
                raise DataError(
                    f"{name} image {index.root / missing[0]} is listed but does not exist ({len(missing)} "
                    "listed images are missing; ramstrans check-data lists them, data.skip_corrupt skips "
                    "and counts them)"
                )
    return tables
