"""Faithfulness: our MedMamba reproduces the official implementation's own numbers (../shared/parity)."""
import json
import re

import pytest
import torch

import medmamba
from medmamba.ops import available_backends

from .helpers import rel_err


TOL = 1e-4
BIAS_BEFORE_TRAIN_BN = re.compile(r"conv33conv33conv11\.[14]\.bias$")
CPU_BACKENDS = [b for b in ("reference", "cpu") if b in available_backends()]


@pytest.mark.parametrize("variant", ["medmamba_t", "medmamba_s", "medmamba_b"])
def test_state_dict_layout_and_parameter_count(parity_dir, variant):
    layout = json.loads((parity_dir / "official_state_dict_layout.json").read_text())[variant]
    model = medmamba.create_model(variant, num_classes=layout["config"]["num_classes"])
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert list(ours) == list(layout["state_dict_shapes"])  # same keys, same order
    assert ours == layout["state_dict_shapes"]
    assert sum(p.numel() for p in model.parameters()) == layout["num_parameters"]


def build(parity, backend):
    model = medmamba.MedMamba(**parity["config"], scan_backend=backend)
    model.load_state_dict(parity["state_dict"], strict=True)
    return model


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_eval_logits_and_features(parity, backend):
    model = build(parity, backend).eval()
    errors = {}
    with torch.no_grad():
        for name, x in parity["inputs"].items():
            errors[name] = rel_err(model(x), parity["eval_logits"][name])
        feats = model.forward_backbone(parity["inputs"]["x_64x64_b2"])
    errors["features_nhwc"] = rel_err(feats, parity["eval_features_nhwc_x_64x64_b2"])
    assert feats.shape == parity["eval_features_nhwc_x_64x64_b2"].shape
    assert all(e <= TOL for e in errors.values()), errors


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_train_mode_logits_and_every_gradient(parity, backend):
    model = build(parity, backend).train()
    x = parity["inputs"]["x_64x64_b2"].clone().requires_grad_()
    logits = model(x)
    (logits * parity["train_loss_weights"]).sum().backward()
    errors = {"train_logits": rel_err(logits, parity["train_logits_x_64x64_b2"]),
              "input_grad": rel_err(x.grad, parity["train_input_grad"])}
    params = dict(model.named_parameters())
    assert set(parity["train_param_grads"]) == set(params)
    for name, grad in parity["train_param_grads"].items():
        if BIAS_BEFORE_TRAIN_BN.search(name):
            # Batch norm on batch statistics removes any constant shift: the true gradient is 0 and both
            # sides hold float32 round-off (~1e-7, against ~1e-3 elsewhere), so relative error is noise.
            assert params[name].grad.norm() < 1e-5 and grad.norm() < 1e-5, name
            continue
        errors[name] = rel_err(params[name].grad, grad)
    assert len(errors) == 2 + len(params) - sum(bool(BIAS_BEFORE_TRAIN_BN.search(n)) for n in params)
    worst = max(errors, key=errors.get)
    assert errors[worst] <= TOL, (worst, errors[worst])
