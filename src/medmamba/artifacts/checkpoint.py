"""Load weights safely: official ``.pth`` layouts and safetensors, never arbitrary pickles."""
from __future__ import annotations

import json
import os
import pickle
import shutil
import warnings
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from ..errors import CheckpointError, MedMambaError
from ..files import atomic_path, refuse_existing
from .card import ModelCard, write_card
from .run_dir import CARD, CHECKPOINTS, EMA_WEIGHTS, META, STATE, WEIGHTS, RunDir

__all__ = ["CheckpointError", "load_checkpoint", "read_state_dict", "resolve_weights",
           "restore_training_checkpoint", "save_best_checkpoint", "save_pretrained",
           "save_training_checkpoint", "save_weights"]

_WRAPPER_KEYS = ("model", "state_dict", "model_state_dict")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file: safetensors, or a torch file read with ``weights_only=True``.

    A torch file may hold the state dict itself or under ``model``/``state_dict`` (the official
    training script's layout); a ``module.`` prefix left by DataParallel/DDP is removed.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            state = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"{path}: not a loadable weights file; only tensors and plain containers are "
                                  f"read, never arbitrary pickled objects ({first})") from None
    if isinstance(state, dict):
        for key in _WRAPPER_KEYS:
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: holds no state dict (expected a dict of tensors, possibly under "
                              f"{' or '.join(repr(k) for k in _WRAPPER_KEYS)})")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _summarise(keys, limit=8) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def adapt_state_dict(model: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint",
                     new_head_ok: bool = True, filter_fn: Optional[Callable] = None, classifier: str = "head"):
    """Fit a checkpoint to a model where that is meaningful; raise one clear error where it is not.

    ``filter_fn(state, model)``, the model family's ``checkpoint_filter_fn``, adapts what is specific to
    the family (stem channels, stages a backbone lacks). A classifier (``classifier.*``) of another class
    count is then left out with a warning when ``new_head_ok`` (fine-tuning), an error otherwise."""
    state = dict(filter_fn(state, model) if filter_fn is not None else state)
    own = model.state_dict()
    prefix = classifier + "."
    head_keys = [k for k in state if k.startswith(prefix)]
    if head_keys and any(k not in own or state[k].shape != own[k].shape for k in head_keys):
        weight = state.get(prefix + "weight")
        theirs = weight.shape[0] if weight is not None else "?"
        ours = getattr(model, "num_classes", "?")
        if not new_head_ok:
            raise CheckpointError(f"{source}: its head has {theirs} classes, the model {ours}")
        if ours:
            warnings.warn(f"{source}: its head has {theirs} classes, the model {ours}; loading everything but "
                          f"the head, which keeps its fresh initialisation.", UserWarning, stacklevel=3)
        for k in head_keys:
            del state[k]
    missing = [k for k in own if k not in state and not k.startswith(prefix)]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in state if k in own and state[k].shape != own[k].shape]
    problems = []
    if missing:
        problems.append(f"missing keys: {_summarise(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_summarise(unexpected)}")
    if mismatched:
        problems.append(f"wrong shapes: {_summarise(mismatched)}")
    if problems:
        raise CheckpointError(f"{source} does not fit {type(model).__name__}: " + "; ".join(problems))
    return state


def load_checkpoint(model: nn.Module, path: str | os.PathLike, new_head_ok: bool = True,
                    filter_fn: Optional[Callable] = None, classifier: str = "head") -> nn.Module:
    """Load weights from ``path`` into ``model`` (in place) and return it. See ``read_state_dict`` and
    ``adapt_state_dict``; ``create_model(name, pretrained=path)`` passes the family's filter itself."""
    state = adapt_state_dict(model, read_state_dict(path), str(path), new_head_ok, filter_fn, classifier)
    prefix = classifier + "."
    head_reinitialised = any(k.startswith(prefix) for k in model.state_dict()) and not any(
        k.startswith(prefix) for k in state)
    result = model.load_state_dict(state, strict=not head_reinitialised)
    if head_reinitialised:
        assert all(k.startswith(prefix) for k in result.missing_keys) and not result.unexpected_keys
    return model


def save_weights(model_or_state: nn.Module | dict, path: str | os.PathLike, metadata: Optional[dict] = None) -> Path:
    """A model's (or a state dict's) tensors as safetensors, written atomically: the one writer of weights."""
    from safetensors.torch import save_file
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(tmp), metadata=metadata)
    return path


def resolve_weights(path: str | os.PathLike) -> Path:
    """A weights file from what users point at: the file itself, a checkpoint folder holding
    ``model.safetensors``, or a training output folder (its best checkpoint)."""
    path = Path(path)
    for candidate in (path, path / WEIGHTS, RunDir(path).weights("best")):
        if candidate.is_file():
            return candidate
    if path.is_dir():
        raise CheckpointError(f"{path}: holds no {WEIGHTS} (nor {CHECKPOINTS}/best/{WEIGHTS} of a training run)")
    raise CheckpointError(f"checkpoint not found: {path}")


def save_pretrained(model: nn.Module, card: ModelCard | dict, path: str | os.PathLike,
                    overwrite: bool = False) -> tuple[Path, Path]:
    """Write ``model``'s weights as safetensors and its model card (model name, classes, preprocessing...)
    as JSON beside it with the same stem: what ``create_model(name, pretrained=path)`` and
    ``medmamba.load_model(path)`` read back. Both files are written atomically."""
    card = card if isinstance(card, ModelCard) else ModelCard.from_dict(card)
    path = Path(path)
    if path.suffix != ".safetensors":
        path = path / WEIGHTS
    config_path = path.with_suffix(".json")
    refuse_existing(path, config_path, overwrite=overwrite, error=CheckpointError)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_weights(model, path, metadata={"format": "pt", "model": card.model})
    write_card(card, config_path)
    return path, config_path


def _swap_in(tmp: Path, final: Path):
    """Swap a freshly written checkpoint folder in: at every instant a complete one exists."""
    old = final.with_name(final.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)


def write_checkpoint_folder(run: RunDir, name: str, files: Callable[[Path], None]) -> Path:
    """Checkpoint folder ``name`` of ``run``, its files written by ``files(tmp_folder)`` and swapped in whole."""
    root = run.checkpoints
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    files(tmp)
    _swap_in(tmp, run.checkpoint(name))
    return run.checkpoint(name)


def save_best_checkpoint(run: RunDir, model: nn.Module, card: ModelCard) -> Path:
    """The kept weights with their model card: what evaluation, prediction and fine-tuning read."""
    def files(tmp: Path):
        save_weights(model, tmp / WEIGHTS)
        write_card(card, tmp / CARD)
    return write_checkpoint_folder(run, "best", files)


def save_training_checkpoint(run: RunDir, name: str, model: nn.Module, ema: Optional[nn.Module], parts: dict,
                             train_state: dict, extra: Optional[dict] = None) -> Path:
    """All that an exact resume needs: weights, EMA weights, the ``state_dict()`` of each of ``parts``
    (optimiser, scheduler, scaler...), ``train_state`` (also written readable as meta.json) and ``extra``
    (RNG states, world size), as tensors and plain containers that load with ``weights_only=True``."""
    state = {**{key: part.state_dict() for key, part in parts.items()}, "train": train_state, **(extra or {})}

    def files(tmp: Path):
        save_weights(model, tmp / WEIGHTS)
        if ema is not None:
            save_weights(ema, tmp / EMA_WEIGHTS)
        torch.save(state, tmp / STATE)
        (tmp / META).write_text(json.dumps(train_state))
    return write_checkpoint_folder(run, name, files)


def restore_training_checkpoint(run: RunDir, model: nn.Module, ema: Optional[nn.Module], parts: dict,
                                name: str = "last") -> dict:
    """Load the complete checkpoint ``name`` (or the one an interrupted swap left) into ``model``, ``ema`` and
    ``parts``; returns the rest of its state (train state, RNG states...). Nothing is unpickled."""
    folder = run.complete_checkpoint(name)
    if folder is None:
        raise MedMambaError(f"--resume: no checkpoint in {run.checkpoints}")
    state = torch.load(folder / STATE, map_location="cpu", weights_only=True)
    device = next(model.parameters()).device
    model.load_state_dict({k: v.to(device) for k, v in read_state_dict(folder / WEIGHTS).items()})
    if ema is not None:
        ema.load_state_dict(read_state_dict(folder / EMA_WEIGHTS))
    for key, part in parts.items():
        part.load_state_dict(state.pop(key))
    return state
