"""Which image went to which split: a record a run keeps in its own folder (RUN/split.json), never in the
data folder, which may be read-only or shared.

    {"data": {"source": "medmnist", "path": ".../breastmnist.npz", "sha256": "..."},
     "split_seed": 0, "fractions": [0.7, 0.1, 0.2], "folds": null, "fold": 0,
     "splits": {"train": ["breastmnist.npz:train[0]", ...], "val": [...], "test": [...]}}

Each split lists its images as ``data.builder.sample_ids`` names them: npz indices, or file paths. Whoever
reloads the run's data (evaluation, prediction on a split) checks it against the record, so a data file that
changed since training, or a folder whose automatic split came out differently, is refused by name instead of
being evaluated as if it were the same.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ..errors import DataError
from .builder import sample_ids


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def data_fingerprint(cfg: dict) -> dict:
    """The data source of a configuration and a checksum of it: the .npz or CSV file's SHA-256, or for an
    image folder the SHA-256 of its file list (relative path and size of every file)."""
    d = cfg["data"]
    if d.get("csv"):
        path = Path(d["csv"])
        return {"source": "csv", "path": str(path.resolve()), "sha256": _sha256_file(path)}
    if d.get("folder"):
        root = Path(d["folder"])
        listing = "\n".join(f"{p.relative_to(root).as_posix()}\t{p.stat().st_size}"
                            for p in sorted(root.rglob("*")) if p.is_file())
        return {"source": "folder", "path": str(root.resolve()), "sha256_of_file_list": hashlib.sha256(
            listing.encode()).hexdigest()}
    from .medmnist import medmnist_file
    path = medmnist_file(d["medmnist"], d["root"], d["size"])
    return {"source": "medmnist", "path": str(path.resolve()), "sha256": _sha256_file(path)}


def split_record(cfg: dict, data, record: dict | None = None) -> dict:
    """``record`` (or a new one) with the splits ``data`` holds now added: what RUN/split.json says."""
    d = cfg["data"]
    out = dict(record or {"data": data_fingerprint(cfg), "split_seed": d["split_seed"], "fractions": d["fractions"],
                          "folds": d["folds"], "fold": d["fold"], "max_samples": d["max_samples"], "splits": {}})
    out["splits"] = {**out["splits"], **{name: sample_ids(ds) for name, ds in data.splits.items()}}
    out["left_out"] = sorted(set(out.get("left_out", [])) | set(data.left_out))  # unreadable files (data.look)
    return out


def check_split_record(record: dict, cfg: dict, data, source: str | os.PathLike = "split.json") -> None:
    """Refuse, in one message, data whose file or splits differ from what the run was trained and
    evaluated on."""
    now = data_fingerprint(cfg)
    then = record.get("data", {})
    if {k: v for k, v in now.items() if k != "path"} != {k: v for k, v in then.items() if k != "path"}:
        raise DataError(f"the data changed since this run recorded its split ({source}): {then.get('path')} had "
                        f"checksum {then.get('sha256') or then.get('sha256_of_file_list')}, {now['path']} has "
                        f"{now.get('sha256') or now.get('sha256_of_file_list')}")
    for name, ds in data.splits.items():
        if name in record.get("splits", {}) and sample_ids(ds) != record["splits"][name]:
            raise DataError(f"the {name} split differs from the one this run recorded ({source}): same data file, "
                            f"other images; check data.split_seed, data.fractions and data.fold")
