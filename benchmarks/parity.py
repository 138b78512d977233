"""Print how closely medmamba reproduces the official implementation's numbers (../shared/parity).

    .venv/bin/python benchmarks/parity.py [--fixture ../shared/parity/medmamba_official_parity.pt]

Relative error ||ours - theirs|| / ||theirs|| for every output, the input gradient and the worst
parameter gradient, for each CPU selective-scan backend. tests/test_parity.py asserts <= 1e-4.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch

import medmamba

BIAS_BEFORE_TRAIN_BN = re.compile(r"conv33conv33conv11\.[14]\.bias$")


def rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).norm() / b.norm()).item()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = Path(__file__).resolve().parents[2] / "shared" / "parity" / "medmamba_official_parity.pt"
    parser.add_argument("--fixture", default=str(default))
    args = parser.parse_args()
    d = torch.load(args.fixture, weights_only=True)
    backends = [b for b in ("reference", "cpu") if b in medmamba.ops.available_backends()]
    print(f"{'quantity':<44}" + "".join(f"{b:>12}" for b in backends))
    rows = {}
    for backend in backends:
        model = medmamba.MedMamba(**d["config"], scan_backend=backend)
        model.load_state_dict(d["state_dict"], strict=True)
        model.eval()
        with torch.no_grad():
            for name, x in d["inputs"].items():
                rows.setdefault(f"eval logits {name}", []).append(rel(model(x), d["eval_logits"][name]))
            feats = model.forward_backbone(d["inputs"]["x_64x64_b2"])
            rows.setdefault("eval last-stage features (NHWC)", []).append(
                rel(feats, d["eval_features_nhwc_x_64x64_b2"]))
        model.train()
        x = d["inputs"]["x_64x64_b2"].clone().requires_grad_()
        logits = model(x)
        (logits * d["train_loss_weights"]).sum().backward()
        rows.setdefault("train logits", []).append(rel(logits, d["train_logits_x_64x64_b2"]))
        rows.setdefault("input gradient", []).append(rel(x.grad, d["train_input_grad"]))
        params = dict(model.named_parameters())
        errs = {k: rel(params[k].grad, g) for k, g in d["train_param_grads"].items()
                if not BIAS_BEFORE_TRAIN_BN.search(k)}
        worst = max(errs, key=errs.get)
        rows.setdefault(f"worst of {len(errs)} parameter gradients", []).append(errs[worst])
        zero = [params[k].grad.norm().item() for k in d["train_param_grads"] if BIAS_BEFORE_TRAIN_BN.search(k)]
        rows.setdefault(f"max |grad| of {len(zero)} biases before train BN (true 0)", []).append(max(zero))
    for name, values in rows.items():
        print(f"{name:<44}" + "".join(f"{v:>12.2e}" for v in values))


if __name__ == "__main__":
    main()
