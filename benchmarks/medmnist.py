"""Accuracy benchmark: the recommended recipes on BreastMNIST and PneumoniaMNIST, test ACC/AUC beside the
published ResNet-18 and MedMamba figures, with wall time and training images/s.

    .venv/bin/python benchmarks/medmnist.py --data-root ../shared/medmnist            # both datasets
    .venv/bin/python benchmarks/medmnist.py --data-root ../shared/medmnist --only breastmnist
    .venv/bin/python benchmarks/medmnist.py ... --set epochs=5                          # recipe overrides
    .venv/bin/python benchmarks/medmnist.py ... --seeds 0 1                             # + their ensemble

Recipes: configs/pneumoniamnist.yaml and configs/breastmnist_transfer.yaml. The BreastMNIST recipe fine-tunes
a model of the PneumoniaMNIST recipe shortened to 12 epochs (seed 0), so that model is trained first, into
OUTPUT/pneumoniamnist-for-breastmnist, and its time is part of every BreastMNIST wall time. Each run writes
its folder under --output (default runs/benchmark).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATASETS = ("pneumoniamnist", "breastmnist")
RECIPES = {"pneumoniamnist": "configs/pneumoniamnist.yaml", "breastmnist": "configs/breastmnist_transfer.yaml"}
# recipe -> (the dataset whose recipe's best weights it starts from, overrides of that recipe); the 24-epoch
# PneumoniaMNIST model is no better a start than the 12-epoch one (BENCHMARKS.md), which takes half the time
PRETRAIN = {"breastmnist": ("pneumoniamnist", ("epochs=12",))}
TARGETS = {"breastmnist": (0.87, 0.91), "pneumoniamnist": (0.90, 0.97)}


def run_recipe(name: str, seed: int, out: Path, args, extra=()) -> dict:
    """Train one seed of a recipe, evaluate its best checkpoint on the test split (with and without TTA)."""
    from medmamba import evaluate
    from medmamba.config import load_config
    from medmamba.training.trainer import train
    recipe = REPO / RECIPES[name]
    cfg = load_config(recipe, [f"data.root={args.data_root}", *extra, *args.set, f"seed={seed}"])
    t0 = time.time()
    result = train(cfg, out, overwrite=True)
    wall = time.time() - t0
    trainer = result["trainer"]
    row = dict(dataset=name, model="MedMamba-T, this recipe", acc=result["test"]["medmnist"]["acc"],
               auc=result["test"]["medmnist"]["auc"], best_epoch=trainer.state.best_epoch, epochs=trainer.state.epoch,
               wall_s=wall, train_images_per_s=len(trainer.data.splits["train"]) * trainer.state.epoch / wall,
               recipe=str(recipe.relative_to(REPO)), overrides=list(extra) + args.set, seed=seed, tta=cfg["tta"],
               output=str(out))
    if cfg["tta"]:  # the same best checkpoint without test-time augmentation, for comparison
        plain = evaluate(out, "test", overrides=[f"data.root={args.data_root}", "tta=false"], write=False).metrics
        row.update(acc_no_tta=plain["medmnist"]["acc"], auc_no_tta=plain["medmnist"]["auc"])
    (out / "benchmark.json").write_text(json.dumps(row, indent=1))
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--only", choices=DATASETS)
    parser.add_argument("--output", default=str(REPO / "runs" / "benchmark"))
    parser.add_argument("--set", nargs="*", default=[], help="recipe overrides, key=value (every recipe run)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0],
                        help="train the recipe once per seed; with several, also report the ensemble (probabilities "
                             "averaged) and the total wall time")
    args = parser.parse_args()
    from medmamba import evaluate
    from medmamba.evaluation.reports import PUBLISHED
    rows, pretrained = [], {}
    for name in [args.only] if args.only else DATASETS:
        extra, pre_wall = [], 0.0
        if name in PRETRAIN:
            source, source_set = key = PRETRAIN[name]
            if key not in pretrained:
                pretrained[key] = run_recipe(source, 0, Path(args.output) / f"{source}-for-{name}", args, source_set)
                rows.append(dict(pretrained[key], model=f"MedMamba-T, {', '.join(source_set)}, pretraining for {name}"))
            extra = [f"pretrained={pretrained[key]['output']}"]
            pre_wall = pretrained[key]["wall_s"]
        single = []
        for seed in args.seeds:
            out = Path(args.output) / name / (f"seed{seed}" if len(args.seeds) > 1 else "")
            row = run_recipe(name, seed, out, args, extra)
            if len(args.seeds) > 1:
                row["model"] += f", seed {seed}"
            single.append(row)
            rows.append(dict(row, wall_s=row["wall_s"] + pre_wall, pretraining_s=pre_wall))
        if len(single) > 1:
            metrics = evaluate([r["output"] for r in single], "test", write=False).metrics
            train_s = sum(r["wall_s"] for r in single)
            rows.append(dict(dataset=name, model=f"ensemble of the {len(single)} seeds", acc=metrics["medmnist"]["acc"],
                             auc=metrics["medmnist"]["auc"], wall_s=train_s + pre_wall, pretraining_s=pre_wall,
                             train_images_per_s=sum(r["train_images_per_s"] * r["wall_s"] for r in single) / train_s,
                             tta=single[0]["tta"], seeds=args.seeds))
            (Path(args.output) / name / "benchmark.json").write_text(json.dumps(rows[-1], indent=1))
    print(f"\n{'dataset':<16}{'model':<64}{'ACC':>7}{'AUC':>7}  {'wall':>8}  {'img/s':>6}  target")
    for i, r in enumerate(rows):
        acc_t, auc_t = TARGETS[r["dataset"]]
        met = "met" if r["acc"] >= acc_t and r["auc"] >= auc_t else "not met"
        label = r["model"] + (" (flip TTA)" if r["tta"] else "")
        print(f"{r['dataset']:<16}{label:<64}{r['acc']:>7.3f}{r['auc']:>7.3f}  "
              f"{r['wall_s'] / 60:>6.1f}m  {r['train_images_per_s']:>6.1f}  ACC>={acc_t} AUC>={auc_t}: {met}")
        if "acc_no_tta" in r:
            print(f"{'':<16}{'  same checkpoint, no TTA':<64}{r['acc_no_tta']:>7.3f}{r['auc_no_tta']:>7.3f}")
        if i + 1 == len(rows) or rows[i + 1]["dataset"] != r["dataset"]:
            for who, (acc, auc) in PUBLISHED[r["dataset"]].items():
                print(f"{'':<16}{who:<64}{acc:>7.3f}{auc:>7.3f}")
    if any(r.get("pretraining_s") for r in rows):
        print("\nwall: training and validation time; for a recipe that starts from another dataset's model, "
              "that model's training time is included")


if __name__ == "__main__":
    main()
