"""SS2D's scan as one ONNX node run by the fused CPU kernel inside onnxruntime (``medmamba export --fused-scan``).

ONNX has no selective scan, so the portable export spells it out in plain tensor operations
(``scan_chunked``), which any runtime executes but onnxruntime runs at a sixth to a tenth of PyTorch's
speed: each operation streams a (batch, rows, chunks, N) tensor through memory (BENCHMARKS.md). Here each SS2D scan is
one node, ``ai.onnx.contrib::MedMambaCrossScan``, with the fused kernel's pixel-major inputs, and its
implementation is ``scan_cpu``'s numba forward, declared to onnxruntime through onnxruntime-extensions'
Python operators. No compiler is needed anywhere, but such a file runs only where Python, medmamba and
onnxruntime-extensions are installed: ``medmamba.deploy.export.onnx_session`` opens it.
"""
from __future__ import annotations

import numba
import numpy as np
import torch

from .scan_cpu import cross_selective_scan_cpu, cross_selective_scan_numpy
from .scan_reference import pixel_rows

# onnxruntime-extensions puts every Python operator in this domain.
DOMAIN = "ai.onnx.contrib"
OP_TYPE = "MedMambaCrossScan"


def cross_selective_scan_node(x, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False):
    """``cross_selective_scan`` as one custom node while ``torch.onnx.export`` traces the model; the cpu
    kernel when run eagerly (so a model set to this backend still computes the right numbers)."""
    if not torch.compiler.is_exporting():
        return cross_selective_scan_cpu(x, delta, A, B, C, D, delta_bias, delta_softplus)
    u, delta, B, C = pixel_rows(x, delta, B, C)
    batch, dim, height, width = x.shape
    rows = delta.shape[2]
    D = delta.new_zeros(rows) if D is None else D
    delta_bias = delta.new_zeros(rows) if delta_bias is None else delta_bias
    y = torch.onnx.ops.symbolic(f"{DOMAIN}::{OP_TYPE}", (u, delta, A, B, C, D, delta_bias),
                                {"height": height, "width": width, "softplus": int(bool(delta_softplus))},
                                dtype=u.dtype, shape=u.shape, version=1)
    return y.view(batch, height, width, dim).permute(0, 3, 1, 2)


_library: str | None = None
_fast_outputs = False  # whether the node's outputs go back to onnxruntime as arrays (see below)
_threads: int | None = None  # numba threads of the node; None: numba's own count (every core)


def _run_node(u, delta, A, B, C, D, bias, height, width, softplus):
    if _threads:
        numba.set_num_threads(min(_threads, numba.config.NUMBA_NUM_THREADS))
    return cross_selective_scan_numpy(u, delta, A, B, C, D, bias, int(height), int(width), bool(softplus))


def register_onnxruntime_op(threads: int | None = None) -> str:
    """Declare the node's implementation to onnxruntime-extensions (once per process). Returns the custom-op
    library that a session must load: ``SessionOptions.register_custom_ops_library(path)``. ``threads``: the
    node's kernel threads (like onnxruntime's intra-op threads, one setting per process); None keeps it."""
    global _library, _fast_outputs, _threads
    if threads:
        _threads = threads
    if _library is not None:
        return _library
    from onnxruntime_extensions import PyCustomOpDef, get_library_path, onnx_op
    opdef = onnx_op(op_type=OP_TYPE, inputs=[PyCustomOpDef.dt_float] * 7, outputs=[PyCustomOpDef.dt_float],
                    attrs={"height": PyCustomOpDef.dt_int64, "width": PyCustomOpDef.dt_int64,
                           "softplus": PyCustomOpDef.dt_int64})(_run_node)
    _fast_outputs = _hand_outputs_back_as_arrays(opdef, PyCustomOpDef)
    _library = get_library_path()
    return _library


def _hand_outputs_back_as_arrays(opdef, PyCustomOpDef) -> bool:
    """onnxruntime-extensions returns a Python operator's output to onnxruntime as ``array.tolist()``: one
    Python float per element, 0.4 s for a 12 MB output here, longer than the whole scan. Its C++ side also
    takes the array itself (a buffer copy), so this node's outputs go back that way; every other Python
    operator keeps the library's own handler. If that handler is not where this version of the library
    keeps it, nothing changes: the library's path is slower but equally correct."""
    try:
        from onnxruntime_extensions._ocos import _on_pyop_invocation as default
    except ImportError:
        return False
    op_id = opdef._nativedef.obj_id

    def invoke(k_id, feed, attributes):
        if k_id != op_id:
            return default(k_id, feed, attributes)
        y = opdef.body(*feed, **opdef.cast_attributes(attributes))
        return (k_id, y.shape, np.ascontiguousarray(y).ravel())
    PyCustomOpDef.install_hooker(invoke)
    return True
