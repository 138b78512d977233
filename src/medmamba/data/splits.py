"""Dividing images into train/val/test and into cross-validation folds, without leakage.

With groups (a patient or study id per image), every group lands in exactly one split or one fold, so
no patient is both trained on and tested on; scikit-learn's group-aware splitters keep the classes
balanced where the groups allow it. Without groups, each class is divided in the given proportions.
"""
from __future__ import annotations

import warnings
from typing import Optional, Sequence

import numpy as np

from ..errors import DataError

SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.7, 0.1, 0.2)


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    f = tuple(float(x) for x in fractions)
    if len(f) != 3 or min(f) < 0 or f[0] <= 0 or f[1] <= 0 or abs(sum(f) - 1) > 1e-6:
        raise DataError(f"split fractions {list(fractions)}: give train, val, test, each >= 0 (train and val > 0), "
                        f"adding up to 1")
    return f


def stratified_split(labels: np.ndarray, fractions=DEFAULT_FRACTIONS, seed: int = 0) -> dict[str, list[int]]:
    """Indices of train/val/test, each class divided in the given proportions, reproducibly."""
    rng = np.random.default_rng(seed)
    split = {"train": [], "val": [], "test": []}
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        n_val = int(round(fractions[1] * len(idx)))
        n_test = int(round(fractions[2] * len(idx)))
        split["val"] += idx[:n_val].tolist()
        split["test"] += idx[n_val:n_val + n_test].tolist()
        split["train"] += idx[n_val + n_test:].tolist()
    return {k: sorted(v) for k, v in split.items()}


def _carve(labels, groups, indices, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split ``indices`` into (rest, part) with about ``fraction`` of them in part, whole groups only:
    one fold of a stratified group K-fold with K = round(1 / fraction)."""
    from sklearn.model_selection import StratifiedGroupKFold
    n_groups = len(np.unique(groups[indices]))
    k = max(2, min(int(round(1 / fraction)), n_groups))
    folds = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # a class with fewer groups than folds: balanced as far as it can be
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        rest, part = next(folds.split(np.zeros(len(indices)), labels[indices], groups[indices]))
    return indices[rest], indices[part]


def group_split(labels: np.ndarray, groups: Sequence, fractions=DEFAULT_FRACTIONS, seed: int = 0) -> dict[str, list[int]]:
    """Indices of train/val/test with every group in exactly one of them, classes stratified where the
    groups allow; the fractions are met as closely as whole groups permit."""
    labels, groups = np.asarray(labels), np.asarray([str(g) for g in groups])
    if len(np.unique(groups)) < 3:
        raise DataError(f"a group-aware split needs at least 3 groups; got {len(np.unique(groups))}")
    train_frac, val_frac, test_frac = check_fractions(fractions)
    everything = np.arange(len(labels))
    if test_frac > 0:
        rest, test = _carve(labels, groups, everything, test_frac, seed)
    else:
        rest, test = everything, np.array([], dtype=int)
    rest, val = _carve(labels, groups, rest, val_frac / (train_frac + val_frac), seed + 1)
    return {"train": sorted(rest.tolist()), "val": sorted(val.tolist()), "test": sorted(test.tolist())}


def split_indices(labels, fractions=DEFAULT_FRACTIONS, seed: int = 0, groups: Optional[Sequence] = None):
    """train/val/test indices: by group when ``groups`` is given, else stratified by class."""
    fractions = check_fractions(fractions)
    if groups is not None:
        return group_split(labels, groups, fractions, seed)
    return stratified_split(np.asarray(labels), fractions, seed)


def kfold_indices(labels, k: int, seed: int = 0, groups: Optional[Sequence] = None) -> list[tuple[list[int], list[int]]]:
    """K (train, validation) index pairs over the given images: each image is validation in exactly one
    fold; with ``groups``, each group is."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
    labels = np.asarray(labels)
    if k < 2:
        raise DataError(f"data.folds={k}: cross-validation needs at least 2 folds")
    x = np.zeros(len(labels))
    if groups is not None:
        groups = np.asarray([str(g) for g in groups])
        if len(np.unique(groups)) < k:
            raise DataError(f"data.folds={k}: only {len(np.unique(groups))} groups to divide")
        folds = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed).split(x, labels, groups)
    else:
        if np.bincount(labels).min() < k:
            raise DataError(f"data.folds={k}: a class has fewer than {k} images")
        folds = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(x, labels)
    return [(sorted(tr.tolist()), sorted(va.tolist())) for tr, va in folds]
