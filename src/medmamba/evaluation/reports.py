"""Reports of an evaluation: Markdown tables, published figures to compare with, report.json/.md and plots."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Optional

import numpy as np

from ..files import atomic_write_text
from ..artifacts.run_dir import (COMPARE_JSON, COMPARE_MD, CONFUSION_PNG, RELIABILITY_PNG, REPORT_JSON, REPORT_MD,
                                 RISK_COVERAGE_PNG, ROC_PNG)

_MEDMNIST_V2 = "ResNet-18 (28), MedMNIST v2"
# Test-split ACC/AUC published for every MedMNIST v2 2-D subset: ResNet-18 at 28 px from the MedMNIST v2
# paper (Yang et al., Scientific Data 2023, Table 3), and the official MedMamba README where it reports one.
PUBLISHED = {
    "pathmnist": {_MEDMNIST_V2: (0.907, 0.983)},
    "chestmnist": {_MEDMNIST_V2: (0.947, 0.768)},
    "dermamnist": {_MEDMNIST_V2: (0.735, 0.917)},
    "octmnist": {_MEDMNIST_V2: (0.743, 0.943)},
    "pneumoniamnist": {_MEDMNIST_V2: (0.854, 0.944), "MedMamba, official README": (0.899, 0.965)},
    "retinamnist": {_MEDMNIST_V2: (0.524, 0.717)},
    "breastmnist": {_MEDMNIST_V2: (0.863, 0.901), "MedMamba, official README": (0.853, 0.825)},
    "bloodmnist": {_MEDMNIST_V2: (0.958, 0.998)},
    "tissuemnist": {_MEDMNIST_V2: (0.676, 0.930)},
    "organamnist": {_MEDMNIST_V2: (0.935, 0.997)},
    "organcmnist": {_MEDMNIST_V2: (0.900, 0.992)},
    "organsmnist": {_MEDMNIST_V2: (0.782, 0.972)},
}


def _fmt(v):
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def _interval(ci) -> str:
    return "" if ci is None else f"{_fmt(ci[0])} - {_fmt(ci[1])}"


def assess(labels, probs, task: str, class_names, uncalibrated=None, temperature: Optional[float] = None,
           threshold: Optional[float] = None, positive: int = 1, n_resamples: int = 1000, seed: int = 0,
           warnings=(), conformal=None) -> dict:
    """Everything a report says about predictions ``probs`` (calibrated when a temperature was fitted) on a
    split: the paper's metrics, stratified-bootstrap 95% intervals, calibration before and after the
    temperature (``uncalibrated``: the probabilities without it), the binary operating point at
    ``threshold`` on the probability of class ``positive`` (also the class whose sensitivity, specificity,
    precision and F1 a binary report gives), selective prediction (one class per image), the coverage
    and size of the ``conformal`` prediction sets (a ``conformal.ConformalSets``), and warnings."""
    from ..data.tasks import is_multi_label
    from .calibration import calibration_metrics, operating_point, reliability
    from .conformal import set_summary
    from .metrics import classification_metrics
    from .selective import selective_summary
    from .stats import bootstrap_intervals
    multi_label = is_multi_label(task)
    out = {"metrics": classification_metrics(labels, probs, task, class_names, positive=positive),
           "warnings": list(warnings)}
    if n_resamples:
        out["intervals"] = {"level": 0.95, "resamples": n_resamples, "seed": seed, "method": "stratified bootstrap",
                            **bootstrap_intervals(labels, probs, task, n_resamples, seed, positive=positive)}
    before = probs if uncalibrated is None else uncalibrated
    out["calibration"] = {"temperature": temperature, "before": calibration_metrics(labels, before, multi_label),
                          "after": calibration_metrics(labels, probs, multi_label),
                          "reliability_before": reliability(labels, before, multi_label),
                          "reliability_after": reliability(labels, probs, multi_label)}
    if threshold is not None:
        point = operating_point(labels, probs, threshold, positive)
        point["positive_class"] = str(list(class_names)[positive])
        if n_resamples:
            def at_threshold(y, p):
                return {k: v for k, v in operating_point(y, p, threshold, positive).items()
                        if k in ("sensitivity", "specificity")}
            point["intervals"] = bootstrap_intervals(labels, probs, task, n_resamples, seed, metric_fn=at_threshold)
        out["operating_point"] = point
    if not multi_label:
        out["selective"] = selective_summary(labels, probs)
        if conformal is not None:
            out["conformal"] = set_summary(conformal.predict(probs), labels, conformal, n_resamples, seed)
    return out


def conformal_text(c: dict) -> str:
    interval = f" ({_interval(c['coverage_interval'])})" if "coverage_interval" in c else ""
    return (f"Prediction sets ({c['method']}, calibrated on the validation split for {c['coverage']:.0%} coverage): "
            f"{_fmt(c['empirical_coverage'])}{interval} of these images' sets hold the true class; mean set size "
            f"{c['mean_set_size']:.2f}; one class {c['single']:.1%}, undecided (several) {c['undecided']:.1%}, "
            f"empty {c['empty']:.1%}")


def ood_text(o: dict) -> str:
    text = (f"Out-of-distribution score ({o['method']}; threshold {o['threshold']:.4g} lets {o['tpr']:.0%} of the "
            f"validation images pass): {o['flagged']:.1%} of these {o['n']} images flagged")
    if "check" in o:
        c = o["check"]
        text += (f"\nAgainst {c['against']}: AUROC {c['auroc']:.4f}, FPR at 95% TPR {c['fpr_at_95_tpr']:.4f}, "
                 f"{c['flagged_there']:.1%} of those flagged")
    return text


def selective_text(s: dict) -> str:
    return (f"Selective prediction: referring the least confident {s['referred']:.0%} to a person, accuracy on the "
            f"other {s['kept']} images {_fmt(s['accuracy_kept'])} (all {s['n']}: {_fmt(s['accuracy_all'])}); "
            f"AURC {_fmt(s['aurc'])}")


def metrics_table(m: dict, intervals: Optional[dict] = None) -> str:
    from .metrics import POSITIVE_CLASS_FIGURES
    intervals = intervals or {}
    rows = ["| metric | value | 95% interval |", "| --- | --- | --- |"]
    for key in ("accuracy", "balanced_accuracy", "auc", "average_precision", "precision", "sensitivity",
                "specificity", "f1"):
        of = f" (of {m['positive_class']})" if m.get("positive_class") and key in POSITIVE_CLASS_FIGURES else ""
        rows.append(f"| {key}{of} | {_fmt(m[key])} | {_interval(intervals.get(key))} |")
    rows += ["", "| class | precision | sensitivity | specificity | F1 | AUC | support |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, c in m["per_class"].items():
        rows.append(f"| {name} | {_fmt(c['precision'])} | {_fmt(c['sensitivity'])} | {_fmt(c['specificity'])} | "
                    f"{_fmt(c['f1'])} | {_fmt(c['auc'])} | {c['support']} |")
    return "\n".join(rows)


def calibration_table(report: dict) -> str:
    cal = report["calibration"]
    t = cal["temperature"]
    rows = [f"Temperature: {'none fitted' if t is None else f'{t:.4f} (fitted on the validation split)'}", "",
            "| | ECE (15 bins) | Brier | NLL |", "| --- | --- | --- | --- |"]
    for name in ("before", "after"):
        c = cal[name]
        rows.append(f"| {name} temperature | {_fmt(c['ece'])} | {_fmt(c['brier'])} | {_fmt(c['nll'])} |")
    return "\n".join(rows)


def operating_point_text(point: dict) -> str:
    ci = point.get("intervals", {})
    return (f"Threshold {point['threshold']:.4f} on p({point['positive_class']}), chosen on the validation split: "
            f"sensitivity {_fmt(point['sensitivity'])} ({_interval(ci.get('sensitivity'))}), specificity "
            f"{_fmt(point['specificity'])} ({_interval(ci.get('specificity'))})")


def summary_text(report: dict) -> str:
    """What the CLI prints after training or evaluation."""
    parts = [metrics_table(report["metrics"], report.get("intervals")), "", calibration_table(report)]
    if "operating_point" in report:
        parts += ["", operating_point_text(report["operating_point"])]
    if "conformal" in report:
        parts += ["", conformal_text(report["conformal"])]
    if report.get("selective"):
        parts += ["", selective_text(report["selective"])]
    if "ood" in report:
        parts += ["", ood_text(report["ood"])]
    if report.get("subgroups"):
        from .subgroups import subgroups_text
        parts += ["", subgroups_text(report["subgroups"])]
    parts += [f"warning: {w}" for w in report["warnings"]]
    return "\n".join(parts)


def published_table(dataset_name: str, m: dict, ours_label: str = "this run") -> str:
    rows = ["| model | ACC | AUC |", "| --- | --- | --- |",
            f"| {ours_label} | {_fmt(m['medmnist']['acc'])} | {_fmt(m['medmnist']['auc'])} |"]
    for who, (acc, auc) in PUBLISHED.get(dataset_name, {}).items():
        rows.append(f"| {who} | {acc:.3f} | {auc:.3f} |")
    return "\n".join(rows)


def write_report(out_dir: str | os.PathLike, report: dict, labels, probs, class_names, title: str,
                 dataset_name: str = "", extra: Optional[dict] = None) -> dict:
    """report.json, report.md, confusion_matrix.png, roc.png and reliability.png in ``out_dir``; returns the paths.
    ``report``: what ``assess`` returns."""
    from .plots import plot_confusion_matrix, plot_reliability, plot_risk_coverage, plot_roc
    m = report["metrics"]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / REPORT_JSON, "md": out / REPORT_MD, "roc": out / ROC_PNG,
             "reliability": out / RELIABILITY_PNG}
    if m.get("confusion_matrix") is not None:
        paths["confusion_matrix"] = out / CONFUSION_PNG
        plot_confusion_matrix(np.array(m["confusion_matrix"]), class_names, paths["confusion_matrix"], title)
    plot_roc(labels, probs, class_names, m["task"], paths["roc"], title)
    plot_reliability(report["calibration"], paths["reliability"], title)
    if report.get("selective"):
        paths["risk_coverage"] = out / RISK_COVERAGE_PNG
        plot_risk_coverage(labels, probs, paths["risk_coverage"], title)
    payload = {"title": title, **(extra or {}), **report}
    atomic_write_text(paths["json"], json.dumps(payload, indent=1))
    md = [f"# {title}", ""] + [f"**Warning:** {w}" for w in report["warnings"]] + [""]
    md += [metrics_table(m, report.get("intervals")), ""]
    if "intervals" in report:
        md += [f"Intervals: {report['intervals']['method']} over the images, {report['intervals']['resamples']} "
               f"resamples (seed {report['intervals']['seed']}), percentile.", ""]
    md += ["## Calibration", "", calibration_table(report), ""]
    if "operating_point" in report:
        md += ["## Operating point", "", operating_point_text(report["operating_point"]), ""]
    if "conformal" in report:
        md += ["## Prediction sets", "", conformal_text(report["conformal"]), ""]
    if report.get("selective"):
        md += ["## Selective prediction", "", selective_text(report["selective"]), "",
               f"![risk-coverage]({paths['risk_coverage'].name})", ""]
    if "ood" in report:
        md += ["## Out of distribution", "", ood_text(report["ood"]).replace("\n", "  \n"), ""]
    if report.get("subgroups"):
        from .subgroups import subgroups_text
        md += ["## Subgroups", "", subgroups_text(report["subgroups"]), ""]
    if dataset_name in PUBLISHED:
        md += ["Published results on the same test split (MedMNIST's ACC/AUC rules):", "",
               published_table(dataset_name, m), ""]
    md += [f"![ROC]({paths['roc'].name})", f"![reliability]({paths['reliability'].name})"]
    md += [f"![confusion matrix]({paths['confusion_matrix'].name})"] if "confusion_matrix" in paths else []
    atomic_write_text(paths["md"], "\n".join(md) + "\n")
    return paths


def compare_outputs(first, second, names=("A", "B"), n_resamples: int = 2000, seed: int = 0) -> dict:
    """Paired comparison of two sets of predictions (``runs.RunOutputs``) on the same images: per metric the
    difference A - B, its 95% paired-bootstrap interval and p-value; DeLong's test of the AUCs (binary)."""
    from .stats import delong_test, paired_bootstrap
    data = first.data
    result = {"a": str(names[0]), "b": str(names[1]), "dataset": data.name, "n": int(len(first.labels)),
              "method": f"paired stratified bootstrap, {n_resamples} resamples (seed {seed})",
              "metrics": paired_bootstrap(first.labels, first.probs, second.probs, data.task, n_resamples, seed)}
    if data.task == "binary-class":
        y = np.asarray(first.labels).reshape(-1) == 1
        result["delong"] = delong_test(y, first.probs[:, 1], second.probs[:, 1])
    return result


def comparison_text(result: dict) -> str:
    rows = [f"A: {result['a']}", f"B: {result['b']}", f"{result['dataset']}, {result['n']} images; {result['method']}",
            "", "| metric | A | B | A - B | 95% interval | p |", "| --- | --- | --- | --- | --- | --- |"]
    for key, r in result["metrics"].items():
        rows.append(f"| {key} | {_fmt(r['a'])} | {_fmt(r['b'])} | {r['difference']:+.4f} | "
                    f"{_fmt(r['low'])} - {_fmt(r['high'])} | {r['p']:.4f} |")
    if "delong" in result:
        d = result["delong"]
        rows += ["", f"DeLong's test of the AUCs: {d['auc_a']:.4f} vs {d['auc_b']:.4f}, difference "
                     f"{d['difference']:+.4f} (SE {d['se']:.4f}), z = {d['z']:.3f}, p = {d['p']:.4f}"]
    return "\n".join(rows)


def write_comparison(out_dir: str | os.PathLike, result: dict) -> dict:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / COMPARE_JSON, "md": out / COMPARE_MD}
    atomic_write_text(paths["json"], json.dumps(result, indent=1))
    atomic_write_text(paths["md"], "# Paired comparison\n\n" + comparison_text(result) + "\n")
    return paths
