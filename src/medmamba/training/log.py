"""The per-epoch metrics log of a run: metrics.jsonl (every field), metrics.csv (the scalars), TensorBoard."""
from __future__ import annotations

import csv
import json

from ..artifacts.run_dir import RunDir


class MetricsLog:
    def __init__(self, run: RunDir, tensorboard: bool = False):
        self.run = run
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                pass
            else:
                self.writer = SummaryWriter(str(run.tensorboard))

    def write(self, row: dict):
        with open(self.run.metrics_jsonl, "a") as f:
            f.write(json.dumps(row) + "\n")
        flat = {k: v for k, v in row.items() if not isinstance(v, (dict, list))}
        path = self.run.metrics_csv
        new = not path.exists()
        with open(path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(flat))
            if new:
                w.writeheader()
            w.writerow(flat)
        if self.writer is not None:
            for k, v in flat.items():
                if isinstance(v, (int, float)) and k != "epoch":
                    self.writer.add_scalar(k, v, row["epoch"])
