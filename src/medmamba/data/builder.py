"""Datasets from a training configuration."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch.utils.data import ConcatDataset, Dataset, Subset

from .tasks import is_multi_label
from ..errors import ConfigError, DataError
from .folders import ImageListDataset, csv_manifest_splits, image_folder_splits
from .medmnist import MedMNIST, medmnist_info
from .splits import SPLITS, kfold_indices
from .transforms import AugmentConfig, build_transform


@dataclass
class DataBundle:
    splits: dict[str, Dataset]
    task: str
    classes: tuple[str, ...]
    channels: int            # the model's input channels
    name: str
    left_out: tuple = ()     # unreadable files left out of the splits (data.look)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def multi_label(self) -> bool:
        return is_multi_label(self.task)


def config_transform(cfg: dict, channels: int, train: bool = False):
    """How a configuration reads its images for ``channels`` model inputs: size, normalisation (and with
    ``train``, its augmentation). Whatever reads images for a run's model goes through here."""
    d = cfg["data"]
    if train and cfg["augment"]["policy"] == "auto":
        # the data layer knows no model families; training resolves "auto" before it reads an image
        raise ConfigError("augment.policy=auto names the model family's policy: resolve it first with "
                          "medmamba.config.with_family_defaults(cfg), as training does")
    return build_transform(d["img_size"], channels, train, AugmentConfig(**cfg["augment"]), d["mean"], d["std"],
                           d["normalize"])


def build_data(cfg: dict, splits=("train", "val", "test"), augment: bool = True, exclude=()) -> DataBundle:
    """The splits a configuration describes; ``augment`` off reads the training split as evaluation does;
    image files in ``exclude`` (found unreadable) are left out."""
    d = cfg["data"]
    sources = [k for k in ("medmnist", "folder", "csv") if d.get(k)]
    if d.get("folder") or d.get("csv"):
        sources = [k for k in sources if k != "medmnist"]
    if len(sources) != 1:
        raise DataError("give exactly one of data.medmnist, data.folder, data.csv")

    def transform(split, channels):
        return config_transform(cfg, channels, train=split == "train" and augment)

    folds = d.get("folds")
    # With folds, train and val are drawn from the two pooled, each image read with the transform of the
    # split it serves in; the test split is never part of the pool.
    pooled = bool(folds and set(splits) & {"train", "val"})
    needed = [s for s in SPLITS if s in splits or (pooled and s in ("train", "val"))]
    groups = None
    if sources == ["medmnist"]:
        info = medmnist_info(d["medmnist"])
        channels = d["channels"] or info.n_channels
        task, classes, name = info.task, info.labels, info.name

        def dataset(split, used_as):
            return MedMNIST(info.name, split, d["root"], d["size"], transform(used_as, channels), d["download"])
    else:
        channels = d["channels"] or 3
        if sources == ["folder"]:
            samples, classes = image_folder_splits(d["folder"], channels, d["split_seed"], fractions=d["fractions"])
            name = str(d["folder"])
        else:
            samples, classes, groups = csv_manifest_splits(d["csv"], d["split_seed"], d["fractions"])
            name = str(d["csv"])
        exclude = set(exclude)
        samples = {s: [item for item in items if item[0] not in exclude] for s, items in samples.items()}
        missing = [s for s in needed if s not in samples]
        if missing:
            raise DataError(f"{name}: no {'/'.join(missing)} split")
        task = "binary-class" if len(classes) == 2 else "multi-class"

        def dataset(split, used_as):
            return ImageListDataset(samples[split], classes, channels, transform(used_as, channels))
    datasets = {s: dataset(s, s) for s in splits if not (pooled and s in ("train", "val"))}
    if pooled:
        if is_multi_label(task):
            raise DataError("data.folds: cross-validation folds are stratified by class, which needs one class per image")
        if not d["fold"] < folds:
            raise DataError(f"data.fold={d['fold']}: folds are numbered 0..{folds - 1}")
        labels = np.concatenate([np.asarray(dataset(s, "val").labels) for s in ("train", "val")])
        pool_groups = None
        if groups is not None:
            pool_groups = [groups[p] for s in ("train", "val") for p, _ in samples[s]]
        train_idx, val_idx = kfold_indices(labels, folds, d["split_seed"], pool_groups)[d["fold"]]
        for s, idx in (("train", train_idx), ("val", val_idx)):
            if s in splits:
                pool = ConcatDataset([dataset("train", s), dataset("val", s)])
                datasets[s] = _subset(pool, idx, labels[idx])
    for s, ds in datasets.items():
        if len(ds) == 0:
            raise DataError(f"{name}: the {s} split is empty")
    if d.get("max_samples"):
        datasets = {s: _first(ds, d["max_samples"]) for s, ds in datasets.items()}
    return DataBundle(datasets, task, tuple(classes), channels, name, tuple(sorted(exclude)))


def _subset(ds, indices, labels):
    sub = Subset(ds, list(indices))
    sub.labels = np.asarray(labels)
    return sub


def _first(ds, n):
    return _subset(ds, range(min(n, len(ds))), ds.labels[: min(n, len(ds))])


def sample_ids(dataset) -> list[str]:
    """A name for each sample of a split, for per-image results: its file path, or
    ``<subset>_<size>.npz:<split>[<index>]`` for MedMNIST's arrays."""
    if isinstance(dataset, Subset):
        inner = sample_ids(dataset.dataset)
        return [inner[i] for i in dataset.indices]
    if isinstance(dataset, ConcatDataset):
        return [i for d in dataset.datasets for i in sample_ids(d)]
    if isinstance(dataset, ImageListDataset):
        return [str(path) for path, _ in dataset.samples]
    if isinstance(dataset, MedMNIST):
        return [f"{dataset.path.name}:{dataset.split}[{i}]" for i in range(len(dataset))]
    return [str(i) for i in range(len(dataset))]
