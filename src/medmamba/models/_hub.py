"""Sharing trained models the field's way: ``model.save_pretrained(dir)``, ``MedMamba.from_pretrained(dir or
repo id)`` and ``model.push_to_hub(repo_id)``, through huggingface_hub's ``PyTorchModelHubMixin``.

A saved folder holds, side by side:

    model.safetensors   the weights
    model.json          this package's model card (classes, preprocessing, temperature, threshold...)
    config.json         timm's hub layout: ``timm.create_model("hf-hub:org/name", pretrained=True)`` (or
                        ``"local-dir:path"``) builds the model once ``medmamba.register_with_timm()`` has run
    README.md           the model card people read on the hub: data, test metrics with intervals, preprocessing

Loading never unpickles anything (safetensors) and is strict; a folder or a cached repository loads with
HF_HUB_OFFLINE=1. A training run or checkpoint folder (no config.json) loads from its model card.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

from huggingface_hub import PyTorchModelHubMixin

from ..artifacts.card import read_card
from ..artifacts.run_dir import CARD, WEIGHTS
from ..files import atomic_write_text

HUB_CONFIG = "config.json"
# Keys of timm's config.json that describe the file, not arguments of the model's constructor.
_TIMM_CONFIG_KEYS = ("architecture", "num_features", "model_args", "pretrained_cfg", "label_names")
# Constructor arguments that are a choice of this machine, not of the weights.
_RUNTIME_ARGS = ("scan_backend", "use_checkpoint", "backbone_stages")
PAPER = "https://arxiv.org/abs/2403.03849"


class HubMixin(PyTorchModelHubMixin, library_name="medmamba", license="apache-2.0", paper_url=PAPER,
               tags=["medical-imaging", "image-classification", "mamba", "timm"]):

    def _save_pretrained(self, save_directory: Path) -> None:
        from ..artifacts.card import ModelCard
        from ..artifacts.checkpoint import save_pretrained
        architecture = self.pretrained_cfg.get("architecture") or "medmamba_t"
        card = getattr(self, "model_card", None) or ModelCard(model=architecture, num_classes=self.num_classes,
                                                               in_chans=self.in_chans)
        save_pretrained(self, card, save_directory / WEIGHTS, overwrite=True)
        atomic_write_text(save_directory / HUB_CONFIG, json.dumps(self.hub_config(card), indent=2))

    def hub_config(self, card) -> dict:
        """timm's config.json: architecture, constructor arguments, and the pretrained config (input size and
        normalisation the weights expect, class names)."""
        args = {k: v for k, v in (self._hub_mixin_config or {}).items() if k not in _RUNTIME_ARGS}
        args.update(num_classes=self.num_classes, in_chans=self.in_chans, global_pool=self.global_pool)
        cfg = {k: v for k, v in self.pretrained_cfg.items() if k not in ("hf_hub_id", "file", "source", "url")}
        pool = -(-card.img_size // self.feature_info[-1]["reduction"])
        cfg.update(num_classes=self.num_classes, input_size=(self.in_chans, card.img_size, card.img_size),
                   pool_size=(pool, pool), mean=(card.mean,) * self.in_chans, std=(card.std,) * self.in_chans)
        if card.classes:
            cfg["label_names"] = card.class_names
        return {"architecture": card.model, "num_classes": self.num_classes, "num_features": self.num_features,
                "global_pool": self.global_pool, "model_args": args, "pretrained_cfg": cfg}

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision: Optional[str], cache_dir, force_download: bool,
                         local_files_only: bool, token, map_location: str = "cpu", strict: bool = True,
                         **model_kwargs):
        from ._registry import create_model
        folder = Path(model_id)
        if not folder.is_dir():
            from huggingface_hub import snapshot_download
            folder = Path(snapshot_download(model_id, revision=revision, cache_dir=cache_dir,
                                            force_download=force_download, token=token,
                                            local_files_only=local_files_only or _offline(),
                                            allow_patterns=[WEIGHTS, CARD, HUB_CONFIG, "README.md"]))
        for key in _TIMM_CONFIG_KEYS:  # the mixin hands config.json's keys on as if they were arguments
            model_kwargs.pop(key, None)
        config_path = folder / HUB_CONFIG
        if config_path.is_file():
            config = json.loads(config_path.read_text())
            kwargs = {**config.get("model_args", {}), **model_kwargs}
            model = create_model(config["architecture"], pretrained=folder / WEIGHTS, **kwargs)
        else:  # a training run or a checkpoint folder: its model card says what it holds
            card = read_card(folder / WEIGHTS) if (folder / WEIGHTS).is_file() else None
            name = card.model if card is not None else _card_of_run(folder)
            model = create_model(name, pretrained=folder, **model_kwargs)
        return model.to(map_location).eval()

    def generate_model_card(self, results: Optional[str] = None, **kwargs):
        """README.md: what the model is, the data it was trained on, its preprocessing and calibration, and
        ``results`` (Markdown: the test metrics with their intervals, as ``medmamba export --format hub``
        passes them)."""
        from huggingface_hub import ModelCard, ModelCardData
        card = getattr(self, "model_card", None)
        data = ModelCardData(library_name="medmamba", license="apache-2.0", pipeline_tag="image-classification",
                             tags=["medical-imaging", "image-classification", "mamba", "timm"],
                             datasets=[card.dataset] if card is not None and card.dataset else None)
        return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + model_card_text(self, card, results))


def model_card_text(model, card, results: Optional[str] = None) -> str:
    name = card.model if card is not None else model.pretrained_cfg.get("architecture", "MedMamba")
    n_params = sum(p.numel() for p in model.parameters())
    lines = [f"# {name}", "", f"MedMamba ([Yue & Li, 2024]({PAPER})), {n_params / 1e6:.2f} M parameters, saved by the "
             f"[medmamba](https://pypi.org/project/medmamba/) package"
             + ("." if card is not None else " without a model card: no training data or preprocessing recorded."), ""]
    if card is not None:
        lines += ["## Data", "", f"- Training data: {card.dataset or 'not recorded'} ({card.task})",
                  f"- Classes, in the order of the outputs: {', '.join(card.class_names)}",
                  f"- Kept checkpoint: epoch {card.epoch}, validation {card.monitor} {card.value:.4f} "
                  f"({card.weights} weights)" if card.value is not None else "- Kept checkpoint: not recorded",
                  "", "## Preprocessing", "",
                  f"- {card.in_chans}-channel images resized to {card.img_size}x{card.img_size}, scaled to [0, 1], "
                  f"then (x - {card.mean}) / {card.std}",
                  f"- Test-time augmentation: {'mirror-averaged' if card.tta else 'none'}",
                  f"- Temperature: {card.temperature:.4f} (fitted on the validation split)" if card.temperature
                  else "- Temperature: none fitted"]
        if card.threshold is not None:
            lines.append(f"- Decision threshold on p({card.class_names[card.positive]}): {card.threshold:.4f}, "
                         f"chosen on the validation split")
        lines.append("")
    if results:
        lines += ["## Test results", "", results.strip(), ""]
    lines += ["## Use", "", "```python", "from medmamba import MedMamba", "",
              "model = MedMamba.from_pretrained(\"<this repository or folder>\")   # eval mode, model.model_card",
              "# or through timm: medmamba.register_with_timm(); timm.create_model(\"hf-hub:<repository>\", "
              "pretrained=True)", "```", "",
              "A research model, not a medical device: it has not been validated for clinical use.", ""]
    return "\n".join(lines)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def _card_of_run(folder: Path) -> str:
    from ..artifacts.checkpoint import resolve_weights
    from ..errors import CheckpointError
    card = read_card(resolve_weights(folder))
    if card is None:
        raise CheckpointError(f"{folder}: neither {HUB_CONFIG} nor a model card ({CARD}) says which model it holds")
    return card.model
