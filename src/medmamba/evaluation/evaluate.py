"""The one evaluation of trained models: predictions of a run (or an ensemble) on a split -> report with
intervals, calibration and operating point -> report folder with per-image predictions. The CLI's
``evaluate``, the Trainer's test, cross-validation and the web page all go through here.

    result = medmamba.evaluate("runs/b1", split="test")          # or ["runs/b1", "runs/b2"]: an ensemble
    result.report["metrics"]["auc"], result.paths["md"]
"""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..artifacts.card import class_index
from ..artifacts.run_dir import ERRORS_PNG, PREDICTIONS, RunDir
from ..errors import MedMambaError
from ..files import atomic_path, refuse_existing
from .runs import CHECKPOINT_NAMES, LoadedRun, RunOutputs, run_outputs


@dataclass
class Evaluation:
    report: dict                  # what reports.assess returns: metrics, intervals, calibration, warnings...
    outputs: RunOutputs           # labels and probabilities per image, the data and the runs used
    paths: dict = field(default_factory=dict)  # the files written, by kind (md, json, predictions, plots)

    @property
    def metrics(self) -> dict:
        return self.report["metrics"]


def default_output(run: str | os.PathLike, split: str, checkpoint: str = "best") -> Path:
    """Where a run's evaluation goes unless told: RUN/eval_<split>_<checkpoint or weights file stem>."""
    name = checkpoint if checkpoint in CHECKPOINT_NAMES else Path(checkpoint).stem
    return RunDir(run).eval_dir(split, name)


def _check_request(runs, split, checkpoint, output, sensitivity, coverage, write):
    """Every refusal before any model is loaded or any file written."""
    if len(runs) > 1 and checkpoint not in CHECKPOINT_NAMES:
        raise MedMambaError("--checkpoint with a weights file takes one run; an ensemble uses best or last of each")
    if sensitivity is not None and not 0 < sensitivity <= 1:
        raise MedMambaError(f"--sensitivity {sensitivity}: a target sensitivity is in (0, 1]")
    if coverage is not None and not 0 < coverage < 1:
        raise MedMambaError(f"--coverage {coverage}: a target coverage is in (0, 1), e.g. 0.9")
    for option, value in (("--sensitivity", sensitivity), ("--coverage", coverage)):
        if split == "val" and value is not None:
            raise MedMambaError(f"{option} is calibrated on the validation split; evaluate on test (or train)")
    if write and output is None:
        if len(runs) > 1:
            raise MedMambaError(f"an ensemble of {len(runs)} runs needs --output for its report")
        if isinstance(runs[0], LoadedRun):
            raise MedMambaError("a run held in memory needs an output folder for its report")
        output = default_output(runs[0], split, checkpoint)
    return Path(output) if write else None


def operating_point(outputs: RunOutputs, val: Optional[RunOutputs] = None, sensitivity: Optional[float] = None,
                    positive_class=None):
    """(threshold, positive class) of a binary report: chosen now on the validation split (``val``: the same
    runs' predictions there) when ``sensitivity`` is given; else a single run's own from its model card; else
    none, on ``positive_class`` (default: the card's, else the second class)."""
    from .calibration import threshold_for_sensitivity
    data = outputs.data
    card = outputs.used[0].card if len(outputs.used) == 1 else None
    binary = data.task == "binary-class"
    if sensitivity is None:
        if card is not None and card.threshold is not None:
            return card.threshold, card.positive
        if positive_class is not None and binary:
            return None, class_index(positive_class, data.classes)
        return None, card.positive if card is not None else 1
    if not binary:
        raise MedMambaError(f"--sensitivity needs a binary task, not {data.task}")
    positive = 1 if positive_class is None else class_index(positive_class, data.classes)
    return threshold_for_sensitivity(val.labels, val.probs, sensitivity, positive), positive


def prediction_sets(outputs: RunOutputs, val: Optional[RunOutputs] = None, coverage: Optional[float] = None,
                    method: str = "aps"):
    """The conformal prediction sets to report: calibrated now on the validation split (``val``) when
    ``coverage`` is given (a single run or an ensemble); else a single run's own from its model card; else
    none (and never for multi-label tasks)."""
    from .conformal import ConformalSets, calibrate_sets
    if outputs.data.multi_label:
        return None
    if coverage is not None:
        return calibrate_sets(val.probs, val.labels, coverage, method)
    card = outputs.used[0].card if len(outputs.used) == 1 else None
    return ConformalSets.from_dict(card.conformal) if card is not None and card.conformal else None


def _title(outputs: RunOutputs, split: str, checkpoint: str) -> str:
    used = outputs.used
    if len(used) > 1:
        return f"ensemble of {len(used)} runs on {outputs.data.name} ({split})"
    run = used[0]
    title = f"{run.cfg['model']} on {outputs.data.name} ({split})"
    if run.card is not None and run.card.epoch is not None and checkpoint in CHECKPOINT_NAMES:
        title += f", {checkpoint} epoch {run.card.epoch}"
        title += f" ({run.card.weights} weights)" if run.card.weights else ""
    return title


def evaluate(runs, split: str = "test", checkpoint: str = "best", output: Optional[str | os.PathLike] = None,
             overrides: Sequence[str] = (), sensitivity: Optional[float] = None, positive_class=None,
             n_resamples: int = 1000, seed: int = 0, warnings: Sequence[str] = (), overwrite: bool = False,
             write: bool = True, device=None, progress: bool = False, coverage: Optional[float] = None,
             conformal: str = "aps", ood: Optional[Sequence[str]] = None) -> Evaluation:
    """Evaluate one training run, or the ensemble of several (probabilities averaged), on ``split``.

    ``runs``: training output folders (or ``runs.LoadedRun`` objects held in memory, as the Trainer passes);
    ``checkpoint``: best, last, or a weights file (one run). The report (``reports.assess``: metrics with
    ``n_resamples`` bootstrap intervals, calibration before and after each run's temperature, the binary
    operating point: see ``operating_point``, prediction sets: see ``prediction_sets``, selective prediction,
    the share flagged out of distribution and, with ``ood`` (image files/folders, or a MedMNIST subset's test
    split), how well the score tells those images from these; and ``warnings`` plus any this evaluation
    finds) is written with per-image predictions, the most confident mistakes and plots to ``output``
    (default RUN/eval_<split>_<checkpoint>), unless ``write`` is off. An existing report is never replaced
    without ``overwrite``; every refusal of the request comes before anything is loaded or written."""
    from .calibration import single_class_share
    from .reports import assess, write_report
    if isinstance(runs, (str, os.PathLike, LoadedRun)):
        runs = [runs]
    runs = list(runs)
    if not runs:
        raise MedMambaError("no training run to evaluate")
    out = _check_request(runs, split, checkpoint, output, sensitivity, coverage, write)
    if out is not None:
        refuse_existing(out, overwrite=overwrite, alternative="--output for another folder")
    outputs = run_outputs(runs, split, checkpoint, overrides, device, progress)
    # what is chosen now is chosen on the validation split, with the same runs and their own data handling
    val = run_outputs(outputs.used, "val", device=device) if sensitivity is not None or coverage is not None else None
    threshold, positive = operating_point(outputs, val, sensitivity, positive_class)
    sets = prediction_sets(outputs, val, coverage, conformal)
    data, used = outputs.data, outputs.used
    temperatures = [run.card.temperature if run.card is not None else None for run in used]
    warnings = list(warnings)
    if single_class_share(outputs.probs, data.multi_label) == 1.0:
        warnings.append(f"the evaluated model predicts one class for every {split} image")
    report = assess(outputs.labels, outputs.probs, data.task, data.classes, uncalibrated=outputs.plain,
                    temperature=temperatures[0] if len(used) == 1 else None, threshold=threshold, positive=positive,
                    n_resamples=n_resamples, seed=seed, warnings=warnings, conformal=sets)
    columns = used[0].cfg.get("subgroups") or []
    if columns and not data.multi_label:
        report["subgroups"] = subgroups_of(outputs, columns, positive, n_resamples, seed)
    if outputs.ood_scores is not None:
        report["ood"] = ood_summary(outputs, ood, device)
    elif ood:
        raise MedMambaError("--ood: this model has no out-of-distribution score (train with ood: mahalanobis, or "
                            "evaluate one run, not an ensemble)")
    result = Evaluation(report, outputs)
    if out is not None:
        one = len(used) == 1
        extra = {"split": split, "checkpoint": str(used[0].weights) if one else [str(r.weights) for r in used],
                 "tta": used[0].cfg["tta"] if one else [r.cfg["tta"] for r in used], "temperatures": temperatures}
        result.paths = write_report(out, report, outputs.labels, outputs.probs, data.classes,
                                    _title(outputs, split, checkpoint), data.name, extra=extra)
        result.paths["predictions"] = write_predictions(out / PREDICTIONS, outputs, threshold, positive, sets)
        if not data.multi_label:
            errors = write_errors(out / ERRORS_PNG, outputs, device)
            if errors is not None:
                result.paths["errors"] = errors
    return result


def subgroups_of(outputs: RunOutputs, columns, positive: int, n_resamples: int, seed: int) -> dict:
    """Per-subgroup figures for the metadata ``columns`` of the run's CSV manifest."""
    from ..data.builder import sample_ids
    from ..data.folders import subgroup_metadata
    from .subgroups import subgroup_metrics
    meta = subgroup_metadata(outputs.used[0].cfg)
    ids = sample_ids(outputs.dataset)
    values = {c: [meta.get(i, {}).get(c, "missing") for i in ids] for c in columns}
    return subgroup_metrics(outputs.labels, outputs.probs, outputs.data.task, values, positive, n_resamples, seed)


def ood_summary(outputs: RunOutputs, other=None, device=None) -> dict:
    """The share of the evaluated images the OOD score flags and, for ``other`` images (files, folders or a
    MedMNIST subset's test split), the AUROC and FPR at 95% TPR of telling them from the evaluated ones."""
    from .ood import dataset_scores, separation
    run = outputs.used[0]
    detector = run.ood
    out = {**detector.card_entry(), "flagged": float(detector.flags(outputs.ood_scores).mean()),
           "n": int(len(outputs.ood_scores))}
    if other:
        dataset, name = _ood_images(other, run)
        scores = dataset_scores(detector, run.model, dataset, run.cfg["eval_batch_size"], device)
        out["check"] = {"against": name, **separation(outputs.ood_scores, scores),
                        "flagged_there": float(detector.flags(scores).mean())}
    return out


def _ood_images(other: Sequence[str], run: LoadedRun):
    """(dataset, description) of the images an OOD check compares with, read as the run reads its own."""
    from ..data import MedMNIST, medmnist_subsets
    from ..data.builder import config_transform
    from ..data.folders import ImageListDataset, require_inputs
    d = run.cfg["data"]
    transform = config_transform(run.cfg, run.data.channels)
    if len(other) == 1 and str(other[0]).lower() in medmnist_subsets():
        name = str(other[0]).lower()
        return MedMNIST(name, "test", d["root"], d["size"], transform), f"{name} (test split)"
    paths, _ = require_inputs(other, "compare with (--ood)")
    return ImageListDataset([(p, 0) for p in paths], ["other"], run.data.channels, transform), \
        f"{len(paths)} images from {', '.join(map(str, other))}"


def write_errors(path: Path, outputs: RunOutputs, device=None, most: int = 8) -> Optional[Path]:
    """errors.png: the ``most`` most confident wrong predictions, each image (through a display window) under
    the HiResCAM map of the class the model gave it, with its true and predicted label; None when every
    prediction was right. An ensemble's maps are its first model's."""
    from .cam import class_activation_map, overlay
    from .plots import plot_gallery
    labels, probs = np.asarray(outputs.labels).reshape(-1).astype(int), outputs.probs
    wrong = np.flatnonzero(probs.argmax(1) != labels)
    if not len(wrong):
        return None
    chosen = wrong[np.argsort(-probs[wrong].max(1), kind="stable")][:most]
    run, names = outputs.used[0], [str(c) for c in outputs.data.classes]
    mean, std = run.cfg["data"]["mean"], run.cfg["data"]["std"]
    model = run.model.to(device or next(run.model.parameters()).device)
    panels = []
    for i in chosen:
        x = outputs.dataset[int(i)][0][None].to(next(model.parameters()).device)
        predicted = int(probs[i].argmax())
        cam = class_activation_map(model, x, target=predicted)
        image = (x[0].detach().cpu() * std + mean).clamp(0, 1)
        panels.append((overlay(image, cam.maps[0].detach().cpu()),
                       f"true {names[labels[i]]}\npredicted {names[predicted]} (p {probs[i, predicted]:.2f})"))
    ensemble = " (maps: the first model's)" if len(outputs.used) > 1 else ""
    plot_gallery(panels, path, f"The {len(panels)} most confident mistakes of {len(wrong)}{ensemble}")
    return path


def write_predictions(path: Path, outputs: RunOutputs, threshold: Optional[float] = None, positive: int = 1,
                      sets=None) -> Path:
    """predictions.csv: one row per image (id, true label, each class's probability, prediction, its
    prediction set when there is one, correct); multi-label classes joined by ";" as ``predict`` writes them."""
    from ..data.builder import sample_ids
    from .conformal import set_names
    from .prediction import predicted_names
    data = outputs.data
    names = [str(c) for c in data.classes]
    truth = predicted_names(np.asarray(outputs.labels, dtype=float), names, True) if data.multi_label else \
        [names[int(y)] for y in outputs.labels]
    predicted = predicted_names(outputs.probs, names, data.multi_label, threshold, positive)
    members = set_names(sets.predict(outputs.probs), names) if sets is not None else None
    scores = outputs.ood_scores
    flags = outputs.used[0].ood.flags(scores) if scores is not None else None
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "label", *(f"prob_{n}" for n in names), "predicted"] + (["set"] if members else [])
                   + (["ood_score", "ood"] if scores is not None else []) + ["correct"])
        for i, (image, y, p, shown) in enumerate(zip(sample_ids(outputs.dataset), truth, outputs.probs, predicted)):
            w.writerow([image, y, *(f"{v:.6f}" for v in p), shown] + ([members[i]] if members else [])
                       + ([f"{scores[i]:.6g}", bool(flags[i])] if scores is not None else []) + [y == shown])
    return path


def run_report(source: str | os.PathLike, split: str = "test") -> Optional[dict]:
    """The saved ``split`` report of the run that ``source`` (a run folder or one of its weights files) belongs
    to: the training's own (eval_<split>), else the best checkpoint's evaluation; None when there is none."""
    from ..artifacts.checkpoint import resolve_weights
    run = RunDir(source) if RunDir(source).is_run() else RunDir.of_weights(resolve_weights(source))
    if run is None:
        return None
    for candidate in (run.report(split), run.report(split, "best")):
        if candidate.is_file():
            try:
                return json.loads(candidate.read_text())
            except (OSError, json.JSONDecodeError):
                return None
    return None
