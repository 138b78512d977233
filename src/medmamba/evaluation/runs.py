"""Training runs after the fact: a run's model, card and data, and its predictions on a split (one run, or an
ensemble whose probabilities are averaged)."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..artifacts.card import ModelCard, read_card
from ..artifacts.run_dir import OOD_FEATURES, RunDir
from ..errors import MedMambaError
from .prediction import predict_logits, probabilities_from_logits

CHECKPOINT_NAMES = ("best", "last")


def build_model(cfg: dict, num_classes: int, in_chans: int, **kwargs) -> torch.nn.Module:
    """The model a training configuration describes, for ``num_classes`` and ``in_chans``."""
    from ..models import create_model
    return create_model(cfg["model"], num_classes=num_classes, in_chans=in_chans, scan_backend=cfg["scan_backend"],
                        **cfg["model_args"], **kwargs)


def with_card_preprocessing(cfg: dict, card: Optional[ModelCard]) -> dict:
    """``cfg`` with the input size, normalisation and test-time augmentation the weights' card records: the
    card, written with the weights, is what they were trained and validated with."""
    if card is None:
        return cfg
    data = {**cfg["data"], "img_size": card.img_size, "mean": card.mean, "std": card.std, "normalize": card.normalize}
    return {**cfg, "data": data, "tta": card.tta}


@dataclass
class LoadedRun:
    """A trained model with everything needed to evaluate it: its configuration, card and data."""
    model: torch.nn.Module
    cfg: dict
    card: Optional[ModelCard]
    weights: Path
    data: object                 # data.builder.DataBundle; splits are added as they are needed
    ood: object = None           # ood.OODDetector of the card, with its training features
    split_record: dict = field(default_factory=dict)   # its split.json: the images it was trained on

    def dataset(self, split: str):
        if split not in self.data.splits:
            from ..data.builder import build_data
            self.data.splits[split] = build_data(self.cfg, splits=(split,), exclude=self.data.left_out).splits[split]
        return self.data.splits[split]


def load_run(run: str | os.PathLike, splits=("test",), checkpoint: str = "best", overrides=()) -> LoadedRun:
    """A training output folder's checkpoint (``best``, ``last`` or a weights file) in the model it was
    trained as, with ``splits`` of its data read as the card says (size, normalisation, mirror averaging)."""
    from ..artifacts.checkpoint import load_checkpoint
    from ..config import apply_overrides, load_config
    from ..data.builder import build_data
    run = RunDir(run)
    if not run.is_run():
        raise MedMambaError(f"{run.root}: not a training output folder (no {run.config.name})")
    weights = run.weights(checkpoint) if checkpoint in CHECKPOINT_NAMES else Path(checkpoint)
    card = read_card(weights) if weights.is_file() else None
    # Overrides (data.root=..., tta=true) still have the last word.
    cfg = apply_overrides(with_card_preprocessing(load_config(run.config), card), overrides)
    record = json.loads(run.split.read_text()) if run.split.is_file() else {}
    data = build_data(cfg, splits=tuple(splits), exclude=record.get("left_out", ()))
    if record:  # the images the run was trained and evaluated on, or a clear refusal
        from ..data.record import check_split_record
        check_split_record(record, cfg, data, run.split)
    model = build_model(cfg, data.num_classes, data.channels)
    load_checkpoint(model, weights, new_head_ok=False)
    ood = None
    if card is not None and card.ood:
        from .ood import OODDetector
        ood = OODDetector.from_card(card.ood, weights.parent / OOD_FEATURES)
    return LoadedRun(model, cfg, card, weights, data, ood, record)


@dataclass
class RunOutputs:
    """Predictions of one run, or of an ensemble (probabilities averaged), on one split."""
    labels: np.ndarray
    probs: np.ndarray            # with each run's fitted temperature, as evaluate and predict report them
    plain: np.ndarray            # without any temperature: what calibration is judged against
    data: object                 # the DataBundle the split belongs to
    dataset: object              # the split itself
    used: list                   # the LoadedRun of each run
    ood_scores: Optional[np.ndarray] = None   # one run with an OOD score: each image's


def run_predictions(run: LoadedRun, split: str, device=None, progress: bool = False) -> RunOutputs:
    """A loaded run's predictions on ``split``, with its test-time augmentation and temperature."""
    cfg = run.cfg
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dataset = run.dataset(split)
    labels, logits = predict_logits(run.model.to(device), dataset, cfg["eval_batch_size"], device, cfg["amp"],
                                    progress=progress, tta=cfg["tta"])
    logits = torch.from_numpy(logits)
    multi_label = run.data.multi_label
    temperature = run.card.temperature if run.card is not None else None
    ood_scores = None
    if run.ood is not None:
        from .ood import dataset_scores
        ood_scores = dataset_scores(run.ood, run.model, dataset, cfg["eval_batch_size"], device)
    return RunOutputs(labels, probabilities_from_logits(logits, multi_label, temperature).numpy(),
                      probabilities_from_logits(logits, multi_label).numpy(), run.data, dataset, [run], ood_scores)


def run_outputs(runs, split: str = "test", checkpoint: str = "best", overrides=(), device=None,
                progress: bool = False) -> RunOutputs:
    """Predictions of one training run, or of the ensemble of several (their class probabilities averaged),
    on ``split``. A run is a training output folder or a ``LoadedRun``. The runs must be on the same dataset
    and classes; each keeps its own input size, normalisation, test-time augmentation and temperature."""
    if isinstance(runs, (str, os.PathLike, LoadedRun)):
        runs = [runs]
    if not runs:
        raise MedMambaError("no training run to evaluate")
    outs = []
    for run in runs:
        loaded = run if isinstance(run, LoadedRun) else load_run(run, (split,), checkpoint, overrides)
        out = run_predictions(loaded, split, device, progress)
        if outs:
            first, d, data = outs[0], out.data, outs[0].data
            if (d.name, list(d.classes), d.task) != (data.name, list(data.classes), data.task):
                raise MedMambaError(f"{run}: trained on {d.name} {list(d.classes)}, not {data.name} "
                                    f"{list(data.classes)} like {runs[0]}; an ensemble needs the same dataset and classes")
            if not np.array_equal(out.labels, first.labels):
                raise MedMambaError(f"{run}: its {split} split differs from that of {runs[0]}")
        outs.append(out)
    if len(outs) == 1:
        return outs[0]
    return RunOutputs(outs[0].labels, np.mean([o.probs for o in outs], axis=0),
                      np.mean([o.plain for o in outs], axis=0), outs[0].data, outs[0].dataset,
                      [u for o in outs for u in o.used])
