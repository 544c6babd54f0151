"""build-manifest's header-only tree scan (ldct_monai.dicom.scan): z, truncation, compressed and deflated files, errors."""

from __future__ import annotations

import pydicom
import pytest

from conftest import write_series
from ldct_monai.dicom.core import slice_position
from ldct_monai.dicom.scan import SliceHeader, read_chunk, read_header


def test_unforeseen_errors_become_unreadable_and_patient_falls_back_to_folder(tmp_path, monkeypatch):
    import ldct_monai.dicom.scan as scan

    write_series(tmp_path / "C007" / "st" / "fd", 2, 8, patient_id="", description="Full Dose Images")
    (tmp_path / "C007" / "st" / "fd" / "1-001.dcm").rename(tmp_path / "C007" / "st" / "fd" / "boom.dcm")
    real = scan._read_header

    def flaky(root, rel):
        if rel.endswith("boom.dcm"):
            raise RuntimeError("disk on fire")
        return real(root, rel)

    monkeypatch.setattr(scan, "_read_header", flaky)
    got = read_chunk(str(tmp_path), ["C007/st/fd/1-002.dcm", "C007/st/fd/boom.dcm"])
    assert got[0].patient_id == "C007"  # empty PatientID: top folder name
    assert got[1].reason == "unreadable" and "disk on fire" in got[1].detail


def test_z_is_the_shared_slice_position_even_when_oblique(tmp_path):
    tilt = (1.0, 0.0, 0.0, 0.0, 0.8, -0.6)  # rows along x, columns tilted in y-z
    files = write_series(tmp_path / "s", 3, 8, spacing_z=1.5, orientation=tilt)
    for f in files:
        h = read_header(str(tmp_path), f.relative_to(tmp_path).as_posix())
        assert isinstance(h, SliceHeader)
        assert h.z == pytest.approx(slice_position(pydicom.dcmread(f)), abs=1e-9)


def test_cut_files_are_truncated_never_a_crash(tmp_path):
    src = write_series(tmp_path / "src", 1, 8)[0].read_bytes()
    pixel_at = src.index(b"\xe0\x7f\x10\x00")
    reasons = {}
    for n in [*range(0, pixel_at + 12, 7), pixel_at + 20, len(src) - 2]:
        (tmp_path / "f.dcm").write_bytes(src[:n])
        got = read_chunk(str(tmp_path), ["f.dcm"])[0]
        reasons[n] = getattr(got, "reason", "ok")
    assert set(reasons.values()) <= {"not_dicom", "truncated", "no_pixel_data"}, reasons
    assert all(reasons[n] == "truncated" for n in (pixel_at + 20, len(src) - 2))  # inside Pixel Data
    assert sum(r == "truncated" for r in reasons.values()) > 0.6 * len(reasons)  # cuts on a boundary look complete


def test_compressed_and_deflated_slices(tmp_path):
    from pydicom.uid import DeflatedExplicitVRLittleEndian, RLELossless

    ds = pydicom.dcmread(write_series(tmp_path / "s", 1, 16)[0])
    ds.compress(RLELossless)  # encapsulated Pixel Data: undefined length, ends with a delimiter
    ds.save_as(tmp_path / "rle.dcm", enforce_file_format=True)
    (tmp_path / "rle_cut.dcm").write_bytes((tmp_path / "rle.dcm").read_bytes()[:-30])
    ds = pydicom.dcmread(tmp_path / "s" / "1-001.dcm")
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(tmp_path / "deflated.dcm", enforce_file_format=True)
    del ds.PixelData
    ds.save_as(tmp_path / "deflated_nopix.dcm", enforce_file_format=True)
    got = {r.path: getattr(r, "reason", "ok") for r in read_chunk(str(tmp_path), ["rle.dcm", "rle_cut.dcm", "deflated.dcm", "deflated_nopix.dcm"])}
    assert got == {"rle.dcm": "ok", "rle_cut.dcm": "truncated", "deflated.dcm": "ok", "deflated_nopix.dcm": "no_pixel_data"}
