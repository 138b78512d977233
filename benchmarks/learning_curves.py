"""Validation metrics after every epoch of a recipe, and a plot of several such runs: how a recipe's length
and checkpoint choice are decided. Only the validation split is looked at: test-split curves chose the
recipes of earlier versions (BENCHMARKS.md says which), a habit this script no longer allows.

    .venv/bin/python benchmarks/learning_curves.py run configs/breastmnist.yaml /tmp/lc/scratch --data-root \\
        ../shared/medmnist --set epochs=60 monitor=loss threads=1
    .venv/bin/python benchmarks/learning_curves.py plot /tmp/lc/scratch /tmp/lc/transfer --output curves.png
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

CURVES = "curves.json"


def run(recipe: str, output: str, data_root: str, overrides: list[str]):
    from medmamba.config import load_config
    from medmamba.artifacts.run_dir import RunDir
    from medmamba.training.trainer import train

    cfg = load_config(recipe, [f"data.root={data_root}", *overrides])
    result = train(cfg, output, overwrite=True, test_split=None)
    rows = [json.loads(line) for line in RunDir(output).metrics_jsonl.read_text().splitlines()]
    curve = [dict(epoch=r["epoch"], train_loss=r["train_loss"], val_loss=r["val_loss"], val_acc=r["val_acc"],
                  val_auc=r["val_auc"]) for r in rows]
    (Path(output) / CURVES).write_text(json.dumps(dict(recipe=recipe, overrides=overrides, curve=curve,
                                                       best_epoch=result["trainer"].state.best_epoch), indent=1))


def plot(runs: list[str], labels: list[str] | None, output: str):
    from matplotlib.figure import Figure
    fig = Figure(figsize=(15, 4.2))
    axes = fig.subplots(1, 3)
    for i, folder in enumerate(runs):
        data = json.loads((Path(folder) / CURVES).read_text())
        label = labels[i] if labels else Path(folder).name
        epochs = [row["epoch"] for row in data["curve"]]
        color = f"C{i}"
        axes[0].plot(epochs, [r["val_loss"] for r in data["curve"]], color=color, label=label)
        axes[1].plot(epochs, [r["val_auc"] for r in data["curve"]], color=color, label=label)
        axes[2].plot(epochs, [r["train_loss"] for r in data["curve"]], color=color, label=label)
        best = data["best_epoch"]
        axes[1].plot([best], [data["curve"][best - 1]["val_auc"]], "o", color=color)
    for ax, title in zip(axes, ("validation loss", "validation AUC (dot: the checkpoint kept)", "training loss")):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[1].set_ylim(0.6, 1.0)
    axes[2].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(output, dpi=110)
    print(f"wrote {output}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="train a recipe, recording validation metrics each epoch")
    p.add_argument("recipe")
    p.add_argument("output")
    p.add_argument("--data-root", required=True)
    p.add_argument("--set", nargs="*", default=[], help="recipe overrides, key=value")
    p = sub.add_parser("plot", help="plot the curves of several runs")
    p.add_argument("runs", nargs="+")
    p.add_argument("--labels", nargs="+")
    p.add_argument("--output", required=True)
    args = parser.parse_args()
    if args.command == "run":
        run(args.recipe, args.output, args.data_root, args.set)
    else:
        if args.labels and len(args.labels) != len(args.runs):
            parser.error(f"{len(args.labels)} labels for {len(args.runs)} runs")
        plot(args.runs, args.labels, args.output)


if __name__ == "__main__":
    main()
