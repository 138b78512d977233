"""Training: config -> data, model, optimiser, schedule -> epochs with validation, checkpoints, logs.

Exact resume: the shuffling order depends only on (seed, epoch), data loaders draw their seeds from
their own generators, and checkpoints carry every RNG state and the position in the epoch, so a run
resumed from any checkpoint (with num_workers = 0) reproduces the uninterrupted run bit for bit.
"""
from __future__ import annotations

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
from .card import ModelCard
from .checkpoint import save_weights
from .config import dump_config, load_config
from .data.builder import DataBundle, build_data
from .errors import MedMambaError, TrainingError
from .models.timm_models import TIMM_PREFIX
from .ops.selective_scan import resolve_backend
from .optim import build_optimizer, lr_factor
from .prediction import evaluate
from .reports import write_report
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


class ModelEma:
    """Exponential moving average of the weights (buffers copied), evaluated in place of the model."""

    def __init__(self, model: torch.nn.Module, decay: float):
        import copy
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module):
        for ema_v, v in zip(self.module.state_dict().values(), model.state_dict().values()):
            if ema_v.dtype.is_floating_point:
                ema_v.lerp_(v.detach(), 1.0 - self.decay)
            else:
                ema_v.copy_(v)


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
        self.data = build_data(cfg)
        self.model = self._build_model()
        if not resume:  # only now that data and model are built: a run that cannot start leaves nothing
            self._create_output()
        self.optimizer = build_optimizer(self.model, cfg)
        bs = cfg["batch_size"]
        n_train = len(self.data.splits["train"])
        self.steps_per_epoch = max(1, math.ceil(math.ceil(n_train / self.world) / bs))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_factor(cfg, self.steps_per_epoch))
        fp16_on_gpu = cfg["amp"] == "fp16" and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=fp16_on_gpu)
        self.ema = ModelEma(self.model, cfg["ema"]) if cfg["ema"] else None
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
            if self.ema is not None:
                self.ema.update(self.model)
            self.state.step_in_epoch += 1
            self.state.global_step += 1
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

    def eval_model(self):
        return self.ema.module if self.ema is not None else self.model

    def validate(self):
        metrics, labels, probs = evaluate(self.eval_model(), self.data.splits["val"], self.data.task,
                                          self.data.classes, self.cfg["eval_batch_size"], self.device,
                                          self.cfg["amp"], tta=self.cfg["tta"])
        metrics["loss"] = float(_nll(labels, probs, self.data.multi_label))
        return metrics

    def _improved(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.state.best is None:
            return True
        return value < self.state.best if self.cfg["monitor"] == "loss" else value > self.state.best

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
            val = self.validate()
            value = val[monitor] if monitor in val else val["medmnist"][monitor]
            self.state.epoch += 1
            self.state.step_in_epoch = 0
            improved = self._improved(value)
            if improved:
                self.state.best, self.state.best_epoch, self.state.bad_epochs = value, epoch + 1, 0
            else:
                self.state.bad_epochs += 1
            row = {"epoch": epoch + 1, "train_loss": train_loss, "lr": max(self.scheduler.get_last_lr()),
                   "val_loss": val["loss"], "val_acc": val["accuracy"], "val_auc": val["auc"], "val_f1": val["f1"],
                   "val_sensitivity": val["sensitivity"], "val_specificity": val["specificity"],
                   "best_epoch": self.state.best_epoch, "seconds": time.time() - t0}
            self._log(row)
            if improved:
                self._save_best()
            self._save_checkpoint("last")
            if dist_utils.is_main() and self.progress:
                print(f"epoch {epoch + 1:>3}/{cfg['epochs']}  train loss {train_loss:.4f}  val loss {val['loss']:.4f}  "
                      f"acc {val['accuracy']:.4f}  auc {val['auc']:.4f}{'  *best' if improved else ''}", flush=True)
            patience = cfg["early_stopping"]
            if patience and self.state.bad_epochs >= patience:
                if dist_utils.is_main() and self.progress:
                    print(f"early stopping: no {monitor} improvement in {patience} epochs", flush=True)
                break
        return {"best": self.state.best, "best_epoch": self.state.best_epoch, "epochs": self.state.epoch}

    def _save_best(self):
        def files(tmp: Path):
            save_weights(self.eval_model(), tmp / "model.safetensors")
            (tmp / "model.json").write_text(self.model_card().to_json())
        self._write_checkpoint("best", files)

    def model_card(self) -> ModelCard:
        """Enough to rebuild the model and its data handling for evaluation and prediction."""
        d = self.cfg["data"]
        return ModelCard(model=self.cfg["model"], model_args=self.cfg["model_args"], num_classes=self.data.num_classes,
                         in_chans=self.data.channels, classes=list(self.data.classes), task=self.data.task,
                         img_size=d["img_size"], mean=d["mean"], std=d["std"], dataset=self.data.name,
                         tta=self.cfg["tta"], epoch=self.state.best_epoch, monitor=self.cfg["monitor"],
                         value=self.state.best)

    def test(self, split: str = "test") -> tuple[dict, dict]:
        """Evaluate the best checkpoint on ``split``; write the report under output/eval_<split>."""
        best = self.run.weights("best")
        model = self.eval_model()
        if best.is_file():
            model.load_state_dict(load_file(str(best)))
        metrics, labels, probs = evaluate(model, self.data.splits[split], self.data.task, self.data.classes,
                                          self.cfg["eval_batch_size"], self.device, self.cfg["amp"],
                                          tta=self.cfg["tta"])
        paths = {}
        if dist_utils.is_main():
            paths = write_report(self.run.eval_dir(split), metrics, labels, probs, self.data.classes,
                                 f"{self.cfg['model']} on {self.data.name} ({split}), best epoch "
                                 f"{self.state.best_epoch}", self.data.name,
                                 extra={"checkpoint": str(best), "split": split, "tta": self.cfg["tta"]})
        return metrics, paths


def _nll(labels, probs, multi_label):
    eps = 1e-7
    p = np.clip(probs, eps, 1 - eps)
    if multi_label:
        return float(-(labels * np.log(p) + (1 - labels) * np.log(1 - p)).mean())
    return float(-np.log(p[np.arange(len(labels)), labels.astype(int)]).mean())


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
        result["test"], result["report"] = trainer.test(test_split)
    return result
