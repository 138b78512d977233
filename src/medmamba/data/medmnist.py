"""MedMNIST (v2/v3) 2-D subsets: metadata, verified download, and a Dataset over the official .npz files."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from .tasks import is_multi_label
from ..errors import DataError

DATA_ENV = "MEDMAMBA_DATA"
SPLITS = ("train", "val", "test")
SIZES = (28, 64, 128, 224)


@dataclass(frozen=True)
class SubsetInfo:
    name: str
    task: str  # "binary-class", "multi-class", "ordinal-regression", "multi-label, binary-class"
    n_channels: int
    labels: tuple[str, ...]
    n_samples: dict
    files: dict

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def multi_label(self) -> bool:
        return is_multi_label(self.task)

    def filename(self, size: int = 28) -> str:
        return f"{self.name}.npz" if size == 28 else f"{self.name}_{size}.npz"


@lru_cache(maxsize=1)
def _info_table() -> dict:
    return json.loads((Path(__file__).with_name("medmnist_info.json")).read_text())["subsets"]


def medmnist_subsets() -> list[str]:
    return sorted(_info_table())


def medmnist_info(name: str) -> SubsetInfo:
    table = _info_table()
    if name not in table:
        raise DataError(f"unknown MedMNIST subset {name!r}; known 2-D subsets: {', '.join(sorted(table))}")
    v = table[name]
    return SubsetInfo(name, v["task"], v["n_channels"], tuple(v["labels"]), v["n_samples"],
                      {int(k): f for k, f in v["files"].items()})


def data_root(root: Optional[str | os.PathLike]) -> Path:
    root = root or os.environ.get(DATA_ENV)
    if not root:
        raise DataError(f"no data root: give --data-root (or data_root=) or set ${DATA_ENV}")
    return Path(root)


def md5sum(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, target: Path, md5: str, timeout: float = 60.0, progress: bool = True) -> Path:
    """Fetch ``url`` to ``target`` through a temporary file renamed only once its MD5 matches."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    total = int(response.headers.get("Content-Length") or 0) or None
                    bar = _progress(total, f"downloading {target.name}") if progress else None
                    while block := response.read(1 << 20):
                        out.write(block)
                        if bar is not None:
                            bar.update(len(block))
                    if bar is not None:
                        bar.close()
            except (urllib.error.URLError, OSError, ValueError) as e:
                raise DataError(f"download of {url} failed ({e}); put the file at {target} by hand "
                                f"(MD5 {md5})") from None
        actual = md5sum(Path(tmp))
        if actual != md5:
            raise DataError(f"download of {url} is corrupt: MD5 {actual}, expected {md5}; nothing was kept")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _progress(total, desc):
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, leave=False)


def medmnist_file(name: str, root=None, size: int = 28, download_missing: bool = False,
                  url: Optional[str] = None) -> Path:
    """Path of a subset's .npz in the data root, downloading (and verifying) it when allowed."""
    info = medmnist_info(name)
    if size not in info.files:
        raise DataError(f"{name}: no {size} px release; sizes: {', '.join(map(str, sorted(info.files)))}")
    root = data_root(root)
    path = root / info.filename(size)
    if path.is_file():
        return path
    entry = info.files[size]
    if not download_missing:
        raise DataError(f"{path} not found. Put the official {info.filename(size)} (MD5 {entry['md5']}) there, "
                        f"or allow downloading (config data.download=true) from {entry['url']}")
    return download(url or entry["url"], path, entry["md5"])


def load_medmnist_split(path: Path, split: str, info: SubsetInfo) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, H, W[, C]) uint8 and labels (N, classes or 1) of one split, validated."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; one of {', '.join(SPLITS)}")
    try:
        with np.load(path, allow_pickle=False) as data:
            keys = set(data.files)
            missing = [k for k in (f"{split}_images", f"{split}_labels") if k not in keys]
            if missing:
                raise DataError(f"{path}: missing keys {', '.join(missing)} (has {', '.join(sorted(keys))})")
            images, labels = data[f"{split}_images"], data[f"{split}_labels"]
    except DataError:
        raise
    except Exception as e:  # zipfile.BadZipFile, EOFError, ValueError, OSError on truncated or corrupt files
        raise DataError(f"{path}: not a readable .npz file ({type(e).__name__}: {e})") from None
    if images.ndim not in (3, 4) or images.dtype != np.uint8 or len(images) != len(labels):
        raise DataError(f"{path}: {split} images must be uint8 (N, H, W[, C]) with one label row each; got "
                        f"{images.dtype} {images.shape} and labels {labels.shape}")
    labels = labels.reshape(len(labels), -1).astype(np.int64)
    if info.multi_label:
        if labels.shape[1] != info.num_classes or not np.isin(labels, (0, 1)).all():
            raise DataError(f"{path}: {split} labels must be 0/1 rows of {info.num_classes} labels")
    else:
        bad = (labels < 0) | (labels >= info.num_classes)
        if labels.shape[1] != 1 or bad.any():
            first = int(np.argmax(bad.any(1))) if bad.any() else 0
            raise DataError(f"{path}: {split} labels out of range 0..{info.num_classes - 1} "
                            f"(e.g. sample {first}: {labels[first].tolist()})")
    return images, labels


class MedMNIST(Dataset):
    """One split of a MedMNIST 2-D subset as (image tensor, label) pairs.

    Images come out as uint8 tensors (C, H, W) before ``transform``; labels as int64 class indices, or
    float 0/1 vectors for the multi-label ChestMNIST.
    """

    def __init__(self, name: str, split: str = "train", root=None, size: int = 28,
                 transform: Optional[Callable] = None, download: bool = False, url: Optional[str] = None):
        self.info = medmnist_info(name)
        self.split = split
        self.path = medmnist_file(name, root, size, download, url)
        self.images, labels = load_medmnist_split(self.path, split, self.info)
        self.labels = labels.astype(np.float32) if self.info.multi_label else labels[:, 0]
        self.transform = transform

    @property
    def classes(self) -> tuple[str, ...]:
        return self.info.labels

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        image = torch.from_numpy(self.images[index])
        image = image.unsqueeze(0) if image.dim() == 2 else image.permute(2, 0, 1)
        if self.transform is not None:
            image = self.transform(image)
        return image, torch.as_tensor(self.labels[index])
