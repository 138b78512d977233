"""Training: config -> data, model, optimiser, schedule -> epochs with validation, checkpoints, logs -> test.

Exact resume: the shuffling order depends only on (seed, epoch), data loaders draw their seeds from
their own generators, and checkpoints carry every RNG state and the position in the epoch, so a run
resumed from any checkpoint (with num_workers = 0) reproduces the uninterrupted run bit for bit.
"""
from __future__ import annotations

import copy
import json
import math
import os
import shutil
import time
from functools import cached_property, partial
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from .. import distributed as dist_utils
from ..artifacts.card import ModelCard, class_index, write_card
from ..artifacts.checkpoint import (read_state_dict, restore_training_checkpoint, save_best_checkpoint,
                                    save_training_checkpoint)
from ..artifacts.run_dir import RunDir
from ..config import dump_config, load_config, with_family_defaults
from ..data.builder import build_data
from ..errors import DataError, MedMambaError, TrainingError
from ..evaluation.calibration import calibrate_card, nll, single_class_share
from ..evaluation.evaluate import Evaluation, evaluate
from ..evaluation.prediction import predict
from ..evaluation.runs import LoadedRun, build_model
from ..files import atomic_write_text, refuse_existing
from ..models.timm_models import TIMM_PREFIX
from ..ops.selective_scan import resolve_backend
from .log import MetricsLog
from .distill import Teacher, teacher_runs
from .loss import TrainingLoss
from .monitor import CheckpointChoice, WarningMonitor
from .optim import build_optimisation
from .rng import rng_state, seed_everything, set_rng_state
from .state import TrainState

VAL_LOSS_EPS = 1e-7  # the clipping the validation loss has always had (it chooses checkpoints with monitor=loss)


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


def epoch_loader(dataset, cfg: dict, epoch: int, start_step: int) -> DataLoader:
    """The training batches of ``epoch`` from optimiser step ``start_step`` on (a resumed epoch)."""
    sampler = EpochSampler(len(dataset), cfg["seed"], epoch, start_step * cfg["batch_size"])
    gen = torch.Generator().manual_seed(cfg["seed"] * 1000 + epoch)
    return DataLoader(dataset, batch_size=cfg["batch_size"], sampler=sampler, num_workers=cfg["data"]["num_workers"],
                      generator=gen, drop_last=False, persistent_workers=False)


def epoch_bar(total: int, done: int, epoch: int, epochs: int, show: bool):
    if not show:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=done, leave=False, dynamic_ncols=True, desc=f"epoch {epoch + 1}/{epochs}")


def validation_metrics(model, dataset, data, cfg: dict, device) -> dict:
    """The paper's metrics of ``model`` on the validation split, its loss and the share of its commonest class."""
    from ..evaluation.metrics import classification_metrics  # scikit-learn: loaded when first needed
    labels, probs = predict(model, dataset, cfg["eval_batch_size"], device, cfg["amp"], data.multi_label,
                            tta=cfg["tta"])
    metrics = classification_metrics(labels, probs, data.task, data.classes)
    metrics["loss"] = nll(labels, probs, data.multi_label, eps=VAL_LOSS_EPS)
    metrics["single_class_share"] = single_class_share(probs, data.multi_label)
    return metrics


def check_output(run: RunDir, resume: bool, overwrite: bool):
    """Before anything is built: a new run's folder must be free (or --overwrite given), a resumed one must hold
    a complete last checkpoint."""
    if resume:
        if run.complete_checkpoint("last") is None:
            raise MedMambaError(f"--resume: no checkpoint in {run.checkpoints}")
    else:
        refuse_existing(run.root, overwrite=overwrite, alternative="--resume to continue it")


def start_output(run: RunDir, cfg: dict):
    """Once data and model are built (so a run that cannot start leaves nothing behind): empty the folder
    (--overwrite was checked by ``check_output``) and write the configuration (rank 0)."""
    if dist_utils.is_main() and run.root.exists():
        for child in run.root.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    dist_utils.barrier()
    if dist_utils.is_main():
        run.root.mkdir(parents=True, exist_ok=True)
        run.config.write_text(dump_config(cfg))


def record_split(run: RunDir, cfg: dict, data):
    """Add the splits ``data`` holds to the run's split.json (rank 0)."""
    if dist_utils.is_main():
        from ..data.record import split_record
        before = json.loads(run.split.read_text()) if run.split.is_file() else None
        atomic_write_text(run.split, json.dumps(split_record(cfg, data, before), indent=1))


def prepared_data(cfg: dict, show: bool = False):
    """(train and val splits, the look at every split's images): each image is opened once first, and the
    unreadable ones are left out (or, with data.unreadable=refuse, the run refused) before anything is
    written. The test split's pixels are read for that look only; its labels and the model never meet here."""
    from ..data.folders import subgroup_metadata
    from ..data.look import look_at, look_text
    if cfg["subgroups"]:  # the columns reports will need, checked now rather than after training
        subgroup_metadata(cfg)
    look = look_at(build_data(cfg, augment=False), progress=show)
    if look.unreadable and cfg["data"]["unreadable"] == "refuse":
        raise DataError(f"{len(look.unreadable)} unreadable file(s), and data.unreadable=refuse: "
                        + "; ".join(f"{p}: {why}" for p, why in look.unreadable[:10]))
    if show:
        print(look_text(look, with_warnings=False) + "\n", flush=True)
    return build_data(cfg, splits=("train", "val"), exclude=[p for p, _ in look.unreadable]), look


def say(progress: bool, text: str):
    """Print a line of the run's progress (with ``progress``); warnings always."""
    if progress or text.startswith("warning:"):
        print(text, flush=True)


def operating_point_class(cfg: dict, data) -> int:
    """The class ``sensitivity`` (and a binary report) is about, checked against the data before training."""
    if cfg["sensitivity"] is not None and data.task != "binary-class":
        raise MedMambaError(f"sensitivity={cfg['sensitivity']}: an operating point needs a binary task, "
                            f"not {data.task}")
    return 1 if cfg["positive_class"] is None else class_index(cfg["positive_class"], data.classes)


def model_card(cfg: dict, data, state: TrainState) -> ModelCard:
    """Enough to rebuild the model and its data handling for evaluation and prediction."""
    d = cfg["data"]
    return ModelCard(model=cfg["model"], model_args=cfg["model_args"], num_classes=data.num_classes,
                     in_chans=data.channels, classes=list(data.classes), task=data.task, img_size=d["img_size"],
                     mean=d["mean"], std=d["std"], normalize=d["normalize"], dataset=data.name, tta=cfg["tta"],
                     epoch=state.best_epoch, monitor=cfg["monitor"], value=state.best, weights=state.best_weights,
                     teacher=teacher_runs(cfg) or None)


def training_device(cfg: dict, distributed_device: Optional[torch.device]) -> torch.device:
    if cfg["device"]:
        return torch.device(cfg["device"])
    return distributed_device or torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Trainer:
    def __init__(self, cfg: dict, output: str | os.PathLike, resume: bool = False, overwrite: bool = False,
                 callbacks: Sequence[Callable] = (), progress: bool = True):
        cfg = with_family_defaults(cfg)  # a configuration built by hand: config.yaml names the policy run
        self.cfg, self.run, self.callbacks, self.progress = cfg, RunDir(output), list(callbacks), progress
        self.output = self.run.root
        self.rank, self.world, device = dist_utils.init_from_env()
        self.device = training_device(cfg, device)
        if cfg["threads"]:
            torch.set_num_threads(int(cfg["threads"]))
        if not cfg["model"].startswith(TIMM_PREFIX):
            resolve_backend(cfg["scan_backend"], self.device)  # an unusable backend fails here, not mid-epoch
        check_output(self.run, resume, overwrite)
        if cfg["swa_epochs"] and cfg["swa_epochs"] > cfg["epochs"]:
            raise MedMambaError(f"swa_epochs={cfg['swa_epochs']} is more than epochs={cfg['epochs']}")
        seed_everything(cfg["seed"] + self.rank)
        self.data, self.look = prepared_data(cfg, show=progress and dist_utils.is_main())
        self.model = build_model(cfg, self.data.num_classes, self.data.channels, drop_path_rate=cfg["drop_path_rate"],
                                 pretrained=cfg["pretrained"]).to(self.device)
        if self.world > 1:
            self.model = dist_utils.convert_batchnorm(self.model, self.device)
        self.positive = operating_point_class(cfg, self.data)
        self.teacher = Teacher.from_config(cfg, self.data, self.device)  # refused here, before any file is written
        if not resume:
            start_output(self.run, cfg)
            record_split(self.run, cfg, self.data)
        n_train = len(self.data.splits["train"])
        self.steps_per_epoch = max(1, math.ceil(math.ceil(n_train / self.world) / cfg["batch_size"]))
        self.optimizer, self.scheduler, self.scaler, self.ema = build_optimisation(
            self.model, cfg, self.steps_per_epoch, self.device)
        self.loss = TrainingLoss.from_config(cfg, self.data, self.device, self.teacher)
        self.state = TrainState()
        self.swa = None
        if cfg["swa_epochs"]:
            from torch.optim.swa_utils import AveragedModel
            self.swa = AveragedModel(self.model)
        self.ddp_model = self.model
        if self.world > 1:
            self.ddp_model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if resume:
            self._resume()
        self.choice = CheckpointChoice(cfg["monitor"])
        self.monitor = WarningMonitor(self.state, len(self.data.splits["val"]),
                                      partial(say, progress) if dist_utils.is_main() else None,
                                      first=() if resume else self.look.warnings())
        self.log = MetricsLog(self.run, cfg["tensorboard"], cfg["epochs"], progress) if dist_utils.is_main() else None

    # ---- checkpoints: rank 0 writes, every rank waits ------------------------------------------------------
    def _checkpoint_parts(self) -> dict:
        parts = {"optimizer": self.optimizer, "scheduler": self.scheduler, "scaler": self.scaler}
        return {**parts, "swa": self.swa} if self.swa is not None else parts

    def _save_last(self):
        if dist_utils.is_main():
            save_training_checkpoint(self.run, "last", self.model, self.ema.module if self.ema else None,
                                     self._checkpoint_parts(), vars(self.state),
                                     {"rng": rng_state(), "world_size": self.world})
        dist_utils.barrier()

    def _resume(self):
        state = restore_training_checkpoint(self.run, self.model, self.ema.module if self.ema else None,
                                            self._checkpoint_parts())
        if state["world_size"] != self.world:
            raise MedMambaError(f"checkpoint was written with {state['world_size']} processes, resumed with "
                                f"{self.world}: an exact resume needs the same number")
        self.state = TrainState(**state["train"])
        set_rng_state(state["rng"])

    # ---- training ----------------------------------------------------------------------------------------
    def _step(self, x: torch.Tensor, y: torch.Tensor, epoch: int) -> float:
        loss = self.loss(self.ddp_model, x, y)
        if not torch.isfinite(loss):
            raise TrainingError(f"loss is {loss.item()} at epoch {epoch + 1}, step {self.state.step_in_epoch + 1}; "
                                f"stopped. Last good checkpoint: {self.run.complete_checkpoint('last') or 'none yet'}")
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
        return loss.item()

    def _train_epoch(self, epoch: int) -> float:
        self.ddp_model.train()
        bar = epoch_bar(self.steps_per_epoch, self.state.step_in_epoch, epoch, self.cfg["epochs"],
                        self.progress and dist_utils.is_main())
        for x, y in epoch_loader(self.data.splits["train"], self.cfg, epoch, self.state.step_in_epoch):
            loss = self._step(x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True), epoch)
            if bar is not None:
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{max(self.scheduler.get_last_lr()):.2e}")
                bar.update(1)
            every = self.cfg["save_every_steps"]
            if every and self.state.global_step % every == 0:
                self._save_last()
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

    def _end_epoch(self, epoch: int, train_loss: float, seconds: float) -> bool:
        """Validate, keep the better weights if they improved, log, save; True when early stopping says stop."""
        vals = {name: validation_metrics(model, self.data.splits["val"], self.data, self.cfg, self.device)
                for name, model in self.candidates().items()}
        state = self.state
        state.epoch, state.step_in_epoch = epoch + 1, 0
        chosen, improved = self.choice.update(state, epoch + 1, vals)
        self.monitor.epoch(epoch + 1, vals[chosen], train_loss)
        if self.log is not None:
            self.log.epoch(epoch + 1, train_loss, max(self.scheduler.get_last_lr()), vals[chosen], chosen,
                           {n: self.choice.value(v) for n, v in vals.items()}, self.cfg["monitor"], state.best_epoch,
                           seconds)
        if improved and dist_utils.is_main():
            save_best_checkpoint(self.run, self.candidates()[chosen], model_card(self.cfg, self.data, state))
        self._save_last()  # its barrier also waits for the best checkpoint
        patience = self.cfg["early_stopping"]
        if patience and state.bad_epochs >= patience:
            say(self.progress, f"early stopping: no {self.cfg['monitor']} improvement in {patience} epochs")
            return True
        return False

    def fit(self) -> dict:
        while self.state.epoch < self.cfg["epochs"]:
            epoch, t0 = self.state.epoch, time.time()
            train_loss = self._train_epoch(epoch)
            if self.swa is not None and epoch >= self.cfg["epochs"] - self.cfg["swa_epochs"]:
                self.swa.update_parameters(self.model)
            if self._end_epoch(epoch, train_loss, time.time() - t0):
                break
        if self.swa is not None:
            self._keep_average()
        self.monitor.end()
        return {"best": self.state.best, "best_epoch": self.state.best_epoch, "epochs": self.state.epoch}

    def _keep_average(self):
        """SWA (Izmailov et al. 2018): the average of the last swa_epochs epochs' weights becomes the run's
        model, whatever the validation figures of single epochs, which on a small validation split are
        partly luck; its BatchNorm statistics are recomputed on the (unaugmented) training images."""
        if int(self.swa.n_averaged) == 0:
            say(self.progress, "warning: training stopped before the swa_epochs window; the best epoch is kept")
            return
        from torch.optim.swa_utils import update_bn
        loader = DataLoader(self.plain_train, batch_size=self.cfg["eval_batch_size"], shuffle=False)
        update_bn(loader, self.swa, self.device)
        average = self.swa.module.eval()
        val = validation_metrics(average, self.data.splits["val"], self.data, self.cfg, self.device)
        state = self.state
        state.best, state.best_epoch, state.best_weights = self.choice.value(val), state.epoch, "swa"
        state.best_one_class = val["single_class_share"] == 1.0
        say(self.progress, f"kept the average of epochs {state.epoch - int(self.swa.n_averaged) + 1}-{state.epoch}: "
                           f"validation {self.cfg['monitor']} {state.best:.4f}")
        if dist_utils.is_main():
            save_best_checkpoint(self.run, average, model_card(self.cfg, self.data, state))
        dist_utils.barrier()

    @cached_property
    def plain_train(self):
        """The training images as validation sees them (no augmentation): SWA's BatchNorm statistics and the
        OOD score's reference features are taken on them."""
        return build_data(self.cfg, splits=("train",), augment=False, exclude=self.data.left_out).splits["train"]

    def model_card(self) -> ModelCard:
        return model_card(self.cfg, self.data, self.state)

    def best_model(self) -> torch.nn.Module:
        """A copy of the model holding the best checkpoint's weights (training state left untouched)."""
        model = copy.deepcopy(self.model).eval()
        if self.run.weights("best").is_file():
            model.load_state_dict(read_state_dict(self.run.weights("best")))
        return model

    def test(self, split: str = "test") -> Evaluation:
        return calibrate_and_test(self, split)


def calibrate_and_test(trainer: Trainer, split: str = "test") -> Evaluation:
    """Fit on the validation split, into the best checkpoint's card, the temperature, the binary threshold
    (``sensitivity``), the prediction sets (``coverage``) and the OOD score's threshold (``ood``, on the
    training images' features); then, and only then, evaluate it on ``split`` into RUN/eval_<split>."""
    model, cfg, run, data = trainer.best_model(), trainer.cfg, trainer.run, trainer.data
    card = calibrate_card(model, data.splits["val"], trainer.model_card(), cfg, data.multi_label, trainer.positive,
                          trainer.device)
    detector = None
    if cfg["ood"]:
        from ..evaluation.ood import fit_for_run
        detector = fit_for_run(model, cfg, trainer.plain_train, data.splits["val"], card.temperature, trainer.device)
        card.ood = detector.card_entry()
    if dist_utils.is_main() and run.weights("best").is_file():
        write_card(card, run.card("best"))
        if detector is not None:
            detector.save_state(run.ood_features("best"))
    data = copy.copy(data)
    data.splits = dict(data.splits)  # the test split joins a copy: the trainer never holds it
    result = evaluate(LoadedRun(model, cfg, card, run.weights("best"), data, detector), split,
                      output=run.eval_dir(split),
                      overwrite=True, n_resamples=cfg["bootstrap"], seed=cfg["seed"],
                      warnings=trainer.state.warnings, write=dist_utils.is_main(), device=trainer.device)
    record_split(run, cfg, data)
    return result


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
        evaluation = trainer.test(test_split)
        result["report"], result["test"], result["assessment"] = evaluation.paths, evaluation.metrics, evaluation.report
        result["evaluation"] = evaluation
    return result
