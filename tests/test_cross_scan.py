import pytest
import torch

from medmamba.ops import cross_merge, cross_scan, scan_order


def test_orders_on_3x3_grid():
    grid = torch.arange(1, 10).view(1, 1, 3, 3)
    seqs = cross_scan(grid)[0, :, 0].tolist()
    assert seqs[0] == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert seqs[1] == [1, 4, 7, 2, 5, 8, 3, 6, 9]
    assert seqs[2] == [9, 8, 7, 6, 5, 4, 3, 2, 1]
    assert seqs[3] == [9, 6, 3, 8, 5, 2, 7, 4, 1]


@pytest.mark.parametrize("height,width", [(3, 3), (2, 5), (7, 4), (1, 6)])
def test_merge_of_scan_is_four_times_input(height, width):
    x = torch.randn(2, 3, height, width)
    torch.testing.assert_close(cross_merge(cross_scan(x), height, width), 4 * x)


def test_per_direction_inputs_and_scan_order():
    x = torch.randn(2, 4, 3, 2, 5)
    seqs = cross_scan(x)
    for k in range(4):
        order = scan_order(k, 2, 5)
        torch.testing.assert_close(seqs[:, k], x[:, k].flatten(-2)[..., order])
    # each direction's sequence, put back at its pixels, is that direction's map
    merged = sum(cross_merge(torch.where(torch.arange(4).view(1, 4, 1, 1) == k, seqs, 0), 2, 5) for k in range(4))
    torch.testing.assert_close(merged, x.sum(1))


def test_cross_merge_rejects_bad_shape():
    with pytest.raises(ValueError, match="cross_merge expects"):
        cross_merge(torch.randn(1, 4, 2, 10), 3, 3)
