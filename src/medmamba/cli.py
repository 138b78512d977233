"""Command line: a thin layer over the library API (``python -m medmamba`` or ``medmamba``)."""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

DATA_ENV = "MEDMAMBA_DATA"


def _info(args) -> int:
    import torch

    import medmamba
    print(f"medmamba {medmamba.__version__}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    print("models:", ", ".join(medmamba.list_models()))
    print("selective-scan backends available:", ", ".join(medmamba.ops.available_backends()))
    print("auto backend on cpu:", medmamba.ops.resolve_backend("auto", torch.device("cpu")).name)
    return 0


def _demo(args) -> int:
    """Forward pass of MedMamba on real MedMNIST images: shapes, backend and throughput."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    import medmamba
    root = args.data_root or os.environ.get(DATA_ENV)
    if not root:
        print(f"error: give --data-root or set {DATA_ENV} to the folder holding {args.dataset}.npz", file=sys.stderr)
        return 2
    path = Path(root) / f"{args.dataset}.npz"
    try:
        with np.load(path, allow_pickle=False) as data:
            images, labels = data["test_images"][: args.batch_size], data["test_labels"][: args.batch_size]
    except (OSError, KeyError, ValueError) as e:
        print(f"error: cannot read test images from {path}: {e}", file=sys.stderr)
        return 2
    x = torch.from_numpy(images).float().div(255).unsqueeze(1)
    x = F.interpolate(x, size=(args.img_size, args.img_size), mode="bilinear", align_corners=False)
    x = (x - 0.5) / 0.5
    model = medmamba.create_model(args.model, num_classes=2, in_chans=1, scan_backend=args.backend).eval()
    backend = medmamba.ops.resolve_backend(args.backend, x.device).name
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{args.model}: {n_params / 1e6:.2f} M parameters, scan backend '{backend}', "
          f"{torch.get_num_threads()} threads")
    print(f"{len(x)} {args.dataset} test images, {tuple(images.shape[1:])} -> {tuple(x.shape[1:])}")
    with torch.no_grad():
        model(x[:1])  # JIT warm-up, not timed
        start = time.perf_counter()
        logits = model(x)
        elapsed = time.perf_counter() - start
        stages = model.forward_stages(x[:1], out_indices=range(model.num_layers))[1]
    print("stage feature maps:", ", ".join(str(tuple(m.shape[1:])) for m in stages))
    probs = logits.softmax(-1)
    print(f"logits {tuple(logits.shape)}, finite: {bool(torch.isfinite(logits).all())}; "
          f"{len(x) / elapsed:.1f} images/s")
    print("untrained model (random weights): class-1 probability of the first images:",
          " ".join(f"{p:.3f}" for p in probs[:8, 1].tolist()), "| labels:", labels[:8, 0].tolist())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medmamba", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, models and selective-scan backends").set_defaults(func=_info)
    demo = sub.add_parser("demo", help="forward pass of MedMamba on real MedMNIST test images")
    demo.add_argument("--data-root", help=f"folder holding the MedMNIST .npz files (default: ${DATA_ENV})")
    demo.add_argument("--dataset", default="breastmnist")
    demo.add_argument("--model", default="medmamba_t")
    demo.add_argument("--img-size", type=int, default=224)
    demo.add_argument("--batch-size", type=int, default=8)
    demo.add_argument("--backend", default="auto", help="selective-scan backend (see `medmamba info`)")
    demo.set_defaults(func=_demo)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
