"""The Triton backend against the reference: forward and every gradient, awkward shapes.

Without a GPU the kernels run in Triton's interpreter (TRITON_INTERPRET=1, set in conftest.py).
"""
import os

import pytest
import torch

from medmamba.ops import cross_selective_scan
from medmamba.ops.selective_scan import BACKENDS

from .helpers import NAMES, inputs, rel_err


pytestmark = pytest.mark.skipif(not BACKENDS["triton"].is_available(), reason="triton is not importable")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
    pytestmark = pytest.mark.skip(reason="no GPU and TRITON_INTERPRET is not 1")
TOL = 1e-4


def grads(fn, leaves, seed=7):
    y = fn(*leaves)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed), dtype=y.dtype).to(y.device)
    return y, torch.autograd.grad(y, leaves, gy)


def check(fn_ref, fn_fast, leaves, names):
    y_ref, g_ref = grads(fn_ref, leaves)
    y_fast, g_fast = grads(fn_fast, leaves)
    assert y_fast.shape == y_ref.shape and y_fast.dtype == y_ref.dtype
    errors = {"y": rel_err(y_fast.cpu(), y_ref.cpu())}
    errors.update({k: rel_err(a.cpu(), b.cpu()) for k, a, b in zip(names, g_fast, g_ref)})
    assert all(e <= TOL for e in errors.values()), errors


@pytest.mark.parametrize("batch,dim,length,n,groups,softplus", [
    (1, 3, 1, 1, 1, True),
    (2, 6, 7, 16, 2, True),
    (1, 5, 130, 5, 1, True),     # three chunks of 64, the last one partial
    (2, 9, 65, 3, 3, False),
])
def test_selective_scan_matches_reference(batch, dim, length, n, groups, softplus):
    from medmamba.ops.scan_triton import selective_scan_triton
    from medmamba.ops.selective_scan import selective_scan_reference
    x = inputs(batch, dim, length, n, groups, seed=length)
    if not softplus:
        with torch.no_grad():
            x["delta"].abs_()
            x["delta_bias"].abs_()
    leaves = [x[k].detach().to(DEVICE).requires_grad_() for k in NAMES]
    z = torch.randn(batch, dim, length, device=DEVICE, requires_grad=True)

    def call(scan):
        return lambda *a: scan(*a[:6], z=a[7], delta_bias=a[6], delta_softplus=softplus)
    check(call(selective_scan_reference), call(selective_scan_triton), leaves + [z], NAMES + ["z"])


def test_without_D_and_bias():
    from medmamba.ops.scan_triton import selective_scan_triton
    from medmamba.ops.selective_scan import selective_scan_reference
    x = inputs(2, 4, 9, 4, 2, with_D=False, with_bias=False, seed=1)
    leaves = [x[k].detach().to(DEVICE).requires_grad_() for k in NAMES[:5]]
    check(lambda *a: selective_scan_reference(*a, delta_softplus=True),
          lambda *a: selective_scan_triton(*a, delta_softplus=True), leaves, NAMES[:5])


@pytest.mark.parametrize("height,width", [(1, 1), (3, 5), (9, 13), (7, 2)])
def test_cross_scan_fused_matches_reference(height, width):
    from medmamba.ops.scan_triton import cross_selective_scan_triton
    g = torch.Generator().manual_seed(height * 100 + width)
    batch, dim, n = 2, 3, 16
    leaves = [torch.randn(batch, dim, height, width, generator=g),
              torch.randn(batch, 4, dim, height, width, generator=g) * 0.5,
              -torch.rand(4 * dim, n, generator=g) * 3,
              torch.randn(batch, 4, n, height, width, generator=g),
              torch.randn(batch, 4, n, height, width, generator=g),
              torch.randn(4 * dim, generator=g), torch.randn(4 * dim, generator=g)]
    leaves = [t.to(DEVICE).requires_grad_() for t in leaves]

    def ref(x, delta, A, B, C, D, bias):
        return cross_selective_scan(x, delta, A, B, C, D=D, delta_bias=bias, delta_softplus=True, backend="reference")

    def fast(x, delta, A, B, C, D, bias):
        return cross_selective_scan_triton(x, delta, A, B, C, D=D, delta_bias=bias, delta_softplus=True)
    check(ref, fast, leaves, ["x", "delta", "A", "B", "C", "D", "bias"])


def test_bf16_inputs_keep_float32_state():
    from medmamba.ops.scan_triton import cross_selective_scan_triton
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 5, 6, generator=g).to(DEVICE, torch.bfloat16)
    delta = (torch.randn(1, 4, 4, 5, 6, generator=g) * 0.5).to(DEVICE, torch.bfloat16)
    B = torch.randn(1, 4, 8, 5, 6, generator=g).to(DEVICE, torch.bfloat16)
    C = torch.randn(1, 4, 8, 5, 6, generator=g).to(DEVICE, torch.bfloat16)
    A = (-torch.rand(16, 8, generator=g)).to(DEVICE)
    y = cross_selective_scan_triton(x, delta, A, B, C, delta_softplus=True)
    ref = cross_selective_scan(x.float(), delta.float(), A, B.float(), C.float(), delta_softplus=True,
                               backend="reference")
    assert y.dtype == torch.float32
    assert rel_err(y.cpu(), ref.cpu()) <= 1e-5  # same bf16 values, float32 arithmetic on both sides


def test_torch_compile_fullgraph_with_triton_backend():
    # The kernels are custom ops: torch.compile keeps them whole, with no graph break (fullgraph=True).
    from medmamba.models.medmamba import SS2D
    torch.manual_seed(0)
    block = SS2D(d_model=8, d_state=4, scan_backend="triton").to(DEVICE)
    x = torch.randn(2, 5, 6, 8, device=DEVICE, requires_grad=True)
    eager = block(x)
    (g_eager,) = torch.autograd.grad(eager.sum(), x)
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager" if DEVICE == "cpu" else "inductor")
    out = compiled(x)
    (g_comp,) = torch.autograd.grad(out.sum(), x)
    assert rel_err(out.detach().cpu(), eager.detach().cpu()) <= 1e-5
    assert rel_err(g_comp.cpu(), g_eager.cpu()) <= 1e-5
