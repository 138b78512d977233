"""Where a training run stands: saved in every checkpoint so that a resumed run goes on exactly."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class TrainState:
    epoch: int = 0               # epochs completed
    step_in_epoch: int = 0       # optimiser steps done in the current epoch
    global_step: int = 0
    best: Optional[float] = None
    best_epoch: int = -1
    bad_epochs: int = 0
    loss_sum: float = 0.0        # this epoch's training loss so far, so a resumed epoch reports it whole
    loss_count: int = 0
    best_weights: str = "raw"    # "ema" or "raw" (which validated better at the best epoch), or "swa"
    best_one_class: bool = False  # the best checkpoint predicts one class for every validation image
    one_class_epochs: int = 0    # consecutive epochs so far whose evaluated model predicted one class
    history: list = field(default_factory=list)   # (train loss, val loss) per epoch, for the overfitting warning
    warnings: list = field(default_factory=list)  # what the log and the report must say about this run

    def __post_init__(self):
        self.history = self.history or []  # checkpoints written before these were lists saved None
        self.warnings = self.warnings or []
