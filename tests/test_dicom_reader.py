"""Finding, grouping, validating, sorting and decoding one CT series (ldct_monai.dicom.reader)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless, RLELossless

from conftest import REAL_CT, write_series
from ldct_monai.dicom.create import SeriesInfo, make_uid, write_ct_series
from ldct_monai.dicom.reader import list_series, ordered_prefetch, outside_fov_mask, read_series
from ldct_monai.errors import InputError


def _series(out: Path, z, *, size: int = 16, signed: bool = False, seed: int = 0, **info) -> list[Path]:
    """A tiny series with given z positions and HU = 100 * slice + column index (easy to check)."""
    n = len(z)
    vol = np.stack([np.tile(np.arange(size, dtype=np.float64), (size, 1)) + 100.0 * i for i in range(n)])
    si = SeriesInfo(
        patient_id="P1",
        study_uid=make_uid("P1", "study"),
        series_uid=info.pop("series_uid", make_uid("P1", "series", seed)),
        frame_of_reference_uid=make_uid("P1", "for"),
        series_description=info.pop("series_description", "Low Dose Images"),
        **info,
    )
    return write_ct_series(out, vol, si, z_positions=list(z), signed=signed)


def test_sorted_by_position_not_instance_number_or_name(tmp_path):
    # file 1-001 is the highest slice: order must come from ImagePositionPatient . normal
    files = _series(tmp_path / "s", [6.0, 2.0, 4.0, 0.0])
    s = read_series(tmp_path / "s")
    assert [r.position for r in s.slices] == [0.0, 2.0, 4.0, 6.0]
    assert [r.path.name for r in s.slices] == ["1-004.dcm", "1-002.dcm", "1-003.dcm", "1-001.dcm"]
    assert s.spacing == pytest.approx(2.0) and s.shape == (4, 16, 16)
    vol = s.read_volume()
    # slice i of the input had HU offset 100 * i: sorted order is files 4, 2, 3, 1
    np.testing.assert_allclose(vol[:, 0, 0], [300.0, 100.0, 200.0, 0.0])
    assert files[0].exists()


def test_feet_first_normal_sorts_along_normal(tmp_path):
    # column direction flipped: normal = -z, so the slice with the largest z comes first
    _series(tmp_path / "s", [0.0, 1.0, 2.0], orientation=(1, 0, 0, 0, -1, 0))
    s = read_series(tmp_path / "s")
    np.testing.assert_allclose(s.normal, [0, 0, -1])
    assert [r.path.name for r in s.slices] == ["1-003.dcm", "1-002.dcm", "1-001.dcm"]


def test_recursive_search_ignores_non_dicom_and_non_ct_with_warning(tmp_path):
    _series(tmp_path / "a" / "b", [0.0, 1.0])
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "a" / "fake.dcm").write_bytes(b"\x00" * 300)
    mr = _series(tmp_path / "mr", [0.0], series_uid=make_uid("mr"), extra={"Modality": "MR"})
    with pytest.warns(RuntimeWarning, match=r"ignored 3 file\(s\) that are not CT slices \(2 not_dicom, 1 not_ct\)") as rec:
        s = read_series(tmp_path)
    assert len(s) == 2 and len(s.skipped) == 3
    assert "notes.txt" in str(rec[0].message)
    assert mr[0].exists()


def test_none_usable_is_an_error(tmp_path):
    (tmp_path / "x.txt").write_text("not dicom")
    _series(tmp_path / "mr", [0.0], extra={"Modality": "MR"})
    with pytest.raises(InputError, match=r"no usable CT slices found in 2 file\(s\) \(") as err:
        read_series(tmp_path)
    assert "1 not_dicom" in str(err.value) and "1 not_ct" in str(err.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no usable CT slices"):
        read_series(empty)
    with pytest.raises(InputError, match="does not exist"):
        read_series(tmp_path / "nope")


def test_several_series_need_series_uid(tmp_path):
    a = make_uid("A")
    b = make_uid("B")
    _series(tmp_path / "a", [0.0, 1.0, 2.0], series_uid=a, series_description="Full Dose Images")
    _series(tmp_path / "b", [0.0, 1.0], series_uid=b, series_description="Low Dose Images")
    with pytest.raises(InputError) as err:
        read_series(tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and "2 CT series found" in msg and "--series-uid" in msg
    assert f"{a} 'Full Dose Images' (3 slices)" in msg and f"{b} 'Low Dose Images' (2 slices)" in msg
    assert [(x.series_instance_uid, x.n_slices) for x in list_series(tmp_path)] == [(a, 3), (b, 2)]
    assert len(read_series(tmp_path, series_uid=b)) == 2
    with pytest.raises(InputError, match="no CT series with SeriesInstanceUID 1.2.3"):
        read_series(tmp_path, series_uid="1.2.3")


def test_every_problem_collected_in_one_error(tmp_path):
    _series(tmp_path, [0.0, 1.0, 1.0, 2.0])
    ds = pydicom.dcmread(tmp_path / "1-004.dcm")
    ds.Rows, ds.Columns = 8, 32  # same byte count, different size
    ds.save_as(tmp_path / "1-004.dcm")
    with pytest.raises(InputError) as err:
        read_series(tmp_path)
    msg = str(err.value)
    assert "mixed image sizes" in msg and "8x32 in 1 file(s)" in msg and "16x16 in 3 file(s)" in msg
    assert "1 duplicate slice position(s): 1-002.dcm and 1-003.dcm at 1.000 mm" in msg


def test_mixed_orientation_is_an_error(tmp_path):
    _series(tmp_path, [0.0, 1.0])
    ds = pydicom.dcmread(tmp_path / "1-002.dcm")
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    ds.save_as(tmp_path / "1-002.dcm")
    with pytest.raises(InputError, match="mixed orientations"):
        read_series(tmp_path)


def test_truncated_file_is_an_error_not_skipped(tmp_path):
    files = _series(tmp_path, [0.0, 1.0, 2.0], size=32)
    data = files[1].read_bytes()
    files[1].write_bytes(data[: len(data) - 100])
    with pytest.raises(InputError, match=r"1-002.dcm \(truncated: Pixel Data needs 2048 bytes, the file ends 100 bytes short\)"):
        read_series(tmp_path)


def test_broken_file_of_another_series_does_not_block_the_chosen_one(tmp_path):
    a, b = make_uid("A"), make_uid("B")
    _series(tmp_path / "a", [0.0, 1.0], series_uid=a)
    f = _series(tmp_path / "b", [0.0, 1.0], series_uid=b)[0]
    f.write_bytes(f.read_bytes()[:-10])
    assert len(read_series(tmp_path, series_uid=a)) == 2
    with pytest.raises(InputError, match=r"broken DICOM file\(s\): b/1-001.dcm \(truncated"):
        read_series(tmp_path, series_uid=b)


def test_missing_geometry_is_an_error(tmp_path):
    f = _series(tmp_path, [0.0, 1.0])[1]
    ds = pydicom.dcmread(f)
    del ds.PixelSpacing
    ds.save_as(f)
    with pytest.raises(InputError, match=r"PixelSpacing missing in 1 file\(s\) \(e.g. 1-002.dcm\)"):
        read_series(tmp_path)


def test_raw_dataset_without_preamble_is_read(tmp_path):
    f = _series(tmp_path, [0.0, 1.0])[0]
    ds = pydicom.dcmread(f)
    raw = tmp_path / "IMG0001"  # no preamble, no DICM, no extension: old ACR-NEMA style file
    del ds.file_meta
    ds.preamble = None
    pydicom.dcmwrite(raw, ds, enforce_file_format=False, implicit_vr=True, little_endian=True)
    f.unlink()
    assert raw.read_bytes()[:2] == b"\x08\x00"
    s = read_series(tmp_path)
    assert [r.path.name for r in s.slices] == ["IMG0001", "1-002.dcm"]
    np.testing.assert_allclose(s.read_volume()[:, 0, :3], [[0, 1, 2], [100, 101, 102]])


def test_truncated_compressed_file_is_an_error(tmp_path):
    files = _series(tmp_path, [0.0, 1.0], size=32)
    ds = pydicom.dcmread(files[0])
    ds.compress(RLELossless)
    ds.save_as(files[0])
    data = files[0].read_bytes()
    files[0].write_bytes(data[:-40])
    with pytest.raises(InputError, match=r"1-001.dcm \(truncated: the file ends inside its data\)"):
        read_series(tmp_path)


def test_uneven_spacing_warns_but_reads(tmp_path):
    _series(tmp_path, [0.0, 1.0, 2.0, 5.0])
    with pytest.warns(RuntimeWarning, match=r"uneven slice spacing.*from 1.000 to 3.000 mm \(median 1.000 mm, 1 uneven"):
        s = read_series(tmp_path)
    assert len(s) == 4


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless])
def test_compressed_inputs_decode_to_the_same_hu(tmp_path, syntax):
    files = _series(tmp_path / "plain", [0.0, 1.0], size=32, signed=True, rescale_intercept=-1024.0)
    comp = tmp_path / "comp"
    comp.mkdir()
    for f in files:
        ds = pydicom.dcmread(f)
        ds.compress(syntax)
        ds.save_as(comp / f.name)
    a, b = read_series(tmp_path / "plain"), read_series(comp)
    assert b.transfer_syntaxes == (str(syntax),)
    np.testing.assert_array_equal(a.read_volume(), b.read_volume())


def test_bits_stored_12_and_per_slice_rescale(tmp_path):
    files = _series(tmp_path, [0.0, 1.0], rescale_intercept=-1000.0)
    ds = pydicom.dcmread(files[1])
    stored = ds.pixel_array.astype(np.uint16)
    ds.BitsStored, ds.HighBit = 12, 11
    ds.RescaleSlope, ds.RescaleIntercept = "0.5", "-10"
    ds.PixelData = (stored | np.uint16(0xF000)).tobytes()  # junk in the unused high bits must be masked
    ds.save_as(files[1])
    s = read_series(tmp_path)
    sl = s.read_slice(1)
    np.testing.assert_array_equal(sl.stored, stored & 0x0FFF)
    np.testing.assert_allclose(sl.hu, (stored & 0x0FFF) * 0.5 - 10)
    np.testing.assert_allclose(s.read_slice(0).hu[0, :3], [0.0, 1.0, 2.0])


def test_real_ge_slices_and_padding(real_ct):
    s = read_series(real_ct)
    assert s.shape == (3, 512, 512) and s.spacing == pytest.approx(1.0, abs=1e-3)
    sl = s.read_slice(0)
    assert sl.stored.dtype == np.int16 and sl.padding is not None
    assert sl.padding.sum() == (sl.stored == -2000).sum() > 0
    assert sl.hu[sl.padding].max() == -3024.0
    files = sorted(REAL_CT.glob("*.dcm"))
    assert {r.sop_instance_uid for r in s.slices} == {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files}


def test_outside_fov_without_padding_value(tmp_path):
    f = _series(tmp_path, [0.0], size=16)[0]
    ds = pydicom.dcmread(f)
    stored = ds.pixel_array.copy()
    assert outside_fov_mask(ds, stored) is None  # minimum -1024 HU is air, not padding
    stored[:2] = 0  # -1024 HU with intercept -1024: still not padding
    assert outside_fov_mask(ds, stored) is None
    ds.RescaleIntercept = "-3024"
    stored[:2] = 0  # now -3024 HU: a constant far below air is the outside of the field of view
    stored[2:] = 2000
    mask = outside_fov_mask(ds, stored)
    assert mask is not None and mask.sum() == 32 and mask[:2].all()
    ds.PixelPaddingValue = 7  # an explicit padding value wins, even if absent from the slice
    assert outside_fov_mask(ds, stored) is None


def test_ordered_prefetch_keeps_order_and_bounds_work():
    running, peak, started = [0], [0], []
    lock = threading.Lock()

    def work(i: int) -> int:
        with lock:
            running[0] += 1
            started.append(i)
            peak[0] = max(peak[0], running[0])
        time.sleep(0.002 * (5 - i % 5))
        with lock:
            running[0] -= 1
        return i * i

    got = []
    for value in ordered_prefetch(work, range(20), read_ahead=3, workers=2):
        got.append(value)
        assert len(started) <= len(got) + 3  # never more than read_ahead items ahead of the consumer
    assert got == [i * i for i in range(20)] and peak[0] <= 2

    def boom(i: int) -> int:
        if i == 2:
            raise ValueError("bad slice")
        return i

    with pytest.raises(ValueError, match="bad slice"):
        list(ordered_prefetch(boom, range(5)))


def test_write_series_fixture_reads(tmp_path):
    write_series(tmp_path, n_slices=3, size=16, spacing_z=2.5)
    s = read_series(tmp_path)
    assert s.spacing == pytest.approx(2.5) and s.description == "Full Dose Images"
