"""The chunked (ONNX-expressible) scan against the reference: forward and every gradient, awkward shapes."""
import pytest
import torch

from medmamba.ops import selective_scan
from medmamba.ops.scan_chunked import selective_scan_chunked

from .helpers import assert_backends_agree, direct_recurrence, inputs, rel_err


# lengths that are and are not a square (padding), down to one step.
@pytest.mark.parametrize("length", [1, 7, 16, 17, 50, 257])
@pytest.mark.parametrize("dim,n,groups", [(5, 1, 1), (12, 16, 4), (9, 3, 3)])
def test_matches_reference(length, dim, n, groups):
    assert_backends_agree(inputs(2, dim, length, n, groups), softplus=True, backend="chunked")


@pytest.mark.parametrize("with_D,with_bias", [(False, False), (True, True)])
def test_optional_arguments_without_softplus(with_D, with_bias):
    x = inputs(3, 6, 23, 4, 2, with_D=with_D, with_bias=with_bias)
    with torch.no_grad():
        x["delta"].abs_()
        if with_bias:
            x["delta_bias"].abs_()
    assert_backends_agree(x, softplus=False, backend="chunked")


def test_large_steps_stay_exact_and_finite():
    # Steps of exp(-1000): exp(-sum) times exp(+sum) would overflow here.
    x = inputs(1, 4, 40, 16, 1, delta_scale=10.0, a_scale=100.0)
    y = selective_scan(**x, delta_softplus=True, backend="chunked")
    assert torch.isfinite(y).all()
    assert_backends_agree(x, softplus=True, backend="chunked")


def test_float64_matches_direct_recurrence():
    x = inputs(2, 6, 37, 5, 2, dtype=torch.float64)
    ours = selective_scan_chunked(**x, delta_softplus=True)
    assert rel_err(ours, direct_recurrence(**x, delta_softplus=True)) < 1e-12


@pytest.mark.parametrize("chunk", [1, 5, 29, 64])
def test_chunk_size_does_not_change_the_result(chunk):
    x = inputs(1, 4, 29, 3, 2, dtype=torch.float64)
    base = selective_scan_chunked(**x, delta_softplus=True)
    assert rel_err(selective_scan_chunked(**x, delta_softplus=True, chunk=chunk), base) < 1e-12
