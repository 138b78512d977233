"""Building a registered model: the variant's settings, the caller's overrides, the model card saved with
a checkpoint, and its weights (through the family's ``checkpoint_filter_fn``)."""
from __future__ import annotations

from typing import Callable, Optional

from torch import nn

from ..artifacts.card import read_card
from ..artifacts.checkpoint import CheckpointError, load_checkpoint, resolve_weights

# timm passes its own bookkeeping to every entry point; none of it applies to weights read from a path.
_TIMM_KEYS = ("pretrained_cfg", "pretrained_cfg_overlay", "pretrained_strict", "cache_dir")


def resolve_pretrained(pretrained, variant: str):
    """(weights file, its model card or None) for ``pretrained``: a weights file, a checkpoint folder or a
    training run's folder (its best checkpoint). ``True`` is refused: nothing is downloaded."""
    if pretrained is True:
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
                         features_only: bool = False, **kwargs) -> nn.Module:
    """``model_cls(**variant_cfg, **kwargs)`` (``feature_cls`` with ``features_only``), loaded from
    ``pretrained`` when given; a saved model card fills in what the caller left out (class count,
    channels, the variant's overrides) and is kept as ``model.model_card``."""
    for key in _TIMM_KEYS:
        kwargs.pop(key, None)
    weights, card = resolve_pretrained(pretrained, variant)
    kwargs = with_card_defaults(card, kwargs)
    if features_only:
        if feature_cls is None:
            raise ValueError(f"{variant} has no features-only form")
        model = feature_cls(**{**variant_cfg, **kwargs})
    else:
        kwargs.pop("out_indices", None)
        model = model_cls(**{**variant_cfg, **kwargs})
    if weights is not None:
        load_checkpoint(model, weights, filter_fn=pretrained_filter_fn)
    if card is not None:
        model.model_card = card
    return model
