"""Training runs after the fact: load a run's model and data, predict with it, evaluate one run or an ensemble."""
from __future__ import annotations

import os

import numpy as np
import torch

from .errors import MedMambaError
from .prediction import predict
from .run_dir import RunDir


def build_model(cfg: dict, num_classes: int, in_chans: int, **kwargs) -> torch.nn.Module:
    """The model a training configuration describes, for ``num_classes`` and ``in_chans``."""
    from .models import create_model
    return create_model(cfg["model"], num_classes=num_classes, in_chans=in_chans, scan_backend=cfg["scan_backend"],
                        **cfg["model_args"], **kwargs)


def load_run(run: str | os.PathLike, splits=("test",), checkpoint: str = "best", overrides=()):
    """(model, data, cfg, weights) of a training output folder: its checkpoint (``best``, ``last`` or a weights
    file) in the model it was trained as, and ``splits`` of its data with the run's own data handling."""
    from .checkpoint import load_checkpoint
    from .config import load_config
    from .data.builder import build_data
    run = RunDir(run)
    if not run.is_run():
        raise MedMambaError(f"{run.root}: not a training output folder (no config.yaml)")
    cfg = load_config(run.config, overrides)
    weights = run.weights(checkpoint) if checkpoint in ("best", "last") else checkpoint
    data = build_data(cfg, splits=tuple(splits))
    model = build_model(cfg, data.num_classes, data.channels)
    load_checkpoint(model, weights, new_head_ok=False)
    return model, data, cfg, weights


def run_predictions(run: str | os.PathLike, split: str = "test", checkpoint: str = "best", overrides=(),
                    device=None, progress: bool = False):
    """(labels, probabilities, data, cfg, weights) of a training output folder's checkpoint on ``split``,
    with the data handling and test-time augmentation that the run was trained and validated with."""
    model, data, cfg, weights = load_run(run, (split,), checkpoint, overrides)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    labels, probs = predict(model.to(device), data.splits[split], cfg["eval_batch_size"], device, cfg["amp"],
                            data.multi_label, progress=progress, tta=cfg["tta"])
    return labels, probs, data, cfg, weights


def evaluate_runs(runs, split: str = "test", checkpoint: str = "best", overrides=(), device=None,
                  progress: bool = False):
    """Metrics of one training run, or of the ensemble of several (their class probabilities averaged), on
    ``split``. Returns (metrics, labels, probs, data, [(cfg, weights) of each run]). The runs must be on the
    same dataset and classes; each keeps its own input size, normalisation and test-time augmentation."""
    from .metrics import classification_metrics
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
