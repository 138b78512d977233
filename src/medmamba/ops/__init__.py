"""Selective-scan operators: the pure-PyTorch reference (``scan_reference``), the fast backends beside it,
and the dispatcher that chooses among them (``selective_scan``)."""
from .cross_scan import cross_merge, cross_scan, scan_order
from .scan_reference import selective_scan_reference
from .selective_scan import BACKENDS, available_backends, cross_selective_scan, resolve_backend, selective_scan

__all__ = [
    "BACKENDS", "available_backends", "cross_merge", "cross_scan", "cross_selective_scan", "resolve_backend",
    "scan_order", "selective_scan", "selective_scan_reference",
]
