"""Model registry and timm-style ``create_model``."""
from __future__ import annotations

import fnmatch
from typing import Callable

_model_entrypoints: dict[str, Callable] = {}


def register_model(fn: Callable) -> Callable:
    _model_entrypoints[fn.__name__] = fn
    return fn


def list_models(pattern: str = "*") -> list[str]:
    return sorted(name for name in _model_entrypoints if fnmatch.fnmatch(name, pattern))


def create_model(name: str, pretrained=None, num_classes: int | None = None, in_chans: int | None = None,
                 features_only: bool = False, **kwargs):
    """Build a registered model, optionally loading weights from ``pretrained``: a weights file, a checkpoint
    folder, or a training output folder (its best checkpoint).

    ``num_classes=0`` gives a model returning pooled features; ``features_only=True`` (with ``out_indices``)
    a backbone returning each requested stage's NCHW map. Other keyword arguments override the variant's.
    """
    if name not in _model_entrypoints:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if in_chans is not None:
        kwargs["in_chans"] = in_chans
    return _model_entrypoints[name](pretrained=pretrained, features_only=features_only, **kwargs)
