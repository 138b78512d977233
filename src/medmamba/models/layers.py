"""Small building blocks shared by the model files."""
from __future__ import annotations

import torch
from torch import nn


def drop_path(x: torch.Tensor, drop_prob: float = 0.0, training: bool = False) -> torch.Tensor:
    """Stochastic depth: drop the whole residual branch of a sample, rescaling the survivors."""
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1.0 - drop_prob
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep_prob)
    return x * mask / keep_prob


class DropPath(nn.Module):
    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x):
        return drop_path(x, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.3f}"


def concat_shuffle(*branches: torch.Tensor) -> torch.Tensor:
    """Concatenate equal channels-last branches and shuffle their channels (ShuffleNet's channel shuffle with
    one group per branch), so the branches mix: channel g + k * groups is channel k of branch g. One copy,
    where concatenating and then shuffling would make two."""
    return torch.stack(branches, dim=-1).flatten(-2)
