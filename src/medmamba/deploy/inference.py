"""Run a trained MedMamba on image files: load it with its preprocessing, predict, write a CSV.

    predictor = Predictor.from_checkpoint("runs/breastmnist/")        # or .../model.safetensors
    result = predictor.predict_files(["scans/", "more/*.png"])
    result.write_csv("predictions.csv")
"""
from __future__ import annotations

import csv
import io
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..artifacts.card import ModelCard, read_card
from ..artifacts.checkpoint import resolve_weights
from ..artifacts.run_dir import CARD, OOD_FEATURES
from ..data.folders import read_image, require_inputs
from ..data.transforms import build_transform
from ..errors import CheckpointError, DataError
from ..files import atomic_write_text
from ..models import create_model
from ..evaluation.conformal import ConformalSets, set_names
from ..evaluation.prediction import model_probabilities, predicted_names


def load_model(path: str | os.PathLike, scan_backend: str = "auto", device=None) -> torch.nn.Module:
    """A trained model, in eval mode, from a weights file with its model card, a checkpoint folder or a
    training run folder; ``model.model_card`` holds the card (classes, img_size, mean, std...)."""
    weights = resolve_weights(path)
    card = read_card(weights)
    if card is None:
        raise CheckpointError(f"{weights}: no {CARD} (or {weights.stem}.json) beside it to say which model it "
                              f"holds; build it with create_model(name, pretrained=..., num_classes=...) instead")
    model = create_model(card.model, pretrained=weights, scan_backend=scan_backend)
    return model.to(device or "cpu").eval()


def failure_reason(error: Exception, path: str) -> str:
    """Why ``path`` was skipped, without repeating the path that DataError messages start with."""
    if isinstance(error, DataError):
        return str(error).removeprefix(f"{path}: ")
    # e.g. a transform failing on a degenerate image (0 pixels wide)
    return f"cannot be prepared ({type(error).__name__}: {error})"


class _Files(Dataset):
    """Preprocessed images; a file that cannot be read yields its reason instead of stopping the run."""

    def __init__(self, paths: Sequence[str], read):
        self.paths, self.read = paths, read

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        try:
            return i, self.read(self.paths[i])[1], None
        except Exception as e:
            return i, None, failure_reason(e, self.paths[i])


def _collate(items):
    good = [(i, x) for i, x, err in items if err is None]
    failed = [(i, err) for i, x, err in items if err is not None]
    images = torch.stack([x for _, x in good]) if good else None
    return [i for i, _ in good], images, failed


@dataclass
class PredictionResult:
    paths: list[str]
    probabilities: np.ndarray            # (images, classes)
    classes: list[str]
    multi_label: bool
    failures: list[tuple[str, str]] = field(default_factory=list)   # (path, reason)
    seconds: float = 0.0
    threshold: Optional[float] = None    # binary operating point from the model card: class ``positive``
    positive: int = 1                    # is predicted when its probability reaches ``threshold``
    conformal: Optional[dict] = None     # the card's prediction sets (evaluation.conformal.ConformalSets)
    ood_scores: Optional[np.ndarray] = None   # each image's out-of-distribution score, with the card's
    ood_threshold: Optional[float] = None     # threshold: above it, the image is unlike the training images

    @property
    def images_per_second(self) -> float:
        return len(self.paths) / self.seconds if self.seconds > 0 else float("nan")

    def predicted(self) -> list[str]:
        return predicted_names(self.probabilities, self.classes, self.multi_label, self.threshold, self.positive)

    def sets(self) -> Optional[list[str]]:
        """Each image's prediction set ("a|b": undecided between a and b), when the card has one calibrated."""
        if not self.conformal or self.multi_label:
            return None
        return set_names(ConformalSets.from_dict(self.conformal).predict(self.probabilities), self.classes)

    def flagged(self) -> Optional[np.ndarray]:
        """Which images the out-of-distribution score flags (None: the model has no such score)."""
        return None if self.ood_scores is None else self.ood_scores > self.ood_threshold

    def rows(self, name: Callable[[str], str] = str) -> list[list]:
        """One row per image: ``name(path)``, each class's probability, the prediction and, when the card has
        them, the prediction set and the out-of-distribution score and flag."""
        sets, flagged = self.sets(), self.flagged()
        return [[name(path), *(f"{p:.6f}" for p in row), label] + ([sets[i]] if sets else [])
                + ([f"{self.ood_scores[i]:.6g}", bool(flagged[i])] if flagged is not None else [])
                for i, (path, row, label) in enumerate(zip(self.paths, self.probabilities, self.predicted()))]

    def header(self) -> list[str]:
        return (["path", *(f"prob_{c}" for c in self.classes), "predicted"] + (["set"] if self.sets() else [])
                + (["ood_score", "ood"] if self.ood_scores is not None else []))

    def to_csv(self, name: Callable[[str], str] = str) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(self.header())
        writer.writerows(self.rows(name))
        return out.getvalue()

    def write_csv(self, path: str | os.PathLike) -> Path:
        atomic_write_text(path, self.to_csv())
        return Path(path)


class Predictor:
    """A model with the preprocessing it was trained with (size, normalisation, channels) and its classes."""

    def __init__(self, model: torch.nn.Module, card: Optional[ModelCard] = None, device=None, ood=None):
        card = card or getattr(model, "model_card", None) or ModelCard(
            model=type(model).__name__, num_classes=model.num_classes, in_chans=getattr(model, "in_chans", 3))
        self.card = card
        self.device = torch.device(device) if device else next(model.parameters()).device
        self.model = model.to(self.device).eval()
        self.channels = int(card.in_chans or getattr(model, "in_chans", 3))
        self.img_size = int(card.img_size)
        self.classes = card.class_names or [str(c) for c in range(model.num_classes)]
        self.multi_label = card.multi_label
        self.tta = bool(card.tta)  # as the model was validated: averaged with the mirror
        self.transform = build_transform(self.img_size, self.channels, train=False, mean=card.mean, std=card.std,
                                         normalize=card.normalize)
        self.ood = ood  # evaluation.ood.OODDetector, with the training images' features

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, scan_backend: str = "auto", device=None) -> "Predictor":
        model = load_model(path, scan_backend=scan_backend)
        ood = None
        if model.model_card.ood:
            from ..evaluation.ood import OODDetector
            ood = OODDetector.from_card(model.model_card.ood, resolve_weights(path).parent / OOD_FEATURES)
        return cls(model, model.model_card, device=device or ("cuda" if torch.cuda.is_available() else "cpu"), ood=ood)

    def read(self, path: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor]:
        """(the image in [0, 1] as read, the model's input for it); DataError naming the file if unreadable."""
        image = read_image(path, self.channels)
        return image, self.transform(image)

    @torch.no_grad()
    def predict_batch(self, images: torch.Tensor) -> np.ndarray:
        """Preprocessed (batch, channels, img_size, img_size) images -> class probabilities."""
        probs = model_probabilities(self.model, images.to(self.device), self.multi_label, self.tta, self.device,
                                    temperature=self.card.temperature)
        return probs.cpu().numpy()

    @torch.no_grad()
    def ood_scores(self, images: torch.Tensor) -> Optional[np.ndarray]:
        """Preprocessed images -> out-of-distribution scores (None when the model has no OOD score)."""
        if self.ood is None:
            return None
        from ..evaluation.ood import batch_scores
        return batch_scores(self.ood, self.model, images.to(self.device))

    def warm_up(self):
        """One tiny forward pass, so JIT compilation is not counted as prediction time."""
        self.predict_batch(torch.zeros(1, self.channels, self.img_size, self.img_size))

    def predict_files(self, items: Iterable[str | os.PathLike], batch_size: int = 32, workers: int = 0,
                      progress: bool = False) -> PredictionResult:
        """Predict every image that ``items`` (files, folders, globs) names; unreadable ones are skipped and
        listed in ``failures`` with the reason. Raises DataError when nothing could be found at all."""
        paths, failures = require_inputs(items, "predict")
        self.warm_up()
        loader = DataLoader(_Files(paths, self.read), batch_size=batch_size,
                            num_workers=workers, collate_fn=_collate)
        done, probs, scores = [], [], []
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=len(paths), unit="img", desc="predict")
        start = time.perf_counter()
        for index, images, failed in loader:
            if images is not None:
                probs.append(self.predict_batch(images))
                scores.append(self.ood_scores(images))
                done += index
            failures += [(paths[i], reason) for i, reason in failed]
            if bar is not None:
                bar.update(len(index) + len(failed))
        seconds = time.perf_counter() - start
        if bar is not None:
            bar.close()
        return PredictionResult(paths=[paths[i] for i in done],
                                probabilities=np.concatenate(probs) if probs else np.zeros((0, len(self.classes))),
                                classes=self.classes, multi_label=self.multi_label, failures=failures,
                                seconds=seconds, threshold=self.card.threshold, positive=self.card.positive,
                                conformal=self.card.conformal,
                                ood_scores=np.concatenate(scores) if self.ood is not None and scores else None,
                                ood_threshold=self.ood.threshold if self.ood is not None else None)
