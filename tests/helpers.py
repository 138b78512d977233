"""What several test files share: where the data is, the tiny training configuration, running Python in a
fresh process, the selective-scan inputs and the float64 references they are judged against."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from medmamba.config import load_config
from medmamba.ops import selective_scan

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MEDMAMBA_SHARED", REPO.parent / "shared"))
PARITY_DIR = Path(os.environ.get("MEDMAMBA_PARITY_DIR", SHARED / "parity"))
MEDMNIST = SHARED / "medmnist"
needs_medmnist = pytest.mark.skipif(not (MEDMNIST / "breastmnist.npz").is_file(),
                                    reason=f"MedMNIST files not found in {MEDMNIST} (set MEDMAMBA_SHARED)")


TINY = [f"data.root={MEDMNIST}", "data.img_size=28", "data.max_samples=40", "batch_size=8",
        "eval_batch_size=16", "model_args={depths: [1, 1], dims: [8, 16]}", "epochs=3", "tensorboard=false"]


def tiny_cfg(*extra):
    return load_config(None, TINY + list(extra))


def benchmark_script(name: str):
    """benchmarks/<name>.py, a script rather than a package module, imported by its path."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_python(code: str, *args, env_extra=None, check=True):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), **(env_extra or {})}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=600)
    if check and proc.returncode:
        raise AssertionError(proc.stderr[-3000:])
    return proc


def rel_err(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """||ours - theirs|| / ||theirs||, the parity README's measure."""
    ours, theirs = ours.detach().double(), theirs.detach().double()
    return ((ours - theirs).norm() / theirs.norm().clamp_min(1e-30)).item()


NAMES = ["u", "delta", "A", "B", "C", "D", "delta_bias"]


def inputs(batch, dim, length, n, groups, with_D=True, with_bias=True, dtype=torch.float32, seed=None,
           delta_scale=0.5, a_scale=2.0, noncontiguous=False):
    g = torch.Generator().manual_seed(seed if seed is not None else torch.seed() % 2**31)

    def r(*shape, scale=1.0):
        t = torch.randn(*shape, generator=g, dtype=dtype) * scale
        if noncontiguous:  # same values, laid out transposed in memory
            t = t.transpose(0, -1).contiguous().transpose(0, -1)
        return t.requires_grad_()
    x = dict(u=r(batch, dim, length), delta=r(batch, dim, length, scale=delta_scale),
             A=(-torch.rand(dim, n, generator=g, dtype=dtype) * a_scale).requires_grad_(),
             B=r(batch, groups, n, length), C=r(batch, groups, n, length),
             D=r(dim) if with_D else None, delta_bias=r(dim, scale=0.5) if with_bias else None)
    if noncontiguous:
        assert not x["u"].is_contiguous()
    return x


def run(backend, x, softplus, z=None):
    y = selective_scan(**x, z=z, delta_softplus=softplus, backend=backend)
    # drawn in float32 whatever the dtype, so a float64 run of the same inputs gets the same output gradient
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(7)).to(y.dtype)
    leaves = [x[k] for k in NAMES if x[k] is not None] + ([z] if z is not None else [])
    return y, dict(zip([k for k in NAMES if x[k] is not None] + (["z"] if z is not None else []),
                       torch.autograd.grad(y, leaves, gy)))


def assert_backends_agree(x, softplus, tol=1e-5, z=None, backend="cpu"):
    """``backend`` against the reference, forward and every gradient, both judged by the reference in float64
    on the same values: A's gradient sums thousands of terms that cancel, so on some draws the float32
    reference is itself 1e-5 off the truth (seen in CI). Each result must be within ``tol`` of float64, or no
    further from it than four times the float32 reference is."""
    def double(t):
        return None if t is None else t.detach().double().requires_grad_()

    y_ref, g_ref = run("reference", x, softplus, z)
    y_new, g_new = run(backend, x, softplus, z)
    y_64, g_64 = run("reference", {k: double(v) for k, v in x.items()}, softplus, double(z))
    assert y_new.dtype == y_ref.dtype and y_new.shape == y_ref.shape
    errors = {k: (rel_err(new, truth), rel_err(ref, truth))
              for k, new, ref, truth in [("y", y_new, y_ref, y_64)] + [(k, g_new[k], g_ref[k], g_64[k]) for k in g_ref]}
    assert all(new <= max(tol, 4 * ref) for new, ref in errors.values()), errors


def direct_recurrence(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """h_t = exp(dt A) h_{t-1} + dt B_t u_t, y_t = C_t h_t + D u_t, written out in float64 loops."""
    u, delta, A, B, C = (t.double() for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.double()[:, None]
    if delta_softplus:
        delta = torch.log1p(torch.exp(delta))
    batch, dim, length = u.shape
    per_group = dim // B.shape[1]
    y = torch.zeros(batch, dim, length, dtype=torch.float64)
    for b in range(batch):
        for d in range(dim):
            g = d // per_group
            h = torch.zeros(A.shape[1], dtype=torch.float64)
            for t in range(length):
                h = torch.exp(delta[b, d, t] * A[d]) * h + delta[b, d, t] * B[b, g, :, t] * u[b, d, t]
                y[b, d, t] = (C[b, g, :, t] * h).sum()
    if D is not None:
        y = y + D.double()[:, None] * u
    if z is not None:
        y = y * torch.nn.functional.silu(z.double())
    return y
