"""Selective scan on CPU: sequential pure-PyTorch scans vs the fused numba backend, side by side.

    .venv/bin/python benchmarks/scan_cpu.py            # both MedMamba-T stage-1 shapes (224 and 64 px)
    .venv/bin/python benchmarks/scan_cpu.py --quick    # 64 px shape only

Each (implementation, shape) runs in its own process so peak memory (max RSS growth after the inputs
exist) belongs to that implementation alone.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time

SHAPES = {"224px": (8, 384, 3136, 16), "64px": (8, 384, 256, 16)}
IMPLS = {
    "sequential": "loop over L with x[:, :, i] indexing, (b, d, L, N) tensors, autograd (mamba_ssm's "
                  "selective_scan_ref formulation: what the official code falls back to)",
    "sequential-unbind": "the same scan stepping through unbind(L) views instead of x[:, :, i], so its "
                         "autograd backward is linear in L and runs to completion at L = 3136",
    "reference": "medmamba backend 'reference' (loop over unbind(L), autograd)",
    "cpu": "medmamba backend 'cpu' (fused numba kernels)",
}


def sequential_scan(u, delta, A, B, C, D, delta_bias, unbind=False):
    import torch
    import torch.nn.functional as F
    delta = F.softplus(delta + delta_bias[:, None])
    B = B.repeat_interleave(u.shape[1] // B.shape[1], dim=1)
    C = C.repeat_interleave(u.shape[1] // C.shape[1], dim=1)
    delta_A = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    delta_B_u = torch.einsum("bdl,bdnl,bdl->bdln", delta, B, u)
    x = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    if unbind:
        for dA, dBu, c in zip(delta_A.unbind(2), delta_B_u.unbind(2), C.unbind(3)):
            x = dA * x + dBu
            ys.append(torch.einsum("bdn,bdn->bd", x, c))
        return torch.stack(ys, dim=2) + u * D[:, None]
    for i in range(u.shape[2]):
        x = delta_A[:, :, i] * x + delta_B_u[:, :, i]
        ys.append(torch.einsum("bdn,bdn->bd", x, C[:, :, :, i]))
    return torch.stack(ys, dim=2) + u * D[:, None]


def run_one(impl: str, shape, repeats: int, backward: bool = True) -> dict:
    import torch

    from medmamba.ops import selective_scan
    batch, dim, length, n = shape
    g = torch.Generator().manual_seed(0)
    leaves = [torch.randn(batch, dim, length, generator=g), torch.randn(batch, dim, length, generator=g) * 0.5,
              -torch.rand(dim, n, generator=g) * 2, torch.randn(batch, 1, n, length, generator=g),
              torch.randn(batch, 1, n, length, generator=g), torch.randn(dim, generator=g),
              torch.randn(dim, generator=g) * 0.5]
    for t in leaves:
        t.requires_grad_()

    def call():
        if impl.startswith("sequential"):
            return sequential_scan(*leaves, unbind=impl == "sequential-unbind")
        u, delta, A, B, C, D, bias = leaves
        return selective_scan(u, delta, A, B, C, D, delta_bias=bias, delta_softplus=True, backend=impl)

    if impl == "cpu":  # JIT warm-up (compile or load from cache) is not part of the timing
        t0 = time.perf_counter()
        warm = [x.detach()[:1, :8, :8].clone().requires_grad_() for x in leaves[:2]]
        selective_scan(warm[0], warm[1], leaves[2][:8], leaves[3][:1, :, :, :8], leaves[4][:1, :, :, :8],
                       leaves[5][:8], delta_bias=leaves[6][:8], delta_softplus=True, backend="cpu").sum().backward()
        warmup_s = time.perf_counter() - t0
    else:
        warmup_s = None
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fwd, both = [], []
    for _ in range(repeats):
        with torch.no_grad():
            t0 = time.perf_counter()
            call()
            fwd.append(time.perf_counter() - t0)
        if backward:
            t0 = time.perf_counter()
            y = call()
            torch.autograd.grad(y, leaves, torch.ones_like(y))
            both.append(time.perf_counter() - t0)
    peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    return dict(impl=impl, shape=list(shape), fwd_ms=1e3 * statistics.median(fwd),
                fwd_bwd_ms=1e3 * statistics.median(both) if both else None, peak_mb=peak_mb, repeats=repeats,
                threads=torch.get_num_threads(), warmup_s=warmup_s)


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="only the 64 px shape")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--one", nargs=2, metavar=("IMPL", "SHAPE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        impl, shape = args.one
        # x[:, :, i] makes autograd quadratic in L: at L = 3136 its backward would run for hours.
        backward = not (impl == "sequential" and SHAPES[shape][2] > 1000)
        print(json.dumps(run_one(impl, SHAPES[shape], repeats=5 if impl == "cpu" else 1, backward=backward)))
        return
    import torch
    print(f"CPU: {cpu_model()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name, text in IMPLS.items():
        print(f"  {name}: {text}")
    results = []
    shapes = ["64px"] if args.quick else ["224px", "64px"]
    print(f"\n{'shape (b, d, L, N)':<22}{'impl':<19}{'fwd ms':>10}{'fwd+bwd ms':>12}{'peak MB':>10}"
          f"{'x fwd':>8}{'x fwd+bwd':>11}")
    for shape in shapes:
        rows = {}
        for impl in IMPLS:
            out = subprocess.run([sys.executable, __file__, "--one", impl, shape], capture_output=True, text=True)
            if out.returncode:
                print(out.stderr, file=sys.stderr)
                raise SystemExit(f"{impl} at {shape} failed")
            rows[impl] = json.loads(out.stdout.strip().splitlines()[-1])
        fast = rows["cpu"]
        for impl, r in rows.items():
            both = f"{r['fwd_bwd_ms']:>12.1f}" if r["fwd_bwd_ms"] else f"{'skipped':>12}"
            ratio = f"{r['fwd_bwd_ms'] / fast['fwd_bwd_ms']:>11.1f}" if r["fwd_bwd_ms"] else f"{'-':>11}"
            print(f"{str(tuple(r['shape'])):<22}{impl:<19}{r['fwd_ms']:>10.1f}{both}"
                  f"{r['peak_mb']:>10.0f}{r['fwd_ms'] / fast['fwd_ms']:>8.1f}{ratio}")
            results.append(r)
        print(f"  cpu JIT warm-up in a fresh process (cache hit unless first run): {fast['warmup_s']:.2f} s")
    print("sequential fwd+bwd is skipped at L = 3136: its backward is quadratic in L (hours).")
    print("\nx columns: time of that implementation / time of the cpu backend (higher = cpu backend faster)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(cpu=cpu_model(), results=results), f, indent=1)


if __name__ == "__main__":
    main()
