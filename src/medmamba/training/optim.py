"""Optimiser and learning-rate schedule from a training configuration."""
from __future__ import annotations

import math
from typing import Callable

import torch

from ..errors import MedMambaError


def build_optimizer(model: torch.nn.Module, cfg: dict) -> torch.optim.Optimizer:
    """AdamW, Adam or SGD; no weight decay on biases, norms and the SSM's A and D; optionally BEiT's
    layer-wise lr decay (``optimizer.layer_decay``) through timm's parameter groups."""
    o = cfg["optimizer"]
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    if o.get("layer_decay") is not None:
        from timm.optim import param_groups_layer_decay
        # BEiT's layer-wise decay as timm implements it; the model's group_matcher orders the blocks.
        groups = param_groups_layer_decay(model, o["weight_decay"], no_weight_decay_list=skip,
                                          layer_decay=o["layer_decay"])
        for g in groups:
            g["lr"] = o["lr"] * g.pop("lr_scale")
    else:
        decay, no_decay = [], []
        for name, p in model.named_parameters():
            if p.requires_grad:
                (no_decay if p.ndim <= 1 or name in skip else decay).append(p)
        groups = [{"params": decay, "weight_decay": o["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}]
    name = o["name"].lower()
    # torch's default on CPU updates parameter by parameter, several passes over memory each; its fused
    # kernel (CPU and CUDA since torch 2.4) makes one, the same update. The per-parameter update was 4% of
    # a MedMamba-T training step in a 1-thread profile; the gain is not yet timed.
    fused = {"fused": True} if all(p.device.type in ("cpu", "cuda") for g in groups for p in g["params"]) else {}
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=o["lr"], betas=tuple(o["betas"]), **fused)
    if name == "adam":
        return torch.optim.Adam(groups, lr=o["lr"], betas=tuple(o["betas"]), **fused)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=o["lr"], momentum=o["momentum"], nesterov=o["momentum"] > 0, **fused)
    raise MedMambaError(f"unknown optimizer {o['name']!r}; one of adamw, adam, sgd")


def lr_factor(cfg: dict, steps_per_epoch: int) -> Callable[[int], float]:
    """The schedule as a factor of the base lr per optimiser step (for ``LambdaLR``)."""
    s = cfg["schedule"]
    total = max(1, cfg["epochs"] * steps_per_epoch)
    warmup = int(s.get("warmup_epochs", 0) * steps_per_epoch)
    name = s["name"].lower()
    if name == "cosine":
        def f(step):
            if step < warmup:
                return (step + 1) / warmup
            progress = (step - warmup) / max(1, total - warmup)
            return s["min_lr_ratio"] + (1 - s["min_lr_ratio"]) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        return f
    if name == "medmnist":  # MedMNIST's recipe: x0.1 at 50% and 75% of training
        return lambda step: 0.1 ** ((step >= 0.5 * total) + (step >= 0.75 * total))
    if name == "constant":
        return lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0
    raise MedMambaError(f"unknown schedule {s['name']!r}; one of cosine, medmnist, constant")


def build_optimisation(model: torch.nn.Module, cfg: dict, steps_per_epoch: int, device: torch.device):
    """(optimizer, lr scheduler stepped once per optimiser step, gradient scaler (fp16 on a GPU only), EMA of
    the weights or None): every part of a training step that carries state across steps."""
    optimizer = build_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, steps_per_epoch))
    scaler = torch.amp.GradScaler(device.type, enabled=cfg["amp"] == "fp16" and device.type == "cuda")
    ema = None
    if cfg["ema"]:
        from timm.utils import ModelEmaV3
        ema = ModelEmaV3(model, decay=cfg["ema"], use_warmup=cfg["ema_warmup"])
    return optimizer, scheduler, scaler, ema
