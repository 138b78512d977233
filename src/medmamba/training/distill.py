"""Distillation from trained teachers (DeiT, Touvron et al. 2021): frozen teacher models see the student's
augmented batch, and the student learns from their outputs as well as from the labels.

``distill.kind: soft`` is Hinton's KL divergence between the tempered probabilities (scaled by T^2, so that
the gradient's size does not shrink with T); ``hard`` is DeiT's cross-entropy to the teacher's predicted
class. Several teachers (a seed ensemble) are averaged in probability. A teacher must have been trained on
the same data file, classes, input and train split, or its outputs would teach the student about images
it saw in training as if they were unseen: ``Teacher.from_config`` refuses any other before a run writes
anything.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from ..artifacts.run_dir import RunDir
from ..errors import MedMambaError


def teacher_runs(cfg: dict) -> list[str]:
    teacher = cfg["distill"]["teacher"]
    return [] if teacher is None else [teacher] if isinstance(teacher, str) else list(teacher)


def fold_teachers(cfg: dict, fold: int) -> Optional[list[str]]:
    """``distill.teacher`` for fold ``fold`` of a cross-validation: a teacher that is itself a cross-validation
    (a ``medmamba cv`` output folder) gives its run of the same fold, the only one trained on this fold's
    train split."""
    runs = [str(RunDir(run).fold(fold).root) if RunDir(run).fold(fold).is_run() else run for run in teacher_runs(cfg)]
    return runs or None


def distillation_loss(student: torch.Tensor, teacher_probs: torch.Tensor, kind: str, temperature: float,
                      multi_label: bool = False) -> torch.Tensor:
    """The teacher's term for a batch of student logits, given the teachers' (tempered, for soft)
    probabilities."""
    student = student.float()
    if multi_label:  # per class, as binary problems
        target = teacher_probs if kind == "soft" else (teacher_probs >= 0.5).float()
        scale = temperature ** 2 if kind == "soft" else 1.0
        t = temperature if kind == "soft" else 1.0
        return scale * F.binary_cross_entropy_with_logits(student / t, target)
    if kind == "hard":
        return F.cross_entropy(student, teacher_probs.argmax(1))
    log_student = F.log_softmax(student / temperature, dim=1)
    return temperature ** 2 * F.kl_div(log_student, teacher_probs, reduction="batchmean")


class Teacher:
    """Frozen models whose averaged outputs on a batch become the student's second target."""

    def __init__(self, models: Sequence[torch.nn.Module], kind: str = "soft", temperature: float = 1.0,
                 alpha: float = 0.5, multi_label: bool = False):
        self.models = [m.eval().requires_grad_(False) for m in models]
        self.kind, self.temperature, self.alpha, self.multi_label = kind, temperature, alpha, multi_label

    @classmethod
    def from_config(cls, cfg: dict, data, device) -> Optional["Teacher"]:
        """The configured teachers, each checked against this run's data and train split; None without one."""
        from ..data.record import check_split_record
        from ..evaluation.runs import load_run
        runs = teacher_runs(cfg)
        if not runs:
            return None
        models = []
        for run in runs:
            where = f"distill.teacher {run}"
            if not RunDir(run).is_run() or not RunDir(run).split.is_file():
                raise MedMambaError(f"{where}: not a finished training run folder (no config.yaml and split.json)")
            loaded = load_run(run, splits=())
            try:
                check_split_record(loaded.split_record, cfg, data, source=RunDir(run).split)
            except MedMambaError as e:
                raise MedMambaError(f"{where} was trained on other data: {e}") from None
            card, d = loaded.card, cfg["data"]
            ours = dict(classes=list(data.classes), in_chans=data.channels, img_size=d["img_size"], mean=d["mean"],
                        std=d["std"], normalize=d["normalize"])
            theirs = {k: getattr(card, k) for k in ours}
            differ = [f"{k} {theirs[k]!r} (this run: {ours[k]!r})" for k in ours if theirs[k] != ours[k]]
            if differ:
                raise MedMambaError(f"{where} does not take this run's input or classes: " + ", ".join(differ))
            models.append(loaded.model.to(device))
        d = cfg["distill"]
        return cls(models, d["kind"], d["temperature"], d["alpha"], data.multi_label)

    @torch.no_grad()
    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """The teachers' averaged probabilities on x (tempered for the soft kind)."""
        t = self.temperature if self.kind == "soft" else 1.0
        probs = [torch.sigmoid(m(x).float() / t) if self.multi_label else F.softmax(m(x).float() / t, dim=1)
                 for m in self.models]
        return torch.stack(probs).mean(0)

    def loss(self, student_logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return distillation_loss(student_logits, self.probabilities(x), self.kind, self.temperature,
                                 self.multi_label)
