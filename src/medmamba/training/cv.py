"""k-fold cross-validation: one training run per fold over train+val, validation metrics as mean +- sd.

The test split takes no part: it is neither pooled nor evaluated, so a recipe can be chosen on these
figures and judged on the test split afterwards.
"""
from __future__ import annotations

import copy
import json
import math
import os

import numpy as np

from ..files import atomic_write_text, refuse_existing
from ..artifacts.run_dir import CV_JSON, CV_MD, RunDir
from ..errors import MedMambaError

CV_METRICS = ("accuracy", "balanced_accuracy", "auc", "average_precision", "sensitivity", "specificity", "f1", "loss")


def cross_validate(cfg: dict, output: str | os.PathLike, overwrite: bool = False, progress: bool = True) -> dict:
    """Train ``cfg`` once per fold (``data.folds`` of them) into ``output/fold<i>``; returns and writes
    (cv.json, cv.md) each fold's validation metrics of its best checkpoint and their mean and sd."""
    from ..evaluation.calibration import nll
    from ..evaluation.evaluate import evaluate
    from ..evaluation.runs import LoadedRun
    from .distill import fold_teachers
    from .trainer import VAL_LOSS_EPS, Trainer
    folds = cfg["data"]["folds"]
    if not folds:
        raise MedMambaError("cross-validation needs data.folds=K (K >= 2)")
    out = RunDir(output)
    refuse_existing(out.root, overwrite=overwrite)
    rows = []
    for fold in range(folds):
        fold_cfg = copy.deepcopy(cfg)
        fold_cfg["data"]["fold"] = fold
        fold_cfg["distill"]["teacher"] = fold_teachers(cfg, fold)
        if progress:
            print(f"fold {fold + 1}/{folds}", flush=True)
        trainer = Trainer(fold_cfg, out.fold(fold).root, overwrite=overwrite, progress=progress)
        trainer.fit()
        best = LoadedRun(trainer.best_model(), trainer.cfg, trainer.model_card(), trainer.run.weights("best"),
                         trainer.data)
        val = evaluate(best, "val", n_resamples=0, write=False, device=trainer.device)
        metrics, labels, probs = val.metrics, val.outputs.labels, val.outputs.probs
        metrics["loss"] = nll(labels, probs, trainer.data.multi_label, eps=VAL_LOSS_EPS)
        rows.append({"fold": fold, "n_val": int(len(labels)), "best_epoch": trainer.state.best_epoch,
                     "warnings": trainer.state.warnings, **{k: float(metrics[k]) for k in CV_METRICS}})
    summary = {k: {"mean": float(np.mean([r[k] for r in rows])),
                   "sd": float(np.std([r[k] for r in rows], ddof=1)) if len(rows) > 1 else math.nan}
               for k in CV_METRICS}
    result = {"folds": rows, "summary": summary, "model": cfg["model"], "dataset": trainer.data.name}
    atomic_write_text(out.root / CV_JSON, json.dumps(result, indent=1))
    atomic_write_text(out.root / CV_MD, cv_table(result) + "\n")
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
