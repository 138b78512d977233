"""Fused CPU selective scan (numba), forward and backward; tested against ``selective_scan_reference``.

One kernel serves both entry points. A *row* is one (channel, direction) sequence; it reads its input
channel ``u[b, :, row % Du]`` and its group's B and C at the pixel ``order[group, step]``, so SS2D's four
scan directions are read straight from the map and merged in place. Every tensor is pixel-major,
channels last: u and y (batch, L, Du), delta (batch, L, rows), B and C (batch, L, groups, N). That is the
layout SS2D's linear projections produce and its LayerNorm reads, so the model makes no transposed copy
around the scan, and the kernel's own transposes into (L, rows) blocks read whole rows of memory.

* ``selective_scan_cpu``: mamba_ssm's 1-D layout (transposed on the way in and out), one row per
  channel, identity order.
* ``cross_selective_scan_cpu``: 4 rows per channel (one per direction, each its own group), output summed.

Speed notes. The SIMD lanes are rows, not the N states: a block of up to BLOCK_ROWS rows of one group is
transposed into (L, rows) buffers and every inner loop runs over the block's rows, with B and C of the
step broadcast. The state dimension (16) is too short a loop for LLVM: vectorised 16 wide and
interleaved twice, a 16-state loop ran entirely in the 4-wide remainder, and per-step overhead
(index arithmetic, run-time overlap checks) was paid by every row; in a block it is paid once for all
rows. Every inner loop indexes with its own loop variable on a slice taken before the loop: ``a[c0 + r]``
makes numba wrap negative indices, and LLVM then leaves the loop scalar (the per-(row, step) loops ran
6-10x slower that way). exp and softplus are polynomials for float32 because pip's numba has no vector
math library (torch's own softplus ran at 6 ns an element here). Both passes are parallel over (batch, block of
channels), a task taking the block's rows of every direction; the forward keeps the state every SEGMENT
steps, and the backward, each task accumulating its own dB/dC so there are no races, rebuilds one segment
of states at a time instead of storing all (batch, dim, L, N) of them.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from functools import lru_cache

import numba
import numpy as np
import torch
from llvmlite import ir
from numba import njit, prange, types
from numba.core.extending import intrinsic, overload

from .cross_scan import NUM_DIRECTIONS, scan_order
from .scan_reference import compute_dtype, finish_scan, pixel_rows

BLOCK_ROWS = 64  # rows per block, the SIMD lanes of every inner loop; fewer when that leaves threads idle
SEGMENT = 64  # steps rebuilt at a time in the backward
_LOG2E = 1.4426950408889634
# Not 'nnan'/'ninf': NaN and overflow must still propagate and compare as in the reference.
_FASTMATH = {"reassoc", "contract", "nsz", "arcp"}
_JIT = dict(cache=True, error_model="numpy", fastmath=_FASTMATH)


@intrinsic
def _pow2_biased(typingctx, k):
    """2.0 ** (k - 128) as float32 for an int32 k in [2, 255], by writing k - 1 into the exponent bits.

    Written in LLVM IR so the integer work stays 32 bits wide: numba widens int32 arithmetic to int64, and
    AVX2 has no vector int64 -> float32 conversion, so the widened version made LLVM compute exp one lane at
    a time on AVX2 machines (AVX-512 has the conversion, which hid this there)."""
    if k != types.int32:
        return None

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        bits = builder.shl(builder.sub(args[0], ir.Constant(i32, 1)), ir.Constant(i32, 23))
        return builder.bitcast(bits, ir.FloatType())
    return types.float32(k), codegen


@intrinsic
def _unbias(typingctx, k):
    """float32(k - 128) for an int32 k, subtracted as integers: as float32 arithmetic, ``y - (float(k) - 128)``
    may be reassociated (fastmath) into ``(y + 128) - float(k)``, which rounds y to 2**-17."""
    if k != types.int32:
        return None

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        return builder.sitofp(builder.sub(args[0], ir.Constant(i32, 128)), ir.FloatType())
    return types.float32(k), codegen


@intrinsic
def _trunc_int32(typingctx, x):
    """int32(x) for a float32 x, as one 32-bit conversion (vectorisable on AVX2; see _pow2_biased)."""
    if x != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.fptosi(args[0], ir.IntType(32))
    return types.int32(x), codegen


def _exp(x):
    """exp, vectorisable for float32; math.exp for float64, where gradient checks need full accuracy."""


@overload(_exp, jit_options=_JIT)
def _exp_impl(x):
    if x == types.float32:
        def exp32(x):
            # Cephes expf: exp(x) = 2**k * exp(r), |r| <= ln2 / 2, degree-6 polynomial; ~1 ulp.
            x = min(max(x, np.float32(-87.3)), np.float32(88.3))
            # k + 128, truncated from a positive number (so rounded to nearest), kept int32 throughout
            biased = _trunc_int32(x * np.float32(1.44269504) + np.float32(128.5))
            kf = np.float32(biased) - np.float32(128.0)
            r = x - kf * np.float32(0.693359375) + kf * np.float32(2.12194440e-4)
            p = np.float32(1.9875691500e-4)
            p = p * r + np.float32(1.3981999507e-3)
            p = p * r + np.float32(8.3334519073e-3)
            p = p * r + np.float32(4.1665795894e-2)
            p = p * r + np.float32(1.6666665459e-1)
            p = p * r + np.float32(5.0000001201e-1)
            return (p * r * r + r + np.float32(1.0)) * _pow2_biased(biased)
        return exp32
    return lambda x: math.exp(x)


def _exp2(y):
    """2 ** y, vectorisable for float32. The scan's exp(delta A) is taken as exp2(delta (A log2 e)), as
    mamba_ssm's CUDA kernel does: log2 e folded into A once per row saves the range reduction's
    two-constant correction at every (step, state, row): 13 vector operations instead of 15
    (counted in benchmarks/cpu_vs_cnn.py; BENCHMARKS.md times the change)."""


@overload(_exp2, jit_options=_JIT)
def _exp2_impl(y):
    if y == types.float32:
        def exp2_32(y):
            # 2**y = 2**k * 2**f, k = round(y), |f| <= 1/2 (exact: Sterbenz), degree-6 fit of 2**f (relative
            # error 1.9e-9; at most 7.9e-8 in float32, against 1.2e-7 for exp32: tests/test_scan_cpu.py).
            y = min(max(y, np.float32(-126.0)), np.float32(127.0))
            biased = _trunc_int32(y + np.float32(128.5))  # k + 128, as in exp32
            f = y - _unbias(biased)
            p = np.float32(1.534581242594868e-4)
            p = p * f + np.float32(1.3399930903688073e-3)
            p = p * f + np.float32(9.618489071726799e-3)
            p = p * f + np.float32(5.550328642129898e-2)
            p = p * f + np.float32(0.24022646248340607)
            p = p * f + np.float32(0.6931471824645996)
            return (p * f + np.float32(1.0)) * _pow2_biased(biased)
        return exp2_32
    return lambda y: math.exp(y * 0.6931471805599453)


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
def _step_size(v, zero, softplus):
    """softplus(v) (or v) without overflow; vectorisable (torch's scalar softplus costs 6 ns an element).
    ``zero`` carries the dtype, so float32 stays float32."""
    if softplus:
        return (v if v > zero else zero) + _softplus_tail(v)
    return v


@njit(inline="always", **_JIT)
def _sigmoid(v, one):
    """d softplus(v) / dv."""
    return one / (one + _exp(-v))


@njit(inline="always", **_JIT)
def _block_layout(n_u, n_rows, groups, rows):
    """Blocks of <= rows consecutive channels whose rows of each direction lie in one group.

    Returns (span, blocks per span): channels [k * span, (k + 1) * span) share a group in every direction.
    """
    span = min(n_rows // groups, n_u)
    return span, (span + rows - 1) // rows


@njit(inline="always", **_JIT)
def _columns_in(src, c0, out):
    """out[p, r] = src[p, c0 + r]: a block of rows with the rows side by side, the SIMD lanes."""
    for p in range(out.shape[0]):
        row, o = src[p, c0:c0 + out.shape[1]], out[p]
        for r in range(o.shape[0]):
            o[r] = row[r]


@njit(inline="always", **_JIT)
def _step_sizes_in(delta, bias, row0, softplus, out):
    """out[p, r] = softplus(delta[p, row0 + r] + bias[row0 + r]) (or without softplus): no (batch, L, rows)
    tensor of step sizes is ever allocated."""
    zero = out.dtype.type(0.0)
    nr = out.shape[1]
    bias = bias[row0:row0 + nr]
    for p in range(out.shape[0]):
        row, o = delta[p, row0:row0 + nr], out[p]
        for r in range(nr):
            o[r] = _step_size(row[r] + bias[r], zero, softplus)


@njit(inline="always", **_JIT)
def _row_params(A, D, row0, log2e, aT, a2T, d_sum):
    """The block's A as state tiles, aT[n, r] = A[row0 + r, n] and a2T = aT log2(e) (unless aT is empty);
    d_sum[r] += D[row0 + r]."""
    nr = a2T.shape[1]
    a_rows, d_rows = A[row0:row0 + nr], D[row0:row0 + nr]
    for r in range(nr):
        d_sum[r] += d_rows[r]
        a_r = a_rows[r]
        for n in range(a2T.shape[0]):
            a2T[n, r] = a_r[n] * log2e
            if aT.shape[0]:
                aT[n, r] = a_r[n]


@njit(inline="always", **_JIT)
def _dt_x(dts, xs, dtx):
    """dtx = dt x, shared by the step's N states."""
    for r in range(dtx.shape[0]):
        dtx[r] = dts[r] * xs[r]


@njit(inline="always", **_JIT)
def _state_step(b_p, c_p, dts, dtx, a2T, h, ys):
    """One step of every row in the block: h = exp(dt A) h + dt B x, ys += C h (n outer, rows inner).
    a2T is A log2(e), so that exp(dt A) = exp2(dt a2)."""
    for n in range(a2T.shape[0]):
        bn, cn = b_p[n], c_p[n]
        hn, a2n = h[n], a2T[n]
        for r in range(hn.shape[0]):
            v = _exp2(dts[r] * a2n[r]) * hn[r] + dtx[r] * bn
            hn[r] = v
            ys[r] += cn * v


@njit(parallel=True, **_JIT)
def _scan_fwd(u, delta, A, Bs, Cs, D, bias, softplus, order, rows, y, starts):
    """y[b, p, c] = sum over the rows reading channel c of that row's scan output at pixel p, + D x.

    A task owns one block of channels of one batch element and all their rows, direction by direction,
    so no two tasks write the same y. Unless ``starts`` is empty, the state at the start of every
    SEGMENT steps is kept there for the backward, (batch, segments, N, rows): a few KB a row.
    """
    batch, length, n_u = u.shape
    n_rows, n_state = A.shape
    groups = Bs.shape[2]
    rows_per_group = n_rows // groups
    per_channel = n_rows // n_u
    span, per_span = _block_layout(n_u, n_rows, groups, rows)
    n_blocks = (n_u // span) * per_span
    n_segments = (length + SEGMENT - 1) // SEGMENT
    keep = starts.shape[0] > 0
    zero = u.dtype.type(0.0)
    log2e = u.dtype.type(_LOG2E)
    for task in prange(batch * n_blocks):
        b = task // n_blocks
        block = task % n_blocks
        c0 = (block // per_span) * span + (block % per_span) * rows
        nr = min(rows, (block // per_span + 1) * span - c0)
        xT = np.empty((length, nr), u.dtype)
        dtT = np.empty((length, nr), u.dtype)
        yT = np.zeros((length, nr), u.dtype)
        a2T = np.empty((n_state, nr), u.dtype)
        h = np.empty((n_state, nr), u.dtype)
        dtx = np.empty(nr, u.dtype)
        d_sum = np.zeros(nr, u.dtype)
        _columns_in(u[b], c0, xT)
        for direction in range(per_channel):
            row0 = direction * n_u + c0
            g = row0 // rows_per_group
            order_g = order[g]
            _step_sizes_in(delta[b], bias, row0, softplus, dtT)
            _row_params(A, D, row0, log2e, a2T[:0], a2T, d_sum)
            h[:] = zero
            for seg in range(n_segments):
                if keep:
                    for n in range(n_state):
                        kept, hn = starts[b, seg, n, row0:row0 + nr], h[n]
                        for r in range(nr):
                            kept[r] = hn[r]
                for step in range(seg * SEGMENT, min((seg + 1) * SEGMENT, length)):
                    p = order_g[step]
                    _dt_x(dtT[p], xT[p], dtx)
                    _state_step(Bs[b, p, g], Cs[b, p, g], dtT[p], dtx, a2T, h, yT[p])
        for p in range(length):
            y_p, y_t, x_t = y[b, p, c0:c0 + nr], yT[p], xT[p]
            for r in range(nr):
                y_p[r] = y_t[r] + d_sum[r] * x_t[r]


# The backward's per-step work runs as one loop over the block's rows per state. It ran as one loop per
# quantity (so that each touched few arrays), but every loop pays its set-up and its run-time overlap
# checks between the arrays, and over a block's 64 rows that cost as much as the arithmetic: merged, the
# backward took 0.8x the time (BENCHMARKS.md).
@njit(inline="always", **_JIT)
def _recompute_step(b_p, dts, dtx, a2T, h_prev, h_s, da_s):
    """h_s = exp(dt A) h_prev + dt B x, keeping exp(dt A) in da_s."""
    for n in range(a2T.shape[0]):
        a2n, da_n, bn, hp, hn = a2T[n], da_s[n], b_p[n], h_prev[n], h_s[n]
        for r in range(a2n.shape[0]):
            d = _exp2(dts[r] * a2n[r])
            da_n[r] = d
            hn[r] = d * hp[r] + dtx[r] * bn


@njit(inline="always", **_JIT)
def _reverse_step(b_p, c_p, dts, dtx, gys, aT, h_prev, h_s, da_s, carry, dB_s, dC_s, gb, ga, dA_acc):
    """One step of the reverse sweep, every state of every row in the block, in one loop per state:
    the adjoint gh = dy C + carry (dL/dh; carry = exp(dt_{t+1} A) gh_{t+1}), then the step's gradients:
    dB and dC (summed over the block's rows), and per row gb = sum_n gh B (for du and ddelta),
    ga = sum_n gh exp(dt A) h_prev A (for ddelta) and dA. (exp(dt A) h_prev is computed, not taken as
    h - dt x B: that difference is rounding noise where h_prev is 0.)"""
    zero = dts.dtype.type(0.0)
    gb[:] = zero
    ga[:] = zero
    for n in range(aT.shape[0]):
        cn, bn = c_p[n], b_p[n]
        hn, hp, dan, an, cr, dAn = h_s[n], h_prev[n], da_s[n], aT[n], carry[n], dA_acc[n]
        dc = zero
        db = zero
        for r in range(hn.shape[0]):
            g = gys[r] * cn + cr[r]
            cr[r] = g * dan[r]
            dc += gys[r] * hn[r]
            db += g * dtx[r]
            gda = g * hp[r] * dan[r]
            gb[r] += g * bn
            ga[r] += gda * an[r]
            dAn[r] += gda * dts[r]
        dC_s[n] += dc
        dB_s[n] += db


@njit(inline="always", **_JIT)
def _delta_grads(gb, xs, ga, d_in, bias, softplus, dd_out):
    """ddelta = (gb x + ga) times softplus' at delta + bias (or as it is without softplus)."""
    if softplus:
        one = gb.dtype.type(1.0)
        for r in range(gb.shape[0]):
            dd_out[r] = (gb[r] * xs[r] + ga[r]) * _sigmoid(d_in[r] + bias[r], one)
    else:
        for r in range(gb.shape[0]):
            dd_out[r] = gb[r] * xs[r] + ga[r]


@njit(parallel=True, **_JIT)
def _scan_bwd(u, delta, A, Bs, Cs, D, bias, softplus, order, rows, dy, starts_all, du, ddelta, dA_b, dD_b, dB_p,
              dC_p):
    """Gradients. A task owns what a forward task owns, one block of channels of one batch element with all
    their rows, so it writes du of its channels whole (its directions summed in the task: no (batch, L, rows)
    gradient to fold afterwards), ddelta, dA and dD of its rows, and its own partial dB and dC
    (dB_p[b, block]), summed over the blocks afterwards.

    Per direction, the reverse sweep rebuilds one SEGMENT of states at a time from the segment starts the
    forward kept, instead of storing all (batch, rows, L, N) of them, then walks it backwards once: the
    adjoint gh and every gradient of a step in one pass, so gh is never stored.
    """
    batch, length, n_u = u.shape
    n_rows, n_state = A.shape
    groups = Bs.shape[2]
    rows_per_group = n_rows // groups
    per_channel = n_rows // n_u
    span, per_span = _block_layout(n_u, n_rows, groups, rows)
    n_blocks = (n_u // span) * per_span
    n_segments = (length + SEGMENT - 1) // SEGMENT
    zero = u.dtype.type(0.0)
    log2e = u.dtype.type(_LOG2E)
    for task in prange(batch * n_blocks):
        b = task // n_blocks
        block = task % n_blocks
        c0 = (block // per_span) * span + (block % per_span) * rows
        nr = min(rows, (block // per_span + 1) * span - c0)
        dB, dC = dB_p[b, block], dC_p[b, block]
        xT = np.empty((length, nr), u.dtype)
        dyT = np.empty((length, nr), u.dtype)
        dtT = np.empty((length, nr), u.dtype)
        duT = np.zeros((length, nr), u.dtype)
        aT = np.empty((n_state, nr), u.dtype)
        a2T = np.empty((n_state, nr), u.dtype)
        h0 = np.empty((n_state, nr), u.dtype)
        hs = np.empty((SEGMENT, n_state, nr), u.dtype)
        das = np.empty((SEGMENT, n_state, nr), u.dtype)
        carry = np.empty((n_state, nr), u.dtype)
        dA_acc = np.empty((n_state, nr), u.dtype)
        dD_acc = np.zeros(nr, u.dtype)
        d_sum = np.zeros(nr, u.dtype)
        dtx = np.empty(nr, u.dtype)
        gb = np.empty(nr, u.dtype)
        ga = np.empty(nr, u.dtype)
        _columns_in(u[b], c0, xT)
        _columns_in(dy[b], c0, dyT)
        for direction in range(per_channel):
            row0 = direction * n_u + c0
            g = row0 // rows_per_group
            order_g = order[g]
            bias_rows = bias[row0:row0 + nr]
            _step_sizes_in(delta[b], bias, row0, softplus, dtT)
            _row_params(A, D, row0, log2e, aT, a2T, d_sum)
            carry[:] = zero
            dA_acc[:] = zero
            for seg in range(n_segments - 1, -1, -1):
                start = seg * SEGMENT
                stop = min(start + SEGMENT, length)
                for n in range(n_state):
                    kept, h0n = starts_all[b, seg, n, row0:row0 + nr], h0[n]
                    for r in range(nr):
                        h0n[r] = kept[r]
                for k in range(stop - start):
                    p = order_g[start + k]
                    _dt_x(dtT[p], xT[p], dtx)
                    _recompute_step(Bs[b, p, g], dtT[p], dtx, a2T, hs[k - 1] if k > 0 else h0, hs[k], das[k])
                for k in range(stop - start - 1, -1, -1):
                    p = order_g[start + k]
                    dts, xs, gys = dtT[p], xT[p], dyT[p]
                    _dt_x(dts, xs, dtx)
                    _reverse_step(Bs[b, p, g], Cs[b, p, g], dts, dtx, gys, aT, hs[k - 1] if k > 0 else h0, hs[k],
                                  das[k], carry, dB[p, g], dC[p, g], gb, ga, dA_acc)
                    du_p = duT[p]
                    for r in range(nr):
                        du_p[r] += gb[r] * dts[r]
                    _delta_grads(gb, xs, ga, delta[b, p, row0:row0 + nr], bias_rows, softplus,
                                 ddelta[b, p, row0:row0 + nr])
            for r in range(nr):
                for n in range(n_state):
                    dA_b[b, row0 + r, n] = dA_acc[n, r]
        for p in range(length):
            gys, xs, du_t, du_p = dyT[p], xT[p], duT[p], du[b, p, c0:c0 + nr]
            for r in range(nr):
                dD_acc[r] += gys[r] * xs[r]
            for r in range(nr):
                du_p[r] = du_t[r] + d_sum[r] * gys[r]
        for direction in range(per_channel):  # every direction of a channel reads the same x and dy
            for r in range(nr):
                dD_b[b, direction * n_u + c0 + r] = dD_acc[r]


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy()


@contextmanager
def _torch_threads():
    """Run numba's parallel kernels on the threads torch is allowed (torch.set_num_threads), and leave
    torch's setting as it was: numba's OpenMP layer resets the calling thread's OpenMP thread count to
    its whole pool, which silently doubled the threads of a run with threads=1 on this machine."""
    threads = torch.get_num_threads()
    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    try:
        yield numba.get_num_threads()
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


def _block_rows(batch: int, n_u: int, n_rows: int, groups: int, threads: int) -> int:
    """The widest block (64, 32 or 16 rows) that still gives every thread two forward tasks."""
    span = min(n_rows // groups, n_u)
    for rows in (BLOCK_ROWS, BLOCK_ROWS // 2):
        if batch * (n_u // span) * -(-span // rows) >= 2 * threads:
            return rows
    return BLOCK_ROWS // 4


def _forward(u, delta, A, B, C, D, bias, order, softplus, threads, keep_states):
    """The forward kernel on pixel-major numpy arrays: (y, the states kept for the backward, rows per block)."""
    batch, length, n_u = u.shape
    rows = _block_rows(batch, n_u, delta.shape[2], B.shape[2], threads)
    y = np.empty_like(u)
    shape = (batch, -(-length // SEGMENT), A.shape[1], delta.shape[2]) if keep_states else (0, 0, 0, 0)
    starts = np.empty(shape, u.dtype)
    _scan_fwd(u, delta, A, B, C, D, bias, softplus, order, rows, y, starts)
    return y, starts, rows


def cross_selective_scan_numpy(u, delta, A, B, C, D, bias, height, width, softplus):
    """SS2D's scan (forward only) on numpy arrays, pixel-major as ``pixel_rows`` lays them out; no torch
    tensors in or out. This is what ``scan_onnx``'s ONNX node runs inside onnxruntime."""
    args = [np.ascontiguousarray(a) for a in (u, delta, A, B, C, D, bias)]
    y, _, _ = _forward(*args, _cross_orders(height, width).numpy(), bool(softplus), numba.get_num_threads(),
                       keep_states=False)
    return y


class _FusedScan(torch.autograd.Function):
    """Pixel-major: u (batch, L, Du); delta (batch, L, rows); A (rows, N); B, C (batch, L, groups, N);
    D, bias (rows,); order (groups, L) int32. Returns (batch, L, Du): each channel's rows summed."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, bias, order, softplus):
        with _torch_threads() as threads:
            y, starts, rows = _forward(*(_np(t) for t in (u, delta, A, B, C, D, bias, order)), softplus, threads,
                                       keep_states=any(ctx.needs_input_grad))
        y, starts = torch.from_numpy(y), torch.from_numpy(starts)
        ctx.save_for_backward(u, delta, A, B, C, D, bias, order, starts)
        ctx.softplus = softplus
        ctx.rows = rows
        return y

    @staticmethod
    def backward(ctx, dy):
        u, delta, A, B, C, D, bias, order, starts = ctx.saved_tensors
        batch, length, n_u = u.shape
        n_rows, n_state = A.shape
        groups = B.shape[2]
        span = min(n_rows // groups, n_u)
        n_blocks = (n_u // span) * -(-span // ctx.rows)
        du = torch.empty_like(u)
        ddelta = torch.empty_like(delta)
        dA_b = torch.empty(batch, n_rows, n_state, dtype=u.dtype)
        dD_b = torch.empty(batch, n_rows, dtype=u.dtype)
        dB_p = torch.zeros(batch, n_blocks, length, groups, n_state, dtype=u.dtype)
        dC_p = torch.zeros_like(dB_p)
        with _torch_threads():
            _scan_bwd(*(_np(t) for t in (u, delta, A, B, C, D, bias)), ctx.softplus, _np(order), ctx.rows,
                      _np(dy.contiguous()), _np(starts), _np(du), _np(ddelta), _np(dA_b), _np(dD_b), _np(dB_p),
                      _np(dC_p))
        return du, ddelta, dA_b.sum(0), dB_p.sum(1), dC_p.sum(1), dD_b.sum(0), ddelta.sum((0, 1)), None, None


def _run(u, delta, A, B, C, D, delta_bias, order, softplus):
    """The kernel on pixel-major u (batch, L, Du), delta (batch, L, rows), B, C (batch, L, groups, N)."""
    ct = compute_dtype(u.dtype)
    rows = delta.shape[2]
    D = u.new_zeros(rows, dtype=ct) if D is None else D
    delta_bias = u.new_zeros(rows, dtype=ct) if delta_bias is None else delta_bias
    args = [t.to(ct).contiguous() for t in (u, delta, A, B, C, D, delta_bias)]
    return _FusedScan.apply(*args, order, bool(softplus))


# The orders are cached, and made outside inference mode: one made under torch.inference_mode (a first
# prediction) could not be saved for a later backward (training in the same process).
@lru_cache(maxsize=64)
def _cross_orders(height: int, width: int) -> torch.Tensor:
    with torch.inference_mode(False):
        return torch.stack([scan_order(k, height, width) for k in range(NUM_DIRECTIONS)]).to(torch.int32)


@lru_cache(maxsize=64)
def _identity_orders(groups: int, length: int) -> torch.Tensor:
    with torch.inference_mode(False):
        return torch.arange(length, dtype=torch.int32).expand(groups, length).contiguous()


def selective_scan_cpu(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """``selective_scan`` on CPU tensors: same arguments and result as the reference."""
    y = _run(u.transpose(1, 2), delta.transpose(1, 2), A, B.permute(0, 3, 1, 2), C.permute(0, 3, 1, 2), D,
             delta_bias, _identity_orders(B.shape[1], u.shape[2]), delta_softplus)
    return finish_scan(y.transpose(1, 2), u, None, z, u.dtype)  # D is added in the kernel


def cross_selective_scan_cpu(x, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False):
    """``cross_selective_scan`` on CPU tensors, the four directions fused in one kernel call. Returns
    (batch, dim, H, W) laid out channels last; inputs that already are (as SS2D makes them) are not copied."""
    u, delta, B, C = pixel_rows(x, delta, B, C)
    batch, dim, height, width = x.shape
    y = _run(u, delta, A, B, C, D, delta_bias, _cross_orders(height, width), delta_softplus)
    return y.view(batch, height, width, dim).permute(0, 3, 1, 2)
