"""DICOM images as the display a radiologist would see: modality rescale, VOI window, MONOCHROME1 inverted.

pydicom is an optional extra (``pip install "medmamba[dicom]"``); nothing here is imported without it.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import DataError

DICOM_SUFFIXES = {".dcm", ".dicom"}


def is_dicom(path: str | os.PathLike) -> bool:
    """By suffix, or by the 'DICM' marker after the 128-byte preamble (many archives drop the suffix)."""
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def _first(value) -> float:
    # WindowCenter/WindowWidth may hold several windows; the first is the default presentation.
    if value is None:
        return None
    try:
        return float(value[0])
    except TypeError:
        return float(value)


def window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1 linear VOI function, mapped to [0, 1]."""
    width = max(float(width), 1.0)
    low = center - 0.5 - (width - 1.0) / 2.0
    scaled = ((values - (center - 0.5)) / (width - 1.0) + 0.5) if width > 1.0 else (values > low).astype(np.float32)
    return np.clip(scaled, 0.0, 1.0)


def read_dicom(path: str | os.PathLike) -> np.ndarray:
    """(H, W) or (H, W, 3) float32 in [0, 1]. Raises DataError naming the file for anything unusable."""
    try:
        import pydicom
    except ImportError:
        raise DataError(f"{path}: reading DICOM needs pydicom (pip install \"medmamba[dicom]\")") from None
    try:
        ds = pydicom.dcmread(str(path))
        pixels = ds.pixel_array
    except Exception as e:  # pydicom raises InvalidDicomError, AttributeError (no pixels), RuntimeError (codec)
        raise DataError(f"{path}: not a readable DICOM image ({type(e).__name__}: {e})") from None
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise DataError(f"{path}: multi-frame DICOM ({frames} frames); save the frame to classify as its own file")
    samples = int(ds.get("SamplesPerPixel", 1))
    if samples == 3:
        # pydicom converts YBR to RGB; colour images carry no modality rescale or window.
        top = float(2 ** int(ds.get("BitsStored", 8)) - 1)
        return np.clip(pixels.astype(np.float32) / top, 0.0, 1.0)
    if samples != 1 or pixels.ndim != 2:
        raise DataError(f"{path}: unsupported DICOM pixel layout (SamplesPerPixel {samples}, shape {pixels.shape})")
    values = pixels.astype(np.float64) * float(ds.get("RescaleSlope", 1) or 1) + float(ds.get("RescaleIntercept", 0) or 0)
    center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    if center is not None and width is not None:
        image = window(values, center, width)
    else:
        low, high = float(values.min()), float(values.max())
        image = (values - low) / (high - low) if high > low else np.zeros_like(values)
    if str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper() == "MONOCHROME1":
        image = 1.0 - image  # MONOCHROME1: the lowest value is displayed white
    return image.astype(np.float32)
