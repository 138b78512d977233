"""Split conformal prediction sets: with a coverage guarantee, the classes an image may belong to.

Calibrated on the validation split (never the test split): each validation image's nonconformity score of
its true class gives the threshold q, the ceil((n + 1) * coverage)-th smallest of those n scores; a new
image's set is every class whose score is at most q. If validation and new images are exchangeable, the
set holds the true class with probability at least ``coverage`` (Vovk et al. 2005; Angelopoulos & Bates,
"A gentle introduction to conformal prediction", 2021). A set of two or more classes means the model is
undecided between them; an empty set (lac only) means no class fits as well as the validation images' did.

TorchCP implements these scores but pulls in transformers, torch_geometric and a compiled torchsort;
crepes has lac (its "hinge") but not aps: so these few lines, and a test that checks the guarantee over
many random calibration/test splits of real predictions.

Scores, on the class probabilities (after the fitted temperature):
  lac   1 - p_k (least ambiguous set-valued classifier, Sadinle et al. 2019): the smallest sets on average
  aps   the probability mass of the classes ranked above k plus p_k (Romano et al. 2020): sets that adapt to
        how hard an image is; not randomised (slightly conservative, the same set every time) and never empty
  raps  aps + lam * max(0, rank_k - k_reg) (Angelopoulos et al. 2021): aps with unlikely classes penalised
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import MedMambaError

METHODS = ("lac", "aps", "raps")


@dataclass
class ConformalSets:
    method: str
    coverage: float          # the target, e.g. 0.9
    threshold: float         # q: a class is in the set when its score is at most q
    n_calibration: int
    k_reg: int = 1           # raps: classes beyond this rank are penalised
    lam: float = 0.0         # raps: the penalty per rank

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ConformalSets":
        return cls(**data)

    def scores(self, probs: np.ndarray) -> np.ndarray:
        return class_scores(probs, self.method, self.k_reg, self.lam)

    def predict(self, probs: np.ndarray) -> np.ndarray:
        """(n, classes) booleans: which classes are in each image's set. aps and raps always hold the most
        probable class (which only adds coverage): without randomisation a confident image's top class can
        score above the threshold, and an empty set would then say the opposite of what the model means."""
        probs = np.asarray(probs, dtype=np.float64)
        members = self.scores(probs) <= self.threshold
        if self.method != "lac" and len(probs):
            members[np.arange(len(probs)), probs.argmax(1)] = True
        return members


def class_scores(probs: np.ndarray, method: str, k_reg: int = 1, lam: float = 0.0) -> np.ndarray:
    """(n, classes) nonconformity score of every class of every image (lower: the class fits better)."""
    probs = np.asarray(probs, dtype=np.float64)
    if method == "lac":
        return 1.0 - probs
    if method not in METHODS:
        raise MedMambaError(f"conformal method {method!r}: one of {', '.join(METHODS)}")
    order = np.argsort(-probs, axis=1, kind="stable")
    ranked = np.take_along_axis(probs, order, axis=1)
    cumulative = np.cumsum(ranked, axis=1)  # mass of the classes ranked at or above each position
    if method == "raps":
        cumulative = cumulative + lam * np.maximum(0, np.arange(1, probs.shape[1] + 1) - k_reg)
    out = np.empty_like(probs)
    np.put_along_axis(out, order, cumulative, axis=1)
    return out


def calibrate_sets(probs, labels, coverage: float, method: str = "aps", k_reg: int = 1,
                   lam: float = 0.01) -> ConformalSets:
    """The threshold that gives ``coverage`` from calibration images (``probs`` of the validation split)."""
    if not 0 < coverage < 1:
        raise MedMambaError(f"coverage {coverage}: a target coverage is in (0, 1), e.g. 0.9")
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels).reshape(-1).astype(int)
    n = len(labels)
    if n == 0:
        raise MedMambaError("conformal calibration needs validation images")
    true_scores = np.sort(class_scores(probs, method, k_reg, lam)[np.arange(n), labels])
    k = math.ceil((n + 1) * coverage)  # the k-th smallest score: the finite-sample quantile
    # With too few images for the target, only the set of every class is guaranteed to cover.
    threshold = math.inf if k > n else float(true_scores[k - 1])
    return ConformalSets(method, float(coverage), threshold, n, k_reg, lam if method == "raps" else 0.0)


def set_names(members: np.ndarray, classes) -> list[str]:
    """Each set as its class names joined by "|" (an empty set: "")."""
    names = [str(c) for c in classes]
    return ["|".join(n for n, inside in zip(names, row) if inside) for row in members]


def set_summary(members: np.ndarray, labels, conformal: ConformalSets, n_resamples: int = 1000,
                seed: int = 0) -> dict:
    """Empirical coverage on the evaluated images (with a bootstrap 95% interval), mean set size, and how
    often the set is a single class, several (undecided) or empty."""
    labels = np.asarray(labels).reshape(-1).astype(int)
    covered = members[np.arange(len(labels)), labels]
    sizes = members.sum(1)
    out = {**conformal.to_dict(), "empirical_coverage": float(covered.mean()), "mean_set_size": float(sizes.mean()),
           "single": float((sizes == 1).mean()), "undecided": float((sizes > 1).mean()),
           "empty": float((sizes == 0).mean()), "n": int(len(labels))}
    if n_resamples and len(labels):
        rng = np.random.default_rng(seed)
        means = covered[rng.integers(0, len(labels), (n_resamples, len(labels)))].mean(1)
        out["coverage_interval"] = [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]
    return out
