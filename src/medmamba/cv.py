"""k-fold cross-validation: one training run per fold over train+val, validation metrics as mean +- sd.

The test split takes no part: it is neither pooled nor evaluated, so a recipe can be chosen on these
figures and judged on the test split afterwards.
"""
from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path

import numpy as np

from .errors import MedMambaError
from .files import atomic_write_text
from .run_dir import RunDir

CV_METRICS = ("accuracy", "balanced_accuracy", "auc", "average_precision", "sensitivity", "specificity", "f1", "loss")


def cross_validate(cfg: dict, output: str | os.PathLike, overwrite: bool = False, progress: bool = True) -> dict:
    """Train ``cfg`` once per fold (``data.folds`` of them) into ``output/fold<i>``; returns and writes
    (cv.json, cv.md) each fold's validation metrics of its best checkpoint and their mean and sd."""
    from .prediction import evaluate
    from .calibration import nll
    from .train import VAL_LOSS_EPS, Trainer
    folds = cfg["data"]["folds"]
    if not folds:
        raise MedMambaError("cross-validation needs data.folds=K (K >= 2)")
    out = Path(output)
    if not RunDir(out).is_empty() and not overwrite:
        raise MedMambaError(f"output folder {out} exists and is not empty; pass --overwrite to replace it")
    rows = []
    for fold in range(folds):
        fold_cfg = copy.deepcopy(cfg)
        fold_cfg["data"]["fold"] = fold
        if progress:
            print(f"fold {fold + 1}/{folds}", flush=True)
        trainer = Trainer(fold_cfg, out / f"fold{fold}", overwrite=overwrite, progress=progress)
        trainer.fit()
        metrics, labels, probs = evaluate(trainer.best_model(), trainer.data.splits["val"], trainer.data.task,
                                          trainer.data.classes, fold_cfg["eval_batch_size"], trainer.device,
                                          fold_cfg["amp"], tta=fold_cfg["tta"])
        metrics["loss"] = nll(labels, probs, trainer.data.multi_label, eps=VAL_LOSS_EPS)
        rows.append({"fold": fold, "n_val": int(len(labels)), "best_epoch": trainer.state.best_epoch,
                     "warnings": trainer.state.warnings, **{k: float(metrics[k]) for k in CV_METRICS}})
    summary = {k: {"mean": float(np.mean([r[k] for r in rows])),
                   "sd": float(np.std([r[k] for r in rows], ddof=1)) if len(rows) > 1 else math.nan}
               for k in CV_METRICS}
    result = {"folds": rows, "summary": summary, "model": cfg["model"], "dataset": trainer.data.name}
    atomic_write_text(out / "cv.json", json.dumps(result, indent=1))
    atomic_write_text(out / "cv.md", cv_table(result) + "\n")
    return result


def cv_table(result: dict) -> str:
    head = "| fold | " + " | ".join(CV_METRICS) + " |"
    rows = [f"{result['model']} on {result['dataset']}, {len(result['folds'])}-fold cross-validation "
            f"(validation metrics of each fold's best checkpoint)", "", head,
            "| " + " | ".join("---" for _ in range(len(CV_METRICS) + 1)) + " |"]
    for r in result["folds"]:
        rows.append(f"| {r['fold']} | " + " | ".join(f"{r[k]:.4f}" for k in CV_METRICS) + " |")
    s = result["summary"]
    rows.append("| mean +- sd | " + " | ".join(f"{s[k]['mean']:.4f} +- {s[k]['sd']:.4f}" for k in CV_METRICS) + " |")
    return "\n".join(rows)
