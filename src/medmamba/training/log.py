"""The per-epoch metrics log of a run: metrics.jsonl (every field), metrics.csv (the scalars), TensorBoard."""
from __future__ import annotations

import csv
import json

from ..artifacts.run_dir import RunDir


class MetricsLog:
    def __init__(self, run: RunDir, tensorboard: bool = False, epochs: int = 0, show: bool = True):
        self.run, self.epochs, self.show = run, epochs, show
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                pass
            else:
                self.writer = SummaryWriter(str(run.tensorboard))

    def epoch(self, epoch: int, train_loss: float, lr: float, val: dict, chosen: str, monitored: dict[str, float],
              monitor: str, best_epoch: int, seconds: float):
        """One epoch's row: training loss, learning rate, the validation figures of the kept candidate
        (``chosen``) and, when there are several (EMA and raw), each one's ``monitored`` figure; and its line
        on the screen."""
        self.write({"epoch": epoch, "train_loss": train_loss, "lr": lr, "val_loss": val["loss"],
                    "val_acc": val["accuracy"], "val_auc": val["auc"], "val_f1": val["f1"],
                    "val_sensitivity": val["sensitivity"], "val_specificity": val["specificity"], "weights": chosen,
                    **{f"val_{monitor}_{name}": v for name, v in monitored.items() if len(monitored) > 1},
                    "best_epoch": best_epoch, "seconds": seconds})
        if self.show:
            print(f"epoch {epoch:>3}/{self.epochs}  train loss {train_loss:.4f}  val loss {val['loss']:.4f}  "
                  f"acc {val['accuracy']:.4f}  auc {val['auc']:.4f}" + (f"  ({chosen})" if len(monitored) > 1 else "")
                  + ("  *best" if best_epoch == epoch else ""), flush=True)

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
