"""Deploy outside PyTorch: ONNX with a dynamic batch, checked against PyTorch with onnxruntime.

ONNX has no selective scan. By default the exported graph uses the ``chunked`` scan
(``ops/scan_chunked.py``): the same recurrence in plain tensor operations, which every ONNX runtime runs,
slowly. With ``fused_scan=True`` each SS2D scan is one custom node that onnxruntime runs with this package's
fused CPU kernel (``ops/scan_onnx.py``): PyTorch's speed, but only where Python, medmamba and
onnxruntime-extensions are installed; ``onnx_session`` opens either kind. The image size is fixed at export
(each stage's scan length follows from it); the batch is dynamic.
"""
from __future__ import annotations

import copy
import io
import json
import os
import warnings
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from ..errors import MedMambaError
from ..files import atomic_path, refuse_existing
from ..models import MedMamba

ONNX_INPUT, ONNX_OUTPUT = "image", "logits"


@dataclass
class OnnxCheck:
    max_abs_diff: float          # largest |onnxruntime - PyTorch| over every logit of every check batch
    batches: list[int]           # batch sizes checked (more than one: the batch dimension is dynamic)
    inputs: str                  # what was fed: random, real images, or both


def _require(module: str, extra: str = "onnx"):
    try:
        return __import__(module)
    except ImportError:
        raise MedMambaError(f"ONNX export needs {module} (pip install \"medmamba[{extra}]\")") from None


def export_onnx(model: torch.nn.Module, path: str | os.PathLike, img_size: int | Sequence[int],
                opset: int = 18, overwrite: bool = False, check_images: Optional[torch.Tensor] = None,
                tolerance: float = 1e-4, metadata: Optional[dict] = None,
                in_chans: Optional[int] = None, fused_scan: bool = False) -> tuple[Path, OnnxCheck]:
    """Write ``model`` (any MedMamba, or a timm model) as ONNX: input ``image`` (batch, channels, H, W), output ``logits``.

    Before the file is moved into place, onnxruntime runs it beside PyTorch (``check_onnx``: random inputs
    at two batch sizes, plus ``check_images`` when given); a difference above ``tolerance`` raises and
    leaves nothing behind. ``metadata`` (e.g. classes and preprocessing) is stored in the model's
    metadata_props as JSON under "medmamba", with the scan's form ("chunked" or "fused") for a MedMamba.
    ``fused_scan``: each SS2D scan as one custom node (see the module's docstring), MedMamba only."""
    _require("onnx")
    _require("onnxscript")
    path = Path(path)
    refuse_existing(path, overwrite=overwrite)
    is_medmamba = isinstance(model, MedMamba)
    if fused_scan:
        if not is_medmamba:
            raise MedMambaError(f"--fused-scan applies to MedMamba models only; {type(model).__name__} has no "
                                "selective scan (export it without the option)")
        _require("onnxruntime_extensions")
    height, width = (img_size, img_size) if isinstance(img_size, int) else img_size
    exportable = copy.deepcopy(model).cpu().float().eval()
    if is_medmamba:
        exportable.set_scan_backend("onnx_node" if fused_scan else "chunked")
        metadata = {**(metadata or {}), "onnx_scan": "fused" if fused_scan else "chunked"}
    example = torch.zeros(2, in_chans or exportable.in_chans, height, width)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")  # the exporter's progress chatter and deprecation notices
            # optimize=False: onnxruntime optimises the graph when loading it; the exporter's own pass
            # took longer than the export itself and changed nothing measurable.
            program = torch.onnx.export(exportable, (example,), dynamo=True, opset_version=opset, optimize=False,
                                        input_names=[ONNX_INPUT], output_names=[ONNX_OUTPUT],
                                        dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1)}})
            if metadata:
                program.model.metadata_props["medmamba"] = json.dumps(metadata)
            program.save(str(tmp), external_data=False)
        check = check_onnx(tmp, model, images=check_images)
        if not check.max_abs_diff <= tolerance:
            raise MedMambaError(f"the exported graph differs from PyTorch by {check.max_abs_diff:.3g} "
                                f"(tolerance {tolerance:g}); nothing was written")
    return path, check


def check_onnx(path: str | os.PathLike, model: torch.nn.Module, images: Optional[torch.Tensor] = None,
               batches: Sequence[int] = (1, 3), seed: int = 0) -> OnnxCheck:
    """Run the ONNX file with onnxruntime and ``model`` with PyTorch on the same inputs: random images at
    each batch size in ``batches`` and, when given, ``images`` (real, preprocessed)."""
    session = onnx_session(path)
    shape = session.get_inputs()[0].shape
    channels, height, width = (int(s) for s in shape[1:])
    generator = torch.Generator().manual_seed(seed)
    feeds = [torch.randn(b, channels, height, width, generator=generator) for b in batches]
    if images is not None:
        feeds.append(images.float().cpu())
    was_training = model.training
    model.eval()
    worst = 0.0
    try:
        for x in feeds:
            with torch.no_grad():
                expected = model(x.to(next(model.parameters()).device)).float().cpu().numpy()
            got = session.run([ONNX_OUTPUT], {ONNX_INPUT: x.numpy()})[0]
            worst = max(worst, float(np.abs(got - expected).max()))
    finally:
        model.train(was_training)
    return OnnxCheck(max_abs_diff=worst, batches=[len(x) for x in feeds],
                     inputs="random and real images" if images is not None else "random")


def onnx_session(path: str | os.PathLike, threads: Optional[int] = None, profile: Optional[str] = None):
    """An onnxruntime CPU session for an exported file, either kind: for a file with fused scan nodes the
    nodes' implementation is registered first. ``threads``: onnxruntime's intra-op threads, and the fused
    nodes' (default: their own, every core). ``profile``: a file prefix for onnxruntime's profiler."""
    ort = _require("onnxruntime")
    onnx = _require("onnx")
    from ..ops.scan_onnx import DOMAIN
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    if profile:
        options.enable_profiling = True
        options.profile_file_prefix = profile
    proto = onnx.load(str(path), load_external_data=False)
    if any(o.domain == DOMAIN for o in proto.opset_import):
        _require("onnxruntime_extensions")
        from ..ops.scan_onnx import register_onnxruntime_op
        options.register_custom_ops_library(register_onnxruntime_op(threads))
        # onnxruntime's idle threads spin for the next operator, on the cores the node's own kernel threads
        # need: without spinning, 66 instead of 50 images/s at 64 px (BENCHMARKS.md)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
