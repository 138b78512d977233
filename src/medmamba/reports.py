"""Reports of an evaluation: Markdown tables, published figures to compare with, report.json/.md and plots."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Optional

import numpy as np

from .files import atomic_write_text

_MEDMNIST_V2 = "ResNet-18 (28), MedMNIST v2"
# Test-split ACC/AUC published for every MedMNIST v2 2-D subset: ResNet-18 at 28 px from the MedMNIST v2
# paper (Yang et al., Scientific Data 2023, Table 3), and the official MedMamba README where it reports one.
PUBLISHED = {
    "pathmnist": {_MEDMNIST_V2: (0.907, 0.983)},
    "chestmnist": {_MEDMNIST_V2: (0.947, 0.768)},
    "dermamnist": {_MEDMNIST_V2: (0.735, 0.917)},
    "octmnist": {_MEDMNIST_V2: (0.743, 0.943)},
    "pneumoniamnist": {_MEDMNIST_V2: (0.854, 0.944), "MedMamba, official README": (0.899, 0.965)},
    "retinamnist": {_MEDMNIST_V2: (0.524, 0.717)},
    "breastmnist": {_MEDMNIST_V2: (0.863, 0.901), "MedMamba, official README": (0.853, 0.825)},
    "bloodmnist": {_MEDMNIST_V2: (0.958, 0.998)},
    "tissuemnist": {_MEDMNIST_V2: (0.676, 0.930)},
    "organamnist": {_MEDMNIST_V2: (0.935, 0.997)},
    "organcmnist": {_MEDMNIST_V2: (0.900, 0.992)},
    "organsmnist": {_MEDMNIST_V2: (0.782, 0.972)},
}


def _fmt(v):
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def metrics_table(m: dict) -> str:
    rows = ["| metric | value |", "| --- | --- |"]
    for key in ("accuracy", "auc", "precision", "sensitivity", "specificity", "f1"):
        rows.append(f"| {key} | {_fmt(m[key])} |")
    rows += ["", "| class | precision | sensitivity | specificity | F1 | AUC | support |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, c in m["per_class"].items():
        rows.append(f"| {name} | {_fmt(c['precision'])} | {_fmt(c['sensitivity'])} | {_fmt(c['specificity'])} | "
                    f"{_fmt(c['f1'])} | {_fmt(c['auc'])} | {c['support']} |")
    return "\n".join(rows)


def published_table(dataset_name: str, m: dict, ours_label: str = "this run") -> str:
    rows = ["| model | ACC | AUC |", "| --- | --- | --- |",
            f"| {ours_label} | {_fmt(m['medmnist']['acc'])} | {_fmt(m['medmnist']['auc'])} |"]
    for who, (acc, auc) in PUBLISHED.get(dataset_name, {}).items():
        rows.append(f"| {who} | {acc:.3f} | {auc:.3f} |")
    return "\n".join(rows)


def write_report(out_dir: str | os.PathLike, m: dict, labels, probs, class_names, title: str,
                 dataset_name: str = "", extra: Optional[dict] = None) -> dict:
    """report.json, report.md, confusion_matrix.png and roc.png in ``out_dir``; returns the paths."""
    from .plots import plot_confusion_matrix, plot_roc
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "md": out / "report.md", "roc": out / "roc.png"}
    if m.get("confusion_matrix") is not None:
        paths["confusion_matrix"] = out / "confusion_matrix.png"
        plot_confusion_matrix(np.array(m["confusion_matrix"]), class_names, paths["confusion_matrix"], title)
    plot_roc(labels, probs, class_names, m["task"], paths["roc"], title)
    payload = {"title": title, **(extra or {}), "metrics": m}
    atomic_write_text(paths["json"], json.dumps(payload, indent=1))
    md = [f"# {title}", "", metrics_table(m), ""]
    if dataset_name in PUBLISHED:
        md += ["Published results on the same test split (MedMNIST's ACC/AUC rules):", "",
               published_table(dataset_name, m), ""]
    md += [f"![ROC]({paths['roc'].name})"] + ([f"![confusion matrix]({paths['confusion_matrix'].name})"]
                                              if "confusion_matrix" in paths else [])
    atomic_write_text(paths["md"], "\n".join(md) + "\n")
    return paths
