"""Fair comparison: K seeds of M models on D datasets, one recipe for all, one table.

Every run is `medmamba train` with the same configuration (the defaults, or --config) and only the model
and seed changed, so the architectures are compared under one recipe, by one code path. The defaults include
each family's own (MedMamba adds TrivialAugmentWide, `augment.policy: auto`); --config
benchmarks/defaults_without_policy.yaml gives every model the same augmentation, as the tables in BENCHMARKS
that call their rows "the defaults" were trained (their records are checked against it). For each dataset
and model the table gives mean +- sd over the seeds of the test metrics and training time; each model's
seeds are then ensembled (probabilities averaged) and compared with the --reference model's ensemble on
the same test images (paired bootstrap interval and p-value of the differences, DeLong's test of the AUCs
for binary tasks). Writes table.csv, table.md and table.png under --output.

A run whose report exists is not trained again, so a long benchmark can be spread over several sessions:

    .venv/bin/python benchmarks/compare_models.py --data-root ../shared/medmnist --datasets breastmnist \\
        --models medmamba_t timm/resnet18 timm/resnet50 timm/convnext_atto --seeds 0 1 2 3 4 \\
        --reference timm/resnet18 --output runs/compare

Recipes side by side: a model written MODEL@NAME is trained with the overrides that --recipes FILE lists
under NAME (YAML, NAME: [key=value, ...], $VARIABLES expanded, {model} replaced by the model's name with /
as _, so one recipe can name each architecture's own starting weights), and is a row of its own, compared
with the reference like any other. --also DIR reads records another benchmark left (never training into
it), so a table of recipes can take the defaults' rows from the defaults' benchmark:

    .venv/bin/python benchmarks/compare_models.py --data-root ../shared/medmnist --recipes recipes.yaml \\
        --models medmamba_t medmamba_t@trivial timm/resnet18 timm/resnet18@trivial \\
        --also benchmarks/results/compare_defaults --results benchmarks/results/recipes --output runs/recipes

A record is only reused when the configuration it was trained with agrees with the one asked for (keys the
record predates aside); otherwise the benchmark stops, naming the keys, rather than mix two recipes in a row.

The table grows: an invocation that names a few rows (say one more seed of one model) keeps the rows of the
table already in the results folder (its runs.json) and adds its own; --new-table starts the table over.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import time
from pathlib import Path

import numpy as np

COLUMNS = ("accuracy", "auc", "balanced_accuracy", "ece")


def run_dir(output: Path, dataset: str, model: str, seed: int) -> Path:
    return output / dataset / model.replace("/", "_") / f"seed{seed}"


def split_label(label: str) -> tuple[str, str | None]:
    """``"timm/resnet18@trivial"`` -> ``("timm/resnet18", "trivial")``; a plain model name has no recipe."""
    model, _, recipe = label.partition("@")
    return model, recipe or None


def read_recipes(path: str | None) -> dict[str, list[str]]:
    import os

    import yaml
    if not path:
        return {}
    try:
        recipes = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise SystemExit(f"error: cannot read recipes {path}: {' '.join(str(e).split())}") from None
    if not isinstance(recipes, dict) or not all(isinstance(v, list) for v in recipes.values()):
        raise SystemExit(f"error: {path} must map each recipe name to a list of key=value overrides")
    return {name: [os.path.expandvars(str(item)) for item in items] for name, items in recipes.items()}


def run_overrides(dataset: str, label: str, seed: int, args) -> list[str]:
    model, recipe = split_label(label)
    if recipe is not None and recipe not in args.recipe_overrides:
        raise SystemExit(f"error: {label}: no recipe {recipe!r} in --recipes "
                         f"({', '.join(args.recipe_overrides) or 'none given'})")
    items = [item.replace("{model}", model.replace("/", "_")) for item in args.recipe_overrides.get(recipe, [])]
    unset = [item for item in items if "$" in item]
    if unset:
        raise SystemExit(f"error: {label}: recipe {recipe!r} names an unset environment variable: {unset[0]}")
    return [f"data.root={args.data_root}", f"data.medmnist={dataset}", f"model={model}", f"seed={seed}",
            *items, *args.set]


# Machine-specific paths: runs made on another machine name the same file by another path. data.root is
# not compared at all: the benchmark sets it for every run from --data-root.
PATH_KEYS = ("data.folder", "data.csv", "pretrained", "distill.teacher")


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def disagreements(recorded: dict, wanted: dict) -> list[str]:
    """Keys whose value in a record's configuration differs from the one asked for. A key the record lacks
    came after it (the feature did not exist, so it was off) and does not count; paths compare by name."""
    def same(key, a, b):
        if key in PATH_KEYS or key.startswith(tuple(k + "." for k in PATH_KEYS)):
            names = lambda v: [Path(str(x)).name for x in (v if isinstance(v, list) else [v])] if v else v
            return names(a) == names(b)
        return a == b
    rec, want = _flat(recorded), _flat(wanted)
    return [f"{k}: recorded {rec[k]!r}, asked {want[k]!r}" for k in sorted(want)
            if k in rec and k != "data.root" and not same(k, rec[k], want[k])]


def record_path(results: Path, dataset: str, model: str, seed: int) -> Path:
    return run_dir(results, dataset, model, seed).with_suffix(".json")


def best_validation(run: Path) -> dict:
    """The epoch the run kept and its validation figures (metrics.jsonl), for the recipe's validation evidence."""
    from medmamba.artifacts.card import read_card
    from medmamba.artifacts.run_dir import RunDir
    folder = RunDir(run)
    rows = [json.loads(line) for line in folder.metrics_jsonl.read_text().splitlines() if line.strip()]
    best = read_card(folder.weights("best")).epoch
    kept = next((r for r in rows if r.get("epoch") == best), rows[-1])
    # The median epoch x epochs: a training time that a few epochs slowed by other work on the machine
    # do not move (the wall time, "seconds", is kept beside it).
    epoch_s = float(np.median([r["seconds"] for r in rows]))
    return {"best_epoch": best, "epochs": len(rows), "epoch_s_median": epoch_s, "train_s": epoch_s * len(rows),
            **{k: v for k, v in kept.items() if k.startswith("val_") and isinstance(v, (int, float))}}


def train_one(dataset: str, model: str, seed: int, args) -> dict:
    """Train (unless already done, or --table-only) and return the run's record: test figures, training time, validation figures
    of the kept checkpoint and the test probabilities. The record (a few tens of kB) is all the table needs, so
    the results folder can be kept (committed) while the run folders with their checkpoints are thrown away."""
    from medmamba.config import load_config
    from medmamba.files import atomic_write_text
    from medmamba.artifacts.run_dir import RunDir
    from medmamba.evaluation.runs import run_outputs
    from medmamba.training.trainer import train
    wanted = load_config(args.config, run_overrides(dataset, model, seed, args))
    record = record_path(Path(args.results), dataset, model, seed)
    out = run_dir(Path(args.output), dataset, model, seed)
    folder = RunDir(out)
    elsewhere = [p for p in (record_path(Path(d), dataset, model, seed) for d in args.also) if p.is_file()]
    if not record.is_file() and elsewhere:
        record = elsewhere[0]
    if record.is_file():
        row = json.loads(record.read_text())
        if "train_s" in row or not out.is_dir():  # records of an earlier version are rebuilt from their run
            differ = disagreements(row["config"], wanted)
            if differ:
                raise SystemExit(f"error: {record} was trained with another configuration than {model} asks "
                                 f"for ({'; '.join(differ)}): give it another name (MODEL@RECIPE) or remove it")
            return row
    report_path = folder.eval_dir("test") / "report.json"
    timing = out / "benchmark_time.json"
    if not (report_path.is_file() and timing.is_file()):
        if args.table_only:
            return None
        _wait_while_paused(Path(args.results))
        t0 = time.time()
        train(wanted, out, overwrite=True, progress=args.progress)
        timing.write_text(json.dumps({"train_and_test_s": time.time() - t0}))
    report = json.loads(report_path.read_text())
    m = report["metrics"]
    outputs = run_outputs(str(out), "test", overrides=[f"data.root={args.data_root}"])
    row = {"dataset": dataset, "model": model, "seed": seed, "accuracy": m["medmnist"]["acc"],
           "auc": m["medmnist"]["auc"], "balanced_accuracy": m["balanced_accuracy"],
           "ece": report["calibration"]["after"]["ece"],
           "seconds": json.loads(timing.read_text())["train_and_test_s"], "run": str(out),
           "config": _resolved_config(out), "code": _code_version(), "host": _host(), **best_validation(out),
           "intervals": report.get("intervals"), "task": outputs.data.task, "classes": list(outputs.data.classes),
           "labels": np.asarray(outputs.labels).tolist(), "probs": np.round(outputs.probs, 7).tolist(),
           "plain": np.round(outputs.plain, 7).tolist()}
    record.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(record, json.dumps(row))
    return row


def earlier_rows(results: Path, args) -> list[dict]:
    """The runs of the table already in the results folder, in its order, read again from their records
    (never trained); read before this invocation trains anything, so that a row which cannot be checked any
    more (its recipe not given, its configuration another) stops the benchmark first."""
    path = results / "runs.json"
    if args.new_table or not path.is_file():
        return []
    try:
        earlier = [(r["dataset"], r["model"], int(r["seed"])) for r in json.loads(path.read_text())]
    except (ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"error: cannot read the earlier table {path} ({e}): mend it or pass --new-table") from None
    reread = argparse.Namespace(**{**vars(args), "table_only": True})
    rows = []
    for dataset, model, seed in earlier:
        try:
            row = train_one(dataset, model, seed, reread)
        except SystemExit as e:
            raise SystemExit(f"{e} (a row of the earlier table {path}; --new-table drops it)") from None
        if row is None:
            print(f"note: {dataset} {model} seed {seed} of the earlier table has no record any more: left out")
        else:
            rows.append(row)
    return rows


def with_earlier_rows(rows: list[dict], earlier: list[dict], args) -> list[dict]:
    """This invocation's rows plus the earlier table's others."""
    done = {(r["dataset"], r["model"], r["seed"]) for r in rows}
    kept = [r for r in earlier if (r["dataset"], r["model"], r["seed"]) not in done]
    if kept:
        print(f"kept {len(kept)} run(s) of the earlier table beside this invocation's {len(rows)}")
    args.datasets = _merged_order([r["dataset"] for r in earlier], args.datasets)
    args.models = _merged_order([r["model"] for r in earlier], args.models)
    # runs.json in the table's order, which the next invocation reads as the earlier table's
    return sorted(rows + kept, key=lambda r: (args.datasets.index(r["dataset"]), args.models.index(r["model"]),
                                              r["seed"]))


def _merged_order(earlier: list[str], named: list[str]) -> list[str]:
    """An invocation naming every earlier row sets the order; one naming a few adds them at the end."""
    return list(named) if set(earlier) <= set(named) else list(dict.fromkeys([*earlier, *named]))


def _wait_while_paused(results: Path):
    """A file PAUSE in the results folder holds the next run back (the machine is wanted quiet for a while);
    pausing a run itself would put the pause into its training time."""
    pause = results / "PAUSE"
    if pause.exists():
        print(f"{pause} exists: waiting", flush=True)
        while pause.exists():
            time.sleep(10)


def _code_version() -> str:
    """The package version and the git commit the package was imported from (+ if its tree had changes)."""
    import subprocess

    import medmamba
    src = Path(medmamba.__file__).parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=src, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "."], cwd=src, capture_output=True,
                               text=True).stdout.strip()
        return f"{medmamba.__version__} {commit}{'+' if dirty else ''}"
    except (OSError, subprocess.CalledProcessError):
        return medmamba.__version__


def _host() -> str:
    """The processor a run was timed on: sessions land on different machines, and a training time means
    nothing without it (the model name alone, "AMD EPYC", does not tell them apart; the vector width and
    the L2 size do)."""
    import torch
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                "unknown CPU")
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    l2 = Path("/sys/devices/system/cpu/cpu0/cache/index2/size")
    cache = f", L2 {l2.read_text().strip()}/core" if l2.is_file() else ""
    return f"{name} ({isa}{cache}), {torch.get_num_threads()} threads"


def _resolved_config(run: Path) -> dict:
    import yaml

    from medmamba.artifacts.run_dir import RunDir
    return yaml.safe_load(RunDir(run).config.read_text())


def outputs_of(records: list[dict]):
    """The seeds' ensemble (probabilities averaged) in the shape ``reports.compare_outputs`` reads."""
    from types import SimpleNamespace
    first = records[0]
    for r in records[1:]:
        if r["labels"] != first["labels"]:
            raise SystemExit(f"error: {r['run']} was tested on other images than {first['run']}")
    return SimpleNamespace(labels=np.array(first["labels"]),
                           probs=np.mean([np.array(r["probs"]) for r in records], axis=0),
                           plain=np.mean([np.array(r["plain"]) for r in records], axis=0),
                           data=SimpleNamespace(name=first["dataset"], task=first["task"], classes=first["classes"]))


def summarise(rows: list[dict], args) -> list[dict]:
    """mean +- sd per (dataset, model), and the paired comparison of seed ensembles with the reference."""
    from medmamba.evaluation.reports import compare_outputs
    table = []
    for dataset in args.datasets:
        outputs = {}
        for model in args.models:
            mine = [r for r in rows if r["dataset"] == dataset and r["model"] == model]
            if not mine:
                continue
            entry = {"dataset": dataset, "model": model, "seeds": len(mine)}
            hosts = sorted({r.get("host", "unrecorded") for r in mine})
            for key in (*COLUMNS, "seconds", "train_s", "val_auc", "val_loss", "best_epoch"):
                values = np.array([r.get(key, math.nan) for r in mine], dtype=float)
                if key in ("seconds", "train_s") and len(hosts) > 1:
                    values[:] = math.nan  # times of two machines do not pool: see train_s_by_host
                entry[f"{key}_mean"] = float(values.mean())
                entry[f"{key}_sd"] = float(values.std(ddof=1)) if len(values) > 1 else math.nan
            entry["train_s_by_host"] = {h: [r["train_s"] for r in mine if r.get("host", "unrecorded") == h and "train_s" in r]
                                        for h in hosts}
            outputs[model] = outputs_of(mine)
            table.append(entry)
        reference = outputs.get(args.reference)
        for entry in table:
            if entry["dataset"] != dataset or reference is None or entry["model"] == args.reference:
                continue
            result = compare_outputs(outputs[entry["model"]], reference, (entry["model"], args.reference),
                                     n_resamples=args.bootstrap, seed=0)
            for key in ("accuracy", "auc"):
                r = result["metrics"][key]
                entry[f"ensemble_{key}"], entry[f"reference_ensemble_{key}"] = r["a"], r["b"]
                entry[f"{key}_difference"], entry[f"{key}_low"], entry[f"{key}_high"], entry[f"{key}_p"] = (
                    r["difference"], r["low"], r["high"], r["p"])
            if "delong" in result:
                entry["delong_p"] = result["delong"]["p"]
    return table


def markdown(table: list[dict], reference: str) -> str:
    def ms(e, key, digits=3):
        sd = e[f"{key}_sd"]
        return f"{e[f'{key}_mean']:.{digits}f} +- {sd:.{digits}f}" if not math.isnan(sd) else f"{e[f'{key}_mean']:.{digits}f}"

    # Training times are only compared on one machine: runs timed on different hosts (a benchmark spread
    # over sessions) get one mean +- sd per host, named by a footnote.
    hosts = sorted({h for e in table for h in e["train_s_by_host"]})
    tag = {h: f"[{i + 1}]" for i, h in enumerate(hosts)}

    def times(e):
        parts = []
        for h, values in e["train_s_by_host"].items():
            v = np.array(values, dtype=float)
            text = f"{v.mean():.0f} +- {v.std(ddof=1):.0f}" if len(v) > 1 else f"{v.mean():.0f}" if len(v) else "?"
            parts.append(f"{text} (n={len(v)}) {tag[h]}" if len(hosts) > 1 else text)
        return "; ".join(parts)
    lines = ["| dataset | model | seeds | test ACC | test AUC | balanced ACC | ECE | train s/run (median epoch x epochs) | "
             f"ensemble ACC - {reference} (95% CI, p) | ensemble AUC - {reference} (95% CI, p; DeLong p) |",
             "| --- " * 10 + "|"]
    for e in table:
        if "auc_difference" in e:
            acc = (f"{e['accuracy_difference']:+.3f} ({e['accuracy_low']:+.3f} to {e['accuracy_high']:+.3f}, "
                   f"p {e['accuracy_p']:.3f})")
            auc = (f"{e['auc_difference']:+.3f} ({e['auc_low']:+.3f} to {e['auc_high']:+.3f}, p {e['auc_p']:.3f}"
                   + (f"; {e['delong_p']:.3f}" if "delong_p" in e else "") + ")")
        else:
            acc = auc = "reference" if e["model"] == reference else ""
        lines.append(f"| {e['dataset']} | {e['model']} | {e['seeds']} | {ms(e, 'accuracy')} | {ms(e, 'auc')} | "
                     f"{ms(e, 'balanced_accuracy')} | {ms(e, 'ece')} | {times(e)} | {acc} | {auc} |")
    lines.append("")
    lines += [f"{tag[h]} {h}" if len(hosts) > 1 else f"Timed on {h}." for h in hosts]
    return "\n".join(lines)


def plot(rows: list[dict], args, path: Path):
    from matplotlib.figure import Figure
    fig = Figure(figsize=(5 * len(args.datasets), 4))
    axes = np.atleast_1d(fig.subplots(1, len(args.datasets), squeeze=False)[0])
    for ax, dataset in zip(axes, args.datasets):
        # only the models this dataset has runs of, each in its colour of every panel
        shown = [(i, m) for i, m in enumerate(args.models) if any(r["dataset"] == dataset and r["model"] == m for r in rows)]
        for x, (i, model) in enumerate(shown):
            values = [r["auc"] for r in rows if r["dataset"] == dataset and r["model"] == model]
            ax.plot([x] * len(values), values, "o", alpha=0.6, color=f"C{i}")
            ax.errorbar([x + 0.15], [np.mean(values)], yerr=[np.std(values, ddof=1) if len(values) > 1 else 0],
                        fmt="s", color=f"C{i}", capsize=3)
        ax.set_xticks(range(len(shown)), [m for _, m in shown], rotation=20, ha="right", fontsize=8)
        ax.set_title(f"{dataset}: test AUC per seed (square: mean +- sd)", fontsize=9)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--datasets", nargs="+", default=["breastmnist"])
    parser.add_argument("--models", nargs="+", default=["medmamba_t", "timm/resnet18"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--reference", default="timm/resnet18", help="model the others are compared with")
    parser.add_argument("--config", help="one recipe for every run (default: the package defaults)")
    parser.add_argument("--set", nargs="*", default=[], help="overrides for every run, key=value")
    parser.add_argument("--recipes", help="YAML: recipe name -> list of key=value overrides, for models "
                                          "written MODEL@NAME")
    parser.add_argument("--also", nargs="*", default=[],
                        help="results folders of other benchmarks whose records join the table (read only)")
    parser.add_argument("--bootstrap", type=int, default=2000)
    parser.add_argument("--output", default="runs/compare", help="run folders (checkpoints: large)")
    parser.add_argument("--results", help="one small JSON record per run, and the table (default: --output)")
    parser.add_argument("--table-only", action="store_true",
                        help="train nothing: the table of the runs done (records in --results, or run folders in --output)")
    parser.add_argument("--new-table", action="store_true",
                        help="the table of this invocation's runs only (default: the earlier table's rows are kept)")
    parser.add_argument("--progress", action="store_true", help="per-epoch progress of every run")
    args = parser.parse_args(argv)
    args.results = args.results or args.output
    args.recipe_overrides = read_recipes(args.recipes)
    for label in [*args.models, args.reference]:
        run_overrides(args.datasets[0], label, 0, args)  # an unknown recipe stops before anything is trained
    out = Path(args.results)
    earlier = earlier_rows(out, args)
    out.mkdir(parents=True, exist_ok=True)
    known = {(r["dataset"], r["model"], r["seed"]): r for r in earlier}  # read and checked just now
    rows = []
    # seed by seed, every model for each, so that a benchmark stopped part-way compares equal numbers of seeds
    for dataset in args.datasets:
        for seed in args.seeds:
            for model in args.models:
                row = known.get((dataset, model, seed)) or train_one(dataset, model, seed, args)
                if row is None:
                    continue
                rows.append(row)
                r = rows[-1]
                print(f"{dataset} {model} seed {seed}: ACC {r['accuracy']:.4f} AUC {r['auc']:.4f} "
                      f"({r['seconds']:.0f} s)", flush=True)
    rows = with_earlier_rows(rows, earlier, args)
    if not rows:
        raise SystemExit(f"error: no run records under {out}")
    table = summarise(rows, args)
    with open(out / "table.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=sorted({k for e in table for k in e}))
        writer.writeheader()
        writer.writerows([{k: json.dumps(v) if isinstance(v, dict) else v for k, v in e.items()} for e in table])
    text = markdown(table, args.reference)
    (out / "table.md").write_text(text + "\n")
    (out / "runs.json").write_text(json.dumps([{k: v for k, v in r.items() if k not in ("labels", "probs", "plain")}
                                              for r in rows], indent=1))
    plot(rows, args, out / "table.png")
    print("\n" + text)
    print(f"\nwrote {out / 'table.csv'}, {out / 'table.md'}, {out / 'table.png'}")


if __name__ == "__main__":
    main()
