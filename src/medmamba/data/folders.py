"""Image datasets on disk: the official repository's folder layout, a single folder split by seed, a CSV."""
from __future__ import annotations

import csv
import glob
import os
import warnings
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from ..errors import DataError
from .dicom import DICOM_SUFFIXES, is_dicom, read_dicom
from .splits import DEFAULT_FRACTIONS, SPLITS, check_fractions, split_indices
from .transforms import match_channels

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp"} | DICOM_SUFFIXES


def read_image(path: str | os.PathLike, channels: int) -> torch.Tensor:
    """An image file as a float tensor (channels, H, W) in [0, 1]: EXIF orientation applied, 8- or 16-bit,
    grey or colour converted to ``channels`` (1 or 3); DICOM through ``read_dicom`` (rescaled, windowed).
    Unreadable files and decompression bombs raise DataError naming the file."""
    if is_dicom(path):
        return _to_channels(read_dicom(path), channels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img = ImageOps.exif_transpose(img)
                img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DataError(f"{path}: refused, image too large ({e})") from None
    except Exception as e:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ValueError...
        raise DataError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(img, dtype=np.float32) / (65535.0 if img.mode.startswith("I;16") else
                                                      max(float(np.asarray(img).max()), 1.0))
    elif img.mode == "F":
        array = np.asarray(img, dtype=np.float32)
    else:
        img = img.convert("L" if channels == 1 else "RGB")
        array = np.asarray(img, dtype=np.float32) / 255.0
    return _to_channels(array, channels)


def _to_channels(array: np.ndarray, channels: int) -> torch.Tensor:
    array = array[..., None] if array.ndim == 2 else array
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).permute(2, 0, 1)
    return match_channels(tensor, channels).contiguous()


class ImageListDataset(Dataset):
    """(path, label) pairs read with ``read_image``; the common base of the folder and CSV datasets."""

    def __init__(self, samples: Sequence[tuple[str, int]], classes: Sequence[str], channels: int = 3,
                 transform: Optional[Callable] = None):
        self.samples = list(samples)
        self.classes = tuple(classes)
        self.channels = channels
        self.transform = transform
        self.labels = np.array([label for _, label in self.samples], dtype=np.int64)

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        path, label = self.samples[index]
        image = read_image(path, self.channels)
        if self.transform is not None:
            image = self.transform(image)
        return image, torch.tensor(label)


def _class_folder_samples(folder: Path, classes: Optional[Sequence[str]] = None):
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder")
    found = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    classes = list(classes) if classes is not None else found
    if not classes:
        raise DataError(f"{folder}: no class folders (expected {folder}/<class>/<image files>)")
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise DataError(f"{folder}: class folders {unknown} are not among the training classes {classes}")
    samples = []
    for label, name in enumerate(classes):
        files = sorted(p for p in (folder / name).glob("*") if p.suffix.lower() in IMAGE_SUFFIXES) \
            if (folder / name).is_dir() else []
        if not files and name in found:
            raise DataError(f"{folder / name}: empty class folder (no {'/'.join(sorted(IMAGE_SUFFIXES))} files)")
        samples += [(str(p), label) for p in files]
    return samples, classes


def image_folder_splits(root: str | os.PathLike, channels: int = 3, seed: int = 0,
                        fractions=DEFAULT_FRACTIONS) -> tuple[dict, list[str]]:
    """(split -> [(path, label)], classes) for ``root/{train,val,test}/<class>/*`` (the official layout) or
    for a single ``root/<class>/*`` folder, split by ``fractions`` (default 70/10/20) stratified by ``seed``:
    the same files, seed and fractions give the same split. Nothing is written into ``root``; a training run
    records its split in its own folder (``data.record``)."""
    root = Path(root)
    if (root / "train").is_dir():
        train, classes = _class_folder_samples(root / "train")
        splits = {"train": train}
        for name in ("val", "test"):
            if (root / name).is_dir():
                splits[name] = _class_folder_samples(root / name, classes)[0]
        return splits, classes
    samples, classes = _class_folder_samples(root)
    idx = split_indices([label for _, label in samples], list(check_fractions(fractions)), seed)
    return {k: [samples[i] for i in v] for k, v in idx.items()}, classes


def csv_manifest_splits(path: str | os.PathLike, seed: int = 0,
                        fractions=DEFAULT_FRACTIONS) -> tuple[dict, list[str], Optional[dict]]:
    """(split -> [(path, label)], classes, path -> group or None) from a CSV with columns path, label and
    optionally split and group. Relative paths are relative to the CSV; labels may be names or integers.
    Rows without a split are divided by ``fractions`` (default 70/10/20): stratified by class with ``seed``,
    or, with a group column (a patient or study id), so that each group lies in one split only."""
    path = Path(path)
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: not a readable CSV ({e})") from None
    if not rows or not {"path", "label"} <= set(rows[0]):
        raise DataError(f"{path}: needs a header with columns path,label[,split][,group] and at least one row")
    names = sorted({r["label"] for r in rows}, key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else s))
    index = {name: i for i, name in enumerate(names)}
    samples = [(str((path.parent / r["path"]).resolve()), index[r["label"]]) for r in rows]
    groups = None
    if "group" in rows[0]:
        missing = [i + 2 for i, r in enumerate(rows) if not (r.get("group") or "").strip()]
        if missing:
            raise DataError(f"{path}: empty group on line(s) {missing[:5]}; every row needs its patient/study id")
        groups = [r["group"].strip() for r in rows]
    given = [r.get("split") or "" for r in rows]
    bad = sorted({s for s in given if s and s not in SPLITS})
    if bad:
        raise DataError(f"{path}: unknown split values {bad}; use train, val or test")
    if all(given):
        splits = {s: [smp for smp, g in zip(samples, given) if g == s] for s in SPLITS}
        if groups is not None:
            where = {}
            for g, s in zip(groups, given):
                where.setdefault(g, set()).add(s)
            leaks = sorted(g for g, s in where.items() if len(s) > 1)
            if leaks:
                raise DataError(f"{path}: groups in more than one split, e.g. {leaks[:3]}; a patient must be in one")
    elif any(given):
        raise DataError(f"{path}: split is given on some rows and not others; give it on every row or on none")
    else:
        idx = split_indices([label for _, label in samples], fractions, seed, groups)
        splits = {k: [samples[i] for i in v] for k, v in idx.items()}
    by_path = dict(zip((p for p, _ in samples), groups)) if groups is not None else None
    return {k: v for k, v in splits.items() if v}, names, by_path


def collect_inputs(items: Iterable[str | os.PathLike]) -> tuple[list[str], list[tuple[str, str]]]:
    """Image paths from files, folders (searched recursively for image and DICOM files) and glob patterns,
    in a stable order without repeats; plus (item, reason) for each item that names nothing."""
    found, missing, seen = [], [], set()

    def add(p: Path):
        key = str(p)
        if key not in seen:
            seen.add(key)
            found.append(key)

    for item in items:
        path = Path(item)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                missing.append((str(item), "folder holds no image files"))
            for p in files:
                add(p)
        elif path.is_file():
            add(path)
        else:
            matches = sorted(Path(m) for m in glob.glob(str(item), recursive=True) if Path(m).is_file())
            if not matches:
                missing.append((str(item), "no such file, folder or glob match"))
            for p in matches:
                add(p)
    return found, missing


def require_inputs(items: Iterable[str | os.PathLike], purpose: str) -> tuple[list[str], list[tuple[str, str]]]:
    """``collect_inputs``, raising one DataError (every reason) when it finds no image at all."""
    paths, missing = collect_inputs(items)
    if not paths:
        raise DataError(f"no images to {purpose}: " + "; ".join(f"{p}: {why}" for p, why in missing))
    return paths, missing


def subgroup_metadata(cfg: dict) -> dict[str, dict[str, str]]:
    """{image path as the manifest resolves it: {column: value}} for the configuration's ``subgroups``
    columns (sex, site, scanner...) of its CSV manifest; one clear error when the data is not a CSV manifest
    or lacks a column."""
    columns, path = cfg["subgroups"], cfg["data"].get("csv")
    if not path:
        raise DataError(f"subgroups {columns}: metadata columns come from a CSV manifest (data.csv)")
    path = Path(path)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    missing = [c for c in columns if rows and c not in rows[0]]
    if missing:
        raise DataError(f"{path}: no column {', '.join(missing)} for subgroups; its columns: {', '.join(rows[0])}")
    return {str((path.parent / r["path"]).resolve()): {c: r[c] for c in columns} for r in rows}
