"""Make the MedMamba variants available through ``timm.create_model``: call ``register_with_timm()`` once.

Nothing is registered on import: a package that writes into another library's registry as a side effect
of being imported surprises whoever imports it for something else.
"""
from __future__ import annotations


def register_with_timm() -> list[str]:
    """Register medmamba_t/s/b with timm's public ``register_model``; returns the names now known to timm.
    Calling it again registers nothing twice."""
    from timm.models import is_model, register_model

    from . import medmamba
    names = ["medmamba_t", "medmamba_s", "medmamba_b"]
    for name in names:
        if not is_model(name):
            register_model(getattr(medmamba, name))
    return names
