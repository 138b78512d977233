"""The selective scan as a short fixed loop of plain tensor operations, so that ONNX can express it.

The L steps are cut into n chunks of T (T, n ~ sqrt(L)). With a_t = exp(Delta_t A) and
b_t = Delta_t B_t u_t, the state at step t of chunk c is

    h_t = l_t + exp(A * sum_{r <= t in c} Delta_r) * H_{c-1},

where l_t is the scan of chunk c started from zero and H_{c-1} the state at the end of chunk c-1:

1. T steps, all chunks at once:  l_t = a_t l_{t-1} + b_t,   y_t = <C_t, l_t>;
2. n steps over chunks:          H_c = exp(A * sum_{r in c} Delta_r) H_{c-1} + l_end(c);
3. T steps, all chunks at once:  y_t += <C_t, exp(A * sum_{r <= t in c} Delta_r) H_{c-1}>.

Every exponent is <= 0 (no overflow, whatever the step size) and no (batch, dim, L, N) tensor is
formed. A traced graph unrolls about 3 sqrt(L) steps instead of L (MedMamba's L is fixed by the image
size), with a dynamic batch. Training uses the fused backends; this one suits export and inference.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .scan_reference import finish_scan, scan_inputs


def selective_scan_chunked(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                           chunk: int | None = None):
    """Same contract as ``selective_scan_reference``; ``chunk`` (default ceil(sqrt(L))) only changes speed."""
    dtype_in = u.dtype
    u, delta, A, B, C = scan_inputs(u, delta, A, B, C, delta_bias, delta_softplus)
    batch, dim, length = u.shape
    groups, n = B.shape[1], A.shape[1]
    per_group = dim // groups
    steps = chunk or math.isqrt(length - 1) + 1
    chunks = -(-length // steps)
    pad = chunks * steps - length  # padded steps have Delta = 0: decay 1, no input, so nothing changes

    def step_major(t):  # (..., L) -> (steps, ..., chunks): step t of every chunk is one contiguous block
        t = F.pad(t, (0, pad)).unflatten(-1, (chunks, steps))
        return t.movedim(-1, 0).contiguous()

    # Every tensor the loops index is laid out step-major once, here, and B and C state-last: inside the
    # loops each step then reads contiguous blocks and broadcasts along trailing axes only. (Indexing the
    # step along the last axis made onnxruntime gather strided slices and transpose B and C at every step.)
    A = A.view(groups, per_group, 1, n)
    delta = step_major(delta.view(batch, groups, per_group, length)).unsqueeze(-1)   # (T, b, g, p, chunks, 1)
    drive = step_major(u.view(batch, groups, per_group, length)).unsqueeze(-1) * delta
    B = step_major(B).transpose(-1, -2).unsqueeze(3)                     # (T, b, g, 1, chunks, N)
    C = step_major(C).transpose(-1, -2).unsqueeze(3)

    local = u.new_zeros(batch, groups, per_group, chunks, n)
    ys = []
    for t in range(steps):
        local = torch.exp(delta[t] * A) * local + drive[t] * B[t]
        ys.append((local * C[t]).sum(-1))

    chunk_decay = torch.exp(delta.sum(0) * A)                            # (b, g, p, chunks, N)
    state = u.new_zeros(batch, groups, per_group, n)
    before = []
    for c in range(chunks):
        before.append(state)
        state = chunk_decay[..., c, :] * state + local[..., c, :]
    before = torch.stack(before, dim=-2)                                 # H_{c-1}: (b, g, p, chunks, N)

    elapsed = delta.cumsum(0)
    for t in range(steps):
        ys[t] = ys[t] + (torch.exp(elapsed[t] * A) * before * C[t]).sum(-1)

    y = torch.stack(ys, dim=-1).flatten(-2)[..., :length].reshape(batch, dim, length)
    return finish_scan(y, u, D, z, dtype_in)
