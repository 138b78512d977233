"""The model card: what a set of trained weights is and how to feed it, saved as JSON beside the weights.

Training writes it (``checkpoints/best/model.json``) through ``write_card``; the model builder, ``Predictor``,
evaluation and export read it. Its preprocessing fields default to ``data.transforms.PREPROCESSING``, as the
training configuration's keys do, so a card and a config that leave a key out mean the same thing.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..data.tasks import is_multi_label
from ..data.transforms import PREPROCESSING
from ..errors import CheckpointError, MedMambaError
from ..files import atomic_write_text
from .run_dir import CARD

def class_index(value, classes) -> int:
    """A class given by name or by index -> its index among ``classes``."""
    names = [str(c) for c in classes]
    if str(value) in names:
        return names.index(str(value))
    if str(value).isdigit() and int(value) < len(names):
        return int(value)
    raise MedMambaError(f"{value!r} is neither a class name nor an index; classes: {', '.join(names)}")


@dataclass
class ModelCard:
    model: str                                  # registered name, e.g. medmamba_t or timm/resnet18
    model_args: dict = field(default_factory=dict)
    num_classes: Optional[int] = None
    in_chans: Optional[int] = None
    classes: Optional[list] = None              # class names, in the order of the model's outputs
    task: str = "multi-class"
    img_size: int = PREPROCESSING.img_size      # the input size the weights were trained at
    mean: float = PREPROCESSING.mean
    std: float = PREPROCESSING.std
    tta: bool = PREPROCESSING.tta               # average each image with its mirror, as it was validated
    normalize: str = PREPROCESSING.normalize    # "image": each image stretched from its 1st to 99th percentile
    dataset: Optional[str] = None
    epoch: Optional[int] = None                 # the checkpoint's epoch and its validation score
    monitor: Optional[str] = None
    value: Optional[float] = None
    temperature: Optional[float] = None         # fitted on the validation split; divides the logits
    threshold: Optional[float] = None           # binary tasks: positive_class when its probability >= threshold
    positive_class: Optional[int] = None        # the class index the threshold (and a binary report) is on
    weights: Optional[str] = None               # "ema" or "raw" (which validated better), or "swa" (swa_epochs)
    conformal: Optional[dict] = None            # prediction sets calibrated on validation (ConformalSets.to_dict)
    ood: Optional[dict] = None                  # out-of-distribution score: method, threshold set on validation
    teacher: Optional[list] = None              # distillation: the teacher runs' folders, as configured
    extra: dict = field(default_factory=dict)   # keys this version does not know, kept when rewritten

    @property
    def multi_label(self) -> bool:
        return is_multi_label(self.task)

    @property
    def positive(self) -> int:
        """The class the threshold is on: ``positive_class``, or the second class when none was named."""
        return 1 if self.positive_class is None else self.positive_class

    @property
    def class_names(self) -> list[str]:
        return [str(c) for c in (self.classes or range(self.num_classes or 0))]

    @classmethod
    def from_dict(cls, data: dict, source: str = "model card") -> "ModelCard":
        if not isinstance(data, dict) or not isinstance(data.get("model"), str):
            raise CheckpointError(f"{source}: a model card needs at least {{\"model\": \"medmamba_t\", ...}}")
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        card = cls(**{k: v for k, v in data.items() if k in known},
                   extra={k: v for k, v in data.items() if k not in known})
        if card.model_args is None or not isinstance(card.model_args, dict):
            raise CheckpointError(f"{source}: model_args must be a mapping, got {card.model_args!r}")
        return card

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        return {**self.extra, **data}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)


def card_path(weights: str | os.PathLike) -> list[Path]:
    """Where a weights file's card may be: ``name.json`` beside ``name.safetensors``, else ``model.json``."""
    weights = Path(weights)
    return [weights.with_suffix(".json"), weights.parent / CARD]


def read_card(weights: str | os.PathLike) -> Optional[ModelCard]:
    """The card saved beside a weights file, or None when there is none."""
    for candidate in card_path(weights):
        if candidate.is_file():
            try:
                data = json.loads(candidate.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                raise CheckpointError(f"{candidate}: not a readable model card ({e})") from None
            return ModelCard.from_dict(data, str(candidate))
    return None


def write_card(card: ModelCard, path: str | os.PathLike) -> Path:
    """The one writer of model cards: JSON, written atomically."""
    path = Path(path)
    atomic_write_text(path, card.to_json())
    return path
