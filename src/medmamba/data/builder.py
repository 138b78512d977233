"""Datasets from a training configuration."""
from __future__ import annotations

from dataclasses import dataclass

from torch.utils.data import Dataset, Subset

from ..card import is_multi_label
from ..errors import DataError
from .folders import ImageListDataset, csv_manifest_splits, image_folder_splits
from .medmnist import MedMNIST, medmnist_info
from .transforms import AugmentConfig, build_transform


@dataclass
class DataBundle:
    splits: dict[str, Dataset]
    task: str
    classes: tuple[str, ...]
    channels: int            # the model's input channels
    name: str

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def multi_label(self) -> bool:
        return is_multi_label(self.task)


def build_data(cfg: dict, splits=("train", "val", "test")) -> DataBundle:
    d = cfg["data"]
    sources = [k for k in ("medmnist", "folder", "csv") if d.get(k)]
    if d.get("folder") or d.get("csv"):
        sources = [k for k in sources if k != "medmnist"]
    if len(sources) != 1:
        raise DataError("give exactly one of data.medmnist, data.folder, data.csv")
    aug = AugmentConfig(**cfg["augment"])

    def transform(split, channels):
        return build_transform(d["img_size"], channels, split == "train", aug, d["mean"], d["std"])

    if sources == ["medmnist"]:
        info = medmnist_info(d["medmnist"])
        channels = d["channels"] or info.n_channels
        datasets = {s: MedMNIST(info.name, s, d["root"], d["size"], transform(s, channels), d["download"])
                    for s in splits}
        task, classes, name = info.task, info.labels, info.name
    else:
        channels = d["channels"] or 3
        if sources == ["folder"]:
            samples, classes = image_folder_splits(d["folder"], channels, d["split_seed"])
            name = str(d["folder"])
        else:
            samples, classes = csv_manifest_splits(d["csv"], d["split_seed"])
            name = str(d["csv"])
        missing = [s for s in splits if s not in samples]
        if missing:
            raise DataError(f"{name}: no {'/'.join(missing)} split")
        datasets = {s: ImageListDataset(samples[s], classes, channels, transform(s, channels)) for s in splits}
        task = "binary-class" if len(classes) == 2 else "multi-class"
    for s, ds in datasets.items():
        if len(ds) == 0:
            raise DataError(f"{name}: the {s} split is empty")
    if d.get("max_samples"):
        datasets = {s: _first(ds, d["max_samples"]) for s, ds in datasets.items()}
    return DataBundle(datasets, task, tuple(classes), channels, name)


def _first(ds, n):
    sub = Subset(ds, range(min(n, len(ds))))
    sub.labels = ds.labels[: len(sub)]
    return sub
