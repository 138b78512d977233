"""Model registry and timm-style ``create_model``; ``timm/<name>`` builds any timm architecture."""
from __future__ import annotations

import fnmatch
import sys
from typing import Callable

from ..errors import ModelError
from .timm_models import TIMM_PREFIX, create_timm_model, is_timm_model

_model_entrypoints: dict[str, Callable] = {}


def register_model(fn: Callable) -> Callable:
    _model_entrypoints[fn.__name__] = fn
    return fn


def list_models(pattern: str = "*") -> list[str]:
    return sorted(name for name in _model_entrypoints if fnmatch.fnmatch(name, pattern))


def is_known_model(name: str) -> bool:
    """A registered model, or ``timm/<name>`` with a name timm knows."""
    return is_timm_model(name) if name.startswith(TIMM_PREFIX) else name in _model_entrypoints


def family_train_defaults(name: str) -> dict:
    """The training settings a registered model's family chose for itself (its module's ``TRAIN_DEFAULTS``,
    dotted config keys); timm models have none here, and take the package's."""
    if name.startswith(TIMM_PREFIX) or name not in _model_entrypoints:
        return {}
    return dict(getattr(sys.modules[_model_entrypoints[name].__module__], "TRAIN_DEFAULTS", {}))


def unknown_model_message(name: str) -> str:
    return (f"unknown model {name!r}; this package's: {', '.join(list_models())} (`medmamba info`), or "
            f"timm/<name> with a name from `python -c \"import timm; print(timm.list_models())\"`")


def create_model(name: str, pretrained=None, num_classes: int | None = None, in_chans: int | None = None,
                 features_only: bool = False, **kwargs):
    """Build a registered model, optionally loading weights from ``pretrained``: a weights file, a checkpoint
    folder, or a training output folder (its best checkpoint).

    ``num_classes=0`` gives a model returning pooled features; ``features_only=True`` (with ``out_indices``)
    a backbone returning each requested stage's NCHW map. Other keyword arguments override the variant's.
    ``timm/<name>`` builds timm's architecture ``name`` (random weights unless ``pretrained`` is a path).
    """
    if not is_known_model(name):
        raise ModelError(unknown_model_message(name))
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if in_chans is not None:
        kwargs["in_chans"] = in_chans
    if name.startswith(TIMM_PREFIX):
        return create_timm_model(name, pretrained=pretrained, features_only=features_only, **kwargs)
    return _model_entrypoints[name](pretrained=pretrained, features_only=features_only, **kwargs)
