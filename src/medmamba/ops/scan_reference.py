"""The S6 selective scan in plain PyTorch: the specification every faster backend is tested against, and
the small helpers the backends share.

For every channel d and state n of a sequence (Delta already through bias and softplus):

    h_t = exp(Delta_t * A) * h_{t-1} + Delta_t * B_t * u_t
    y_t = <C_t, h_t> + D * u_t          (then y_t * silu(z_t) when z is given)

Shapes follow mamba_ssm's ``selective_scan_fn``: u, delta, z: (batch, dim, L); A: (dim, N);
B, C: (batch, groups, N, L), channel d using group d // (dim // groups); D, delta_bias: (dim,).
"""
from __future__ import annotations

from typing import Callable

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


def fused_rows(x, delta, B, C):
    """SS2D's inputs as the fused kernels read them: one row per (direction, channel) and the pixels flattened.
    (batch, dim, H, W), (batch, 4, dim, H, W), (batch, 4, N, H, W) x2 -> (batch, dim, L), (batch, 4*dim, L),
    (batch, 4, N, L) x2; direction k's rows use group k, whose B and C are read in direction k's order."""
    batch, dim, height, width = x.shape
    length = height * width
    return (x.reshape(batch, dim, length), delta.reshape(batch, NUM_DIRECTIONS * dim, length),
            B.reshape(batch, NUM_DIRECTIONS, -1, length), C.reshape(batch, NUM_DIRECTIONS, -1, length))


def pixel_rows(x, delta, B, C):
    """SS2D's inputs pixel-major, as the fused CPU kernel reads them: (batch, L, dim), (batch, L, 4*dim),
    (batch, L, 4, N) x2 (direction k's rows use group k). Views when the tensors are channels-last in
    memory, as SS2D makes them; copies otherwise."""
    batch, dim, height, width = x.shape
    length = height * width
    return (x.permute(0, 2, 3, 1).reshape(batch, length, dim),
            delta.permute(0, 3, 4, 1, 2).reshape(batch, length, NUM_DIRECTIONS * dim),
            B.permute(0, 3, 4, 1, 2).reshape(batch, length, NUM_DIRECTIONS, -1),
            C.permute(0, 3, 4, 1, 2).reshape(batch, length, NUM_DIRECTIONS, -1))


def fold_rows(grad_rows: torch.Tensor, n_u: int, dim: int = 1) -> torch.Tensor:
    """The gradient of u from that of its rows: every row reads channel ``row % n_u``, so the rows of a
    channel (one per direction) add up. ``dim`` is the rows' dimension: (batch, rows, L) -> (batch, n_u, L),
    or, with dim=2, pixel-major (batch, L, rows) -> (batch, L, n_u)."""
    return grad_rows.unflatten(dim, (-1, n_u)).sum(dim) if grad_rows.shape[dim] != n_u else grad_rows
