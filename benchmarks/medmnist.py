"""Accuracy benchmark: the recommended recipes on BreastMNIST and PneumoniaMNIST, test ACC/AUC beside the
published ResNet-18 and MedMamba figures, with wall time and training images/s.

    .venv/bin/python benchmarks/medmnist.py --data-root ../shared/medmnist            # both datasets
    .venv/bin/python benchmarks/medmnist.py --data-root ../shared/medmnist --only breastmnist
    .venv/bin/python benchmarks/medmnist.py ... --set epochs=5                          # recipe overrides
    .venv/bin/python benchmarks/medmnist.py ... --seeds 0 1                             # + their ensemble

Recipes: configs/<dataset>.yaml. Each run writes its folder under --output (default runs/benchmark).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATASETS = ("breastmnist", "pneumoniamnist")
TARGETS = {"breastmnist": (0.87, 0.91), "pneumoniamnist": (0.90, 0.97)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--only", choices=DATASETS)
    parser.add_argument("--output", default=str(REPO / "runs" / "benchmark"))
    parser.add_argument("--set", nargs="*", default=[], help="recipe overrides, key=value")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0],
                        help="train the recipe once per seed; with several, also report the ensemble (probabilities "
                             "averaged) and the total wall time")
    args = parser.parse_args()
    from medmamba.config import load_config
    from medmamba.evaluate import PUBLISHED, evaluate, evaluate_runs
    from medmamba.train import train
    rows = []
    for name in [args.only] if args.only else DATASETS:
        recipe = REPO / "configs" / f"{name}.yaml"
        outs = []
        for seed in args.seeds:
            cfg = load_config(recipe, [f"data.root={args.data_root}", *args.set, f"seed={seed}"])
            out = Path(args.output) / name / (f"seed{seed}" if len(args.seeds) > 1 else "")
            t0 = time.time()
            result = train(cfg, out, overwrite=True)
            wall = time.time() - t0
            trainer = result["trainer"]
            n_images = len(trainer.data.splits["train"]) * trainer.state.epoch
            rows.append(dict(dataset=name, model=f"MedMamba-T, this recipe, seed {seed}" if len(args.seeds) > 1
                             else "MedMamba-T, this recipe", acc=result["test"]["medmnist"]["acc"],
                             auc=result["test"]["medmnist"]["auc"], best_epoch=trainer.state.best_epoch,
                             epochs=trainer.state.epoch, wall_s=wall, train_images_per_s=n_images / wall,
                             recipe=str(recipe.relative_to(REPO)), overrides=args.set, seed=seed, tta=cfg["tta"]))
            if cfg["tta"]:  # the same best checkpoint without test-time augmentation, for comparison
                plain, _, _ = evaluate(trainer.eval_model(), trainer.data.splits["test"], trainer.data.task,
                                       trainer.data.classes, cfg["eval_batch_size"], trainer.device, cfg["amp"])
                rows[-1].update(acc_no_tta=plain["medmnist"]["acc"], auc_no_tta=plain["medmnist"]["auc"])
            (out / "benchmark.json").write_text(json.dumps(rows[-1], indent=1))
            outs.append(out)
        if len(outs) > 1:
            metrics, *_ = evaluate_runs(outs, "test")
            single = rows[-len(outs):]
            rows.append(dict(dataset=name, model=f"ensemble of the {len(outs)} seeds", acc=metrics["medmnist"]["acc"],
                             auc=metrics["medmnist"]["auc"], wall_s=sum(r["wall_s"] for r in single),
                             train_images_per_s=sum(r["train_images_per_s"] * r["wall_s"] for r in single)
                             / sum(r["wall_s"] for r in single), tta=cfg["tta"], seeds=args.seeds))
            (Path(args.output) / name / "benchmark.json").write_text(json.dumps(rows[-1], indent=1))
    print(f"\n{'dataset':<16}{'model':<44}{'ACC':>7}{'AUC':>7}  {'wall':>8}  {'img/s':>6}  target")
    for i, r in enumerate(rows):
        acc_t, auc_t = TARGETS[r["dataset"]]
        met = "met" if r["acc"] >= acc_t and r["auc"] >= auc_t else "not met"
        label = r["model"] + (" (flip TTA)" if r["tta"] else "")
        print(f"{r['dataset']:<16}{label:<44}{r['acc']:>7.3f}{r['auc']:>7.3f}  "
              f"{r['wall_s'] / 60:>6.1f}m  {r['train_images_per_s']:>6.1f}  ACC>={acc_t} AUC>={auc_t}: {met}")
        if "acc_no_tta" in r:
            print(f"{'':<16}{'  same checkpoint, no TTA':<44}{r['acc_no_tta']:>7.3f}{r['auc_no_tta']:>7.3f}")
        if i + 1 == len(rows) or rows[i + 1]["dataset"] != r["dataset"]:
            for who, (acc, auc) in PUBLISHED[r["dataset"]].items():
                print(f"{'':<16}{who:<44}{acc:>7.3f}{auc:>7.3f}")


if __name__ == "__main__":
    main()
