"""Noise measured on a series (ldct_monai.synth.nps), kernels from headers, kernel-true noise insertion."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from scipy.ndimage import gaussian_filter
from typer.testing import CliRunner

from ldct_monai.cli import app
from ldct_monai.synth import nps
from ldct_monai.synth.from_series import simulate_low_dose_series
from ldct_monai.synth.kernels import classify_kernel, prior_nps


def _correlated_noise(sigma_px: float, std: float, shape=(256, 256), seed=0) -> np.ndarray:
    x = gaussian_filter(np.random.default_rng(seed).standard_normal(shape), sigma_px, mode="wrap")
    return x / x.std() * std


def test_nps_level_and_peak_follow_the_texture():
    """A flat 40 HU 'organ' with fine and coarse noise: std exact, NPS peak moves with the texture."""
    fine = 40.0 + _correlated_noise(0.6, 20.0)
    coarse = 40.0 + _correlated_noise(2.0, 20.0, seed=1)
    m_fine = nps.measure([fine], nps.select_rois([fine]))
    m_coarse = nps.measure([coarse], nps.select_rois([coarse]))
    assert m_fine.n_rois >= nps.MIN_ROIS
    assert m_fine.std_hu == pytest.approx(20.0, rel=0.12)
    assert m_coarse.std_hu == pytest.approx(20.0, rel=0.2)  # coarse noise loses a little to the detrend
    assert m_fine.half_power_frequency > 1.8 * m_coarse.half_power_frequency
    # radial NPS integrates to the variance (normalisation check)
    f, s = m_fine.freq, m_fine.nps
    assert np.sum(s * 2 * np.pi * f * (f[1] - f[0])) == pytest.approx(m_fine.std_hu**2, rel=0.15)


def test_rois_avoid_structure_and_air():
    img = np.full((256, 256), -1000.0)
    img[32:224, 32:224] = 40.0
    img[100:160, 100:160] = 300.0  # a bone-like insert
    img = img + _correlated_noise(0.8, 10.0)
    rois = nps.select_rois([img])[0]
    assert rois
    for r, c in rois:
        roi = img[r : r + nps.ROI_PX, c : c + nps.ROI_PX]
        assert -200 < roi.mean() < 200


@pytest.mark.parametrize(("manufacturer", "kernel", "cls", "iterative"), [
    ("SIEMENS", "B30f", "smooth", None),
    ("SIEMENS", "D45f", "standard", None),
    ("SIEMENS", "I30f", "smooth", "SAFIRE"),
    ("GE MEDICAL SYSTEMS", "STANDARD", "standard", None),
    ("GE MEDICAL SYSTEMS", "LUNG", "lung", None),
    ("Philips", "B", "standard", None),
    ("Philips", "D", "sharp", None),
    ("TOSHIBA", "FC03", "smooth", None),
    ("ACME", "WEIRD", "unknown", None),
])
def test_kernel_classes(manufacturer, kernel, cls, iterative):
    ds = Dataset()
    ds.Manufacturer, ds.ConvolutionKernel = manufacturer, kernel
    info = classify_kernel(ds)
    assert (info.kernel_class, info.iterative) == (cls, iterative)


def test_iterative_reconstruction_from_description():
    ds = Dataset()
    ds.Manufacturer, ds.ConvolutionKernel, ds.SeriesDescription = "Philips", "B", "PANCREAS DI, iDose (3)"
    assert classify_kernel(ds).iterative == "iDose"


def test_prior_nps_peaks_where_asked():
    f = np.linspace(0.0, 0.5, 501)
    for peak in (0.1, 0.2, 0.3):
        assert f[np.argmax(prior_nps(f, peak))] == pytest.approx(peak, abs=0.005)


def test_inserted_noise_has_the_series_texture_and_fbp_level(real_ct_lidc, tmp_path):
    """Real sharp-kernel chest slices: inserted NPS peak and half-power within 10 %, std on sigma_FD sqrt(1/f - 1)."""
    src = sorted(real_ct_lidc.glob("*.dcm"))
    before = [f.read_bytes() for f in src]
    res = simulate_low_dose_series(real_ct_lidc, tmp_path / "ld", dose_fraction=0.25, electronic_noise=0.0,
                                   n_views=256, progress=False)
    assert [f.read_bytes() for f in src] == before
    c = res["check"]
    assert res["texture"] == "measured" and res["kernel"] == "D" and res["kernel_class"] == "sharp"
    assert c["rois"] >= nps.MIN_ROIS
    assert c["target_std_hu"] == pytest.approx(c["fd_std_hu"] * np.sqrt(3.0))
    assert c["inserted_std_hu"] == pytest.approx(c["target_std_hu"], rel=0.10)
    assert c["inserted_peak"] == pytest.approx(c["fd_peak"], rel=0.10)
    assert c["inserted_half_power"] == pytest.approx(c["fd_half_power"], rel=0.10)
    # the written files carry it: LD - FD at the check's level, no bias
    a, b = pydicom.dcmread(src[0]), pydicom.dcmread(tmp_path / "ld" / src[0].name)
    diff = b.pixel_array.astype(float) - a.pixel_array.astype(float)
    soft = (a.pixel_array * float(a.RescaleSlope) + float(a.RescaleIntercept) > 0) & (
        a.pixel_array * float(a.RescaleSlope) + float(a.RescaleIntercept) < 100)
    assert abs(diff[soft].mean()) < 5
    assert "noise texture measured" in b.DerivationDescription


def test_smooth_kernel_texture_is_coarser_than_the_series(real_ct_lidc, tmp_path):
    """--kernel smooth ignores the series' sharp texture: its inserted noise peaks clearly lower."""
    res = simulate_low_dose_series(real_ct_lidc, tmp_path / "ld", dose_fraction=0.25, kernel="smooth",
                                   electronic_noise=0.0, n_views=256, progress=False)
    c = res["check"]
    assert res["texture"] == "smooth"
    assert c["inserted_half_power"] < 0.8 * c["fd_half_power"]


def test_from_tree_makes_a_tree_build_manifest_reads(real_ct, real_ct_lidc, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    real_ct.rename(src / "ge")
    real_ct_lidc.rename(src / "lidc")
    (src / "junk").mkdir()
    (src / "junk" / "x.dcm").write_bytes(b"not dicom")
    runner = CliRunner()
    out = tmp_path / "tree"
    res = runner.invoke(app, ["synth", str(out), "--from-tree", str(src), "--body-part", "ge=L,lidc=C",
                              "--views", "64", "-q"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == ["C001", "L001"]
    fd = sorted(out.glob("C001/*/*Full Dose Images*/*.dcm"))
    ld = sorted(out.glob("C001/*/*Low Dose Images*/*.dcm"))
    assert len(fd) == len(ld) == 4
    a, b = pydicom.dcmread(fd[0]), pydicom.dcmread(ld[0])
    assert a.PatientID == b.PatientID == "C001" and a.BodyPartExamined == "CHEST"
    assert "0.1 dose fraction" in b.DerivationDescription  # chest: 10 % as in the Mayo data
    assert a.ImagePositionPatient[2] < pydicom.dcmread(fd[1]).ImagePositionPatient[2]  # renamed in z order
    man = tmp_path / "man"
    res = runner.invoke(app, ["build-manifest", str(out), "--out", str(man), "--seed", "0"])
    assert res.exit_code == 0, res.output
    assert (man / "splits.json").exists()
    res = runner.invoke(app, ["synth", str(tmp_path / "t2"), "--from-tree", str(src), "--from-series", str(src)])
    assert res.exit_code == 1 and "exclude" in res.output


def test_sharpen_emulates_a_sharper_kernel_for_both_doses(real_ct_lidc, tmp_path):
    """--sharpen: the full dose becomes a derived, sharper image (higher NPS peak, more noise, same mean HU),
    and the simulated low dose is calibrated on it; the source files are untouched."""
    src = tmp_path / "src"
    src.mkdir()
    real_ct_lidc.rename(src / "lidc")
    before = {f: f.read_bytes() for f in sorted((src / "lidc").glob("*.dcm"))}
    runner = CliRunner()
    plain, sharp = tmp_path / "plain", tmp_path / "sharp"
    for out, extra in ((plain, []), (sharp, ["--sharpen", "1.5"])):
        res = runner.invoke(app, ["synth", str(out), "--from-tree", str(src), "--body-part", "C", "--views", "128",
                                  "-q", *extra])
        assert res.exit_code == 0, res.output
    assert {f: f.read_bytes() for f in before} == before
    fd_plain = sorted(plain.glob("C001/*/*Full Dose Images*/*.dcm"))
    fd_sharp = sorted(sharp.glob("C001/*/*Full Dose Images*/*.dcm"))
    a, b = pydicom.dcmread(fd_plain[0]), pydicom.dcmread(fd_sharp[0])
    assert a.SOPInstanceUID in {pydicom.dcmread(f).SOPInstanceUID for f in before}  # a plain copy keeps its identity
    assert b.SOPInstanceUID != a.SOPInstanceUID and b.SeriesInstanceUID != a.SeriesInstanceUID
    assert b.ImageType[0] == "DERIVED" and "gain 1.5" in b.DerivationDescription
    assert b.SourceImageSequence[0].ReferencedSOPInstanceUID == a.SOPInstanceUID
    hu = lambda ds: ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)  # noqa: E731
    smooth = gaussian_filter(hu(a), 4)
    soft = (smooth > 0) & (smooth < 100)  # soft tissue away from edges
    assert abs(float((hu(b) - hu(a))[soft].mean())) < 3  # zero-frequency gain 1: no HU shift
    ca = [nps.measure([hu(pydicom.dcmread(f)) for f in fds], nps.select_rois([hu(pydicom.dcmread(f)) for f in fd_plain]))
          for fds in (fd_plain, fd_sharp)]
    assert ca[1].std_hu > 1.5 * ca[0].std_hu
    assert ca[1].peak_frequency > ca[0].peak_frequency + 0.05
    res = runner.invoke(app, ["synth", str(tmp_path / "x"), "--patients", "1", "--sharpen", "1"])
    assert res.exit_code == 1 and "--from-tree" in res.output
