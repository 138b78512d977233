import pytest
import torch
from safetensors.torch import save_file

from medmamba import CheckpointError, MedMamba, create_model, load_checkpoint
from medmamba.models import checkpoint_filter_fn


def tiny(**kw):
    cfg = dict(depths=(1, 1), dims=(8, 16), num_classes=3)
    cfg.update(kw)
    return MedMamba(**cfg).eval()


def same_weights(a, b, skip=()):
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa if not k.startswith(skip))


@pytest.mark.parametrize("layout", ["raw", "model", "state_dict", "module_prefix", "safetensors"])
def test_official_layouts_load(tmp_path, layout):
    src = tiny()
    sd = src.state_dict()
    if layout == "safetensors":
        path = tmp_path / "w.safetensors"
        save_file(sd, str(path))
    else:
        obj = {"raw": sd, "model": {"model": sd, "epoch": 3}, "state_dict": {"state_dict": sd},
               "module_prefix": {f"module.{k}": v for k, v in sd.items()}}[layout]
        path = tmp_path / "w.pth"
        torch.save(obj, path)
    dst = load_checkpoint(tiny(), path)
    assert same_weights(src, dst)
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(src(x), dst(x))


def test_create_model_pretrained_path(tmp_path):
    src = create_model("medmamba_t", num_classes=6)
    torch.save(src.state_dict(), tmp_path / "t.pth")
    dst = create_model("medmamba_t", pretrained=tmp_path / "t.pth", num_classes=6)
    assert same_weights(src, dst)
    with pytest.raises(ValueError, match="needs a path"):
        create_model("medmamba_t", pretrained=True)


def test_other_class_count_loads_all_but_head(tmp_path):
    src = tiny(num_classes=6)
    torch.save(src.state_dict(), tmp_path / "w.pth")
    dst = tiny(num_classes=2)
    head_before = dst.head.weight.clone()
    with pytest.warns(UserWarning, match="6 classes, the model 2"):
        load_checkpoint(dst, tmp_path / "w.pth")
    assert same_weights(src, dst, skip=("head.",))
    assert torch.equal(dst.head.weight, head_before)


def test_rgb_checkpoint_into_grey_model_sums_stem(tmp_path):
    src = tiny()
    torch.save(src.state_dict(), tmp_path / "w.pth")
    dst = load_checkpoint(tiny(in_chans=1), tmp_path / "w.pth", filter_fn=checkpoint_filter_fn)
    torch.testing.assert_close(dst.patch_embed.proj.weight, src.patch_embed.proj.weight.sum(1, keepdim=True))
    grey = torch.rand(2, 1, 32, 32)
    torch.testing.assert_close(dst(grey), src(grey.expand(-1, 3, -1, -1)), rtol=1e-4, atol=1e-5)


def test_mismatches_are_one_clear_error(tmp_path):
    sd = tiny().state_dict()
    sd["extra.weight"] = torch.zeros(1)
    del sd["layers.0.blocks.0.ln_1.weight"]
    sd["layers.0.downsample.reduction.weight"] = torch.zeros(5, 5)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(tiny(), tmp_path / "bad.pth")
    msg = str(e.value)
    assert "missing keys: layers.0.blocks.0.ln_1.weight" in msg
    assert "unexpected keys: extra.weight" in msg
    assert "wrong shapes: layers.0.downsample.reduction.weight (5, 5) vs model (16, 32)" in msg


class NotAWeight:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_never_unpickles_arbitrary_objects(tmp_path, capsys):
    torch.save({"model": NotAWeight()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="never arbitrary pickled objects"):
        load_checkpoint(tiny(), tmp_path / "evil.pth")
    assert "this must never run" not in capsys.readouterr().out


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04truncated"])
def test_corrupt_files(tmp_path, content):
    for name in ("w.pth", "w.safetensors"):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError, match=str(tmp_path / name).replace(".", "\\.")):
            load_checkpoint(tiny(), tmp_path / name)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tiny(), tmp_path / "absent.pth")


def test_features_only_loads_classifier_checkpoint(tmp_path):
    src = create_model("medmamba_t", num_classes=6)
    torch.save(src.state_dict(), tmp_path / "t.pth")
    feats = create_model("medmamba_t", features_only=True, out_indices=(1,), pretrained=tmp_path / "t.pth")
    assert same_weights(feats, src)


def test_refuse_existing_names_what_is_there_and_writes_nothing(tmp_path):
    from medmamba.errors import MedMambaError
    from medmamba.files import refuse_existing
    refuse_existing(tmp_path / "absent", tmp_path)  # an empty folder and a missing path are free
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "x").write_text("kept")
    (tmp_path / "f.csv").write_text("kept")
    with pytest.raises(MedMambaError, match=r"run exists and is not empty and .*f\.csv exists; pass --overwrite to "
                                            r"replace them or --resume to continue it$"):
        refuse_existing(tmp_path / "run", tmp_path / "f.csv", alternative="--resume to continue it")
    with pytest.raises(CheckpointError, match=r"f\.csv exists; pass --overwrite to replace it$"):
        refuse_existing(tmp_path / "f.csv", error=CheckpointError)
    refuse_existing(tmp_path / "run", tmp_path / "f.csv", overwrite=True)
    assert (tmp_path / "run" / "x").read_text() == (tmp_path / "f.csv").read_text() == "kept"
