"""Training: config -> data, model, optimiser, schedule -> epochs with validation, checkpoints, logs.

Exact resume: the shuffling order depends only on (seed, epoch), data loaders draw their seeds from
their own generators, and checkpoints carry every RNG state and the position in the epoch, so a run
resumed from any checkpoint (with num_workers = 0) reproduces the uninterrupted run bit for bit.
"""
from __future__ import annotations

import copy
import csv
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch.utils.data import DataLoader, Sampler

from . import distributed as dist_utils
from .amp import autocast
from .checkpoint import save_weights
from .config import dump_config, load_config
from .data.builder import DataBundle, build_data
from .errors import MedMambaError, TrainingError
from .models.timm_models import TIMM_PREFIX
from .ops.selective_scan import resolve_backend
from .optim import build_optimizer, lr_factor
from .calibration import fit_temperature, nll, single_class_share, threshold_for_sensitivity
from .card import ModelCard, class_index
from .files import atomic_write_text
from .prediction import evaluate, predict_logits, probabilities_from_logits
from .reports import assess, write_report
from .rng import rng_state, seed_everything, set_rng_state
from .run_dir import RunDir
from .runs import build_model


class EpochSampler(Sampler):
    """A permutation fixed by (seed, epoch), this rank's share of it, from a given position on."""

    def __init__(self, n: int, seed: int, epoch: int = 0, start: int = 0):
        self.n, self.seed, self.epoch, self.start = n, seed, epoch, start
        self.rank, self.world = dist_utils.get_rank(), dist_utils.get_world_size()

    def indices(self) -> list[int]:
        perm = np.random.default_rng([self.seed, self.epoch]).permutation(self.n).tolist()
        perm += perm[: (-len(perm)) % self.world]  # equal shares, as DistributedSampler pads
        return perm[self.rank::self.world]

    def __iter__(self):
        return iter(self.indices()[self.start:])

    def __len__(self):
        return len(self.indices()) - self.start


OVERFIT_WINDOW = 5  # epochs of rising validation loss and falling training loss before a warning
OVERFIT_RISE = 0.05  # ... by at least this fraction over the window: a converged model's drift is no overfitting
VAL_LOSS_EPS = 1e-7  # the clipping the validation loss has always had (it chooses checkpoints with monitor=loss)
ONE_CLASS_EPOCHS = 3  # consecutive epochs of one predicted class before a warning (early epochs often do it once)


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
    best_weights: str = "raw"    # "ema" or "raw": which of the two validated better at the best epoch
    best_one_class: bool = False  # the best checkpoint predicts one class for every validation image
    one_class_epochs: int = 0    # consecutive epochs so far whose evaluated model predicted one class
    history: list = None         # (train loss, val loss) per epoch, for the overfitting warning
    warnings: list = None        # what the log and the report must say about this run

    def __post_init__(self):
        self.history = self.history or []
        self.warnings = self.warnings or []


def class_weight_tensor(cfg: dict, data: DataBundle) -> Optional[torch.Tensor]:
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


def _atomic_dir_replace(tmp: Path, final: Path):
    """Swap a freshly written checkpoint folder in: at every instant a complete one exists."""
    old = final.with_name(final.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)


class Trainer:
    def __init__(self, cfg: dict, output: str | os.PathLike, resume: bool = False, overwrite: bool = False,
                 callbacks: Sequence[Callable] = (), progress: bool = True):
        self.cfg, self.output, self.callbacks, self.progress = cfg, Path(output), list(callbacks), progress
        self.run = RunDir(output)
        self.rank, self.world, device = dist_utils.init_from_env()
        self.device = torch.device(cfg["device"]) if cfg["device"] else (
            device or torch.device("cuda" if torch.cuda.is_available() else "cpu"))
        if cfg["threads"]:
            torch.set_num_threads(int(cfg["threads"]))
        if not cfg["model"].startswith(TIMM_PREFIX):
            resolve_backend(cfg["scan_backend"], self.device)  # an unusable backend fails here, not mid-epoch
        self._check_output(resume, overwrite)
        seed_everything(cfg["seed"] + self.rank)
        # The test split is not built here: nothing chosen during training or calibration can see it.
        self.data = build_data(cfg, splits=("train", "val"))
        self.model = self._build_model()
        self.positive = self._operating_point_class()
        if not resume:  # only now that data and model are built: a run that cannot start leaves nothing
            self._create_output()
        self.optimizer = build_optimizer(self.model, cfg)
        bs = cfg["batch_size"]
        n_train = len(self.data.splits["train"])
        self.steps_per_epoch = max(1, math.ceil(math.ceil(n_train / self.world) / bs))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_factor(cfg, self.steps_per_epoch))
        fp16_on_gpu = cfg["amp"] == "fp16" and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=fp16_on_gpu)
        self.ema = None
        if cfg["ema"]:
            from timm.utils import ModelEmaV3
            self.ema = ModelEmaV3(self.model, decay=cfg["ema"], use_warmup=cfg["ema_warmup"])
        weights = class_weight_tensor(cfg, self.data)
        self.class_weights = weights.to(self.device) if weights is not None else None
        self.state = TrainState()
        self.ddp_model = self.model
        if self.world > 1:
            self.ddp_model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if resume:
            self._load_checkpoint()
        self.writer = self._tensorboard()

    # ---- setup -------------------------------------------------------------------------------------------
    def _check_output(self, resume: bool, overwrite: bool):
        if resume:
            if self.run.complete_checkpoint("last") is None:
                raise MedMambaError(f"--resume: no checkpoint in {self.run.checkpoints}")
        elif not self.run.is_empty() and not overwrite:
            raise MedMambaError(f"output folder {self.output} exists and is not empty; pass --overwrite to replace it "
                                f"or --resume to continue it")

    def _create_output(self):
        out = self.output
        if dist_utils.is_main() and out.exists():
            for child in out.iterdir():  # --overwrite: checked in _check_output
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        dist_utils.barrier()
        if dist_utils.is_main():
            out.mkdir(parents=True, exist_ok=True)
            self.run.config.write_text(dump_config(self.cfg))

    def _operating_point_class(self) -> int:
        """The class ``sensitivity`` is about, checked against the data now rather than after training."""
        cfg = self.cfg
        if cfg["sensitivity"] is not None and self.data.task != "binary-class":
            raise MedMambaError(f"sensitivity={cfg['sensitivity']}: an operating point needs a binary task, "
                                f"not {self.data.task}")
        return 1 if cfg["positive_class"] is None else class_index(cfg["positive_class"], self.data.classes)

    def _build_model(self):
        cfg = self.cfg
        model = build_model(cfg, self.data.num_classes, self.data.channels, drop_path_rate=cfg["drop_path_rate"],
                            pretrained=cfg["pretrained"]).to(self.device)
        if self.world > 1:
            model = dist_utils.convert_batchnorm(model, self.device)
        return model

    def _tensorboard(self):
        if not (self.cfg["tensorboard"] and dist_utils.is_main()):
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return None
        return SummaryWriter(str(self.run.tensorboard))

    def _loader(self, epoch: int, start: int) -> DataLoader:
        sampler = EpochSampler(len(self.data.splits["train"]), self.cfg["seed"], epoch, start * self.cfg["batch_size"])
        gen = torch.Generator().manual_seed(self.cfg["seed"] * 1000 + epoch)
        return DataLoader(self.data.splits["train"], batch_size=self.cfg["batch_size"], sampler=sampler,
                          num_workers=self.cfg["data"]["num_workers"], generator=gen, drop_last=False,
                          persistent_workers=False)

    # ---- checkpoints -------------------------------------------------------------------------------------
    def _write_checkpoint(self, name: str, files: Callable[[Path], None]):
        """Rank 0 writes a checkpoint folder through ``files(tmp_dir)`` and swaps it in atomically."""
        if dist_utils.is_main():
            root = self.run.checkpoints
            root.mkdir(parents=True, exist_ok=True)
            tmp = root / f".{name}.tmp"
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir()
            files(tmp)
            _atomic_dir_replace(tmp, root / name)
        dist_utils.barrier()

    def _save_checkpoint(self, name: str = "last"):
        def files(tmp: Path):
            save_weights(self.model, tmp / "model.safetensors")
            if self.ema is not None:
                save_weights(self.ema.module, tmp / "ema.safetensors")
            state = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                     "scaler": self.scaler.state_dict(), "rng": rng_state(), "train": vars(self.state),
                     "world_size": self.world}
            torch.save(state, tmp / "state.pt")
            (tmp / "meta.json").write_text(json.dumps(vars(self.state)))
        self._write_checkpoint(name, files)

    def _load_checkpoint(self):
        ckpt = self.run.complete_checkpoint("last")
        state = torch.load(ckpt / "state.pt", map_location="cpu", weights_only=True)
        if state["world_size"] != self.world:
            raise MedMambaError(f"checkpoint was written with {state['world_size']} processes, resumed with "
                                f"{self.world}: an exact resume needs the same number")
        weights = load_file(str(ckpt / "model.safetensors"))
        self.model.load_state_dict({k: v.to(self.device) for k, v in weights.items()})
        if self.ema is not None:
            self.ema.module.load_state_dict(load_file(str(ckpt / "ema.safetensors")))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.state = TrainState(**state["train"])
        set_rng_state(state["rng"])

    # ---- training ----------------------------------------------------------------------------------------
    def _loss(self, logits, y):
        if self.data.multi_label:
            return F.binary_cross_entropy_with_logits(logits.float(), y.float(), pos_weight=self.class_weights)
        return F.cross_entropy(logits.float(), y, weight=self.class_weights,
                               label_smoothing=self.cfg["label_smoothing"])

    def _mixed_loss(self, x, y):
        """Loss of the model on x, or with mixup (Zhang et al. 2018) the loss of a blend of x with a
        shuffled copy against both label sets in the same proportion; drawn from torch's RNG so a resumed
        run draws the same blends."""
        alpha = self.cfg["mixup"]
        if not alpha:
            with autocast(self.device, self.cfg["amp"]):
                logits = self.ddp_model(x)
            return self._loss(logits, y)
        lam = float(torch.distributions.Beta(alpha, alpha).sample())
        perm = torch.randperm(len(x)).to(x.device)
        with autocast(self.device, self.cfg["amp"]):
            logits = self.ddp_model(lam * x + (1 - lam) * x[perm])
        return lam * self._loss(logits, y) + (1 - lam) * self._loss(logits, y[perm])

    def _train_epoch(self, epoch: int) -> float:
        self.ddp_model.train()
        loader = self._loader(epoch, self.state.step_in_epoch)
        total = self.steps_per_epoch
        bar = None
        if self.progress and dist_utils.is_main():
            from tqdm.auto import tqdm
            bar = tqdm(total=total, initial=self.state.step_in_epoch, desc=f"epoch {epoch + 1}/{self.cfg['epochs']}",
                       leave=False, dynamic_ncols=True)
        for x, y in loader:
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            loss = self._mixed_loss(x, y)
            if not torch.isfinite(loss):
                last = self.run.complete_checkpoint("last")
                raise TrainingError(f"loss is {loss.item()} at epoch {epoch + 1}, step {self.state.step_in_epoch + 1}; "
                                    f"stopped. Last good checkpoint: {last or 'none yet'}")
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if self.cfg["clip_grad"]:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg["clip_grad"])
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            self.state.step_in_epoch += 1
            self.state.global_step += 1
            if self.ema is not None:
                # With warm-up the decay grows with the step (1 - (1 + step)^(-2/3), up to cfg ema).
                self.ema.update(self.model, step=self.state.global_step if self.cfg["ema_warmup"] else None)
            self.state.loss_sum += loss.item() * len(x)
            self.state.loss_count += len(x)
            if bar is not None:
                bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{max(self.scheduler.get_last_lr()):.2e}")
                bar.update(1)
            every = self.cfg["save_every_steps"]
            if every and self.state.global_step % every == 0:
                self._save_checkpoint("last")
            for cb in self.callbacks:
                cb(self)
        if bar is not None:
            bar.close()
        mean = self.state.loss_sum / max(self.state.loss_count, 1)
        self.state.loss_sum, self.state.loss_count = 0.0, 0
        return dist_utils.all_reduce_mean(mean)

    def candidates(self) -> dict[str, torch.nn.Module]:
        """The weights validated at each epoch: the EMA (when on) and the raw ones; the better is kept."""
        return {"ema": self.ema.module, "raw": self.model} if self.ema is not None else {"raw": self.model}

    def validate(self, model: Optional[torch.nn.Module] = None):
        metrics, labels, probs = evaluate(model or self.model, self.data.splits["val"], self.data.task,
                                          self.data.classes, self.cfg["eval_batch_size"], self.device,
                                          self.cfg["amp"], tta=self.cfg["tta"])
        metrics["loss"] = nll(labels, probs, self.data.multi_label, eps=VAL_LOSS_EPS)
        metrics["single_class_share"] = single_class_share(probs, self.data.multi_label)
        return metrics

    def _value(self, metrics: dict) -> float:
        monitor = self.cfg["monitor"]
        return metrics[monitor] if monitor in metrics else metrics["medmnist"][monitor]

    def _better(self, a: float, b: Optional[float]) -> bool:
        """Is ``a`` better than ``b`` for the monitored metric (NaN never is)."""
        if math.isnan(a):
            return False
        if b is None or math.isnan(b):
            return True
        return a < b if self.cfg["monitor"] == "loss" else a > b

    def _warn(self, message: str):
        self.state.warnings.append(message)
        if dist_utils.is_main():
            print(f"warning: {message}", flush=True)

    def _watch(self, epoch: int, chosen: str, val: dict, train_loss: float):
        """Warnings a user must not miss: a model that predicts one class for every validation image, and
        validation loss rising for OVERFIT_WINDOW epochs while training loss falls."""
        one_class = val["single_class_share"] == 1.0
        self.state.one_class_epochs = self.state.one_class_epochs + 1 if one_class else 0
        if self.state.one_class_epochs == ONE_CLASS_EPOCHS:
            self._warn(f"one class for every validation image: in epochs {epoch - ONE_CLASS_EPOCHS + 1}-{epoch} the "
                       f"evaluated weights predicted the same class for all {len(self.data.splits['val'])} validation "
                       f"images (a collapsed model, or an EMA still dominated by its initialisation)")
        self.state.history.append((train_loss, val["loss"]))
        h = self.state.history[-(OVERFIT_WINDOW + 1):]
        if len(h) == OVERFIT_WINDOW + 1 and not any(w.startswith("overfitting") for w in self.state.warnings):
            val_rising = all(b[1] > a[1] for a, b in zip(h, h[1:])) and h[-1][1] >= (1 + OVERFIT_RISE) * h[0][1]
            if val_rising and h[-1][0] < h[0][0]:
                self._warn(f"overfitting: validation loss rose in each of epochs {epoch - OVERFIT_WINDOW + 1}-{epoch} "
                           f"({h[0][1]:.4f} -> {h[-1][1]:.4f}) while training loss fell ({h[0][0]:.4f} -> "
                           f"{h[-1][0]:.4f}); consider fewer epochs, more augmentation or early_stopping")

    def _improved(self, value: float) -> bool:
        return self._better(value, self.state.best)

    def _log(self, row: dict):
        if not dist_utils.is_main():
            return
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

    def fit(self) -> dict:
        cfg = self.cfg
        monitor = cfg["monitor"]
        while self.state.epoch < cfg["epochs"]:
            epoch = self.state.epoch
            t0 = time.time()
            train_loss = self._train_epoch(epoch)
            vals = {name: self.validate(model) for name, model in self.candidates().items()}
            chosen = "ema" if "ema" in vals and not self._better(self._value(vals["raw"]), self._value(vals["ema"])) \
                else "raw"
            val = vals[chosen]
            value = self._value(val)
            self.state.epoch += 1
            self.state.step_in_epoch = 0
            improved = self._improved(value)
            if improved:
                self.state.best, self.state.best_epoch, self.state.bad_epochs = value, epoch + 1, 0
                self.state.best_weights = chosen
                self.state.best_one_class = val["single_class_share"] == 1.0
            else:
                self.state.bad_epochs += 1
            self._watch(epoch + 1, chosen, val, train_loss)
            row = {"epoch": epoch + 1, "train_loss": train_loss, "lr": max(self.scheduler.get_last_lr()),
                   "val_loss": val["loss"], "val_acc": val["accuracy"], "val_auc": val["auc"], "val_f1": val["f1"],
                   "val_sensitivity": val["sensitivity"], "val_specificity": val["specificity"], "weights": chosen,
                   **{f"val_{monitor}_{name}": self._value(v) for name, v in vals.items() if len(vals) > 1},
                   "best_epoch": self.state.best_epoch, "seconds": time.time() - t0}
            self._log(row)
            if improved:
                self._save_best(self.candidates()[chosen])
            self._save_checkpoint("last")
            if dist_utils.is_main() and self.progress:
                print(f"epoch {epoch + 1:>3}/{cfg['epochs']}  train loss {train_loss:.4f}  val loss {val['loss']:.4f}  "
                      f"acc {val['accuracy']:.4f}  auc {val['auc']:.4f}" + (f"  ({chosen})" if self.ema else "")
                      + ("  *best" if improved else ""), flush=True)
            patience = cfg["early_stopping"]
            if patience and self.state.bad_epochs >= patience:
                if dist_utils.is_main() and self.progress:
                    print(f"early stopping: no {monitor} improvement in {patience} epochs", flush=True)
                break
        if self.state.best_one_class:
            self._warn(f"the kept checkpoint (epoch {self.state.best_epoch}) predicts one class for every validation "
                       f"image")
        return {"best": self.state.best, "best_epoch": self.state.best_epoch, "epochs": self.state.epoch}

    def _save_best(self, model: torch.nn.Module):
        def files(tmp: Path):
            save_weights(model, tmp / "model.safetensors")
            (tmp / "model.json").write_text(self.model_card().to_json())
        self._write_checkpoint("best", files)

    def model_card(self) -> ModelCard:
        """Enough to rebuild the model and its data handling for evaluation and prediction."""
        d = self.cfg["data"]
        return ModelCard(model=self.cfg["model"], model_args=self.cfg["model_args"], num_classes=self.data.num_classes,
                         in_chans=self.data.channels, classes=list(self.data.classes), task=self.data.task,
                         img_size=d["img_size"], mean=d["mean"], std=d["std"], dataset=self.data.name,
                         tta=self.cfg["tta"], epoch=self.state.best_epoch, monitor=self.cfg["monitor"],
                         value=self.state.best, weights=self.state.best_weights)

    def best_model(self) -> torch.nn.Module:
        """A copy of the model holding the best checkpoint's weights (training state left untouched)."""
        model = copy.deepcopy(self.model).eval()
        best = self.run.weights("best")
        if best.is_file():
            model.load_state_dict(load_file(str(best)))
        return model

    def calibrate(self, model: torch.nn.Module) -> ModelCard:
        """Fit the temperature and, with ``sensitivity``, the binary threshold on the validation split; write
        them into the best checkpoint's model card. Only validation images are seen here."""
        cfg, data = self.cfg, self.data
        card = self.model_card()
        labels, logits = predict_logits(model, data.splits["val"], cfg["eval_batch_size"], self.device, cfg["amp"],
                                        tta=cfg["tta"])
        if cfg["calibrate"]:
            card.temperature = fit_temperature(logits, labels, data.multi_label)
        if cfg["sensitivity"] is not None:
            probs = probabilities_from_logits(torch.from_numpy(logits), False, card.temperature).numpy()
            card.threshold = threshold_for_sensitivity(labels, probs, cfg["sensitivity"], self.positive)
        if cfg["sensitivity"] is not None or cfg["positive_class"] is not None:
            card.positive_class = self.positive  # evaluate reports this class's sensitivity and specificity too
        if dist_utils.is_main() and self.run.weights("best").is_file():
            atomic_write_text(self.run.checkpoint("best") / "model.json", card.to_json())
        return card

    def test(self, split: str = "test") -> tuple[dict, dict]:
        """Calibrate the best checkpoint on validation, then (and only then) build ``split`` and evaluate it
        there; the report goes to output/eval_<split>."""
        model = self.best_model()
        card = self.calibrate(model)
        cfg = self.cfg
        dataset = self.data.splits[split] if split in self.data.splits else \
            build_data(cfg, splits=(split,)).splits[split]
        labels, logits = predict_logits(model, dataset, cfg["eval_batch_size"], self.device, cfg["amp"],
                                        tta=cfg["tta"])
        ml = self.data.multi_label
        probs = probabilities_from_logits(torch.from_numpy(logits), ml, card.temperature).numpy()
        plain = probabilities_from_logits(torch.from_numpy(logits), ml).numpy()
        warnings = list(self.state.warnings)
        share = single_class_share(probs, ml)
        if share == 1.0:
            warnings.append(f"the evaluated model predicts one class for every {split} image")
        report = assess(labels, probs, self.data.task, self.data.classes, uncalibrated=plain,
                        temperature=card.temperature, threshold=card.threshold,
                        positive=self.positive,
                        n_resamples=cfg["bootstrap"], seed=cfg["seed"], warnings=warnings)
        paths = {}
        if dist_utils.is_main():
            paths = write_report(self.run.eval_dir(split), report, labels, probs, self.data.classes,
                                 f"{cfg['model']} on {self.data.name} ({split}), best epoch {self.state.best_epoch} "
                                 f"({self.state.best_weights} weights)", self.data.name,
                                 extra={"checkpoint": str(self.run.weights("best")), "split": split, "tta": cfg["tta"]})
        return report, paths


def train(cfg: dict | str | None = None, output: str | os.PathLike = "runs/medmamba", overrides=(), resume=False,
          overwrite=False, callbacks=(), progress=True, test_split: Optional[str] = "test"):
    """Library entry point: train, then evaluate the best checkpoint on ``test_split``."""
    if resume:
        cfg = load_config(RunDir(output).config, overrides)
    elif not isinstance(cfg, dict):
        cfg = load_config(cfg, overrides)
    trainer = Trainer(cfg, output, resume=resume, overwrite=overwrite, callbacks=callbacks, progress=progress)
    summary = trainer.fit()
    result = {"summary": summary, "trainer": trainer}
    if test_split:
        assessment, result["report"] = trainer.test(test_split)
        result["test"], result["assessment"] = assessment["metrics"], assessment
    return result
