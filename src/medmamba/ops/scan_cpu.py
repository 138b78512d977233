"""Fused CPU selective scan (numba), forward and backward; tested against ``selective_scan_reference``.

One kernel serves both entry points. A *row* is one (channel, direction) sequence; it reads its input
channel ``u[b, row % Du]`` and its group's B and C at the pixel ``order[group, step]``, so SS2D's four
scan directions are read straight from the (B, D, H, W) map and merged in place:

* ``selective_scan_cpu``: mamba_ssm's 1-D layout, one row per channel, identity order.
* ``cross_selective_scan_cpu``: 4 rows per channel (one per direction, each its own group), output summed.

Speed notes. The loops over the N-wide state have a run-time trip count: LLVM vectorises those, while
a constant 8 or 16 gets fully unrolled first and then stays scalar (measured: 0.52 vs 2.5 ns per state
update). N is zero-padded to a multiple of ``LANES`` (A = 0, B = C = 0 keeps padded states at exactly 0)
so the vector body needs no remainder. exp and softplus are polynomials for float32 because pip's numba
has no vector math library (torch's own softplus ran at 6 ns an element here). The forward is parallel
over (batch, block of channels) and keeps the state every SEGMENT steps; the backward is parallel over
(batch, group, chunk of rows), each task accumulating its own dB/dC so there are no races, and it
rebuilds one segment of states at a time into L1-sized buffers instead of storing all
(batch, dim, L, N) of them.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numba
import numpy as np
import torch
from llvmlite import ir
from numba import njit, prange, types
from numba.core.extending import intrinsic, overload

from .cross_scan import NUM_DIRECTIONS, scan_order
from .selective_scan import compute_dtype, finish_scan

LANES = 8
CHANNELS = 16  # channels per forward task
SEGMENT = 128  # steps rebuilt at a time in the backward: 2 x 128 x 16 floats stay in L1
# Not 'nnan'/'ninf': NaN and overflow must still propagate and compare as in the reference.
_FASTMATH = {"reassoc", "contract", "nsz", "arcp"}
_JIT = dict(cache=True, error_model="numpy", fastmath=_FASTMATH)


@intrinsic
def _int_bits_as_float32(typingctx, bits):
    """The float32 whose bit pattern is the low 32 bits of an integer (numba widens int32 arithmetic)."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        value = args[0]
        if value.type.width > 32:
            value = builder.trunc(value, ir.IntType(32))
        return builder.bitcast(value, ir.FloatType())
    return types.float32(bits), codegen


def _exp(x):
    """exp, vectorisable for float32; math.exp for float64, where gradient checks need full accuracy."""


@overload(_exp, jit_options=_JIT)
def _exp_impl(x):
    if x == types.float32:
        def exp32(x):
            # Cephes expf: exp(x) = 2**k * exp(r), |r| <= ln2 / 2, degree-6 polynomial; ~1 ulp.
            x = min(max(x, np.float32(-87.3)), np.float32(88.3))
            k = np.int32(x * np.float32(1.44269504) + np.float32(128.5)) - np.int32(128)
            kf = np.float32(k)
            r = x - kf * np.float32(0.693359375) + kf * np.float32(2.12194440e-4)
            p = np.float32(1.9875691500e-4)
            p = p * r + np.float32(1.3981999507e-3)
            p = p * r + np.float32(8.3334519073e-3)
            p = p * r + np.float32(4.1665795894e-2)
            p = p * r + np.float32(1.6666665459e-1)
            p = p * r + np.float32(5.0000001201e-1)
            return (p * r * r + r + np.float32(1.0)) * _int_bits_as_float32((k + np.int32(127)) << np.int32(23))
        return exp32
    return lambda x: math.exp(x)


def _softplus_tail(v):
    """log(1 + exp(-|v|)), so that softplus(v) = max(v, 0) + _softplus_tail(v) never overflows."""


@overload(_softplus_tail, jit_options=_JIT)
def _softplus_tail_impl(v):
    if v == types.float32:
        f = np.float32

        def tail32(v):
            # log1p(t), t = exp(-|v|) in (0, 1], vectorisable (libm's log1p is not): a series below 0.1,
            # Cephes logf of w = 1 + t above (where rounding 1 + t costs at most 6e-7 relative).
            t = _exp(-v if v > f(0.0) else v)
            series = f(0.0)
            for k in range(8, 0, -1):
                series = series * t + (f(1.0) if k % 2 else f(-1.0)) / f(k)
            series *= t
            w = t + f(1.0)
            big = w > f(1.41421356)
            m = w * f(0.5) if big else w
            e = f(1.0) if big else f(0.0)
            x = m - f(1.0)
            z = x * x
            y = f(7.0376836292e-2)
            y = y * x - f(1.1514610310e-1)
            y = y * x + f(1.1676998740e-1)
            y = y * x - f(1.2420140846e-1)
            y = y * x + f(1.4249322787e-1)
            y = y * x - f(1.6668057665e-1)
            y = y * x + f(2.0000714765e-1)
            y = y * x - f(2.4999993993e-1)
            y = y * x + f(3.3333331174e-1)
            y = x * z * y - f(2.12194440e-4) * e - f(0.5) * z
            return series if t < f(0.1) else x + y + f(0.693359375) * e
        return tail32
    return lambda v: math.log1p(math.exp(-abs(v)))


@njit(inline="always", **_JIT)
def _step_sizes(delta_row, bias, softplus, out):
    """out = softplus(delta_row + bias) (or delta_row + bias), one row at a time so no (batch, rows, L)
    tensor of step sizes is ever allocated; vectorised (torch's scalar softplus costs 6 ns an element)."""
    zero = delta_row.dtype.type(0.0)
    if softplus:
        for i in range(delta_row.shape[0]):
            v = delta_row[i] + bias
            out[i] = (v if v > zero else zero) + _softplus_tail(v)
    else:
        for i in range(delta_row.shape[0]):
            out[i] = delta_row[i] + bias


@njit(inline="always", **_JIT)
def _times_softplus_grad(delta_row, bias, grad_row):
    """grad_row *= d softplus(delta + bias) / d delta = sigmoid(delta + bias)."""
    one = delta_row.dtype.type(1.0)
    for i in range(delta_row.shape[0]):
        grad_row[i] *= one / (one + _exp(-(delta_row[i] + bias)))


@njit(parallel=True, **_JIT)
def _scan_fwd(u, delta, A, Bs, Cs, D, bias, softplus, order, y, starts):
    """y[b, c, p] = sum over the rows reading channel c of that row's scan output at pixel p.

    A task owns CHANNELS channels of one batch element and all their rows, direction by direction, so
    one group's B and C stay in cache while its rows are scanned and no two tasks write the same y.
    Unless ``starts`` is empty, the state at the start of every SEGMENT steps is kept there for the
    backward, (batch, rows, segments, N): a few KB a row instead of the L x N states.
    """
    batch, n_u, length = u.shape
    n_rows, n_state = A.shape
    rows_per_group = n_rows // Bs.shape[1]
    per_channel = n_rows // n_u
    n_blocks = (n_u + CHANNELS - 1) // CHANNELS
    n_segments = (length + SEGMENT - 1) // SEGMENT
    keep = starts.shape[0] > 0
    zero = u.dtype.type(0.0)
    for task in prange(batch * n_blocks):
        b = task // n_blocks
        first = (task % n_blocks) * CHANNELS
        h = np.empty(n_state, u.dtype)
        dts = np.empty(length, u.dtype)
        for r in range(per_channel):
            for c in range(first, min(first + CHANNELS, n_u)):
                row = r * n_u + c
                g = row // rows_per_group
                a = A[row]
                u_row, y_row, b_rows, c_rows, order_g = u[b, c], y[b, c], Bs[b, g], Cs[b, g], order[g]
                _step_sizes(delta[b, row], bias[row], softplus, dts)
                h[:] = zero
                for seg in range(n_segments):
                    if keep:
                        starts[b, row, seg] = h
                    for step in range(seg * SEGMENT, min((seg + 1) * SEGMENT, length)):
                        p = order_g[step]
                        dt = dts[p]
                        x = u_row[p]
                        dtx = dt * x
                        b_p, c_p = b_rows[p], c_rows[p]
                        acc = zero
                        for n in range(n_state):
                            hn = _exp(dt * a[n]) * h[n] + dtx * b_p[n]
                            h[n] = hn
                            acc += c_p[n] * hn
                        y_row[p] += acc + D[row] * x


@njit(inline="always", **_JIT)
def _recompute(a, b_rows, u_row, dts, order_g, start, stop, h, hs, das):
    """Advance state h over steps [start, stop), keeping each step's state and exp(dt A) in hs/das."""
    for step in range(start, stop):
        p = order_g[step]
        dt = dts[p]
        dtx = dt * u_row[p]
        b_p, h_s, da_s = b_rows[p], hs[step - start], das[step - start]
        for n in range(h.shape[0]):
            da = _exp(dt * a[n])
            hn = da * h[n] + dtx * b_p[n]
            h[n] = hn
            h_s[n] = hn
            da_s[n] = da


@njit(parallel=True, **_JIT)
def _scan_bwd(u, delta, A, Bs, Cs, D, bias, softplus, order, dy, starts_all, n_chunks,
              du_rows, ddelta, dA_b, dD_b, dB_p, dC_p):
    """Gradients; each task owns (batch b, group g, chunk of g's rows) and writes only its own slots.

    The reverse sweep rebuilds one SEGMENT of states at a time, from the segment starts the forward
    kept, into buffers small enough to stay in L1 (keeping all L states spilled out of L2).
    """
    batch, n_u, length = u.shape
    n_rows, n_state = A.shape
    groups = Bs.shape[1]
    rows_per_group = n_rows // groups
    n_segments = (length + SEGMENT - 1) // SEGMENT
    zero = u.dtype.type(0.0)
    for task in prange(batch * groups * n_chunks):
        b = task // (groups * n_chunks)
        g = (task // n_chunks) % groups
        chunk = task % n_chunks
        first = g * rows_per_group + (chunk * rows_per_group) // n_chunks
        last = g * rows_per_group + ((chunk + 1) * rows_per_group) // n_chunks
        hs = np.empty((SEGMENT, n_state), u.dtype)
        das = np.empty((SEGMENT, n_state), u.dtype)
        h = np.empty(n_state, u.dtype)
        carry = np.empty(n_state, u.dtype)
        dA_acc = np.empty(n_state, u.dtype)
        dts = np.empty(length, u.dtype)
        dB = dB_p[b, g, chunk]
        dC = dC_p[b, g, chunk]
        b_rows, c_rows, order_g = Bs[b, g], Cs[b, g], order[g]
        for row in range(first, last):
            c = row % n_u
            a = A[row]
            u_row, dy_row = u[b, c], dy[b, c]
            _step_sizes(delta[b, row], bias[row], softplus, dts)
            starts = starts_all[b, row]
            carry[:] = zero
            dA_acc[:] = zero
            dD = zero
            for seg in range(n_segments - 1, -1, -1):
                start = seg * SEGMENT
                stop = min(start + SEGMENT, length)
                h[:] = starts[seg]
                _recompute(a, b_rows, u_row, dts, order_g, start, stop, h, hs, das)
                for step in range(stop - 1, start - 1, -1):
                    p = order_g[step]
                    dt = dts[p]
                    x = u_row[p]
                    gy = dy_row[p]
                    dD += gy * x
                    dtx = dt * x
                    k = step - start
                    b_p, c_p, h_s, da_s = b_rows[p], c_rows[p], hs[k], das[k]
                    h_prev = hs[k - 1] if k > 0 else starts[seg]
                    dB_s, dC_s = dB[p], dC[p]
                    du = zero
                    ddt = zero
                    for n in range(n_state):
                        gh = gy * c_p[n] + carry[n]
                        dC_s[n] += gy * h_s[n]
                        dB_s[n] += gh * dtx
                        du += gh * b_p[n]
                        gda = gh * h_prev[n] * da_s[n]
                        ddt += gh * b_p[n] * x + gda * a[n]
                        dA_acc[n] += gda * dt
                        carry[n] = gh * da_s[n]
                    du_rows[b, row, p] = D[row] * gy + du * dt
                    ddelta[b, row, p] = ddt
            if softplus:
                _times_softplus_grad(delta[b, row], bias[row], ddelta[b, row])
            dD_b[b, row] = dD
            for n in range(n_state):
                dA_b[b, row, n] = dA_acc[n]


def _padded_state(t: torch.Tensor, n_padded: int) -> torch.Tensor:
    """(batch, groups, N, L) -> (batch, groups, L, N padded) contiguous: the N values of a step adjacent."""
    t = t.transpose(-1, -2)
    if t.shape[-1] != n_padded:
        t = torch.nn.functional.pad(t, (0, n_padded - t.shape[-1]))
    return t.contiguous()


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy()


def _set_threads() -> int:
    """Use the threads torch is allowed (torch.set_num_threads), within numba's pool."""
    threads = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(threads)
    return threads


class _FusedScan(torch.autograd.Function):
    """u: (batch, Du, L); delta: (batch, rows, L); A: (rows, N); B, C: (batch, groups, N, L) in pixel
    order; D, bias: (rows,); order: (groups, L) int32. Returns (batch, Du, L): each channel's rows summed."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, bias, order, softplus):
        n_state = A.shape[1]
        n_padded = -(-n_state // LANES) * LANES
        A_p = torch.nn.functional.pad(A, (0, n_padded - n_state)).contiguous()
        Bs, Cs = _padded_state(B, n_padded), _padded_state(C, n_padded)
        _set_threads()
        y = torch.zeros_like(u)
        n_segments = -(-u.shape[2] // SEGMENT)
        shape = (u.shape[0], delta.shape[1], n_segments, n_padded) if any(ctx.needs_input_grad) else (0, 0, 0, 0)
        starts = torch.empty(shape, dtype=u.dtype)
        _scan_fwd(_np(u), _np(delta), _np(A_p), _np(Bs), _np(Cs), _np(D), _np(bias), softplus, _np(order), _np(y),
                  _np(starts))
        ctx.save_for_backward(u, delta, A_p, Bs, Cs, D, bias, order, starts)
        ctx.softplus = softplus
        ctx.n_state = n_state
        return y

    @staticmethod
    def backward(ctx, dy):
        u, delta, A_p, Bs, Cs, D, bias, order, starts = ctx.saved_tensors
        batch, n_u, length = u.shape
        n_rows, n_padded = A_p.shape
        groups = Bs.shape[1]
        threads = _set_threads()
        # Enough tasks to keep every thread busy, never more chunks than rows in a group.
        n_chunks = max(1, min(n_rows // groups, -(-2 * threads // (batch * groups))))
        du_rows = torch.empty_like(delta)
        ddelta = torch.empty_like(delta)
        dA_b = torch.empty(batch, n_rows, n_padded, dtype=u.dtype)
        dD_b = torch.empty(batch, n_rows, dtype=u.dtype)
        dB_p = torch.zeros(batch, groups, n_chunks, length, n_padded, dtype=u.dtype)
        dC_p = torch.zeros_like(dB_p)
        _scan_bwd(_np(u), _np(delta), _np(A_p), _np(Bs), _np(Cs), _np(D), _np(bias), ctx.softplus, _np(order),
                  _np(dy.contiguous()), _np(starts), n_chunks, _np(du_rows), _np(ddelta), _np(dA_b), _np(dD_b),
                  _np(dB_p), _np(dC_p))
        n = ctx.n_state
        du = du_rows.view(batch, n_rows // n_u, n_u, length).sum(1) if n_rows != n_u else du_rows
        dB = dB_p.sum(2)[..., :n].transpose(-1, -2)
        dC = dC_p.sum(2)[..., :n].transpose(-1, -2)
        return du, ddelta, dA_b.sum(0)[:, :n], dB, dC, dD_b.sum(0), ddelta.sum((0, 2)), None, None


def _run(u, delta, A, B, C, D, delta_bias, order, softplus):
    ct = compute_dtype(u.dtype)
    rows = delta.shape[1]
    D = u.new_zeros(rows, dtype=ct) if D is None else D
    delta_bias = u.new_zeros(rows, dtype=ct) if delta_bias is None else delta_bias
    args = [t.to(ct).contiguous() for t in (u, delta, A, B, C, D, delta_bias)]
    return _FusedScan.apply(*args, order, bool(softplus))


@lru_cache(maxsize=64)
def _cross_orders(height: int, width: int) -> torch.Tensor:
    return torch.stack([scan_order(k, height, width) for k in range(NUM_DIRECTIONS)]).to(torch.int32)


@lru_cache(maxsize=64)
def _identity_orders(groups: int, length: int) -> torch.Tensor:
    return torch.arange(length, dtype=torch.int32).expand(groups, length).contiguous()


def selective_scan_cpu(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """``selective_scan`` on CPU tensors: same arguments and result as the reference."""
    y = _run(u, delta, A, B, C, D, delta_bias, _identity_orders(B.shape[1], u.shape[2]), delta_softplus)
    return finish_scan(y, u, None, z, u.dtype)  # D is added in the kernel


def cross_selective_scan_cpu(x, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False):
    """``cross_selective_scan`` on CPU tensors, the four directions fused in one kernel call."""
    batch, dim, height, width = x.shape
    length = height * width
    return _run(x.reshape(batch, dim, length), delta.reshape(batch, NUM_DIRECTIONS * dim, length), A,
                B.flatten(-2), C.flatten(-2), D, delta_bias, _cross_orders(height, width),
                delta_softplus).view(batch, dim, height, width)
