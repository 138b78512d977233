import importlib

import pytest
import torch

from medmamba.ops import available_backends, selective_scan, selective_scan_reference

from .helpers import direct_recurrence


def make_inputs(batch=2, dim=6, length=9, n=4, groups=2, dtype=torch.float32, requires_grad=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=dtype) * scale).requires_grad_(requires_grad)
    return dict(
        u=r(batch, dim, length), delta=r(batch, dim, length, scale=0.5),
        A=(-torch.rand(dim, n, generator=g, dtype=dtype) * 2).requires_grad_(requires_grad),
        B=r(batch, groups, n, length), C=r(batch, groups, n, length), D=r(dim), z=r(batch, dim, length),
        delta_bias=r(dim, scale=0.5))


@pytest.mark.parametrize("with_extras", [False, True])
def test_reference_matches_direct_recurrence(with_extras):
    x = make_inputs()
    if not with_extras:
        x.update(D=None, z=None, delta_bias=None)
    ours = selective_scan_reference(**x, delta_softplus=with_extras)
    assert ours.dtype == torch.float32
    theirs = direct_recurrence(**x, delta_softplus=with_extras)
    torch.testing.assert_close(ours.double(), theirs, rtol=1e-5, atol=1e-5)


def test_reference_gradcheck_float64():
    x = make_inputs(batch=1, dim=4, length=5, n=3, groups=2, dtype=torch.float64, requires_grad=True)
    names = list(x)
    def f(*args):
        return selective_scan_reference(**dict(zip(names, args)), delta_softplus=True)
    assert torch.autograd.gradcheck(f, tuple(x.values()), eps=1e-6, atol=1e-6)


def test_reference_backward_graph_is_linear_in_length():
    # Indexing x[:, :, i] in the loop saves a view of the whole tensor per step, and backward then
    # accumulates L full-size gradients: quadratic. Count autograd nodes instead of timing.
    def count_nodes(length):
        x = make_inputs(batch=1, dim=2, length=length, n=2, groups=1, requires_grad=True)
        y = selective_scan_reference(**x)
        seen, stack = set(), [y.grad_fn]
        while stack:
            node = stack.pop()
            if node is None or node in seen:
                continue
            seen.add(node)
            stack.extend(fn for fn, _ in node.next_functions)
        return len(seen)
    assert count_nodes(40) - count_nodes(20) == count_nodes(60) - count_nodes(40)
    # and the gradient of u only has L slices to add up, not L full tensors
    x = make_inputs(batch=1, dim=2, length=2000, n=2, groups=1, requires_grad=True)
    selective_scan_reference(**x).sum().backward()
    assert torch.isfinite(x["u"].grad).all()


def test_float64_stays_float64():
    x = make_inputs(dtype=torch.float64)
    assert selective_scan(**x, backend="reference").dtype == torch.float64


def test_unknown_backend_lists_available():
    x = make_inputs()
    with pytest.raises(ValueError) as e:
        selective_scan(**x, backend="nope")
    assert "available: " in str(e.value) and "reference" in str(e.value)


def test_unavailable_backend_names_reason():
    x = make_inputs()
    with pytest.raises(ValueError, match="mamba_ssm.*not available|runs on cuda"):
        selective_scan(**x, backend="mamba_ssm")


def test_cuda_only_backend_on_cpu_tensor_is_refused(monkeypatch):
    if "triton" not in available_backends():
        pytest.skip("triton is not importable here")
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # the interpreter is the one way to run it on CPU
    with pytest.raises(ValueError, match="runs on cuda tensors"):
        selective_scan(**make_inputs(), backend="triton")


def test_shape_errors_are_clear():
    x = make_inputs()
    x["B"] = x["B"][:, :, :, :-1]
    with pytest.raises(ValueError, match="B must be"):
        selective_scan(**x)


def test_auto_falls_back_to_reference_with_one_warning(monkeypatch):
    module = importlib.import_module("medmamba.ops.selective_scan")  # the module, not the function
    monkeypatch.setattr(module.BACKENDS["cpu"], "is_available", lambda: False)
    monkeypatch.setattr(module, "_warned_fallback", False)
    monkeypatch.setattr(module, "_resolved", {})  # backends are resolved once; forget the answers so far
    x = make_inputs()
    with pytest.warns(RuntimeWarning, match="numba is not importable") as record:
        y = selective_scan(**x)
        selective_scan(**x)
    assert len([w for w in record if issubclass(w.category, RuntimeWarning)]) == 1
    torch.testing.assert_close(y, selective_scan_reference(**x))
    assert module.resolve_backend("auto", torch.device("cpu")).name == "reference"


def test_auto_picks_cpu_backend_for_cpu_tensors():
    from medmamba.ops.selective_scan import BACKENDS, resolve_backend
    expected = "cpu" if BACKENDS["cpu"].is_available() else "reference"
    assert resolve_backend("auto", torch.device("cpu")).name == expected
