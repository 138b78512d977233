"""Sharing models the field's way, offline: save_pretrained / from_pretrained / push_to_hub (huggingface_hub's
mixin), timm's hf-hub and local-dir layouts, and the README model card."""
import json
import shutil

import numpy as np
import pytest
import torch

import medmamba
from medmamba import MedMamba, ModelCard, create_model

TINY_ARGS = dict(num_classes=3, in_chans=1, depths=[1, 1], dims=[8, 16])


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No test here may reach a network: huggingface_hub's offline switch, and an empty cache of our own."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    import huggingface_hub.constants as constants
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))


def trained_card(model) -> ModelCard:
    return ModelCard(model="medmamba_t", model_args={"depths": [1, 1], "dims": [8, 16]}, num_classes=3, in_chans=1,
                     classes=["benign", "malignant", "normal"], img_size=32, mean=0.4, std=0.3,
                     dataset="breastmnist", epoch=7, monitor="auc", value=0.91, temperature=1.7, weights="ema")


def tiny_model():
    model = create_model("medmamba_t", **TINY_ARGS).eval()
    model.model_card = trained_card(model)
    return model


def as_cached_repo(folder, cache, repo_id="someone/medmamba-breast"):
    """The layout huggingface_hub's cache gives a downloaded model repository (snapshots/<commit>, refs/main)."""
    root = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0" * 40
    shutil.copytree(folder, root / "snapshots" / commit)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)
    return repo_id


def test_save_pretrained_then_from_pretrained_is_the_same_model_with_its_card(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path / "shared", model_card_kwargs={"results": "| accuracy | 0.8141 | 0.75 - 0.87 |"})
    assert sorted(p.name for p in (tmp_path / "shared").iterdir()) == [
        "README.md", "config.json", "model.json", "model.safetensors"]
    loaded = MedMamba.from_pretrained(tmp_path / "shared")
    x = torch.randn(2, 1, 32, 32)
    assert not loaded.training and torch.equal(loaded(x), model(x))
    assert loaded.model_card.classes == ["benign", "malignant", "normal"] and loaded.model_card.temperature == 1.7
    config = json.loads((tmp_path / "shared" / "config.json").read_text())
    assert config["architecture"] == "medmamba_t" and config["model_args"]["dims"] == [8, 16]
    assert config["pretrained_cfg"]["input_size"] == [1, 32, 32] and config["pretrained_cfg"]["mean"] == [0.4]
    assert config["pretrained_cfg"]["label_names"] == ["benign", "malignant", "normal"]
    readme = (tmp_path / "shared" / "README.md").read_text()
    assert readme.startswith("---\n") and "library_name: medmamba" in readme and "- breastmnist" in readme
    assert "| accuracy | 0.8141 | 0.75 - 0.87 |" in readme and "resized to 32x32" in readme
    assert "Temperature: 1.7000" in readme
    # a new head for fine-tuning: everything else loads
    with pytest.warns(UserWarning, match="its head has 3 classes, the model 5"):
        tuned = MedMamba.from_pretrained(tmp_path / "shared", num_classes=5)
    assert tuned.head.out_features == 5
    assert torch.equal(tuned.patch_embed.proj.weight, model.patch_embed.proj.weight)


def test_from_pretrained_repo_id_and_timm_hf_hub_load_offline_from_the_cache(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path / "shared")
    repo_id = as_cached_repo(tmp_path / "shared", tmp_path / "hub-cache")
    x = torch.randn(2, 1, 32, 32)
    assert torch.equal(MedMamba.from_pretrained(repo_id)(x), model(x))
    import timm
    medmamba.register_with_timm()
    from_timm = timm.create_model(f"hf-hub:{repo_id}", pretrained=True).eval()
    assert isinstance(from_timm, MedMamba) and torch.equal(from_timm(x), model(x))
    local = timm.create_model(f"local-dir:{tmp_path / 'shared'}", pretrained=True).eval()
    assert torch.equal(local(x), model(x))
    with pytest.raises(Exception, match="(?i)offline|cannot find|not found|LocalEntryNotFound"):
        MedMamba.from_pretrained("someone/not-in-the-cache")


def test_from_pretrained_reads_a_checkpoint_folder_by_its_model_card(tmp_path):
    model = tiny_model()
    medmamba.save_pretrained(model, model.model_card, tmp_path / "ckpt")
    loaded = MedMamba.from_pretrained(tmp_path / "ckpt")  # no config.json: the card says what it is
    x = torch.randn(1, 1, 32, 32)
    assert torch.equal(loaded(x), model(x)) and loaded.model_card.dataset == "breastmnist"


def test_push_to_hub_uploads_the_saved_folder(tmp_path, monkeypatch):
    import huggingface_hub
    uploaded = {}

    def create_repo(self, repo_id, **kwargs):
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, repo_id, folder_path, **kwargs):
        uploaded["repo"] = repo_id
        uploaded["files"] = {p.name: p.read_bytes() for p in __import__("pathlib").Path(folder_path).iterdir()}
        return "commit"
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    model = tiny_model()
    model.push_to_hub("someone/medmamba-breast")
    assert uploaded["repo"] == "someone/medmamba-breast"
    assert {"model.safetensors", "model.json", "config.json", "README.md"} <= set(uploaded["files"])
    (tmp_path / "pushed").mkdir()
    for name, content in uploaded["files"].items():
        (tmp_path / "pushed" / name).write_bytes(content)
    x = torch.randn(1, 1, 32, 32)
    assert torch.equal(MedMamba.from_pretrained(tmp_path / "pushed")(x), model(x))


def test_export_hub_cli_and_what_it_refuses(tmp_path, capsys):
    from medmamba.cli import main
    model = tiny_model()
    medmamba.save_pretrained(model, model.model_card, tmp_path / "ckpt")
    assert main(["export", str(tmp_path / "ckpt"), "--format", "hub", "--output", str(tmp_path / "hub")]) == 0
    assert "no test report" in capsys.readouterr().out
    x = torch.randn(1, 1, 32, 32)
    assert torch.equal(MedMamba.from_pretrained(tmp_path / "hub")(x), model(x))
    before = (tmp_path / "hub" / "model.safetensors").read_bytes()
    assert main(["export", str(tmp_path / "ckpt"), "--format", "hub", "--output", str(tmp_path / "hub")]) == 2
    assert "exists and is not empty; pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "hub" / "model.safetensors").read_bytes() == before
    resnet = create_model("timm/resnet18", num_classes=2, in_chans=1)
    medmamba.save_pretrained(resnet, ModelCard(model="timm/resnet18", num_classes=2, in_chans=1), tmp_path / "r")
    assert main(["export", str(tmp_path / "r"), "--format", "hub", "--output", str(tmp_path / "rh")]) == 2
    assert "timm model" in capsys.readouterr().err and not (tmp_path / "rh").exists()


def test_hub_model_card_carries_the_runs_test_intervals(tmp_path):
    from medmamba.artifacts.run_dir import RunDir
    from medmamba.cli import main
    run = RunDir(tmp_path / "run")
    model = tiny_model()
    run.checkpoint("best").mkdir(parents=True)
    medmamba.save_pretrained(model, model.model_card, run.weights("best"))
    run.config.write_text("model: medmamba_t\n")
    run.eval_dir("test").mkdir()
    report = {"title": "medmamba_t on breastmnist (test), best epoch 7 (ema weights)", "warnings": [],
              "metrics": {k: 0.5 for k in ("accuracy", "balanced_accuracy", "auc", "average_precision", "precision",
                                           "sensitivity", "specificity", "f1")} | {"per_class": {}},
              "intervals": {"auc": [0.4123, 0.6789]},
              "calibration": {"temperature": 1.7, **{w: {"ece": 0.1, "brier": 0.2, "nll": 0.3}
                                                     for w in ("before", "after")}}}
    run.report("test").write_text(json.dumps(report))
    assert main(["export", str(run.root), "--format", "hub", "--output", str(tmp_path / "hub")]) == 0
    readme = (tmp_path / "hub" / "README.md").read_text()
    assert "## Test results" in readme and "best epoch 7" in readme and "0.4123 - 0.6789" in readme
    assert np.isclose(json.loads((tmp_path / "hub" / "model.json").read_text())["temperature"], 1.7)
