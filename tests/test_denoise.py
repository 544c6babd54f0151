"""`ldct-monai denoise`: a derived DICOM series that validators, SimpleITK and the HU round trip accept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless
from typer.testing import CliRunner

from conftest import dciodvfy_errors, requires_dciodvfy, write_series
from ldct_monai.cli import app
from ldct_monai.denoise import denoise_series
from ldct_monai.config import HUWindow
from ldct_monai.dicom.create import SeriesInfo, make_uid, write_ct_series
from ldct_monai.dicom.writer import DerivedSeries, derive_slice, hu_to_source_stored
from ldct_monai.io_utils import sha256_file
from ldct_monai.modelio import export_model
from ldct_monai.networks import ResNetGenerator

ARCH = dict(ngf=4, n_blocks=1)


@pytest.fixture(scope="module")
def bright_model(tmp_path_factory) -> Path:
    """A non-residual generator whose output is +1 (3071 HU) everywhere: tests clipping."""
    run = tmp_path_factory.mktemp("bright")
    g = ResNetGenerator(**ARCH, residual=False).zero_head_()
    g.head[1].bias.data.fill_(20.0)
    export_model(run / "model", g, {**ARCH, "residual": False}, hu_window=HUWindow())
    return run


def _by_source(out_dir: Path) -> dict[str, pydicom.Dataset]:
    """Output datasets keyed by the SOPInstanceUID of their source slice."""
    out = {}
    for f in sorted(out_dir.glob("*.dcm")):
        ds = pydicom.dcmread(f)
        out[ds.SourceImageSequence[0].ReferencedSOPInstanceUID] = ds
    return out


def _sitk_geometry(folder: Path):
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    img = reader.Execute()
    return img.GetSize(), img.GetSpacing(), img.GetOrigin(), img.GetDirection(), sitk.GetArrayFromImage(img)


def _check_derived(src_dir: Path, out_dir: Path, summary: dict) -> dict[str, pydicom.Dataset]:
    """The UID, reference and geometry rules every derived series must satisfy."""
    sources = {ds.SOPInstanceUID: ds for ds in (pydicom.dcmread(f) for f in sorted(src_dir.glob("*.dcm")))}
    outs = _by_source(out_dir)
    assert set(outs) == set(sources) and summary["n_slices"] == len(sources)
    src0 = next(iter(sources.values()))
    new_series = {ds.SeriesInstanceUID for ds in outs.values()}
    assert new_series == {summary["series_instance_uid"]} and src0.SeriesInstanceUID not in new_series
    sops = [ds.SOPInstanceUID for ds in outs.values()]
    assert len(set(sops)) == len(sops) and not set(sops) & set(sources)
    positions = sorted(outs.values(), key=lambda d: float(d.ImagePositionPatient[2]) * float(np.cross(d.ImageOrientationPatient[:3], d.ImageOrientationPatient[3:])[2]))
    assert [int(d.InstanceNumber) for d in positions] == list(range(1, len(outs) + 1))
    for uid, ds in outs.items():
        src = sources[uid]
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        for kw in ("PatientID", "PatientName", "StudyInstanceUID", "FrameOfReferenceUID", "StudyDate", "AccessionNumber",
                   "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness",
                   "RescaleSlope", "RescaleIntercept", "PixelRepresentation", "BitsStored", "Rows", "Columns"):
            assert ds.get(kw) == src.get(kw), kw
        assert int(ds.SeriesNumber) == int(src.get("SeriesNumber", 0) or 0) + 1000
        assert "denoised" in ds.SeriesDescription and len(ds.SeriesDescription) <= 64
        assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"] and list(ds.ImageType)[2:] == list(src.ImageType)[2:]
        assert summary["card_hash"] in ds.DerivationDescription and "HU window [-1024, 3071]" in ds.DerivationDescription
        ref = ds.SourceImageSequence[0]
        assert ref.ReferencedSOPClassUID == src.SOPClassUID and ref.PurposeOfReferenceCodeSequence[0].CodeValue == "121322"
        rs = ds.ReferencedSeriesSequence[0]
        assert rs.SeriesInstanceUID == src.SeriesInstanceUID and rs.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == uid
        assert ds.ContributingEquipmentSequence[-1].Manufacturer == "ldct-monai"
        assert "SmallestImagePixelValue" not in ds and "LargestImagePixelValue" not in ds
        assert not any(e.tag.is_private for e in ds) and not any(e.tag.element == 0 for e in ds)
    return outs


@requires_dciodvfy
def test_real_ge_series_identity_round_trip(real_ct, identity_model, tmp_path):
    before = {f.name: sha256_file(f) for f in real_ct.iterdir()}
    out = tmp_path / "out"
    summary = denoise_series(real_ct, out, identity_model, device="cpu", progress=False)
    assert {f.name: sha256_file(f) for f in real_ct.iterdir()} == before  # inputs never modified
    outs = _check_derived(real_ct, out, summary)
    for src_file in sorted(real_ct.glob("*.dcm")):
        src = pydicom.dcmread(src_file)
        ds = outs[src.SOPInstanceUID]
        a, b = src.pixel_array, ds.pixel_array
        assert b.dtype == np.int16
        pad = a == -2000
        assert pad.sum() > 50000 and (b[pad] == -2000).all()  # padding untouched
        np.testing.assert_array_equal(a, b)  # identity: HU -> [-1, 1] -> HU -> stored is exact here
        # dciodvfy: no error the source did not already have (source: empty SpecificCharacterSet, no Laterality)
        src_errors, out_errors = set(dciodvfy_errors(src_file)), set(dciodvfy_errors(out / Path(ds.filename).name))
        assert out_errors <= src_errors, out_errors - src_errors
        assert not any("SpecificCharacterSet" in e for e in out_errors)  # the empty value was dropped
        assert not any("Laterality" in e for e in out_errors)  # unknown body part: empty Laterality (Type 2C)
        assert ds.Laterality == "" and "Laterality" not in src
    s_in, s_out = _sitk_geometry(real_ct), _sitk_geometry(out)
    assert s_in[:3] == s_out[:3]
    np.testing.assert_allclose(s_in[3], s_out[3])
    np.testing.assert_array_equal(s_in[4], s_out[4])


@requires_dciodvfy
def test_synthetic_series_identity_and_geometry(identity_model, tmp_path):
    src = tmp_path / "in" / "patient" / "series"
    write_series(src, n_slices=4, size=32, spacing_z=2.5, body_part="ABDOMEN", kernel="B30f", ctdi_vol=12.0)
    out = tmp_path / "out"
    summary = denoise_series(tmp_path / "in", out, identity_model, device="cpu", progress=False, batch_size=3)
    outs = _check_derived(src, out, summary)
    for f in sorted(src.glob("*.dcm")):
        s = pydicom.dcmread(f)
        o = outs[s.SOPInstanceUID]
        np.testing.assert_array_equal(s.pixel_array, o.pixel_array)
        assert dciodvfy_errors(out / Path(o.filename).name) == [] == dciodvfy_errors(f)
    g_in, g_out = _sitk_geometry(src), _sitk_geometry(out)
    assert g_in[:4] == g_out[:4]
    np.testing.assert_array_equal(g_in[4], g_out[4])
    t = summary["timings"]
    assert t["total_s"] >= t["denoise_s"] >= t["model_s"] > 0


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless])
def test_compressed_input_gives_explicit_vr_output(identity_model, tmp_path, syntax):
    src = tmp_path / "in"
    for f in write_series(src, n_slices=2, size=32):
        ds = pydicom.dcmread(f)
        ds.compress(syntax)
        ds.save_as(f)
    out = tmp_path / "out"
    summary = denoise_series(src, out, identity_model, device="cpu", progress=False)
    outs = _check_derived(src, out, summary)
    for f in sorted(src.glob("*.dcm")):
        s = pydicom.dcmread(f)
        np.testing.assert_array_equal(outs[s.SOPInstanceUID].pixel_array, s.pixel_array)
        assert "LossyImageCompression" not in outs[s.SOPInstanceUID]  # lossless in, lossless out


def test_worker_processes_write_the_same_series(identity_model, real_ct, tmp_path):
    threads = denoise_series(real_ct, tmp_path / "t", identity_model, device="cpu", progress=False, workers=0)
    procs = denoise_series(real_ct, tmp_path / "p", identity_model, device="cpu", progress=False, workers=2, batch_size=2)
    assert procs["workers"] == 2 and threads["workers"] == 0
    _check_derived(real_ct, tmp_path / "p", procs)
    for a, b in zip(sorted((tmp_path / "t").glob("*.dcm")), sorted((tmp_path / "p").glob("*.dcm"))):
        da, db = pydicom.dcmread(a), pydicom.dcmread(b)
        assert da.SourceImageSequence[0].ReferencedSOPInstanceUID == db.SourceImageSequence[0].ReferencedSOPInstanceUID
        np.testing.assert_array_equal(da.pixel_array, db.pixel_array)


def test_tiled_identity_and_metal_above_window_kept(identity_model, tmp_path):
    src = tmp_path / "in"
    files = write_series(src, n_slices=2, size=40)
    ds = pydicom.dcmread(files[0])
    arr = ds.pixel_array.copy()
    arr[5:8, 5:8] = 4500 + 1024  # 4500 HU metal: above the 3071 HU window of the model
    ds.PixelData = arr.tobytes()
    ds.save_as(files[0])
    out = tmp_path / "out"
    summary = denoise_series(src, out, identity_model, device="cpu", progress=False, tile=32)
    assert summary["mode"].startswith("32 px tiles")
    outs = _check_derived(src, out, summary)
    np.testing.assert_array_equal(outs[ds.SOPInstanceUID].pixel_array, arr)


def test_output_clipped_to_bits_stored_never_wrapped(bright_model, tmp_path):
    # 12-bit unsigned, intercept -2048: stored 0..4095 holds -2048..2047 HU; the model says 3071 HU
    info = SeriesInfo(patient_id="P", study_uid=make_uid("s"), series_uid=make_uid("se"), frame_of_reference_uid=make_uid("f"),
                      rescale_intercept=-2048.0)
    vol = np.full((2, 16, 16), 0.0)
    files = write_ct_series(tmp_path / "in", vol, info, z_positions=[0.0, 1.0])
    for f in files:
        ds = pydicom.dcmread(f)
        ds.BitsStored, ds.HighBit = 12, 11
        ds.save_as(f)
    summary = denoise_series(tmp_path / "in", tmp_path / "out", bright_model, device="cpu", progress=False)
    for ds in _check_derived(tmp_path / "in", tmp_path / "out", summary).values():
        assert ds.BitsStored == 12 and ds.HighBit == 11 and ds.PixelRepresentation == 0
        assert (ds.pixel_array == 4095).all()  # 3071 HU -> 5119 stored -> clipped to 4095 (wrapping gives 1023)


def test_hu_to_source_stored_rounds_clips_and_keeps():
    ds = pydicom.Dataset()
    ds.RescaleSlope, ds.RescaleIntercept, ds.BitsStored, ds.PixelRepresentation = "0.5", "-1000", 12, 1
    hu = np.array([[-5000.0, -1000.2, 0.0, 9000.0]])
    keep = np.array([[False, False, False, True]])
    out = hu_to_source_stored(hu, ds, keep, np.array([[0, 0, 0, -7]], np.int16))
    assert out.dtype == np.int16 and out.tolist() == [[-2048, 0, 2000, -7]]
    ds.PixelRepresentation = 0
    assert hu_to_source_stored(hu, ds).tolist() == [[0, 0, 2000, 4095]]


def test_derived_dataset_round_trips_through_bytes(tmp_path):
    import io

    f = write_series(tmp_path, n_slices=1, size=8, description="x" * 64)[0]
    src = pydicom.dcmread(f)
    series = DerivedSeries.for_source(src, what="denoised my-model", derivation_description="d\\e")
    assert len(series.series_description) == 64 and series.series_description.endswith("[denoised my-model]")
    assert series.derivation_description == "d?e"  # backslash is not allowed in ST values we add
    ds = derive_slice(src, src.pixel_array, series, instance_number=9)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    back = pydicom.dcmread(io.BytesIO(buf.getvalue()))
    assert back.InstanceNumber == 9 and back.SeriesInstanceUID == series.series_instance_uid
    np.testing.assert_array_equal(back.pixel_array, src.pixel_array)
    with pytest.raises(Exception, match="denoised slice is"):
        derive_slice(src, np.zeros((4, 4), np.uint16), series, instance_number=1)


def test_several_series_pick_with_series_uid(identity_model, tmp_path):
    a, b = make_uid("A"), make_uid("B")
    write_series(tmp_path / "in" / "a", n_slices=2, size=16, series_uid=a)
    write_series(tmp_path / "in" / "b", n_slices=3, size=16, series_uid=b, description="Low Dose Images")
    r = CliRunner().invoke(app, ["denoise", str(tmp_path / "in"), str(tmp_path / "out"), "--model", str(identity_model),
                                 "--series-uid", b, "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert len(list((tmp_path / "out").glob("*.dcm"))) == 3
    assert {pydicom.dcmread(f).ReferencedSeriesSequence[0].SeriesInstanceUID for f in (tmp_path / "out").glob("*.dcm")} == {b}


def test_cli_warns_about_ignored_files_and_overwrites(identity_model, tmp_path):
    src = tmp_path / "in"
    write_series(src, n_slices=2, size=16)
    (src / "README.txt").write_text("notes")
    out = tmp_path / "out"
    args = ["denoise", str(src), str(out), "--model", str(identity_model), "--device", "cpu"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "Warning:" in r.output and "README.txt" in r.output and "Wrote 2 slices" in r.output
    assert "'Full Dose Images [denoised ldct-monai-cyclegan]'" in " ".join(r.output.split())  # no markup eaten
    first = {pydicom.dcmread(f).SeriesInstanceUID for f in out.glob("*.dcm")}
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 1 and "--overwrite" in r.output
    r = CliRunner().invoke(app, [*args, "--overwrite"])
    assert r.exit_code == 0
    second = {pydicom.dcmread(f).SeriesInstanceUID for f in out.glob("*.dcm")}
    assert len(second) == 1 and second != first and len(list(out.iterdir())) == 2  # a new series each run


def _bad_inputs(tmp: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (extra CLI args / paths set-up, expected message part). Each builds its own input."""
    cases = {}
    d = tmp / "no_dicom"
    d.mkdir(parents=True)
    (d / "a.txt").write_text("hello")
    cases["no DICOM"] = (d, "no usable CT slices found in 1 file(s) (1 not_dicom)")
    d = tmp / "truncated"
    f = write_series(d, n_slices=2, size=16)[1]
    f.write_bytes(f.read_bytes()[:-64])
    cases["truncated file"] = (d, "truncated: Pixel Data needs 512 bytes")
    d = tmp / "two"
    write_series(d / "a", n_slices=2, size=16, series_uid=make_uid("two", 1))
    write_series(d / "b", n_slices=2, size=16, series_uid=make_uid("two", 2))
    cases["two series"] = (d, "2 CT series found, pick one with --series-uid")
    d = tmp / "dup"
    write_series(d, n_slices=3, size=16, spacing_z=0.0)
    cases["duplicate positions"] = (d, "duplicate slice position(s)")
    d = tmp / "sizes"
    f = write_series(d, n_slices=3, size=16)[2]
    ds = pydicom.dcmread(f)
    ds.Rows, ds.Columns = 8, 32  # same number of bytes, another size
    ds.save_as(f)
    cases["mixed sizes"] = (d, "mixed image sizes (Rows x Columns): 16x16 in 2 file(s) (e.g. 1-001.dcm), 8x32 in 1 file(s) (e.g. 1-003.dcm).")
    d = tmp / "mr"
    write_series(d, n_slices=2, size=16, extra={"Modality": "MR"})
    cases["non-CT modality"] = (d, "no usable CT slices found in 2 file(s) (2 not_ct)")
    return cases


def test_bad_input_table(identity_model, tmp_path):
    """Each bad input: exit 1, one clear line, nothing written (no OUT_DIR, no temporary folder)."""
    runner = CliRunner()
    rows = []
    for name, (src, expected) in _bad_inputs(tmp_path / "cases").items():
        outs = tmp_path / f"outs_{name.replace(' ', '_')}"
        outs.mkdir()
        r = runner.invoke(app, ["denoise", str(src), str(outs / "out"), "--model", str(identity_model), "--device", "cpu"])
        msg = " ".join(r.output.split())
        rows.append((name, r.exit_code, msg))
        assert r.exit_code == 1, (name, r.output)
        assert expected in msg, (name, msg)
        assert "Traceback" not in r.output and r.output.count("Error:") == 1
        assert list(outs.iterdir()) == [], name  # nothing written, no temporary folder left

    good = tmp_path / "good"
    write_series(good, n_slices=2, size=16)
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    r = runner.invoke(app, ["denoise", str(good), str(blocker / "out"), "--model", str(identity_model)])
    assert r.exit_code == 1 and "cannot create the output's parent directory" in r.output  # unwritable OUT_DIR
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    r = runner.invoke(app, ["denoise", str(good), str(existing), "--model", str(identity_model)])
    assert r.exit_code == 1 and "exists and is not empty (use --overwrite" in " ".join(r.output.split())
    assert [p.name for p in existing.iterdir()] == ["keep.txt"]
    r = runner.invoke(app, ["denoise", str(good), str(good / "out"), "--model", str(identity_model), "--overwrite"])
    assert r.exit_code == 1 and "OUT_DIR must be outside SERIES_DIR" in r.output
    r = runner.invoke(app, ["denoise", str(good), str(tmp_path / "o2"), "--model", str(tmp_path)])
    assert r.exit_code == 1 and "no model found" in r.output
    r = runner.invoke(app, ["denoise", str(good), str(tmp_path / "o3"), "--model", str(identity_model), "--tile", "30"])
    assert r.exit_code == 1 and "--tile must be a multiple of 4" in r.output
    r = runner.invoke(app, ["denoise", str(good), str(tmp_path / "o4"), "--model", str(identity_model), "--precision", "fp16"])
    assert r.exit_code == 1 and "--precision must be fp32 or bf16" in r.output
    assert not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists() and not (tmp_path / "o4").exists()


def test_interrupted_run_leaves_nothing(identity_model, tmp_path, monkeypatch):
    import ldct_monai.dicom.writer as writer

    src = tmp_path / "in"
    write_series(src, n_slices=6, size=16)
    calls = []
    real = writer.write_dataset

    def flaky(ds, path):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(ds, path)

    monkeypatch.setattr(writer, "write_dataset", flaky)
    with pytest.raises(KeyboardInterrupt):
        denoise_series(src, tmp_path / "out", identity_model, device="cpu", progress=False, batch_size=1)
    assert len(calls) >= 3 and sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def test_classical_method_writes_a_derived_series_without_a_model(tmp_path):
    """--method bm3d: no --model, a valid derived series whose DerivationDescription names BM3D and its parameters."""
    import shutil

    src = tmp_path / "in" / "patient" / "series"
    files = write_series(src, n_slices=2, size=64, body_part="ABDOMEN")
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["denoise", str(tmp_path / "in"), str(out), "--method", "bm3d"])
    assert r.exit_code == 0, r.output
    msg = " ".join(r.output.split())
    assert "Method bm3d (bm3d " in msg and "k 2" in msg and "s per slice" in msg and "Wrote 2 slices" in msg
    outs = sorted(out.glob("*.dcm"))
    assert len(outs) == 2
    sources = {pydicom.dcmread(f).SOPInstanceUID: pydicom.dcmread(f) for f in files}
    for f in outs:
        ds = pydicom.dcmread(f)
        src_ds = sources[ds.SourceImageSequence[0].ReferencedSOPInstanceUID]
        desc = ds.DerivationDescription
        assert "with method bm3d: BM3D (bm3d " in desc and "sigma_psd = 2 x sigma_hat" in desc and "soft-tissue windows" in desc
        assert "[denoised bm3d]" in ds.SeriesDescription and list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
        assert ds.ContributingEquipmentSequence[-1].ManufacturerModelName == "bm3d"
        assert ds.SeriesInstanceUID != src_ds.SeriesInstanceUID and ds.StudyInstanceUID == src_ds.StudyInstanceUID
        disc = src_ds.pixel_array.astype(float) > src_ds.pixel_array.mean()  # the water disc (10 HU noise)
        assert ds.pixel_array[disc].std() < 0.6 * src_ds.pixel_array[disc].std()  # the noise went down
        assert abs(float(ds.pixel_array[disc].mean()) - float(src_ds.pixel_array[disc].mean())) < 3  # HU kept
        if shutil.which("dciodvfy"):
            assert dciodvfy_errors(f) == []
    r = CliRunner().invoke(app, ["denoise", str(tmp_path / "in"), str(tmp_path / "g"), "--method", "gaussian", "--strength", "0.8"])
    assert r.exit_code == 0, r.output
    assert "sigma 0.8 px" in pydicom.dcmread(next((tmp_path / "g").glob("*.dcm"))).DerivationDescription


def test_method_options_are_checked_before_any_work(identity_model, tmp_path):
    src = tmp_path / "in"
    write_series(src, n_slices=2, size=32)
    runner = CliRunner()
    cases = [
        (["--model", str(tmp_path / "nowhere")], "no model found"),
        (["--method", "wiener"], "--method must be model, gaussian, nlm, bm3d"),
        (["--method", "bm3d", "--model", str(identity_model)], "--model is not used by --method bm3d"),
        (["--method", "nlm", "--tile", "32", "--strength", "-1"], "--tile applies to --method model only"),
        (["--model", str(identity_model), "--strength", "2"], "--strength applies to the classical methods"),
    ]
    for k, (extra, expected) in enumerate(cases):
        out = tmp_path / f"out{k}"
        r = runner.invoke(app, ["denoise", str(src), str(out), *extra])
        msg = " ".join(r.output.split())
        assert r.exit_code == 1 and expected in msg and "Traceback" not in r.output, (extra, msg)
        assert not out.exists()
    r = runner.invoke(app, ["denoise", str(src), str(tmp_path / "o"), "--method", "nlm", "--tile", "32", "--strength", "-1"])
    assert "finite number >= 0" in " ".join(r.output.split())  # every problem in one message
