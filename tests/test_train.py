"""Training pipeline on real BreastMNIST images with a tiny MedMamba: outputs, exact resume, failures, DDP."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from medmamba.config import load_config
from medmamba.errors import MedMambaError, TrainingError
from medmamba.training.trainer import train

from .helpers import REPO, SHARED, TINY, needs_medmnist, run_python, tiny_cfg


@needs_medmnist
def test_run_folder_contents_and_no_overwrite(tmp_path):
    out = tmp_path / "run"
    result = train(tiny_cfg(), out, progress=False)
    expected = {"config.yaml", "metrics.jsonl", "metrics.csv", "checkpoints", "eval_test"}
    assert expected <= {p.name for p in out.iterdir()}
    assert (out / "checkpoints" / "best" / "model.safetensors").is_file()
    assert (out / "checkpoints" / "last" / "state.pt").is_file()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3] and all(0 <= r["val_auc"] <= 1 for r in rows)
    report = json.loads((out / "eval_test" / "report.json").read_text())
    assert report["metrics"]["n"] == 40 and report["metrics"]["accuracy"] == result["test"]["accuracy"]
    assert (out / "eval_test" / "roc.png").stat().st_size > 1000
    # every file of the run where RunDir says it is
    from medmamba.artifacts.run_dir import PREDICTIONS, RunDir
    run = RunDir(out)
    assert run.is_run() and run.weights("best").is_file() and run.card("best").is_file()
    assert run.state("last").is_file() and run.weights("last").is_file() and run.metrics_csv.is_file()
    assert run.ema_weights("last").is_file() == bool(tiny_cfg()["ema"]) and run.report("test").is_file()
    assert RunDir.of_weights(run.weights("best")) == RunDir(out.resolve()) and RunDir.of_weights(tmp_path) is None
    import csv
    rows = list(csv.DictReader(open(run.eval_dir("test") / PREDICTIONS)))
    assert len(rows) == 40 and list(rows[0]) == ["image", "label", "prob_malignant", "prob_normal, benign",
                                                 "predicted", "set", "ood_score", "ood", "correct"]
    flagged = np.mean([r["ood"] == "True" for r in rows])
    assert flagged == pytest.approx(report["ood"]["flagged"]) and report["ood"]["method"] == "stages"
    assert run.ood_features("best").is_file() and json.loads(run.card("best").read_text())["ood"]["tpr"] == 0.95
    assert {r["set"] for r in rows} <= {"malignant", "normal, benign", "malignant|normal, benign"}
    covered = np.mean([r["label"] in r["set"].split("|") for r in rows])
    assert covered == pytest.approx(report["conformal"]["empirical_coverage"]) and report["conformal"]["coverage"] == 0.9
    assert rows[0]["image"] == "breastmnist.npz:test[0]" and {r["label"] for r in rows} <= {"malignant", "normal, benign"}
    right = sum(r["correct"] == "True" for r in rows)
    assert right / 40 == pytest.approx(report["metrics"]["accuracy"])
    assert right < 40 and (run.eval_dir("test") / "errors.png").stat().st_size > 5000  # the mistakes, shown
    assert (run.eval_dir("test") / "risk_coverage.png").is_file() and "## Selective prediction" in (
        run.eval_dir("test") / "report.md").read_text()
    # the run's own record of its split, checked whenever its data is read again
    record = json.loads(run.split.read_text())
    assert record["data"]["source"] == "medmnist" and len(record["data"]["sha256"]) == 64
    assert {k: len(v) for k, v in record["splits"].items()} == {"train": 40, "val": 40, "test": 40}
    assert record["splits"]["val"][:2] == ["breastmnist.npz:val[0]", "breastmnist.npz:val[1]"]
    changed = tmp_path / "changed"
    changed.mkdir()
    arrays = dict(np.load(SHARED / "medmnist" / "breastmnist.npz"))
    arrays["test_labels"][0] = 1 - arrays["test_labels"][0]
    np.savez(changed / "breastmnist.npz", **arrays)
    with pytest.raises(MedMambaError, match="the data changed since this run recorded its split"):
        evaluate_again = __import__("medmamba").evaluate
        evaluate_again(out, "test", overrides=[f"data.root={changed}"], write=False)
    # the library's evaluate, from the saved run, is the pipeline the training's test went through
    from medmamba import evaluate
    again = evaluate(out, "test", n_resamples=1000, seed=0, write=False)
    assert again.metrics == result["test"] and again.paths == {}
    assert list(again.report["intervals"]["auc"]) == report["intervals"]["auc"]
    with pytest.raises(MedMambaError, match="--sensitivity is calibrated on the validation split"):
        evaluate(out, "val", sensitivity=0.9)  # refused before anything is loaded or written
    assert not run.eval_dir("val", "best").exists()
    before = (out / "metrics.jsonl").read_text()
    with pytest.raises(MedMambaError, match="exists and is not empty; pass --overwrite"):
        train(tiny_cfg(), out, progress=False)
    assert (out / "metrics.jsonl").read_text() == before
    # the best weights load as a pretrained checkpoint
    import medmamba
    model = medmamba.create_model("medmamba_t", num_classes=2, in_chans=1, depths=[1, 1], dims=[8, 16],
                                  pretrained=out / "checkpoints" / "best" / "model.safetensors")
    assert model.head.out_features == 2


@needs_medmnist
def test_fine_tuning_starts_from_another_runs_best_weights(tmp_path):
    from medmamba.training.trainer import Trainer
    first = tmp_path / "first"
    train(tiny_cfg(), first, progress=False, test_split=None)
    best = load_file(str(first / "checkpoints" / "best" / "model.safetensors"))
    fresh = Trainer(tiny_cfg(), tmp_path / "fresh", progress=False).model.state_dict()
    # the run folder itself names its best checkpoint, as in configs/breastmnist_transfer.yaml
    tuned = Trainer(tiny_cfg(f"pretrained={first}", "seed=1"), tmp_path / "tuned", progress=False).model.state_dict()
    assert set(tuned) == set(best)
    assert all(torch.equal(tuned[k], best[k]) for k in best)
    assert not all(torch.equal(fresh[k], best[k]) for k in best)
    with pytest.raises(MedMambaError, match="holds no model.safetensors"):
        Trainer(tiny_cfg(f"pretrained={tmp_path / 'fresh'}"), tmp_path / "none", progress=False)


KILL_AT_STEP = 7  # epoch 2 of 3, two steps in; the last checkpoint before it is step 6 (save_every_steps=2)
DRIVER = """
import os, signal, sys
from medmamba.config import load_config
from medmamba.training.trainer import train
overrides = sys.argv[3:]
def kill(trainer):
    if sys.argv[2] == "kill" and trainer.state.global_step == {kill}:
        os.kill(os.getpid(), signal.SIGKILL)
resume = sys.argv[2] == "resume"
train(None if resume else load_config(None, overrides), sys.argv[1], resume=resume, callbacks=[kill],
      progress=False, test_split=None)
""".replace("{kill}", str(KILL_AT_STEP))


@needs_medmnist
def test_sigkill_mid_epoch_then_resume_is_exact(tmp_path):
    # augmentation and stochastic depth on: the RNG states must be restored too
    overrides = TINY + ["save_every_steps=2", "augment.rotation=15", "drop_path_rate=0.2", "mixup=0.4", "threads=1"]
    run_python(DRIVER, tmp_path / "straight", "straight", *overrides)
    killed = run_python(DRIVER, tmp_path / "killed", "kill", *overrides, check=False)
    assert killed.returncode == -9, killed.stderr[-2000:]
    meta = json.loads((tmp_path / "killed" / "checkpoints" / "last" / "meta.json").read_text())
    assert meta["global_step"] == KILL_AT_STEP - 1 and meta["step_in_epoch"] > 0  # mid-epoch
    run_python(DRIVER, tmp_path / "killed", "resume")
    a = load_file(str(tmp_path / "straight" / "checkpoints" / "last" / "model.safetensors"))
    b = load_file(str(tmp_path / "killed" / "checkpoints" / "last" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    straight = (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()
    resumed = (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
    strip = [{k: v for k, v in json.loads(r).items() if k != "seconds"} for r in straight]
    assert strip == [{k: v for k, v in json.loads(r).items() if k != "seconds"} for r in resumed]


def test_mixup_blends_inputs_and_labels_in_one_proportion():
    import torch.nn.functional as F

    from medmamba.training.loss import TrainingLoss
    seen = []

    def model(x):
        seen.append(x)
        return x.flatten(1)[:, :3] * 3
    loss_fn = TrainingLoss(multi_label=False, mixup=0.4)
    x, y = torch.randn(6, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1, 2])
    torch.manual_seed(5)
    loss = loss_fn(model, x, y)
    torch.manual_seed(5)
    lam, perm = float(torch.distributions.Beta(0.4, 0.4).sample()), torch.randperm(6)
    assert 0.01 < lam < 0.99 and not torch.equal(perm, torch.arange(6))  # a real blend at this seed
    torch.testing.assert_close(seen[0], lam * x + (1 - lam) * x[perm])
    logits = model(seen[0])
    torch.testing.assert_close(loss, lam * F.cross_entropy(logits, y) + (1 - lam) * F.cross_entropy(logits, y[perm]))
    plain = TrainingLoss(multi_label=False)  # off: the plain loss on the unblended batch
    torch.testing.assert_close(plain(model, x, y), F.cross_entropy(model(x), y))
    assert torch.equal(seen[-1], x)


@needs_medmnist
def test_loss_class_weights_and_label_smoothing_from_the_config():
    import torch.nn.functional as F

    from medmamba.data.builder import build_data
    from medmamba.training.loss import TrainingLoss
    cfg = tiny_cfg("class_weights=balanced", "label_smoothing=0.1")
    data = build_data(cfg, splits=("train",))
    loss_fn = TrainingLoss.from_config(cfg, data, "cpu")
    counts = np.bincount(data.splits["train"].labels, minlength=2)
    expected = torch.tensor(len(data.splits["train"]) / (2 * counts), dtype=torch.float32)
    torch.testing.assert_close(loss_fn.class_weights, expected)
    logits, y = torch.randn(5, 2), torch.tensor([0, 1, 1, 0, 1])
    torch.testing.assert_close(loss_fn(lambda x: x, logits, y),
                               F.cross_entropy(logits, y, weight=expected, label_smoothing=0.1))
    with pytest.raises(MedMambaError, match="class_weights has 3 values for 2 classes"):
        TrainingLoss.from_config(tiny_cfg("class_weights=[1, 2, 3]"), data, "cpu")


@needs_medmnist
def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    def poison(trainer):
        if trainer.state.global_step == 6:  # after the end-of-epoch-1 checkpoint (5 steps an epoch)
            with torch.no_grad():
                trainer.model.head.weight.fill_(float("nan"))
    with pytest.raises(TrainingError, match="loss is nan at epoch 2, step 2; stopped. Last good checkpoint"):
        train(tiny_cfg(), tmp_path / "run", callbacks=[poison], progress=False)
    last = load_file(str(tmp_path / "run" / "checkpoints" / "last" / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in last.values() if v.dtype.is_floating_point)
    state = json.loads((tmp_path / "run" / "checkpoints" / "last" / "meta.json").read_text())
    assert state["epoch"] == 1 and state["global_step"] == 5


@needs_medmnist
def test_options_ema_weights_sgd_schedule_and_early_stopping(tmp_path):
    result = train(tiny_cfg("ema=0.9", "class_weights=balanced", "optimizer.name=sgd", "optimizer.lr=0.01",
                            "schedule.name=medmnist", "label_smoothing=0.1", "clip_grad=1.0",
                            "early_stopping=1", "monitor=loss", "epochs=6"),
                   tmp_path / "run", progress=False)
    trainer = result["trainer"]
    summary = result["summary"]
    # patience 1: training ends one epoch after the best one, or at the last epoch
    assert summary["epochs"] in (summary["best_epoch"] + 1, 6)
    counts = torch.bincount(torch.as_tensor(trainer.data.splits["train"].labels), minlength=2).float()
    torch.testing.assert_close(trainer.loss.class_weights, 40 / (2 * counts))
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["weights"] in ("ema", "raw") and {"val_loss_ema", "val_loss_raw"} <= set(r) for r in rows)
    best = rows[summary["best_epoch"] - 1]
    assert best["val_loss"] == min(best["val_loss_ema"], best["val_loss_raw"])  # the better of the two is kept
    assert json.loads((tmp_path / "run" / "checkpoints" / "best" / "model.json").read_text())["weights"] == \
        best["weights"]
    ema, live = trainer.ema.module.state_dict(), trainer.model.state_dict()
    assert not torch.equal(ema["head.weight"], live["head.weight"])
    assert isinstance(trainer.optimizer, torch.optim.SGD)


def test_layer_decay_scales_lr_from_head_to_stem_through_the_schedule():
    from medmamba.models import create_model
    from medmamba.training.optim import build_optimizer, lr_factor
    pytest.importorskip("timm")
    model = create_model("medmamba_t", num_classes=2, depths=(1, 2, 1, 1), dims=8)
    cfg = load_config(None, ["optimizer.lr=0.01", "optimizer.layer_decay=0.5", "epochs=4"])
    opt = build_optimizer(model, cfg)
    lr_of = {id(p): (g["lr"], g["weight_decay"]) for g in opt.param_groups for p in g["params"]}
    names = dict(model.named_parameters())
    assert sorted(lr_of) == sorted(id(p) for p in names.values())  # every parameter once
    lr = {n: lr_of[id(p)][0] for n, p in names.items()}
    # 7 groups: stem, the 5 blocks (each Patch-M with its stage's last block), head
    assert lr["head.weight"] == pytest.approx(0.01)
    assert lr["layers.3.blocks.0.ln_1.weight"] == pytest.approx(0.005)
    assert lr["layers.1.blocks.1.ln_1.weight"] == lr["layers.1.downsample.reduction.weight"] == pytest.approx(0.01 / 8)
    assert lr["layers.1.blocks.0.ln_1.weight"] == pytest.approx(0.01 / 16)
    assert lr["patch_embed.proj.weight"] == pytest.approx(0.01 / 64)
    wd = {n: lr_of[id(p)][1] for n, p in names.items()}
    a_logs = next(n for n in names if n.endswith("A_logs"))
    assert wd["head.weight"] == 0.05 and wd["head.bias"] == 0.0 and wd[a_logs] == 0.0
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(cfg, 3))
    for _ in range(5):
        opt.step()
        sched.step()
    ratios = {g["lr"] / g["initial_lr"] for g in opt.param_groups}
    assert len(ratios) == 1 and ratios.pop() < 1  # the schedule moves every group by the same factor
    with pytest.raises(MedMambaError, match="optimizer.layer_decay': 1.5 is not allowed"):
        load_config(None, ["optimizer.layer_decay=1.5"])  # refused when the config is read, before any model


@needs_medmnist
def test_cli_bad_inputs_are_one_line_and_leave_nothing(tmp_path):
    def cli(*args):
        return run_python("import sys; from medmamba.cli import main; sys.exit(main(sys.argv[1:]))", *args,
                          check=False)
    (tmp_path / "breastmnist.npz").write_bytes(b"truncated")
    cases = [
        (["train", "--output", tmp_path / "o1", "--data-root", tmp_path, *TINY[1:]], "not a readable .npz"),
        (["train", "--output", tmp_path / "o2", *TINY, "optimizer.name=rmsprop"],
         "'optimizer.name': 'rmsprop' is not allowed; expected one of adamw, adam, sgd"),
        (["train", "--output", tmp_path / "o3", "nonsense.key=1"], "unknown config key 'nonsense'"),
        (["train", "--output", tmp_path / "o4", *TINY, "mixup=-1"], "'mixup': -1 is not allowed; expected a number >= 0"),
        (["train", "--output", tmp_path / "o5", *TINY, "epochs=abc"], "'epochs': 'abc' is not allowed; expected a whole"),
        (["train", "--output", tmp_path / "o6", *TINY, "monitor=kappa"], "'monitor': 'kappa' is not allowed; expected one of auc"),
        (["train", "--output", tmp_path / "o7", *TINY, "amp=fp8"], "'amp': 'fp8' is not allowed; expected one of bf16, fp16"),
        (["train", "--output", tmp_path / "o8", *TINY, "data.img_size=-3"], "'data.img_size': -3 is not allowed"),
        (["train", "--output", tmp_path / "o9", *TINY, "scan_backend=fastest"], "'scan_backend': 'fastest' is not allowed"),
        (["train", "--output", tmp_path / "o10", *TINY, "scan_backend=mamba_ssm"], "backend 'mamba_ssm' is not available"),
        (["train", "--output", tmp_path / "o11", *TINY, "model=resnet_x"], "'model': 'resnet_x' is not allowed"),
        (["train", "--output", tmp_path / "o12", *TINY, "optimizer.lr=0"], "'optimizer.lr': 0 is not allowed"),
        (["train", "--output", tmp_path / "o13", *TINY, "augment.hflip=1.5"], "'augment.hflip': 1.5 is not allowed"),
        (["train", "--output", tmp_path / "o14", "--config", tmp_path / "absent.yaml"], "cannot read config"),
        (["evaluate", tmp_path / "nowhere"], "not a training output folder"),
        (["config", "ema=2"], "'ema': 2 is not allowed"),
        (["train", "--output", tmp_path / "o15", *TINY, "positive_class=cancer"],
         "'cancer' is neither a class name nor an index"),
    ]
    for args, message in cases:
        proc = cli(*args)
        assert proc.returncode == 2, (args, proc.stderr[-1500:])
        lines = [line for line in proc.stderr.strip().splitlines() if line]
        assert len(lines) == 1 and message in lines[0], proc.stderr
        if args[0] == "train":  # refused before anything was written: the corrected command is not blocked
            assert not args[2].exists(), args


def test_config_command_prints_every_key_with_a_comment_and_loads_back():
    import yaml

    from medmamba.config import SCHEMA, load_config
    proc = run_python("import sys; from medmamba.cli import main; sys.exit(main(sys.argv[1:]))",
                      "config", "--config", REPO / "configs" / "breastmnist.yaml", "epochs=7")
    printed = yaml.safe_load(proc.stdout)
    assert printed == load_config(REPO / "configs" / "breastmnist.yaml", ["epochs=7"]) and printed["epochs"] == 7

    def keys(schema, where=""):
        return [k for name, v in schema.items()
                for k in (keys(v, f"{where}{name}.") if isinstance(v, dict) else [where + name])]
    leaves = [line for line in proc.stdout.splitlines() if not line.rstrip().endswith(":")]
    assert len(leaves) == len(keys(SCHEMA)) and all("  # " in line for line in leaves)


def test_version_flag():
    import medmamba
    proc = run_python("import sys; from medmamba.cli import main; sys.exit(main(sys.argv[1:]))", "--version")
    assert proc.stdout.strip() == f"medmamba {medmamba.__version__}" and medmamba.__version__[0].isdigit()


def test_import_pulls_in_neither_scikit_learn_nor_matplotlib():
    proc = run_python("import sys, medmamba; print(sorted(m for m in ('sklearn', 'matplotlib') if m in sys.modules))")
    assert proc.stdout.strip() == "[]"


@needs_medmnist
def test_evaluate_cli_and_checkpoint_with_other_class_count(tmp_path):
    out = tmp_path / "run"
    train(tiny_cfg("epochs=1"), out, progress=False, test_split=None)
    proc = run_python("import sys; from medmamba.cli import main; sys.exit(main(sys.argv[1:]))",
                      "evaluate", out, "--split", "val")
    assert "| accuracy |" in proc.stdout and (out / "eval_val_best" / "report.md").is_file()
    again = run_python("import sys; from medmamba.cli import main; sys.exit(main(sys.argv[1:]))",
                       "evaluate", out, "--split", "val", check=False)
    assert again.returncode == 2 and "exists and is not empty; pass --overwrite" in again.stderr
    import medmamba
    from safetensors.torch import save_file
    other = medmamba.create_model("medmamba_t", num_classes=5, in_chans=1, depths=[1, 1], dims=[8, 16])
    save_file(other.state_dict(), str(tmp_path / "five.safetensors"))
    bad = run_python("import sys; from medmamba.cli import main; sys.exit(main(sys.argv[1:]))",
                     "evaluate", out, "--checkpoint", tmp_path / "five.safetensors", check=False)
    assert bad.returncode == 2 and "5 classes" in bad.stderr and "2" in bad.stderr


@needs_medmnist
def test_ensemble_of_runs_averages_their_probabilities(tmp_path):
    from medmamba import evaluate
    from medmamba.evaluation.runs import run_outputs
    runs = [tmp_path / "a", tmp_path / "b"]
    train(tiny_cfg("epochs=1", "seed=1"), runs[0], progress=False, test_split=None)
    train(tiny_cfg("epochs=1", "seed=2", "tta=true"), runs[1], progress=False, test_split=None)
    each = [run_outputs(r, "val") for r in runs]
    result = evaluate(runs, "val", write=False)
    probs, labels = result.outputs.probs, result.outputs.labels
    np.testing.assert_allclose(probs, (each[0].probs + each[1].probs) / 2, rtol=1e-6)
    assert not np.allclose(each[0].probs, each[1].probs) and [r.cfg["tta"] for r in result.outputs.used] == [False, True]
    assert result.metrics["n"] == len(labels) == 40 and result.paths == {}
    cli = "import sys; from medmamba.cli import main; sys.exit(main(sys.argv[1:]))"
    no_out = run_python(cli, "evaluate", *runs, "--split", "val", check=False)
    assert no_out.returncode == 2 and "needs --output" in no_out.stderr
    ok = run_python(cli, "evaluate", *runs, "--split", "val", "--output", tmp_path / "ens")
    assert "| accuracy |" in ok.stdout
    report = json.loads((tmp_path / "ens" / "report.json").read_text())
    assert report["metrics"]["accuracy"] == pytest.approx(result.metrics["accuracy"])
    train(tiny_cfg("epochs=1", "data.medmnist=pneumoniamnist"), tmp_path / "p", progress=False, test_split=None)
    with pytest.raises(MedMambaError, match="an ensemble needs the same dataset"):
        evaluate([runs[0], tmp_path / "p"], "val", write=False)


@needs_medmnist
def test_torchrun_two_processes_match_one(tmp_path):
    # no augmentation or stochastic depth (each rank draws its own), cross-rank batch norm
    overrides = TINY + ["augment.hflip=0", "augment.policy=null", "drop_path_rate=0", "epochs=2", "threads=1",
                        "data.max_samples=32"]
    one = ["batch_size=8", "--output", tmp_path / "one"]  # after TINY's batch_size: the last one counts
    two = ["batch_size=4", "--output", tmp_path / "two"]  # per process: the same global batch
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    subprocess.run([sys.executable, "-m", "medmamba", "train", *map(str, overrides + one)], env=env, check=True,
                   capture_output=True, timeout=600)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    proc = subprocess.run([*torchrun, "-m", "medmamba", "train", *map(str, overrides + two)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r1 = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    r2 = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert len(r1) == len(r2) == 2
    for a, b in zip(r1, r2):
        for key in ("train_loss", "val_loss", "val_acc", "val_auc", "val_f1"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), key
    t1 = json.loads((tmp_path / "one" / "eval_test" / "report.json").read_text())["metrics"]
    t2 = json.loads((tmp_path / "two" / "eval_test" / "report.json").read_text())["metrics"]
    assert t1["n"] == t2["n"] == 32 and t1["accuracy"] == t2["accuracy"]
    assert t1["auc"] == pytest.approx(t2["auc"], abs=1e-6)


@needs_medmnist
def test_multilabel_chestmnist_layout_trains_with_bce(tmp_path):
    # a small file in ChestMNIST's layout (14 labels per image), since the real one is not in ../shared
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 24), ("val", 12), ("test", 12)):
        arrays[f"{split}_images"] = rng.integers(0, 255, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 2, (n, 14), dtype=np.uint8)
        labels[0], labels[1] = 0, 1  # every label both present and absent
        arrays[f"{split}_labels"] = labels
    np.savez(tmp_path / "chestmnist.npz", **arrays)
    cfg = tiny_cfg("data.medmnist=chestmnist", f"data.root={tmp_path}", "epochs=1")
    result = train(cfg, tmp_path / "run", progress=False)
    m = result["test"]
    assert m["task"].startswith("multi-label") and len(m["per_class"]) == 14 and m["confusion_matrix"] is None
    assert 0.0 <= m["medmnist"]["acc"] <= 1.0 and 0.0 <= m["auc"] <= 1.0


@needs_medmnist
def test_test_split_never_reaches_model_selection(tmp_path, monkeypatch):
    """The checkpoint, its temperature and its threshold must not depend on the test split at all: two runs
    whose test images and labels differ completely keep identical weights and model cards. The test split
    that is evaluated is built only after calibration has finished (the look at the data before training
    opens its files once, to find unreadable ones and duplicates, and chooses nothing)."""
    import medmamba.data.builder as builder
    import medmamba.training.trainer as trainer_module
    arrays = dict(np.load(SHARED / "medmnist" / "breastmnist.npz"))
    rng = np.random.default_rng(0)
    arrays["test_images"] = rng.integers(0, 255, arrays["test_images"].shape, dtype=np.uint8)
    arrays["test_labels"] = 1 - arrays["test_labels"]
    (tmp_path / "data").mkdir()
    np.savez(tmp_path / "data" / "breastmnist.npz", **arrays)
    events = []
    real_init, real_calibrate = builder.MedMNIST.__init__, trainer_module.calibrate_card

    def init(self, name, split="train", *args, **kwargs):
        events.append(split)
        real_init(self, name, split, *args, **kwargs)

    def calibrate(*args, **kwargs):
        card = real_calibrate(*args, **kwargs)
        events.append("calibrated")
        return card
    monkeypatch.setattr(builder.MedMNIST, "__init__", init)
    monkeypatch.setattr(trainer_module, "calibrate_card", calibrate)
    import medmamba.data.look as look_module
    real_look = look_module.look_at

    def look(data, progress=False):
        events.append("look")
        found = real_look(data, progress)
        events.append("looked")
        return found
    monkeypatch.setattr(look_module, "look_at", look)
    runs = {}
    for name, root in (("real", SHARED / "medmnist"), ("other", tmp_path / "data")):
        events.clear()
        result = train(tiny_cfg(f"data.root={root}", "ema=0.9", "sensitivity=0.9", "bootstrap=0"),
                       tmp_path / name, progress=False)
        assert "test" not in result["trainer"].data.splits
        # before training, the look at the data opens every file once (unreadable files, duplicates): it
        # chooses nothing; the test split that is evaluated is built only after calibration
        looked = events.index("looked")
        assert events[:looked] == ["train", "val", "test", "look"]
        after = events[looked + 1:]
        assert after.index("calibrated") < after.index("test") and after.count("test") == 1
        runs[name] = result
    cards = [json.loads((tmp_path / n / "checkpoints" / "best" / "model.json").read_text()) for n in runs]
    assert cards[0] == {**cards[1], "dataset": cards[0]["dataset"]} and cards[0]["threshold"] is not None
    weights = [load_file(str(tmp_path / n / "checkpoints" / "best" / "model.safetensors")) for n in runs]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert runs["real"]["test"]["accuracy"] != runs["other"]["test"]["accuracy"]  # the test sets did differ


@needs_medmnist
def test_ema_warmup_does_not_collapse_where_the_raw_weights_do_not(tmp_path):
    """180 optimiser steps at decay 0.99 on real images: without warm-up the EMA still holds 0.99^180 = 16%
    of the random initial weights; with it, the EMA follows the trained weights and predicts both classes."""
    from medmamba.evaluation.calibration import single_class_share
    from medmamba.evaluation.prediction import predict
    # without MedMamba's augmentation policy: on 96 images in 15 epochs it keeps even the raw weights at one
    # class, and this test is about the EMA, not the augmentation
    result = train(tiny_cfg("data.max_samples=96", "batch_size=8", "epochs=15", "ema=0.99", "bootstrap=0",
                            "optimizer.lr=3e-3", "augment.policy=null"), tmp_path / "run", progress=False,
                   test_split=None)
    trainer = result["trainer"]
    assert trainer.state.global_step == 180
    shares = {}
    for name, model in trainer.candidates().items():
        _, probs = predict(model, trainer.data.splits["val"], 64)
        shares[name] = single_class_share(probs, False)
    assert shares["raw"] < 1.0 and shares["ema"] < 1.0, shares
    # the EMA is close to the trained weights, not to an average still weighted towards the initialisation
    ema, raw = trainer.ema.module.state_dict(), trainer.model.state_dict()
    drift = sum(float((ema[k] - raw[k]).norm() ** 2) for k in raw if raw[k].is_floating_point()) ** 0.5
    size = sum(float(raw[k].norm() ** 2) for k in raw if raw[k].is_floating_point()) ** 0.5
    assert drift < 0.1 * size


@needs_medmnist
def test_collapse_warning_fires_on_a_constant_predictor(tmp_path):
    def constant(trainer):
        with torch.no_grad():  # every image gets class 0, whatever it shows
            trainer.model.head.weight.zero_()
            trainer.model.head.bias.copy_(torch.tensor([10.0, -10.0]))
    result = train(tiny_cfg("epochs=3", "bootstrap=0"), tmp_path / "run", callbacks=[constant], progress=False)
    warnings = result["assessment"]["warnings"]
    assert any(w.startswith("one class for every validation image: in epochs 1-3") for w in warnings)
    assert any(w.startswith("the kept checkpoint (epoch") for w in warnings)
    assert any("predicts one class for every test image" in w for w in warnings)
    assert "**Warning:** one class" in (tmp_path / "run" / "eval_test" / "report.md").read_text()


def test_overfitting_warning_needs_rising_validation_and_falling_training_loss():
    from medmamba.training.monitor import WarningMonitor
    from medmamba.training.state import TrainState

    def watched(val_losses, one_class_epochs=()):
        shown = []
        monitor = WarningMonitor(TrainState(), n_val=10, emit=shown.append)
        for epoch, (t, v) in enumerate(zip(train_loss, val_losses), 1):
            monitor.epoch(epoch, {"single_class_share": 1.0 if epoch in one_class_epochs else 0.6, "loss": v}, t)
        assert shown == [f"warning: {w}" for w in monitor.state.warnings]
        return monitor.state.warnings
    train_loss = [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4]
    flat_then_rising = [0.50, 0.50, 0.51, 0.52, 0.53, 0.54, 0.55]
    assert watched(flat_then_rising) == [
        "overfitting: validation loss rose in each of epochs 3-7 (0.5000 -> 0.5500) while training loss fell "
        "(0.9000 -> 0.4000); consider fewer epochs, more augmentation or early_stopping"]
    # a rise of 2.5% while converged: no warning
    assert watched([0.468, 0.469, 0.471, 0.474, 0.477, 0.479, 0.480]) == []
    # one class in a single early epoch is common and is no collapse; three in a row are
    calm = [0.5, 0.49, 0.5, 0.48, 0.49, 0.47, 0.48]
    assert watched(calm, one_class_epochs={1}) == []
    assert watched(calm, one_class_epochs={2, 3, 4}) == [
        "one class for every validation image: in epochs 2-4 the evaluated weights predicted the same class for all "
        "10 validation images (a collapsed model, or an EMA still dominated by its initialisation)"]


def test_checkpoint_choice_follows_the_monitored_metric():
    from medmamba.training.monitor import CheckpointChoice
    auc, loss = CheckpointChoice("auc"), CheckpointChoice("loss")
    assert auc.better(0.8, 0.7) and not auc.better(0.7, 0.8) and auc.better(0.5, None)
    assert loss.better(0.3, 0.4) and not loss.better(0.4, 0.3)
    assert not auc.better(float("nan"), 0.1) and auc.better(0.1, float("nan"))
    assert auc.value({"medmnist": {"auc": 0.9}}) == 0.9 and loss.value({"loss": 0.2}) == 0.2
    # the EMA is kept on a tie, the raw weights only when they validate better
    assert auc.pick({"ema": {"auc": 0.8}, "raw": {"auc": 0.8}}) == "ema"
    assert auc.pick({"ema": {"auc": 0.8}, "raw": {"auc": 0.9}}) == "raw"
    assert loss.pick({"ema": {"loss": 0.2}, "raw": {"loss": 0.3}}) == "ema" and auc.pick({"raw": {"auc": 1}}) == "raw"


def test_numbers_in_overrides_and_files_read_as_people_write_them(tmp_path):
    (tmp_path / "c.yaml").write_text("optimizer: {lr: 3e-4, weight_decay: 1e-2}\n")
    cfg = load_config(tmp_path / "c.yaml", ["schedule.min_lr_ratio=1e-3"])
    assert cfg["optimizer"]["lr"] == 3e-4 and cfg["optimizer"]["weight_decay"] == 0.01
    assert cfg["schedule"]["min_lr_ratio"] == 1e-3  # YAML 1.1 would have read these as strings


@pytest.mark.parametrize("name", ["adamw", "adam", "sgd"])
def test_optimizer_is_fused_and_updates_like_torchs_per_parameter_loop(name):
    import copy
    from medmamba.models import create_model
    from medmamba.training.optim import build_optimizer
    torch.manual_seed(0)
    model = create_model("medmamba_t", num_classes=2, depths=(1, 1), dims=8)
    start, twin = copy.deepcopy(model), copy.deepcopy(model)
    cfg = load_config(None, [f"optimizer.name={name}", "optimizer.lr=0.01"])
    opt = build_optimizer(model, cfg)
    assert opt.defaults["fused"] is True
    loop = build_optimizer(twin, cfg)
    for g in loop.param_groups:  # torch's default on CPU: one parameter at a time
        g["fused"], g["foreach"] = False, False
    for _ in range(3):
        for p, q in zip(model.parameters(), twin.parameters()):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        opt.step()
        loop.step()
    for p, q, p0 in zip(model.parameters(), twin.parameters(), start.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
        assert not torch.equal(p, p0)
