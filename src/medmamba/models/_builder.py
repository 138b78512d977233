"""Building a registered model: the variant's settings, the caller's overrides, the model card saved with
a checkpoint, and its weights (through the family's ``checkpoint_filter_fn``)."""
from __future__ import annotations

from typing import Callable, Optional

from torch import nn

from ..artifacts.card import read_card
from ..artifacts.checkpoint import CheckpointError, load_checkpoint, resolve_weights

# timm passes its own bookkeeping to every entry point; none of it applies to weights read from a path.
_TIMM_KEYS = ("pretrained_strict", "cache_dir", "pretrained_model_args")


def resolve_pretrained_cfg(default: dict, given=None, overlay: Optional[dict] = None) -> dict:
    """The variant's pretrained config, updated by one timm passes (a dict or ``PretrainedCfg``, e.g. from an
    hf-hub config.json; a tag string names the variant's only, untagged, config) and by ``overlay``."""
    cfg = dict(default)
    if given is not None and not isinstance(given, str):
        cfg.update(given if isinstance(given, dict) else given.to_dict())
    cfg.update(overlay or {})
    return cfg


def names_weights(cfg: dict) -> bool:
    """Does a timm pretrained config say where weights are (a hub repository, a file, a URL)?"""
    return bool(cfg.get("hf_hub_id") or cfg.get("file") or cfg.get("url") or cfg.get("state_dict"))


def resolve_pretrained(pretrained, variant: str):
    """(weights file, its model card or None) for ``pretrained``: a weights file, a checkpoint folder or a
    training run's folder (its best checkpoint). ``True`` is refused: nothing is downloaded."""
    if pretrained is True:  # a timm config that names weights is loaded by build_model_with_cfg
        raise ValueError(f"{variant}: pretrained=True needs a path; no weights are downloaded. "
                         "Pass pretrained='path/to/checkpoint.pth' (or .safetensors, or a run folder).")
    if not pretrained:
        return None, None
    weights = resolve_weights(pretrained)
    card = read_card(weights)
    if card is not None and card.model != variant:
        raise CheckpointError(f"{weights} holds {card.model} weights, not {variant}")
    return weights, card


def with_card_defaults(card, kwargs: dict) -> dict:
    """``kwargs`` with what the caller left out (class count, channels, the variant's overrides) from ``card``."""
    if card is None:
        return kwargs
    saved = {**card.model_args, "num_classes": card.num_classes, "in_chans": card.in_chans}
    return {**{k: v for k, v in saved.items() if v is not None}, **kwargs}


def build_model_with_cfg(model_cls: type, variant: str, variant_cfg: dict, pretrained=None,
                         pretrained_filter_fn: Optional[Callable] = None, feature_cls: Optional[type] = None,
                         features_only: bool = False, variant_pretrained_cfg: Optional[dict] = None,
                         **kwargs) -> nn.Module:
    """``model_cls(**variant_cfg, **kwargs)`` (``feature_cls`` with ``features_only``), loaded from
    ``pretrained`` when given; a saved model card fills in what the caller left out (class count,
    channels, the variant's overrides) and is kept as ``model.model_card``. ``variant_pretrained_cfg`` (timm's
    per-variant config) is kept as ``model.pretrained_cfg``; ``pretrained=True`` loads the weights it names
    through timm (a hub repository, e.g. ``timm.create_model("hf-hub:org/repo", pretrained=True)``, or a file)."""
    for key in _TIMM_KEYS:
        kwargs.pop(key, None)
    cfg = resolve_pretrained_cfg(variant_pretrained_cfg or {}, kwargs.pop("pretrained_cfg", None),
                                 kwargs.pop("pretrained_cfg_overlay", None))
    from_cfg = pretrained is True and names_weights(cfg)
    weights, card = resolve_pretrained(None if from_cfg else pretrained, variant)
    kwargs = with_card_defaults(card, kwargs)
    if features_only:
        if feature_cls is None:
            raise ValueError(f"{variant} has no features-only form")
        model = feature_cls(**{**variant_cfg, **kwargs})
    else:
        kwargs.pop("out_indices", None)
        model = model_cls(**{**variant_cfg, **kwargs})
    model.pretrained_cfg = model.default_cfg = cfg
    if weights is not None:
        load_checkpoint(model, weights, filter_fn=pretrained_filter_fn)
    elif from_cfg:
        from timm.models import load_pretrained
        load_pretrained(model, cfg, num_classes=getattr(model, "num_classes", 0), in_chans=model.in_chans,
                        filter_fn=pretrained_filter_fn, strict=not features_only)
    if card is not None:
        model.model_card = card
    return model
