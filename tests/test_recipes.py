"""Recipe options of issue 28. Distillation: the teacher's term against hand-computed values, the teacher
seeing the student's augmented batch, a run distilled end to end, every teacher that does not fit refused in
one line before anything is written. CutMix and torchvision's augmentation policies."""
import math

import numpy as np
import pytest
import torch

from medmamba.training.distill import Teacher, distillation_loss
from medmamba.training.loss import TrainingLoss

from .helpers import TINY, benchmark_script, needs_medmnist, run_python, tiny_cfg


def test_soft_and_hard_terms_by_hand():
    student = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
    teacher_logits = np.array([[1.0, 2.0, 0.0], [0.0, 0.0, 3.0]])
    T = 2.0
    q = np.exp(teacher_logits / T) / np.exp(teacher_logits / T).sum(1, keepdims=True)
    p = np.exp(student.numpy() / T) / np.exp(student.numpy() / T).sum(1, keepdims=True)
    kl = (q * (np.log(q) - np.log(p))).sum(1).mean() * T * T          # Hinton: KL(q || p) T^2, batch mean
    got = distillation_loss(student, torch.tensor(q, dtype=torch.float32), "soft", T)
    assert math.isclose(float(got), kl, rel_tol=1e-5)
    # hard (DeiT): cross-entropy to the teacher's argmax, at temperature 1
    s = student.numpy()
    log_p = s - np.log(np.exp(s).sum(1, keepdims=True))
    ce = -(log_p[0, 1] + log_p[1, 2]) / 2
    assert math.isclose(float(distillation_loss(student, torch.tensor(q), "hard", T)), ce, rel_tol=1e-5)
    # multi-label soft: binary cross-entropy per class against the tempered sigmoids, times T^2
    target = 1 / (1 + np.exp(-teacher_logits / T))
    z = s / T
    bce = np.mean(np.maximum(z, 0) - z * target + np.log1p(np.exp(-np.abs(z)))) * T * T
    got = distillation_loss(student, torch.tensor(target, dtype=torch.float32), "soft", T, multi_label=True)
    assert math.isclose(float(got), bce, rel_tol=1e-5)


def test_training_loss_mixes_labels_and_teacher_on_the_same_blended_batch():
    torch.manual_seed(0)
    student, teacher_model = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    seen = []
    teacher_model.register_forward_hook(lambda m, inp, out: seen.append(inp[0].clone()))
    teacher = Teacher([teacher_model], kind="soft", temperature=3.0, alpha=0.25)
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    loss = TrainingLoss(False, mixup=0.4, teacher=teacher)
    torch.manual_seed(1)
    got = loss(student, x, y)
    torch.manual_seed(1)  # the same blend, by hand
    lam = float(torch.distributions.Beta(0.4, 0.4).sample())
    perm = torch.randperm(6)
    blend = lam * x + (1 - lam) * x[perm]
    assert torch.equal(seen[0], blend)  # the teacher saw the student's (blended) images
    logits = student(blend)
    labels = lam * torch.nn.functional.cross_entropy(logits, y) + (1 - lam) * torch.nn.functional.cross_entropy(
        logits, y[perm])
    q = torch.softmax(teacher_model(blend) / 3.0, 1)
    kd = 9.0 * torch.nn.functional.kl_div(torch.log_softmax(logits / 3.0, 1), q, reduction="batchmean")
    assert torch.allclose(got, 0.75 * labels + 0.25 * kd, rtol=1e-6)
    got.backward()
    assert all(p.grad is None for p in teacher_model.parameters())  # frozen


@needs_medmnist
def test_distilled_run_records_its_teacher_and_a_mismatched_teacher_is_refused(tmp_path):
    from medmamba.artifacts.card import read_card
    from medmamba.training.trainer import train
    teacher = tmp_path / "teacher"
    train(tiny_cfg("epochs=1"), teacher, progress=False, test_split=None)
    student = tmp_path / "student"
    train(tiny_cfg("epochs=1", f"distill.teacher={teacher}", "distill.kind=hard", "seed=1"), student,
          progress=False, test_split=None)
    card = read_card(student / "checkpoints" / "best" / "model.safetensors")
    assert card.teacher == [str(teacher)]

    def cli(*args):
        return run_python("import sys; from medmamba.cli import main; sys.exit(main(sys.argv[1:]))", *args,
                          check=False)
    cases = [(["data.medmnist=pneumoniamnist"], "was trained on other data"),  # another data file
             (["data.max_samples=30"], "was trained on other data"),         # another train split
             (["data.img_size=32"], "does not take this run's input"),       # another input size
             ([], "not a finished training run folder")]                     # not a run
    for i, (extra, message) in enumerate(cases):
        target = tmp_path / f"refused{i}"
        which = teacher if extra else tmp_path
        proc = cli("train", "--output", target, *TINY, "epochs=1", f"distill.teacher=[{which}]", *extra)
        lines = [line for line in proc.stderr.strip().splitlines() if line]
        assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr[-2000:]
        assert not target.exists()


@pytest.mark.parametrize("value,ok", [("null", True), ("runs/a", True), ("[runs/a, runs/b]", True), ("[]", False),
                                      ("3", False)])
def test_distill_teacher_key_allows_a_folder_or_a_list(value, ok):
    from medmamba.errors import ConfigError
    if ok:
        tiny_cfg(f"distill.teacher={value}")
    else:
        with pytest.raises(ConfigError, match="distill.teacher"):
            tiny_cfg(f"distill.teacher={value}")


def test_cutmix_pastes_a_box_and_weighs_labels_by_its_area():
    from medmamba.training.loss import paste_box
    torch.manual_seed(3)
    x, other = torch.zeros(2, 1, 10, 10), torch.ones(2, 1, 10, 10)
    out, lam = paste_box(x, other, 0.64)
    pasted = out[0, 0]
    assert torch.equal(out[0], out[1]) and set(pasted.unique().tolist()) <= {0.0, 1.0}
    assert math.isclose(lam, 1 - float(pasted.double().mean()))         # lam is the share left of x
    rows, cols = pasted.sum(1).nonzero(), pasted.sum(0).nonzero()
    assert float(pasted.sum()) == len(rows) * len(cols)                 # one box, filled
    assert len(rows) <= 6 and len(cols) <= 6                            # sqrt(1 - 0.64) of each side, at most
    student = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(100, 3))
    images, y = torch.randn(4, 1, 10, 10), torch.tensor([0, 1, 2, 1])
    torch.manual_seed(5)
    got = TrainingLoss(False, cutmix=1.0)(student, images, y)
    torch.manual_seed(5)  # by hand: lam ~ Beta(1, 1), a permutation, the box
    lam = float(torch.distributions.Beta(1.0, 1.0).sample())
    perm = torch.randperm(4)
    blend, lam = paste_box(images, images[perm], lam)
    logits = student(blend)
    ce = torch.nn.functional.cross_entropy
    assert torch.allclose(got, lam * ce(logits, y) + (1 - lam) * ce(logits, y[perm]))


def test_augmentation_policy_runs_torchvisions_and_only_in_training():
    from torchvision.transforms import v2

    from medmamba.data.transforms import AugmentConfig, build_transform
    for policy, cls in (("trivialaugment", v2.TrivialAugmentWide), ("randaugment", v2.RandAugment)):
        train = build_transform(28, 1, True, AugmentConfig(hflip=0.0, policy=policy))
        evaluation = build_transform(28, 1, False, AugmentConfig(policy=policy))
        assert any(isinstance(t, cls) for t in train.transforms)
        assert not any(isinstance(t, cls) for t in evaluation.transforms)
        image = (torch.rand(1, 28, 28) * 255).to(torch.uint8)
        torch.manual_seed(0)
        outs = [train(image) for _ in range(20)]
        assert any(not torch.equal(o, evaluation(image)) for o in outs)  # the policy changed some images
    from medmamba.errors import ConfigError
    with pytest.raises(ConfigError, match="augment.policy"):
        tiny_cfg("augment.policy=autoaugment")


def test_augmentation_policy_auto_is_the_model_familys_own():
    from medmamba.config import load_config, with_family_defaults
    from medmamba.data.builder import config_transform
    from medmamba.errors import ConfigError

    def policy(*overrides):
        return load_config(None, list(overrides))["augment"]["policy"]
    unresolved = load_config(None, family_defaults=False)
    assert unresolved["augment"]["policy"] == "auto"
    # MedMamba's was chosen on cross-validation (BENCHMARKS); timm models keep the package's (none)
    assert policy("model=medmamba_t") == policy("model=medmamba_b") == "trivialaugment"
    assert policy("model=timm/resnet18") is None
    assert with_family_defaults(unresolved) == load_config(None)
    # a policy given by name, or none, is never replaced
    assert policy("model=medmamba_t", "augment.policy=null") is None
    assert policy("model=timm/resnet18", "augment.policy=randaugment") == "randaugment"
    # an unresolved "auto" cannot reach the training transform: the data layer knows no model families
    with pytest.raises(ConfigError, match="with_family_defaults"):
        config_transform(unresolved, 1, train=True)
    config_transform(unresolved, 1, train=False)  # evaluation has no augmentation to resolve


@needs_medmnist
def test_training_run_records_the_policy_it_resolved(tmp_path):
    import yaml

    from medmamba.artifacts.run_dir import RunDir
    from medmamba.config import load_config
    from medmamba.training.trainer import train
    # a configuration still at "auto" (built by hand, not by load_config): training resolves it first
    cfg = load_config(None, TINY + ["epochs=1", "bootstrap=0"], family_defaults=False)
    train(cfg, tmp_path / "run", progress=False)
    assert yaml.safe_load(RunDir(tmp_path / "run").config.read_text())["augment"]["policy"] == "trivialaugment"


@needs_medmnist
def test_swa_keeps_the_average_of_the_last_epochs_with_batchnorm_recomputed(tmp_path):
    from safetensors.torch import load_file

    from medmamba.artifacts.card import read_card
    from medmamba.training.trainer import train
    ends = []

    def at_epoch_end(trainer):
        if trainer.state.step_in_epoch == trainer.steps_per_epoch:
            ends.append({k: v.detach().clone() for k, v in trainer.model.state_dict().items()})
    train(tiny_cfg("epochs=3", "swa_epochs=2"), tmp_path / "swa", progress=False, test_split=None,
          callbacks=[at_epoch_end])
    weights = tmp_path / "swa" / "checkpoints" / "best" / "model.safetensors"
    card, kept = read_card(weights), load_file(str(weights))
    assert card.weights == "swa" and card.epoch == 3 and len(ends) == 3
    params = [k for k in kept if "running_" not in k and "num_batches" not in k]
    assert all(torch.allclose(kept[k], (ends[1][k] + ends[2][k]) / 2, atol=1e-6) for k in params)
    stats = [k for k in kept if k.endswith("running_mean")]
    assert stats and not all(torch.allclose(kept[k], ends[2][k]) for k in stats)  # recomputed, not the last epoch's


@pytest.mark.parametrize("override,allowed", [
    ("distill.alpha=1.5", "a number >= 0 and <= 1"), ("distill.temperature=0", "a number > 0"),
    ("distill.kind=medium", "one of soft, hard"), ("cutmix=-1", "a number >= 0"),
    ("swa_epochs=0", "a whole number >= 1 or null"),
    ("augment.policy=autoaugment", "one of auto, trivialaugment, randaugment"),
    ("distill.teacher=[]", "null, a run folder, or a list of run folders")])
def test_new_recipe_keys_name_what_they_allow(override, allowed):
    from medmamba.errors import ConfigError
    with pytest.raises(ConfigError) as refused:
        tiny_cfg(override)
    assert override.split("=")[0] in str(refused.value) and allowed in str(refused.value)


def test_swa_window_longer_than_training_is_refused_before_anything_is_written(tmp_path):
    from medmamba.errors import MedMambaError
    from medmamba.training.trainer import Trainer
    with pytest.raises(MedMambaError, match="swa_epochs=5 is more than epochs=3"):
        Trainer(tiny_cfg("swa_epochs=5"), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


@needs_medmnist
def test_pretraining_loss_falls_resumes_and_its_weights_load_into_a_classifier(tmp_path):
    import json

    from safetensors.torch import load_file

    from medmamba.training.pretrain import pretrain
    from medmamba.training.trainer import Trainer
    cfg = tiny_cfg("epochs=6", "data.img_size=32", "pretrain.mask_patch=8", "optimizer.lr=3e-3",
                   "schedule.warmup_epochs=0")
    out = tmp_path / "pre"
    pretrain(tiny_cfg("epochs=2", "data.img_size=32", "pretrain.mask_patch=8", "optimizer.lr=3e-3",
                      "schedule.warmup_epochs=0"), out, progress=False)
    summary = pretrain(cfg, out, resume=True, progress=False)  # epochs 3-6 continue the first two
    losses = summary["loss"]
    assert len(losses) == 6 and losses[-1] < 0.85 * losses[0], losses
    assert json.loads((out / "pretrain.json").read_text())["keys_new_when_fine_tuned"] == ["head.bias", "head.weight"]
    assert (out / "loss_curve.png").stat().st_size > 0
    backbone = load_file(str(out / "checkpoints" / "best" / "model.safetensors"))
    tuned = Trainer(tiny_cfg(f"pretrained={out}", "data.img_size=32"), tmp_path / "tuned", progress=False)
    state = tuned.model.state_dict()
    assert set(state) - set(backbone) == {"head.weight", "head.bias"}
    assert all(torch.equal(state[k], backbone[k]) for k in backbone)


def test_pretraining_reads_unlabeled_images_at_any_depth_and_masks_exactly(tmp_path):
    from PIL import Image

    from medmamba.training.pretrain import pretraining_images, random_masks
    for i, where in enumerate(["a", "a/b", "a/b/c", "."]):
        (tmp_path / where).mkdir(parents=True, exist_ok=True)
        Image.fromarray((np.random.rand(20, 24) * 255).astype(np.uint8)).save(tmp_path / where / f"{i}.png")
    images, channels, source = pretraining_images(tiny_cfg(f"data.folder={tmp_path}", "data.medmnist=null"))
    assert len(images) == 4 and channels == 3 and images[0].shape == (3, 28, 28) and "4 images" in source
    masks = random_masks(5, 4, 0.6, torch.Generator().manual_seed(0))
    assert masks.shape == (5, 4, 4) and masks.sum((1, 2)).tolist() == [10] * 5  # round(0.6 * 16) each
    assert not torch.equal(masks[0], masks[1])


@needs_medmnist
def test_pretrain_command_leaves_the_fine_tuning_policy_out(tmp_path):
    import yaml

    from medmamba.cli import main
    assert main(["pretrain", "--output", str(tmp_path / "pre"), *TINY, "epochs=1", "data.img_size=32",
                 "pretrain.mask_patch=8"]) == 0
    # SimMIM was measured without a policy; MedMamba's "auto" (trivialaugment) is a fine-tuning choice
    assert yaml.safe_load((tmp_path / "pre" / "config.yaml").read_text())["augment"]["policy"] is None


def test_pretraining_refuses_timm_models():
    from medmamba.errors import ModelError
    from medmamba.models import create_model
    from medmamba.training.pretrain import MaskedImageModel
    with pytest.raises(ModelError, match="timm models are not supported"):
        MaskedImageModel(create_model("timm/resnet18", num_classes=2, in_chans=1), 16)


def test_a_cross_validation_teacher_gives_each_fold_its_own_run(tmp_path):
    from medmamba.training.distill import fold_teachers
    for fold in range(2):
        (tmp_path / "cv" / f"fold{fold}").mkdir(parents=True)
        (tmp_path / "cv" / f"fold{fold}" / "config.yaml").write_text("epochs: 1\n")
    cfg = tiny_cfg(f"distill.teacher=[{tmp_path / 'cv'}, {tmp_path / 'single'}]")
    assert fold_teachers(cfg, 1) == [str(tmp_path / "cv" / "fold1"), str(tmp_path / "single")]
    assert fold_teachers(tiny_cfg(), 0) is None


def _cv_result(dataset, folds):
    keys = ("accuracy", "balanced_accuracy", "auc", "loss")
    return {"model": "medmamba_t", "dataset": dataset,
            "folds": [{"fold": i, "n_val": 100, **f} for i, f in enumerate(folds)],
            "summary": {k: {"mean": float(np.mean([f[k] for f in folds])),
                            "sd": float(np.std([f[k] for f in folds]))} for k in keys}}


def test_cv_table_pairs_accuracy_auc_and_loss_fold_by_fold_and_refuses_other_folds(tmp_path, capsys):
    import json
    rng = np.random.default_rng(0)
    draw = lambda: [dict(zip(("accuracy", "balanced_accuracy", "auc", "loss"), rng.uniform(0.05, 1, 4)))
                    for _ in range(3)]
    base, cand = draw(), draw()
    (tmp_path / "base.json").write_text(json.dumps(_cv_result("pneumoniamnist", base)))
    (tmp_path / "cand.json").write_text(json.dumps(_cv_result("pneumoniamnist", cand)))
    table = benchmark_script("cv_table")
    table.main([str(tmp_path / "base.json"), str(tmp_path / "cand.json"), "--baseline", "base"])
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| cand "))
    cells = row.strip("| ").split(" | ")[-3:]
    assert table.PAIRED == ("accuracy", "auc", "loss")
    for cell, key in zip(cells, table.PAIRED):
        diff = [c[key] - b[key] for c, b in zip(cand, base)]
        mean, per_fold = cell.split(" (")
        assert float(mean) == pytest.approx(np.mean(diff), abs=1e-4)
        assert [float(d) for d in per_fold.rstrip(")").split(", ")] == pytest.approx(diff, abs=1e-3)
    # a result of another data set, or of other folds, cannot be paired with the baseline
    (tmp_path / "other.json").write_text(json.dumps(_cv_result("breastmnist", draw())))
    fewer = _cv_result("pneumoniamnist", draw()[:2])
    (tmp_path / "fewer.json").write_text(json.dumps(fewer))
    for name, why in (("other", "breastmnist"), ("fewer", "folds")):
        with pytest.raises(SystemExit) as exit_:
            table.main([str(tmp_path / "base.json"), str(tmp_path / f"{name}.json"), "--baseline", "base"])
        assert exit_.value.code == 2
        assert why in capsys.readouterr().err
