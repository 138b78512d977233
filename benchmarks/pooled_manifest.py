"""Pool several single-label MedMNIST subsets into one image set with a CSV manifest, for joint pretraining.

Each image is written as a PNG under OUTPUT/img and listed in OUTPUT/manifest.csv (path, label, split), the
label being ``subset:class`` so the classes of different subsets never merge. ``--no-test SUBSET`` leaves out
the test split of a subset that a later fine-tuning run is evaluated on, so the pooled run never sees it.

    .venv/bin/python benchmarks/pooled_manifest.py pneumoniamnist breastmnist --no-test breastmnist \
        --data-root ../shared/medmnist --output /tmp/h/pool
    medmamba train --config configs/pneumoniamnist.yaml --data-root ../shared/medmnist --output /tmp/h/POOL \
        data.csv=/tmp/h/pool/manifest.csv data.channels=1 epochs=12
"""
from __future__ import annotations

import argparse
import csv
import shutil
import tempfile
from pathlib import Path

from PIL import Image

from medmamba.data.medmnist import SPLITS, load_medmnist_split, medmnist_file, medmnist_info
from medmamba.errors import DataError


def pool(subsets, out: Path, data_root=None, size: int = 28, no_test=()) -> int:
    """Write the pooled set to ``out`` (a new folder) and return its image count; DataError on bad input."""
    if out.exists():  # never mixes into an earlier pool
        raise DataError(f"{out} already exists; give a new folder")
    stray = sorted(set(no_test) - set(subsets))
    if stray:
        raise DataError(f"--no-test names subsets that are not pooled: {', '.join(stray)}")
    sources = [(medmnist_info(name), medmnist_file(name, data_root, size)) for name in subsets]
    multi = [info.name for info, _ in sources if info.multi_label]
    if multi:
        raise DataError(f"{', '.join(multi)}: multi-label; only single-label subsets can be pooled")

    # Built beside the target and renamed at the end, so a failure leaves no half-written pool.
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (work / "img").mkdir()
        rows = []
        for info, path in sources:
            for split in SPLITS:
                if split == "test" and info.name in no_test:
                    continue
                images, labels = load_medmnist_split(path, split, info)
                for i, (image, label) in enumerate(zip(images, labels[:, 0])):
                    rel = f"img/{info.name}_{split}_{i}.png"
                    Image.fromarray(image).save(work / rel)
                    rows.append((rel, f"{info.name}:{info.labels[label]}", split))
        with open(work / "manifest.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(("path", "label", "split"))
            writer.writerows(rows)
        work.rename(out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return len(rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("subsets", nargs="+", help="single-label MedMNIST subsets, e.g. pneumoniamnist breastmnist")
    ap.add_argument("--output", required=True, help="new folder for the PNGs and manifest.csv")
    ap.add_argument("--data-root", default=None, help="folder of the .npz files (default $MEDMAMBA_DATA)")
    ap.add_argument("--size", type=int, default=28)
    ap.add_argument("--no-test", nargs="*", default=[], metavar="SUBSET", help="subsets whose test split is left out")
    args = ap.parse_args()
    out = Path(args.output)
    try:
        n = pool(args.subsets, out, args.data_root, args.size, args.no_test)
    except DataError as e:
        raise SystemExit(str(e)) from None
    print(f"{n} images in {out / 'manifest.csv'}")

if __name__ == "__main__":
    main()
