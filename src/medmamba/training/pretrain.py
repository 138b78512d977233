"""Self-supervised pretraining on unlabeled images: masked image modelling as in SimMIM (Xie et al. 2022).

Why SimMIM: it needs no second network, no negative pairs and no large batches (which contrastive methods
do, and a 2-core CPU cannot give), and it suits a hierarchical model: MedMamba's Patch-E tokens of the
masked patches are replaced by one learned token, every stage runs on the whole map (no tokens dropped, so
the scans and Patch-M see the layout they will see when fine-tuned), and a one-layer head predicts the
masked pixels from the last stage. The loss is the L1 error on the masked pixels only.

The output folder is what ``pretrained=RUN`` takes: ``checkpoints/best/model.safetensors`` holds the
backbone's weights (every key of the classifier but the head, which the fine-tuning run creates for its
classes), beside config.yaml, metrics.jsonl and a loss curve. Resumable at epoch boundaries (``--resume``).
MedMamba models only: the mask token goes after Patch-E, which timm's models do not share.
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..amp import autocast
from ..artifacts.checkpoint import restore_training_checkpoint, save_training_checkpoint, save_weights
from ..artifacts.run_dir import RunDir
from ..config import with_family_defaults
from ..errors import DataError, ModelError
from ..files import atomic_write_text
from .optim import build_optimisation
from .rng import rng_state, seed_everything, set_rng_state

PRETRAIN_JSON = "pretrain.json"
LOSS_CURVE = "loss_curve.png"


class MaskedImageModel(nn.Module):
    """SimMIM around a MedMamba encoder: ``forward(x, mask)`` -> the L1 loss on the masked pixels.

    ``mask`` is (batch, H / mask_patch, W / mask_patch), True where a patch is hidden."""

    def __init__(self, encoder: nn.Module, mask_patch: int):
        super().__init__()
        if not (hasattr(encoder, "patch_embed") and hasattr(encoder, "layers")):
            raise ModelError(f"pretraining masks MedMamba's Patch-E tokens; {type(encoder).__name__} has none "
                             "(timm models are not supported)")
        self.encoder, self.mask_patch = encoder, mask_patch
        self.stride = encoder.patch_size * 2 ** (len(encoder.layers) - 1)
        if mask_patch % encoder.patch_size:
            raise ModelError(f"pretrain.mask_patch={mask_patch} must be a multiple of the stem's "
                             f"{encoder.patch_size} px patches")
        self.mask_token = nn.Parameter(torch.zeros(encoder.embed_dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.decoder = nn.Conv2d(encoder.num_features, self.stride ** 2 * encoder.in_chans, kernel_size=1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        enc = self.encoder
        tokens = enc.pos_drop(enc.patch_embed(x))  # (B, H/4, W/4, C)
        per_token = self.mask_patch // enc.patch_size
        hidden = mask.repeat_interleave(per_token, 1).repeat_interleave(per_token, 2).unsqueeze(-1)
        z = torch.where(hidden, self.mask_token.to(tokens.dtype), tokens)
        for layer in enc.layers:
            z = layer(z)
            if layer.downsample is not None:
                z = layer.downsample(z)
        pixels = F.pixel_shuffle(self.decoder(z.permute(0, 3, 1, 2)), self.stride)
        hidden_px = mask.repeat_interleave(self.mask_patch, 1).repeat_interleave(self.mask_patch, 2).unsqueeze(1)
        error = (pixels.float() - x.float()).abs() * hidden_px
        return error.sum() / (hidden_px.sum() * x.shape[1]).clamp_min(1)


def random_masks(batch: int, grid: int, ratio: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """(batch, grid, grid) booleans, exactly round(ratio * grid^2) patches hidden in each image."""
    n = grid * grid
    hide = max(1, min(n - 1, round(ratio * n)))
    order = torch.rand(batch, n, generator=generator).argsort(1)
    mask = torch.zeros(batch, n, dtype=torch.bool)
    mask.scatter_(1, order[:, :hide], True)
    return mask.view(batch, grid, grid)


class UnlabeledImages(Dataset):
    """Image files as transformed tensors, no labels."""

    def __init__(self, paths: list[str], channels: int, transform):
        self.paths, self.channels, self.transform = paths, channels, transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        from ..data.folders import read_image
        return self.transform(read_image(self.paths[i], self.channels))


class WithoutLabels(Dataset):
    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        return self.dataset[i][0]


def pretraining_images(cfg: dict) -> tuple[Dataset, int, str]:
    """(images, channels, where from): every image under ``data.folder`` at any depth (labels and splits
    there ignored), or else the configured dataset's training split only, its labels ignored (its
    validation and test images stay unseen)."""
    from ..data.builder import build_data, config_transform
    d = cfg["data"]
    if d["folder"]:
        from ..data.folders import require_inputs
        paths, _ = require_inputs([d["folder"]], "pretrain on")
        channels = int(d["channels"] or 3)  # as training reads a folder
        return UnlabeledImages(paths, channels, config_transform(cfg, channels, train=True)), channels, \
            f"{len(paths)} images under {d['folder']}"
    data = build_data(cfg, splits=("train",))
    return WithoutLabels(data.splits["train"]), data.channels, f"the train split of {data.name} " \
        f"({len(data.splits['train'])} images, labels ignored)"


def plot_loss(rows: list[dict], path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot([r["epoch"] for r in rows], [r["loss"] for r in rows], marker="o")
    ax.set_xlabel("epoch")
    ax.set_ylabel("masked-pixel L1 loss")
    ax.set_title("self-supervised pretraining (SimMIM)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def pretrain(cfg: dict, output: str | os.PathLike, resume: bool = False, overwrite: bool = False,
             progress: bool = True) -> dict:
    """Pretrain the configured MedMamba on unlabeled images into ``output``; returns the summary also written
    to output/pretrain.json (epochs, final loss, seconds per epoch, the weight keys a classifier takes).
    ``cfg`` as ``load_config(..., family_defaults=False)`` reads it (the CLI does): the family's defaults are
    fine-tuning choices, and a key left at "auto" takes the package's own value here."""
    from ..evaluation.runs import build_model
    from .trainer import check_output, epoch_bar, start_output, training_device
    run = RunDir(output)
    check_output(run, resume, overwrite)
    cfg = with_family_defaults(cfg, model_family=False)  # SimMIM was measured without MedMamba's policy
    p = cfg["pretrain"]
    if cfg["data"]["img_size"] % p["mask_patch"]:
        raise DataError(f"data.img_size={cfg['data']['img_size']} is not a multiple of pretrain.mask_patch="
                        f"{p['mask_patch']}")
    seed_everything(cfg["seed"])
    images, channels, source = pretraining_images(cfg)
    device = training_device(cfg, None)
    encoder = build_model(cfg, 2, channels, drop_path_rate=cfg["drop_path_rate"])
    model = MaskedImageModel(encoder, p["mask_patch"]).to(device)
    steps = max(1, math.ceil(len(images) / cfg["batch_size"]))
    optimizer, scheduler, scaler, _ = build_optimisation(model, {**cfg, "ema": None}, steps, device)
    parts = {"optimizer": optimizer, "scheduler": scheduler, "scaler": scaler}
    rows, start = [], 0
    if resume:
        state = restore_training_checkpoint(run, model, None, parts)
        start, rows = state["train"]["epoch"], state["train"]["rows"]
        set_rng_state(state["rng"])
    else:
        start_output(run, cfg)
    if progress:
        print(f"pretraining {cfg['model']} on {source}: {steps} steps an epoch, {p['mask_ratio']:.0%} of "
              f"{p['mask_patch']} px patches masked", flush=True)
    grid = cfg["data"]["img_size"] // p["mask_patch"]
    for epoch in range(start, cfg["epochs"]):
        model.train()
        t0, total, count = time.time(), 0.0, 0
        gen = torch.Generator().manual_seed(cfg["seed"] * 1000 + epoch)
        loader = DataLoader(images, batch_size=cfg["batch_size"], shuffle=True, generator=gen,
                            num_workers=cfg["data"]["num_workers"])
        bar = epoch_bar(steps, 0, epoch, cfg["epochs"], progress)
        for x in loader:
            x = x.to(device)
            with autocast(device, cfg["amp"]):
                loss = model(x, random_masks(len(x), grid, p["mask_ratio"], gen).to(device))
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            total, count = total + loss.item() * len(x), count + len(x)
            if bar is not None:
                bar.set_postfix(loss=f"{loss.item():.4f}")
                bar.update(1)
        if bar is not None:
            bar.close()
        rows.append({"epoch": epoch + 1, "loss": total / max(count, 1), "seconds": time.time() - t0})
        if progress:
            print(f"epoch {epoch + 1:3d}/{cfg['epochs']}  masked-pixel L1 {rows[-1]['loss']:.4f}  "
                  f"({rows[-1]['seconds']:.0f} s)", flush=True)
        save_training_checkpoint(run, "last", model, None, parts, {"epoch": epoch + 1, "rows": rows},
                                 {"rng": rng_state()})
        atomic_write_text(run.metrics_jsonl, "".join(json.dumps(r) + "\n" for r in rows))
        plot_loss(rows, run.root / LOSS_CURVE)
    backbone = {k: v for k, v in encoder.state_dict().items() if not k.startswith("head.")}
    run.weights("best").parent.mkdir(parents=True, exist_ok=True)
    save_weights(backbone, run.weights("best"), metadata={"pretrained": "simmim"})
    summary = {"model": cfg["model"], "images": source, "epochs": cfg["epochs"], "loss": [r["loss"] for r in rows],
               "seconds_per_epoch": [r["seconds"] for r in rows], "keys_saved": len(backbone),
               "keys_new_when_fine_tuned": sorted(k for k in encoder.state_dict() if k.startswith("head.")),
               "mask_ratio": p["mask_ratio"], "mask_patch": p["mask_patch"]}
    atomic_write_text(run.root / PRETRAIN_JSON, json.dumps(summary, indent=1))
    if progress:
        print(f"backbone weights: {run.weights('best')} ({len(backbone)} tensors; a classifier made with "
              f"pretrained={run.root} loads all of them and creates its head)", flush=True)
    return summary
