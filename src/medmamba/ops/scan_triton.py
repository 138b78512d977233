"""Triton selective scan for CUDA tensors, forward and backward; tested against ``selective_scan_reference``
(on CPU in Triton's interpreter, ``TRITON_INTERPRET=1``).

As in the CPU backend, a *row* is one (channel, direction) sequence. In cross mode (SS2D) row
``k * D + c`` reads channel c of the (B, D, H, W) map in direction k's order, computed from the step index,
so no scanned copies are made, and the four directions are merged into y with atomic adds.

Each program owns ``BLOCK_D`` rows of one group and walks L in chunks of ``BLOCK_L`` steps; within a chunk
the recurrence h_t = a_t h_{t-1} + b_t is an associative scan over (a, b) pairs, with the state carried
between chunks in float32 whatever the input dtype. The backward recomputes: the forward stores only
the state at each chunk start; the reverse sweep rebuilds each chunk's states from it and runs the
adjoint recurrence q_t = gy_t C_t + a_{t+1} q_{t+1} as a reverse scan. It never needs h_{t-1} itself,
because a_t h_{t-1} = h_t - b_t. dB and dC are summed over the program's rows in registers and added
once per chunk.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .scan_reference import compute_dtype, finish_scan, fold_rows, fused_rows


@triton.jit
def _combine(a1, b1, a2, b2):
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _pixel(step, direction, H, W, L, CROSS: tl.constexpr):
    """Pixel (row-major index) read at ``step`` by ``direction``; identity outside cross mode."""
    if CROSS:
        t = tl.where(direction >= 2, L - 1 - step, step)
        col_major = (direction % 2) == 1
        return tl.where(col_major, (t % H) * W + t // H, t)
    else:
        return step


@triton.jit
def _step_size(v, SOFTPLUS: tl.constexpr):
    if SOFTPLUS:
        e = tl.exp(tl.minimum(v, 20.0))
        # log(1 + e) loses tiny e to rounding; its series keeps them.
        return tl.where(v > 20.0, v, tl.where(e < 1e-4, e - 0.5 * e * e, tl.log(1.0 + e)))
    else:
        return v


@triton.jit
def _chunk_inputs(u_ptr, delta_ptr, B_ptr, C_ptr, bias_ptr, A_row, b, row, g, c, l0, H, W, L, n_u, n_rows,
                  groups, N, direction, offs_n, offs_l, SOFTPLUS: tl.constexpr, CROSS: tl.constexpr):
    """Load one chunk of one row: step sizes, input, the pairs (a, b) of the recurrence, B and C."""
    step = l0 + offs_l
    valid = step < L
    p = _pixel(step, direction, H, W, L, CROSS)
    u = tl.load(u_ptr + (b * n_u + c) * L + p, mask=valid, other=0.0).to(tl.float32)
    v = tl.load(delta_ptr + (b * n_rows + row) * L + p, mask=valid, other=0.0).to(tl.float32)
    v = v + tl.load(bias_ptr + row).to(tl.float32)
    dt = tl.where(valid, _step_size(v, SOFTPLUS), 0.0)
    n_mask = offs_n[:, None] < N
    bc_off = ((b * groups + g) * N + offs_n[:, None]) * L + p[None, :]
    m2 = n_mask & valid[None, :]
    Bv = tl.load(B_ptr + bc_off, mask=m2, other=0.0).to(tl.float32)
    Cv = tl.load(C_ptr + bc_off, mask=m2, other=0.0).to(tl.float32)
    a = tl.exp(dt[None, :] * A_row[:, None])  # dt = 0 on padding: a = 1, b = 0 carry the state through
    bu = (dt * u)[None, :] * Bv
    return step, valid, p, u, v, dt, a, bu, Bv, Cv


@triton.jit
def _row_setup(A_ptr, g, i, rows_per_group, n_u, N, offs_n, BLOCK_D: tl.constexpr):
    """Row i of this program's block: its index, input channel, direction, A (zero-padded), validity."""
    local = tl.program_id(2) * BLOCK_D + i
    row = g * rows_per_group + local
    A_row = tl.load(A_ptr + row * N + offs_n, mask=(offs_n < N) & (local < rows_per_group), other=0.0)
    return row, row % n_u, row // n_u, A_row.to(tl.float32), local < rows_per_group


@triton.jit
def _last_column(x, offs_l, BLOCK_L: tl.constexpr):
    return tl.sum(tl.where(offs_l[None, :] == BLOCK_L - 1, x, 0.0), axis=1)


@triton.jit
def _scan_fwd_kernel(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, y_ptr, h0_ptr,
                     L, H, W, n_u, n_rows, groups, N, n_chunks,
                     BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr,
                     SOFTPLUS: tl.constexpr, CROSS: tl.constexpr, KEEP: tl.constexpr):
    b = tl.program_id(0)
    g = tl.program_id(1)
    rows_per_group = n_rows // groups
    offs_n = tl.arange(0, BLOCK_N)
    offs_l = tl.arange(0, BLOCK_L)
    for i in range(BLOCK_D):
        row, c, direction, A_row, in_group = _row_setup(A_ptr, g, i, rows_per_group, n_u, N, offs_n, BLOCK_D)
        if in_group:
            D_row = tl.load(D_ptr + row).to(tl.float32)
            h = tl.zeros([BLOCK_N], dtype=tl.float32)
            for chunk in range(0, n_chunks):
                if KEEP:  # the state at each chunk start: all the backward keeps of the forward
                    tl.store(h0_ptr + ((b * n_rows + row) * n_chunks + chunk) * BLOCK_N + offs_n, h)
                step, valid, p, u, v, dt, a, bu, Bv, Cv = _chunk_inputs(
                    u_ptr, delta_ptr, B_ptr, C_ptr, bias_ptr, A_row, b, row, g, c, chunk * BLOCK_L, H, W, L,
                    n_u, n_rows, groups, N, direction, offs_n, offs_l, SOFTPLUS, CROSS)
                a_cum, b_cum = tl.associative_scan((a, bu), 1, _combine)
                hs = b_cum + a_cum * h[:, None]
                y = tl.sum(Cv * hs, axis=0) + D_row * u
                if CROSS:
                    tl.atomic_add(y_ptr + (b * n_u + c) * L + p, y, mask=valid)
                else:
                    tl.store(y_ptr + (b * n_u + c) * L + p, y, mask=valid)
                h = _last_column(hs, offs_l, BLOCK_L)


@triton.jit
def _scan_bwd_kernel(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, dy_ptr, h0_ptr,
                     du_ptr, ddelta_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr,
                     L, H, W, n_u, n_rows, groups, N, n_chunks,
                     BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr,
                     SOFTPLUS: tl.constexpr, CROSS: tl.constexpr):
    b = tl.program_id(0)
    g = tl.program_id(1)
    rows_per_group = n_rows // groups
    offs_n = tl.arange(0, BLOCK_N)
    offs_l = tl.arange(0, BLOCK_L)
    offs_d = tl.arange(0, BLOCK_D)
    n_mask = offs_n < N
    # Chunks in reverse, rebuilt from the chunk-start states the forward kept; each row's adjoint state q
    # crosses chunk borders in q_carry.
    q_carry = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    for rev in range(0, n_chunks):
        chunk = n_chunks - 1 - rev
        l0 = chunk * BLOCK_L
        dB_acc = tl.zeros([BLOCK_N, BLOCK_L], dtype=tl.float32)
        dC_acc = tl.zeros([BLOCK_N, BLOCK_L], dtype=tl.float32)
        for i in range(BLOCK_D):
            row, c, direction, A_row, in_group = _row_setup(A_ptr, g, i, rows_per_group, n_u, N, offs_n, BLOCK_D)
            if in_group:
                D_row = tl.load(D_ptr + row).to(tl.float32)
                step, valid, p, u, v, dt, a, bu, Bv, Cv = _chunk_inputs(
                    u_ptr, delta_ptr, B_ptr, C_ptr, bias_ptr, A_row, b, row, g, c, l0, H, W, L, n_u, n_rows,
                    groups, N, direction, offs_n, offs_l, SOFTPLUS, CROSS)
                h_start = tl.load(h0_ptr + ((b * n_rows + row) * n_chunks + chunk) * BLOCK_N + offs_n)
                a_cum, b_cum = tl.associative_scan((a, bu), 1, _combine)
                hs = b_cum + a_cum * h_start[:, None]
                gy = tl.load(dy_ptr + (b * n_u + c) * L + p, mask=valid, other=0.0).to(tl.float32)
                # a_{t+1}: the step size one position later (1 past the end, where q is 0 anyway)
                nxt = step + 1
                nxt_ok = nxt < L
                p_nxt = _pixel(nxt, direction, H, W, L, CROSS)
                v_nxt = tl.load(delta_ptr + (b * n_rows + row) * L + p_nxt, mask=nxt_ok, other=0.0).to(tl.float32)
                dt_nxt = tl.where(nxt_ok, _step_size(v_nxt + tl.load(bias_ptr + row).to(tl.float32), SOFTPLUS), 0.0)
                a_nxt = tl.exp(dt_nxt[None, :] * A_row[:, None])
                sel = offs_d[:, None] == i
                carry = tl.sum(tl.where(sel, q_carry, 0.0), axis=0)
                q_prod, q_part = tl.associative_scan((a_nxt, gy[None, :] * Cv), 1, _combine, reverse=True)
                q = q_part + q_prod * carry[:, None]
                q_carry = tl.where(sel, tl.sum(tl.where(offs_l[None, :] == 0, q, 0.0), axis=1)[None, :], q_carry)
                ah = hs - bu  # a_t h_{t-1}
                dB_acc += q * (dt * u)[None, :]
                dC_acc += gy[None, :] * hs
                qB = tl.sum(q * Bv, axis=0)
                du = D_row * gy + qB * dt
                ddt = qB * u + tl.sum(q * ah * A_row[:, None], axis=0)
                if SOFTPLUS:
                    ddt = ddt * tl.sigmoid(v)
                tl.store(du_ptr + (b * n_rows + row) * L + p, du, mask=valid)
                tl.store(ddelta_ptr + (b * n_rows + row) * L + p, ddt, mask=valid)
                tl.atomic_add(dA_ptr + row * N + offs_n, tl.sum(q * ah * dt[None, :], axis=1), mask=n_mask)
                tl.atomic_add(dD_ptr + row, tl.sum(gy * u, axis=0))
        p = _pixel(l0 + offs_l, g, H, W, L, CROSS)
        m2 = n_mask[:, None] & ((l0 + offs_l) < L)[None, :]
        bc_off = ((b * groups + g) * N + offs_n[:, None]) * L + p[None, :]
        tl.atomic_add(dB_ptr + bc_off, dB_acc, mask=m2)
        tl.atomic_add(dC_ptr + bc_off, dC_acc, mask=m2)


BLOCK_L = 64
BLOCK_D = 8


def _launch_args(u, delta, A, B, height, width):
    batch, n_u, length = u.shape
    n_rows, n = A.shape
    groups = B.shape[1]
    block_n = max(triton.next_power_of_2(n), 2)
    block_d = min(BLOCK_D, triton.next_power_of_2(n_rows // groups))
    grid = (batch, groups, triton.cdiv(n_rows // groups, block_d))
    return grid, dict(L=length, H=height, W=width, n_u=n_u, n_rows=n_rows, groups=groups, N=n,
                      BLOCK_D=block_d, BLOCK_N=block_n, BLOCK_L=BLOCK_L)


# The kernels are wrapped as torch.library custom ops: torch.compile treats them as opaque calls with a
# known output shape (no graph break, no tracing into the launch), and autograd uses the registered backward.
@torch.library.custom_op("medmamba::triton_scan", mutates_args=())
def _scan_op(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
             D: torch.Tensor, bias: torch.Tensor, softplus: bool, height: int, width: int,
             keep: bool) -> list[torch.Tensor]:
    """(y, chunk-start states for the backward; empty unless ``keep``)."""
    grid, meta = _launch_args(u, delta, A, B, height, width)
    y = torch.zeros(u.shape, device=u.device, dtype=torch.float32)
    h0 = torch.empty(_h0_shape(delta, meta["BLOCK_N"]) if keep else (0,), device=u.device, dtype=torch.float32)
    _scan_fwd_kernel[grid](u, delta, A, B, C, D, bias, y, h0, n_chunks=triton.cdiv(u.shape[2], BLOCK_L),
                           SOFTPLUS=softplus, CROSS=height > 0, KEEP=keep, **meta)
    return [y, h0]


@_scan_op.register_fake
def _(u, delta, A, B, C, D, bias, softplus, height, width, keep):
    block_n = max(triton.next_power_of_2(A.shape[1]), 2)
    return [u.new_empty(u.shape, dtype=torch.float32),
            u.new_empty(_h0_shape(delta, block_n) if keep else (0,), dtype=torch.float32)]


def _h0_shape(delta, block_n):
    return (delta.shape[0], delta.shape[1], triton.cdiv(delta.shape[2], BLOCK_L), block_n)


@torch.library.custom_op("medmamba::triton_scan_backward", mutates_args=())
def _scan_backward_op(dy: torch.Tensor, h0: torch.Tensor, u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor,
                      B: torch.Tensor, C: torch.Tensor, D: torch.Tensor, bias: torch.Tensor, softplus: bool,
                      height: int, width: int) -> list[torch.Tensor]:
    grid, meta = _launch_args(u, delta, A, B, height, width)
    n_chunks = triton.cdiv(delta.shape[2], BLOCK_L)
    f32 = dict(device=u.device, dtype=torch.float32)
    du_rows = torch.empty(delta.shape, **f32)
    ddelta = torch.empty(delta.shape, **f32)
    dA, dB, dC, dD = (torch.zeros(t.shape, **f32) for t in (A, B, C, D))
    _scan_bwd_kernel[grid](u, delta, A, B, C, D, bias, dy.contiguous(), h0, du_rows, ddelta, dA, dB, dC, dD,
                           n_chunks=n_chunks, SOFTPLUS=softplus, CROSS=height > 0, **meta)
    return [fold_rows(du_rows, u.shape[1]), ddelta, dA, dB, dC, dD, ddelta.sum((0, 2))]


@_scan_backward_op.register_fake
def _(dy, h0, u, delta, A, B, C, D, bias, softplus, height, width):
    return [t.new_empty(t.shape, dtype=torch.float32) for t in (u, delta, A, B, C, D, bias)]


def _setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, bias, softplus, height, width, keep = inputs
    ctx.save_for_backward(output[1], u, delta, A, B, C, D, bias)
    ctx.config = (softplus, height, width)


def _backward(ctx, output_grads):
    dy = output_grads[0]  # the kept states are not differentiated through
    h0, *saved = ctx.saved_tensors
    grads = _scan_backward_op(dy, h0, *saved, *ctx.config)
    return (*(g.to(t.dtype) for g, t in zip(grads, saved)), None, None, None, None)


_scan_op.register_autograd(_backward, setup_context=_setup_context)


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _prepare(u, delta, A, B, C, D, delta_bias):
    rows = delta.shape[1]
    ct = compute_dtype(u.dtype)
    if ct == torch.float64:
        raise ValueError("the triton backend computes in float32; use backend='reference' for float64")
    D = torch.zeros(rows, device=u.device) if D is None else D
    delta_bias = torch.zeros(rows, device=u.device) if delta_bias is None else delta_bias
    # bf16/fp16 u, delta, B, C are read as they are and widened in the kernel; A, D, bias are small.
    return [t.contiguous() for t in (u, delta, B, C)], [t.float().contiguous() for t in (A, D, delta_bias)]


def selective_scan_triton(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """``selective_scan`` on CUDA tensors (or any tensors under TRITON_INTERPRET=1)."""
    (u_, delta_, B_, C_), (A_, D_, bias_) = _prepare(u, delta, A, B, C, D, delta_bias)
    keep = _needs_grad(u_, delta_, A_, B_, C_, D_, bias_)
    y = _scan_op(u_, delta_, A_, B_, C_, D_, bias_, bool(delta_softplus), 0, 0, keep)[0]
    return finish_scan(y, u, None, z, u.dtype)  # D is added in the kernel


def cross_selective_scan_triton(x, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False):
    """``cross_selective_scan`` with the four directions read from the map and merged in the kernel."""
    height, width = x.shape[-2:]
    u, delta, B, C = fused_rows(x, delta, B, C)
    (u_, delta_, B_, C_), (A_, D_, bias_) = _prepare(u, delta, A, B, C, D, delta_bias)
    keep = _needs_grad(u_, delta_, A_, B_, C_, D_, bias_)
    y = _scan_op(u_, delta_, A_, B_, C_, D_, bias_, bool(delta_softplus), height, width, keep)[0]
    return y.view(x.shape)
