"""Training configuration: defaults, YAML files and ``key.sub=value`` overrides, checked against the defaults."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterable

import yaml

from .errors import MedMambaError

DEFAULTS: dict[str, Any] = {
    "model": "medmamba_t",
    "model_args": {},           # overrides of the variant, e.g. {depths: [1, 1], dims: [8, 16]}
    "pretrained": None,         # weights to start from: a checkpoint file, or a training run's output folder (its best)
    "drop_path_rate": 0.1,
    "scan_backend": "auto",
    "data": {
        "medmnist": "breastmnist",  # a MedMNIST 2-D subset, or null when folder/csv is given
        "folder": None,             # root/{train,val,test}/<class>/* or root/<class>/*
        "csv": None,                # path,label[,split]
        "root": None,               # MedMNIST data root (default: $MEDMAMBA_DATA)
        "size": 28,                 # MedMNIST release: 28, 64, 128, 224
        "download": False,
        "img_size": 64,             # model input size
        "channels": None,           # model input channels; null: the dataset's own
        "mean": 0.5,
        "std": 0.5,
        "num_workers": 0,
        "split_seed": 0,
        "max_samples": None,        # first N samples of each split: quick checks only
    },
    "augment": {"hflip": 0.5, "vflip": 0.0, "rotation": 0.0, "scale_min": 1.0, "translate": 0.0,
                "brightness": 0.0, "contrast": 0.0, "erasing": 0.0},
    "epochs": 30,
    "batch_size": 32,
    "eval_batch_size": 64,
    "optimizer": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.05, "momentum": 0.9, "betas": [0.9, 0.999],
                  "layer_decay": None},  # e.g. 0.8: lr x0.8 per block nearer the input (fine-tuning; needs timm)
    "schedule": {"name": "cosine", "warmup_epochs": 1, "min_lr_ratio": 0.01},
    "amp": None,                # null, "bf16" or "fp16"
    "clip_grad": None,          # max gradient norm
    "label_smoothing": 0.0,
    "mixup": 0.0,               # mixup alpha: each batch blended with a shuffled copy, weight ~ Beta(a, a); 0: off
    "class_weights": None,      # null, "balanced" or a list
    "ema": None,                # EMA decay, e.g. 0.999; the EMA weights are evaluated and kept as best
    "early_stopping": None,     # patience in epochs
    "tta": False,               # validation/test/evaluate: average each image with its horizontal mirror
    "monitor": "auc",           # validation metric choosing the best checkpoint: auc, accuracy, f1, loss
    "seed": 0,
    "save_every_steps": None,   # also checkpoint mid-epoch every N optimiser steps
    "threads": None,            # torch CPU threads
    "device": None,             # null: cuda when available, else cpu
    "tensorboard": True,        # when tensorboard is installed
}


def _merge(base: dict, update: dict, where: str = "") -> dict:
    out = copy.deepcopy(base)
    for key, value in (update or {}).items():
        if key not in base:
            raise MedMambaError(f"unknown config key {where + key!r}; known: {', '.join(sorted(base))}")
        if isinstance(base[key], dict) and key != "model_args":
            if not isinstance(value, dict):
                raise MedMambaError(f"config key {where + key!r} must be a mapping")
            out[key] = _merge(base[key], value, f"{where}{key}.")
        else:
            out[key] = value
    return out


def parse_overrides(items: Iterable[str]) -> dict:
    """``["optimizer.lr=3e-4", "epochs=5"]`` -> nested dict, values read as YAML scalars."""
    tree: dict = {}
    for item in items:
        if "=" not in item:
            raise MedMambaError(f"override {item!r} is not key=value (e.g. optimizer.lr=3e-4)")
        key, raw = item.split("=", 1)
        node = tree
        *parents, leaf = key.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(raw) if raw.strip() else None
    return tree


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> dict:
    cfg = copy.deepcopy(DEFAULTS)
    if path:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise MedMambaError(f"cannot read config {path}: {e}") from None
        if not isinstance(data, dict):
            raise MedMambaError(f"config {path} must be a YAML mapping")
        cfg = _merge(cfg, data)
    return _merge(cfg, parse_overrides(overrides))


def dump_config(cfg: dict) -> str:
    return yaml.safe_dump(cfg, sort_keys=False)
