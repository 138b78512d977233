from ._registry import create_model, family_train_defaults, is_known_model, list_models, register_model
from .medmamba import (MedMamba, MedMambaFeatures, PatchEmbed2D, PatchMerging2D, SS2D, SS_Conv_SSM, VSSLayer,
                       checkpoint_filter_fn, medmamba_b, medmamba_s, medmamba_t)

__all__ = ["MedMamba", "MedMambaFeatures", "PatchEmbed2D", "PatchMerging2D", "SS2D", "SS_Conv_SSM", "VSSLayer",
           "checkpoint_filter_fn", "create_model", "family_train_defaults", "is_known_model", "list_models",
           "medmamba_b", "medmamba_s", "medmamba_t", "register_model"]
