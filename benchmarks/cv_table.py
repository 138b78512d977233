"""One table from several `medmamba cv` results: each candidate recipe's validation figures (mean +- sd over
the folds) and its difference from a baseline fold by fold (the same folds, so the difference is paired).

    .venv/bin/python benchmarks/cv_table.py benchmarks/results/cv28/*.json --baseline mm_base

Each file is a cv.json (as `medmamba cv` writes it), named after its candidate. The test split took no part
in any of them: this is where recipes are chosen.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

SHOWN = ("accuracy", "balanced_accuracy", "auc", "loss")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", type=Path)
    parser.add_argument("--baseline", help="the candidate the others are compared with, fold by fold")
    args = parser.parse_args(argv)
    results = {p.stem: json.loads(p.read_text()) for p in args.results}
    base = results.get(args.baseline) if args.baseline else None
    if args.baseline and base is None:
        parser.error(f"--baseline {args.baseline}: not among {', '.join(results)}")
    print("| candidate | model | folds | " + " | ".join(SHOWN) + (" | AUC - baseline, per fold |" if base else " |"))
    print("| --- " * (3 + len(SHOWN) + (1 if base else 0)) + "|")
    for name, r in results.items():
        s = r["summary"]
        cells = [f"{s[k]['mean']:.4f} +- {s[k]['sd']:.4f}" for k in SHOWN]
        row = f"| {name} | {r['model']} | {len(r['folds'])} | " + " | ".join(cells)
        if base:
            if name == args.baseline:
                row += " | |"
            else:
                diff = [a["auc"] - b["auc"] for a, b in zip(r["folds"], base["folds"])]
                row += f" | {np.mean(diff):+.4f} ({', '.join(f'{d:+.3f}' for d in diff)}) |"
        print(row + ("" if base else " |"))


if __name__ == "__main__":
    main()
