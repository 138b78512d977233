"""MedMamba: Vision Mamba for medical image classification, installable anywhere."""
from . import ops
from ._version import package_version
from .artifacts.card import ModelCard
from .artifacts.checkpoint import CheckpointError, load_checkpoint, read_state_dict, save_pretrained
from .deploy.inference import Predictor, load_model
from .evaluation.evaluate import evaluate
from .models import (MedMamba, MedMambaFeatures, create_model, list_models, medmamba_b, medmamba_s,
                     medmamba_t)
from .models._timm import register_with_timm
from .training.cv import cross_validate
from .training.trainer import Trainer, train

__version__ = package_version()

__all__ = ["CheckpointError", "MedMamba", "MedMambaFeatures", "ModelCard", "Predictor", "Trainer", "create_model",
           "cross_validate", "evaluate", "list_models", "load_checkpoint", "load_model", "medmamba_b", "medmamba_s",
           "medmamba_t", "ops", "read_state_dict", "register_with_timm", "save_pretrained", "train"]
