"""Any timm architecture as a baseline through the same pipeline: ``create_model("timm/resnet18", ...)``.

The model is timm's own, built with random weights (nothing is downloaded); a ``pretrained`` path is one
of this package's checkpoints or any state dict of that architecture, adapted by ``checkpoint_filter_fn``.
"""
from __future__ import annotations

import torch
from torch import nn

from ..artifacts.checkpoint import load_checkpoint
from ._builder import resolve_pretrained, with_card_defaults

TIMM_PREFIX = "timm/"
# Keys our pipeline passes to every model that have no meaning for a timm architecture.
_NOT_FOR_TIMM = ("scan_backend", "pretrained_cfg", "pretrained_cfg_overlay", "pretrained_strict", "cache_dir")


def is_timm_model(name: str) -> bool:
    """``timm/<arch>`` with an architecture timm knows."""
    from timm.models import is_model
    return name.startswith(TIMM_PREFIX) and is_model(name[len(TIMM_PREFIX):])


def classifier_name(model: nn.Module) -> str:
    return model.pretrained_cfg.get("classifier", "head")


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Fit a state dict of the same timm architecture to ``model``: a first convolution of another channel
    count adapted as timm does (RGB kernels summed for grey input)."""
    from timm.models import adapt_input_conv
    state = dict(state_dict)
    first = model.pretrained_cfg.get("first_conv")
    own = model.state_dict()
    for conv in ([first] if isinstance(first, str) else list(first or ())):
        key = f"{conv}.weight"
        if key in state and key in own and state[key].shape[1] != own[key].shape[1]:
            state[key] = adapt_input_conv(own[key].shape[1], state[key])
    return state


def create_timm_model(name: str, pretrained=None, features_only: bool = False, **kwargs) -> nn.Module:
    import timm
    arch = name[len(TIMM_PREFIX):]
    for key in _NOT_FOR_TIMM:
        kwargs.pop(key, None)
    weights, card = resolve_pretrained(pretrained, name)
    kwargs = with_card_defaults(card, kwargs)
    model = timm.create_model(arch, pretrained=False, features_only=features_only, **kwargs)
    if weights is not None:
        load_checkpoint(model, weights, filter_fn=checkpoint_filter_fn,
                        classifier="" if features_only else classifier_name(model))
    if card is not None:
        model.model_card = card
    return model
