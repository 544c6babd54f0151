"""Build new single-frame CT Image Storage datasets from HU arrays (used by ``synth`` and tests).

Written by hand rather than with highdicom because highdicom has no constructor for a plain CT Image
SOP instance (its ``legacy`` module converts *to* enhanced multi-frame objects, which TCIA's layout and
most training pipelines do not use). Every dataset made here passes ``dciodvfy`` without errors.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

from ldct_monai import __version__
from ldct_monai.dicom.core import CT_IMAGE_STORAGE

def make_uid(*entropy: object) -> str:
    """A valid DICOM UID under the UUID root 2.25 (no organisation root needed).

    Deterministic when ``entropy`` is given (same inputs, same UID: reproducible synthetic trees);
    random (UUID4) otherwise.
    """
    if entropy:
        digest = hashlib.sha256("\x1f".join(str(e) for e in entropy).encode()).digest()[:16]
        return f"2.25.{int.from_bytes(digest, 'big')}"
    return generate_uid(prefix=None)


@dataclass(frozen=True)
class SeriesInfo:
    """Patient, study, series and acquisition attributes shared by every slice of a new CT series."""

    patient_id: str
    study_uid: str
    series_uid: str
    frame_of_reference_uid: str
    series_number: int = 1
    series_description: str = ""
    patient_name: str = ""
    patient_sex: str = "O"
    patient_age: str = ""
    study_date: _dt.date = _dt.date(2020, 1, 1)
    study_time: str = "120000"
    study_id: str = "1"
    accession_number: str = ""
    study_description: str = ""
    body_part: str = ""  # BodyPartExamined, e.g. CHEST / ABDOMEN / HEAD
    manufacturer: str = "ldct-monai"
    model_name: str = "synthetic"
    kvp: float | None = 120.0
    tube_current_ma: float | None = None
    exposure_mas: float | None = None
    exposure_time_ms: float | None = None
    ctdi_vol: float | None = None
    kernel: str = ""  # ConvolutionKernel, e.g. B30f / D45f
    slice_thickness: float = 1.0
    pixel_spacing: tuple[float, float] = (0.7, 0.7)  # (row spacing, column spacing) in mm
    orientation: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    rescale_intercept: float = -1024.0
    rescale_slope: float = 1.0
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "AXIAL")
    pixel_padding_value: int | None = None
    extra: dict = field(default_factory=dict)  # more keyword -> value pairs set on every slice


def ct_file_meta(sop_uid: str) -> FileMetaDataset:
    """File meta information of a CT Image Storage instance we write: Explicit VR Little Endian."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = f"LDCT_MONAI_{__version__}"[:16]
    return meta


def hu_to_stored(hu: np.ndarray, slope: float, intercept: float, signed: bool) -> np.ndarray:
    """HU -> stored integers with rounding and clipping to what 16 bits can hold (never wrapping)."""
    stored = np.rint((np.asarray(hu, dtype=np.float64) - intercept) / slope)
    lo, hi = (-32768, 32767) if signed else (0, 65535)
    return np.clip(stored, lo, hi).astype(np.int16 if signed else np.uint16)


def make_ct_slice(
    hu: np.ndarray,
    info: SeriesInfo,
    *,
    instance_number: int,
    position: Sequence[float],
    sop_uid: str | None = None,
    signed: bool = False,
    content_datetime: _dt.datetime | None = None,
) -> Dataset:
    """One CT Image Storage dataset (with file meta) for an axial HU slice.

    Args:
        hu: (rows, cols) Hounsfield units; stored with ``info``'s slope/intercept, rounded and clipped.
        info: series-level attributes.
        instance_number: InstanceNumber (1-based).
        position: ImagePositionPatient (x, y, z) of the first transmitted pixel, mm.
        sop_uid: SOPInstanceUID; a fresh random one when None.
        signed: PixelRepresentation 1 (int16) instead of 0 (uint16).
        content_datetime: ContentDate/Time; the study date at noon when None (reproducible files).
    """
    hu = np.asarray(hu)
    if hu.ndim != 2:
        raise ValueError(f"CT slice must be 2-D (rows, cols), found shape {hu.shape}.")
    sop_uid = sop_uid or make_uid()
    stored = hu_to_stored(hu, info.rescale_slope, info.rescale_intercept, signed)
    when = content_datetime or _dt.datetime.combine(info.study_date, _dt.time(12, 0))

    ds = Dataset()
    ds.file_meta = ct_file_meta(sop_uid)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = list(info.image_type)
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = info.study_date.strftime("%Y%m%d")
    ds.SeriesDate = ds.StudyDate
    ds.AcquisitionDate = ds.StudyDate
    ds.ContentDate = when.strftime("%Y%m%d")
    ds.StudyTime = info.study_time
    ds.SeriesTime = info.study_time
    ds.AcquisitionTime = info.study_time
    ds.ContentTime = when.strftime("%H%M%S")
    ds.AccessionNumber = info.accession_number
    ds.Modality = "CT"
    ds.Manufacturer = info.manufacturer
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = info.study_description
    ds.SeriesDescription = info.series_description
    ds.ManufacturerModelName = info.model_name
    ds.PatientName = info.patient_name or info.patient_id
    ds.PatientID = info.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = info.patient_sex
    if info.patient_age:
        ds.PatientAge = info.patient_age
    if info.body_part:
        ds.BodyPartExamined = info.body_part
    ds.SliceThickness = _ds(info.slice_thickness)
    if info.kvp is not None:
        ds.KVP = _ds(info.kvp)
    else:
        ds.KVP = None
    ds.SoftwareVersions = f"ldct-monai {__version__}"
    if info.exposure_time_ms is not None:
        ds.ExposureTime = int(round(info.exposure_time_ms))
    if info.tube_current_ma is not None:
        ds.XRayTubeCurrent = int(round(info.tube_current_ma))
    if info.exposure_mas is not None:
        ds.Exposure = int(round(info.exposure_mas))
    if info.kernel:
        ds.ConvolutionKernel = info.kernel
    ds.PatientPosition = "FFS"
    if info.ctdi_vol is not None:
        ds.CTDIvol = float(info.ctdi_vol)
    ds.StudyInstanceUID = info.study_uid
    ds.SeriesInstanceUID = info.series_uid
    ds.StudyID = info.study_id
    ds.SeriesNumber = info.series_number
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = instance_number
    ds.ImagePositionPatient = [_ds(v) for v in position]
    ds.ImageOrientationPatient = [_ds(v) for v in info.orientation]
    ds.FrameOfReferenceUID = info.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = _ds(position[2])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = (int(s) for s in hu.shape)
    ds.PixelSpacing = [_ds(v) for v in info.pixel_spacing]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if signed else 0
    if info.pixel_padding_value is not None:
        ds.PixelPaddingValue = int(info.pixel_padding_value)
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    ds.RescaleIntercept = _ds(info.rescale_intercept)
    ds.RescaleSlope = _ds(info.rescale_slope)
    ds.RescaleType = "HU"
    for key, value in info.extra.items():
        setattr(ds, key, value)
    ds.PixelData = stored.tobytes()
    return ds


def write_ct_series(
    out_dir: Path,
    volume_hu: np.ndarray,
    info: SeriesInfo,
    *,
    z_positions: Sequence[float],
    sop_uids: Sequence[str] | None = None,
    origin_xy: tuple[float, float] | None = None,
    signed: bool = False,
    file_pattern: str = "1-{:03d}.dcm",
) -> list[Path]:
    """Write a (slices, rows, cols) HU volume as one file per slice, TCIA style (``1-001.dcm`` ...).

    ``origin_xy`` defaults to centring the image on the patient axis.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n, rows, cols = volume_hu.shape
    if len(z_positions) != n:
        raise ValueError(f"{n} slices but {len(z_positions)} z positions.")
    if origin_xy is None:
        origin_xy = (-(cols - 1) / 2 * info.pixel_spacing[1], -(rows - 1) / 2 * info.pixel_spacing[0])
    paths = []
    for i in range(n):
        ds = make_ct_slice(
            volume_hu[i],
            info,
            instance_number=i + 1,
            position=(origin_xy[0], origin_xy[1], float(z_positions[i])),
            sop_uid=None if sop_uids is None else sop_uids[i],
            signed=signed,
        )
        paths.append(write_dataset(ds, out_dir / file_pattern.format(i + 1)))
    return paths


def write_dataset(ds: Dataset, path: Path) -> Path:
    """Write a dataset with its file meta as a DICOM Part 10 file (the package's one ``save_as``)."""
    ds.save_as(path, enforce_file_format=True)
    return path


def _ds(value: float) -> str:
    """A decimal string (VR DS) of at most 16 characters."""
    s = f"{float(value):.6g}"
    if len(s) > 16:
        s = f"{float(value):.8e}"[:16]
    return s
