"""Several training runs of one binary MedMNIST recipe side by side, for deciding what limits its accuracy:

* ``views``: validation and test ACC/AUC of each run's best checkpoint when its probabilities are averaged over
  other test-time views than the mirror image (small rotations, zooms, shifts), and the mean over runs;
* ``agreement``: how many runs get each test image right, and the ensemble of all runs; with ``--plot``, the
  test images that no run gets right, and which test images are near-copies of a training or validation image
  with another label.

    .venv/bin/python benchmarks/compare_runs.py views /tmp/d/D /tmp/d/D1 ... --data-root ../shared/medmnist
    .venv/bin/python benchmarks/compare_runs.py agreement /tmp/d/D /tmp/d/D1 ... --data-root ../shared/medmnist \
        --plot docs/breastmnist_hard.png
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
    """Every view of a batch: "plain", "mirror", and each extra view beside its own mirror (name + "|m")."""
    import torchvision.transforms.v2.functional as F
    bilinear = F.InterpolationMode.BILINEAR
    extra = {f"rot{a}": F.rotate(x, a, interpolation=bilinear) for a in (-10, 10)}
    extra.update({f"zoom{s}": F.affine(x, angle=0.0, translate=[0, 0], scale=s, shear=[0.0],
                                       interpolation=bilinear) for s in (0.9, 1.1)})
    shifts = {"shift-x": [-4, 0], "shift+x": [4, 0], "shift-y": [0, -4], "shift+y": [0, 4]}
    extra.update({k: F.affine(x, angle=0.0, translate=t, scale=1.0, shear=[0.0]) for k, t in shifts.items()})
    out = {"plain": x, "mirror": x.flip(-1)}
    for name, view in extra.items():
        out[name], out[name + "|m"] = view, view.flip(-1)
    return out


@torch.no_grad()
def view_probabilities(run: str, overrides) -> tuple[object, dict[str, tuple[np.ndarray, dict[str, np.ndarray]]]]:
    """(data, {split: (labels, {view: class probabilities})}) of a run's best checkpoint on val and test."""
    from medmamba.evaluation.prediction import class_probabilities
    from medmamba.evaluation.runs import load_run
    loaded = load_run(run, ("val", "test"), overrides=overrides)
    model, data, cfg = loaded.model.eval(), loaded.data, loaded.cfg
    batch = cfg["eval_batch_size"]
    out = {}
    for split, dataset in data.splits.items():
        x = torch.stack([dataset[i][0] for i in range(len(dataset))])
        y = np.asarray(dataset.labels).astype(int)
        probs = {}
        for name, image in views(x).items():
            logits = torch.cat([model(image[i:i + batch]) for i in range(0, len(image), batch)])
            probs[name] = class_probabilities(logits, False).numpy()
        out[split] = y, probs
    return data, out


def acc_auc(data, y, probs) -> tuple[float, float]:
    """MedMNIST's ACC and AUC, as the evaluate command computes them."""
    from medmamba.evaluation.metrics import classification_metrics
    m = classification_metrics(y, probs, data.task, data.classes)["medmnist"]
    return m["acc"], m["auc"]


def average(probs: dict[str, np.ndarray], names: list[str]) -> np.ndarray:
    # Extra views come with their mirrors, so every set stays symmetric under the training's flip.
    keys = [k for n in names for k in ((n,) if n in ("plain", "mirror") else (n, n + "|m"))]
    return np.mean([probs[k] for k in keys], 0)


def compare_views(runs, overrides):
    table = {}
    for run in runs:
        data, splits = view_probabilities(run, overrides)
        for split, (y, probs) in splits.items():
            for name, names in VIEW_SETS.items():
                table[run, split, name] = acc_auc(data, y, average(probs, names))
        print(run, "  ".join(f"{n}: test {table[run, 'test', n][0]:.3f}/{table[run, 'test', n][1]:.3f}"
                             for n in VIEW_SETS), flush=True)
    print(f"\n{'views averaged':<18} {'val ACC/AUC':>12} {'test ACC/AUC':>13}  runs meeting ACC>=0.87 AUC>=0.91")
    for name in VIEW_SETS:
        val = np.mean([table[r, "val", name] for r in runs], 0)
        test = np.array([table[r, "test", name] for r in runs])
        met = int(((test[:, 0] >= 0.87) & (test[:, 1] >= 0.91)).sum())
        print(f"{name:<18} {val[0]:.3f}/{val[1]:.3f}  {test.mean(0)[0]:.3f}/{test.mean(0)[1]:.3f}   {met} of {len(runs)}")


def conflicting_twins(test_set, threshold=0.98):
    """{test index: (split, index, label)} for test images whose near-copy in the train or validation split
    (pixel correlation above ``threshold``) carries another label: no model that fits its training data gets
    those right."""
    from medmamba.data.medmnist import load_medmnist_split

    def unit(images):
        x = images.reshape(len(images), -1).astype(np.float64)
        x -= x.mean(1, keepdims=True)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    test = unit(test_set.images)
    twins = {}
    for split in ("train", "val"):
        images, labels = load_medmnist_split(test_set.path, split, test_set.info)
        corr = test @ unit(images).T
        for i, j in zip(*np.nonzero(corr > threshold)):
            if labels[j, 0] != test_set.labels[i] and i not in twins:
                twins[int(i)] = (split, int(j), int(labels[j, 0]))
    return twins


def plot_missed(images, y, p_true, notes, class_names, path, n_runs):
    """The test images every run gets wrong, as stored in the dataset, each titled with its true class and the
    probability the ensemble gives that class."""
    from matplotlib.figure import Figure
    cols = min(6, len(images))
    rows = -(-len(images) // cols)
    fig = Figure(figsize=(2.0 * cols, 2.6 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, image, label, p, note in zip(axes.ravel(), images, y, p_true, notes):
        ax.imshow(image, cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"{class_names[label]}, p = {p:.2f}" + (f"\n{note}" if note else ""), fontsize=7)
    fig.suptitle(f"Test images wrong in all {n_runs} runs (p: ensemble's probability of the true class)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print("missed images:", path)


def agreement(runs, overrides, plot=None):
    from medmamba.evaluation.runs import run_outputs
    probs, y, data = [], None, None
    for run in runs:
        out = run_outputs(run, "test", overrides=overrides, device="cpu")
        y, data = out.labels, out.data
        probs.append(out.probs)
    y, probs = np.asarray(y).ravel(), np.array(probs)
    right = probs.argmax(-1) == y
    print("test ACC of each run:", " ".join(f"{a:.3f}" for a in right.mean(1)))
    counts, positive = Counter(right.sum(0).tolist()), Counter(right.sum(0)[y == 0].tolist())
    for k in range(len(runs) + 1):
        print(f"right in {k:2d} of {len(runs)} runs: {counts[k]:3d} images ({positive[k]} of them class 0)")
    print("ensemble of all runs: ACC %.3f AUC %.3f" % acc_auc(data, y, probs.mean(0)))
    if plot:
        test_set = data.splits["test"]
        missed = np.flatnonzero(right.sum(0) == 0)
        twins = conflicting_twins(test_set)
        for i, (split, j, label) in sorted(twins.items()):
            print(f"test image {i} ({data.classes[y[i]]}, right in {right[:, i].sum()} of {len(runs)} runs) "
                  f"is a near-copy of {split} image {j}, labelled {data.classes[label]}")
        notes = [f"near-copy of {twins[i][0]} #{twins[i][1]}:\n{data.classes[twins[i][2]]}" if i in twins else ""
                 for i in missed]
        p_true = probs.mean(0)[missed, y[missed]]
        plot_missed(test_set.images[missed], y[missed], p_true, notes, data.classes, plot, len(runs))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["views", "agreement"])
    p.add_argument("runs", nargs="+", help="training output folders of one binary recipe")
    p.add_argument("--data-root", required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--plot", help="agreement: PNG of the test images that every run gets wrong")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    overrides = [f"data.root={args.data_root}"]
    if args.what == "views":
        compare_views(args.runs, overrides)
    else:
        agreement(args.runs, overrides, args.plot)


if __name__ == "__main__":
    main()
