"""What a usable CT slice is: one decision for every reader of DICOM files.

The tree scan of ``build-manifest`` (:mod:`ldct_monai.dicom.scan`, raw header bytes for speed), the series
reader of ``denoise`` and the slice reader of training and evaluation (:mod:`ldct_monai.dicom.reader`,
pydicom datasets) each gather the same few :class:`SliceFacts` their own way and ask :func:`check_image`
and :func:`check_geometry`, so they accept the same files and reject the others with the same reason
(a key of :data:`FILE_REASONS`, the words of ``skipped.csv``). How a file is parsed, and how truncation is
detected, stays with each reader; the reasons are these.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import NamedTuple

from ldct_monai.dicom.core import CT_IMAGE_STORAGE, ENHANCED_CT_IMAGE_STORAGE, z_along_normal

# Reasons a file is not a usable CT slice, in the order the checks run.
FILE_REASONS: dict[str, str] = {
    "not_dicom": "not a DICOM file (no DICM prefix and no recognisable dataset)",
    "unreadable": "DICOM that pydicom cannot parse, or an OS error while reading",
    "truncated": "file shorter than its header or Pixel Data says (interrupted download)",
    "projection_data": "raw projection data (DICOM-CT-PD private tags), not a reconstructed image",
    "not_ct": "not a CT image (Modality or SOPClassUID is something else)",
    "multiframe": "multi-frame (Enhanced / Legacy Converted Enhanced CT) instance: one slice per file expected",
    "localizer": "localizer / scout / topogram (ImageType)",
    "no_pixel_data": "a CT header without Pixel Data",
    "unsupported_pixels": "not one 16-bit grey-level sample per pixel (e.g. RGB or 8-bit secondary captures)",
    "undecodable": "transfer syntax that pydicom cannot decode here (unknown, or its decoder plugin is missing)",
    "missing_geometry": "ImagePositionPatient / ImageOrientationPatient / Rows / Columns missing or invalid",
}

MULTIFRAME_CT = {
    ENHANCED_CT_IMAGE_STORAGE: "Enhanced CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.2": "Legacy Converted Enhanced CT Image Storage",
}
# DICOM-CT-PD (projection data) private tags, as in the TCIA LDCT-and-Projection-data collection.
PROJECTION_TAGS = (0x70291010, 0x70291011, 0x70311001, 0x70331013)
LOCALIZER_WORDS = ("LOCALIZER", "SCOUT", "TOPOGRAM", "SCANOGRAM", "SURVIEW")
MONOCHROME = ("MONOCHROME1", "MONOCHROME2")


@dataclass(frozen=True)
class SliceFacts:
    """The header facts the decision needs (each reader fills them from what it parsed).

    Attributes:
        sop_class: SOPClassUID ('' when absent).
        modality: Modality, upper case ('' when absent).
        image_type: ImageType values joined by '\\', upper case.
        description: SeriesDescription (for messages).
        frames: NumberOfFrames (None when absent).
        projection_tags: a DICOM-CT-PD private tag is present.
        has_pixel_data: Pixel Data (or Float / Double Float Pixel Data) is present.
        samples: SamplesPerPixel (None when absent: 1).
        bits_allocated: BitsAllocated (None when absent).
        photometric: PhotometricInterpretation ('' when absent).
        transfer_syntax: TransferSyntaxUID of the file meta (None without one: raw data sets).
        rows, cols: Rows, Columns.
        ipp: ImagePositionPatient (None when absent).
        iop: ImageOrientationPatient (None when absent).
        has_uids: SOPInstanceUID and SeriesInstanceUID are present (empty ones are minted).
    """

    sop_class: str
    modality: str
    image_type: str = ""
    description: str = ""
    frames: float | None = None
    projection_tags: bool = False
    has_pixel_data: bool = True
    samples: int | None = None
    bits_allocated: int | None = None
    photometric: str = ""
    transfer_syntax: str | None = None
    rows: int | None = None
    cols: int | None = None
    ipp: list[float] | None = None
    iop: list[float] | None = None
    has_uids: bool = True


class Rejected(NamedTuple):
    """Why a file is not used: a :data:`FILE_REASONS` key and a one-line detail."""

    reason: str
    detail: str


def is_ct(f: SliceFacts) -> bool:
    """The header says CT (Modality or a CT SOP class): a problem with it is a broken CT file, not another kind."""
    return f.modality == "CT" or f.sop_class in (CT_IMAGE_STORAGE, *MULTIFRAME_CT)


def check_image(f: SliceFacts) -> Rejected | None:
    """The image-level checks, in order: projection data, multi-frame, not CT, localizer, no pixels, pixel format.

    Returns:
        None for a single-frame CT image whose pixels this package decodes, else why not.
    """
    if f.projection_tags:
        return Rejected("projection_data", f"DICOM-CT-PD private tags present ({f.description!r})")
    if f.sop_class in MULTIFRAME_CT:
        return Rejected("multiframe", f"SOPClassUID is {MULTIFRAME_CT[f.sop_class]}")
    if f.modality != "CT" or (f.sop_class and f.sop_class != CT_IMAGE_STORAGE):
        return Rejected("not_ct", f"Modality {f.modality or '(none)'}, SOPClassUID {f.sop_class or '(none)'}")
    if f.frames is not None and f.frames > 1:
        return Rejected("multiframe", f"NumberOfFrames is {int(f.frames)}")
    if any(w in f.image_type for w in LOCALIZER_WORDS):
        return Rejected("localizer", f"ImageType {f.image_type}")
    if not f.has_pixel_data:
        return Rejected("no_pixel_data", "no Pixel Data element after the header")
    if (f.samples or 1) != 1 or f.bits_allocated not in (None, 16) or (f.photometric and f.photometric not in MONOCHROME):
        return Rejected("unsupported_pixels", f"SamplesPerPixel {f.samples or 1}, BitsAllocated {f.bits_allocated}, "
                                              f"PhotometricInterpretation {f.photometric or '(none)'}")
    why = undecodable(f.transfer_syntax) if f.transfer_syntax else None
    if why:
        return Rejected("undecodable", why)
    return None


def check_geometry(f: SliceFacts) -> Rejected | None:
    """Rows, Columns, ImagePositionPatient, ImageOrientationPatient (and the instance / series UIDs) usable."""
    if not f.rows or not f.cols:
        return Rejected("missing_geometry", f"Rows x Columns is {f.rows} x {f.cols}")
    if f.ipp is None or len(f.ipp) != 3:
        return Rejected("missing_geometry", "ImagePositionPatient missing or not 3 numbers")
    if f.iop is None or len(f.iop) != 6:
        return Rejected("missing_geometry", "ImageOrientationPatient missing or not 6 numbers")
    if z_along_normal(f.ipp, f.iop) is None:
        return Rejected("missing_geometry", f"ImageOrientationPatient row and column are parallel ({f.iop})")
    if not f.has_uids:
        return Rejected("missing_geometry", "SOPInstanceUID or SeriesInstanceUID missing")
    return None


@functools.lru_cache(maxsize=64)
def undecodable(transfer_syntax: str) -> str | None:
    """None when pydicom can decode this transfer syntax here, else why not (cached: asked once per file)."""
    import pydicom.uid
    from pydicom.pixels import get_decoder

    uid = pydicom.uid.UID(transfer_syntax)
    if uid in (pydicom.uid.ImplicitVRLittleEndian, pydicom.uid.ExplicitVRLittleEndian, pydicom.uid.ExplicitVRBigEndian,
               pydicom.uid.DeflatedExplicitVRLittleEndian):
        return None  # native pixel data
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        return f"transfer syntax {uid.name} ({transfer_syntax}) cannot be decoded by pydicom"
    if not decoder.is_available:
        missing = "; ".join(f"{name}: {', '.join(deps)}" for name, deps in decoder.missing_dependencies.items()) \
            if hasattr(decoder, "missing_dependencies") else ""
        return f"transfer syntax {uid.name} needs a decoder plugin that is not installed ({missing or 'see pydicom docs'})"
    return None
