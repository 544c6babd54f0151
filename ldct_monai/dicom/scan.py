"""Header-only, parallel scan of a DICOM tree: one compact row per usable CT slice, one reason per other file.

This is the first half of ``build-manifest`` (the second half, grouping and splitting, is in
:mod:`ldct_monai.manifest_builder`). It must cope with a 1.2 TB TCIA download (over a million files), so:

- pixel data is never read: ``pydicom.dcmread(stop_before_pixels=True, specific_tags=...)`` parses only
  the header and stops in front of (7FE0,0010); the 12 bytes there are then decoded by hand to check that
  Pixel Data exists and that the file holds all of it (a truncated download is caught without reading it);
- values are decoded from the raw bytes of the few elements we need (``Dataset.get_item``), because
  pydicom's per-attribute conversion costs more than parsing the whole header;
- files are read by a process pool in chunks, and each worker sends back plain tuples (never datasets),
  so the parent's memory is the per-slice rows and nothing else;
- one bad file never stops the scan: every failure becomes a :class:`Skip` with a reason (see
  :data:`REASONS`), including errors nobody anticipated (reason ``unreadable``).
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import math
import multiprocessing
import os
import struct
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

from ldct_monai.dicom.classify import FILE_REASONS, PROJECTION_TAGS, SliceFacts, check_geometry, check_image
from ldct_monai.dicom.core import z_along_normal
from ldct_monai.errors import LdctError

log = logging.getLogger(__name__)

# Reasons a file is not used: the file-level ones of the shared classifier (ldct_monai.dicom.classify) first,
# then the manifest stage's series-, patient- and split-level ones. skipped.csv uses these exact strings.
REASONS: dict[str, str] = {
    **FILE_REASONS,
    "duplicate_sop_uid": "SOPInstanceUID already seen in another file (the first path in sort order is kept)",
    "unknown_dose": "SeriesDescription matches neither the low-dose nor the full-dose pattern",
    "unknown_body_part": "no TCIA prefix (C/L/N), no recognised BodyPartExamined, no --default-body-part",
    "excluded_body_part": "body part not in --body-parts",
    "inconsistent_size": "Rows x Columns differ from the rest of the series (or between a test pair's series)",
    "too_few_slices": "series has fewer usable slices than --min-slices",
    "extra_series": "another series of the same patient and dose was kept (the one with most slices)",
    "over_max_patients": "body part already has --max-patients patients (those with the smallest hash are kept)",
    "single_dose_patient": "patient has only one dose but every split it could join needs both",
    "unmatched_z": "test-pair slice with no slice of the other dose within the z tolerance",
    "other_dose": "train/val patient: only its other dose's series is used (one dose per patient)",
}

DEFLATED = "1.2.840.10008.1.2.1.99"  # Deflated Explicit VR Little Endian
_T_IMAGE_TYPE = 0x00080008
_T_SOP_CLASS = 0x00080016
_T_SOP_UID = 0x00080018
_T_MODALITY = 0x00080060
_T_MANUFACTURER = 0x00080070
_T_SERIES_DESC = 0x0008103E
_T_PATIENT_ID = 0x00100020
_T_BODY_PART = 0x00180015
_T_THICKNESS = 0x00180050
_T_KVP = 0x00180060
_T_KERNEL = 0x00181210
_T_TUBE_CURRENT = 0x00181151
_T_EXPOSURE = 0x00181152
_T_CTDIVOL = 0x00189345
_T_STUDY_UID = 0x0020000D
_T_SERIES_UID = 0x0020000E
_T_INSTANCE = 0x00200013
_T_IPP = 0x00200032
_T_IOP = 0x00200037
_T_FOR_UID = 0x00200052
_T_SAMPLES = 0x00280002
_T_FRAMES = 0x00280008
_T_ROWS = 0x00280010
_T_COLS = 0x00280011
_T_SPACING = 0x00280030
_T_BITS = 0x00280100
_T_CHARSET = 0x00080005
_T_PHOTOMETRIC = 0x00280004
# DICOM-CT-PD (Chen et al., Med Phys 2015; the TCIA LDCT projection format): NumberofDetectorRows,
# NumberofDetectorColumns, DetectorFocalCenterAngularPosition, NumberofSourceAngularSteps.
_PROJECTION_SET = frozenset(PROJECTION_TAGS)
_TAGS = [
    _T_IMAGE_TYPE, _T_SOP_CLASS, _T_SOP_UID, _T_MODALITY, _T_MANUFACTURER, _T_SERIES_DESC, _T_PATIENT_ID,
    _T_BODY_PART, _T_THICKNESS, _T_KVP, _T_KERNEL, _T_TUBE_CURRENT, _T_EXPOSURE, _T_CTDIVOL, _T_STUDY_UID,
    _T_SERIES_UID, _T_INSTANCE, _T_IPP, _T_IOP, _T_FOR_UID, _T_SAMPLES, _T_FRAMES, _T_ROWS, _T_COLS,
    _T_SPACING, _T_BITS, _T_PHOTOMETRIC, *PROJECTION_TAGS,
]  # fmt: skip
_PIXEL_TAGS = {0x7FE00010: "PixelData", 0x7FE00008: "FloatPixelData", 0x7FE00009: "DoubleFloatPixelData"}


class SliceHeader(NamedTuple):
    """What the manifest needs from one CT slice (all from the header; lengths in mm)."""

    path: str  # relative to the data root, '/'-separated
    patient_id: str  # PatientID; when empty, the top folder name (or the data root's name)
    study_uid: str  # StudyInstanceUID
    series_uid: str  # SeriesInstanceUID
    sop_uid: str  # SOPInstanceUID
    series_description: str  # SeriesDescription (the dose label in TCIA data)
    body_part_examined: str  # BodyPartExamined, upper case ('' when absent)
    z: float  # ImagePositionPatient . slice normal (mm): the slice's position along its normal
    rows: int
    cols: int
    pixel_spacing_row: float | None  # PixelSpacing[0]: distance between rows (mm)
    pixel_spacing_col: float | None  # PixelSpacing[1]: distance between columns (mm)
    slice_thickness: float | None  # SliceThickness (mm)
    kvp: float | None  # KVP
    tube_current: float | None  # XRayTubeCurrent (mA)
    exposure: float | None  # Exposure (mAs)
    ctdivol: float | None  # CTDIvol (mGy)
    kernel: str  # ConvolutionKernel (values joined with '\\')
    manufacturer: str  # Manufacturer
    instance_number: int | None  # InstanceNumber (recorded only; never used for ordering)


class Skip(NamedTuple):
    """A file that is not used, with one of :data:`REASONS` and a one-line detail."""

    path: str
    reason: str
    detail: str


class Note(NamedTuple):
    """Something done to a usable file that the user should hear about (e.g. a minted UID); logged, not skipped."""

    path: str
    what: str


_NOTES: list[Note] = []  # filled by _read_header, drained by read_chunk (one list per worker process)


class _Reject(Exception):
    """Internal: a file-level rejection carrying (reason, detail)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def default_workers() -> int:
    """All cores this process may run on (``sched_getaffinity`` where available)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def list_files(
    data_root: Path, exclude: Sequence[Path] = (), on_progress: Callable[[int], None] | None = None
) -> list[str]:
    """All regular files under ``data_root``, as sorted '/'-separated paths relative to it.

    Symbolic links to folders are followed, each real folder once (``io_utils.list_tree``): a link that
    leads back into a folder already searched (a loop) is not followed, and both kinds are logged. File
    symlinks are listed. Folders in ``exclude`` (e.g. a manifest folder written inside the data root) are
    not entered. ``on_progress`` gets the number of files found so far after each folder (listing a million
    files on a network share takes a while).
    """
    from ldct_monai.io_utils import list_tree

    listing = list_tree(Path(data_root), exclude, on_progress)
    if listing.links_followed:
        log.info("Followed %d symbolic link(s) to folders under %s: %s", len(listing.links_followed), data_root,
                 _examples(listing.links_followed))
    if listing.links_skipped:
        log.warning("Did not follow %d symbolic link(s) under %s that lead into folders already searched (loops or "
                    "second paths): %s", len(listing.links_skipped), data_root, _examples(listing.links_skipped))
    return listing.files


def _examples(items: Sequence[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (", ..." if len(items) > n else "")


# ----------------------------------------------------------------------------------------------------
# Reading one file (runs in the worker processes)


def _raw_bytes(vals: dict[int, object], tag: int) -> bytes | None:
    """The undecoded value bytes of an element (None when absent)."""
    value = vals.get(tag)
    if value is None or isinstance(value, bytes):
        return value
    # Already converted by pydicom (Specific Character Set is converted during the read).
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value).encode()
    return str(value).encode()


def _text(vals: dict[int, object], tag: int, encoding: str) -> str:
    raw = _raw_bytes(vals, tag)
    if not raw:
        return ""
    return raw.decode(encoding, "replace").strip(" \x00")


def _numbers(vals: dict[int, object], tag: int) -> list[float] | None:
    raw = _raw_bytes(vals, tag)
    if not raw:
        return None
    try:
        out = [float(v) for v in raw.decode("ascii", "replace").strip(" \x00").split("\\")]
    except ValueError:
        return None
    return out if all(math.isfinite(v) for v in out) else None


def _number(vals: dict[int, object], tag: int) -> float | None:
    out = _numbers(vals, tag)
    return out[0] if out else None


def _ushort(vals: dict[int, object], tag: int, little: bool) -> int | None:
    """A US value (Rows, Columns, ...): 2 raw bytes in implicit or explicit VR."""
    raw = _raw_bytes(vals, tag)
    if raw is None or len(raw) < 2:
        return None
    if len(raw) != 2:  # converted text, see _raw_bytes
        try:
            return int(raw.decode())
        except ValueError:
            return None
    return struct.unpack("<H" if little else ">H", raw)[0]


def _encoding(vals: dict[int, object]) -> str:
    charset = _text(vals, _T_CHARSET, "ascii").upper()
    return "utf-8" if "ISO_IR 192" in charset else "latin-1"


def _looks_like_raw_dataset(head: bytes) -> bool:
    """A DICOM dataset written without preamble usually starts with a group 0002 or 0008 element."""
    return len(head) >= 8 and head[:2] in (b"\x02\x00", b"\x08\x00") and head[3:4] == b"\x00"


def read_header(root: str, rel: str) -> SliceHeader | Skip:
    """Read one file's header and classify it; never raises for a bad file.

    Args:
        root: data root (absolute).
        rel: path relative to ``root`` ('/'-separated).

    Returns:
        A :class:`SliceHeader` for a usable single-frame CT slice, else a :class:`Skip`.
    """
    try:
        return _read_header(root, rel)
    except _Reject as rej:
        return Skip(rel, rej.reason, rej.detail)
    except Exception as err:  # noqa: BLE001 - one bad file must never stop a million-file scan
        return Skip(rel, "unreadable", f"{type(err).__name__}: {err}"[:300])


def _read_header(root: str, rel: str) -> SliceHeader:
    import pydicom
    from pydicom.errors import BytesLengthException, InvalidDicomError

    path = os.path.join(root, rel)
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below; the position after the header is needed
    except OSError as err:
        raise _Reject("unreadable", f"cannot open: {err.strerror}") from err
    with f:
        size = os.fstat(f.fileno()).st_size
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=_TAGS)
        except InvalidDicomError:
            f.seek(0)
            head = f.read(132)
            if not _looks_like_raw_dataset(head):
                raise _Reject("not_dicom", f"no DICM prefix ({size} bytes)") from None
            f.seek(0)
            try:
                ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=_TAGS, force=True)
            except Exception as err:  # noqa: BLE001 - garbage that merely started like a dataset
                raise _Reject("not_dicom", f"no DICM prefix and no readable dataset ({type(err).__name__})") from err
            if _T_SOP_CLASS not in ds and _T_MODALITY not in ds:
                raise _Reject("not_dicom", "no DICM prefix and no SOPClassUID / Modality")
        except (EOFError, struct.error, BytesLengthException) as err:
            # a value shorter than its VR needs: in practice a file cut inside its header
            raise _Reject("truncated", f"header ends early ({type(err).__name__}: {str(err)[:120]})") from err
        pixel_at = f.tell()
        pixel_head = f.read(12)
        # One pass over the (raw, undecoded) elements read; plain int keys make the lookups cheap.
        vals = {int(tag): elem.value for tag, elem in ds.items()}
        implicit, little = ds.original_encoding
        little = little is not False
        pixel_tag = _pixel_tag(pixel_head, little)
        deflated = False
        if pixel_tag is None and getattr(ds, "file_meta", None) is not None:
            # Deflated datasets are parsed from an inflated copy: the file position says nothing. Rare
            # enough to read the whole file and look for the element itself.
            deflated = str(ds.file_meta.get("TransferSyntaxUID", "")) == DEFLATED
            if deflated:
                f.seek(0)
                pixel_tag = next((t for t in _PIXEL_TAGS if t in pydicom.dcmread(f, force=True)), None)
        # A header cut short: pydicom seeks past the end for skipped elements, or keeps a short value.
        # (When the Pixel Data tag was reached, the header is complete: no need to look.)
        if pixel_tag is None and not deflated and _header_truncated(f, size, pixel_at):
            raise _Reject("truncated", f"header stops inside an element ({size} bytes)")

        enc = _encoding(vals)
        sop_class = _text(vals, _T_SOP_CLASS, "ascii")
        modality = _text(vals, _T_MODALITY, "ascii").upper()
        description = _text(vals, _T_SERIES_DESC, enc)
        if pixel_tag is None and not modality:
            raise _Reject("truncated", "header ends before Modality and Pixel Data")
        rows = _ushort(vals, _T_ROWS, little)
        cols = _ushort(vals, _T_COLS, little)
        ipp = _numbers(vals, _T_IPP)
        iop = _numbers(vals, _T_IOP)
        meta = getattr(ds, "file_meta", None)
        facts = SliceFacts(
            sop_class=sop_class,
            modality=modality,
            image_type=_text(vals, _T_IMAGE_TYPE, "ascii").upper(),
            description=description,
            frames=_number(vals, _T_FRAMES),
            projection_tags=not _PROJECTION_SET.isdisjoint(vals),
            has_pixel_data=pixel_tag is not None,
            samples=_ushort(vals, _T_SAMPLES, little),
            bits_allocated=_ushort(vals, _T_BITS, little),
            photometric=_text(vals, _T_PHOTOMETRIC, "ascii").upper(),
            transfer_syntax=str(meta.get("TransferSyntaxUID", "") or "") or None if meta is not None else None,
            rows=rows,
            cols=cols,
            ipp=ipp,
            iop=iop,
            has_uids=_T_SOP_UID in vals and _T_SERIES_UID in vals,
        )
        rejected = check_image(facts)
        if rejected:
            raise _Reject(*rejected)
        if not deflated:
            _check_pixel_length(vals, f, pixel_at, pixel_head, size, rows, cols, little, implicit)
        rejected = check_geometry(facts)
        if rejected:
            raise _Reject(*rejected)
        z = z_along_normal(ipp, iop)

        spacing = _numbers(vals, _T_SPACING)
        sop_uid = _text(vals, _T_SOP_UID, "ascii")
        series_uid = _text(vals, _T_SERIES_UID, "ascii")
        study_uid = _text(vals, _T_STUDY_UID, "ascii")
        if not sop_uid or not series_uid or (_T_STUDY_UID in vals and not study_uid):
            # present but empty (anonymised): deterministic UIDs, the same as dicom.reader mints for denoise
            from ldct_monai.dicom.create import make_uid
            from ldct_monai.dicom.reader import minted_sop_uid

            minted = []
            if not sop_uid:
                sop_uid = minted_sop_uid(Path(path))
                minted.append("SOPInstanceUID")
            if not series_uid:
                series_uid = make_uid("ldct-monai minted SeriesInstanceUID", os.path.realpath(os.path.dirname(path)))
                minted.append("SeriesInstanceUID")
            if _T_STUDY_UID in vals and not study_uid:
                study_uid = make_uid("ldct-monai minted StudyInstanceUID", series_uid)
                minted.append("StudyInstanceUID")
            _NOTES.append(Note(rel, "empty " + ", ".join(minted)))
        # Empty PatientID: the top folder under the data root (TCIA layout), else the data root's name.
        patient_id = _text(vals, _T_PATIENT_ID, enc) or (rel.split("/", 1)[0] if "/" in rel else os.path.basename(root))
        instance = _number(vals, _T_INSTANCE)
        return SliceHeader(
            path=rel,
            patient_id=patient_id,
            study_uid=study_uid,
            series_uid=series_uid,
            sop_uid=sop_uid,
            series_description=description,
            body_part_examined=_text(vals, _T_BODY_PART, enc).upper(),
            z=z,
            rows=rows,
            cols=cols,
            pixel_spacing_row=spacing[0] if spacing and len(spacing) == 2 else None,
            pixel_spacing_col=spacing[1] if spacing and len(spacing) == 2 else None,
            slice_thickness=_number(vals, _T_THICKNESS),
            kvp=_number(vals, _T_KVP),
            tube_current=_number(vals, _T_TUBE_CURRENT),
            exposure=_number(vals, _T_EXPOSURE),
            ctdivol=_number(vals, _T_CTDIVOL),
            kernel=_text(vals, _T_KERNEL, enc),
            manufacturer=_text(vals, _T_MANUFACTURER, enc),
            instance_number=int(instance) if instance is not None else None,
        )


def _header_truncated(f, size: int, stopped_at: int) -> bool:
    """True when a header without Pixel Data ends inside an element (rare path: re-read in full).

    pydicom stops silently when fewer than 8 bytes are left for an element header, keeps a value that is
    shorter than its length, and seeks past the end for elements it skips; so the file is complete only
    when its last element ends exactly at the end of the file.
    """
    import pydicom

    if stopped_at > size:
        return True
    f.seek(0)
    full = pydicom.dcmread(f, stop_before_pixels=True, force=True)
    end = 0
    for tag in full.keys():
        elem = full.get_item(tag)
        tell, length = getattr(elem, "value_tell", None), getattr(elem, "length", None)
        if tell is None or length is None:
            continue  # already converted (Specific Character Set is, during the read): not the last one
        if length == 0xFFFFFFFF:
            end = size  # undefined-length sequence: its end is not known without parsing it; assume complete
            continue
        end = max(end, tell + length)
    return end != size


def _pixel_tag(head: bytes, little: bool) -> int | None:
    if len(head) < 8:
        return None
    group, elem = struct.unpack("<HH" if little else ">HH", head[:4])
    tag = group << 16 | elem
    return tag if tag in _PIXEL_TAGS else None


def _check_pixel_length(
    vals: dict[int, object], f, pixel_at: int, head: bytes, size: int, rows, cols, little: bool, implicit
) -> None:
    """Raise ``truncated`` when the file cannot hold the Pixel Data its header announces."""
    fmt = "<" if little else ">"
    if implicit or head[4:6] in (b"OB", b"OW", b"OF", b"OD", b"UN", b"OV"):
        if implicit:
            length, start = struct.unpack(fmt + "L", head[4:8])[0], pixel_at + 8
        else:
            length, start = struct.unpack(fmt + "L", head[8:12])[0], pixel_at + 12
    else:  # explicit VR with a 2-byte length (not valid for Pixel Data, but seen)
        length, start = struct.unpack(fmt + "H", head[6:8])[0], pixel_at + 8
    if length == 0xFFFFFFFF:
        # Encapsulated (compressed) frames: the file must end with the Sequence Delimitation Item.
        f.seek(max(size - 8, 0))
        tail = f.read(8)
        if tail[:4] != (b"\xfe\xff\xdd\xe0" if little else b"\xff\xfe\xe0\xdd"):
            raise _Reject("truncated", "encapsulated Pixel Data without its closing delimiter")
        return
    if start + length > size:
        raise _Reject("truncated", f"Pixel Data announces {length} bytes, the file holds {max(size - start, 0)}")
    bits = _ushort(vals, _T_BITS, little) or 16
    samples = _ushort(vals, _T_SAMPLES, little) or 1
    if rows and cols and length < rows * cols * samples * bits // 8:
        need = rows * cols * samples * bits // 8
        raise _Reject("truncated", f"Pixel Data has {length} bytes, {rows}x{cols}x{bits} bits need {need}")


def read_chunk(root: str, rels: Sequence[str]) -> list[SliceHeader | Skip | Note]:
    """Worker task: :func:`read_header` over a chunk of files (plain tuples go back to the parent).

    :class:`Note` items (after the headers) say what was done to usable files, e.g. UIDs minted.
    """
    # pydicom warns (and logs) on every odd value (invalid UI, unknown charset): a million such lines
    # help no one; a file that matters ends in skipped.csv with a reason instead.
    pydicom_logger = logging.getLogger("pydicom")
    level = pydicom_logger.level
    pydicom_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _NOTES.clear()
            out: list[SliceHeader | Skip | Note] = [read_header(root, rel) for rel in rels]
            return out + _NOTES
    finally:
        _NOTES.clear()
        pydicom_logger.setLevel(level)


# ----------------------------------------------------------------------------------------------------
# The pool


def read_chunk_floor(root: str, rels: Sequence[str]) -> int:
    """The floor :func:`read_chunk` is measured against (``bench manifest``): a bare
    ``pydicom.dcmread(stop_before_pixels=True)`` loop, no checks, nothing kept; returns the number of files."""
    import pydicom

    for rel in rels:
        pydicom.dcmread(os.path.join(root, rel), stop_before_pixels=True)
    return len(rels)


def _chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def chunk_size_for(n_files: int, workers: int) -> int:
    """Files per task: big enough to amortise inter-process overhead, small enough to balance the load."""
    return max(16, min(512, n_files // (workers * 8) or 16))


def map_files(
    func: Callable[[str, Sequence[str]], list],
    root: str,
    files: Sequence[str],
    workers: int,
    on_progress: Callable[[int], None] | None = None,
) -> Iterator[list]:
    """Run ``func(root, chunk)`` over chunks of ``files`` on ``workers`` processes; yield each chunk's result.

    With one worker (or very few files) it runs in this process: no pool start-up. The pool uses the
    ``forkserver`` start method (``spawn`` where absent): forking a parent that already runs threads
    (rich's progress refresh, torch) can deadlock.
    """
    workers = max(1, int(workers))
    size = chunk_size_for(len(files), workers)
    if workers == 1 or len(files) <= size:
        for chunk in _chunks(files, size):
            out = func(root, chunk)
            if on_progress is not None:
                on_progress(len(chunk))
            yield out
        return
    from concurrent.futures.process import BrokenProcessPool

    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    if ctx.get_start_method() == "forkserver":
        ctx.set_forkserver_preload(["pydicom", "ldct_monai.dicom.scan"])
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        try:
            futures = {pool.submit(func, root, chunk): len(chunk) for chunk in _chunks(files, size)}
            for fut in cf.as_completed(futures):
                out = fut.result()
                if on_progress is not None:
                    on_progress(futures[fut])
                yield out
        except BrokenProcessPool as err:
            raise LdctError(
                f"header-reading worker processes died ({err}). From a script, call this under "
                "'if __name__ == \"__main__\":' (as for a PyTorch DataLoader), or use one worker."
            ) from err
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def scan_tree(
    data_root: Path,
    workers: int | None = None,
    progress: bool = True,
    exclude: Sequence[Path] = (),
) -> tuple[list[SliceHeader], list[Skip], int]:
    """List and read every file under ``data_root``.

    Args:
        data_root: root of the DICOM tree.
        workers: processes (None: all cores).
        progress: show a rich progress bar (files/s and ETA) on stderr.
        exclude: folders not to enter.

    Returns:
        (usable slice headers, skipped files, number of files listed). Orders are unspecified (the
        caller sorts). Repeated strings (UIDs, descriptions) are interned, so a series' rows share them.
    """
    from ldct_monai.progress import make_progress

    root = os.path.abspath(data_root)
    workers = workers or default_workers()
    with make_progress(disable=not progress) as bar:
        listing = bar.add_task("Listing files", total=None, unit="files")
        files = list_files(Path(root), exclude, on_progress=lambda n: bar.update(listing, completed=n))
        bar.update(listing, total=len(files), completed=len(files))
        task = bar.add_task("Reading headers", total=len(files), unit="files")
        headers: list[SliceHeader] = []
        skipped: list[Skip] = []
        notes: list[Note] = []
        intern: dict[str, str] = {}

        def shared(s: str) -> str:
            return intern.setdefault(s, s)

        for chunk in map_files(read_chunk, root, files, workers, on_progress=lambda n: bar.advance(task, n)):
            for item in chunk:
                if isinstance(item, SliceHeader):
                    headers.append(
                        item._replace(
                            patient_id=shared(item.patient_id),
                            study_uid=shared(item.study_uid),
                            series_uid=shared(item.series_uid),
                            series_description=shared(item.series_description),
                            body_part_examined=shared(item.body_part_examined),
                            kernel=shared(item.kernel),
                            manufacturer=shared(item.manufacturer),
                        )
                    )
                elif isinstance(item, Note):
                    notes.append(item)
                else:
                    skipped.append(item)
    if notes:
        notes.sort()
        log.warning("%d file(s) have empty UIDs (%s, e.g. %s); minted deterministic 2.25 UIDs for them (SOPInstanceUID "
                    "from the file's bytes, SeriesInstanceUID from its folder), as denoise does.", len(notes),
                    notes[0].what, notes[0].path)
    return headers, skipped, len(files)
