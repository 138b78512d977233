"""The S6 selective scan, its pure-PyTorch reference, and the choice of backend.

For every channel d and state n of a sequence (Delta already through bias and softplus):

    h_t = exp(Delta_t * A) * h_{t-1} + Delta_t * B_t * u_t
    y_t = <C_t, h_t> + D * u_t          (then y_t * silu(z_t) when z is given)

Shapes follow mamba_ssm's ``selective_scan_fn``: u, delta, z: (batch, dim, L); A: (dim, N);
B, C: (batch, groups, N, L), channel d using group d // (dim // groups); D, delta_bias: (dim,).

``reference`` is the specification: every faster backend is tested against it.
"""
from __future__ import annotations

import importlib.util
import os
import warnings
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from .cross_scan import NUM_DIRECTIONS, cross_merge, cross_scan


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The scan state lives in float32 (float64 when asked): half precision would drift over L."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_scan_shapes(u, delta, A, B, C, D=None, z=None, delta_bias=None):
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(f"u and delta must both be (batch, dim, L); got {tuple(u.shape)} and {tuple(delta.shape)}")
    batch, dim, length = u.shape
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"A must be (dim={dim}, N); got {tuple(A.shape)}")
    n = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if t.dim() != 4 or t.shape[0] != batch or t.shape[2] != n or t.shape[3] != length or dim % t.shape[1]:
            raise ValueError(
                f"{name} must be (batch={batch}, groups dividing {dim}, N={n}, L={length}); got {tuple(t.shape)}")
    if B.shape[1] != C.shape[1]:
        raise ValueError(f"B and C must have the same number of groups; got {B.shape[1]} and {C.shape[1]}")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and tuple(t.shape) != (dim,):
            raise ValueError(f"{name} must be (dim={dim},); got {tuple(t.shape)}")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"z must be shaped like u {tuple(u.shape)}; got {tuple(z.shape)}")


def scan_inputs(u, delta, A, B, C, delta_bias=None, delta_softplus=False):
    """The inputs in the compute dtype, with Delta through its bias and softplus: what every pure-PyTorch
    formulation starts from."""
    ct = compute_dtype(u.dtype)
    u, delta, A, B, C = (t.to(ct) for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.to(ct)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    return u, delta, A, B, C


def selective_scan_reference(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """Sequential pure-PyTorch scan. Steps come from ``unbind`` so autograd stays linear in L."""
    dtype_in = u.dtype
    u, delta, A, B, C = scan_inputs(u, delta, A, B, C, delta_bias, delta_softplus)
    batch, dim, _ = u.shape
    groups, n = B.shape[1], A.shape[1]
    per_group = dim // groups
    A = A.view(groups, per_group, n)
    h = u.new_zeros(batch, groups, per_group, n)
    ys = []
    for u_t, dt_t, B_t, C_t in zip(u.unbind(-1), delta.unbind(-1), B.unbind(-1), C.unbind(-1)):
        dt_t = dt_t.view(batch, groups, per_group, 1)
        h = torch.exp(dt_t * A) * h + dt_t * B_t.unsqueeze(2) * u_t.view(batch, groups, per_group, 1)
        ys.append((h * C_t.unsqueeze(2)).sum(-1).view(batch, dim))
    y = torch.stack(ys, dim=-1)
    return finish_scan(y, u, D, z, dtype_in)


def finish_scan(y, u, D, z, dtype_in):
    """The parts every backend shares: skip connection (unless the kernel added it), gate, output dtype."""
    if D is not None:
        y = y + u.to(y.dtype) * D.to(y.dtype)[:, None]
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y.to(dtype_in)


def cross_selective_scan_composed(scan: Callable, x, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False):
    """SS2D's four-direction scan built from a 1-D scan: cross-scan, one scan of 4*dim rows, cross-merge."""
    batch, dim, height, width = x.shape
    length = height * width
    ct = compute_dtype(x.dtype)
    us = cross_scan(x.to(ct)).reshape(batch, NUM_DIRECTIONS * dim, length)
    deltas = cross_scan(delta.to(ct)).reshape(batch, NUM_DIRECTIONS * dim, length)
    y = scan(us, deltas, A, cross_scan(B.to(ct)), cross_scan(C.to(ct)), D=D, delta_bias=delta_bias,
             delta_softplus=delta_softplus)
    return cross_merge(y.view(batch, NUM_DIRECTIONS, dim, length), height, width)


@dataclass
class Backend:
    """A selective-scan implementation. ``cross_selective_scan`` is its fused SS2D path when it has one."""
    name: str
    is_available: Callable[[], bool]
    load: Callable[[], Callable]
    load_cross: Optional[Callable[[], Callable]] = None
    devices: tuple = ("cpu", "cuda")
    why_unavailable: str = ""


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _load_mamba_ssm():
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    def scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
        return selective_scan_fn(u, delta, A, B.contiguous(), C.contiguous(), D, z, delta_bias, delta_softplus)
    return scan


def _load_chunked():
    from . import scan_chunked
    return scan_chunked.selective_scan_chunked


def _load_cpu():
    from . import scan_cpu
    return scan_cpu.selective_scan_cpu


def _load_cpu_cross():
    from . import scan_cpu
    return scan_cpu.cross_selective_scan_cpu


def _load_triton():
    from . import scan_triton
    return scan_triton.selective_scan_triton


def _load_triton_cross():
    from . import scan_triton
    return scan_triton.cross_selective_scan_triton


def _numba_importable() -> bool:
    try:
        import numba  # noqa: F401
    except Exception:  # a broken numba (e.g. numpy too new) raises more than ImportError
        return False
    return True


def _triton_importable() -> bool:
    # Not imported here: TRITON_INTERPRET is read when the kernels are defined, so importing the
    # kernels just to look would fix the mode before a caller (or a test) chose it.
    return _module_exists("triton")


BACKENDS: dict[str, Backend] = {
    "reference": Backend("reference", lambda: True, lambda: selective_scan_reference),
    # Plain tensor operations with a fixed loop: what ONNX export uses. Never chosen by "auto".
    "chunked": Backend("chunked", lambda: True, _load_chunked),
    "cpu": Backend("cpu", _numba_importable, _load_cpu, _load_cpu_cross, devices=("cpu",),
                   why_unavailable="numba is not importable"),
    "triton": Backend("triton", _triton_importable, _load_triton, _load_triton_cross, devices=("cuda",),
                      why_unavailable="triton is not importable"),
    "mamba_ssm": Backend("mamba_ssm", lambda: _module_exists("mamba_ssm"), _load_mamba_ssm, devices=("cuda",),
                         why_unavailable="mamba_ssm is not installed"),
}

_warned_fallback = False


def available_backends() -> list[str]:
    return [name for name, b in BACKENDS.items() if b.is_available()]


def resolve_backend(backend: str, device: torch.device) -> Backend:
    """Map a backend name (or "auto") to an available backend for tensors on ``device``."""
    global _warned_fallback
    if backend == "auto":
        if device.type == "cuda":
            for name in ("triton", "mamba_ssm"):
                if BACKENDS[name].is_available():
                    return BACKENDS[name]
            return BACKENDS["reference"]
        if device.type == "cpu":
            if BACKENDS["cpu"].is_available():
                return BACKENDS["cpu"]
            if not _warned_fallback:
                warnings.warn("numba is not importable: the selective scan falls back to the slow pure-PyTorch "
                              "reference. `pip install numba` for the fast CPU backend.", RuntimeWarning, stacklevel=3)
                _warned_fallback = True
        return BACKENDS["reference"]
    available = available_backends()
    chosen = BACKENDS.get(backend)
    if chosen is None or backend not in available:
        reason = "unknown backend" if chosen is None else chosen.why_unavailable
        raise ValueError(f"selective-scan backend {backend!r} is not available ({reason}); "
                         f"available: {', '.join(available)}")
    interpreted = chosen.name == "triton" and os.environ.get("TRITON_INTERPRET") == "1"
    if device.type not in chosen.devices and not interpreted:
        raise ValueError(f"selective-scan backend {backend!r} runs on {'/'.join(chosen.devices)} tensors, "
                         f"not {device.type}; available: {', '.join(available)}")
    return chosen


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, backend="auto"):
    """The S6 selective scan (see module docstring); returns (batch, dim, L) in u's dtype."""
    check_scan_shapes(u, delta, A, B, C, D, z, delta_bias)
    fn = resolve_backend(backend, u.device).load()
    return fn(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus)


def cross_selective_scan(x, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False, backend="auto"):
    """SS2D's core: scan the (B, dim, H, W) map in the four cross-scan orders and merge.

    delta: (batch, 4, dim, H, W) and B, C: (batch, 4, N, H, W) are laid out over the pixels, direction
    k's sequences being read in direction k's order; A: (4*dim, N); D, delta_bias: (4*dim,).
    Returns the sum of the four directions' outputs at each pixel, (batch, dim, H, W), float32 or float64.
    """
    batch, dim, height, width = x.shape
    if delta.shape != (batch, NUM_DIRECTIONS, dim, height, width):
        raise ValueError(f"delta must be {(batch, NUM_DIRECTIONS, dim, height, width)}; got {tuple(delta.shape)}")
    for name, t in (("B", B), ("C", C)):
        if t.dim() != 5 or t.shape[:2] != (batch, NUM_DIRECTIONS) or t.shape[3:] != (height, width):
            raise ValueError(f"{name} must be (batch, 4, N, H, W) = ({batch}, 4, N, {height}, {width}); "
                             f"got {tuple(t.shape)}")
    chosen = resolve_backend(backend, x.device)
    if chosen.load_cross is not None:
        return chosen.load_cross()(x, delta, A, B, C, D=D, delta_bias=delta_bias, delta_softplus=delta_softplus)
    return cross_selective_scan_composed(chosen.load(), x, delta, A, B, C, D=D, delta_bias=delta_bias,
                                         delta_softplus=delta_softplus)
