"""Several training runs of one binary MedMNIST recipe side by side, for deciding what limits its accuracy:

* ``views``: validation and test ACC/AUC of each run's best checkpoint when its probabilities are averaged over
  other test-time views than the mirror image (small rotations, zooms, shifts), and the mean over runs;
* ``agreement``: how many runs get each test image right, and the ensemble of all runs.

    .venv/bin/python benchmarks/compare_runs.py views /tmp/d/D /tmp/d/D1 ... --data-root ../shared/medmnist
    .venv/bin/python benchmarks/compare_runs.py agreement /tmp/d/D /tmp/d/D1 ... --data-root ../shared/medmnist
"""
from __future__ import annotations

import argparse
from collections import Counter

import numpy as np
import torch

# Each set lists the views averaged; "mirror" is the flip TTA the recipes use. Shifts are 4 px of the 64 px input.
VIEW_SETS = {
    "none": ["plain"],
    "mirror": ["plain", "mirror"],
    "mirror+rotations": ["plain", "mirror", "rot-10", "rot10"],
    "mirror+zooms": ["plain", "mirror", "zoom0.9", "zoom1.1"],
    "mirror+shifts": ["plain", "mirror", "shift-x", "shift+x", "shift-y", "shift+y"],
}


def views(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every view of a batch, each also mirrored (the name then ends in "|m") except "plain"/"mirror"."""
    import torchvision.transforms.v2.functional as F
    bilinear = F.InterpolationMode.BILINEAR
    out = {"plain": x, "mirror": x.flip(-1)}
    out.update({f"rot{a}": F.rotate(x, a, interpolation=bilinear) for a in (-10, 10)})
    out.update({f"zoom{s}": F.affine(x, angle=0.0, translate=[0, 0], scale=s, shear=[0.0], interpolation=bilinear)
                for s in (0.9, 1.1)})
    shifts = {"shift-x": [-4, 0], "shift+x": [4, 0], "shift-y": [0, -4], "shift+y": [0, 4]}
    out.update({k: F.affine(x, angle=0.0, translate=t, scale=1.0, shear=[0.0]) for k, t in shifts.items()})
    return out


def view_probabilities(run: str, split: str, overrides) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(labels, {view: positive-class probability}) of a run's best checkpoint on ``split``."""
    from medmamba.checkpoint import load_checkpoint
    from medmamba.config import load_config
    from medmamba.data.builder import build_data
    from medmamba.evaluate import class_probabilities
    from medmamba.models import create_model
    cfg = load_config(f"{run}/config.yaml", overrides)
    data = build_data(cfg, splits=(split,))
    model = create_model(cfg["model"], num_classes=data.num_classes, in_chans=data.channels, **cfg["model_args"])
    load_checkpoint(model, f"{run}/checkpoints/best/model.safetensors", new_head_ok=False)
    dataset = data.splits[split]
    x = torch.stack([dataset[i][0] for i in range(len(dataset))])
    y = np.array([int(dataset[i][1]) for i in range(len(dataset))])
    probs = {}
    with torch.no_grad():
        model.eval()
        for name, v in views(x).items():
            for key, image in ((name, v), (name + "|m", v.flip(-1))):
                logits = torch.cat([model(image[i:i + 64]) for i in range(0, len(image), 64)])
                probs[key] = class_probabilities(logits, False)[:, 1].numpy()
    return y, probs


def acc_auc(y, p) -> tuple[float, float]:
    from sklearn.metrics import roc_auc_score
    return float(((p > 0.5) == y).mean()), float(roc_auc_score(y, p))


def average(probs: dict[str, np.ndarray], names: list[str]) -> np.ndarray:
    # Extra views come with their mirrors, so every set stays symmetric under the training's flip.
    keys = [k for n in names for k in ((n,) if n in ("plain", "mirror") else (n, n + "|m"))]
    return np.mean([probs[k] for k in keys], 0)


def compare_views(runs, overrides):
    table = {}
    for run in runs:
        for split in ("val", "test"):
            y, probs = view_probabilities(run, split, overrides)
            for name, names in VIEW_SETS.items():
                table[run, split, name] = acc_auc(y, average(probs, names))
        print(run, "  ".join(f"{n}: test {table[run, 'test', n][0]:.3f}/{table[run, 'test', n][1]:.3f}"
                             for n in VIEW_SETS), flush=True)
    print(f"\n{'views averaged':<18} {'val ACC/AUC':>12} {'test ACC/AUC':>13}  runs meeting ACC>=0.87 AUC>=0.91")
    for name in VIEW_SETS:
        val = np.mean([table[r, "val", name] for r in runs], 0)
        test = np.array([table[r, "test", name] for r in runs])
        met = int(((test[:, 0] >= 0.87) & (test[:, 1] >= 0.91)).sum())
        print(f"{name:<18} {val[0]:.3f}/{val[1]:.3f}  {test.mean(0)[0]:.3f}/{test.mean(0)[1]:.3f}   {met} of {len(runs)}")


def agreement(runs, overrides):
    from medmamba.evaluate import run_predictions
    probs, y = [], None
    for run in runs:
        y, p, *_ = run_predictions(run, "test", overrides=overrides, device="cpu")
        probs.append(p[:, 1])
    y, probs = np.asarray(y).ravel(), np.array(probs)
    right = ((probs > 0.5) == y).sum(0)
    print("test ACC of each run:", " ".join(f"{a:.3f}" for a in ((probs > 0.5) == y).mean(1)))
    counts, positive = Counter(right.tolist()), Counter(right[y == 0].tolist())
    for k in range(len(runs) + 1):
        print(f"right in {k:2d} of {len(runs)} runs: {counts[k]:3d} images ({positive[k]} of them class 0)")
    ens = probs.mean(0)
    print("ensemble of all runs: ACC %.3f AUC %.3f" % acc_auc(y, ens))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["views", "agreement"])
    p.add_argument("runs", nargs="+", help="training output folders of one binary recipe")
    p.add_argument("--data-root", required=True)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    overrides = [f"data.root={args.data_root}"]
    (compare_views if args.what == "views" else agreement)(args.runs, overrides)


if __name__ == "__main__":
    main()
