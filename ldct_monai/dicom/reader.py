"""Find, group, validate and sort one CT series in a folder tree; stream its slices in HU.

The reader works in two passes so that nothing heavy happens before the input is known to be good:

1. :func:`scan_series` reads only headers (pixel data deferred) of every file under a folder, ignores
   what is not a single-frame CT image (with one warning that names them), and groups slices by
   SeriesInstanceUID. Truncated files are caught here, from the Pixel Data length in the header, and so
   is a CT file cut inside its header. Symbolic links to folders are followed, each real folder once.
   pydicom's own warnings and log messages about odd files are kept off the console (one warning of
   ours names the files that were ignored).
2. :func:`read_series` picks one series, checks it is one consistent volume (sizes, orientation, pixel
   spacing, no duplicate positions, a decodable transfer syntax; every problem collected, then raised
   once), sorts slices by position along the slice normal (``ldct_monai.dicom.core.slice_position``,
   never InstanceNumber or file name) and warns about uneven spacing or gaps.

Files from real scanners: a present-but-empty SOPInstanceUID, SeriesInstanceUID, StudyInstanceUID or
FrameOfReferenceUID (anonymisers do this) gets a deterministic minted UID (2.25, from the file's bytes or
its folder) and a warning says so; an element whose value does not fit its VR (vendor private tags with
odd lengths) is dropped when the slice is read, with a warning, unless the image needs it.

Pixels are decoded one slice at a time (:meth:`CTSeries.read_slice`, :meth:`CTSeries.iter_slices` with
a bounded read-ahead), so memory does not grow with the length of the series.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import contextlib
import hashlib
import logging
import os
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import pydicom
import pydicom.dataset
import pydicom.uid
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from ldct_monai.dicom.classify import PROJECTION_TAGS, Rejected, SliceFacts, check_geometry, check_image, is_ct
from ldct_monai.dicom.core import CT_IMAGE_STORAGE, padding_mask, slice_normal, slice_position, to_hu
from ldct_monai.dicom.create import make_uid
from ldct_monai.errors import InputError

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")

PIXEL_DATA = 0x7FE00010
_PIXEL_TAGS = (PIXEL_DATA, 0x7FE00008, 0x7FE00009)  # Pixel Data, Float Pixel Data, Double Float Pixel Data
# Classifier reasons that make a file of the folder broken (read_series refuses the series) rather than skipped.
BROKEN_REASONS = frozenset({"unreadable", "truncated", "no_pixel_data", "unsupported_pixels", "undecodable", "missing_geometry"})
DUPLICATE_TOL_MM = 0.01  # two slices closer than this along the normal are the same position
SPACING_REL_TOL = 0.01  # a step differing from the median step by more than 1 % (+ 1 µm) is uneven
ORIENTATION_TOL = 1e-4  # direction cosines equal within this
PIXEL_SPACING_TOL = 1e-4  # mm
OUTSIDE_FOV_MAX_HU = -1500.0  # without PixelPaddingValue, a slice minimum at or below this is padding
MINTED_KEYWORDS = ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID")
# Elements reading, HU conversion and the derived series need: one of these with an unreadable value is an error.
ESSENTIAL = frozenset({
    "SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "Modality", "Rows", "Columns",
    "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "SamplesPerPixel", "PhotometricInterpretation",
    "RescaleSlope", "RescaleIntercept", "PixelSpacing", "ImagePositionPatient", "ImageOrientationPatient",
    "PixelPaddingValue", "PixelPaddingRangeLimit", "NumberOfFrames", "PixelData",
})  # fmt: skip


@dataclass(frozen=True)
class SliceRef:
    """One slice of a series, known from its header only.

    Attributes:
        path: the file.
        sop_instance_uid: SOPInstanceUID of the source slice.
        position: ImagePositionPatient projected on the slice normal, mm (the sort key).
        instance_number: InstanceNumber as found (None when absent); informative only.
        minted: (keyword, UID) pairs set on the dataset when the slice is read, for UIDs the file holds
            empty (see :data:`MINTED_KEYWORDS`).
    """

    path: Path
    sop_instance_uid: str
    position: float
    instance_number: int | None = None
    minted: tuple[tuple[str, str], ...] = ()


@dataclass
class CTSlice:
    """One decoded slice: its dataset (with pixel data), stored values, HU and padding mask.

    Attributes:
        index: position in the sorted series (0 = lowest position along the normal).
        ref: the header-level reference.
        dataset: the full pydicom dataset read from ``ref.path``.
        stored: stored pixel values (rows, cols) as decoded (int16 or uint16, BitsStored applied).
        hu: Hounsfield units, float32, with this slice's own RescaleSlope/Intercept.
        padding: True where the pixel is outside the reconstruction field of view (PixelPaddingValue,
            or the slice minimum when it is at most -1500 HU and no PixelPaddingValue is given);
            None when there is no such pixel.
    """

    index: int
    ref: SliceRef
    dataset: Dataset
    stored: np.ndarray
    hu: np.ndarray
    padding: np.ndarray | None
    dropped: tuple[str, ...] = ()  # elements removed from ``dataset`` because their value does not fit their VR


@dataclass
class _Header:
    path: Path
    ds: Dataset
    minted: dict[str, str] = field(default_factory=dict)  # keyword -> UID minted for an empty one

    def uid(self, keyword: str) -> str:
        return self.minted.get(keyword) or str(self.ds.get(keyword, "") or "")


@dataclass
class SeriesSummary:
    """One series found by :func:`scan_series` (for listings)."""

    series_instance_uid: str
    description: str
    n_slices: int


@dataclass
class ScanResult:
    """What :func:`scan_series` found under a folder.

    Attributes:
        root: the folder searched.
        series: SeriesInstanceUID -> headers of its CT slices (file order).
        skipped: (path, "reason: detail") for every file that is not a usable CT slice (reason: a key of
            :data:`ldct_monai.dicom.classify.FILE_REASONS`, or why a linked folder was not followed).
        broken: (path, problem, SeriesInstanceUID or None) for CT files that are truncated or corrupt.
    """

    root: Path
    series: dict[str, list[_Header]]
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    broken: list[tuple[Path, str, str | None]] = field(default_factory=list)

    def raise_if_broken(self, series_uid: str | None) -> None:
        """Raise for broken files of ``series_uid`` (all series when None) or of an unknown series."""
        bad = [f"{_rel(p, self.root)} ({why})" for p, why, uid in self.broken if series_uid is None or uid in (None, series_uid)]
        if bad:
            more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
            raise InputError(f"{self.root}: broken DICOM file(s): {'; '.join(bad[:3])}{more}.")

    def summaries(self) -> list[SeriesSummary]:
        """One :class:`SeriesSummary` per series, largest first."""
        out = [
            SeriesSummary(uid, str(getattr(hdrs[0].ds, "SeriesDescription", "") or ""), len(hdrs))
            for uid, hdrs in self.series.items()
        ]
        return sorted(out, key=lambda s: (-s.n_slices, s.series_instance_uid))


@dataclass
class CTSeries:
    """One validated CT series, slices sorted by position along the normal.

    Attributes:
        root: folder it was found in.
        series_instance_uid: SeriesInstanceUID of the source series.
        description: SeriesDescription ("" when absent).
        slices: header-level slice references, sorted by ``position`` (ascending).
        rows, columns: image size in pixels.
        pixel_spacing: (row spacing, column spacing) in mm.
        orientation: ImageOrientationPatient (six direction cosines).
        normal: unit slice normal (row x column direction).
        spacing: median distance between neighbouring slices in mm (None for one slice).
        transfer_syntaxes: the transfer syntax UIDs of the files.
        skipped: files under ``root`` that were ignored, with the reason.
        minted: keyword -> number of files whose empty UID of that keyword was minted.
    """

    root: Path
    series_instance_uid: str
    description: str
    slices: list[SliceRef]
    rows: int
    columns: int
    pixel_spacing: tuple[float, float]
    orientation: tuple[float, ...]
    normal: np.ndarray
    spacing: float | None
    transfer_syntaxes: tuple[str, ...]
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    minted: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.slices)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(slices, rows, columns)."""
        return (len(self.slices), self.rows, self.columns)

    def read_slice(self, index: int) -> CTSlice:
        """Read and decode one slice (in sorted order) to stored values, HU and padding mask.

        Raises:
            InputError: the file cannot be read or decoded, or it changed since the scan.
        """
        return decode_slice(self.slices[index], index, self.rows, self.columns)

    def header(self, index: int = 0) -> Dataset:
        """The header of one slice (no pixel data) as the slices are read: minted UIDs set, unreadable elements dropped.

        Raises:
            InputError: the file cannot be read, or an element the image needs is unreadable.
        """
        ref = self.slices[index]
        try:
            with quiet_pydicom(warnings_too=False):
                ds = pydicom.dcmread(ref.path, force=True, stop_before_pixels=True)
        except Exception as err:  # noqa: BLE001 - pydicom raises many types; all mean "bad file"
            raise InputError(f"{ref.path}: cannot read the header ({type(err).__name__}: {_first_line(err)}).") from err
        drop_unreadable(ds, ref.path)
        for kw, uid in ref.minted:
            setattr(ds, kw, uid)
        return ds

    def iter_slices(self, read_ahead: int = 4, workers: int = 1) -> Iterator[CTSlice]:
        """Yield decoded slices in sorted order, reading up to ``read_ahead`` slices ahead in threads.

        Memory is bounded by ``read_ahead`` slices, whatever the series length.
        """
        yield from ordered_prefetch(self.read_slice, range(len(self)), read_ahead, workers)

    def read_volume(self) -> np.ndarray:
        """The whole series as a (slices, rows, columns) float32 HU volume (small series only)."""
        vol = np.empty(self.shape, dtype=np.float32)
        for s in self.iter_slices():
            vol[s.index] = s.hu
        return vol


def read_slice_file(path: str | Path, minted: tuple[tuple[str, str], ...] = (), *, classified: bool = False
                    ) -> tuple[Dataset, np.ndarray, list[str]]:
    """Read one slice file in full, check it is a usable CT slice and decode its stored pixel values.

    The one pixel-read path of the package (denoise, training, evaluation): the decision of the series scan
    (:mod:`ldct_monai.dicom.classify`, the reasons of ``skipped.csv``), raw data sets without preamble, a
    missing transfer syntax recorded, elements whose value does not fit their VR dropped
    (:func:`drop_unreadable`).

    Args:
        path: the file.
        minted: (keyword, UID) pairs to set for UIDs the file holds empty (from the series scan).
        classified: the series scan has already accepted this file (denoise): do not classify it again.

    Returns:
        (dataset, stored values (rows, cols), elements dropped).

    Raises:
        InputError: the file cannot be read, is not a usable CT slice (with the reason of ``skipped.csv``),
            or its pixel data cannot be decoded.
    """
    if not classified:
        with quiet_pydicom(warnings_too=False):
            hdr, reason, _ = _classify(Path(path))
        if hdr is None:
            raise InputError(f"{path}: not a usable CT slice ({(reason or 'not_dicom').lstrip('!')}).")
    try:
        with quiet_pydicom(warnings_too=False):
            ds = pydicom.dcmread(path, force=True)  # the scan accepted it as CT (raw data sets have no preamble)
    except Exception as err:  # noqa: BLE001 - pydicom raises many types; all mean "bad file"
        raise InputError(f"{path}: cannot read the file ({type(err).__name__}: {_first_line(err)}).") from err
    dropped = drop_unreadable(ds, path)
    for kw, uid in minted:
        setattr(ds, kw, uid)
    try:
        with quiet_pydicom(warnings_too=False):
            _set_transfer_syntax_if_missing(ds)
            stored = ds.pixel_array
    except Exception as err:  # pydicom and the decoder plugins raise many types; all mean "bad file"
        raise InputError(f"{path}: cannot decode pixel data ({type(err).__name__}: {_first_line(err)}).") from err
    return ds, stored, dropped


def read_hu(path: str | Path) -> np.ndarray:
    """One single-frame CT slice in HU as float32 (rows, cols), with its own RescaleSlope/Intercept.

    What training (:class:`ldct_monai.transforms.LoadCTSlice`) and evaluation read: :func:`read_slice_file`.

    Raises:
        InputError: as :func:`read_slice_file`.
    """
    ds, stored, _ = read_slice_file(path)
    return to_hu(ds, stored)


def decode_slice(ref: SliceRef, index: int, rows: int, columns: int) -> CTSlice:
    """Read one slice of a scanned series and decode it (module-level so worker processes can run it).

    Args:
        ref: the slice reference from :func:`read_series`.
        index: its position in the sorted series.
        rows, columns: the series' image size, checked again (the file may have changed since the scan).

    Raises:
        InputError: as :func:`read_slice_file`, or its size differs.
    """
    ds, stored, dropped = read_slice_file(ref.path, ref.minted, classified=True)
    if stored.shape != (rows, columns):
        raise InputError(f"{ref.path}: expected a {rows}x{columns} slice, found pixel array {stored.shape}.")
    hu = to_hu(ds, stored)
    return CTSlice(index=index, ref=ref, dataset=ds, stored=stored, hu=hu, padding=outside_fov_mask(ds, stored, hu),
                   dropped=tuple(dropped))


def drop_unreadable(ds: Dataset, path: Path | str) -> list[str]:
    """Remove top-level elements whose value pydicom cannot convert (e.g. a US of 3 bytes); return them.

    Vendors write private elements whose length does not fit their VR; viewers ignore them, and the
    derived series does not copy private elements anyway. Pixel Data is left alone (decoding checks it).

    Returns:
        One ``'(gggg,eeee) VR, N bytes'`` string per element dropped.

    Raises:
        InputError: an element the image needs (:data:`ESSENTIAL`) cannot be read.
    """
    dropped = []
    for tag in list(ds.keys()):
        if tag == PIXEL_DATA:
            continue
        try:
            ds[tag]
        except Exception as err:  # noqa: BLE001 - BytesLengthException, ValueError, struct.error ...
            raw = ds._dict.get(tag)
            vr, length = getattr(raw, "VR", "?"), getattr(raw, "length", "?")
            keyword = pydicom.datadict.keyword_for_tag(tag) if not tag.is_private else ""
            if keyword in ESSENTIAL:
                raise InputError(f"{path}: {keyword} {tag} has {length} bytes, which do not fit its VR {vr} "
                                 f"({type(err).__name__}).") from err
            del ds[tag]
            dropped.append(f"{tag} {vr}, {length} bytes")
    return dropped


_QUIET_LOCK = threading.Lock()
_quiet_users = 0
_saved_level = logging.NOTSET


@contextlib.contextmanager
def quiet_pydicom(warnings_too: bool = True) -> Iterator[None]:
    """Keep pydicom's log messages (and, with ``warnings_too``, its UserWarnings) about odd files off the console.

    pydicom logs and warns for every odd value (invalid UI, unknown character set, VR mismatch): a folder of
    junk ``.dcm`` files would flood the console. The log level is restored when the last user leaves
    (safe across reading threads); ``warnings_too`` changes the process-wide warning filters, so it is only
    used on the calling thread's own scan. Our own RuntimeWarnings still pass.
    """
    global _quiet_users, _saved_level
    logger = logging.getLogger("pydicom")
    with _QUIET_LOCK:
        if _quiet_users == 0:
            _saved_level = logger.level
            logger.setLevel(logging.ERROR)
        _quiet_users += 1
    try:
        if warnings_too:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", category=UserWarning)
                warnings.filterwarnings("ignore", category=DeprecationWarning)
                yield
        else:
            yield
    finally:
        with _QUIET_LOCK:
            _quiet_users -= 1
            if _quiet_users == 0:
                logger.setLevel(_saved_level)


def decode_hu(ref: SliceRef, index: int, rows: int, columns: int) -> np.ndarray:
    """Just the HU of one slice (what a worker process sends back: no dataset to pickle)."""
    return decode_slice(ref, index, rows, columns).hu


def outside_fov_mask(ds: Dataset, stored: np.ndarray, hu: np.ndarray | None = None) -> np.ndarray | None:
    """Pixels outside the reconstruction field of view, which must keep their stored value.

    With PixelPaddingValue (and PixelPaddingRangeLimit) that is exactly the padding pixels. Without it,
    scanners still fill the corners outside the circular field of view with one constant far below air
    (-2000, -2048 or -3024 HU); pixels equal to the slice minimum count as padding when that minimum is
    at or below -1500 HU, a value no tissue or air reaches.

    Returns:
        A boolean (rows, cols) mask, or None when no pixel is padding.
    """
    mask = padding_mask(ds, stored)
    if mask is not None or getattr(ds, "PixelPaddingValue", None) is not None:
        return mask
    lowest = stored.min()
    hu_lowest = float(lowest) * float(getattr(ds, "RescaleSlope", 1) or 1) + float(getattr(ds, "RescaleIntercept", 0) or 0)
    if hu_lowest > OUTSIDE_FOV_MAX_HU:
        return None
    return stored == lowest


def scan_series(root: str | Path) -> ScanResult:
    """Read the headers of every file under ``root`` (recursively) and group CT slices by series.

    Files that are not DICOM, not CT, not single-frame CT Image Storage are skipped with a reason. CT
    files that cannot be parsed, have no pixel data or whose pixel data is shorter than the header says
    are listed as broken: :func:`read_series` refuses a series with a broken file (a broken series must
    not be denoised silently).

    Raises:
        InputError: ``root`` is not a folder.
    """
    from ldct_monai.io_utils import list_tree

    root = Path(root)
    if not root.exists():
        raise InputError(f"{root}: series folder does not exist.")
    if not root.is_dir():
        raise InputError(f"{root}: expected a folder with DICOM files, found a file.")
    listing = list_tree(root)
    files = [root / rel for rel in listing.files]
    series: dict[str, list[_Header]] = collections.defaultdict(list)
    skipped: list[tuple[Path, str]] = [(root / rel, "symbolic link into a folder already searched (not followed)")
                                       for rel in listing.links_skipped]
    broken: list[tuple[Path, str, str | None]] = []
    if listing.links_followed:
        log.info("%s: followed %d symbolic link(s) to folders: %s", root, len(listing.links_followed),
                 ", ".join(listing.links_followed[:3]) + (", ..." if len(listing.links_followed) > 3 else ""))
    with quiet_pydicom():
        for path in files:
            hdr, reason, uid = _read_header(path)
            if reason is not None and reason.startswith("!"):
                broken.append((path, reason[1:], uid))
            elif hdr is None:
                skipped.append((path, reason or "not usable"))
            else:
                series[_mint_uids(hdr)].append(hdr)
    return ScanResult(root=root, series=dict(series), skipped=skipped, broken=broken)


def _mint_uids(hdr: _Header) -> str:
    """Mint deterministic UIDs for the empty ones of ``hdr`` (see :data:`MINTED_KEYWORDS`); return its series UID.

    SOPInstanceUID comes from the file's bytes (the same file gets the same UID in every run and in
    ``build-manifest``); SeriesInstanceUID from the real path of the file's folder (one series per folder);
    StudyInstanceUID and FrameOfReferenceUID from the series UID.
    """
    ds = hdr.ds
    if not str(ds.get("SOPInstanceUID", "") or "").strip():
        hdr.minted["SOPInstanceUID"] = minted_sop_uid(hdr.path)
    series_uid = str(ds.get("SeriesInstanceUID", "") or "").strip()
    if not series_uid:
        series_uid = hdr.minted["SeriesInstanceUID"] = make_uid("ldct-monai minted SeriesInstanceUID", os.path.realpath(hdr.path.parent))
    for kw in ("StudyInstanceUID", "FrameOfReferenceUID"):
        if kw in ds and not str(ds.get(kw, "") or "").strip():
            hdr.minted[kw] = make_uid(f"ldct-monai minted {kw}", series_uid)
    return series_uid


def minted_sop_uid(path: Path, head_bytes: int = 1 << 16) -> str:
    """A deterministic SOPInstanceUID for a file whose own is empty: from its size and first 64 KiB."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(head_bytes))
    h.update(str(os.path.getsize(path)).encode())
    return make_uid("ldct-monai minted SOPInstanceUID", h.hexdigest())


def list_series(root: str | Path) -> list[SeriesSummary]:
    """The CT series under ``root``: UID, description and slice count, largest first."""
    return scan_series(root).summaries()


def read_series(root: str | Path, series_uid: str | None = None, *, warn_skipped: bool = True) -> CTSeries:
    """Find, validate and sort one CT series under ``root`` (headers only; pixels are read lazily).

    Args:
        root: folder searched recursively.
        series_uid: SeriesInstanceUID to pick when the folder holds several series.
        warn_skipped: warn (RuntimeWarning) about files that were ignored.

    Returns:
        The :class:`CTSeries`, slices sorted by position along the normal.

    Raises:
        InputError: no usable CT slice; several series and no ``series_uid``; ``series_uid`` not found;
            inconsistent series (mixed sizes, orientations or pixel spacing, duplicate positions,
            undecodable transfer syntax, not 16 bits allocated, not one sample per pixel).
    """
    scan = scan_series(root)
    root = scan.root
    if warn_skipped and scan.skipped and scan.series:  # with no series at all, the error says it
        warnings.warn(_skipped_message(root, scan.skipped), RuntimeWarning, stacklevel=2)
    if not scan.series:
        scan.raise_if_broken(None)
        why = f" ({_reason_counts(scan.skipped)})" if scan.skipped else ""
        raise InputError(f"{root}: no usable CT slices found in {len(scan.skipped)} file(s){why}.")
    if series_uid is None:
        if len(scan.series) > 1:
            listing = "; ".join(f"{s.series_instance_uid} '{s.description}' ({s.n_slices} slices)" for s in scan.summaries())
            raise InputError(f"{root}: {len(scan.series)} CT series found, pick one with --series-uid: {listing}.")
        series_uid = next(iter(scan.series))
    elif series_uid not in scan.series:
        found = ", ".join(s.series_instance_uid for s in scan.summaries())
        raise InputError(f"{root}: no CT series with SeriesInstanceUID {series_uid} (found: {found}).")
    scan.raise_if_broken(series_uid)
    return _validate(root, series_uid, scan.series[series_uid], scan.skipped)


# --------------------------------------------------------------------------------------------------
# Internals


def _read_header(path: Path) -> tuple[_Header | None, str | None, str | None]:
    """(header, None, uid) for a usable CT slice; (None, reason, uid) to skip; (None, '!reason', uid) when broken.

    ``uid`` is the SeriesInstanceUID when the header could be read that far, else None.
    """
    hdr, reason, ds = _classify(path)
    uid = str(ds.get("SeriesInstanceUID", "") or "") or None if ds is not None else None
    return hdr, reason, uid


def _classify(path: Path) -> tuple[_Header | None, str | None, Dataset | None]:
    """The scan's decision for one file (:mod:`ldct_monai.dicom.classify`); a CT file with a problem is broken."""
    looks_dicom = _has_dicm_prefix(path)
    force = not looks_dicom and (path.suffix.lower() in (".dcm", ".ima") or _looks_like_raw_dataset(path))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = pydicom.dcmread(path, defer_size=1024, force=force)
    except Exception as err:  # pydicom raises InvalidDicomError, EOFError, ValueError, struct.error ...
        if looks_dicom:
            return None, f"!unreadable: cannot parse: {type(err).__name__}: {_first_line(err)}", None
        return None, "not_dicom", None
    facts = facts_of(ds)
    ct = is_ct(facts)
    if any("End of file" in str(w.message) for w in caught):  # read to the end without finding the end of the data
        return None, ("!" if ct else "") + "truncated: the file ends inside its data", ds
    if facts.sop_class == CT_IMAGE_STORAGE and PIXEL_DATA not in ds and ("Rows" not in ds or not facts.modality):
        # cut inside its header: pydicom stops quietly when too few bytes are left for the next element
        return None, f"!truncated: the file ends after {os.path.getsize(path)} bytes, inside its header (no Pixel Data)", ds
    if "SeriesInstanceUID" not in ds and not facts.sop_class and not facts.modality:
        return None, "not_dicom", ds
    rejected = check_image(facts)
    if rejected is None:
        rejected = _pixel_length_problem(path, ds) or check_geometry(facts)
    if rejected is None:
        return _Header(path=path, ds=ds), None, ds
    if rejected.reason in BROKEN_REASONS:  # a CT file that should be usable but is not: never skipped silently
        return None, f"!{rejected.reason}: {rejected.detail}", ds
    return None, f"{rejected.reason}: {rejected.detail}", ds


def facts_of(ds: Dataset) -> SliceFacts:
    """The :class:`~ldct_monai.dicom.classify.SliceFacts` of a pydicom dataset (values that do not parse count as absent)."""
    def get(keyword: str):
        try:
            return ds.get(keyword)
        except Exception:  # noqa: BLE001 - a value that does not fit its VR
            return None

    def numbers(keyword: str) -> list[float] | None:
        v = get(keyword)
        try:
            return None if v in (None, "") else [float(x) for x in (v if isinstance(v, (list, tuple, MultiValue)) else [v])]
        except (TypeError, ValueError):
            return None

    meta = getattr(ds, "file_meta", None)
    image_type = get("ImageType") or []
    frames = numbers("NumberOfFrames")
    return SliceFacts(
        sop_class=str(get("SOPClassUID") or getattr(meta, "MediaStorageSOPClassUID", "") or ""),
        modality=str(get("Modality") or "").strip().upper(),
        image_type="\\".join(str(v) for v in ([image_type] if isinstance(image_type, str) else image_type)).upper(),
        description=str(get("SeriesDescription") or ""),
        frames=frames[0] if frames else None,
        projection_tags=any(t in ds for t in PROJECTION_TAGS),
        has_pixel_data=any(t in ds for t in _PIXEL_TAGS),
        samples=_int_or_none(get("SamplesPerPixel")),
        bits_allocated=_int_or_none(get("BitsAllocated")),
        photometric=str(get("PhotometricInterpretation") or "").strip().upper(),
        transfer_syntax=str(meta.get("TransferSyntaxUID", "") or "") or None if meta is not None else None,
        rows=_int_or_none(get("Rows")),
        cols=_int_or_none(get("Columns")),
        ipp=numbers("ImagePositionPatient"),
        iop=numbers("ImageOrientationPatient"),
        has_uids="SeriesInstanceUID" in ds and "SOPInstanceUID" in ds,
    )


def _set_transfer_syntax_if_missing(ds: Dataset) -> None:
    """A raw data set (no file meta) was read with a guessed encoding: record it so pixels decode."""
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return
    implicit, little = ds.original_encoding
    uid = pydicom.uid.ImplicitVRLittleEndian if implicit else (pydicom.uid.ExplicitVRLittleEndian if little else pydicom.uid.ExplicitVRBigEndian)
    if meta is None:
        ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = uid


def _looks_like_raw_dataset(path: Path) -> bool:
    """A DICOM data set without preamble (old ACR-NEMA style files): it starts with a group 0008 tag."""
    try:
        with open(path, "rb") as f:
            return f.read(2) == b"\x08\x00"
    except OSError:
        return False


def _has_dicm_prefix(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def _pixel_length_problem(path: Path, ds: Dataset) -> Rejected | None:
    """For native (uncompressed) pixel data: the value must be in the file and as long as the image."""
    raw = ds._dict.get(PIXEL_DATA)  # deferred RawDataElement: length and file offset, value not read
    length = getattr(raw, "length", None)
    tell = getattr(raw, "value_tell", None)
    if length is None or tell is None or length == 0xFFFFFFFF:
        return None  # already read, or encapsulated (compressed): decoding checks it
    size = os.path.getsize(path)
    if tell + length > size:
        return Rejected("truncated", f"Pixel Data needs {length} bytes, the file ends {tell + length - size} bytes short")
    try:
        expected = int(ds.Rows) * int(ds.Columns) * int(getattr(ds, "SamplesPerPixel", 1)) * int(getattr(ds, "NumberOfFrames", 1) or 1) * int(ds.BitsAllocated) // 8
    except (AttributeError, TypeError, ValueError):
        return Rejected("missing_geometry", "Rows, Columns or BitsAllocated missing")
    if length < expected:
        return Rejected("truncated", f"Pixel Data has {length} bytes, {expected} expected for {ds.Rows}x{ds.Columns}x{ds.BitsAllocated} bits")
    return None


def _validate(root: Path, uid: str, headers: list[_Header], skipped: list[tuple[Path, str]]) -> CTSeries:
    """Check one series is a consistent volume; collect every problem, then raise once."""
    problems: list[str] = []
    first = headers[0].ds
    for kw in ("Rows", "Columns", "PixelSpacing", "ImageOrientationPatient", "ImagePositionPatient", "BitsAllocated", "BitsStored", "PixelRepresentation"):
        missing = [h for h in headers if h.ds.get(kw) in (None, "")]
        if missing:
            problems.append(f"{kw} missing in {len(missing)} file(s) (e.g. {_rel(missing[0].path, root)})")
    if problems:
        raise InputError(f"{root}: series {uid} cannot be read as CT slices: {'; '.join(problems)}.")

    def distinct(label: str, key, tol: float | None = None) -> None:
        values: dict = {}
        for h in headers:
            try:
                v = key(h.ds)
            except (AttributeError, TypeError, ValueError, KeyError):
                v = None
            if tol is not None and v is not None:
                match = next((k for k in values if k is not None and np.allclose(k, v, atol=tol)), None)
                v = match if match is not None else v
            values.setdefault(v, []).append(_rel(h.path, root))
        if len(values) > 1:
            parts = ", ".join(f"{k} in {len(v)} file(s) (e.g. {v[0]})" for k, v in values.items())
            problems.append(f"mixed {label}: {parts}")

    distinct("image sizes (Rows x Columns)", lambda d: f"{int(d.Rows)}x{int(d.Columns)}")
    distinct("orientations (ImageOrientationPatient)", lambda d: tuple(round(float(v), 6) for v in d.ImageOrientationPatient), ORIENTATION_TOL)
    distinct("pixel spacing (PixelSpacing)", lambda d: tuple(float(v) for v in d.PixelSpacing), PIXEL_SPACING_TOL)
    syntaxes = sorted({str(h.ds.file_meta.TransferSyntaxUID) for h in headers if "TransferSyntaxUID" in getattr(h.ds, "file_meta", {})})
    by_sop: dict[str, list[Path]] = collections.defaultdict(list)
    for h in headers:
        by_sop[h.uid("SOPInstanceUID")].append(h.path)
    dup_sops = {s: ps for s, ps in by_sop.items() if len(ps) > 1}
    if dup_sops:
        sop, paths = next(iter(dup_sops.items()))
        problems.append(f"{len(dup_sops)} SOPInstanceUID(s) appear in more than one file (e.g. {sop} in "
                        f"{_rel(paths[0], root)} and {_rel(paths[1], root)})")

    refs: list[SliceRef] = []
    normal = None
    if not any(p.startswith("mixed orientations") for p in problems):
        try:
            normal = slice_normal(first)
            for h in headers:
                refs.append(
                    SliceRef(
                        path=h.path,
                        sop_instance_uid=h.uid("SOPInstanceUID"),
                        position=slice_position(h.ds, normal),
                        instance_number=_int_or_none(getattr(h.ds, "InstanceNumber", None)),
                        minted=tuple(sorted(h.minted.items())),
                    )
                )
        except InputError as err:
            problems.append(str(err).rstrip("."))
    refs.sort(key=lambda r: r.position)
    z = np.array([r.position for r in refs])
    if len(z) > 1:
        steps = np.diff(z)
        dup = np.flatnonzero(steps < DUPLICATE_TOL_MM)
        if len(dup):
            pairs = "; ".join(f"{_rel(refs[i].path, root)} and {_rel(refs[i + 1].path, root)} at {refs[i].position:.3f} mm" for i in dup[:3])
            problems.append(f"{len(dup)} duplicate slice position(s): {pairs}")
    if problems:
        raise InputError(f"{root}: series {uid} is not one consistent CT volume: {'; '.join(problems)}.")

    spacing = None
    if len(z) > 1:
        steps = np.diff(z)
        spacing = float(np.median(steps))
        uneven = np.abs(steps - spacing) > SPACING_REL_TOL * spacing + 1e-3
        if uneven.any():
            warnings.warn(
                f"{root}: series {uid} has uneven slice spacing: steps from {steps.min():.3f} to {steps.max():.3f} mm "
                f"(median {spacing:.3f} mm, {int(uneven.sum())} uneven step(s)); slices are denoised one by one, so this goes on.",
                RuntimeWarning,
                stacklevel=3,
            )
    minted = collections.Counter(kw for h in headers for kw in h.minted)
    if minted:
        what = ", ".join(f"{kw} in {n} file(s)" for kw, n in sorted(minted.items()))
        warnings.warn(
            f"{root}: series {uid} has empty UIDs ({what}); minted deterministic 2.25 UIDs (SOPInstanceUID from each "
            "file's bytes, SeriesInstanceUID from its folder) so it can be read. A derived series references these "
            "minted UIDs, which the source files do not hold.",
            RuntimeWarning,
            stacklevel=3,
        )
    dropped = _unreadable_elements(first)
    if dropped:
        warnings.warn(
            f"{_rel(headers[0].path, root)}: {len(dropped)} element(s) whose value does not fit its VR "
            f"({', '.join(dropped[:3])}{', ...' if len(dropped) > 3 else ''}) are dropped when the slices are read "
            "(the derived series does not copy private elements).",
            RuntimeWarning,
            stacklevel=3,
        )
    return CTSeries(
        root=root,
        series_instance_uid=uid,
        description=str(getattr(first, "SeriesDescription", "") or ""),
        slices=refs,
        rows=int(first.Rows),
        columns=int(first.Columns),
        pixel_spacing=tuple(float(v) for v in first.PixelSpacing),
        orientation=tuple(float(v) for v in first.ImageOrientationPatient),
        normal=normal,
        spacing=spacing,
        transfer_syntaxes=tuple(syntaxes),
        skipped=skipped,
        minted=dict(minted),
    )


def _unreadable_elements(ds: Dataset) -> list[str]:
    """Elements of a header (read with deferred large values) whose value pydicom cannot convert."""
    out = []
    with quiet_pydicom():
        for tag in list(ds.keys()):
            raw = ds._dict.get(tag)
            if tag == PIXEL_DATA or getattr(raw, "value", b"") is None:  # deferred (large) values are not read here
                continue
            if not tag.is_private and pydicom.datadict.keyword_for_tag(tag) in ESSENTIAL:
                continue  # not dropped: reading the slice says it cannot be read
            try:
                ds[tag]
            except Exception:  # noqa: BLE001 - BytesLengthException, ValueError, struct.error ...
                out.append(f"{tag} {getattr(raw, 'VR', '?')}, {getattr(raw, 'length', '?')} bytes")
    return out


def _rel(path: Path, root: Path) -> str:
    """A file named relative to the series folder (file names repeat across sub-folders)."""
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def _int_or_none(v) -> int | None:
    try:
        return None if v is None or v == "" else int(v)
    except (TypeError, ValueError):
        return None


def _reason_counts(skipped: list[tuple[Path, str]]) -> str:
    counts = collections.Counter(reason.split(":", 1)[0] for _, reason in skipped)  # by reason, not detail
    return ", ".join(f"{n} {reason}" for reason, n in counts.most_common())


def _skipped_message(root: Path, skipped: list[tuple[Path, str]]) -> str:
    examples = ", ".join(_rel(p, root) for p, _ in skipped[:3])
    more = ", ..." if len(skipped) > 3 else ""
    return f"{root}: ignored {len(skipped)} file(s) that are not CT slices ({_reason_counts(skipped)}): {examples}{more}"


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def ordered_prefetch(fn: Callable[[T], R], items: Iterable[T], read_ahead: int = 4, workers: int = 1) -> Iterator[R]:
    """Yield ``fn(item)`` for each item, in order, computed ahead in a thread pool.

    At most ``read_ahead`` results are running or waiting at any time, so memory stays bounded however
    many items there are. An exception in ``fn`` is raised when its result is reached.
    """
    read_ahead = max(1, int(read_ahead))
    pending: collections.deque[cf.Future] = collections.deque()
    it = iter(items)
    with cf.ThreadPoolExecutor(max_workers=max(1, int(workers)), thread_name_prefix="dicom-read") as pool:
        try:
            for item in it:
                pending.append(pool.submit(fn, item))
                if len(pending) >= read_ahead:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for fut in pending:
                fut.cancel()
