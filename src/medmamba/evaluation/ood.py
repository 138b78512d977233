"""Out-of-distribution score: is an image like the ones the model was trained on?

A classifier answers for every image, a brain MRI or noise included, and its confidence does not say when it
should not (benchmarks/ood.py measures it: the maximum softmax probability separates chest X-rays from the
breast ultrasound a model was trained on worse than chance). The score here is a distance in the model's
own pooled features (what its head sees), computed by pytorch-ood's detectors:

  knn          distance to the k-th nearest training image, features L2-normalised (Sun et al. 2022)
  mahalanobis  distance to the nearest class mean under the shared covariance (Lee et al. 2018)
  energy, msp  from the logits alone (Liu et al. 2020; Hendrycks & Gimpel 2017), for comparison

Higher means further from the training images. The threshold is set on the validation split, so that
``tpr`` (95%) of in-distribution validation images pass; images above it are flagged. The training images'
features (their eval-mode view, no augmentation) are saved beside the weights (ood.safetensors), so a
loaded model scores new images without its data; the card records the method and the threshold.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..errors import MedMambaError

METHODS = ("knn", "mahalanobis", "energy", "msp")
FEATURE_METHODS = ("knn", "mahalanobis")
DEFAULT_TPR = 0.95
DEFAULT_K = 50


@torch.no_grad()
def pooled_features(model, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(pooled features the head sees, logits) of a batch: MedMamba's and every timm model's forward_head."""
    features = model.forward_head(model.forward_features(images), pre_logits=True)
    head = model.get_classifier() if hasattr(model, "get_classifier") else model.head
    return features.float(), head(features).float()


@torch.no_grad()
def dataset_features(model, dataset, batch_size: int = 64, device="cpu") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features, logits, labels) of every image of ``dataset``, in order."""
    from torch.utils.data import DataLoader
    model.eval()
    feats, logits, labels = [], [], []
    for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        f, lg = pooled_features(model, x.to(device))
        feats.append(f.cpu())
        logits.append(lg.cpu())
        labels.append(y)
    return torch.cat(feats).numpy(), torch.cat(logits).numpy(), torch.cat(labels).numpy()


def _detector(method: str, bank: Optional[np.ndarray], bank_labels: Optional[np.ndarray], k: int):
    from pytorch_ood.detector import KNN, Mahalanobis
    if method == "knn":
        if bank is None or len(bank) <= k:
            raise MedMambaError(f"ood: knn with k={k} needs more than {k} training images")
        return KNN(None, k=k).fit_features(torch.from_numpy(bank), torch.from_numpy(bank_labels).long())
    return Mahalanobis(None).fit_features(torch.from_numpy(bank), torch.from_numpy(bank_labels).long())


def raw_scores(method: str, features: np.ndarray, logits: np.ndarray, bank: Optional[np.ndarray] = None,
               bank_labels: Optional[np.ndarray] = None, k: int = DEFAULT_K, temperature: Optional[float] = None,
               detector=None) -> np.ndarray:
    """Outlier score of each image (higher: further from the training images)."""
    if method not in METHODS:
        raise MedMambaError(f"ood method {method!r}: one of {', '.join(METHODS)}")
    logits_t = torch.from_numpy(np.asarray(logits, dtype=np.float64))
    if temperature:
        logits_t = logits_t / temperature
    if method == "energy":  # pytorch-ood's EnergyBased.score: -logsumexp
        from pytorch_ood.detector import EnergyBased
        return EnergyBased.score(logits_t).numpy()
    if method == "msp":
        from pytorch_ood.detector import MaxSoftmax
        return MaxSoftmax.score(logits_t).numpy()
    detector = detector or _detector(method, bank, bank_labels, k)
    z = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
    return detector.predict_features(z).cpu().numpy().astype(np.float64)


@dataclass
class OODDetector:
    method: str
    threshold: float          # images scoring above it are flagged
    tpr: float                # the share of in-distribution validation images the threshold lets pass
    k: int = DEFAULT_K
    temperature: Optional[float] = None
    bank: Optional[np.ndarray] = None         # training features (feature methods)
    bank_labels: Optional[np.ndarray] = None

    def card_entry(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in ("bank", "bank_labels")}

    def scores(self, features: np.ndarray, logits: np.ndarray) -> np.ndarray:
        if getattr(self, "_fitted", None) is None and self.method in FEATURE_METHODS:
            self._fitted = _detector(self.method, self.bank, self.bank_labels, self.k)
        return raw_scores(self.method, features, logits, k=self.k, temperature=self.temperature,
                          detector=getattr(self, "_fitted", None))

    def flags(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores) > self.threshold

    def save_bank(self, path: str | Path):
        if self.bank is not None:
            from ..artifacts.checkpoint import save_weights
            save_weights({"features": torch.from_numpy(self.bank), "labels": torch.from_numpy(self.bank_labels)}, path)

    @classmethod
    def from_card(cls, entry: dict, bank_path: Optional[str | Path] = None) -> "OODDetector":
        detector = cls(**entry)
        if detector.method in FEATURE_METHODS:
            from ..artifacts.checkpoint import read_state_dict
            if bank_path is None or not Path(bank_path).is_file():
                raise MedMambaError(f"ood: the card's {detector.method} score needs its training features "
                                    f"({bank_path}), which are missing")
            saved = read_state_dict(bank_path)
            detector.bank, detector.bank_labels = saved["features"].numpy(), saved["labels"].numpy()
        return detector


def fit_detector(method: str, train: tuple, val: tuple, tpr: float = DEFAULT_TPR, k: int = DEFAULT_K,
                 temperature: Optional[float] = None) -> OODDetector:
    """A detector from the training images' (features, logits, labels) whose threshold lets ``tpr`` of the
    validation images' (features, logits) pass."""
    feats, _, labels = train
    bank = np.ascontiguousarray(feats, dtype=np.float32) if method in FEATURE_METHODS else None
    labels = np.asarray(labels).reshape(len(labels), -1)[:, 0].astype(np.int64) if bank is not None else None
    if bank is not None:
        k = max(1, min(k, len(bank) // 4))  # a small training set: the k-th neighbour still nearby
    detector = OODDetector(method, 0.0, tpr, k, temperature, bank, labels)
    val_scores = detector.scores(val[0], val[1])
    detector.threshold = float(np.quantile(val_scores, tpr, method="higher"))
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
    batch = cfg["eval_batch_size"]
    train = dataset_features(model, train_dataset, batch, device)
    val = dataset_features(model, val_dataset, batch, device)
    return fit_detector(cfg["ood"], train, val[:2], temperature=temperature)


def dataset_scores(detector: OODDetector, model, dataset, batch_size: int = 64, device="cpu") -> np.ndarray:
    features, logits, _ = dataset_features(model, dataset, batch_size, device)
    return detector.scores(features, logits)
