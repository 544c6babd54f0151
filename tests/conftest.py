"""Shared test set-up: strict pydicom writing, small DICOM helpers, the validator."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from ldct_monai.dicom.create import SeriesInfo, make_uid, write_ct_series

# Invalid values fail the tests (the current form of highdicom's enforce_valid_values).
pydicom.config.settings.writing_validation_mode = pydicom.config.RAISE

DATA = Path(__file__).parent / "data"
REAL_CT = DATA / "real_ct"  # 3 real GE slices, BSD-3-Clause (LICENSE.txt beside them)
REAL_CT_LIDC = DATA / "real_ct_lidc"  # 4 real Philips chest slices, kernel D, CC BY 3.0 (LICENSE.txt beside them)


def dciodvfy_errors(path: Path) -> list[str]:
    """Error lines dciodvfy prints for one file (the validator writes to stderr)."""
    proc = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    return [ln.strip() for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith("Error")]


requires_dciodvfy = pytest.mark.skipif(
    shutil.which("dciodvfy") is None, reason="dciodvfy not installed (apt-get install dicom3tools)"
)


def write_series(
    out_dir: Path,
    n_slices: int = 4,
    size: int = 32,
    *,
    patient_id: str = "L001",
    description: str = "Full Dose Images",
    spacing_z: float = 1.0,
    seed: int = 0,
    study_uid: str | None = None,
    series_uid: str | None = None,
    **info_kwargs,
) -> list[Path]:
    """Write a tiny valid CT series (a water disc in air, with noise) and return its files."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (0.4 * size) ** 2
    vol = np.where(disc, 40.0, -1000.0)[None] + rng.normal(0, 10, (n_slices, size, size))
    info = SeriesInfo(
        patient_id=patient_id,
        study_uid=study_uid or make_uid(patient_id, "study"),
        series_uid=series_uid or make_uid(patient_id, description, seed),
        frame_of_reference_uid=make_uid(patient_id, "for"),
        series_description=description,
        **info_kwargs,
    )
    return write_ct_series(out_dir, vol, info, z_positions=[i * spacing_z for i in range(n_slices)])


IDENTITY_ARCH = dict(ngf=4, n_blocks=1)  # the tiny generator of the identity model


@pytest.fixture(scope="module")
def identity_model(tmp_path_factory) -> Path:
    """A run folder whose exported generator is exactly the identity (zeroed residual head)."""
    from ldct_monai.config import HUWindow
    from ldct_monai.modelio import export_model
    from ldct_monai.networks import ResNetGenerator

    run = tmp_path_factory.mktemp("run")
    export_model(run / "model", ResNetGenerator(**IDENTITY_ARCH).zero_head_(), IDENTITY_ARCH, hu_window=HUWindow(),
                 step=7)
    return run


def _copy_slices(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in sorted(src.glob("*.dcm")):
        shutil.copy(f, dst / f.name)
    return dst


@pytest.fixture
def real_ct_lidc(tmp_path: Path) -> Path:
    """A writable copy of the 4 real LIDC chest slices (Philips, kernel D)."""
    return _copy_slices(REAL_CT_LIDC, tmp_path / "real_ct_lidc")


@pytest.fixture
def real_ct(tmp_path: Path) -> Path:
    """A writable copy of the 3 real GE CT slices."""
    return _copy_slices(REAL_CT, tmp_path / "real_ct")
