"""Every selective-scan backend against the float64 reference, through the dispatcher: one test for all.

A backend that cannot run here (not installed, or CUDA-only without a GPU or Triton's interpreter) is
skipped with the dispatcher's own reason. Each backend's own file tests what is particular to it.
"""
import importlib

import pytest
import torch

from medmamba.errors import ModelError
from medmamba.ops import BACKENDS, cross_selective_scan, resolve_backend, selective_scan

from .helpers import inputs, rel_err


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def runnable(name: str):
    try:
        resolve_backend(name, torch.device(DEVICE))
    except ModelError as e:
        pytest.skip(str(e))


def gradients(fn, leaves, seed=7):
    y = fn(*leaves)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed)).to(y)
    return [y, *torch.autograd.grad(y, leaves, gy)]


def assert_close_to_float64(fn, leaves, ref_fn, tol):
    """``fn`` within ``tol`` of the float64 reference, or no further than 4x the float32 reference is (A's
    gradient sums thousands of cancelling terms, so on some draws float32 itself is 1e-5 off)."""
    got = gradients(fn, leaves)
    ref32 = gradients(ref_fn, leaves)
    ref64 = gradients(ref_fn, [t.detach().double().requires_grad_() for t in leaves])
    assert got[0].dtype == leaves[0].dtype and got[0].shape == ref64[0].shape
    errors = [(rel_err(g.cpu(), t.cpu()), rel_err(r.cpu(), t.cpu())) for g, r, t in zip(got, ref32, ref64)]
    assert all(new <= max(tol, 4 * ref) for new, ref in errors), errors


TOL = {"triton": 1e-4}


@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("batch,dim,length,n,groups", [(1, 3, 1, 1, 1), (2, 6, 67, 16, 2), (2, 9, 130, 3, 3)])
def test_selective_scan(backend, batch, dim, length, n, groups):
    runnable(backend)
    x = inputs(batch, dim, length, n, groups, seed=length)
    names = ["u", "delta", "A", "B", "C", "D", "delta_bias"]
    leaves = [x[k].detach().to(DEVICE).requires_grad_() for k in names]

    def scan(name):
        return lambda u, delta, A, B, C, D, bias: selective_scan(u, delta, A, B, C, D=D, delta_bias=bias,
                                                                 delta_softplus=True, backend=name)
    assert_close_to_float64(scan(backend), leaves, scan("reference"), TOL.get(backend, 1e-5))


@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("batch,dim,height,width,n", [(1, 2, 1, 1, 4), (2, 5, 7, 3, 16)])
def test_cross_selective_scan(backend, batch, dim, height, width, n):
    """SS2D's four directions: through the backend's fused kernel, or cross-scan + its 1-D scan + merge."""
    runnable(backend)
    g = torch.Generator().manual_seed(height * width)
    k = 4

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(DEVICE).requires_grad_()
    leaves = [r(batch, dim, height, width), r(batch, k, dim, height, width, scale=0.5),
              (-torch.rand(k * dim, n, generator=g) * 2).to(DEVICE).requires_grad_(),
              r(batch, k, n, height, width), r(batch, k, n, height, width), r(k * dim), r(k * dim, scale=0.5)]

    def scan(name):
        return lambda x, delta, A, B, C, D, bias: cross_selective_scan(x, delta, A, B, C, D=D, delta_bias=bias,
                                                                       delta_softplus=True, backend=name)
    assert_close_to_float64(scan(backend), leaves, scan("reference"), TOL.get(backend, 1e-5))


def test_backend_is_resolved_once_per_name_and_device_type(monkeypatch):
    dispatcher = importlib.import_module("medmamba.ops.selective_scan")  # the module, not the function
    monkeypatch.setattr(dispatcher, "_resolved", {})
    calls = []
    real = dispatcher._resolve
    monkeypatch.setattr(dispatcher, "_resolve", lambda *a: calls.append(a) or real(*a))
    for _ in range(3):
        resolve_backend("auto", torch.device("cpu"))
        resolve_backend("reference", torch.device("cpu"))
    assert [c[:2] for c in calls] == [("auto", "cpu"), ("reference", "cpu")]  # then the device itself
