"""The layout of a training run's output folder, in one place.

    RUN/config.yaml                       the resolved configuration
    RUN/metrics.jsonl, metrics.csv        one row per epoch
    RUN/checkpoints/best/                 model.safetensors + model.json (the model card)
    RUN/checkpoints/last/                 weights, EMA weights, state.pt (optimiser, schedule, RNG) for --resume
    RUN/eval_<split>[_<checkpoint>]/      reports
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

WEIGHTS = "model.safetensors"


@dataclass(frozen=True)
class RunDir:
    root: Path

    def __init__(self, root: str | os.PathLike):
        object.__setattr__(self, "root", Path(root))

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def metrics_jsonl(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def metrics_csv(self) -> Path:
        return self.root / "metrics.csv"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    def checkpoint(self, name: str) -> Path:
        return self.checkpoints / name

    def weights(self, name: str = "best") -> Path:
        return self.checkpoint(name) / WEIGHTS

    def complete_checkpoint(self, name: str) -> Optional[Path]:
        """The complete checkpoint folder ``name`` (it has its state.pt), or the previous one if a swap was
        interrupted between its two renames; None when there is neither."""
        for candidate in (self.checkpoint(name), self.checkpoint(f"{name}.old")):
            if (candidate / "state.pt").is_file():
                return candidate
        return None

    def eval_dir(self, split: str, checkpoint: Optional[str] = None) -> Path:
        return self.root / (f"eval_{split}" if checkpoint is None else f"eval_{split}_{checkpoint}")

    def is_run(self) -> bool:
        return self.config.is_file()

    def is_empty(self) -> bool:
        return not self.root.exists() or not any(self.root.iterdir())
