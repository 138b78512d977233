"""Explaining image files: each one's class activation map over the image, as PNG, and a CSV of what was
shown (the maps themselves: ``evaluation.cam``)."""
from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..artifacts.card import class_index
from ..errors import MedMambaError
from ..evaluation.cam import METHODS, class_activation_map, num_stages, overlay, save_png
from ..files import atomic_write_text, refuse_existing


@dataclass
class ExplainResult:
    rows: list[tuple[str, str, str, float]]          # (image path, overlay PNG, class explained, its probability)
    failures: list[tuple[str, str]]                  # (path, reason) of what was skipped
    stage: int                                       # the stage used, counted from 0

    def to_csv(self) -> str:
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerows(
            [["path", "map_png", "class", "probability"], *[[p, m, c, f"{v:.6f}"] for p, m, c, v in self.rows]])
        return out.getvalue()


def explain_files(predictor, inputs, output: str | os.PathLike, target: Optional[str | int] = None, stage: int = -1,
                  method: str = "hirescam", overwrite: bool = False, progress: bool = False) -> ExplainResult:
    """For every image ``inputs`` names (files, folders, globs): its map overlaid as ``<name>_<method>.png``
    in ``output``, and ``maps.csv`` listing them. Unreadable images are skipped and listed in ``failures``."""
    from ..data.folders import require_inputs
    from .inference import failure_reason
    k = None if target is None else class_index(target, predictor.classes)
    n_stages = num_stages(predictor.model)
    if not -n_stages <= stage < n_stages:
        raise MedMambaError(f"stage {stage}: the model has stages 0..{n_stages - 1} (or -1 for the last)")
    if method not in METHODS:
        raise MedMambaError(f"unknown method {method!r}; choose {' or '.join(METHODS)}")
    out = Path(output)
    refuse_existing(out, overwrite=overwrite, alternative="choose another --output")
    paths, failures = require_inputs(inputs, "explain")
    out.mkdir(parents=True, exist_ok=True)
    rows, used = [], set()
    if progress:
        from tqdm.auto import tqdm
        paths = tqdm(paths, unit="img", desc=method)
    for path in paths:
        try:
            image, x = predictor.read(path)
        except Exception as e:
            failures.append((path, failure_reason(e, path)))
            continue
        cam = class_activation_map(predictor.model, x[None].to(predictor.device), target=k, stage=stage,
                                   method=method, multi_label=predictor.multi_label,
                                   temperature=predictor.card.temperature)
        name = Path(path).stem
        while name in used:  # same file name in two folders
            name += "_"
        used.add(name)
        png = save_png(out / f"{name}_{method}.png", overlay(image, cam.maps[0].cpu()))
        shown = int(cam.targets[0])
        rows.append((path, str(png), predictor.classes[shown], float(cam.probabilities[0, shown])))
    result = ExplainResult(rows, failures, stage % n_stages)
    atomic_write_text(out / "maps.csv", result.to_csv())
    return result
