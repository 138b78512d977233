"""Subgroups: the same figures for each value of a metadata column (sex, site, scanner...), with intervals,
and the largest gap between two groups named: a model can be good on average and poor for one group."""
from __future__ import annotations

import numpy as np

FIGURES = ("accuracy", "auc", "sensitivity", "specificity")
MIN_GROUP = 5  # smaller groups are listed, not measured: their intervals would say nothing


def subgroup_metrics(labels, probs, task: str, values: dict[str, list], positive: int = 1, n_resamples: int = 1000,
                     seed: int = 0) -> dict:
    """{column: {"groups": {value: {n, figures, intervals}}, "largest_gap": ...}} for each metadata column
    (``values[column]``: each image's value, in the order of ``labels``)."""
    from .stats import bootstrap_intervals, point_metrics
    labels, probs = np.asarray(labels), np.asarray(probs)
    out = {}
    for column, per_image in values.items():
        per_image = np.asarray([str(v) for v in per_image])
        groups = {}
        for value in sorted(set(per_image)):
            keep = per_image == value
            entry = {"n": int(keep.sum())}
            if keep.sum() >= MIN_GROUP:
                figures = point_metrics(labels[keep], probs[keep], task, positive)
                entry.update({k: figures[k] for k in FIGURES if k in figures})
                if n_resamples:
                    ci = bootstrap_intervals(labels[keep], probs[keep], task, n_resamples, seed, positive=positive)
                    entry["intervals"] = {k: list(ci[k]) for k in FIGURES if k in ci}
            groups[value] = entry
        measured = {v: g for v, g in groups.items() if "accuracy" in g}
        gap = None
        for figure in FIGURES:
            finite = {v: g[figure] for v, g in measured.items() if figure in g and np.isfinite(g[figure])}
            if len(finite) >= 2:
                low, high = min(finite, key=finite.get), max(finite, key=finite.get)
                size = finite[high] - finite[low]
                if gap is None or size > gap["difference"]:
                    gap = {"figure": figure, "lowest": low, "highest": high, "difference": float(size)}
        out[column] = {"groups": groups, "largest_gap": gap}
    return out


def subgroups_text(result: dict) -> str:
    lines = []
    for column, entry in result.items():
        lines += [f"Subgroups by {column}:", "", "| " + column + " | n | " + " | ".join(FIGURES) + " |",
                  "| --- | --- | " + " | ".join("---" for _ in FIGURES) + " |"]
        for value, g in entry["groups"].items():
            ci = g.get("intervals", {})
            cells = [f"{g[f]:.4f}" + (f" ({ci[f][0]:.3f}-{ci[f][1]:.3f})" if f in ci else "") if f in g else "n/a"
                     for f in FIGURES]
            lines.append(f"| {value} | {g['n']} | " + " | ".join(cells) + " |")
        gap = entry["largest_gap"]
        lines += ["", f"Largest gap: {gap['figure']} {gap['difference']:.4f} between {column}={gap['lowest']} and "
                      f"{column}={gap['highest']}" if gap else "Largest gap: fewer than two groups measured", ""]
    return "\n".join(lines).rstrip()
