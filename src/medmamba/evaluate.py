"""Evaluate a model on a dataset split: predictions, the paper's metrics, reports and plots."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch.utils.data import DataLoader

from . import distributed as dist_utils
from .files import atomic_write_text
from .metrics import classification_metrics

# Published results on the official MedMNIST test splits (MedMNIST v2 paper, Table 3; official MedMamba README).
PUBLISHED = {
    "breastmnist": {"ResNet-18 (28), MedMNIST v2": (0.863, 0.901), "MedMamba, official README": (0.853, 0.825)},
    "pneumoniamnist": {"ResNet-18 (28), MedMNIST v2": (0.854, 0.944), "MedMamba, official README": (0.899, 0.965)},
}


def class_probabilities(logits: torch.Tensor, multi_label: bool) -> torch.Tensor:
    """Independent sigmoids for multi-label tasks, a softmax over classes otherwise."""
    return torch.sigmoid(logits) if multi_label else logits.softmax(-1)


@torch.no_grad()
def predict(model, dataset, batch_size: int = 64, device="cpu", amp: Optional[str] = None, multi_label=False,
            num_workers: int = 0, progress: bool = False, tta: bool = False):
    """(labels, probabilities) over ``dataset``; sharded over ranks and gathered when distributed.

    ``tta``: each image's probabilities averaged with those of its horizontal mirror (test-time
    augmentation matching the training flips)."""
    model.eval()
    indices = dist_utils.shard_indices(len(dataset))
    loader = DataLoader(torch.utils.data.Subset(dataset, indices), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, generator=torch.Generator())
    if progress and dist_utils.is_main():
        from tqdm.auto import tqdm
        loader = tqdm(loader, desc="evaluating", leave=False)
    labels, probs = [], []
    for x, y in loader:
        x = x.to(device, non_blocking=True)
        views = (x, x.flip(-1)) if tta else (x,)
        p = 0
        for view in views:
            with autocast(device, amp):
                p = p + class_probabilities(model(view).float(), multi_label)
        probs.append((p / len(views)).cpu())
        labels.append(y)
    labels = torch.cat(labels).numpy() if labels else np.zeros((0,))
    probs = torch.cat(probs).numpy() if probs else np.zeros((0, 0))
    return dist_utils.gather_in_order(indices, labels, probs, len(dataset))


def autocast(device, amp: Optional[str]):
    device_type = torch.device(device).type
    if amp in (None, "none", "fp32"):
        return torch.autocast(device_type, enabled=False)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    return torch.autocast(device_type, dtype=dtype)


def evaluate(model, dataset, task: str, class_names, batch_size=64, device="cpu", amp=None, progress=False,
             tta=False):
    labels, probs = predict(model, dataset, batch_size, device, amp, task.startswith("multi-label"),
                            progress=progress, tta=tta)
    return classification_metrics(labels, probs, task, class_names), labels, probs


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
