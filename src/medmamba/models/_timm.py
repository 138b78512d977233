"""Make the MedMamba variants available through ``timm.create_model``: call ``register_with_timm()`` once.

Nothing is registered on import: a package that writes into another library's registry as a side effect
of being imported surprises whoever imports it for something else.
"""
from __future__ import annotations


def register_with_timm() -> list[str]:
    """Register medmamba_t/s/b with timm's public ``register_model`` (with their pretrained configs), and
    MedMamba's patch embedding, Patch-M and SS-Conv-SSM blocks as modules that timm's symbolic tracing (FX
    feature extraction) keeps whole: their branches on shapes and on the stochastic-depth draw cannot be
    traced. Returns the names now known to timm; calling it again registers nothing twice."""
    from timm.layers import register_notrace_module
    from timm.models import is_model, register_model

    from . import medmamba
    names = list(medmamba.VARIANTS)
    for name in names:
        if not is_model(name):
            register_model(getattr(medmamba, name))
    for module in (medmamba.PatchEmbed2D, medmamba.PatchMerging2D, medmamba.SS_Conv_SSM):
        register_notrace_module(module)
    return names
