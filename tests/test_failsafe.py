"""A GPU path that cannot take a user's run down: on a GPU, "auto" checks each backend once against the
chunked scan and falls back (triton -> mamba_ssm -> chunked) with one warning naming the cause. Checked
here on the CPU with Triton's interpreter and with backends made to fail."""
import importlib
import os
import warnings

import pytest
import torch

from medmamba.ops.selective_scan import BACKENDS, GPU_ORDER, Backend, first_that_passes, self_check


dispatch = importlib.import_module("medmamba.ops.selective_scan")  # the module (ops exports a function of that name)


def broken_cross(*args, **kwargs):
    raise RuntimeError("PTX assembly aborted: ptxas fatal (simulated)")


def wrong_cross(x, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False):
    return BACKENDS["chunked"].cross(x, delta, A, B, C, D=D, delta_bias=delta_bias,
                                     delta_softplus=delta_softplus) * 1.01


@pytest.fixture
def fakes(monkeypatch):
    monkeypatch.setitem(BACKENDS, "broken", Backend("broken", lambda: True, lambda: None, lambda: broken_cross))
    monkeypatch.setitem(BACKENDS, "wrong", Backend("wrong", lambda: True, lambda: None, lambda: wrong_cross))
    monkeypatch.setitem(BACKENDS, "absent", Backend("absent", lambda: False, lambda: None))


def test_self_check_names_what_failed(fakes):
    cpu = torch.device("cpu")
    assert self_check(BACKENDS["reference"], cpu) is None  # the specification agrees with the chunked scan
    assert self_check(BACKENDS["broken"], cpu) == "RuntimeError: PTX assembly aborted: ptxas fatal (simulated)"
    problem = self_check(BACKENDS["wrong"], cpu)
    assert "differs from the chunked scan by 1.00e-02 (relative)" in problem
    state = torch.get_rng_state()
    self_check(BACKENDS["reference"], cpu)
    assert torch.equal(state, torch.get_rng_state())  # the caller's random stream is untouched


def test_fallback_in_order_with_one_warning_each(fakes):
    with pytest.warns(RuntimeWarning) as caught:
        chosen = first_that_passes(("absent", "broken", "wrong", "reference", "chunked"), torch.device("cpu"))
    assert chosen.name == "reference"
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2 and "'broken' failed its check on cpu (RuntimeError: PTX assembly" in messages[0]
    assert "'wrong' failed its check" in messages[1] and "differs from the chunked scan" in messages[1]
    with pytest.warns(RuntimeWarning):
        assert first_that_passes(("broken", "chunked"), torch.device("cpu")).name == "chunked"
    # never the sequential reference on a GPU
    assert GPU_ORDER[-1] == "chunked" and "reference" not in GPU_ORDER


@pytest.mark.skipif(not BACKENDS["triton"].is_available(), reason="triton is not importable")
def test_triton_passes_its_check_in_the_interpreter():
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("no GPU and TRITON_INTERPRET is not 1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning
        assert first_that_passes(("triton", "chunked"), torch.device("cpu")).name == "triton"


def test_a_backend_named_explicitly_is_not_second_guessed(fakes, monkeypatch):
    monkeypatch.setattr(dispatch, "_resolved", {})
    chosen = dispatch.resolve_backend("broken", torch.device("cpu"))
    assert chosen.name == "broken"  # no check, no fallback: its own error will surface on use
    with pytest.raises(RuntimeError, match="ptxas fatal"):
        chosen.cross(torch.zeros(1, 1, 2, 2), None, None, None, None)


def test_doctor_reports_every_backend_and_fails_on_the_one_you_configure(fakes, capsys):
    from medmamba.cli import main
    assert main(["doctor", "--device", "cpu", "--seconds", "0.05"]) == 0
    out = capsys.readouterr().out
    assert "versions: medmamba" in out and "torch" in out and "AVX2" in out
    assert "| cpu | ok |" in out and "| reference | ok |" in out and "selected: cpu" in out
    assert "| broken | FAILED: RuntimeError: PTX assembly aborted" in out and "| wrong | FAILED:" in out
    assert main(["doctor", "--device", "cpu", "--backend", "broken", "--seconds", "0.05"]) == 1
    assert "selected: broken  <- BROKEN" in capsys.readouterr().out
    assert main(["doctor", "--device", "cpu", "--backend", "absent", "--seconds", "0.05"]) == 1
    assert "not available" in capsys.readouterr().out
