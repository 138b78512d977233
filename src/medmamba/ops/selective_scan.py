"""Which selective-scan implementation runs: the backends, their availability, and the dispatch.

The maths and its pure-PyTorch specification are in ``scan_reference``; each fast backend is a module
beside it, imported only when first chosen. A backend is resolved once per (name, device type). On a GPU,
"auto" checks each candidate once against the chunked scan before trusting it (``first_that_passes``): a
Triton kernel that fails to compile or disagrees on that GPU costs a warning, not the user's run. A backend
named explicitly is not second-guessed: it fails loudly.
"""
from __future__ import annotations

import importlib.util
import os
import warnings
from dataclasses import dataclass
from functools import cached_property, partial
from typing import Callable, Optional

import torch

from ..errors import ModelError
from .cross_scan import NUM_DIRECTIONS
from .scan_reference import check_scan_shapes, cross_selective_scan_composed, selective_scan_reference


@dataclass
class Backend:
    """A selective-scan implementation. ``cross_selective_scan`` is its fused SS2D path when it has one."""
    name: str
    is_available: Callable[[], bool]
    load: Callable[[], Callable]
    load_cross: Optional[Callable[[], Callable]] = None
    devices: tuple = ("cpu", "cuda")
    why_unavailable: str = ""

    @cached_property
    def scan(self) -> Callable:
        """The 1-D scan, with ``selective_scan``'s arguments (imported on first use)."""
        return self.load()

    @cached_property
    def cross(self) -> Callable:
        """SS2D's four-direction scan: the backend's fused one, or cross-scan + its 1-D scan + cross-merge."""
        if self.load_cross is not None:
            return self.load_cross()
        return partial(cross_selective_scan_composed, self.scan)


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


def _load_onnx_node():
    from . import scan_onnx
    return scan_onnx.cross_selective_scan_node


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
    # SS2D's scan as one custom ONNX node (export --fused-scan); run eagerly, the cpu kernel. Never "auto".
    "onnx_node": Backend("onnx_node", _numba_importable, _load_cpu, _load_onnx_node, devices=("cpu",),
                         why_unavailable="numba is not importable"),
    "triton": Backend("triton", _triton_importable, _load_triton, _load_triton_cross, devices=("cuda",),
                      why_unavailable="triton is not importable"),
    "mamba_ssm": Backend("mamba_ssm", lambda: _module_exists("mamba_ssm"), _load_mamba_ssm, devices=("cuda",),
                         why_unavailable="mamba_ssm is not installed"),
}

_warned_fallback = False
_resolved: dict[tuple[str, str, bool], Backend] = {}
# "auto" on a GPU: each in turn must pass its self-check; the chunked scan (plain tensor operations) is the
# last resort, never the sequential reference, whose Python loop would make a GPU slower than a CPU.
GPU_ORDER = ("triton", "mamba_ssm", "chunked")
CHECK_TOLERANCE = 1e-3


def self_check(backend: Backend, device: torch.device) -> Optional[str]:
    """None if ``backend``'s SS2D scan agrees with the chunked scan on a small input on ``device``, forward
    and every gradient, to CHECK_TOLERANCE relative; else why not (its exception, or the worst
    disagreement). The inputs come from a generator of their own: the caller's random stream is untouched."""
    g = torch.Generator().manual_seed(0)
    batch, dim, side, n = 1, 6, 5, 4

    def leaf(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device).requires_grad_()
    x = leaf(batch, dim, side, side)
    inputs = dict(delta=leaf(batch, NUM_DIRECTIONS, dim, side, side, scale=0.5), A=(-torch.rand(
        NUM_DIRECTIONS * dim, n, generator=g)).to(device).requires_grad_(),
        B=leaf(batch, NUM_DIRECTIONS, n, side, side), C=leaf(batch, NUM_DIRECTIONS, n, side, side),
        D=leaf(NUM_DIRECTIONS * dim), delta_bias=leaf(NUM_DIRECTIONS * dim, scale=0.5))
    leaves = [x, *inputs.values()]

    def run(b: Backend):
        y = b.cross(x, **inputs, delta_softplus=True)
        return [y.detach(), *torch.autograd.grad(y, leaves, torch.ones_like(y))]
    try:
        got = run(backend)
    except Exception as e:  # a kernel that does not compile or launch on this device
        return f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    want = run(BACKENDS["chunked"])
    names = ["output", "grad x", *(f"grad {k}" for k in inputs)]
    errors = {name: ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-12)).item()
              for name, a, b in zip(names, got, want)}
    worst = max(errors, key=errors.get)
    if not errors[worst] <= CHECK_TOLERANCE:  # also catches NaN
        return f"{worst} differs from the chunked scan by {errors[worst]:.2e} (relative)"
    return None


def available_backends() -> list[str]:
    return [name for name, b in BACKENDS.items() if b.is_available()]


def resolve_backend(backend: str, device: torch.device) -> Backend:
    """Map a backend name (or "auto") to an available backend for tensors on ``device``; the answer is kept
    per (name, device type), so a model's forward pays a dictionary lookup, not the availability checks.
    (Whether Triton's interpreter is on is part of the key: it decides whether triton may take CPU tensors.)"""
    key = (backend, torch.device(device).type, os.environ.get("TRITON_INTERPRET") == "1")
    if key not in _resolved:
        _resolved[key] = _resolve(backend, key[1], torch.device(device))
    return _resolved[key]


def first_that_passes(names, device: torch.device) -> Backend:
    """The first available backend of ``names`` whose self-check passes on ``device``; each one that fails
    is skipped with one warning naming the cause. The last of ``names`` is taken unchecked if all else fails."""
    for name in names[:-1]:
        backend = BACKENDS[name]
        if not backend.is_available():
            continue
        problem = self_check(backend, device)
        if problem is None:
            return backend
        warnings.warn(f"selective-scan backend {name!r} failed its check on {device} ({problem}); falling back to "
                      f"the next of {', '.join(names)}", RuntimeWarning, stacklevel=5)
    return BACKENDS[names[-1]]


def _resolve(backend: str, device_type: str, device: Optional[torch.device] = None) -> Backend:
    global _warned_fallback
    if backend == "auto":
        if device_type == "cuda":
            return first_that_passes(GPU_ORDER, device or torch.device("cuda"))
        if device_type == "cpu":
            if BACKENDS["cpu"].is_available():
                return BACKENDS["cpu"]
            if not _warned_fallback:
                warnings.warn("numba is not importable: the selective scan falls back to the slow pure-PyTorch "
                              "reference. `pip install numba` for the fast CPU backend.", RuntimeWarning, stacklevel=4)
                _warned_fallback = True
        return BACKENDS["reference"]
    available = available_backends()
    chosen = BACKENDS.get(backend)
    if chosen is None or backend not in available:
        reason = "unknown backend" if chosen is None else chosen.why_unavailable
        raise ModelError(f"selective-scan backend {backend!r} is not available ({reason}); "
                         f"available: {', '.join(available)}")
    interpreted = chosen.name == "triton" and os.environ.get("TRITON_INTERPRET") == "1"
    if device_type not in chosen.devices and not interpreted:
        raise ModelError(f"selective-scan backend {backend!r} runs on {'/'.join(chosen.devices)} tensors, "
                         f"not {device_type}; available: {', '.join(available)}")
    return chosen


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, backend="auto"):
    """The S6 selective scan (see ``scan_reference``); returns (batch, dim, L) in u's dtype."""
    check_scan_shapes(u, delta, A, B, C, D, z, delta_bias)
    return resolve_backend(backend, u.device).scan(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias,
                                                   delta_softplus=delta_softplus)


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
    return resolve_backend(backend, x.device).cross(x, delta, A, B, C, D=D, delta_bias=delta_bias,
                                                    delta_softplus=delta_softplus)
