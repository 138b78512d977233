"""The layout of a training run's output folder: every file name of a run is spelled here and nowhere else.

    RUN/config.yaml                       the resolved configuration
    RUN/metrics.jsonl, metrics.csv        one row per epoch (RUN/tensorboard/ with tensorboard: true)
    RUN/checkpoints/best/                 model.safetensors + model.json (the model card) + ood.safetensors
    RUN/split.json                        which image went to which split, and the data file's checksum
    RUN/checkpoints/last/                 model.safetensors, ema.safetensors, state.pt (optimiser, schedule,
                                          RNG), meta.json: what --resume needs
    RUN/eval_<split>[_<checkpoint>]/      report.json, report.md, predictions.csv and the plots
    RUN/fold<i>/, cv.json, cv.md          cross-validation: a run folder per fold and their summary
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

WEIGHTS = "model.safetensors"
EMA_WEIGHTS = "ema.safetensors"
CARD = "model.json"
OOD_FEATURES = "ood.safetensors"  # beside the weights: the training images' features the OOD score needs
STATE = "state.pt"
META = "meta.json"
CONFIG = "config.yaml"
SPLIT = "split.json"
CHECKPOINTS = "checkpoints"
OLD_SUFFIX = ".old"  # a checkpoint folder being replaced keeps this name until the new one is in place

# The files of a report folder (written by evaluation.reports.write_report).
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
PREDICTIONS = "predictions.csv"
ROC_PNG = "roc.png"
RELIABILITY_PNG = "reliability.png"
CONFUSION_PNG = "confusion_matrix.png"
RISK_COVERAGE_PNG = "risk_coverage.png"
ERRORS_PNG = "errors.png"
COMPARE_JSON = "compare.json"
COMPARE_MD = "compare.md"
CV_JSON = "cv.json"
CV_MD = "cv.md"


@dataclass(frozen=True)
class RunDir:
    root: Path

    def __init__(self, root: str | os.PathLike):
        object.__setattr__(self, "root", Path(root))

    @classmethod
    def of_weights(cls, weights: str | os.PathLike) -> Optional["RunDir"]:
        """The run a weights file belongs to (RUN/checkpoints/<name>/model.safetensors), or None when it is
        not inside a run folder."""
        checkpoints = Path(weights).resolve().parent.parent
        run = cls(checkpoints.parent)
        return run if checkpoints.name == CHECKPOINTS and run.is_run() else None

    @property
    def config(self) -> Path:
        return self.root / CONFIG

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINTS

    @property
    def metrics_jsonl(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def metrics_csv(self) -> Path:
        return self.root / "metrics.csv"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def split(self) -> Path:
        return self.root / SPLIT

    def checkpoint(self, name: str) -> Path:
        return self.checkpoints / name

    def weights(self, name: str = "best") -> Path:
        return self.checkpoint(name) / WEIGHTS

    def ema_weights(self, name: str = "last") -> Path:
        return self.checkpoint(name) / EMA_WEIGHTS

    def card(self, name: str = "best") -> Path:
        return self.checkpoint(name) / CARD

    def ood_features(self, name: str = "best") -> Path:
        return self.checkpoint(name) / OOD_FEATURES

    def state(self, name: str = "last") -> Path:
        return self.checkpoint(name) / STATE

    def complete_checkpoint(self, name: str) -> Optional[Path]:
        """The complete checkpoint folder ``name`` (it has its state.pt), or the previous one if a swap was
        interrupted between its two renames; None when there is neither."""
        for candidate in (self.checkpoint(name), self.checkpoint(name + OLD_SUFFIX)):
            if (candidate / STATE).is_file():
                return candidate
        return None

    def eval_dir(self, split: str, checkpoint: Optional[str] = None) -> Path:
        return self.root / (f"eval_{split}" if checkpoint is None else f"eval_{split}_{checkpoint}")

    def report(self, split: str = "test", checkpoint: Optional[str] = None) -> Path:
        return self.eval_dir(split, checkpoint) / REPORT_JSON

    def fold(self, index: int) -> "RunDir":
        return RunDir(self.root / f"fold{index}")

    def is_run(self) -> bool:
        return self.config.is_file()
