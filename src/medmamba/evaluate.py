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


def model_probabilities(model, x: torch.Tensor, multi_label: bool, tta: bool = False, device="cpu",
                        amp: Optional[str] = None) -> torch.Tensor:
    """Class probabilities of a batch; with ``tta`` averaged with those of the horizontal mirror images."""
    views = (x, x.flip(-1)) if tta else (x,)
    total = 0
    for view in views:
        with autocast(device, amp):
            total = total + class_probabilities(model(view).float(), multi_label)
    return total / len(views)


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
        probs.append(model_probabilities(model, x, multi_label, tta, device, amp).cpu())
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


def load_run(run: str | os.PathLike, splits=("test",), checkpoint: str = "best", overrides=()):
    """(model, data, cfg, weights) of a training output folder: its checkpoint (``best``, ``last`` or a weights
    file) in the model it was trained as, and ``splits`` of its data with the run's own data handling."""
    from .checkpoint import load_checkpoint
    from .config import load_config
    from .data.builder import build_data
    from .errors import MedMambaError
    from .models import create_model
    run = Path(run)
    if not (run / "config.yaml").is_file():
        raise MedMambaError(f"{run}: not a training output folder (no config.yaml)")
    cfg = load_config(run / "config.yaml", overrides)
    named = checkpoint in ("best", "last")
    weights = run / "checkpoints" / checkpoint / "model.safetensors" if named else Path(checkpoint)
    data = build_data(cfg, splits=tuple(splits))
    model = create_model(cfg["model"], num_classes=data.num_classes, in_chans=data.channels,
                         scan_backend=cfg["scan_backend"], **cfg["model_args"])
    load_checkpoint(model, weights, new_head_ok=False)
    return model, data, cfg, weights


def run_predictions(run: str | os.PathLike, split: str = "test", checkpoint: str = "best", overrides=(),
                    device=None, progress: bool = False):
    """(labels, probabilities, data, cfg, weights) of a training output folder's checkpoint on ``split``,
    with the data handling and test-time augmentation that the run was trained and validated with."""
    model, data, cfg, weights = load_run(run, (split,), checkpoint, overrides)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    labels, probs = predict(model.to(device), data.splits[split], cfg["eval_batch_size"], device, cfg["amp"],
                            data.task.startswith("multi-label"), progress=progress, tta=cfg["tta"])
    return labels, probs, data, cfg, weights


def evaluate_runs(runs, split: str = "test", checkpoint: str = "best", overrides=(), device=None,
                  progress: bool = False):
    """Metrics of one training run, or of the ensemble of several (their class probabilities averaged), on
    ``split``. Returns (metrics, labels, probs, data, [(cfg, weights) of each run]). The runs must be on the
    same dataset and classes; each keeps its own input size, normalisation and test-time augmentation."""
    from .errors import MedMambaError
    if not runs:
        raise MedMambaError("no training run to evaluate")
    labels = data = None
    probs, used = [], []
    for run in runs:
        y, p, d, cfg, weights = run_predictions(run, split, checkpoint, overrides, device, progress)
        if data is not None and (d.name, list(d.classes), d.task) != (data.name, list(data.classes), data.task):
            raise MedMambaError(f"{run}: trained on {d.name} {list(d.classes)}, not {data.name} {list(data.classes)} "
                                f"like {runs[0]}; an ensemble needs the same dataset and classes")
        if labels is not None and not np.array_equal(y, labels):
            raise MedMambaError(f"{run}: its {split} split differs from that of {runs[0]}")
        labels, data = y, d
        probs.append(p)
        used.append((cfg, weights))
    mean = np.mean(probs, axis=0)
    return classification_metrics(labels, mean, data.task, data.classes), labels, mean, data, used


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
