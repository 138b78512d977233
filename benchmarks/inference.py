"""Using a trained MedMamba-T on CPU: `medmamba predict` throughput and ONNX Runtime vs PyTorch.

    .venv/bin/python benchmarks/inference.py --data-root ../shared/medmnist [--img-size 64] [--images 256]

1. Prediction from files, as `medmamba predict` runs it (PNG decoding, resize, model, CSV rows): the
   BreastMNIST test images written as PNG, with the cpu scan backend and with the reference scan.
2. The same model exported to ONNX in both forms of the scan (plain operators, the default; fused nodes,
   `--fused-scan`) and run by onnxruntime, beside PyTorch with the cpu backend, on one batch of
   preprocessed real images: images/s and the largest logit difference against PyTorch on them.
Untrained weights: speed does not depend on them. Wall times include nothing of JIT compilation.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import medmamba
from medmamba.artifacts.checkpoint import save_pretrained
from medmamba.data import MedMNIST
from medmamba.deploy.export import export_onnx, onnx_session
from medmamba.deploy.inference import Predictor
from timing import median_seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=os.environ.get("MEDMAMBA_DATA"))
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--images", type=int, default=156, help="test images to predict (BreastMNIST has 156)")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, MedMamba-T at {args.img_size} px")

    data = MedMNIST("breastmnist", "test", args.data_root)
    torch.manual_seed(0)
    model = medmamba.create_model("medmamba_t", num_classes=2, in_chans=1).eval()
    config = {"model": "medmamba_t", "model_args": {}, "num_classes": 2, "in_chans": 1,
              "classes": list(data.info.labels), "task": data.info.task, "img_size": args.img_size,
              "mean": 0.5, "std": 0.5}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        save_pretrained(model, config, tmp / "model")
        images = tmp / "images"
        images.mkdir()
        n = min(args.images, len(data.images))
        for i in range(n):
            Image.fromarray(np.asarray(data.images[i])).save(images / f"{i:04d}.png")

        print(f"\n1. medmamba predict on {n} BreastMNIST test PNGs (batch {args.batch_size})")
        rates = {}
        for backend in ("cpu", "reference"):
            predictor = Predictor.from_checkpoint(tmp / "model", scan_backend=backend, device="cpu")
            result = predictor.predict_files([images], batch_size=args.batch_size)
            rates[backend] = result.images_per_second
            print(f"   scan backend {backend:<10} {result.images_per_second:8.1f} images/s  ({result.seconds:.2f} s)")
        print(f"   cpu / reference: x{rates['cpu'] / rates['reference']:.1f}")

        print(f"\n2. ONNX Runtime vs PyTorch, batch {args.batch_size}")
        x = torch.stack([predictor.transform(torch.from_numpy(np.asarray(data.images[i]))[None])
                         for i in range(args.batch_size)])
        with torch.no_grad():
            t_torch = median_seconds(lambda: model(x), 3)
            expected = model(x).numpy()
        print(f"   PyTorch, cpu scan backend      {args.batch_size / t_torch:8.1f} images/s")
        for form, fused in (("chunked scan", False), ("fused scan nodes", True)):
            t0 = time.perf_counter()
            path, check = export_onnx(model, tmp / f"{form[:5]}.onnx", args.img_size, fused_scan=fused)
            session = onnx_session(path, threads=torch.get_num_threads())
            got = session.run(["logits"], {"image": x.numpy()})[0]
            t_ort = median_seconds(lambda: session.run(["logits"], {"image": x.numpy()}), 3)
            print(f"   onnxruntime, {form:<17} {args.batch_size / t_ort:8.1f} images/s  (x{t_torch / t_ort:.2f} of "
                  f"PyTorch); export + check {time.perf_counter() - t0:.0f} s, {path.stat().st_size / 1e6:.1f} MB, "
                  f"max |onnxruntime - PyTorch| {check.max_abs_diff:.2e} (random), "
                  f"{np.abs(got - expected).max():.2e} (these images)")


if __name__ == "__main__":
    main()
