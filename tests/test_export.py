"""ONNX export checked with onnxruntime, and the safetensors + JSON export loadable by create_model."""
import json

import numpy as np
import pytest
import torch

from medmamba import create_model, load_model
from medmamba.artifacts.checkpoint import save_pretrained
from medmamba.cli import main
from medmamba.errors import MedMambaError


onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
from medmamba.deploy.export import check_onnx, export_onnx, onnx_session  # noqa: E402
from medmamba.models.medmamba import SS2D  # noqa: E402

from .helpers import MEDMNIST, needs_medmnist


def run_onnx(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"image": x.numpy()})[0]


def test_onnx_matches_pytorch_dynamic_batch_odd_size(tmp_path):
    torch.manual_seed(0)
    model = create_model("medmamba_t", num_classes=3, in_chans=3, depths=[1, 2], dims=[8, 16]).eval()
    # 36 x 20: odd stage grids (Patch-M padding) and scan lengths that are not squares
    path, check = export_onnx(model, tmp_path / "m.onnx", (36, 20), metadata={"classes": ["a", "b", "c"]})
    assert check.max_abs_diff <= 1e-4 and check.batches == [1, 3]
    for batch in (1, 2, 5):  # sizes it was not traced with
        x = torch.randn(batch, 3, 36, 20)
        with torch.no_grad():
            expected = model(x).numpy()
        assert np.abs(run_onnx(path, x) - expected).max() <= 1e-4
    proto = onnx.load(str(path))
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch
    meta = json.loads({p.key: p.value for p in proto.metadata_props}["medmamba"])
    assert meta["classes"] == ["a", "b", "c"] and meta["onnx_scan"] == "chunked"
    assert all(n.domain == "" for n in proto.graph.node)  # plain ONNX operators only: any runtime runs it


@needs_medmnist
def test_onnx_on_real_images_and_cli(tmp_path, capsys):
    from medmamba.data import MedMNIST, build_transform
    torch.manual_seed(0)
    model = create_model("medmamba_t", num_classes=2, in_chans=1).eval()
    config = {"model": "medmamba_t", "model_args": {}, "num_classes": 2, "in_chans": 1, "classes": ["m", "b"],
              "task": "binary-class", "img_size": 32, "mean": 0.5, "std": 0.5}
    save_pretrained(model, config, tmp_path / "run")
    data = MedMNIST("breastmnist", "test", MEDMNIST)
    data.transform = build_transform(32, 1, train=False)
    real = torch.stack([data[i][0] for i in range(8)])
    with torch.no_grad():
        expected = model(real).numpy()
    out = tmp_path / "breast.onnx"
    assert main(["export", str(tmp_path / "run"), "--format", "onnx", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "max abs difference" in printed and "dynamic batch" in printed
    assert np.abs(run_onnx(out, real) - expected).max() <= 1e-4
    assert check_onnx(out, model, images=real).max_abs_diff <= 1e-4
    # an existing file is never replaced silently
    before = out.read_bytes()
    assert main(["export", str(tmp_path / "run"), "--format", "onnx", "--output", str(out)]) == 2
    assert "exists" in capsys.readouterr().err and out.read_bytes() == before


def test_fused_scan_nodes_match_pytorch_dynamic_batch_odd_size(tmp_path):
    pytest.importorskip("onnxruntime_extensions")
    from medmamba.ops import scan_onnx
    torch.manual_seed(0)
    model = create_model("medmamba_t", num_classes=3, in_chans=3, depths=[1, 2], dims=[8, 16]).eval()
    path, check = export_onnx(model, tmp_path / "m.onnx", (36, 20), fused_scan=True)
    assert check.max_abs_diff <= 1e-4
    proto = onnx.load(str(path))
    fused = [n for n in proto.graph.node if (n.domain, n.op_type) == (scan_onnx.DOMAIN, scan_onnx.OP_TYPE)]
    assert len(fused) == sum(isinstance(m, SS2D) for m in model.modules()) == 3
    assert json.loads({p.key: p.value for p in proto.metadata_props}["medmamba"])["onnx_scan"] == "fused"
    session = onnx_session(path)
    for batch in (1, 2, 5):
        x = torch.randn(batch, 3, 36, 20)
        with torch.no_grad():
            expected = model(x).numpy()
        assert np.abs(session.run(["logits"], {"image": x.numpy()})[0] - expected).max() <= 1e-4
    # the nodes are the scan: without their implementation onnxruntime cannot open the file
    with pytest.raises(Exception, match=scan_onnx.OP_TYPE):
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    # the node's outputs go back to onnxruntime as arrays, not as Python lists (0.4 s per 12 MB)
    assert scan_onnx._fast_outputs


def test_fused_scan_cli_and_where_it_is_refused(tmp_path, capsys):
    conv = torch.nn.Conv2d(3, 2, 3)
    with pytest.raises(MedMambaError, match="MedMamba models only"):
        export_onnx(conv, tmp_path / "m.onnx", 16, in_chans=3, fused_scan=True)
    assert list(tmp_path.iterdir()) == []
    model = create_model("medmamba_t", num_classes=2, in_chans=1, depths=[1], dims=[8]).eval()
    config = {"model": "medmamba_t", "model_args": {"depths": [1], "dims": [8]}, "num_classes": 2, "in_chans": 1,
              "classes": ["a", "b"], "task": "binary-class", "img_size": 16, "mean": 0.5, "std": 0.5}
    save_pretrained(model, config, tmp_path / "run")
    out = tmp_path / "w.safetensors"
    assert main(["export", str(tmp_path / "run"), "--format", "safetensors", "--fused-scan", "--output", str(out)]) == 2
    assert "--fused-scan applies to --format onnx" in capsys.readouterr().err and not out.exists()
    onnx_out = tmp_path / "fused.onnx"
    assert main(["export", str(tmp_path / "run"), "--fused-scan", "--output", str(onnx_out)]) == 0
    assert "onnx_session" in capsys.readouterr().out and onnx_out.exists()


def test_failed_check_leaves_nothing(tmp_path):
    model = create_model("medmamba_t", num_classes=2, in_chans=1, depths=[1], dims=[8]).eval()
    with pytest.raises(MedMambaError, match="differs from PyTorch"):
        export_onnx(model, tmp_path / "m.onnx", 16, tolerance=-1.0)
    assert list(tmp_path.iterdir()) == []


def test_safetensors_export_cli_round_trip(tmp_path, capsys):
    torch.manual_seed(0)
    model = create_model("medmamba_s", num_classes=4, in_chans=3, depths=[1, 1], dims=[8, 16]).eval()
    config = {"model": "medmamba_s", "model_args": {"depths": [1, 1], "dims": [8, 16]}, "num_classes": 4,
              "in_chans": 3, "classes": list("wxyz"), "task": "multi-class", "img_size": 32, "mean": 0.5, "std": 0.5}
    save_pretrained(model, config, tmp_path / "run")
    target = tmp_path / "deploy" / "lesions.safetensors"
    assert main(["export", str(tmp_path / "run"), "--format", "safetensors", "--output", str(target)]) == 0
    assert "create_model('medmamba_s'" in capsys.readouterr().out
    assert json.loads((tmp_path / "deploy" / "lesions.json").read_text())["classes"] == list("wxyz")
    x = torch.randn(2, 3, 32, 32)
    loaded = create_model("medmamba_s", pretrained=target).eval()
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    torch.testing.assert_close(load_model(target)(x), model(x), rtol=0, atol=0)
