"""Training runs after the fact: load a run's model and data, predict with it, evaluate one run or an ensemble."""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from .card import read_card
from .errors import MedMambaError
from .prediction import predict_logits, probabilities_from_logits
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


@dataclass
class RunOutputs:
    """Predictions of one run, or of an ensemble (probabilities averaged), on one split."""
    labels: np.ndarray
    probs: np.ndarray            # with each run's fitted temperature, as evaluate and predict report them
    plain: np.ndarray            # without any temperature: what calibration is judged against
    data: object                 # the split's DataBundle
    used: list                   # (cfg, weights) of each run


def _one_run(run, split, checkpoint, overrides, device, progress) -> RunOutputs:
    model, data, cfg, weights = load_run(run, (split,), checkpoint, overrides)
    card = read_card(weights)
    temperature = card.temperature if card is not None else None
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    labels, logits = predict_logits(model.to(device), data.splits[split], cfg["eval_batch_size"], device, cfg["amp"],
                                    progress=progress, tta=cfg["tta"])
    logits = torch.from_numpy(logits)
    return RunOutputs(labels, probabilities_from_logits(logits, data.multi_label, temperature).numpy(),
                      probabilities_from_logits(logits, data.multi_label).numpy(), data, [(cfg, weights)])


def run_outputs(runs, split: str = "test", checkpoint: str = "best", overrides=(), device=None,
                progress: bool = False) -> RunOutputs:
    """Predictions of one training run, or of the ensemble of several (their class probabilities averaged),
    on ``split``. The runs must be on the same dataset and classes; each keeps its own input size,
    normalisation, test-time augmentation and temperature."""
    if isinstance(runs, (str, os.PathLike)):
        runs = [runs]
    if not runs:
        raise MedMambaError("no training run to evaluate")
    outs = []
    for run in runs:
        out = _one_run(run, split, checkpoint, overrides, device, progress)
        if outs:
            first, d, data = outs[0], out.data, outs[0].data
            if (d.name, list(d.classes), d.task) != (data.name, list(data.classes), data.task):
                raise MedMambaError(f"{run}: trained on {d.name} {list(d.classes)}, not {data.name} "
                                    f"{list(data.classes)} like {runs[0]}; an ensemble needs the same dataset and classes")
            if not np.array_equal(out.labels, first.labels):
                raise MedMambaError(f"{run}: its {split} split differs from that of {runs[0]}")
        outs.append(out)
    return RunOutputs(outs[0].labels, np.mean([o.probs for o in outs], axis=0),
                      np.mean([o.plain for o in outs], axis=0), outs[0].data, [u for o in outs for u in o.used])


def run_predictions(run: str | os.PathLike, split: str = "test", checkpoint: str = "best", overrides=(),
                    device=None, progress: bool = False):
    """(labels, probabilities, data, cfg, weights) of a training output folder's checkpoint on ``split``,
    with the data handling, test-time augmentation and temperature that the run was trained and validated with."""
    out = _one_run(run, split, checkpoint, overrides, device, progress)
    return out.labels, out.probs, out.data, *out.used[0]


def evaluate_runs(runs, split: str = "test", checkpoint: str = "best", overrides=(), device=None,
                  progress: bool = False):
    """Metrics of one training run, or of the ensemble of several, on ``split`` (see ``run_outputs``).
    Returns (metrics, labels, probs, data, [(cfg, weights) of each run])."""
    from .metrics import classification_metrics
    out = run_outputs(runs, split, checkpoint, overrides, device, progress)
    return (classification_metrics(out.labels, out.probs, out.data.task, out.data.classes), out.labels, out.probs,
            out.data, out.used)
