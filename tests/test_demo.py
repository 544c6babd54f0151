"""`ldct-monai demo` end to end in its reduced mode: every stage runs and the table comes from the run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from typer.testing import CliRunner

from ldct_monai.cli import app
from ldct_monai.demo import DemoConfig, run_demo
from ldct_monai.dicom.core import to_hu
from ldct_monai.manifest import load_split
from ldct_monai.metrics import slice_metrics


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "out"
    r = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "Measured wall time" in r.output and "low-dose" in r.output
    return out


def test_demo_writes_every_stage(quick_demo):
    result = json.loads((quick_demo / "demo.json").read_text())
    assert set(result["timings_s"]) == {"synth", "build_manifest", "train", "evaluate", "denoise", "total"}
    assert (quick_demo / "manifests" / "test_pairs.csv").is_file()
    assert (quick_demo / "run" / "model" / "configs" / "metadata.json").is_file()
    for name in ("metrics.csv", "summary.csv", "summary.md", "summary.json"):
        assert (quick_demo / "report" / name).stat().st_size > 0
    assert result["paths"]["figures"], "no figures written"
    # The denoised series has one derived file per source slice, same study, new series.
    src = sorted(Path(result["paths"]["denoised_source"]).glob("*.dcm"))
    out = sorted(Path(result["paths"]["denoised_series"]).rglob("*.dcm"))
    assert len(out) == len(src) > 0
    a, b = pydicom.dcmread(src[0]), pydicom.dcmread(out[0])
    assert a.StudyInstanceUID == b.StudyInstanceUID and a.SeriesInstanceUID != b.SeriesInstanceUID
    assert "DERIVED" in b.ImageType


def test_demo_numbers_come_from_the_data(quick_demo, tmp_path):
    result = json.loads((quick_demo / "demo.json").read_text())
    reported = result["evaluation"]["results"]["all"]["low_dose"]["psnr_full"]["mean"]
    # Recompute the low-dose row from the DICOM pairs the manifest lists.
    pairs = load_split(quick_demo / "manifests", "test_pairs")
    values = []
    for row in pairs.itertuples():
        ld, fd = to_hu(pydicom.dcmread(row.ld_path)), to_hu(pydicom.dcmread(row.fd_path))
        values.append(slice_metrics(ld, fd, row.body_part)[0]["psnr_full"])
    assert reported == pytest.approx(float(np.mean(values)), abs=1e-3)
    # Other data (another seed) gives other numbers.
    other = run_demo(tmp_path / "other", DemoConfig.make_quick(seed=7), progress=False)
    assert other["evaluation"]["results"]["all"]["low_dose"]["psnr_full"]["mean"] != pytest.approx(reported, abs=1e-3)


def test_demo_refuses_existing_output(quick_demo):
    r = CliRunner().invoke(app, ["demo", "--quick", "--out", str(quick_demo)])
    assert r.exit_code == 1 and "--overwrite" in r.output
