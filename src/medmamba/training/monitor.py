"""What a training run watches at each validation: which weights to keep (the monitored metric), and the
warnings a user must not miss (a collapsed model, overfitting)."""
from __future__ import annotations

import math
from typing import Callable, Optional

from .state import TrainState

OVERFIT_WINDOW = 5  # epochs of rising validation loss and falling training loss before a warning
OVERFIT_RISE = 0.05  # ... by at least this fraction over the window: a converged model's drift is no overfitting
ONE_CLASS_EPOCHS = 3  # consecutive epochs of one predicted class before a warning (early epochs often do it once)


class CheckpointChoice:
    """The monitored validation metric (``loss`` is lower-is-better, any other higher-is-better)."""

    def __init__(self, monitor: str):
        self.monitor = monitor

    def value(self, metrics: dict) -> float:
        return metrics[self.monitor] if self.monitor in metrics else metrics["medmnist"][self.monitor]

    def better(self, a: float, b: Optional[float]) -> bool:
        """Is ``a`` better than ``b`` (NaN never is)."""
        if math.isnan(a):
            return False
        if b is None or math.isnan(b):
            return True
        return a < b if self.monitor == "loss" else a > b

    def update(self, state: TrainState, epoch: int, vals: dict[str, dict]) -> tuple[str, bool]:
        """After validating ``epoch`` (1-based): which candidate is kept and whether it beats the best so far,
        recorded in ``state`` (best value, epoch, weights; epochs without improvement)."""
        chosen = self.pick(vals)
        val = vals[chosen]
        value = self.value(val)
        improved = self.better(value, state.best)
        if improved:
            state.best, state.best_epoch, state.bad_epochs, state.best_weights = value, epoch, 0, chosen
            state.best_one_class = val["single_class_share"] == 1.0
        else:
            state.bad_epochs += 1
        return chosen, improved

    def pick(self, vals: dict[str, dict]) -> str:
        """Of the validated candidates ("ema", "raw"), the one to keep: the EMA unless the raw weights are better."""
        if "ema" in vals and not self.better(self.value(vals["raw"]), self.value(vals["ema"])):
            return "ema"
        return "raw"


class WarningMonitor:
    """Warnings kept in the run's state (so a resumed run still reports them) and shown through ``emit``."""

    def __init__(self, state: TrainState, n_val: int, emit: Optional[Callable[[str], None]] = None, first=()):
        """``first``: warnings known before training (the look at the data)."""
        self.state, self.n_val, self.emit = state, n_val, emit
        for message in first:
            self.warn(message)

    def warn(self, message: str):
        self.state.warnings.append(message)
        if self.emit is not None:
            self.emit(f"warning: {message}")

    def epoch(self, epoch: int, val: dict, train_loss: float):
        """After validating ``epoch`` (1-based): a model that predicts one class for every validation image for
        ONE_CLASS_EPOCHS epochs; validation loss rising for OVERFIT_WINDOW epochs while training loss falls."""
        state = self.state
        state.one_class_epochs = state.one_class_epochs + 1 if val["single_class_share"] == 1.0 else 0
        if state.one_class_epochs == ONE_CLASS_EPOCHS:
            self.warn(f"one class for every validation image: in epochs {epoch - ONE_CLASS_EPOCHS + 1}-{epoch} the "
                      f"evaluated weights predicted the same class for all {self.n_val} validation "
                      f"images (a collapsed model, or an EMA still dominated by its initialisation)")
        state.history.append((train_loss, val["loss"]))
        h = state.history[-(OVERFIT_WINDOW + 1):]
        if len(h) == OVERFIT_WINDOW + 1 and not any(w.startswith("overfitting") for w in state.warnings):
            val_rising = all(b[1] > a[1] for a, b in zip(h, h[1:])) and h[-1][1] >= (1 + OVERFIT_RISE) * h[0][1]
            if val_rising and h[-1][0] < h[0][0]:
                self.warn(f"overfitting: validation loss rose in each of epochs {epoch - OVERFIT_WINDOW + 1}-{epoch} "
                          f"({h[0][1]:.4f} -> {h[-1][1]:.4f}) while training loss fell ({h[0][0]:.4f} -> "
                          f"{h[-1][0]:.4f}); consider fewer epochs, more augmentation or early_stopping")

    def end(self):
        if self.state.best_one_class:
            self.warn(f"the kept checkpoint (epoch {self.state.best_epoch}) predicts one class for every validation "
                      f"image")
