"""One corpus of odd files: build-manifest's scan, denoise's series reader, the training reader and evaluation
accept the same files and reject the others with the same reason."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate

from conftest import write_series
from ldct_monai.dicom.classify import FILE_REASONS
from ldct_monai.dicom.reader import scan_series
from ldct_monai.dicom.scan import read_header
from ldct_monai.errors import InputError
from ldct_monai.evaluate import _Pair, _read_pair
from ldct_monai.schema import BodyPart
from ldct_monai.transforms import LoadCTSlice


def _variant(src: Path, dst: Path, **changes) -> Path:
    ds = pydicom.dcmread(src)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[dst.name])
    for k, v in changes.items():
        if v is None:
            del ds[k]
        else:
            setattr(ds, k, v)
    ds.save_as(dst, enforce_file_format=True)
    return dst


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict[str, str | None]]:
    """A folder of one good CT series and one file of each odd kind; name -> expected reason (None = usable)."""
    root = tmp_path_factory.mktemp("corpus")
    good = write_series(root / "good", n_slices=2, size=16)
    folder = root / "odd"
    folder.mkdir()
    expect: dict[str, str | None] = {}
    for f in good:
        (folder / f.name).write_bytes(f.read_bytes())
        expect[f.name] = None
    src = good[0]
    raw = src.read_bytes()

    (folder / "notes.txt").write_text("not dicom")
    expect["notes.txt"] = "not_dicom"
    (folder / "zeros.dcm").write_bytes(b"\x00" * 300)
    expect["zeros.dcm"] = "not_dicom"
    (folder / "cut.dcm").write_bytes(raw[: len(raw) - 40])
    expect["cut.dcm"] = "truncated"
    _variant(src, folder / "mr.dcm", Modality="MR", SOPClassUID="1.2.840.10008.5.1.4.1.1.4")
    expect["mr.dcm"] = "not_ct"
    _variant(src, folder / "capture.dcm", SOPClassUID="1.2.840.10008.5.1.4.1.1.7")  # Secondary Capture, Modality CT
    expect["capture.dcm"] = "not_ct"
    _variant(src, folder / "scout.dcm", ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    expect["scout.dcm"] = "localizer"
    _variant(src, folder / "frames.dcm", NumberOfFrames=2)
    expect["frames.dcm"] = "multiframe"
    _variant(src, folder / "nopix.dcm", PixelData=None)
    expect["nopix.dcm"] = "no_pixel_data"
    _variant(src, folder / "noipp.dcm", ImagePositionPatient=None)
    expect["noipp.dcm"] = "missing_geometry"
    rgb = np.zeros((16, 16, 3), np.uint8).tobytes()
    _variant(src, folder / "rgb.dcm", SamplesPerPixel=3, PhotometricInterpretation="RGB", PlanarConfiguration=0,
             BitsAllocated=8, BitsStored=8, HighBit=7, PixelRepresentation=0, PixelData=rgb)
    expect["rgb.dcm"] = "unsupported_pixels"
    ds = pydicom.dcmread(src)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=["mpeg"])
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: no decoder for a CT slice
    ds.PixelData = encapsulate([b"\x00" * 64])
    ds["PixelData"].VR = "OB"
    ds.save_as(folder / "mpeg.dcm", enforce_file_format=False)
    expect["mpeg.dcm"] = "undecodable"
    ds = pydicom.dcmread(src)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=["proj"])
    ds.add_new(0x70290010, "LO", "DICOM-CT-PD dict")
    ds.add_new(0x70291010, "US", 736)
    ds.save_as(folder / "proj.dcm", enforce_file_format=True)
    expect["proj.dcm"] = "projection_data"
    assert {r for r in expect.values() if r} <= set(FILE_REASONS)
    return folder, expect


def _reason(message: str) -> str:
    m = re.search(r"not a usable CT slice \((\w+)", message)
    return m.group(1) if m else f"other: {message}"


def test_scan_series_training_and_evaluation_agree_file_by_file(corpus):
    folder, expect = corpus
    # build-manifest: the header-only tree scan
    scan = {}
    for name in expect:
        got = read_header(str(folder), name)
        scan[name] = getattr(got, "reason", None)
    # denoise: the series scan (skipped files and broken ones, which make read_series refuse the folder)
    result = scan_series(folder)
    series = {}
    for hdrs in result.series.values():
        series.update({h.path.name: None for h in hdrs})
    series.update({p.name: why.split(":", 1)[0] for p, why in result.skipped})
    series.update({p.name: why.split(":", 1)[0] for p, why, _ in result.broken})
    # training (LoadCTSlice) and evaluation (the paired reader), one file at a time
    train, evaluation = {}, {}
    good = next(n for n, r in expect.items() if r is None)
    for name in expect:
        try:
            LoadCTSlice()(folder / name)
            train[name] = None
        except InputError as err:
            train[name] = _reason(str(err))
        try:
            _read_pair(_Pair(row={"ld_path": str(folder / name), "fd_path": str(folder / good)}, body_part=BodyPart.CHEST))
            evaluation[name] = None
        except InputError as err:
            evaluation[name] = _reason(str(err))
    assert scan == expect
    assert series == expect
    assert train == expect
    assert evaluation == expect
