"""The fused CPU scan of several checkouts, side by side in one process (forward, then backward).

    .venv/bin/python benchmarks/scan_versions.py now=src before=/tmp/before/src --rounds 7

Each NAME=SRC names a source tree holding ``medmamba/ops``; its ops folder is copied to a package of its own
(``scanver_NAME.ops``) so that every version loads in this one process, and the versions are timed in turns,
round after round, so that a slow spell of a shared machine falls on all of them alike. Shapes: MedMamba-T's
first-stage SS2D scan at 64 px, batch 32 (the training row of cpu_vs_cnn.py), and at 224 px, batch 8 (the
scan row), inputs laid out channels last as SS2D makes them; the forward keeps the states for the backward,
as in training. Prints medians and minima in ms.
"""
from __future__ import annotations

import argparse
import importlib
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

SHAPES = {"64 px, batch 32": (32, 96, 16), "224 px, batch 8": (8, 96, 56)}


def load(name: str, src: Path, into: Path):
    """Import ``src/medmamba/ops/scan_cpu.py`` as ``scanver_<name>.ops.scan_cpu`` (ops imports only itself)."""
    package = into / f"scanver_{name}"
    shutil.copytree(src / "medmamba" / "ops", package / "ops", ignore=shutil.ignore_patterns("__pycache__"))
    (package / "__init__.py").write_text("")
    (package / "ops" / "__init__.py").write_text("")  # the real one imports every backend
    return importlib.import_module(f"scanver_{name}.ops.scan_cpu")


def inputs(batch: int, dim: int, side: int, n_state: int = 16, k: int = 4):
    g = torch.Generator().manual_seed(0)

    def pixels(*shape, scale=1.0):  # (batch, H, W, *shape) in memory, returned as (batch, *shape, H, W)
        t = torch.randn(batch, side, side, *shape, generator=g) * scale
        return t.permute(0, 3, 1, 2) if len(shape) == 1 else t.permute(0, 3, 4, 1, 2)
    leaves = dict(x=pixels(dim), delta=pixels(k, dim, scale=0.5), A=-torch.rand(k * dim, n_state, generator=g) * 4,
                  B=pixels(k, n_state), C=pixels(k, n_state), D=torch.randn(k * dim, generator=g),
                  delta_bias=torch.randn(k * dim, generator=g) * 0.5)
    return {key: t.requires_grad_() for key, t in leaves.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("versions", nargs="+", metavar="NAME=SRC")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        sys.path.insert(0, tmp)
        kernels = {}
        for spec in args.versions:
            name, _, src = spec.partition("=")
            if not name.isidentifier() or not (Path(src) / "medmamba" / "ops" / "scan_cpu.py").is_file():
                parser.error(f"{spec!r}: expected NAME=SRC, SRC holding medmamba/ops/scan_cpu.py")
            kernels[name] = load(name, Path(src), Path(tmp))
        print(f"torch {torch.__version__}, {args.threads} threads, CPU capability "
              f"{torch.backends.cpu.get_cpu_capability()}; medians (minima) of {args.rounds} interleaved rounds, ms")
        for label, shape in SHAPES.items():
            x = inputs(*shape)

            def call(module):
                return module.cross_selective_scan_cpu(x["x"], x["delta"], x["A"], x["B"], x["C"], x["D"],
                                                       delta_bias=x["delta_bias"], delta_softplus=True)
            dy = torch.randn_like(call(next(iter(kernels.values()))).detach())
            for module in kernels.values():  # JIT compile or cache load, untimed
                call(module).backward(dy)
            times = {name: ([], []) for name in kernels}
            for _ in range(args.rounds):
                for name, module in kernels.items():
                    t0 = time.perf_counter()
                    y = call(module)
                    t1 = time.perf_counter()
                    y.backward(dy)
                    t2 = time.perf_counter()
                    times[name][0].append(t1 - t0)
                    times[name][1].append(t2 - t1)
            for name, (fwd, bwd) in times.items():
                both = [f + b for f, b in zip(fwd, bwd)]
                print(f"{label:<16} {name:<10} forward {1e3 * statistics.median(fwd):7.1f} ({1e3 * min(fwd):7.1f})"
                      f"  backward {1e3 * statistics.median(bwd):7.1f} ({1e3 * min(bwd):7.1f})"
                      f"  both {1e3 * statistics.median(both):7.1f}")


if __name__ == "__main__":
    main()
