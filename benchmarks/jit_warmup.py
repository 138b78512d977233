"""Cost of the cpu backend's numba JIT in a fresh process: first call of forward + backward.

    NUMBA_CACHE_DIR=$(mktemp -d) .venv/bin/python benchmarks/jit_warmup.py   # cold: compiles, fills the cache
    NUMBA_CACHE_DIR=<same dir>   .venv/bin/python benchmarks/jit_warmup.py   # warm: loads from the cache
"""
import time

t0 = time.perf_counter()
import torch  # noqa: E402

from medmamba.ops import cross_selective_scan, selective_scan  # noqa: E402

t_import = time.perf_counter() - t0
x = torch.randn(1, 4, 3, 3, requires_grad=True)
delta = torch.randn(1, 4, 4, 3, 3, requires_grad=True)
A, B, C = -torch.rand(16, 16), torch.randn(1, 4, 16, 3, 3), torch.randn(1, 4, 16, 3, 3)
t0 = time.perf_counter()
cross_selective_scan(x, delta, A, B, C, D=torch.ones(16), delta_bias=torch.zeros(16), delta_softplus=True,
                     backend="cpu").sum().backward()
u = torch.randn(1, 4, 3, requires_grad=True)
selective_scan(u, u.detach().abs(), A[:4], B[:, :1, :, 0], C[:, :1, :, 0], backend="cpu").sum().backward()
print(f"import {t_import:.2f} s; first forward+backward (JIT compile or cache load) {time.perf_counter() - t0:.2f} s")
