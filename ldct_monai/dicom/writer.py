"""Write a denoised slice as a derived CT Image Storage instance of the source's study.

highdicom-style derivation, by hand because highdicom has no single-frame CT constructor (see
``ldct_monai.dicom.create``): start from the source slice's public attributes (patient, study, frame
of reference, equipment, acquisition, geometry), drop what no longer describes the new pixels or
references things this instance does not reference, then set the series/instance identity, the
derivation (ImageType DERIVED\\SECONDARY, DerivationDescription, SourceImageSequence,
ReferencedSeriesSequence, ContributingEquipmentSequence) and the new pixels, stored with the source
slice's own RescaleSlope/Intercept, BitsStored and PixelRepresentation. Files are Explicit VR Little
Endian. ``docs/dicom-conformance.md`` lists every attribute decision and its reason.
"""

from __future__ import annotations

import copy
import datetime as _dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pydicom.uid
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.valuerep import PersonName

from ldct_monai import __version__
from ldct_monai.dicom.core import CT_IMAGE_STORAGE, rescale
from ldct_monai.dicom.create import ct_file_meta, make_uid, write_dataset
from ldct_monai.errors import InputError

if TYPE_CHECKING:
    from ldct_monai.dicom.reader import CTSlice, SliceRef

SOFTWARE = f"ldct-monai {__version__}"
SERIES_NUMBER_OFFSET = 1000  # derived SeriesNumber = source + 1000: sorts next to its source in viewers

# Attributes dropped from the copy, and why (see docs/dicom-conformance.md).
REMOVED = (
    # described the source pixels
    "SmallestImagePixelValue",
    "LargestImagePixelValue",
    "SmallestPixelValueInSeries",
    "LargestPixelValueInSeries",
    "IconImageSequence",
    "ExtendedOffsetTable",
    "ExtendedOffsetTableLengths",
    "FloatPixelData",
    "DoubleFloatPixelData",
    "PixelDataProviderURL",
    "DataSetTrailingPadding",
    "PlanarConfiguration",
    # references made by the source, replaced by ours (a derived image references its source)
    "SourceImageSequence",
    "DerivationCodeSequence",
    "DerivationDescription",
    "ReferencedImageSequence",
    "ReferencedSeriesSequence",
    "StudiesContainingOtherReferencedInstancesSequence",
    "ContributingEquipmentSequence",  # rebuilt: the source's items, then ours
    # identity of the source instance / series
    "InstanceCreatorUID",
    "StorageMediaFileSetUID",
    "StorageMediaFileSetID",
    "DigitalSignaturesSequence",
    "MACParametersSequence",
    "EncryptedAttributesSequence",
    "OriginalAttributesSequence",
)


# Transfer syntaxes that are always lossy (JPEG baseline/extended, JPEG-LS near-lossless, MPEG/HEVC video).
_ALWAYS_LOSSY = frozenset(
    {str(pydicom.uid.JPEGBaseline8Bit), str(pydicom.uid.JPEGExtended12Bit), str(pydicom.uid.JPEGLSNearLossless)}
    | {str(u) for u in pydicom.uid.MPEGTransferSyntaxes}
)


_IMMUTABLE = (str, int, float, bytes, type(None), PersonName)
_UNCOMPRESSED = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}  # native transfer syntaxes


@dataclass(frozen=True)
class DerivedSeries:
    """Series-level attributes shared by every instance of one derived series.

    Attributes:
        series_instance_uid: SeriesInstanceUID of the derived series (new).
        series_number: SeriesNumber of the derived series.
        series_description: SeriesDescription, at most 64 characters (LO).
        derivation_description: DerivationDescription, how the pixels were made (ST, 1024 chars).
        source_series_instance_uid: SeriesInstanceUID of the source series (ReferencedSeriesSequence).
        created: creation date/time (SeriesDate/Time, InstanceCreationDate/Time, ContentDate/Time).
        model_name: ManufacturerModelName in the ContributingEquipmentSequence item.
        software_versions: SoftwareVersions in the ContributingEquipmentSequence item.
    """

    series_instance_uid: str
    series_number: int
    series_description: str
    derivation_description: str
    source_series_instance_uid: str
    created: _dt.datetime = field(default_factory=_dt.datetime.now)
    model_name: str = "ldct-monai"
    software_versions: tuple[str, ...] = (SOFTWARE,)

    @classmethod
    def for_source(
        cls,
        source: Dataset,
        *,
        what: str,
        derivation_description: str,
        model_name: str = "ldct-monai",
        series_instance_uid: str | None = None,
        series_number: int | None = None,
        created: _dt.datetime | None = None,
    ) -> DerivedSeries:
        """Derive series attributes from one source slice.

        Args:
            source: any slice of the source series.
            what: short tag appended to the source SeriesDescription, e.g. "denoised ldct-monai-cyclegan".
            derivation_description: DerivationDescription text.
            model_name: the model, recorded in ContributingEquipmentSequence.
            series_instance_uid: new UID; a fresh random 2.25 UID when None.
            series_number: SeriesNumber; source + 1000 when None (1000 when the source has none).
            created: creation time; now when None.
        """
        src_desc = str(getattr(source, "SeriesDescription", "") or "").strip()
        suffix = f"[{_ascii(what)}]"
        room = 64 - len(suffix) - 1
        desc = f"{src_desc[:room].rstrip()} {suffix}".strip() if room > 0 else suffix[:64]
        if series_number is None:
            try:
                series_number = int(getattr(source, "SeriesNumber", 0) or 0) + SERIES_NUMBER_OFFSET
            except (TypeError, ValueError):
                series_number = SERIES_NUMBER_OFFSET
        return cls(
            series_instance_uid=series_instance_uid or make_uid(),
            series_number=int(series_number) if -(2**31) <= int(series_number) < 2**31 else SERIES_NUMBER_OFFSET,
            series_description=desc[:64],
            derivation_description=_ascii(derivation_description)[:1024],
            source_series_instance_uid=str(source.SeriesInstanceUID),
            created=created or _dt.datetime.now(),
            model_name=_ascii(model_name)[:64],
        )


def stored_range(ds: Dataset) -> tuple[int, int]:
    """(min, max) stored value the source's BitsStored and PixelRepresentation can hold."""
    bits = int(getattr(ds, "BitsStored", 16) or 16)
    if int(getattr(ds, "PixelRepresentation", 0) or 0) == 1:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def hu_to_source_stored(hu: np.ndarray, source: Dataset, keep: np.ndarray | None = None, source_stored: np.ndarray | None = None) -> np.ndarray:
    """HU -> stored values with the source slice's slope, intercept, BitsStored and sign.

    Rounded to the nearest integer and clipped to what BitsStored can hold (never wrapped). Pixels in
    ``keep`` (outside the field of view) get their source stored value back unchanged.

    Args:
        hu: (rows, cols) HU.
        source: the source slice (RescaleSlope/Intercept, BitsStored, PixelRepresentation).
        keep: pixels that keep ``source_stored``; None for none.
        source_stored: the source's decoded stored values (needed with ``keep``).

    Returns:
        int16 (signed) or uint16 array.
    """
    slope, intercept = rescale(source)
    lo, hi = stored_range(source)
    # float32 is exact to ~1e-3 stored units over the 16-bit range: rounding is unaffected
    stored = np.asarray(hu, dtype=np.float32) - np.float32(intercept)
    if slope != 1.0:
        stored /= np.float32(slope)
    np.rint(stored, out=stored)
    np.clip(stored, lo, hi, out=stored)
    out = stored.astype(np.int16 if lo < 0 else np.uint16)
    if keep is not None:
        if source_stored is None:
            raise ValueError("keep mask given without the source's stored values.")
        out[keep] = source_stored[keep]
    return out


def derive_slice(source: Dataset, stored: np.ndarray, series: DerivedSeries, *, instance_number: int, sop_instance_uid: str | None = None) -> Dataset:
    """A derived CT Image Storage dataset (with file meta) for one denoised source slice.

    Args:
        source: the source slice's dataset (pixel data is not used).
        stored: new stored values (rows, cols), int16/uint16, e.g. from :func:`hu_to_source_stored`.
        series: the derived series' attributes.
        instance_number: InstanceNumber of the new instance (1-based, in geometric order).
        sop_instance_uid: SOPInstanceUID; a fresh random 2.25 UID when None.

    Raises:
        InputError: ``stored`` does not match the source's Rows x Columns.
    """
    rows, cols = int(source.Rows), int(source.Columns)
    if stored.shape != (rows, cols):
        raise InputError(f"{_name(source)}: denoised slice is {stored.shape}, the source is {rows}x{cols}.")
    sop_uid = sop_instance_uid or make_uid()
    ds = Dataset()
    for elem in source:  # iterating converts raw elements; public, non-group-length, non-pixel ones only
        tag = elem.tag
        if tag.is_private or tag.element == 0 or tag.group in (0x0002, 0xFFFA) or tag == 0x7FE00010 or 0x6000 <= tag.group <= 0x60FF:
            continue
        if elem.keyword in REMOVED:
            continue
        # immutable values (str, numbers, bytes, names) are shared; lists and sequences are copied
        ds.add(copy.copy(elem) if isinstance(elem.value, _IMMUTABLE) else copy.deepcopy(elem))

    when = series.created
    date, time = when.strftime("%Y%m%d"), when.strftime("%H%M%S.%f")
    if not str(getattr(ds, "SpecificCharacterSet", "") or "").strip():
        # empty is invalid (Type 1C); absent means the default repertoire, which is all we add
        if "SpecificCharacterSet" in ds:
            del ds.SpecificCharacterSet
    if "Laterality" not in ds and not str(getattr(ds, "BodyPartExamined", "") or "").strip():
        # Laterality is Type 2C (paired body parts). With no BodyPartExamined the condition cannot be ruled
        # out (dciodvfy reports it missing); an empty value is the Type 2 encoding of "unknown", not a guess.
        ds.Laterality = ""

    # SOP Common
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.InstanceCreationDate = date
    ds.InstanceCreationTime = time
    equipment = list(getattr(source, "ContributingEquipmentSequence", []) or [])
    item = Dataset()
    item.Manufacturer = "ldct-monai"
    item.ManufacturerModelName = series.model_name
    item.SoftwareVersions = list(series.software_versions) if len(series.software_versions) > 1 else series.software_versions[0]
    item.ContributionDateTime = when.strftime("%Y%m%d%H%M%S.%f")
    item.ContributionDescription = "Denoised (derived image)"
    item.PurposeOfReferenceCodeSequence = Sequence([_code("109102", "DCM", "Processing Equipment")])
    ds.ContributingEquipmentSequence = Sequence([copy.deepcopy(e) for e in equipment] + [item])

    # General Series
    ds.SeriesInstanceUID = series.series_instance_uid
    ds.SeriesNumber = series.series_number
    ds.SeriesDescription = series.series_description
    ds.SeriesDate = date
    ds.SeriesTime = time

    # General Image
    ds.InstanceNumber = int(instance_number)
    ds.ContentDate = date
    ds.ContentTime = time
    src_type = [str(v) for v in (getattr(source, "ImageType", None) or [])]
    ds.ImageType = ["DERIVED", "SECONDARY", *src_type[2:]]
    ds.DerivationDescription = series.derivation_description
    src_ref = Dataset()
    src_ref.ReferencedSOPClassUID = str(source.SOPClassUID)
    src_ref.ReferencedSOPInstanceUID = str(source.SOPInstanceUID)
    src_ref.PurposeOfReferenceCodeSequence = Sequence([_code("121322", "DCM", "Source image for image processing operation")])
    ds.SourceImageSequence = Sequence([src_ref])

    # Common Instance Reference: every instance this one references, by series (same study)
    inst = Dataset()
    inst.ReferencedSOPClassUID = str(source.SOPClassUID)
    inst.ReferencedSOPInstanceUID = str(source.SOPInstanceUID)
    ref_series = Dataset()
    ref_series.SeriesInstanceUID = series.source_series_instance_uid
    ref_series.ReferencedInstanceSequence = Sequence([inst])
    ds.ReferencedSeriesSequence = Sequence([ref_series])

    # Image Pixel: the source's representation, new values
    lo, hi = stored_range(source)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = str(getattr(source, "PhotometricInterpretation", "MONOCHROME2"))
    ds.Rows, ds.Columns = rows, cols
    bits = int(getattr(source, "BitsStored", 16) or 16)
    ds.BitsAllocated = 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 1 if lo < 0 else 0
    dtype = np.dtype("<i2") if lo < 0 else np.dtype("<u2")
    values = np.asarray(stored)
    if values.size and (values.min() < lo or values.max() > hi):
        raise InputError(f"{_name(source)}: stored values {values.min()}..{values.max()} do not fit BitsStored {bits} ({lo}..{hi}).")
    ds.PixelData = np.ascontiguousarray(values.astype(dtype, copy=False)).tobytes()
    ds["PixelData"].VR = "OW"
    if _source_was_lossy(source):
        ds.LossyImageCompression = "01"  # PS3.3 C.7.6.1.1.5: once lossy, never reset (ratio/method kept as history)

    ds.file_meta = ct_file_meta(sop_uid)
    ds.preamble = b"\x00" * 128
    return ds


def write_denoised_slice(source: CTSlice, hu: np.ndarray, series: DerivedSeries, path: Path, keep_above_hu: float | None = None) -> Path:
    """Pack denoised HU into the source's representation and write the derived instance.

    Pixels outside the field of view (``source.padding``) and, when ``keep_above_hu`` is given, pixels
    whose source HU is above it (beyond the model's window: metal) keep their source stored values.

    Args:
        source: the decoded source slice (dataset, stored values, HU, padding mask).
        hu: denoised (rows, cols) HU.
        series: the derived series' attributes.
        path: output file.
        keep_above_hu: keep source pixels above this HU (the model card's window top); None to keep none.
    """
    keep = source.padding
    if keep_above_hu is not None:
        above = source.hu > keep_above_hu
        keep = above if keep is None else (keep | above)
    if keep is not None and not keep.any():
        keep = None
    stored = hu_to_source_stored(hu, source.dataset, keep, source.stored)
    ds = derive_slice(source.dataset, stored, series, instance_number=source.index + 1)
    return write_dataset(ds, path)


def write_denoised_slice_from_file(ref: SliceRef, index: int, rows: int, columns: int, hu: np.ndarray, series: DerivedSeries, path: Path, keep_above_hu: float | None = None) -> Path:
    """:func:`write_denoised_slice` after re-reading the source (for worker processes: only HU is sent)."""
    from ldct_monai.dicom.reader import decode_slice

    return write_denoised_slice(decode_slice(ref, index, rows, columns), hu, series, path, keep_above_hu)


def derive_twin_slice(source: Dataset, stored: np.ndarray, *, sop_instance_uid: str, series_instance_uid: str,
                      series_description: str, derivation_description: str, dose_fraction: float) -> Dataset:
    """A simulated lower-dose twin of one source slice (``synth --from-series``): a copy that a scanner could have written.

    Unlike :func:`derive_slice` (a denoised image of the source's study), the twin keeps every element of the
    source, private ones included, as a scanner's low-dose series would; it gets new pixels and identity, is
    marked DERIVED\\SECONDARY with its DerivationDescription, references its source slice, and has its dose tags
    (XRayTubeCurrent, Exposure, CTDIvol) scaled by the dose fraction. Compressed sources become Explicit VR
    Little Endian.

    Args:
        source: the full-dose slice (with file meta).
        stored: the twin's stored values (rows, cols), in the source's representation.
        sop_instance_uid, series_instance_uid: the twin's UIDs.
        series_description: SeriesDescription (e.g. "Low Dose Images", what build-manifest recognises).
        derivation_description: how the pixels were made.
        dose_fraction: the simulated dose as a fraction of the source's.
    """
    new = copy.deepcopy(source)
    new.SOPInstanceUID = sop_instance_uid
    new.file_meta.MediaStorageSOPInstanceUID = sop_instance_uid
    if str(new.file_meta.TransferSyntaxUID) not in _UNCOMPRESSED:
        new.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    new.SeriesInstanceUID = series_instance_uid
    new.SeriesDescription = series_description
    if "SeriesNumber" in source and source.SeriesNumber is not None:
        new.SeriesNumber = min(int(source.SeriesNumber) + SERIES_NUMBER_OFFSET, 2**31 - 1)
    image_type = list(getattr(source, "ImageType", []) or [])
    new.ImageType = ["DERIVED", "SECONDARY", *image_type[2:]]
    new.DerivationDescription = derivation_description[:1024]
    ref = Dataset()
    ref.ReferencedSOPClassUID = source.SOPClassUID
    ref.ReferencedSOPInstanceUID = source.SOPInstanceUID
    new.SourceImageSequence = Sequence([ref])
    for key in ("XRayTubeCurrent", "Exposure"):
        if getattr(source, key, None) not in (None, ""):
            setattr(new, key, int(round(float(getattr(source, key)) * dose_fraction)))
    if getattr(source, "CTDIvol", None) not in (None, ""):
        new.CTDIvol = float(source.CTDIvol) * dose_fraction
    for key in ("SmallestImagePixelValue", "LargestImagePixelValue"):
        if key in new:
            del new[key]
    new.PixelData = stored.tobytes()
    return new


def _source_was_lossy(source: Dataset) -> bool:
    flag = str(getattr(source, "LossyImageCompression", "") or "")
    if flag == "01":
        return True
    ts = str(getattr(getattr(source, "file_meta", None), "TransferSyntaxUID", "") or "")
    return ts in _ALWAYS_LOSSY  # JPEG 2000 / HTJ2K may be either: their LossyImageCompression flag decides


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _ascii(text: str) -> str:
    """Our added text in the default character repertoire (printable ASCII, no backslash)."""
    return "".join(c if 32 <= ord(c) < 127 and c != "\\" else "?" for c in str(text))


def _name(ds: Dataset) -> str:
    return str(getattr(ds, "filename", None) or getattr(ds, "SOPInstanceUID", "<dataset>"))
