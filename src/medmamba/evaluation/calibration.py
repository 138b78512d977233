"""Calibration and operating points, fitted on the validation split only.

* Temperature scaling (Guo et al., 2017): one scalar T dividing the logits, chosen to minimise the
  validation negative log-likelihood. It leaves every ranking, so AUC, unchanged.
* ECE with 15 equal-width confidence bins, the Brier score and the NLL, before and after.
* For binary tasks, the threshold on the positive class's probability that reaches a target sensitivity
  on validation, to be reported with the test sensitivity and specificity it gives.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

ECE_BINS = 15


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.tanh(0.5 * logits))


def probabilities(logits: np.ndarray, multi_label: bool, temperature: Optional[float] = None) -> np.ndarray:
    """Logits (views, images, classes) -> probabilities (images, classes), averaged over the views (the
    image and its mirror under test-time augmentation), as ``prediction.model_probabilities`` does."""
    logits = np.asarray(logits, dtype=np.float64)
    logits = logits[None] if logits.ndim == 2 else logits
    scaled = logits / (temperature or 1.0)
    return (sigmoid(scaled) if multi_label else softmax(scaled)).mean(0)


def nll(labels, probs, multi_label: bool, eps: float = 1e-12) -> float:
    """Mean negative log-likelihood, probabilities clipped to [eps, 1 - eps]."""
    p = np.clip(np.asarray(probs, dtype=np.float64), eps, 1 - eps)
    y = np.asarray(labels)
    if multi_label:
        y = y.reshape(p.shape)
        return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())
    return float(-np.log(p[np.arange(len(y)), y.astype(int).reshape(-1)]).mean())


def brier(labels, probs, multi_label: bool) -> float:
    """Mean over images of the squared distance between the probability vector and the one-hot label
    (Brier's original multi-class form; for multi-label, the mean over labels of the binary score)."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels)
    if multi_label:
        return float(((p - y.reshape(p.shape)) ** 2).mean())
    onehot = np.eye(p.shape[1])[y.astype(int).reshape(-1)]
    return float(((p - onehot) ** 2).sum(1).mean())


def reliability(labels, probs, multi_label: bool, bins: int = ECE_BINS) -> dict:
    """Per confidence bin (equal width on [0, 1]): count, mean confidence, accuracy; and the ECE, the
    count-weighted mean |accuracy - confidence|. Confidence is the top class's probability (for multi-label,
    every (image, label) pair counts, with the probability of the decision taken)."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels)
    if multi_label:
        y = y.reshape(p.shape)
        conf = np.where(p >= 0.5, p, 1 - p).ravel()
        correct = ((p >= 0.5) == (y == 1)).ravel()
    else:
        conf = p.max(1)
        correct = p.argmax(1) == y.astype(int).reshape(-1)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    conf_sum = np.bincount(which, weights=conf, minlength=bins)
    correct_sum = np.bincount(which, weights=correct.astype(np.float64), minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(count > 0, conf_sum / np.maximum(count, 1), np.nan)
        accuracy = np.where(count > 0, correct_sum / np.maximum(count, 1), np.nan)
    ece = float(np.abs(correct_sum - conf_sum).sum() / max(len(conf), 1))
    return {"edges": edges.tolist(), "count": count.tolist(), "confidence": mean_conf.tolist(),
            "accuracy": accuracy.tolist(), "ece": ece}


def calibration_metrics(labels, probs, multi_label: bool) -> dict:
    return {"ece": reliability(labels, probs, multi_label)["ece"], "brier": brier(labels, probs, multi_label),
            "nll": nll(labels, probs, multi_label)}


def fit_temperature(logits: np.ndarray, labels, multi_label: bool, bounds=(0.05, 20.0)) -> float:
    """The T in ``bounds`` minimising the NLL of ``probabilities(logits / T)`` on these (validation) images."""
    from scipy.optimize import minimize_scalar
    logits = np.asarray(logits, dtype=np.float64)

    def loss(log_t):
        return nll(labels, probabilities(logits, multi_label, math.exp(log_t)), multi_label)
    result = minimize_scalar(loss, bounds=(math.log(bounds[0]), math.log(bounds[1])), method="bounded",
                             options={"xatol": 1e-5})
    return float(math.exp(result.x))


def threshold_for_sensitivity(labels, probs, target: float, positive: int = 1) -> float:
    """The highest threshold t on p(positive) such that predicting positive when p >= t reaches sensitivity
    ``target`` on these (validation) images: the most specific operating point that meets the target."""
    if not 0 < target <= 1:
        raise ValueError(f"target sensitivity must be in (0, 1]; got {target}")
    y = np.asarray(labels).reshape(-1) == positive
    if not y.any():
        raise ValueError("no positive image to set a sensitivity on")
    scores = np.sort(np.asarray(probs, dtype=np.float64)[:, positive][y])[::-1]
    needed = math.ceil(target * len(scores) - 1e-9)   # positives that must score >= t
    return float(scores[max(needed, 1) - 1])


def operating_point(labels, probs, threshold: float, positive: int = 1) -> dict:
    """Sensitivity and specificity of 'positive when p(positive) >= threshold'."""
    y = np.asarray(labels).reshape(-1) == positive
    pred = np.asarray(probs, dtype=np.float64)[:, positive] >= threshold
    return {"threshold": float(threshold), "positive": int(positive),
            "sensitivity": float((pred & y).sum() / max(y.sum(), 1)),
            "specificity": float((~pred & ~y).sum() / max((~y).sum(), 1))}


def single_class_share(probs, multi_label: bool) -> Optional[float]:
    """Share of images given the most common predicted class (single-label tasks), None for multi-label."""
    if multi_label or len(probs) == 0:
        return None
    pred = np.asarray(probs).argmax(1)
    return float(np.bincount(pred).max() / len(pred))




def calibrate_card(model, dataset, card, cfg: dict, multi_label: bool, positive: int, device="cpu"):
    """``card`` with what is fitted on ``dataset`` (the validation split): the temperature (``calibrate``),
    with ``sensitivity`` the binary threshold on class ``positive`` that reaches it, and with ``coverage`` the
    conformal prediction sets (on the probabilities after the temperature)."""
    import torch

    from .prediction import predict_logits, probabilities_from_logits
    labels, logits = predict_logits(model, dataset, cfg["eval_batch_size"], device, cfg["amp"], tta=cfg["tta"])
    if cfg["calibrate"]:
        card.temperature = fit_temperature(logits, labels, multi_label)
    if cfg["sensitivity"] is not None:
        probs = probabilities_from_logits(torch.from_numpy(logits), False, card.temperature).numpy()
        card.threshold = threshold_for_sensitivity(labels, probs, cfg["sensitivity"], positive)
    if cfg["sensitivity"] is not None or cfg["positive_class"] is not None:
        card.positive_class = positive  # evaluate reports this class's sensitivity and specificity too
    if cfg["coverage"] is not None and not multi_label:
        from .conformal import calibrate_sets
        probs = probabilities_from_logits(torch.from_numpy(logits), False, card.temperature).numpy()
        card.conformal = calibrate_sets(probs, labels, cfg["coverage"], cfg["conformal"]).to_dict()
    return card
