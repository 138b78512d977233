"""Uncertainty of test-set figures: stratified bootstrap intervals, paired comparisons, DeLong's AUC test.

All resampling is over test images with a seeded generator, so a report's intervals are reproducible.
Intervals are percentile intervals of the resampled statistic.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np

from ..data.tasks import is_multi_label
from .metrics import headline

INTERVAL_METRICS = ("accuracy", "balanced_accuracy", "auc", "sensitivity", "specificity", "f1")


def _midranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n along the last axis, ties given their average rank."""
    from scipy.stats import rankdata
    return rankdata(x, axis=-1)


def auc_rank(y: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney statistic (ties count half); NaN when one class is absent."""
    y = np.asarray(y).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _midranks(np.asarray(score, dtype=np.float64))
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def point_metrics(labels: np.ndarray, probs: np.ndarray, task: str, positive: int = 1) -> dict:
    """The figures that get intervals, computed cheaply enough to repeat thousands of times, as
    ``metrics.classification_metrics`` defines them: macro averages over classes (over labels for
    multi-label), the positive class's for binary tasks."""
    probs = np.asarray(probs, dtype=np.float64)
    n, k = probs.shape
    if is_multi_label(task):
        y = np.asarray(labels).reshape(n, k).astype(int)
        pred = (probs > 0.5).astype(int)
        tp = ((pred == 1) & (y == 1)).sum(0)
        fp = ((pred == 1) & (y == 0)).sum(0)
        fn = ((pred == 0) & (y == 1)).sum(0)
        tn = ((pred == 0) & (y == 0)).sum(0)
        accuracy = float((pred == y).mean())
        aucs = [auc_rank(y[:, c], probs[:, c]) for c in range(k)]
    else:
        y = np.asarray(labels).reshape(n).astype(int)
        pred = probs.argmax(1)
        cm = np.bincount(y * k + pred, minlength=k * k).reshape(k, k)
        tp = np.diag(cm).astype(np.float64)
        fp, fn = cm.sum(0) - tp, cm.sum(1) - tp
        tn = cm.sum() - tp - fp - fn
        accuracy = float(tp.sum() / max(n, 1))
        aucs = [auc_rank(y == 1, probs[:, 1])] if k == 2 else [auc_rank(y == c, probs[:, c]) for c in range(k)]
    with np.errstate(invalid="ignore", divide="ignore"):
        sens = np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1), 0.0)
        spec = np.where(tn + fp > 0, tn / np.maximum(tn + fp, 1), 0.0)
        prec = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 0.0)
        f1 = np.where(prec + sens > 0, 2 * prec * sens / np.maximum(prec + sens, 1e-300), 0.0)
    aucs = np.array(aucs, dtype=np.float64)
    binary = k == 2 and not is_multi_label(task)
    return {"accuracy": accuracy, "balanced_accuracy": float(sens.mean()),
            "auc": float(np.nanmean(aucs)) if not np.all(np.isnan(aucs)) else float("nan"),
            "sensitivity": headline(sens, binary, positive), "specificity": headline(spec, binary, positive),
            "f1": headline(f1, binary, positive)}


def stratified_resamples(labels: np.ndarray, n_resamples: int, seed: int = 0, multi_label: bool = False):
    """Index arrays of bootstrap resamples that keep each class's count (plain resamples for multi-label,
    where classes overlap), so every resample holds both classes and AUC stays defined."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    n = len(labels)
    if multi_label:
        for _ in range(n_resamples):
            yield rng.integers(0, n, n)
        return
    groups = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    for _ in range(n_resamples):
        yield np.concatenate([g[rng.integers(0, len(g), len(g))] for g in groups])


def _percentile_interval(values: np.ndarray, level: float) -> tuple[float, float]:
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return float("nan"), float("nan")
    alpha = (1 - level) / 2
    return float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha))


def bootstrap_intervals(labels, probs, task: str, n_resamples: int = 1000, seed: int = 0, level: float = 0.95,
                        metric_fn: Optional[Callable] = None, positive: int = 1) -> dict[str, tuple[float, float]]:
    """{metric: (low, high)}: ``level`` percentile intervals over stratified bootstrap resamples of the images."""
    if n_resamples < 1:
        raise ValueError("n_resamples must be >= 1")
    labels, probs = np.asarray(labels), np.asarray(probs)
    fn = metric_fn or (lambda y, p: point_metrics(y, p, task, positive))
    draws = [fn(labels[i], probs[i]) for i in stratified_resamples(labels, n_resamples, seed, is_multi_label(task))]
    return {key: _percentile_interval(np.array([d[key] for d in draws], dtype=np.float64), level) for key in draws[0]}


def paired_bootstrap(labels, probs_a, probs_b, task: str, n_resamples: int = 1000, seed: int = 0,
                     level: float = 0.95) -> dict[str, dict]:
    """Per metric: the difference A - B on the test set, its ``level`` interval and a two-sided p-value, from
    the same resamples of images applied to both models (so what they have in common cancels out)."""
    labels, probs_a, probs_b = np.asarray(labels), np.asarray(probs_a), np.asarray(probs_b)
    if probs_a.shape != probs_b.shape or len(labels) != len(probs_a):
        raise ValueError(f"paired comparison needs predictions for the same images: {probs_a.shape} vs {probs_b.shape}")
    observed_a = point_metrics(labels, probs_a, task)
    observed_b = point_metrics(labels, probs_b, task)
    diffs = {key: [] for key in observed_a}
    for idx in stratified_resamples(labels, n_resamples, seed, is_multi_label(task)):
        a = point_metrics(labels[idx], probs_a[idx], task)
        b = point_metrics(labels[idx], probs_b[idx], task)
        for key in diffs:
            diffs[key].append(a[key] - b[key])
    out = {}
    for key, values in diffs.items():
        d = np.array(values, dtype=np.float64)
        d = d[~np.isnan(d)]
        # Two-sided percentile-bootstrap p-value: how often the resampled difference falls on the other
        # side of zero; a difference that is exactly zero in every resample gives p = 1.
        p = min(1.0, 2 * min(np.mean(d <= 0), np.mean(d >= 0))) if len(d) else float("nan")
        low, high = _percentile_interval(d, level)
        out[key] = {"a": observed_a[key], "b": observed_b[key], "difference": observed_a[key] - observed_b[key],
                    "low": low, "high": high, "p": float(p)}
    return out


def _structural_components(y: np.ndarray, score: np.ndarray):
    """DeLong's placement values: V10 per positive, V01 per negative (Sun & Xu 2014's midrank form)."""
    y = y.astype(bool)
    pos, neg = score[y], score[~y]
    m, n = len(pos), len(neg)
    r_all = _midranks(np.concatenate([pos, neg]))
    r_pos, r_neg = _midranks(pos), _midranks(neg)
    v10 = (r_all[:m] - r_pos) / n
    v01 = 1.0 - (r_all[m:] - r_neg) / m
    return v10, v01


def delong_test(y, score_a, score_b) -> dict:
    """DeLong, DeLong & Clarke-Pearson (1988): AUCs of two scores on the same binary labels, the
    difference's standard error from their covariance, and the two-sided p-value of the z statistic."""
    from scipy.stats import norm
    y = np.asarray(y).astype(bool)
    if y.all() or not y.any():
        raise ValueError("DeLong's test needs both classes among the labels")
    m, n = int(y.sum()), int((~y).sum())
    comps = [_structural_components(y, np.asarray(s, dtype=np.float64)) for s in (score_a, score_b)]
    aucs = np.array([v10.mean() for v10, _ in comps])
    s10 = np.cov(np.stack([v10 for v10, _ in comps]))
    s01 = np.cov(np.stack([v01 for _, v01 in comps]))
    cov = s10 / m + s01 / n
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    diff = float(aucs[0] - aucs[1])
    if var <= 1e-15:  # identical rankings: no evidence of a difference
        z, p = 0.0, 1.0
    else:
        z = diff / math.sqrt(var)
        p = float(2 * norm.sf(abs(z)))
    return {"auc_a": float(aucs[0]), "auc_b": float(aucs[1]), "difference": diff, "se": math.sqrt(max(var, 0.0)),
            "z": z, "p": p, "var_a": float(cov[0, 0]), "var_b": float(cov[1, 1])}
