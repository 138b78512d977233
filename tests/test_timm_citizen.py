"""MedMamba as timm expects its models to be: pretrained configs, head_hidden_size, global_pool, FeatureInfo,
forward_intermediates, FX tracing. The same checks as pytorch-image-models' tests/test_models.py makes, on a
small variant (the full run of that file is in BENCHMARKS.md)."""
import math

import pytest
import torch

import medmamba
from medmamba import create_model

timm = pytest.importorskip("timm")
SMALL = dict(depths=[1, 1, 1, 1], dims=[8, 16, 32, 64])


@pytest.fixture(scope="module", autouse=True)
def registered():
    medmamba.register_with_timm()


@pytest.mark.parametrize("name", ["medmamba_t", "medmamba_s", "medmamba_b"])
def test_each_variant_has_its_pretrained_config_in_timm(name):
    from timm.models import get_pretrained_cfg
    cfg = get_pretrained_cfg(name)
    assert cfg.architecture == name and cfg.input_size == (3, 224, 224) and cfg.pool_size == (7, 7)
    assert cfg.first_conv == "patch_embed.proj" and cfg.classifier == "head" and not cfg.has_weights
    assert name in timm.list_models(name_matches_cfg=True)


def test_configs_head_and_pooling_as_timm_checks_them():
    model = timm.create_model("medmamba_t", **SMALL).eval()
    cfg = model.default_cfg
    assert model.pretrained_cfg is cfg and cfg["architecture"] == "medmamba_t"
    assert model.head_hidden_size == model.num_features == 64
    state = model.state_dict()
    assert cfg["classifier"] + ".weight" in state and cfg["first_conv"] + ".weight" in state
    x = torch.randn(1, 3, 224, 224)
    feats = model.forward_features(x)
    assert feats.shape == (1, 64, *cfg["pool_size"])
    pre = model.forward_head(feats, pre_logits=True)
    assert pre.shape == (1, model.head_hidden_size)
    model.reset_classifier(0)
    assert torch.equal(model(x), pre)
    model.reset_classifier(0, "")
    assert model(x).shape == (1, 64, 7, 7)
    unpooled = timm.create_model("medmamba_t", num_classes=0, global_pool="", **SMALL).eval()
    assert unpooled(x).shape == (1, 64, 7, 7)
    with pytest.raises(ValueError, match="global_pool='max'"):
        model.reset_classifier(0, "max")


def test_features_only_gives_timms_feature_info():
    model = timm.create_model("medmamba_t", features_only=True, **SMALL).eval()
    assert isinstance(model.feature_info, timm.models.FeatureInfo)
    assert model.feature_info.channels() == [8, 16, 32, 64] and model.feature_info.reduction() == [4, 8, 16, 32]
    outs = model(torch.randn(1, 3, 96, 96))
    assert [o.shape[1] for o in outs] == model.feature_info.channels()
    assert [o.shape[-1] for o in outs] == [math.ceil(96 / r) for r in model.feature_info.reduction()]


def test_forward_intermediates_as_timms_test_checks_it():
    model = create_model("medmamba_t", **SMALL).eval()
    info = timm.models.FeatureInfo(model.feature_info, len(model.feature_info))
    x = torch.randn(1, 3, 96, 96)
    final, maps = model.forward_intermediates(x)
    assert [m.shape[1] for m in maps] == info.channels()
    assert [m.shape[-1] for m in maps] == [math.ceil(96 / r) for r in info.reduction()]
    assert torch.allclose(final, model.forward_features(x))
    last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
    assert [m.shape[1] for m in last_two] == [32, 64] and torch.equal(last_two[-1], maps[-1])
    kept = model.prune_intermediate_layers(indices=[1])
    assert kept == [1] and len(model.layers) == 2 and model.layers[-1].downsample is None
    assert torch.equal(model.forward_intermediates(x, indices=[1], intermediates_only=True)[0], maps[1])


def test_symbolic_trace_and_gradients_through_it():
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names
    from timm.models import get_notrace_functions, get_notrace_modules
    kwargs = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions())
    model = create_model("medmamba_t", num_classes=4, **SMALL).eval()
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=kwargs)
    traced = create_feature_extractor(model, return_nodes=[eval_nodes[-1]], tracer_kwargs=kwargs)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(next(iter(traced(x).values())), model(x))
    with pytest.raises(ValueError, match="built for 3-channel images"):  # the input check survives tracing
        traced(torch.randn(1, 1, 64, 64))
    model.train()
    traced = create_feature_extractor(model, return_nodes=[train_nodes[-1]], tracer_kwargs=kwargs)
    next(iter(traced(x).values())).mean().backward()
    assert all(p.grad is not None for p in model.parameters())
