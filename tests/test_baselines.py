"""A timm architecture through the same pipeline as MedMamba: train, evaluate, compare, predict, explain, export."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medmamba.cli import main
from medmamba.data import MedMNIST
from medmamba.training.trainer import train

from .helpers import MEDMNIST, REPO, TINY, benchmark_script, needs_medmnist, run_python, tiny_cfg


pytestmark = needs_medmnist


@pytest.fixture(scope="module")
def resnet_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("baseline") / "resnet"
    # model_args={} after TINY: MedMamba's tiny depths/dims mean nothing to a ResNet
    result = train(tiny_cfg("model=timm/resnet18", "model_args={}", "epochs=2", "bootstrap=200"), out, progress=False)
    return out, result


def test_timm_model_trains_and_its_card_records_it(resnet_run):
    out, result = resnet_run
    card = json.loads((out / "checkpoints" / "best" / "model.json").read_text())
    assert card["model"] == "timm/resnet18" and card["in_chans"] == 1 and card["num_classes"] == 2
    assert card["classes"] == ["malignant", "normal, benign"] and card["temperature"] > 0
    report = json.loads((out / "eval_test" / "report.json").read_text())
    assert report["metrics"]["n"] == 40 and set(report["intervals"]) >= {"accuracy", "auc", "sensitivity",
                                                                          "specificity", "f1"}
    assert (out / "eval_test" / "reliability.png").stat().st_size > 1000
    assert result["trainer"].model.__class__.__module__.startswith("timm.")


def test_timm_run_evaluates_compares_predicts_explains_and_exports(resnet_run, tmp_path, capsys):
    out, _ = resnet_run
    assert main(["evaluate", str(out), "--split", "val", "--bootstrap", "100", "--output", str(tmp_path / "ev")]) == 0
    assert "| accuracy |" in capsys.readouterr().out
    # a MedMamba run on the same images, compared with the ResNet
    mamba = tmp_path / "mamba"
    train(tiny_cfg("epochs=1", "bootstrap=0"), mamba, progress=False, test_split=None)
    assert main(["compare", str(mamba), str(out), "--bootstrap", "100", "--output", str(tmp_path / "cmp")]) == 0
    printed = capsys.readouterr().out
    assert "DeLong's test" in printed and "| auc |" in printed
    compared = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert compared["n"] == 40 and compared["b"] == str(out)

    images = tmp_path / "images"
    images.mkdir()
    data = MedMNIST("breastmnist", "test", MEDMNIST)
    for i in range(3):
        Image.fromarray(data.images[i]).save(images / f"case{i}.png")
    assert main(["predict", str(out), str(images), "--output", str(tmp_path / "p.csv")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert len(rows) == 3 and all(abs(float(r["prob_malignant"]) + float(r["prob_normal, benign"]) - 1) < 1e-5
                                  for r in rows)
    assert main(["explain", str(out), str(images), "--output", str(tmp_path / "cams")]) == 0
    assert len(list((tmp_path / "cams").glob("*_hirescam.png"))) == 3
    pytest.importorskip("onnxruntime")
    assert main(["export", str(out), "--format", "onnx", "--output", str(tmp_path / "r.onnx")]) == 0
    assert "max abs difference" in capsys.readouterr().out


def test_unknown_timm_name_is_one_line_saying_how_to_list(tmp_path):
    proc = run_python("import sys; from medmamba.cli import main; sys.exit(main(sys.argv[1:]))", "train",
                      "--output", tmp_path / "o", *TINY, "model=timm/not_a_network", check=False)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "timm.list_models()" in lines[0]
    assert not (tmp_path / "o").exists()


def test_temperature_is_applied_by_predict(resnet_run, tmp_path):
    import torch

    from medmamba.deploy.inference import Predictor
    out, _ = resnet_run
    predictor = Predictor.from_checkpoint(out, device="cpu")
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        logits = predictor.model(x)
    expected = (logits / predictor.card.temperature).softmax(-1).numpy()
    np.testing.assert_allclose(predictor.predict_batch(x), expected, rtol=1e-5, atol=1e-6)


def test_benchmark_table_of_seeds_models_and_paired_comparison(tmp_path, capsys):
    bench = benchmark_script("compare_models")
    out = tmp_path / "cmp"
    overrides = [t for t in TINY if not t.startswith(("data.root", "model_args"))] + ["epochs=1", "bootstrap=0"]
    argv = ["--data-root", str(MEDMNIST), "--models", "timm/resnet18", "timm/resnet10t", "--seeds", "0", "1",
            "--reference", "timm/resnet18", "--bootstrap", "100", "--output", str(out), "--set", *overrides]
    bench.main(argv)
    rows = list(csv.DictReader(open(out / "table.csv")))
    assert [(r["dataset"], r["model"], r["seeds"]) for r in rows] == [("breastmnist", "timm/resnet18", "2"),
                                                                      ("breastmnist", "timm/resnet10t", "2")]
    runs = json.loads((out / "runs.json").read_text())
    aucs = [r["auc"] for r in runs if r["model"] == "timm/resnet10t"]
    assert float(rows[1]["auc_mean"]) == pytest.approx(np.mean(aucs))
    assert float(rows[1]["auc_sd"]) == pytest.approx(np.std(aucs, ddof=1))
    assert rows[1]["delong_p"] and rows[0]["auc_difference"] == ""   # compared with the reference, not itself
    assert (out / "table.png").stat().st_size > 1000 and "| breastmnist | timm/resnet10t | 2 |" in (
        out / "table.md").read_text()
    first = (out / "breastmnist" / "timm_resnet18" / "seed0" / "benchmark_time.json").read_text()
    bench.main(argv)  # a second call trains nothing again
    assert (out / "breastmnist" / "timm_resnet18" / "seed0" / "benchmark_time.json").read_text() == first

    # The small records alone (no checkpoints) give the same table, ensembles and comparison included
    import shutil

    from medmamba.evaluation.runs import run_outputs
    records = tmp_path / "records"
    shutil.copytree(out, records, ignore=lambda folder, names: [n for n in names if (Path(folder) / n).is_dir()
                                                                 and n.startswith("seed")])
    assert sorted(p.name for p in records.glob("breastmnist/*/seed*.json")) == ["seed0.json", "seed0.json",
                                                                                 "seed1.json", "seed1.json"]
    assert not list(records.rglob("*.safetensors"))
    (records / "table.csv").unlink()
    bench.main([*argv, "--results", str(records), "--table-only"])
    assert list(csv.DictReader(open(records / "table.csv"))) == rows
    seeds = [out / "breastmnist" / "timm_resnet10t" / f"seed{k}" for k in (0, 1)]
    ensemble = run_outputs([str(s) for s in seeds], "test", overrides=[f"data.root={MEDMNIST}"])
    from_records = bench.outputs_of([json.loads((records / "breastmnist" / "timm_resnet10t" / f"seed{k}.json")
                                                .read_text()) for k in (0, 1)])
    np.testing.assert_allclose(from_records.probs, ensemble.probs, atol=1e-6)
    np.testing.assert_array_equal(from_records.labels, ensemble.labels)


def test_benchmark_times_pool_only_within_one_host():
    """A benchmark spread over sessions lands on different machines: their training times get one figure
    per host, never one mean across them (which would read as a single machine's)."""
    import argparse
    bench = benchmark_script("compare_models")
    rng = np.random.default_rng(0)
    labels = [0] * 10 + [1] * 10

    def record(model, seed, host, train_s):
        p = rng.uniform(size=20)
        return {"dataset": "d", "model": model, "seed": seed, "host": host, "train_s": train_s, "seconds": train_s + 5,
                "labels": labels, "probs": np.stack([1 - p, p], 1).tolist(), "plain": np.stack([1 - p, p], 1).tolist(),
                "task": "binary-class", "classes": ["a", "b"], "run": f"{model}/{seed}",
                "accuracy": 0.5, "auc": 0.5, "balanced_accuracy": 0.5, "ece": 0.1}
    rows = [record("m", 0, "fast", 100.0), record("m", 1, "slow", 300.0), record("m", 2, "slow", 340.0),
            record("r", 0, "fast", 50.0), record("r", 1, "fast", 70.0)]
    args = argparse.Namespace(datasets=["d"], models=["m", "r"], reference="r", bootstrap=50)
    mixed, single = bench.summarise(rows, args)
    assert mixed["train_s_by_host"] == {"fast": [100.0], "slow": [300.0, 340.0]}
    assert np.isnan(mixed["train_s_mean"]) and np.isnan(mixed["seconds_mean"])
    assert single["train_s_mean"] == pytest.approx(60.0) and single["train_s_sd"] == pytest.approx(np.std([50, 70], ddof=1))
    assert "[1] fast" in bench.markdown([mixed, single], "r") and "100 (n=1) [1]; 320 +- 28 (n=2) [2]" in bench.markdown(
        [mixed, single], "r")


def test_benchmark_invocation_of_a_few_rows_keeps_the_rest_of_the_table(tmp_path):
    """A benchmark grown over sessions: one more seed of one row, asked alone, joins the table instead of
    replacing it; --new-table starts over; an earlier row that can no longer be checked (its recipe not given,
    its record of another configuration) stops the benchmark before it writes anything."""
    bench = benchmark_script("compare_models")
    rng = np.random.default_rng(1)
    labels = [0] * 12 + [1] * 12
    results = tmp_path / "results"

    def record(model, seed):
        p = rng.uniform(size=len(labels))
        row = {"dataset": "breastmnist", "model": model, "seed": seed, "host": "h", "train_s": 10.0 + seed,
               "seconds": 12.0, "labels": labels, "probs": np.stack([1 - p, p], 1).tolist(),
               "plain": np.stack([1 - p, p], 1).tolist(), "task": "binary-class", "classes": ["a", "b"],
               "run": f"{model}/{seed}", "accuracy": 0.5 + seed / 10, "auc": 0.6 + seed / 10,
               "balanced_accuracy": 0.5, "ece": 0.1, "config": {"model": bench.split_label(model)[0], "seed": seed}}
        path = bench.record_path(results, "breastmnist", model, seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(row))

    recipes = tmp_path / "recipes.yaml"
    recipes.write_text("smooth: [label_smoothing=0.2]\n")
    common = ["--data-root", "d", "--reference", "timm/resnet18", "--bootstrap", "50", "--results", str(results),
              "--output", str(tmp_path / "runs"), "--recipes", str(recipes), "--table-only"]
    for model in ("timm/resnet18", "medmamba_t", "medmamba_t@smooth"):
        for seed in (0, 1):
            record(model, seed)
    bench.main([*common, "--models", "timm/resnet18", "medmamba_t", "medmamba_t@smooth", "--seeds", "0", "1"])
    record("medmamba_t", 2)
    bench.main([*common, "--models", "medmamba_t", "--seeds", "2"])  # one more seed of one row
    rows = list(csv.DictReader(open(results / "table.csv")))
    assert [(r["model"], r["seeds"]) for r in rows] == [("timm/resnet18", "2"), ("medmamba_t", "3"),
                                                        ("medmamba_t@smooth", "2")]
    assert float(rows[1]["auc_mean"]) == pytest.approx(0.7) and rows[1]["auc_difference"]
    assert len(json.loads((results / "runs.json").read_text())) == 7
    every = ["--models", "medmamba_t@smooth", "medmamba_t", "timm/resnet18", "--seeds", "0", "1", "2"]
    bench.main([*common, *every])  # an invocation naming every row sets their order
    assert [r["model"] for r in csv.DictReader(open(results / "table.csv"))] == every[1:4]
    for model in ("timm/resnet18", "medmamba_t"):  # one row, then another: the order stays
        bench.main([*common, "--models", model, "--seeds", "0"])
        assert [r["model"] for r in csv.DictReader(open(results / "table.csv"))] == every[1:4]

    table = (results / "table.md").read_text()
    no_recipes = [a for a in common if a not in ("--recipes", str(recipes))]
    with pytest.raises(SystemExit, match="no recipe 'smooth'.*earlier table.*--new-table"):
        bench.main([*no_recipes, "--models", "medmamba_t", "--seeds", "2"])
    assert (results / "table.md").read_text() == table  # nothing rewritten
    smooth = bench.record_path(results, "breastmnist", "medmamba_t@smooth", 0)
    changed = {**json.loads(smooth.read_text()), "config": {"label_smoothing": 0.5}}
    smooth.write_text(json.dumps(changed))
    with pytest.raises(SystemExit, match="another configuration.*earlier table"):
        bench.main([*common, "--models", "medmamba_t", "--seeds", "2"])
    assert (results / "table.md").read_text() == table

    bench.main([*no_recipes, "--models", "timm/resnet18", "medmamba_t", "--seeds", "2", "0", "--new-table"])
    rows = list(csv.DictReader(open(results / "table.csv")))
    assert [(r["model"], r["seeds"]) for r in rows] == [("timm/resnet18", "1"), ("medmamba_t", "2")]


@needs_medmnist
def test_benchmark_recipes_as_rows_records_of_another_benchmark_and_no_mixed_recipes(tmp_path, monkeypatch):
    """MODEL@RECIPE trains with the recipe's overrides as a row of its own; --also takes rows from another
    benchmark's records without training; a record trained with another configuration than asked stops the
    benchmark instead of joining a row."""
    bench = benchmark_script("compare_models")
    overrides = [t for t in TINY if not t.startswith(("data.root", "model_args"))] + ["epochs=1", "bootstrap=0"]
    common = ["--data-root", str(MEDMNIST), "--seeds", "0", "--reference", "timm/resnet10t", "--bootstrap", "50"]
    plain = tmp_path / "plain"
    bench.main([*common, "--models", "timm/resnet10t", "--output", str(plain), "--set", *overrides])

    recipes = tmp_path / "recipes.yaml"
    recipes.write_text('smooth: [label_smoothing=$SMOOTHING]\ntransfer: ["pretrained=/runs/{model}"]\n')
    monkeypatch.delenv("SMOOTHING", raising=False)
    mixed = tmp_path / "mixed"
    argv = [*common, "--models", "timm/resnet10t", "timm/resnet10t@smooth", "--recipes", str(recipes),
            "--also", str(plain), "--output", str(mixed), "--set", *overrides]
    with pytest.raises(SystemExit, match=r"\$SMOOTHING"):
        bench.main(argv)
    assert not mixed.exists()  # stopped before anything was trained or written
    monkeypatch.setenv("SMOOTHING", "0.2")
    bench.main(argv)
    assert not (mixed / "breastmnist" / "timm_resnet10t").exists()  # the plain row came from --also
    runs = {r["model"]: r for r in json.loads((mixed / "runs.json").read_text())}
    assert set(runs) == {"timm/resnet10t", "timm/resnet10t@smooth"}
    assert runs["timm/resnet10t@smooth"]["config"]["label_smoothing"] == 0.2
    assert runs["timm/resnet10t"]["config"]["label_smoothing"] != 0.2
    rows = {r["model"]: r for r in csv.DictReader(open(mixed / "table.csv"))}
    assert rows["timm/resnet10t@smooth"]["auc_difference"] and not rows["timm/resnet10t"]["auc_difference"]

    import argparse  # {model}: one recipe names each architecture's own starting weights
    start = argparse.Namespace(data_root="d", set=[], recipe_overrides=bench.read_recipes(str(recipes)))
    assert bench.run_overrides("x", "timm/resnet18@transfer", 3, start)[-1] == "pretrained=/runs/timm_resnet18"
    assert bench.run_overrides("x", "medmamba_t@transfer", 3, start)[-1] == "pretrained=/runs/medmamba_t"

    monkeypatch.setenv("SMOOTHING", "0.3")  # the same name asked with other values: refused, nothing mixed
    with pytest.raises(SystemExit, match="label_smoothing: recorded 0.2, asked 0.3"):
        bench.main(argv)


def test_the_committed_recipes_parse_into_valid_configurations(monkeypatch):
    """benchmarks/recipes*.yaml: each recipe's overrides are known keys with allowed values (a typo would
    otherwise surface only when its turn in a long benchmark came)."""
    import argparse

    from medmamba.config import load_config
    bench = benchmark_script("compare_models")
    files = sorted((REPO / "benchmarks").glob("recipes*.yaml"))
    assert files
    for var in ("SSL_RUN", "TRANSFER_ROOT"):
        monkeypatch.setenv(var, f"/runs/{var.lower()}")
    for path in files:
        recipes = bench.read_recipes(str(path))
        args = argparse.Namespace(data_root="d", set=[], recipe_overrides=recipes)
        for name in recipes:
            cfg = load_config(None, bench.run_overrides("breastmnist", f"medmamba_t@{name}", 0, args))
            assert cfg["model"] == "medmamba_t" and cfg["data"]["medmnist"] == "breastmnist"
    transfer = bench.run_overrides("x", "timm/resnet18@transfer", 0, argparse.Namespace(
        data_root="d", set=[], recipe_overrides=bench.read_recipes(str(REPO / "benchmarks" / "recipes28.yaml"))))
    assert "pretrained=/runs/transfer_root/timm_resnet18" in transfer
    with pytest.raises(SystemExit, match="cannot read recipes"):  # one line, not a traceback
        bench.read_recipes(str(REPO / "benchmarks" / "no-such-recipes.yaml"))
