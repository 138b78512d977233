"""Cross-scan and cross-merge: the four 1-D reading orders of a 2-D map.

Direction 0 reads row-major, 1 column-major, 2 and 3 are 0 and 1 reversed. On a 3x3 grid
numbered 1..9 row by row: 0 -> 1..9, 1 -> 1,4,7,2,5,8,3,6,9, 2 -> 9..1, 3 -> 9,6,3,8,5,2,7,4,1.
"""
from __future__ import annotations

import torch

NUM_DIRECTIONS = 4


def cross_scan(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, 4, C, H*W); a (B, 4, C, H, W) input is read with one order per direction."""
    if x.dim() == 4:
        x = x.unsqueeze(1).expand(-1, NUM_DIRECTIONS, -1, -1, -1)
    row_major = x[:, 0].flatten(-2)
    col_major = x[:, 1].transpose(-2, -1).flatten(-2)
    row_major_rev = x[:, 2].flatten(-2).flip(-1)
    col_major_rev = x[:, 3].transpose(-2, -1).flatten(-2).flip(-1)
    return torch.stack([row_major, col_major, row_major_rev, col_major_rev], dim=1)


def cross_merge(y: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, 4, C, H*W) sequences back to their pixels, summed over the directions: (B, C, H, W)."""
    b, k, c, length = y.shape
    if k != NUM_DIRECTIONS or length != height * width:
        raise ValueError(f"cross_merge expects (B, 4, C, {height * width}), got {tuple(y.shape)}")
    row_major = y[:, 0] + y[:, 2].flip(-1)
    col_major = y[:, 1] + y[:, 3].flip(-1)
    return row_major.view(b, c, height, width) + col_major.view(b, c, width, height).transpose(-2, -1)


def scan_order(direction: int, height: int, width: int, device=None) -> torch.Tensor:
    """Pixel index (row-major) read at each step of one direction: (H*W,) int64."""
    grid = torch.arange(height * width, device=device).view(1, 1, height, width)
    return cross_scan(grid)[0, direction, 0]
