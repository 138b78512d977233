"""GPU check and benchmark in one command (fits in about 8 minutes on one H100).

    .venv/bin/python benchmarks/gpu.py --json gpu.json

1. Correctness on the GPU: the triton backend against the reference (forward and every gradient) on
   awkward shapes, and MedMamba's parity fixture when ../shared/parity is present.
2. Scan op at (batch 64, dim 384, L 3136, N 16), MedMamba-T stage 1: forward and forward+backward ms,
   triton vs reference (and mamba_ssm when installed).
3. MedMamba-T/S/B inference images/s at 224 px, batch 128; T and B training images/s at batch 64
   (AdamW step) in float32 and bf16 autocast; peak memory of each.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

import medmamba
from medmamba.ops import available_backends, cross_selective_scan, selective_scan


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def cuda_time(fn, repeats=10, warmup=3):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(repeats):
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def check_correctness(device):
    worst = {}
    g = torch.Generator(device="cpu").manual_seed(0)
    for batch, dim, length, n, groups in [(2, 7, 1, 1, 1), (3, 12, 300, 16, 4), (2, 40, 3136, 16, 1)]:
        leaves = [torch.randn(batch, dim, length, generator=g), torch.randn(batch, dim, length, generator=g) * 0.5,
                  -torch.rand(dim, n, generator=g) * 3, torch.randn(batch, groups, n, length, generator=g),
                  torch.randn(batch, groups, n, length, generator=g), torch.randn(dim, generator=g),
                  torch.randn(dim, generator=g)]
        leaves = [t.to(device).requires_grad_() for t in leaves]
        outs = {}
        for backend in ("reference", "triton"):
            y = selective_scan(*leaves[:6], delta_bias=leaves[6], delta_softplus=True, backend=backend)
            outs[backend] = (y, torch.autograd.grad(y, leaves, torch.ones_like(y)))
        errs = [rel(outs["triton"][0], outs["reference"][0])]
        errs += [rel(a, b) for a, b in zip(outs["triton"][1], outs["reference"][1])]
        worst[f"scan {batch}x{dim}x{length}x{n} g{groups}"] = max(errs)
    for h, w in [(7, 7), (5, 13)]:
        x = torch.randn(2, 6, h, w, device=device, requires_grad=True)
        delta = (torch.randn(2, 4, 6, h, w, device=device) * 0.5).requires_grad_()
        A = (-torch.rand(24, 16, device=device) * 3).requires_grad_()
        B = torch.randn(2, 4, 16, h, w, device=device, requires_grad=True)
        C = torch.randn(2, 4, 16, h, w, device=device, requires_grad=True)
        outs = {}
        for backend in ("reference", "triton"):
            y = cross_selective_scan(x, delta, A, B, C, delta_softplus=True, backend=backend)
            outs[backend] = (y, torch.autograd.grad(y, [x, delta, A, B, C], torch.ones_like(y)))
        errs = [rel(outs["triton"][0], outs["reference"][0])]
        errs += [rel(a, b) for a, b in zip(outs["triton"][1], outs["reference"][1])]
        worst[f"cross scan {h}x{w}"] = max(errs)
    parity_path = Path(os.environ.get("MEDMAMBA_PARITY_DIR", Path(__file__).resolve().parents[2] / "shared" / "parity"))
    fixture = parity_path / "medmamba_official_parity.pt"
    if fixture.is_file():
        d = torch.load(fixture, weights_only=True)
        model = medmamba.MedMamba(**d["config"], scan_backend="triton").to(device)
        model.load_state_dict(d["state_dict"])
        model.eval()
        with torch.no_grad():
            worst["parity eval logits"] = max(rel(model(x.to(device)).cpu(), d["eval_logits"][k])
                                              for k, x in d["inputs"].items())
        model.train()
        x = d["inputs"]["x_64x64_b2"].to(device).requires_grad_()
        (model(x) * d["train_loss_weights"].to(device)).sum().backward()
        worst["parity input grad"] = rel(x.grad.cpu(), d["train_input_grad"])
    return worst


def bench_scan(device, backends):
    batch, dim, length, n = 64, 384, 3136, 16
    g = torch.Generator(device="cpu").manual_seed(0)
    leaves = [torch.randn(batch, dim, length, generator=g), torch.randn(batch, dim, length, generator=g) * 0.5,
              -torch.rand(dim, n, generator=g), torch.randn(batch, 1, n, length, generator=g),
              torch.randn(batch, 1, n, length, generator=g), torch.randn(dim, generator=g),
              torch.randn(dim, generator=g)]
    leaves = [t.to(device).requires_grad_() for t in leaves]
    rows = []
    for backend in backends:
        def fwd():
            with torch.no_grad():
                selective_scan(*leaves[:6], delta_bias=leaves[6], delta_softplus=True, backend=backend)

        def both():
            y = selective_scan(*leaves[:6], delta_bias=leaves[6], delta_softplus=True, backend=backend)
            torch.autograd.grad(y, leaves, torch.ones_like(y))
        reps = 10 if backend != "reference" else 1
        rows.append(dict(backend=backend, fwd_ms=cuda_time(fwd, reps, 1), fwd_bwd_ms=cuda_time(both, reps, 1)))
        print(f"scan {batch}x{dim}x{length}x{n} {backend:<10} fwd {rows[-1]['fwd_ms']:8.2f} ms  "
              f"fwd+bwd {rows[-1]['fwd_bwd_ms']:8.2f} ms", flush=True)
    return rows


def bench_model(device, name, train, batch, dtype=None):
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    model = medmamba.create_model(name, num_classes=6, scan_backend="triton").to(device)
    model = model.to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, 224, 224, device=device).to(memory_format=torch.channels_last)
    y = torch.randint(0, 6, (batch,), device=device)
    autocast = torch.autocast("cuda", dtype=dtype) if dtype else torch.autocast("cuda", enabled=False)
    if train:
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

        def step():
            with autocast:
                loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    else:
        model.eval()

        def step():
            with torch.no_grad(), autocast:
                model(x)
    ms = cuda_time(step, repeats=5, warmup=2)
    return dict(model=name, mode="train" if train else "infer", dtype=str(dtype or torch.float32), batch=batch,
                images_per_s=batch / ms * 1e3, peak_gib=torch.cuda.max_memory_allocated() / 2 ** 30)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default="gpu_benchmark.json")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("no CUDA device: this benchmark needs a GPU")
    device = torch.device("cuda")
    t0 = time.time()
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, backends: {available_backends()}")
    result = dict(device=torch.cuda.get_device_name(), torch=torch.__version__)
    result["correctness"] = check_correctness(device)
    for k, v in result["correctness"].items():
        print(f"correctness {k:<32} max rel err {v:.2e} {'OK' if v <= 1e-4 else 'FAIL'}", flush=True)
    backends = ["triton", "reference"] + (["mamba_ssm"] if "mamba_ssm" in available_backends() else [])
    result["scan"] = bench_scan(device, backends)
    rows = []
    for name in ("medmamba_t", "medmamba_s", "medmamba_b"):
        rows.append(bench_model(device, name, train=False, batch=128))
    for name in ("medmamba_t", "medmamba_b"):
        for dtype in (None, torch.bfloat16):
            rows.append(bench_model(device, name, train=True, batch=64, dtype=dtype))
    result["models"] = rows
    print(f"\n{'model':<12}{'mode':<7}{'dtype':<16}{'batch':>6}{'images/s':>10}{'peak GiB':>10}")
    for r in rows:
        print(f"{r['model']:<12}{r['mode']:<7}{r['dtype']:<16}{r['batch']:>6}{r['images_per_s']:>10.1f}"
              f"{r['peak_gib']:>10.2f}")
    print(f"\ntotal {time.time() - t0:.0f} s")
    Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
