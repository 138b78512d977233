"""The batch prediction core: class probabilities of a model on a batch or a dataset.

Everything that runs a trained model (validation during training, evaluation, ``Predictor``, explanation)
turns logits into probabilities here, so they agree to the last bit.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch.utils.data import DataLoader

from .. import distributed as dist_utils
from ..amp import autocast


def class_probabilities(logits: torch.Tensor, multi_label: bool, temperature: Optional[float] = None) -> torch.Tensor:
    """Independent sigmoids for multi-label tasks, a softmax over classes otherwise; logits divided by
    ``temperature`` first when one was fitted."""
    if temperature is not None:
        logits = logits / temperature
    return torch.sigmoid(logits) if multi_label else logits.softmax(-1)


def view_logits(model, x: torch.Tensor, tta: bool = False, device="cpu", amp: Optional[str] = None) -> torch.Tensor:
    """float32 logits (views, batch, classes) of a batch and, with ``tta``, of its horizontal mirror."""
    views = (x, x.flip(-1)) if tta else (x,)
    out = []
    for view in views:
        with autocast(device, amp):
            out.append(model(view).float())
    return torch.stack(out)


def model_probabilities(model, x: torch.Tensor, multi_label: bool, tta: bool = False, device="cpu",
                        amp: Optional[str] = None, temperature: Optional[float] = None) -> torch.Tensor:
    """Class probabilities of a batch; with ``tta`` averaged with those of the horizontal mirror images."""
    return probabilities_from_logits(view_logits(model, x, tta, device, amp), multi_label, temperature)


def probabilities_from_logits(logits: torch.Tensor, multi_label: bool, temperature: Optional[float] = None):
    """(views, images, classes) logits -> (images, classes) probabilities, averaged over the views exactly as
    ``model_probabilities`` averages them."""
    total = 0
    for view in logits:
        total = total + class_probabilities(view, multi_label, temperature)
    return total / len(logits)


@torch.no_grad()
def predict_logits(model, dataset, batch_size: int = 64, device="cpu", amp: Optional[str] = None,
                   num_workers: int = 0, progress: bool = False, tta: bool = False):
    """(labels, logits) over ``dataset``: logits as float32 (views, images, classes), the views being each
    image and, with ``tta``, its horizontal mirror. Sharded over ranks and gathered when distributed."""
    model.eval()
    indices = dist_utils.shard_indices(len(dataset))
    loader = DataLoader(torch.utils.data.Subset(dataset, indices), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, generator=torch.Generator())
    if progress and dist_utils.is_main():
        from tqdm.auto import tqdm
        loader = tqdm(loader, desc="evaluating", leave=False)
    labels, logits = [], []
    for x, y in loader:
        x = x.to(device, non_blocking=True)
        logits.append(view_logits(model, x, tta, device, amp).transpose(0, 1).cpu())  # gathered along images
        labels.append(y)
    labels = torch.cat(labels).numpy() if labels else np.zeros((0,))
    logits = torch.cat(logits).numpy() if logits else np.zeros((0, len((1, 2) if tta else (1,)), 0))
    labels, logits = dist_utils.gather_in_order(indices, labels, logits, len(dataset))
    return labels, np.ascontiguousarray(logits.transpose(1, 0, 2))


def predict(model, dataset, batch_size: int = 64, device="cpu", amp: Optional[str] = None, multi_label=False,
            num_workers: int = 0, progress: bool = False, tta: bool = False, temperature: Optional[float] = None):
    """(labels, probabilities) over ``dataset``; ``tta``: each image's probabilities averaged with those of
    its horizontal mirror (test-time augmentation matching the training flips)."""
    labels, logits = predict_logits(model, dataset, batch_size, device, amp, num_workers, progress, tta)
    probs = probabilities_from_logits(torch.from_numpy(logits), multi_label, temperature).numpy()
    return labels, probs


def predicted_names(probs: np.ndarray, classes, multi_label: bool, threshold: Optional[float] = None,
                    positive: int = 1) -> list[str]:
    """Each image's predicted class name: the most probable class; with a binary ``threshold``, ``positive``
    when its probability reaches it; multi-label: every class at p >= 0.5, joined by ";"."""
    classes = [str(c) for c in classes]
    if multi_label:
        return [";".join(c for c, p in zip(classes, row) if p >= 0.5) for row in probs]
    if not len(probs):
        return []
    if threshold is not None and len(classes) == 2:
        return [classes[positive if p >= threshold else 1 - positive] for p in probs[:, positive]]
    return [classes[k] for k in np.asarray(probs).argmax(1)]
