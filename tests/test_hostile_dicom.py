"""Real vendor files in the DICOM reader and build-manifest's scan (issue 13), see docs/errors.md."""

from __future__ import annotations

import logging
import shutil
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag
from typer.testing import CliRunner

from conftest import REAL_CT, write_series
from ldct_monai.cli import app
from ldct_monai.dicom.create import make_uid
from ldct_monai.dicom.reader import read_series
from ldct_monai.dicom.scan import read_chunk, scan_tree
from ldct_monai.errors import InputError



def _denoise(src: Path, out: Path, model: Path):
    return CliRunner().invoke(app, ["denoise", str(src), str(out), "--model", str(model), "--device", "cpu"])


def _add_bad_private_tags(path: Path) -> None:
    """What a Philips file does: private elements whose length does not fit their VR (US of 3 bytes, FD of 5)."""
    ds = pydicom.dcmread(path)
    ds.add_new(0x20010010, "LO", "Philips Imaging DD 001")
    ds._dict[Tag(0x20011001)] = RawDataElement(Tag(0x20011001), "US", 3, b"\x01\x02\x03", 0, False, True)
    ds._dict[Tag(0x20011002)] = RawDataElement(Tag(0x20011002), "FD", 5, b"\x01\x02\x03\x04\x05", 0, False, True)
    ds.save_as(path)


def test_private_tags_of_the_wrong_length_do_not_stop_denoise(identity_model, tmp_path):
    src = tmp_path / "philips"
    for f in write_series(src, n_slices=3, size=16):
        _add_bad_private_tags(f)
    with pytest.raises(pydicom.errors.BytesLengthException):  # what killed denoise before
        list(pydicom.dcmread(src / "1-001.dcm"))
    r = _denoise(src, tmp_path / "out", identity_model)
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert "Wrote 3 slices" in text and "2 element(s) whose value does not fit its VR ((2001,1001) US, 3 bytes" in text
    out = pydicom.dcmread(sorted((tmp_path / "out").glob("*.dcm"))[0])
    assert Tag(0x20011001) not in out and out.StudyInstanceUID == pydicom.dcmread(src / "1-001.dcm").StudyInstanceUID


def test_an_essential_element_of_the_wrong_length_is_one_line(tmp_path):
    files = write_series(tmp_path / "s", n_slices=2, size=16)
    ds = pydicom.dcmread(files[0])
    ds._dict[Tag(0x00281052)] = RawDataElement(Tag(0x00281052), "FD", 5, b"\x01\x02\x03\x04\x05", 0, False, True)
    ds.save_as(files[0])
    s = read_series(tmp_path / "s")
    i = [r.path for r in s.slices].index(files[0])
    with pytest.raises(InputError, match=r"1-001.dcm: RescaleIntercept \(0028,1052\) has 5 bytes, which do not fit its VR"):
        s.read_slice(i)


def _empty_uids(path: Path, keywords=("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID")) -> None:
    ds = pydicom.dcmread(path)
    raw = path.read_bytes()
    for kw in keywords:
        tag = Tag(pydicom.datadict.tag_for_keyword(kw))
        ds._dict[tag] = RawDataElement(tag, "UI", 0, b"", 0, False, True)  # present, zero length
    ds.file_meta.MediaStorageSOPInstanceUID = make_uid("meta", raw[-64:].hex())
    ds.save_as(path, enforce_file_format=False)


def test_empty_uids_are_minted_deterministically_and_said(identity_model, tmp_path):
    src = tmp_path / "anon"
    for f in write_series(src, n_slices=3, size=16):
        _empty_uids(f)
    assert pydicom.dcmread(src / "1-001.dcm").SOPInstanceUID == ""
    with pytest.warns(RuntimeWarning, match=r"empty UIDs \(FrameOfReferenceUID in 3 file\(s\), SOPInstanceUID in 3 "
                                            r"file\(s\), SeriesInstanceUID in 3 file\(s\), StudyInstanceUID in 3"):
        a = read_series(src)
    with pytest.warns(RuntimeWarning):
        b = read_series(src)
    assert [r.sop_instance_uid for r in a.slices] == [r.sop_instance_uid for r in b.slices]  # deterministic
    assert len({r.sop_instance_uid for r in a.slices}) == 3 and a.series_instance_uid.startswith("2.25.")
    r = _denoise(src, tmp_path / "out", identity_model)
    assert r.exit_code == 0, r.output
    assert "minted deterministic 2.25 UIDs" in " ".join(r.output.split())
    outs = [pydicom.dcmread(f) for f in sorted((tmp_path / "out").glob("*.dcm"))]
    assert len({ds.StudyInstanceUID for ds in outs}) == 1 and outs[0].StudyInstanceUID.startswith("2.25.")
    assert outs[0].FrameOfReferenceUID and outs[0].ReferencedSeriesSequence[0].SeriesInstanceUID == a.series_instance_uid
    assert {ds.SourceImageSequence[0].ReferencedSOPInstanceUID for ds in outs} == {r.sop_instance_uid for r in a.slices}


def test_build_manifest_scan_mints_the_same_uids(tmp_path, caplog):
    src = tmp_path / "L001" / "st" / "fd"
    for f in write_series(src, n_slices=2, size=16):
        _empty_uids(f, ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID"))
    with caplog.at_level(logging.WARNING, logger="ldct_monai.dicom.scan"):
        headers, skipped, n = scan_tree(tmp_path, workers=1, progress=False)
    assert n == 2 and not skipped and "2 file(s) have empty UIDs" in caplog.text
    with pytest.warns(RuntimeWarning):
        series = read_series(src)
    assert sorted(h.sop_uid for h in headers) == sorted(r.sop_instance_uid for r in series.slices)
    assert {h.series_uid for h in headers} == {series.series_instance_uid}


@pytest.mark.parametrize("cut", [200, 300, 400, 500])
def test_slice_cut_inside_its_header_is_an_error_for_denoise(identity_model, tmp_path, cut):
    src = tmp_path / "ge"
    src.mkdir()
    for f in sorted(REAL_CT.glob("*.dcm")):
        shutil.copy(f, src / f.name)
    victim = sorted(src.glob("*.dcm"))[1]
    victim.write_bytes(victim.read_bytes()[:cut])
    with pytest.raises(InputError, match=rf"broken DICOM file\(s\): {victim.name} \(truncated: the file ends"):
        read_series(src)
    if cut == 300:  # the CLI once: exit 1, one line, nothing written
        outs = tmp_path / "outs"
        outs.mkdir()
        r = _denoise(src, outs / "out", identity_model)
        assert r.exit_code == 1 and victim.name in r.output and "Traceback" not in r.output
        assert list(outs.iterdir()) == []


def test_symlinked_sub_folders_are_followed_once(tmp_path):
    store = tmp_path / "store" / "series"
    write_series(store, n_slices=3, size=16)
    root = tmp_path / "in"
    (root / "a").mkdir(parents=True)
    (root / "a" / "series").symlink_to(store, target_is_directory=True)
    (store / "loop").symlink_to(store, target_is_directory=True)  # a loop: leads back into itself
    s = read_series(root, warn_skipped=False)
    assert len(s) == 3 and all("a/series/" in str(r.path) for r in s.slices)
    assert [why for _, why in s.skipped] == ["symbolic link into a folder already searched (not followed)"]
    # build-manifest's listing follows them too
    headers, skipped, n = scan_tree(root, workers=1, progress=False)
    assert n == 3 and sorted(h.path for h in headers) == [f"a/series/1-00{i}.dcm" for i in (1, 2, 3)]


def test_junk_dcm_files_do_not_flood_the_console(tmp_path, caplog):
    src = tmp_path / "s"
    files = write_series(src, n_slices=2, size=16)
    rng = np.random.default_rng(0)
    for i in range(5):
        (src / f"junk{i}.dcm").write_bytes(rng.bytes(2000))
    (src / "dicm.dcm").write_bytes(b"\0" * 128 + b"DICM" + rng.bytes(300))
    pydicom.config.settings.writing_validation_mode = pydicom.config.WARN  # write the invalid values as they are
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            odd = pydicom.dcmread(files[0])  # a DICOM with invalid values: pydicom warns when they are read
            odd.Modality = "MR"
            odd.SOPInstanceUID, odd.SeriesInstanceUID = make_uid("odd"), make_uid("odd", "s")
            odd.SpecificCharacterSet = "ISO_IR 999"
            odd.PatientName = "x" * 100
            odd.save_as(src / "odd.dcm")
    finally:
        pydicom.config.settings.writing_validation_mode = pydicom.config.RAISE
    caplog.clear()  # writing the odd file above logged
    with caplog.at_level(logging.DEBUG, logger="pydicom"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s = read_series(src)
    assert len(s) == 2 and [str(w.message) for w in caught if w.category is not RuntimeWarning] == []
    assert len(caught) == 1 and "ignored 7 file(s)" in str(caught[0].message)
    assert not [r.getMessage() for r in caplog.records if r.name.startswith("pydicom")]


def test_duplicate_sop_uid_error_names_both_files(tmp_path):
    files = write_series(tmp_path / "s", n_slices=3, size=16)
    ds = pydicom.dcmread(files[2])
    ds.SOPInstanceUID = pydicom.dcmread(files[0]).SOPInstanceUID
    ds.save_as(files[2])
    with pytest.raises(InputError, match=r"1 SOPInstanceUID\(s\) appear in more than one file \(e.g. 2\.25\.\d+ in "
                                         r"1-001.dcm and 1-003.dcm\)"):
        read_series(tmp_path / "s")


def test_scan_reads_vendor_private_tags(tmp_path):
    f = write_series(tmp_path / "C001" / "st" / "fd", n_slices=1, size=16)[0]
    _add_bad_private_tags(f)
    (got,) = read_chunk(str(tmp_path), [f.relative_to(tmp_path).as_posix()])
    assert got.rows == 16 and got.sop_uid  # a SliceHeader, not a Skip
