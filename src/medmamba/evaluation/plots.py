"""Report figures (confusion matrix, ROC, reliability, risk-coverage, galleries of images), written as PNG.

Drawn on ``matplotlib.figure.Figure`` objects, not through pyplot: no global backend is chosen or changed
and no figure is left open, whatever the caller (a notebook, a server) has set up.
"""
from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from ..data.tasks import is_multi_label


def _finish(fig, ax, path, title: str, xlabel: str, ylabel: str, legend: str):
    """Label a line plot's axes, title it, place its legend and write it as PNG (every curve figure here)."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc=legend)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_confusion_matrix(cm: np.ndarray, class_names, path, title=""):
    k = len(class_names)
    fig = Figure(figsize=(max(4.5, 2.2 + 0.7 * k), max(4.0, 1.8 + 0.7 * k)))
    ax = fig.subplots()
    rates = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{cm[i, j]}\n{rates[i, j]:.0%}", ha="center", va="center", fontsize=8,
                    color="white" if rates[i, j] > 0.5 else "black")
    ax.set_xticks(range(k), [str(c)[:18] for c in class_names], rotation=30, ha="right")
    ax.set_yticks(range(k), [str(c)[:18] for c in class_names])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{title}\nconfusion matrix (counts, row %)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_roc(labels, probs, class_names, task, path, title=""):
    from sklearn.metrics import roc_auc_score, roc_curve
    labels, probs = np.asarray(labels), np.asarray(probs)
    fig = Figure(figsize=(5, 4.5))
    ax = fig.subplots()
    if is_multi_label(task):
        curves = [(name, labels[:, i], probs[:, i]) for i, name in enumerate(class_names)]
    elif len(class_names) == 2:
        curves = [(f"{class_names[1]} vs {class_names[0]}", (labels == 1).astype(int), probs[:, 1])]
    else:
        curves = [(name, (labels == i).astype(int), probs[:, i]) for i, name in enumerate(class_names)]
    for name, y, s in curves:
        if y.min() == y.max():
            continue
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, lw=1.5, label=f"{str(name)[:40]} (AUC {roc_auc_score(y, s):.3f})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    _finish(fig, ax, path, f"{title}\nROC", "1 - specificity", "sensitivity", "lower right")


def plot_reliability(calibration: dict, path, title=""):
    """Reliability diagram: accuracy against confidence per bin, before and after the temperature."""
    fig = Figure(figsize=(5, 4.5))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="perfect calibration")
    t = calibration["temperature"]
    curves = [("before", calibration["reliability_before"], "C0")]
    if t is not None:
        curves.append((f"after (T = {t:.2f})", calibration["reliability_after"], "C1"))
    for name, rel, color in curves:
        conf = np.array(rel["confidence"], dtype=float)
        acc = np.array(rel["accuracy"], dtype=float)
        keep = ~np.isnan(conf)
        ax.plot(conf[keep], acc[keep], "o-", color=color, ms=4, label=f"{name}: ECE {rel['ece']:.3f}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    _finish(fig, ax, path, f"{title}\nreliability", "confidence (15 bins)", "accuracy", "upper left")


def plot_risk_coverage(labels, probs, path, title=""):
    """Error rate on the images kept against the share kept, the least confident referred first."""
    from .selective import REFERRED, risk_coverage, selective_summary
    coverage, risk = risk_coverage(labels, probs)
    summary = selective_summary(labels, probs)
    fig = Figure(figsize=(5, 4.5))
    ax = fig.subplots()
    ax.plot(coverage, risk, color="C0", lw=1.5, label=f"AURC {summary['aurc']:.3f}")
    ax.axvline(1 - REFERRED, color="grey", ls=":", lw=0.8)
    ax.plot([1 - REFERRED], [1 - summary["accuracy_kept"]], "o", color="C1", ms=5,
            label=f"{REFERRED:.0%} referred: accuracy {summary['accuracy_kept']:.3f} "
                  f"(all: {summary['accuracy_all']:.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, max(0.05, float(risk.max()) * 1.1))
    _finish(fig, ax, path, f"{title}\nrisk-coverage", "coverage (share of images the model keeps, most confident "
            "first)", "error rate on the kept images", "upper left")


def plot_gallery(panels, path, title="", columns: int = 4):
    """Images (H, W, 3 uint8) with a caption each, in a grid."""
    rows = max(1, -(-len(panels) // columns))
    fig = Figure(figsize=(2.6 * columns, 3.2 * rows))
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (image, caption) in zip(axes.flat, panels):
        ax.imshow(image)
        ax.set_title(caption, fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
