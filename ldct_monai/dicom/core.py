"""Small DICOM facts every stage needs: slice geometry and the modality LUT to Hounsfield units.

Kept apart from the series reader/writer so the header-only scan (``build-manifest``), the readers and the
writers share one definition of "z" and of "HU".
"""

from __future__ import annotations

import math

import numpy as np
from pydicom.dataset import Dataset

from ldct_monai.errors import InputError

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"


def _normal(iop) -> tuple[float, float, float, float]:
    """(nx, ny, nz, |n|) of row x column from the six ImageOrientationPatient values (pure Python)."""
    rx, ry, rz, cx, cy, cz = (float(v) for v in iop)
    nx, ny, nz = ry * cz - rz * cy, rz * cx - rx * cz, rx * cy - ry * cx
    return nx, ny, nz, math.sqrt(nx * nx + ny * ny + nz * nz)


def z_along_normal(ipp, iop) -> float | None:
    """ImagePositionPatient projected on the unit normal of ImageOrientationPatient, mm; None when the
    row and column vectors are parallel. The one definition of a slice's z (scan, reader, manifests)."""
    nx, ny, nz, norm = _normal(iop)
    if norm < 1e-6:
        return None
    return (float(ipp[0]) * nx + float(ipp[1]) * ny + float(ipp[2]) * nz) / norm


def slice_normal(ds: Dataset) -> np.ndarray:
    """Unit normal of the image plane: row direction x column direction, from ImageOrientationPatient.

    Raises:
        InputError: ImageOrientationPatient is missing or not six numbers.
    """
    iop = getattr(ds, "ImageOrientationPatient", None)
    if iop is None or len(iop) != 6:
        raise InputError(f"{_name(ds)}: ImageOrientationPatient missing or not 6 values (found {iop!r}).")
    nx, ny, nz, norm = _normal(iop)
    if norm < 1e-6:
        raise InputError(f"{_name(ds)}: ImageOrientationPatient row and column vectors are parallel ({list(iop)}).")
    return np.array([nx, ny, nz], dtype=np.float64) / norm


def slice_position(ds: Dataset, normal: np.ndarray | None = None) -> float:
    """Position of the slice along its normal in mm: ImagePositionPatient . normal (:func:`z_along_normal`).

    This is the sort key for slices (never InstanceNumber or file name).

    Args:
        ds: the slice.
        normal: the series' unit normal (a series is sorted along one normal); this slice's own when None.

    Raises:
        InputError: ImagePositionPatient or ImageOrientationPatient is missing.
    """
    ipp = getattr(ds, "ImagePositionPatient", None)
    if ipp is None or len(ipp) != 3:
        raise InputError(f"{_name(ds)}: ImagePositionPatient missing or not 3 values (found {ipp!r}).")
    if normal is None:
        slice_normal(ds)  # raises for a missing or degenerate orientation
        return float(z_along_normal(ipp, ds.ImageOrientationPatient))
    return float(np.dot(np.asarray(ipp, dtype=np.float64), normal))


def rescale(ds: Dataset) -> tuple[float, float]:
    """(RescaleSlope, RescaleIntercept) of a slice; CT defaults 1 and 0 when absent."""
    slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
    intercept = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
    return slope, intercept


def to_hu(ds: Dataset, stored: np.ndarray | None = None) -> np.ndarray:
    """Stored pixel values -> HU (float32) with this slice's own slope and intercept.

    Args:
        ds: the slice's dataset (pixel data needed unless ``stored`` is given).
        stored: stored values already decoded (``ds.pixel_array``); decoded here when None.
    """
    if stored is None:
        stored = ds.pixel_array
    slope, intercept = rescale(ds)
    return (stored.astype(np.float32) * np.float32(slope) + np.float32(intercept)).astype(np.float32)


def padding_mask(ds: Dataset, stored: np.ndarray) -> np.ndarray | None:
    """Boolean mask of pixels equal to PixelPaddingValue (outside the field of view), or None.

    With PixelPaddingRangeLimit the range between the two values (inclusive) is padding.
    """
    pad = getattr(ds, "PixelPaddingValue", None)
    if pad is None:
        return None
    pad = int(pad)
    limit = getattr(ds, "PixelPaddingRangeLimit", None)
    if limit is None:
        mask = stored == pad
    else:
        lo, hi = sorted((pad, int(limit)))
        mask = (stored >= lo) & (stored <= hi)
    return mask if mask.any() else None


def _name(ds: Dataset) -> str:
    return str(getattr(ds, "filename", None) or getattr(ds, "SOPInstanceUID", "<dataset>"))
