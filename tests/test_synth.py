"""The physics-based simulator: tree layout and DICOM validity, geometry, noise physics, determinism, CLI."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from typer.testing import CliRunner

from conftest import dciodvfy_errors, requires_dciodvfy
from ldct_monai.cli import app
from ldct_monai.dicom.core import CT_IMAGE_STORAGE, slice_position, to_hu
from ldct_monai.schema import BodyPart
from ldct_monai.synth import SynthConfig, simulate_low_dose_series, synth_tree
from ldct_monai.synth.noise import PROTOCOLS, DoseProtocol
from ldct_monai.synth.phantom import make_phantom
from ldct_monai.synth.simulate import scan

STUDY_RE = re.compile(r"^\d\d-\d\d-\d{4}-NA-NA-\d{5}$")
SERIES_RE = re.compile(r"^1\.000000-(Full|Low) Dose Images-\d{5}$")
BODY_PART_TAG = {"C": "CHEST", "L": "ABDOMEN", "N": "HEAD"}
KERNEL_BY_PART = {"C": "D45f", "L": "B40f", "N": "H40s"}  # ConvolutionKernel written with the default kernel


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> tuple[Path, dict]:
    """The tiny tree other areas use: 1 patient per body part, 4 slices of 64 px."""
    out = tmp_path_factory.mktemp("synth") / "tree"
    summary = synth_tree(out, SynthConfig(patients=1, slices=4, size=64, seed=3), progress=False)
    return out, summary


def _series(root: Path, pid: str, dose: str) -> list[pydicom.Dataset]:
    (folder,) = list(root.glob(f"{pid}/*/*-{dose} Dose Images-*"))
    return [pydicom.dcmread(f) for f in sorted(folder.glob("*.dcm"))]


def _hu(series: list[pydicom.Dataset]) -> np.ndarray:
    return np.stack([to_hu(ds) for ds in sorted(series, key=slice_position)])


def test_tree_layout_and_headers(tree):
    root, summary = tree
    assert sorted(p.name for p in root.iterdir()) == ["C001", "L001", "N001"]
    assert summary["files"] == 24 and summary["series"] == 6 and summary["no_low_dose"] == []
    for pid in ("C001", "L001", "N001"):
        (study,) = list((root / pid).iterdir())
        assert STUDY_RE.match(study.name), study.name
        series_dirs = sorted(study.iterdir())
        assert len(series_dirs) == 2 and all(SERIES_RE.match(s.name) for s in series_dirs)
        fd, ld = _series(root, pid, "Full"), _series(root, pid, "Low")
        assert sorted(Path(ds.filename).name for ds in fd) == [f"1-00{i}.dcm" for i in range(1, 5)]
        for ds, desc in [(d, "Full Dose Images") for d in fd] + [(d, "Low Dose Images") for d in ld]:
            assert ds.SOPClassUID == CT_IMAGE_STORAGE and ds.Modality == "CT"
            assert ds.SeriesDescription == desc  # exact, as build-manifest matches it
            assert ds.BodyPartExamined == BODY_PART_TAG[pid[0]] and ds.PatientID == pid
            assert float(ds.RescaleIntercept) == -1024 and float(ds.RescaleSlope) == 1
            # each body part's protocol kernel: chest sharp, abdomen and head standard
            assert ds.ConvolutionKernel == KERNEL_BY_PART[pid[0]]
            assert float(ds.KVP) == 120 and float(ds.SliceThickness) == 1.0
            assert (ds.Rows, ds.Columns) == (64, 64)
        assert len({ds.StudyInstanceUID for ds in fd + ld}) == 1  # one study, two series
        assert len({ds.FrameOfReferenceUID for ds in fd + ld}) == 1
        assert fd[0].SeriesInstanceUID != ld[0].SeriesInstanceUID
        assert len({ds.SOPInstanceUID for ds in fd + ld}) == 8
        # the low-dose header says what was simulated
        frac = PROTOCOLS[BodyPart(pid[0])].dose_fraction
        assert float(ld[0].CTDIvol) == pytest.approx(float(fd[0].CTDIvol) * frac, rel=1e-3)
        assert ld[0].ImageType[0] == "DERIVED" and fd[0].ImageType[0] == "ORIGINAL"


@requires_dciodvfy
def test_tree_files_pass_dciodvfy(tree):
    root, _ = tree
    files = sorted(root.glob("C001/*/*/1-001.dcm")) + sorted(root.glob("N001/*/*Low*/1-004.dcm"))
    assert len(files) == 3
    for f in files:
        assert dciodvfy_errors(f) == [], f


def test_geometry_consistent_and_sorted(tree):
    root, _ = tree
    for pid in ("C001", "L001", "N001"):
        fd, ld = _series(root, pid, "Full"), _series(root, pid, "Low")
        for series in (fd, ld):
            z = [slice_position(ds) for ds in sorted(series, key=lambda d: int(d.InstanceNumber))]
            # instance 1 is the most cranial (head-first numbering); positions 1 mm apart
            np.testing.assert_allclose(np.diff(z), -1.0, atol=1e-3)
            assert {tuple(map(float, ds.ImagePositionPatient[:2])) for ds in series} == {
                tuple(map(float, series[0].ImagePositionPatient[:2]))
            }
            assert {tuple(map(float, ds.ImageOrientationPatient)) for ds in series} == {(1, 0, 0, 0, 1, 0)}
            # the image is centred on the scanner axis
            x0 = float(series[0].ImagePositionPatient[0])
            assert x0 == pytest.approx(-(64 - 1) / 2 * float(series[0].PixelSpacing[1]), abs=1e-3)
        assert sorted(slice_position(d) for d in fd) == sorted(slice_position(d) for d in ld)


def test_summary_matches_files_and_realistic_ranges(tree):
    root, summary = tree
    noise = summary["noise"]
    for bp in "CLN":
        fd, ld = _hu(_series(root, f"{bp}001", "Full")), _hu(_series(root, f"{bp}001", "Low"))
        rmse = math.sqrt(np.mean((np.clip(ld, -1024, 3071) - np.clip(fd, -1024, 3071)) ** 2))
        assert 20 * math.log10(4095 / rmse) == pytest.approx(noise[bp]["psnr_db"], abs=0.3)
        assert 20 < noise[bp]["psnr_db"] < 56  # Mayo pairs: ~23 dB (chest) .. 48 dB (3 mm abdomen)
        assert noise[bp]["ld_std_hu"] > noise[bp]["fd_std_hu"] > 3
    # chest 10 % far noisier than abdomen 25 %; the head quieter (the 64 px soft-tissue mask keeps only
    # the noisy body centre, hence the wide range here; the calibration test below uses 128 px)
    assert 40 < noise["L"]["diff_std_hu"] < 140
    assert noise["C"]["diff_std_hu"] > 1.5 * noise["L"]["diff_std_hu"]
    assert noise["N"]["diff_std_hu"] < noise["L"]["diff_std_hu"]
    assert noise["C"]["psnr_db"] < noise["L"]["psnr_db"]


def test_abdomen_calibration_matches_mayo(tmp_path):
    """Mayo/TCIA: std(LD - FD) in soft tissue ~65 HU for abdomen, 25 %, 1 mm, smooth kernel."""
    cfg = SynthConfig(patients=2, slices=2, size=128, seed=0, body_parts=("L",))
    noise = synth_tree(tmp_path / "t", cfg, progress=False)["noise"]["L"]
    assert 50 < noise["diff_std_hu"] < 85
    assert noise["ld_std_hu"] / noise["fd_std_hu"] == pytest.approx(2.0, rel=0.25)  # ~1/sqrt(0.25)
    assert 35 < noise["psnr_db"] < 45


def _water_scan(fraction, kernel="smooth", thickness=1.0, electronic=0.0, n=96, seed=0):
    """FD, LD and noise-free reconstructions of a 200 mm water cylinder (4 slices)."""
    fov = 260.0
    c = (torch.arange(n) - (n - 1) / 2) * fov / n
    disc = (c[None, :] ** 2 + c[:, None] ** 2) <= 100.0**2
    hu = torch.where(disc, 0.0, -1000.0)[None].repeat(4, 1, 1)
    protocol = DoseProtocol(i0=2e4, dose_fraction=fraction, electronic_noise=electronic)
    res = scan(hu, fov / n, thickness, protocol, fraction=fraction, kernel=kernel,
               generator=torch.Generator().manual_seed(seed), noise_slices=4)
    centre = slice(n // 2 - 12, n // 2 + 12)
    region = (slice(None), centre, centre)
    fd_noise = res.fd_noise[region]
    ld_noise = fd_noise + (res.ld - res.fd)[region]
    return res, fd_noise.std().item(), ld_noise.std().item(), (res.ld - res.fd)[region].std().item()


def test_low_dose_noise_follows_dose_fraction():
    for fraction in (0.25, 0.1):
        res, fd, ld, diff = _water_scan(fraction)
        assert ld / fd == pytest.approx(1 / math.sqrt(fraction), rel=0.12)
        assert diff / fd == pytest.approx(math.sqrt(1 / fraction - 1), rel=0.12)
        # the water stays water: noise, not bias
        assert res.fd[:, 40:56, 40:56].mean().item() == pytest.approx(0.0, abs=3.0)
    # electronic noise adds variance at low counts: more low-dose noise than the quantum-only factor
    _, fd_e, ld_e, _ = _water_scan(0.1, electronic=40.0)
    assert ld_e / fd_e > 1.05 / math.sqrt(0.1)


def test_noise_scales_with_thickness_and_kernel():
    _, fd1, _, _ = _water_scan(0.25)
    _, fd4, _, _ = _water_scan(0.25, thickness=4.0)
    assert fd4 / fd1 == pytest.approx(0.5, rel=0.12)  # noise ~ 1/sqrt(thickness)
    _, sharp, _, _ = _water_scan(0.25, kernel="sharp")
    assert sharp / fd1 == pytest.approx(105 / 65, rel=0.15)  # Mayo: D45 vs B30 inserted noise


def test_noise_is_correlated_not_white():
    res, _, _, _ = _water_scan(0.25)
    d = (res.ld - res.fd)[:, 30:66, 30:66]
    lag1 = torch.corrcoef(torch.stack((d[:, :, :-1].reshape(-1), d[:, :, 1:].reshape(-1))))[0, 1].item()
    assert lag1 > 0.3  # FBP noise has a correlated texture; white pixel noise would give ~0


def test_phantom_is_continuous_in_z_with_low_contrast_lesions():
    ph = make_phantom("L", np.random.default_rng(5), z_extent=40)
    vol = ph.sample(64, [0.0, 1.0, 30.0])
    near = (vol[0] - vol[1]).abs().mean().item()
    far = (vol[0] - vol[2]).abs().mean().item()
    assert near < 0.5 * far
    assert ph.lesions and all(5 <= abs(les[4]) <= 20 for les in ph.lesions)
    x, y, z, r, contrast = ph.lesions[0]
    img = ph.sample(256, [z])[0]
    px = ph.fov / 256
    i, j = int(round(y / px + 127.5)), int(round(x / px + 127.5))
    lesion = img[i - 1 : i + 2, j - 1 : j + 2].mean().item()
    ring = img[max(0, i - int(2 * r / px)) : i + int(2 * r / px) + 1, j - 1 : j + 2]
    assert lesion != pytest.approx(ring[0].mean().item(), abs=2.0)  # the lesion differs from its organ
    # another patient is a different size
    other = make_phantom("L", np.random.default_rng(6), z_extent=40)
    assert other.fov != ph.fov


def test_same_seed_identical_files_other_seed_differs(tmp_path):
    cfg = SynthConfig(patients=1, slices=2, size=32, seed=11, body_parts=("L",))
    synth_tree(tmp_path / "a", cfg, progress=False)
    synth_tree(tmp_path / "b", cfg, progress=False)
    synth_tree(tmp_path / "c", SynthConfig(patients=1, slices=2, size=32, seed=12, body_parts=("L",)), progress=False)
    fa = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.dcm"))
    fb = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.dcm"))
    assert fa == fb and len(fa) == 4
    for rel in fa:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    a = _hu(_series(tmp_path / "a", "L001", "Low"))
    c = _hu(_series(tmp_path / "c", "L001", "Low"))
    assert a.shape == c.shape and not np.array_equal(a, c)


def test_share_without_low_dose(tmp_path):
    cfg = SynthConfig(patients=2, slices=1, size=32, seed=0, body_parts=("L",), no_ld_share=0.5)
    summary = synth_tree(tmp_path / "t", cfg, progress=False)
    lows = sorted(p.parents[2].name for p in (tmp_path / "t").glob("*/*/*Low Dose Images*/1-001.dcm"))
    fulls = sorted(p.parents[2].name for p in (tmp_path / "t").glob("*/*/*Full Dose Images*/1-001.dcm"))
    assert fulls == ["L001", "L002"] and len(lows) == 1
    assert summary["no_low_dose"] == sorted({"L001", "L002"} - set(lows)) and summary["files"] == 3


def test_from_series_keeps_geometry_and_adds_expected_noise(real_ct, tmp_path):
    src = sorted(real_ct.glob("*.dcm"))
    before = [f.read_bytes() for f in src]
    out = tmp_path / "ld"
    summary = simulate_low_dose_series(real_ct, out, seed=1, n_views=128, progress=False)
    assert [f.read_bytes() for f in src] == before  # input untouched
    assert summary["files"] == 3 and summary["body_part"] == "L" and summary["dose_fraction"] == 0.25
    for f in src:
        a, b = pydicom.dcmread(f), pydicom.dcmread(out / f.name)
        for key in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness", "Rows",
                    "Columns", "StudyInstanceUID", "FrameOfReferenceUID", "PatientID", "RescaleIntercept",
                    "PixelRepresentation", "PixelPaddingValue"):
            assert b[key].value == a[key].value, key
        assert b.SeriesDescription == "Low Dose Images" and b.ImageType[0] == "DERIVED"
        assert b.SeriesInstanceUID != a.SeriesInstanceUID and b.SOPInstanceUID != a.SOPInstanceUID
        assert b.SourceImageSequence[0].ReferencedSOPInstanceUID == a.SOPInstanceUID
        assert b.file_meta.TransferSyntaxUID == a.file_meta.TransferSyntaxUID  # Implicit VR kept
        sa, sb = a.pixel_array, b.pixel_array
        pad = sa == -2000
        assert pad.any() and np.array_equal(sb[pad], sa[pad])  # outside the field of view untouched
        assert not (sb[~pad] == -2000).any()
        diff = to_hu(b)[~pad] - to_hu(a)[~pad]
        soft = (to_hu(a)[~pad] > 0) & (to_hu(a)[~pad] < 100)
        assert abs(diff[soft].mean()) < 5  # noise, not bias
        # abdomen 25 %, 1.25 mm, smooth: the Mayo 65 HU at 1 mm scaled by 1/sqrt(1.25), patient-dependent
        assert 35 < diff[soft].std() < 110
    assert 35 < summary["noise_std_hu"] < 110


@requires_dciodvfy
def test_from_series_adds_no_dicom_errors(real_ct, tmp_path):
    out = tmp_path / "ld"
    simulate_low_dose_series(real_ct, out, n_views=64, progress=False)
    src = sorted(real_ct.glob("*.dcm"))[0]
    assert set(dciodvfy_errors(out / src.name)) <= set(dciodvfy_errors(src))


def test_cli_exit_codes(tmp_path, real_ct):
    runner = CliRunner()
    out = tmp_path / "t"
    args = ["synth", str(out), "--patients", "1", "--slices", "2", "--size", "32", "--body-parts", "L", "-q"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert len(list(out.rglob("*.dcm"))) == 4
    res = runner.invoke(app, args)
    assert res.exit_code == 1 and "not empty" in res.output and "Traceback" not in res.output
    assert runner.invoke(app, [*args, "--overwrite", "--dose-fraction", "C=0.3,L=0.5"]).exit_code == 0
    ld = pydicom.dcmread(next(out.glob("L001/*/*Low*/1-001.dcm")))
    assert "0.5 dose fraction" in ld.DerivationDescription
    bad_args = (["--kernel", "fuzzy"], ["--size", "8"], ["--dose-fraction", "1.5"], ["--dose-fraction", "L=half"],
                ["--dose-fraction", "X=0.2"], ["--body-parts", "X"])
    for bad in bad_args:
        res = runner.invoke(app, ["synth", str(tmp_path / "bad"), *bad, "-q"])
        assert res.exit_code == 1 and "Traceback" not in res.output, (bad, res.output)
        assert not (tmp_path / "bad").exists()
    res = runner.invoke(app, ["synth", str(tmp_path / "x"), "--from-series", str(tmp_path / "missing")])
    assert res.exit_code == 1 and "missing" in res.output
    # never write over (or around) the source series, even with --overwrite
    res = runner.invoke(app, ["synth", str(real_ct.parent), "--from-series", str(real_ct), "--overwrite"])
    assert res.exit_code == 1 and "source series" in res.output and len(list(real_ct.glob("*.dcm"))) == 3
    res = runner.invoke(app, ["synth", str(tmp_path / "x"), "--from-series", str(real_ct), "--body-part", "Q"])
    assert res.exit_code == 1 and "body part" in res.output
    assert not list(tmp_path.glob(".x*"))  # no temporary folder left behind
