"""Selective-scan operators: the pure-PyTorch reference and the fast backends beside it."""
from .cross_scan import cross_merge, cross_scan, scan_order
from .selective_scan import (
    BACKENDS,
    available_backends,
    cross_selective_scan,
    resolve_backend,
    selective_scan,
    selective_scan_reference,
)

__all__ = [
    "BACKENDS", "available_backends", "cross_merge", "cross_scan", "cross_selective_scan", "resolve_backend",
    "scan_order", "selective_scan", "selective_scan_reference",
]
