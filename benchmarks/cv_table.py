"""One table from several `medmamba cv` results: each candidate recipe's validation figures (mean +- sd over
the folds) and its difference from a baseline fold by fold (the same folds, so the difference is paired).

    .venv/bin/python benchmarks/cv_table.py benchmarks/results/cv28/*.json --baseline mm_base
    .venv/bin/python benchmarks/cv_table.py benchmarks/results/cv28/pneumoniamnist/*.json --baseline mm_base

Each file is a cv.json (as `medmamba cv` writes it), named after its candidate; one folder per data set, since
only results over the same folds can be paired (others are refused). The test split took no part
in any of them: this is where recipes are chosen.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

SHOWN = ("accuracy", "balanced_accuracy", "auc", "loss")
# AUC alone cannot rank candidates once it saturates (PneumoniaMNIST's folds sit at 0.997), so the paired
# difference is shown for accuracy and the validation loss too: they still separate them there.
PAIRED = ("accuracy", "auc", "loss")


def paired_cells(result, base):
    """'mean (fold, fold, ...)' of result - base for each PAIRED metric, fold by fold."""
    cells = []
    for key in PAIRED:
        diff = [a[key] - b[key] for a, b in zip(result["folds"], base["folds"])]
        cells.append(f"{np.mean(diff):+.4f} ({', '.join(f'{d:+.3f}' for d in diff)})")
    return cells


def same_folds(result, base):
    """Why result's folds cannot be paired with base's, or None when they can."""
    if result.get("dataset") != base.get("dataset"):
        return f"data set {result.get('dataset')!r} is not the baseline's {base.get('dataset')!r}"
    ours = [(f["fold"], f["n_val"]) for f in result["folds"]]
    theirs = [(f["fold"], f["n_val"]) for f in base["folds"]]
    if ours != theirs:
        return f"folds (fold, validation images) {ours} are not the baseline's {theirs}"
    return None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", type=Path)
    parser.add_argument("--baseline", help="the candidate the others are compared with, fold by fold")
    args = parser.parse_args(argv)
    results = {p.stem: json.loads(p.read_text()) for p in args.results}
    base = results.get(args.baseline) if args.baseline else None
    if args.baseline and base is None:
        parser.error(f"--baseline {args.baseline}: not among {', '.join(results)}")
    if base:
        for name, r in results.items():
            why = same_folds(r, base)
            if why:
                parser.error(f"{name}: {why}; a paired difference needs the same folds")
    header = ["candidate", "model", "folds", *SHOWN]
    if base:
        header += [f"{'AUC' if k == 'auc' else k} - baseline, per fold" for k in PAIRED]
    print("| " + " | ".join(header) + " |")
    print("| --- " * len(header) + "|")
    for name, r in results.items():
        s = r["summary"]
        cells = [name, r["model"], str(len(r["folds"]))]
        cells += [f"{s[k]['mean']:.4f} +- {s[k]['sd']:.4f}" for k in SHOWN]
        if base:
            cells += [""] * len(PAIRED) if name == args.baseline else paired_cells(r, base)
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
