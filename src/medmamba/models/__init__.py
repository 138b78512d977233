from ._registry import create_model, list_models, register_model
from .medmamba import (MedMamba, MedMambaFeatures, PatchEmbed2D, PatchMerging2D, SS2D, SS_Conv_SSM, VSSLayer,
                       medmamba_b, medmamba_s, medmamba_t)
