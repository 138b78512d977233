"""The MedMamba paper's metrics and MedMNIST's ACC/AUC rules, from labels and predicted probabilities.

Per class c (one-vs-rest): precision TP/(TP+FP), sensitivity TP/(TP+FN), specificity TN/(TN+FP),
F1 = 2PR/(P+R) (0 where undefined); as headline figures, their macro averages over classes (the paper's
convention), except for binary tasks, where they are the positive class's (``positive``, default the
second): over two classes the macro sensitivity and the macro specificity are both the balanced accuracy,
which tells a reader nothing about missed positives. Overall accuracy; AUC; balanced accuracy (the macro
sensitivity); average precision (PR-AUC, of the positive class for binary tasks, else
the macro one-vs-rest mean). Multi-label tasks treat each label as its own binary problem at threshold 0.5.
"""
from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, confusion_matrix, roc_auc_score

from ..data.tasks import is_multi_label

# the figures a binary report gives for its positive class (a multi-class report: their macro averages)
POSITIVE_CLASS_FIGURES = ("precision", "sensitivity", "specificity", "f1")


def headline(per_class: np.ndarray, binary: bool, positive: int = 1) -> float:
    """A per-class figure as a report states it: the positive class's for a binary task, else the macro mean."""
    return float(per_class[positive]) if binary else float(per_class.mean())


def _nanmean(values: np.ndarray) -> float:
    return float(np.nanmean(values)) if not np.all(np.isnan(values)) else float("nan")


def _safe_div(num, den):
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def per_class_counts(cm: np.ndarray):
    """TP, FP, FN, TN per class from a (true x predicted) confusion matrix."""
    tp = np.diag(cm).astype(np.float64)
    fp = cm.sum(0) - tp
    fn = cm.sum(1) - tp
    tn = cm.sum() - tp - fp - fn
    return tp, fp, fn, tn


def _rates(tp, fp, fn, tn):
    precision = _safe_div(tp, tp + fp)
    sensitivity = _safe_div(tp, tp + fn)
    specificity = _safe_div(tn, tn + fp)
    f1 = _safe_div(2 * precision * sensitivity, precision + sensitivity)
    return precision, sensitivity, specificity, f1


def _auc(y_true_binary: np.ndarray, score: np.ndarray) -> float:
    # AUC is undefined when a class is absent; report NaN rather than a made-up number.
    if y_true_binary.min() == y_true_binary.max():
        return float("nan")
    return float(roc_auc_score(y_true_binary, score))


def _average_precision(y_true_binary: np.ndarray, score: np.ndarray) -> float:
    if y_true_binary.min() == y_true_binary.max():
        return float("nan")
    return float(average_precision_score(y_true_binary, score))


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, task: str = "multi-class",
                           class_names=None, threshold: float = 0.5, positive: int = 1) -> dict:
    """Metrics of the MedMamba paper's table and MedMNIST's Evaluator.

    y_true: (N,) class indices, or (N, K) 0/1 for multi-label. probs: (N, K) softmax (or sigmoid) outputs.
    """
    y_true, probs = np.asarray(y_true), np.asarray(probs, dtype=np.float64)
    n, k = probs.shape
    names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
    if is_multi_label(task):
        y_true = y_true.reshape(n, k).astype(int)
        pred = (probs > threshold).astype(int)
        counts = [per_class_counts(confusion_matrix(y_true[:, c], pred[:, c], labels=[0, 1]))
                  for c in range(k)]
        tp, fp, fn, tn = (np.array([cnt[i][1] for cnt in counts]) for i in range(4))  # the positive class
        aucs = np.array([_auc(y_true[:, c], probs[:, c]) for c in range(k)])
        aps = np.array([_average_precision(y_true[:, c], probs[:, c]) for c in range(k)])
        acc_per_label = (pred == y_true).mean(0)
        accuracy = float(acc_per_label.mean())  # MedMNIST: mean over labels of per-label accuracy
        cm = None
        medmnist_auc = float(np.nanmean(aucs)) if not np.all(np.isnan(aucs)) else float("nan")
        macro_auc = medmnist_auc
    else:
        y_true = y_true.reshape(n).astype(int)
        pred = probs.argmax(1)
        cm = confusion_matrix(y_true, pred, labels=list(range(k)))
        tp, fp, fn, tn = per_class_counts(cm)
        accuracy = float((pred == y_true).mean())
        aucs = np.array([_auc((y_true == c).astype(int), probs[:, c]) for c in range(k)])
        aps = np.array([_average_precision((y_true == c).astype(int), probs[:, c]) for c in range(k)])
        if k == 2:
            # binary: AUC of the positive-class score (MedMNIST and the paper alike)
            macro_auc = medmnist_auc = float(aucs[1])
        else:
            # one-vs-rest macro average; equals MedMNIST's mean over classes
            macro_auc = medmnist_auc = float(np.nanmean(aucs)) if not np.all(np.isnan(aucs)) else float("nan")
    precision, sensitivity, specificity, f1 = _rates(tp, fp, fn, tn)
    per_class = {name: dict(precision=float(precision[i]), sensitivity=float(sensitivity[i]),
                            specificity=float(specificity[i]), f1=float(f1[i]), auc=float(aucs[i]),
                            support=int(tp[i] + fn[i]))
                 for i, name in enumerate(names)}
    binary = k == 2 and not is_multi_label(task)
    figures = {key: headline(v, binary, positive)
               for key, v in zip(POSITIVE_CLASS_FIGURES, (precision, sensitivity, specificity, f1))}
    return dict(
        n=int(n), task=task,
        accuracy=accuracy, **figures, auc=macro_auc,
        positive_class=names[positive] if binary else None,
        balanced_accuracy=float(sensitivity.mean()),
        average_precision=float(aps[positive]) if binary else _nanmean(aps),
        medmnist=dict(acc=accuracy, auc=medmnist_auc),
        per_class=per_class,
        confusion_matrix=cm.tolist() if cm is not None else None,
    )
