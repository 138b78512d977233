"""MedMamba: Vision Mamba for medical image classification, installable anywhere."""
from . import ops
from .checkpoint import CheckpointError, load_checkpoint, read_state_dict
from .models import (MedMamba, MedMambaFeatures, create_model, list_models, medmamba_b, medmamba_s,
                     medmamba_t)
from .models._timm import register_with_timm

__version__ = "0.1.0"
__all__ = ["CheckpointError", "MedMamba", "MedMambaFeatures", "create_model", "list_models", "load_checkpoint",
           "medmamba_b", "medmamba_s", "medmamba_t", "ops", "read_state_dict", "register_with_timm"]

register_with_timm()
