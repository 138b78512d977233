"""Out-of-distribution score: is an image like the ones the model was trained on?

A classifier answers for every image, a brain MRI or noise included, and its confidence does not say when it
should not (benchmarks/ood.py measures it: the maximum softmax probability separates chest X-rays from the
breast ultrasound a model was trained on worse than chance). The score is a distance in the model's own
features, from the training images (their eval-mode view, no augmentation):

  stages       (default) every stage's average-pooled map, its Mahalanobis distance to the training
               images under a Ledoit-Wolf shrunk covariance (scikit-learn), each standardised on the
               validation split and summed: Lee et al. 2018's feature ensemble. The shrinkage matters: a
               BreastMNIST model has 546 training images for 768 features, where the plain covariance is
               singular (benchmarks/ood.py: AUROC 0.46 against chest X-rays plain, 0.9998 this way)
  mahalanobis  pytorch-ood's: the pooled features' distance to the nearest class mean (Lee et al. 2018)
  knn          pytorch-ood's: distance to the k-th nearest training image, L2-normalised (Sun et al. 2022)
  energy, msp  pytorch-ood's, from the logits alone (Liu et al. 2020; Hendrycks & Gimpel 2017)

Higher means further from the training images. The threshold is set on the validation split, so that
``tpr`` (95%) of in-distribution validation images pass; images above it are flagged. What the score needs
(the fitted means and precisions, or the training features) is saved beside the weights (ood.safetensors),
so a loaded model scores new images without its data; the card records the method and the threshold.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..errors import MedMambaError

METHODS = ("stages", "mahalanobis", "knn", "energy", "msp")
FEATURE_METHODS = ("knn", "mahalanobis")  # pytorch-ood's, fitted from the training features kept in the state
DEFAULT_TPR = 0.95
DEFAULT_K = 50


@torch.no_grad()
def batch_features(model, images: torch.Tensor, stages: bool = False):
    """(features, logits) of a batch in one pass through the backbone: the pooled features the head sees
    (MedMamba's and every timm model's forward_head), or with ``stages`` each stage's map average-pooled,
    [(batch, channels of stage i)], through timm's forward_intermediates (MedMamba's, and most timm models')."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else model.head
    if not stages:
        features = model.forward_head(model.forward_features(images), pre_logits=True)
        return features.float(), head(features).float()
    if not hasattr(model, "forward_intermediates"):
        raise MedMambaError(f"ood: stages needs forward_intermediates, which {type(model).__name__} lacks; "
                            f"use ood: mahalanobis")
    final, maps = model.forward_intermediates(images)
    logits = head(model.forward_head(final, pre_logits=True)).float()
    return [m.float().mean((2, 3)) for m in maps], logits


@torch.no_grad()
def dataset_features(model, dataset, batch_size: int = 64, device="cpu", stages: bool = False):
    """(features, logits, labels) of every image of ``dataset``, in order; with ``stages`` the features are a
    list, one (images, channels) array per stage."""
    from torch.utils.data import DataLoader
    model.eval()
    feats, logits, labels = [], [], []
    for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        f, lg = batch_features(model, x.to(device), stages)
        feats.append([s.cpu() for s in f] if stages else [f.cpu()])
        logits.append(lg.cpu())
        labels.append(y)
    per_stage = [torch.cat([f[i] for f in feats]).numpy() for i in range(len(feats[0]))]
    return (per_stage if stages else per_stage[0]), torch.cat(logits).numpy(), torch.cat(labels).numpy()


def _pytorch_ood(method: str, state: dict, k: int):
    from pytorch_ood.detector import KNN, Mahalanobis
    z, y = torch.from_numpy(state["features"]), torch.from_numpy(state["labels"]).long()
    if method == "knn":
        return KNN(None, k=k).fit_features(z, y)
    return Mahalanobis(None).fit_features(z, y)


def fit_stages(per_stage: list[np.ndarray]) -> dict:
    """Each stage's mean and Ledoit-Wolf shrunk precision (scikit-learn) over the training features."""
    from sklearn.covariance import LedoitWolf
    state = {}
    for i, f in enumerate(per_stage):
        lw = LedoitWolf().fit(np.asarray(f, dtype=np.float64))
        state[f"location_{i}"], state[f"precision_{i}"] = lw.location_, lw.precision_
    return state


def stage_distances(state: dict, per_stage: list[np.ndarray]) -> np.ndarray:
    """(images, stages) squared Mahalanobis distances under each stage's fitted mean and precision."""
    out = []
    for i, f in enumerate(per_stage):
        d = np.asarray(f, dtype=np.float64) - state[f"location_{i}"]
        out.append(np.einsum("ij,jk,ik->i", d, state[f"precision_{i}"], d))
    return np.stack(out, 1)


@dataclass
class OODDetector:
    method: str
    threshold: float          # images scoring above it are flagged
    tpr: float                # the share of in-distribution validation images the threshold lets pass
    k: int = DEFAULT_K
    temperature: Optional[float] = None
    state: dict = field(default_factory=dict)  # what scoring needs (saved beside the weights)

    def card_entry(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "state"}

    def scores(self, features, logits: np.ndarray) -> np.ndarray:
        """Outlier score of each image (higher: further from the training images); ``features`` as
        ``dataset_features`` gives them for this method."""
        logits_t = torch.from_numpy(np.asarray(logits, dtype=np.float64))
        if self.temperature:
            logits_t = logits_t / self.temperature
        if self.method == "energy":
            from pytorch_ood.detector import EnergyBased
            return EnergyBased.score(logits_t).numpy()
        if self.method == "msp":
            from pytorch_ood.detector import MaxSoftmax
            return MaxSoftmax.score(logits_t).numpy()
        if self.method == "stages":
            z = (stage_distances(self.state, features) - self.state["val_mean"]) / self.state["val_sd"]
            return z.sum(1)
        if getattr(self, "_fitted", None) is None:
            self._fitted = _pytorch_ood(self.method, self.state, self.k)
        z = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
        return self._fitted.predict_features(z).cpu().numpy().astype(np.float64)

    def flags(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores) > self.threshold

    def save_state(self, path: str | Path):
        if self.state:
            from ..artifacts.checkpoint import save_weights
            save_weights({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in self.state.items()}, path)

    @classmethod
    def from_card(cls, entry: dict, state_path: Optional[str | Path] = None) -> "OODDetector":
        detector = cls(**entry)
        if detector.method in ("stages", *FEATURE_METHODS):
            from ..artifacts.checkpoint import read_state_dict
            if state_path is None or not Path(state_path).is_file():
                raise MedMambaError(f"ood: the card's {detector.method} score needs what was fitted on the training "
                                    f"images ({state_path}), which is missing")
            detector.state = {k: v.numpy() for k, v in read_state_dict(state_path).items()}
        return detector


def fit_detector(method: str, train: tuple, val: tuple, tpr: float = DEFAULT_TPR, k: int = DEFAULT_K,
                 temperature: Optional[float] = None) -> OODDetector:
    """A detector from the training images' (features, logits, labels) whose threshold lets ``tpr`` of the
    validation images' (features, logits) pass."""
    if method not in METHODS:
        raise MedMambaError(f"ood method {method!r}: one of {', '.join(METHODS)}")
    feats, _, labels = train
    state = {}
    if method == "stages":
        state = fit_stages(feats)
        distances = stage_distances(state, val[0])
        state["val_mean"], state["val_sd"] = distances.mean(0), distances.std(0) + 1e-12
    elif method in FEATURE_METHODS:
        state = {"features": np.ascontiguousarray(feats, dtype=np.float32),
                 "labels": np.asarray(labels).reshape(len(labels), -1)[:, 0].astype(np.int64)}
        k = max(1, min(k, len(feats) // 4))  # a small training set: the k-th neighbour still nearby
    detector = OODDetector(method, 0.0, tpr, k, temperature, state)
    detector.threshold = float(np.quantile(detector.scores(*val), tpr, method="higher"))
    return detector


def separation(id_scores, ood_scores) -> dict:
    """AUROC of telling the out-of-distribution images from the in-distribution ones by their score, and the
    share of out-of-distribution images that pass when 95% of in-distribution ones do (FPR at 95% TPR)."""
    from sklearn.metrics import roc_auc_score
    id_scores, ood_scores = np.asarray(id_scores), np.asarray(ood_scores)
    y = np.r_[np.zeros(len(id_scores)), np.ones(len(ood_scores))]
    cut = np.quantile(id_scores, 0.95, method="higher")
    return {"auroc": float(roc_auc_score(y, np.r_[id_scores, ood_scores])),
            "fpr_at_95_tpr": float((ood_scores <= cut).mean()), "n_in": int(len(id_scores)),
            "n_out": int(len(ood_scores))}


def fit_for_run(model, cfg: dict, train_dataset, val_dataset, temperature: Optional[float] = None,
                device="cpu") -> OODDetector:
    """The configured detector (``cfg["ood"]``) for a trained model: fitted on the training images read
    without augmentation, its threshold set on the validation split."""
    batch, stages = cfg["eval_batch_size"], cfg["ood"] == "stages"
    train = dataset_features(model, train_dataset, batch, device, stages)
    val = dataset_features(model, val_dataset, batch, device, stages)
    return fit_detector(cfg["ood"], train, val[:2], temperature=temperature)


def dataset_scores(detector: OODDetector, model, dataset, batch_size: int = 64, device="cpu") -> np.ndarray:
    features, logits, _ = dataset_features(model, dataset, batch_size, device, detector.method == "stages")
    return detector.scores(features, logits)


def batch_scores(detector: OODDetector, model, images: torch.Tensor) -> np.ndarray:
    """Scores of a preprocessed batch (what ``Predictor`` and the web page call)."""
    stages = detector.method == "stages"
    features, logits = batch_features(model, images, stages)
    features = [f.cpu().numpy() for f in features] if stages else features.cpu().numpy()
    return detector.scores(features, logits.cpu().numpy())
