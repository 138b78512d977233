"""The training objective: cross-entropy (or, multi-label, binary cross-entropy) with class weights and
label smoothing, optionally on mixup or CutMix blends of the batch, optionally with a teacher's term
(distill.py)."""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..amp import autocast
from ..errors import MedMambaError


def class_weight_tensor(cfg: dict, data) -> Optional[torch.Tensor]:
    """``class_weights`` of the configuration as a tensor: null, "balanced" (inverse class frequency in the
    training split) or one weight per class."""
    cw = cfg["class_weights"]
    if cw is None:
        return None
    if cw == "balanced":
        labels = np.asarray(data.splits["train"].labels)
        counts = labels.sum(0) if data.multi_label else np.bincount(labels, minlength=data.num_classes)
        return torch.tensor(len(labels) / (data.num_classes * np.maximum(counts, 1)), dtype=torch.float32)
    if len(cw) != data.num_classes:
        raise MedMambaError(f"class_weights has {len(cw)} values for {data.num_classes} classes")
    return torch.tensor(cw, dtype=torch.float32)


def paste_box(x: torch.Tensor, other: torch.Tensor, lam: float) -> tuple[torch.Tensor, float]:
    """CutMix: x with a box of area about (1 - lam) of the image, centred uniformly at random and clipped at
    the border, taken from ``other``; returns it and the share of x that is left (lam, corrected for the
    clipping)."""
    height, width = x.shape[-2:]
    cut = math.sqrt(1.0 - lam)
    cy, cx = int(torch.randint(height, ())), int(torch.randint(width, ()))
    y0, y1 = max(cy - int(height * cut) // 2, 0), min(cy + int(height * cut) // 2, height)
    x0, x1 = max(cx - int(width * cut) // 2, 0), min(cx + int(width * cut) // 2, width)
    out = x.clone()
    out[..., y0:y1, x0:x1] = other[..., y0:y1, x0:x1]
    return out, 1.0 - (y1 - y0) * (x1 - x0) / (height * width)


class TrainingLoss:
    """``loss(model, x, y)``: the model's loss on a batch, in the configured precision."""

    def __init__(self, multi_label: bool, class_weights: Optional[torch.Tensor] = None, label_smoothing: float = 0.0,
                 mixup: float = 0.0, amp: Optional[str] = None, device="cpu", teacher=None, cutmix: float = 0.0):
        self.multi_label, self.label_smoothing, self.mixup, self.cutmix = multi_label, label_smoothing, mixup, cutmix
        self.teacher = teacher  # distill.Teacher or None
        self.amp, self.device = amp, device
        self.class_weights = class_weights.to(device) if class_weights is not None else None

    @classmethod
    def from_config(cls, cfg: dict, data, device, teacher=None) -> "TrainingLoss":
        return cls(data.multi_label, class_weight_tensor(cfg, data), cfg["label_smoothing"], cfg["mixup"], cfg["amp"],
                   device, teacher, cfg["cutmix"])

    def criterion(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.multi_label:
            return F.binary_cross_entropy_with_logits(logits.float(), y.float(), pos_weight=self.class_weights)
        return F.cross_entropy(logits.float(), y, weight=self.class_weights, label_smoothing=self.label_smoothing)

    def __call__(self, model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The loss of ``model`` on x, or with mixup (Zhang et al. 2018) the loss on a blend of x with a shuffled
        copy, or with CutMix (Yun et al. 2019) on x with a box pasted from the shuffled copy, against both label
        sets in the blend's proportion; drawn from torch's RNG so a resumed run draws the same blends."""
        if not (self.mixup or self.cutmix):
            with autocast(self.device, self.amp):
                logits = model(x)
            return self.with_teacher(self.criterion(logits, y), logits, x)
        cut = bool(self.cutmix) and (not self.mixup or float(torch.rand(())) < 0.5)
        alpha = self.cutmix if cut else self.mixup
        lam = float(torch.distributions.Beta(alpha, alpha).sample())
        perm = torch.randperm(len(x)).to(x.device)
        if cut:
            blend, lam = paste_box(x, x[perm], lam)
        else:
            blend = lam * x + (1 - lam) * x[perm]
        with autocast(self.device, self.amp):
            logits = model(blend)
        return self.with_teacher(lam * self.criterion(logits, y) + (1 - lam) * self.criterion(logits, y[perm]),
                                 logits, blend)

    def with_teacher(self, labels_loss: torch.Tensor, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """(1 - alpha) the labels' loss + alpha the teacher's term, the teacher seeing the same (augmented,
        blended) images as the student."""
        if self.teacher is None:
            return labels_loss
        with autocast(self.device, self.amp):
            teacher_term = self.teacher.loss(logits, x)
        return (1 - self.teacher.alpha) * labels_loss + self.teacher.alpha * teacher_term
