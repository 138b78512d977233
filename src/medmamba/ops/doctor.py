"""What `medmamba doctor` reports: versions, the device and its CPU features, and every selective-scan
backend checked against the chunked scan, with a few-second throughput figure each."""
from __future__ import annotations

import time
from importlib import metadata
from typing import Optional

import torch

from .cross_scan import NUM_DIRECTIONS
from .selective_scan import BACKENDS, resolve_backend, self_check

PACKAGES = ("medmamba", "torch", "triton", "numba", "mamba_ssm", "onnxruntime", "timm")


def versions() -> dict[str, Optional[str]]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name.replace("_", "-"))
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def cpu_features() -> dict:
    """The CPU model, torch's vector capability, and whether it has AVX2 and AVX-512 (Linux: /proc/cpuinfo)."""
    flags, model = set(), ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
            elif line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return {"model": model or "unknown", "torch_capability": torch.backends.cpu.get_cpu_capability(),
            "avx2": "avx2" in flags, "avx512": any(f.startswith("avx512") for f in flags)}


def throughput(backend, device: torch.device, seconds: float = 2.0) -> float:
    """SS2D scans (forward and backward) per second at MedMamba-T's first stage for one 64 px image (the
    scan's 192 inner channels at 16 x 16 pixels, 4 directions, N = 16), timed for about ``seconds``."""
    g = torch.Generator().manual_seed(0)
    dim, side, n = 192, 16, 16

    def leaf(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device).requires_grad_()
    x = leaf(1, dim, side, side)
    inputs = dict(delta=leaf(1, NUM_DIRECTIONS, dim, side, side, scale=0.5),
                  A=(-torch.rand(NUM_DIRECTIONS * dim, n, generator=g)).to(device).requires_grad_(),
                  B=leaf(1, NUM_DIRECTIONS, n, side, side), C=leaf(1, NUM_DIRECTIONS, n, side, side),
                  D=leaf(NUM_DIRECTIONS * dim), delta_bias=leaf(NUM_DIRECTIONS * dim, scale=0.5))

    def once():
        backend.cross(x, **inputs, delta_softplus=True).sum().backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
    once()  # compilation is not throughput
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        once()
        count += 1
    return count / (time.perf_counter() - start)


def diagnose(backend: str = "auto", device: Optional[str] = None, seconds: float = 2.0) -> dict:
    """Everything `medmamba doctor` prints; ``ok`` is False when the backend asked for (``backend``, or the
    one "auto" picks) is unusable or fails its check on ``device``."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    out = {"versions": versions(), "device": str(dev), "cpu": cpu_features(),
           "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None, "backends": {}}
    for name, b in BACKENDS.items():
        interpreted = name == "triton" and dev.type == "cpu"
        if name == "onnx_node":
            out["backends"][name] = {"status": "the fused-scan ONNX export's node (the cpu kernel), not a forward"}
            continue
        if not b.is_available() or (dev.type not in b.devices and not interpreted):
            out["backends"][name] = {"status": b.why_unavailable if not b.is_available() else f"not for {dev.type}"}
            continue
        if interpreted:
            out["backends"][name] = {"status": "runs on a GPU (or in Triton's interpreter, for tests only)"}
            continue
        problem = self_check(b, dev)
        entry = {"status": "ok" if problem is None else f"FAILED: {problem}"}
        if problem is None and name != "reference":
            entry["scans_per_second"] = throughput(b, dev, seconds)
        out["backends"][name] = entry
    try:
        chosen = resolve_backend(backend, dev).name
        out["chosen"], out["ok"] = chosen, out["backends"].get(chosen, {}).get("status", "ok") == "ok"
    except Exception as e:  # an explicitly named backend that cannot run here
        out["chosen"], out["ok"] = f"{backend}: {e}", False
    return out


def doctor_text(d: dict) -> str:
    v = d["versions"]
    cpu = d["cpu"]
    lines = ["versions: " + ", ".join(f"{k} {v[k] or 'not installed'}" for k in PACKAGES),
             f"device: {d['device']}" + (f" ({d['gpu']})" if d["gpu"] else ""),
             f"CPU: {cpu['model']}; torch capability {cpu['torch_capability']}; AVX2 {'yes' if cpu['avx2'] else 'no'}, "
             f"AVX-512 {'yes' if cpu['avx512'] else 'no'}; {torch.get_num_threads()} threads", "",
             "| backend | check against the chunked scan | SS2D scans/s (forward+backward, 192 ch, 16x16) |",
             "| --- | --- | --- |"]
    for name, e in d["backends"].items():
        rate = f"{e['scans_per_second']:.1f}" if "scans_per_second" in e else ""
        lines.append(f"| {name} | {e['status']} | {rate} |")
    lines += ["", f"selected: {d['chosen']}" + ("" if d["ok"] else "  <- BROKEN")]
    return "\n".join(lines)
