"""Which out-of-distribution score tells a model's own kind of image from others? Measured, per trained run,
on real shifts: another MedMNIST subset's test images through this model's preprocessing (PneumoniaMNIST
chest X-rays through a BreastMNIST model and the reverse), uniform noise, blank images and colour
photographs (scikit-learn's two sample photos, random crops). In distribution: the run's own test split.

    python benchmarks/ood.py --data-root ../shared/medmnist --runs runs/breast runs/pneumonia

Prints AUROC and FPR at 95% TPR per run, score and shift, and each score's mean AUROC over the shifts.
Features are computed once per run; every score reads them (evaluation/ood.py).
"""
from __future__ import annotations

import argparse
import json
import platform

import numpy as np
import torch


def shifted_sets(cfg: dict, channels: int, n: int, seed: int = 0) -> dict:
    """Images that are not the run's kind, as uint8 (C, H, W) tensors through the run's own transform."""
    from sklearn.datasets import load_sample_images
    from torch.utils.data import TensorDataset

    from medmamba.data.builder import config_transform
    transform = config_transform(cfg, channels)
    rng = np.random.default_rng(seed)

    def as_dataset(images):
        x = torch.stack([transform(torch.from_numpy(np.ascontiguousarray(im))) for im in images])
        return TensorDataset(x, torch.zeros(len(x), dtype=torch.long))
    size = 64
    noise = [rng.integers(0, 256, (3, size, size), dtype=np.uint8) for _ in range(n)]
    blank = [np.full((3, size, size), v, np.uint8) for v in np.linspace(0, 255, n).astype(np.uint8)]
    photos = []
    for _ in range(n):
        photo = load_sample_images().images[rng.integers(0, 2)]
        s = int(rng.integers(64, 400))
        y, x = rng.integers(0, photo.shape[0] - s + 1), rng.integers(0, photo.shape[1] - s + 1)
        photos.append(photo[y:y + s, x:x + s].transpose(2, 0, 1))
    return {"uniform noise": as_dataset(noise), "blank": as_dataset(blank), "colour photographs": as_dataset(photos)}


def measure(run_path: str, others: list[str], data_root: str, n_synthetic: int) -> list[dict]:
    from medmamba.data import MedMNIST
    from medmamba.data.builder import build_data, config_transform
    from medmamba.evaluation.ood import METHODS, dataset_features, fit_detector, separation
    from medmamba.evaluation.runs import load_run
    run = load_run(run_path, ("val", "test"), overrides=[f"data.root={data_root}"])
    cfg, model, batch = run.cfg, run.model.eval(), run.cfg["eval_batch_size"]
    temperature = run.card.temperature if run.card is not None else None
    plain_train = build_data(cfg, ("train",), augment=False).splits["train"]
    features = {stages: [dataset_features(model, ds, batch, stages=stages)
                         for ds in (plain_train, run.data.splits["val"], run.data.splits["test"])]
                for stages in (False, True)}
    d = cfg["data"]
    transform = config_transform(cfg, run.data.channels)
    shifts = {f"{name} test": MedMNIST(name, "test", data_root, d["size"], transform) for name in others
              if name != d["medmnist"]}
    shifts.update(shifted_sets(cfg, run.data.channels, n_synthetic))
    shifted = {stages: {name: dataset_features(model, ds, batch, stages=stages) for name, ds in shifts.items()}
               for stages in (False, True)}
    rows = []
    for method in METHODS:
        train, val, test = features[method == "stages"]
        detector = fit_detector(method, train, val[:2], temperature=temperature)
        s_in = detector.scores(*test[:2])
        for name, (f, lg, _) in shifted[method == "stages"].items():
            rows.append({"run": run_path, "dataset": d["medmnist"], "method": method, "shift": name,
                         **separation(s_in, detector.scores(f, lg))})
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--runs", nargs="+", required=True, help="training run folders (MedMNIST data)")
    parser.add_argument("--synthetic", type=int, default=200, help="noise, blank and photo images of each kind")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args(argv)
    from medmamba.evaluation.runs import load_run
    datasets = [load_run(r, (), overrides=[f"data.root={args.data_root}"]).cfg["data"]["medmnist"] for r in args.runs]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    rows = [row for r in args.runs for row in measure(r, datasets, args.data_root, args.synthetic)]
    print("\n| model trained on | score | shift | AUROC | FPR at 95% TPR | images in / out |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['dataset']} | {r['method']} | {r['shift']} | {r['auroc']:.4f} | {r['fpr_at_95_tpr']:.4f} | "
              f"{r['n_in']} / {r['n_out']} |")
    print("\n| model trained on | score | mean AUROC over the shifts | worst AUROC | the other subset |")
    print("| --- | --- | --- | --- | --- |")
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        for method in dict.fromkeys(r["method"] for r in rows):
            mine = [r for r in rows if r["dataset"] == dataset and r["method"] == method]
            other = [r["auroc"] for r in mine if r["shift"].endswith(" test")]
            print(f"| {dataset} | {method} | {np.mean([r['auroc'] for r in mine]):.4f} | "
                  f"{min(r['auroc'] for r in mine):.4f} | {other[0] if other else float('nan'):.4f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
