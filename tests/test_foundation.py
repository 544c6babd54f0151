"""Shared conventions: HU window, atomic output, DICOM core, generator, model export/load, CLI errors."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pydicom
import pytest
import torch
from typer.testing import CliRunner

from conftest import REAL_CT, dciodvfy_errors, requires_dciodvfy, write_series
from ldct_monai.cli import app
from ldct_monai.config import HUWindow
from ldct_monai.dicom.core import slice_normal, slice_position, to_hu
from ldct_monai.dicom.create import hu_to_stored, make_uid
from ldct_monai.dicom.reader import read_hu
from ldct_monai.errors import InputError, OutputExistsError
from ldct_monai.inference import Denoiser
from ldct_monai.io_utils import atomic_output_dir
from ldct_monai.modelio import export_model, load_model
from ldct_monai.networks import ResNetGenerator, make_discriminator


def test_hu_window_maps_and_clips():
    w = HUWindow()
    x = w.to_unit(np.array([-2000.0, -1024.0, 1023.5, 3071.0, 5000.0]))
    np.testing.assert_allclose(x, [-1.0, -1.0, 0.0, 1.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(w.to_hu(w.to_unit(np.array([-500.0, 40.0]))), [-500.0, 40.0], atol=1e-3)
    with pytest.raises(ValueError):
        HUWindow(10, 10)


def test_atomic_output_dir_leaves_nothing_on_error(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic_output_dir(out) as tmp:
        (tmp / "half.txt").write_text("x")
        raise RuntimeError("boom")
    assert not out.exists() and list(tmp_path.iterdir()) == []
    with atomic_output_dir(out) as tmp:
        (tmp / "a.txt").write_text("1")
    assert (out / "a.txt").read_text() == "1"
    with pytest.raises(OutputExistsError), atomic_output_dir(out):
        pass
    with atomic_output_dir(out, overwrite=True) as tmp:
        (tmp / "b.txt").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_stored_values_clip_never_wrap():
    s = hu_to_stored(np.array([-5000.0, 0.0, 70000.0]), 1.0, -1024.0, signed=False)
    assert s.tolist() == [0, 1024, 65535]
    s = hu_to_stored(np.array([-40000.0, 40000.0]), 1.0, 0.0, signed=True)
    assert s.tolist() == [-32768, 32767]


def test_uids_valid_and_deterministic():
    a, b = make_uid("x", 1), make_uid("x", 1)
    assert a == b != make_uid("x", 2)
    assert len(a) <= 64 and a.startswith("2.25.")
    assert make_uid() != make_uid()


def test_written_series_reads_back(tmp_path):
    files = write_series(tmp_path / "s", n_slices=3, size=16, spacing_z=2.5)
    ds = pydicom.dcmread(files[2])
    assert slice_position(ds) == pytest.approx(5.0)
    np.testing.assert_allclose(slice_normal(ds), [0, 0, 1])
    hu = read_hu(files[0])
    assert hu.dtype == np.float32 and hu.shape == (16, 16)
    assert hu[8, 8] == pytest.approx(40, abs=50) and hu[0, 0] == pytest.approx(-1000, abs=50)


@requires_dciodvfy
def test_written_series_passes_dciodvfy(tmp_path):
    files = write_series(tmp_path / "s", n_slices=1, size=16, body_part="ABDOMEN", kernel="B30f", ctdi_vol=12.0)
    assert dciodvfy_errors(files[0]) == []


def test_real_fixture_hu_and_geometry():
    files = sorted(REAL_CT.glob("*.dcm"))
    ds = pydicom.dcmread(files[0])
    hu = to_hu(ds)
    assert ds.RescaleIntercept == -1024 and hu.min() <= -2000  # padding region below air
    z = [slice_position(pydicom.dcmread(f, stop_before_pixels=True)) for f in files]
    assert len(set(z)) == 3
    with pytest.raises(InputError):
        read_hu(REAL_CT / "LICENSE.txt")


@pytest.mark.parametrize("upsample", ["resize", "transpose"])
@pytest.mark.parametrize("n_blocks", [0, 2])
def test_generator_shapes(upsample, n_blocks):
    g = ResNetGenerator(ngf=8, n_blocks=n_blocks, upsample=upsample).eval()
    y = g(torch.zeros(2, 1, 36, 44))
    assert y.shape == (2, 1, 36, 44) and y.abs().max() <= 1
    with pytest.raises(ValueError):
        g(torch.zeros(1, 1, 30, 32))


def test_residual_generator_with_zero_head_is_identity():
    g = ResNetGenerator(ngf=4, n_blocks=1).zero_head_().eval()
    x = torch.rand(1, 1, 32, 32) * 2 - 1
    assert torch.equal(g(x), x)


def test_patch_discriminator_70px_logits():
    d = make_discriminator(ndf=8).eval()
    out = d(torch.zeros(1, 1, 128, 128))
    assert isinstance(out, list) and out[-1].shape == (1, 1, 14, 14)


def test_model_export_load_and_identity_denoiser(tmp_path):
    arch = dict(ngf=4, n_blocks=1, upsample="resize", residual=True)
    export_model(tmp_path / "model", ResNetGenerator(**arch).zero_head_(), arch, hu_window=HUWindow(), step=3)
    m = load_model(tmp_path)  # a RUN_DIR with model/ inside works too
    assert m.card["step"] == 3 and len(m.card_hash) == 16
    hu = np.random.default_rng(0).uniform(-1000, 2000, (3, 30, 34)).astype(np.float32)
    out = Denoiser(m, device="cpu", batch_size=2)(hu)
    np.testing.assert_allclose(out, hu, atol=1e-3 * 4095)


def test_load_model_refuses_malicious_pickle(tmp_path):
    arch = dict(ngf=4, n_blocks=1)
    mdir = export_model(tmp_path / "model", ResNetGenerator(**arch), arch, hu_window=HUWindow())

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    (mdir / "models" / "model.pt").write_bytes(pickle.dumps(Evil()))
    meta = json.loads((mdir / "configs" / "metadata.json").read_text())
    meta["ldct_monai"]["weights"].pop("sha256")  # an attacker would also edit the card
    (mdir / "configs" / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="cannot load weights safely"):
        load_model(mdir)
    assert not (tmp_path / "pwned").exists()


def test_load_model_missing_is_clear(tmp_path):
    with pytest.raises(InputError, match="no model found"):
        load_model(tmp_path)


def test_cli_help_and_version():
    r = CliRunner().invoke(app, ["--version"])
    assert r.exit_code == 0 and "ldct-monai" in r.output
    r = CliRunner().invoke(app, ["--help"])
    assert r.exit_code == 0
    for cmd in ("synth", "build-manifest", "train", "denoise", "evaluate", "demo", "bench"):
        assert cmd in r.output


def test_atomic_outputs_follow_umask(tmp_path):
    from ldct_monai.io_utils import atomic_write_text

    old = os.umask(0o022)
    try:
        with atomic_output_dir(tmp_path / "d") as tmp:
            atomic_write_text(tmp / "f.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "d" / "f.txt").stat().st_mode & 0o777 == 0o644


def test_cli_error_text_is_not_rich_markup(tmp_path):
    # A folder name with brackets must appear verbatim in the one-line error, not be eaten as markup.
    missing = tmp_path / "[bold]x[/bold]"
    r = CliRunner().invoke(app, ["build-manifest", str(missing), "--out", str(tmp_path / "m")])
    assert r.exit_code == 1
    assert "[bold]x[/bold]" in r.output.replace("\n", "")
    assert "Traceback" not in r.output
