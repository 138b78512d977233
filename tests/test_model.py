import copy
import re

import pytest
import torch

import medmamba
from medmamba import MedMamba, create_model, list_models
from medmamba.models.medmamba import PatchMerging2D

from .helpers import run_python


def tiny(**kw):
    cfg = dict(depths=(1, 1, 1, 1), dims=(16, 32, 64, 128), num_classes=3)
    cfg.update(kw)
    return MedMamba(**cfg)


def test_builders_and_registry():
    assert list_models() == ["medmamba_b", "medmamba_s", "medmamba_t"]
    assert list_models("*_t") == ["medmamba_t"]
    t = create_model("medmamba_t", num_classes=5, in_chans=1)
    assert t.depths == [2, 2, 4, 2] and t.dims == [96, 192, 384, 768]
    assert t.num_classes == 5 and t.in_chans == 1 and t.num_features == 768
    assert create_model("medmamba_s").depths == [2, 2, 8, 2]
    b = create_model("medmamba_b", drop_path_rate=0.3)
    assert b.dims == [128, 256, 512, 1024] and b.depths == [2, 2, 12, 2]
    assert b.layers[3].blocks[1].drop_path.drop_prob == pytest.approx(0.3)
    with pytest.raises(ValueError, match="unknown model 'medmamba_x'.*medmamba_t"):
        create_model("medmamba_x")


@pytest.mark.parametrize("size", [(28, 28), (64, 64), (224, 224), (96, 64), (100, 75), (4, 4), (30, 18)])
@pytest.mark.parametrize("chans", [1, 3])
def test_any_input_size_and_channels(size, chans):
    model = tiny(in_chans=chans).eval()
    with torch.no_grad():
        out = model(torch.randn(2, chans, *size))
    assert out.shape == (2, 3) and torch.isfinite(out).all()


def test_odd_grid_is_padded_and_even_grid_unchanged():
    merge = PatchMerging2D(4)
    x = torch.randn(1, 7, 5, 4)
    padded = torch.nn.functional.pad(x, (0, 0, 0, 1, 0, 1))
    torch.testing.assert_close(merge(x), merge(padded))
    assert merge(x).shape == (1, 4, 3, 8)
    # even grid: exactly the official 2x2 concatenation order (x0, x1, x2, x3)
    even = torch.randn(1, 4, 6, 4)
    cat = torch.cat([even[:, 0::2, 0::2], even[:, 1::2, 0::2], even[:, 0::2, 1::2], even[:, 1::2, 1::2]], -1)
    torch.testing.assert_close(merge(even), merge.reduction(merge.norm(cat)))


@pytest.mark.parametrize("bad,match", [
    (torch.randn(3, 64, 64), "expects images as a \\(batch, channels, height, width\\)"),
    (torch.randn(1, 1, 64, 64), "built for 3-channel images; got 1 channels"),
    (torch.randn(1, 3, 2, 64), "at least 4x4"),
])
def test_bad_input_is_a_clear_error(bad, match):
    with pytest.raises(ValueError, match=match):
        tiny()(bad)


def test_timm_style_api():
    model = tiny().eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (2, 128, 2, 2)  # NCHW
        pooled = model.forward_head(feats, pre_logits=True)
        assert pooled.shape == (2, 128)
        torch.testing.assert_close(model.forward_head(feats), model(x))
        torch.testing.assert_close(model.get_classifier()(pooled), model(x))
    model.reset_classifier(7)
    assert model.num_classes == 7 and model(x).shape == (2, 7)
    model.reset_classifier(0)
    assert model(x).shape == (2, 128)
    assert create_model("medmamba_t", num_classes=0).eval()(torch.randn(1, 3, 32, 32)).shape == (1, 768)
    assert [f["num_chs"] for f in model.feature_info] == [16, 32, 64, 128]
    assert [f["reduction"] for f in model.feature_info] == [4, 8, 16, 32]
    assert model.no_weight_decay() >= {"layers.0.blocks.0.self_attention.A_logs",
                                        "layers.0.blocks.0.self_attention.Ds"}
    assert copy.deepcopy(model).no_weight_decay() == model.no_weight_decay()  # a copy decays the same


def test_features_only_multiscale():
    model = create_model("medmamba_t", features_only=True, out_indices=(0, 2)).eval()
    with torch.no_grad():
        maps = model(torch.randn(1, 3, 96, 64))
    assert [tuple(m.shape) for m in maps] == [(1, 96, 24, 16), (1, 384, 6, 4)]
    assert model.feature_info.channels() == [96, 384] and model.feature_info.reduction() == [4, 16]
    assert len(model.layers) == 3 and not hasattr(model, "head")
    full = create_model("medmamba_t", features_only=True)
    with torch.no_grad():
        assert [m.shape[1] for m in full(torch.randn(1, 3, 64, 64))] == [96, 192, 384, 768]
    # the backbone maps are the classifier's own: same weights, same numbers
    clf = create_model("medmamba_t", num_classes=2).eval()
    model.load_state_dict({k: v for k, v in clf.state_dict().items() if k in model.state_dict()})
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        _, ref = clf.forward_stages(x, (0, 2))
        for a, b in zip(model(x), ref):
            torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="out_indices"):
        create_model("medmamba_t", features_only=True, out_indices=(4,))


def test_timm_create_model():
    timm = pytest.importorskip("timm")
    # registration is explicit: importing medmamba writes nothing into timm's registry (checked in a fresh
    # process: another test of this session may have registered the variants already)
    fresh = run_python("import medmamba, timm; print(timm.models.is_model('medmamba_t'))")
    assert fresh.stdout.strip() == "False"
    assert medmamba.register_with_timm() == ["medmamba_t", "medmamba_s", "medmamba_b"]
    medmamba.register_with_timm()  # a second call registers nothing twice
    model = timm.create_model("medmamba_t", num_classes=4, in_chans=1)
    assert isinstance(model, MedMamba) and model.num_classes == 4 and model.in_chans == 1
    assert "medmamba_s" in timm.list_models("medmamba*")


def test_autocast_bf16_scan_in_float32():
    model = tiny().eval()
    scan_dtypes = []
    ss2d = model.layers[0].blocks[0].self_attention
    original = ss2d.selective_scan_2d

    def recording(x):
        y = original(x)
        scan_dtypes.append((x.dtype, y.dtype))
        return y
    ss2d.selective_scan_2d = recording
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert scan_dtypes == [(torch.bfloat16, torch.float32)]  # bf16 activations in, float32 scan state
    with torch.no_grad():
        ref = model(x)
    assert torch.isfinite(out).all()
    assert (out.float() - ref).abs().max() < 0.1 * ref.abs().max() + 0.05


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_float64_model_and_gradcheck(backend):
    if backend not in medmamba.ops.available_backends():
        pytest.skip(f"{backend} backend not available")
    model = MedMamba(depths=(1, 1), dims=(8, 16), num_classes=2, drop_path_rate=0.0,
                     scan_backend=backend).double().eval()
    x = torch.randn(1, 3, 12, 8, dtype=torch.float64, requires_grad=True)
    assert model(x).dtype == torch.float64
    assert torch.autograd.gradcheck(lambda t: model(t), (x,), eps=1e-6, atol=1e-6)


def test_training_step_updates_every_parameter():
    model = tiny(drop_path_rate=0.1).train()
    out = model(torch.randn(4, 3, 64, 64))
    torch.nn.functional.cross_entropy(out, torch.tensor([0, 2, 1, 0])).backward()
    # conv biases feeding train-mode batch norm have a true gradient of 0
    missing = [n for n, p in model.named_parameters()
               if (p.grad is None or not p.grad.abs().sum() > 0) and not re.search(r"11\.[14]\.bias$", n)]
    assert not missing


def test_grad_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    model = tiny(drop_path_rate=0.0).train()
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    model(x).sum().backward()
    ref = x.grad.clone()
    x.grad = None
    model.set_grad_checkpointing(True)
    model(x).sum().backward()
    torch.testing.assert_close(x.grad, ref, rtol=1e-4, atol=1e-5)


def test_drop_path_branch_runs_only_the_kept_samples_with_the_same_values_and_gradients():
    from medmamba.models.layers import drop_path, drop_path_branch
    from medmamba.models.medmamba import SS2D
    torch.manual_seed(0)
    # float64, so that sums over a smaller batch round alike and the comparison can be tight
    ssm = SS2D(d_model=8, d_state=4, scan_backend="reference").double().train()
    x = torch.randn(8, 6, 5, 8, dtype=torch.float64)
    seen = []

    def branch(t):
        seen.append(t.shape[0])
        return ssm(t)

    def run(fn, prob, seed):
        xg = x.clone().requires_grad_(True)
        torch.manual_seed(seed)
        out = fn(branch, xg, prob)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        grads = [xg.grad] + [p.grad.clone() for p in ssm.parameters()]
        ssm.zero_grad(set_to_none=False)
        return out.detach(), grads

    for seed in range(3):
        ref, ref_grads = run(lambda f, t, p: drop_path(f(t), p, True), 0.5, seed)
        seen.clear()
        out, grads = run(lambda f, t, p: drop_path_branch(f, t, p, True), 0.5, seed)
        kept = int((ref.flatten(1).abs().sum(1) > 0).sum())
        assert 0 < kept < 8 and seen == [kept]  # only the kept samples went through the branch
        torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
        for g, r in zip(grads, ref_grads):
            torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)
    # every sample dropped: zeros, and still a (zero) gradient for every parameter, as DDP needs
    seen.clear()
    out, grads = run(lambda f, t, p: drop_path_branch(f, t, p, True), 1 - 1e-9, 0)
    assert seen == [8] and not out.any() and all(g is not None and not g.any() for g in grads)
    seen.clear()
    assert torch.equal(drop_path_branch(branch, x, 0.5, False), ssm(x)) and seen == [8]  # eval: plain branch
