"""Small building blocks shared by the model files."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn


def drop_path(x: torch.Tensor, drop_prob: float = 0.0, training: bool = False) -> torch.Tensor:
    """Stochastic depth: drop the whole residual branch of a sample, rescaling the survivors."""
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1.0 - drop_prob
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep_prob)
    return x * mask / keep_prob


def drop_path_branch(branch: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, drop_prob: float = 0.0,
                     training: bool = False) -> torch.Tensor:
    """``drop_path(branch(x))`` for a branch that treats samples independently (no batch statistics), run on
    the kept samples only: the same mask from the same random draw, the same values and gradients, and on a
    CPU the dropped samples cost nothing (a block whose drop rate is p skips a fraction p of its SS2D work
    in training). On CUDA the kept count would cost a device sync per block, so it drops by masking."""
    if drop_prob == 0.0 or not training:
        return branch(x)
    if x.device.type != "cpu":
        return drop_path(branch(x), drop_prob, training)
    keep_prob = 1.0 - drop_prob
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep_prob)
    kept = mask.flatten().nonzero().squeeze(1)
    if 0 < len(kept) < x.shape[0]:
        out = branch(x.index_select(0, kept)) / keep_prob
        return out.new_zeros((x.shape[0],) + out.shape[1:]).index_copy(0, kept, out)
    # none dropped, or all: then every parameter still gets its (zero) gradient, which DDP waits for
    return branch(x) * mask / keep_prob


class DropPath(nn.Module):
    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x):
        return drop_path(x, self.drop_prob, self.training)

    def branch(self, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """``self(fn(x))``, with ``fn`` run on the kept samples only (``drop_path_branch``)."""
        return drop_path_branch(fn, x, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.3f}"


def concat_shuffle(*branches: torch.Tensor) -> torch.Tensor:
    """Concatenate equal channels-last branches and shuffle their channels (ShuffleNet's channel shuffle with
    one group per branch), so the branches mix: channel g + k * groups is channel k of branch g. One copy,
    where concatenating and then shuffling would make two."""
    return torch.stack(branches, dim=-1).flatten(-2)
