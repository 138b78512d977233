"""Selective prediction: what happens when the least confident images are referred to a person.

The model keeps the images it is most confident about (the largest class probability) and refers the rest;
the risk-coverage curve gives the error rate on the kept images for every share kept, and its area (AURC,
Geifman & El-Yaniv 2017; lower is better) sums it up in one figure.
"""
from __future__ import annotations

import numpy as np

REFERRED = 0.10  # the report's headline: accuracy when this share, the least confident, goes to a person


def risk_coverage(labels, probs) -> tuple[np.ndarray, np.ndarray]:
    """(coverage, risk): keeping the k most confident images, k = 1..n, the share kept and their error rate.
    Ties in confidence keep the images' order, so the curve is reproducible."""
    labels = np.asarray(labels).reshape(-1).astype(int)
    probs = np.asarray(probs)
    order = np.argsort(-probs.max(1), kind="stable")
    wrong = (probs.argmax(1) != labels)[order]
    k = np.arange(1, len(labels) + 1)
    return k / len(labels), np.cumsum(wrong) / k


def selective_summary(labels, probs, referred: float = REFERRED) -> dict:
    """AURC, the accuracy on all images, and the accuracy on the images kept when the least confident
    ``referred`` share goes to a person."""
    coverage, risk = risk_coverage(labels, probs)
    if not len(coverage):
        return {}
    keep = max(1, int(round(len(coverage) * (1 - referred))))
    return {"aurc": float(risk.mean()), "accuracy_all": float(1 - risk[-1]), "referred": referred,
            "accuracy_kept": float(1 - risk[keep - 1]), "kept": keep, "n": int(len(coverage))}
