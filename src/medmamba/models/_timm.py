"""Make the MedMamba variants available through ``timm.create_model`` when timm is installed."""
from __future__ import annotations

import importlib.util


def register_with_timm() -> bool:
    """Register medmamba_t/s/b in timm's registry; returns False when timm is not installed."""
    if importlib.util.find_spec("timm") is None:
        return False
    from timm.models import register_model as timm_register
    from timm.models._registry import _model_entrypoints as timm_models

    from . import medmamba
    for name in medmamba.VARIANTS:
        if name not in timm_models:
            timm_register(getattr(medmamba, name))
    return True
