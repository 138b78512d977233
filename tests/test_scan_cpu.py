"""The fused CPU backend against the reference (and float64): forward and every gradient, awkward shapes."""
import pytest
import torch

from medmamba.ops import cross_selective_scan, selective_scan
from medmamba.ops.selective_scan import BACKENDS

from .helpers import NAMES, assert_backends_agree, direct_recurrence, inputs, rel_err, run


pytestmark = pytest.mark.skipif(not BACKENDS["cpu"].is_available(), reason="numba is not importable")


@pytest.mark.parametrize("length", [1, 7, 64])
@pytest.mark.parametrize("dim,n,groups", [(5, 1, 1), (12, 16, 4), (9, 3, 3)])
@pytest.mark.parametrize("softplus", [False, True])
def test_matches_reference(length, dim, n, groups, softplus):
    x = inputs(2, dim, length, n, groups)
    if not softplus:  # a raw negative step makes exp(delta A) grow without bound in every backend
        with torch.no_grad():
            x["delta"].abs_()
            x["delta_bias"].abs_()
    assert_backends_agree(x, softplus)


@pytest.mark.parametrize("with_D,with_bias", [(False, False), (True, False), (False, True)])
def test_optional_arguments(with_D, with_bias):
    assert_backends_agree(inputs(3, 6, 11, 4, 2, with_D=with_D, with_bias=with_bias), softplus=True)


@pytest.mark.parametrize("block_rows", [64, 16, 4])
@pytest.mark.parametrize("dim,groups", [(100, 1), (100, 4), (37, 1)])
def test_blocks_of_rows(monkeypatch, block_rows, dim, groups):
    """Several blocks of rows, a partial last block, group boundaries inside the channels, and a
    sequence of two full segments and a partial one."""
    from medmamba.ops import scan_cpu
    monkeypatch.setattr(scan_cpu, "BLOCK_ROWS", block_rows)
    assert_backends_agree(inputs(2, dim, 2 * scan_cpu.SEGMENT + 22, 16, groups), softplus=True)


def test_long_sequence_3136():
    assert_backends_agree(inputs(1, 3, 3136, 16, 1), softplus=True)


def test_gate_z():
    x = inputs(2, 4, 9, 5, 2)
    z = torch.randn(2, 4, 9, requires_grad=True)
    assert_backends_agree(x, softplus=True, z=z)


def test_noncontiguous_inputs():
    assert_backends_agree(inputs(2, 6, 13, 4, 2, noncontiguous=True), softplus=True)


def test_large_steps_stay_finite():
    # delta up to 10 (after softplus), A down to -100: exp underflows to 0 and must not give NaN/Inf
    x = inputs(2, 8, 50, 16, 2, delta_scale=10.0, a_scale=100.0)
    with torch.no_grad():
        x["delta"].abs_()
    y, grads = run("cpu", x, softplus=True)
    assert torch.isfinite(y).all() and all(torch.isfinite(g).all() for g in grads.values())
    assert_backends_agree(x, softplus=True)


def test_exp2_within_an_ulp_and_clamped():
    """The kernel's float32 2**y, against float64 over the whole range it serves, and at its edges."""
    import numba
    import numpy as np
    from medmamba.ops.scan_cpu import _exp2

    @numba.njit
    def exp2(y):
        out = np.empty_like(y)
        for i in range(y.size):
            out[i] = _exp2(y[i])
        return out

    y = np.concatenate([np.linspace(-125.0, 126.9, 2_000_001), np.linspace(-2, 2, 100_001)]).astype(np.float32)
    truth = np.exp2(y.astype(np.float64))
    assert np.abs(exp2(y).astype(np.float64) / truth - 1).max() < 1.2e-7  # float32's epsilon
    edges = exp2(np.array([-1e4, -200, 200, 1e4, np.nan], np.float32))
    assert 0 < edges[0] == edges[1] < 1e-37 and np.isfinite(edges[2]) and edges[2] == edges[3] > 1e38
    assert np.isnan(edges[4])


def test_float64_against_direct_recurrence_and_gradcheck():
    x = inputs(1, 4, 6, 3, 2, dtype=torch.float64, seed=3)
    y = selective_scan(**x, delta_softplus=True, backend="cpu")
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, direct_recurrence(**x, delta_softplus=True), rtol=1e-10, atol=1e-10)
    leaves = tuple(x[k] for k in NAMES)
    def f(*args):
        return selective_scan(**dict(zip(NAMES, args)), delta_softplus=True, backend="cpu")
    assert torch.autograd.gradcheck(f, leaves, eps=1e-6, atol=1e-7)


def _laid_out(t, channels_last):
    """t's values, in memory pixel-major (channels last) when asked: the layout SS2D gives the scan."""
    if not channels_last:
        return t
    if t.dim() == 4:  # (b, c, h, w) held as (b, h, w, c)
        return t.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    return t.permute(0, 3, 4, 1, 2).contiguous().permute(0, 3, 4, 1, 2)  # (b, k, c, h, w) held as (b, h, w, k, c)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("height,width,dim", [(1, 1, 5), (3, 5, 5), (8, 8, 5), (7, 2, 5), (9, 11, 70)])
def test_cross_scan_fused_matches_composed_reference(monkeypatch, height, width, dim, channels_last):
    from medmamba.ops import scan_cpu
    monkeypatch.setattr(scan_cpu, "BLOCK_ROWS", 32)  # dim 70: blocks of 32, 32 and 6 channels
    g = torch.Generator().manual_seed(height * 10 + width)
    batch, n = 2, 16

    def r(*shape, scale=1.0):
        return _laid_out(torch.randn(*shape, generator=g) * scale, channels_last).requires_grad_()
    x = r(batch, dim, height, width)
    delta = r(batch, 4, dim, height, width, scale=0.5)
    A = (-torch.rand(4 * dim, n, generator=g) * 3).requires_grad_()
    B = r(batch, 4, n, height, width)
    C = r(batch, 4, n, height, width)
    if channels_last and height * width > 1:
        # SS2D's layout reaches the kernel as views of the same memory, not copies, and y comes back in it
        from medmamba.ops.scan_reference import pixel_rows
        assert [t.data_ptr() for t in pixel_rows(x, delta, B, C)] == [t.data_ptr() for t in (x, delta, B, C)]
        assert all(t.is_contiguous() for t in pixel_rows(x, delta, B, C))
        with torch.no_grad():
            y = cross_selective_scan(x, delta, A, B, C, delta_softplus=True, backend="cpu")
        assert y.permute(0, 2, 3, 1).is_contiguous()
    D = torch.randn(4 * dim, generator=g).requires_grad_()
    bias = torch.randn(4 * dim, generator=g).requires_grad_()
    leaves = [x, delta, A, B, C, D, bias]
    outs = {}
    for backend in ("reference", "cpu"):
        y = cross_selective_scan(x, delta, A, B, C, D=D, delta_bias=bias, delta_softplus=True, backend=backend)
        gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
        outs[backend] = (y, torch.autograd.grad(y, leaves, gy))
    (y_ref, g_ref), (y_cpu, g_cpu) = outs["reference"], outs["cpu"]
    assert y_cpu.shape == (batch, dim, height, width)
    assert rel_err(y_cpu, y_ref) <= 1e-5
    for name, a, b in zip(["x", "delta", "A", "B", "C", "D", "bias"], g_cpu, g_ref):
        assert rel_err(a, b) <= 1e-5, name


def test_torch_thread_setting_survives_the_kernels():
    """numba's OpenMP layer resets the caller's OpenMP thread count; a threads=1 run must stay at 1."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        x = inputs(2, 6, 9, 4, 2)
        run("cpu", x, softplus=True)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_a_prediction_before_training_in_the_same_process():
    """The kernel's cached scan orders, first made under torch.inference_mode, must still serve a backward."""
    from medmamba.ops import scan_cpu
    scan_cpu._cross_orders.cache_clear()
    x = torch.randn(1, 3, 5, 6)
    args = (torch.randn(1, 4, 3, 5, 6), -torch.rand(12, 2), torch.randn(1, 4, 2, 5, 6), torch.randn(1, 4, 2, 5, 6))
    with torch.inference_mode():
        cross_selective_scan(x, *args, backend="cpu")
    x.requires_grad_()
    cross_selective_scan(x, *args, backend="cpu").sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
