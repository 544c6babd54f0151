"""Phantom texture (issue 11, item 4): fine anatomy at the scale of real full-dose detail, per-body-part kernels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from scipy.ndimage import gaussian_filter

from ldct_monai.schema import BodyPart
from ldct_monai.synth import SynthConfig, synth_tree
from ldct_monai.synth.phantom import LIVER, LUNG, TEX_LIVER, TEX_LUNG, Shape, Tile, make_phantom


def _organ_roi(ph, texture, n: int, z: float = 0.0, frac: float = 0.45) -> tuple[np.ndarray, np.ndarray]:
    """(image, mask): one slice at ``n`` px and the pixels well inside the first shape with ``texture``."""
    shape = next(s for s in ph.shapes if s.texture == texture)
    img = ph.sample(n, [z])[0].numpy()
    c = (np.arange(n) - (n - 1) / 2) * ph.fov / n
    x, y = c[None, :] - shape.centre[0], c[:, None] - shape.centre[1]
    a, b = shape.radii[0] * frac, shape.radii[1] * frac
    ca, sa = np.cos(shape.angle), np.sin(shape.angle)
    u, v = x * ca + y * sa, -x * sa + y * ca
    mask = (u / a) ** 2 + (v / b) ** 2 <= 1
    for lx, ly, _, r, _ in ph.lesions:  # the lesions are not texture
        mask &= (c[None, :] - lx) ** 2 + (c[:, None] - ly) ** 2 > (r + 4) ** 2
    return img, mask


@pytest.fixture(scope="module")
def abdomen():
    return make_phantom("L", np.random.default_rng([0, ord("L"), 0]), z_extent=8.0)


@pytest.fixture(scope="module")
def chest():
    return make_phantom("C", np.random.default_rng([0, ord("C"), 0]), z_extent=8.0)


def test_liver_has_fine_texture_of_realistic_amplitude(abdomen):
    img, mask = _organ_roi(abdomen, TEX_LIVER, 512)
    assert mask.sum() > 2000
    roi = img[mask]
    assert abs(np.median(roi) - LIVER) < 15  # texture, not a shift of the organ's value
    # total structure in unenhanced liver: a few to ~20 HU, not a flat ellipse and not noise-like mush
    assert 4.0 < roi.std() < 25.0
    # detail at the pixel-to-3-pixel scale (what a Gaussian filter of sigma 1-2 px removes): the old
    # phantoms had ~1 HU of it, real full-dose livers several HU
    detail = img - gaussian_filter(img, 1.5)
    assert 2.5 < detail[mask].std() < 15.0
    # a smoothed copy keeps organ-scale texture above a floor
    assert gaussian_filter(img, 2.0)[mask].std() > 2.5


def test_lungs_have_vessels_and_parenchyma(chest):
    img, mask = _organ_roi(chest, TEX_LUNG, 512, frac=0.6)
    roi = img[mask]
    assert abs(np.median(roi) - LUNG) < 60  # most of the lung is parenchyma
    assert 60.0 < roi.std() < 400.0  # vessels and bronchi: hundreds of HU in the lung
    detail = img - gaussian_filter(img, 1.5)
    assert detail[mask].std() > 30.0  # pixel-scale vessels and walls, not only the large tree
    # small vessels: many separate bright spots (cross-sections), not a handful of large tubes
    from scipy.ndimage import label

    _, spots = label((img > -500) & mask)
    assert spots > 40
    # small airways: air darker than the parenchyma inside the lung
    assert (img[mask] < LUNG - 80).mean() > 0.002


def test_texture_deterministic_from_seed_and_continuous_in_z():
    a = make_phantom("C", np.random.default_rng(7), z_extent=6.0).sample(128, [0.0, 0.5])
    b = make_phantom("C", np.random.default_rng(7), z_extent=6.0).sample(128, [0.0, 0.5])
    c = make_phantom("C", np.random.default_rng(8), z_extent=6.0).sample(128, [0.0, 0.5])
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # neighbouring positions 0.5 mm apart differ far less than two patients do
    assert (a[0] - a[1]).abs().mean() < 0.3 * (a[0] - c[0]).abs().mean()


def test_tiles_wrap_without_a_seam(abdomen):
    """A fine tile is periodic: sampled across its period boundary it stays continuous."""
    src = abdomen.tiles["micro_a"]
    tile = Tile(src.data, src.voxel, torch.eye(3), torch.zeros(3))  # tile axes = image axes
    period = (src.data.shape[2] - 1) * src.voxel
    x = torch.linspace(period - 3.0, period + 3.0, 121)  # 0.05 mm steps across the wrap
    vals = tile.sample(x, torch.tensor([1.0]))[0, 60]  # one row, along x
    steps = vals.diff().abs()
    assert steps.max() < 0.25 and steps.max() < 6 * steps.mean()
    # and it is the same field one period on
    assert torch.allclose(tile.sample(x - period, torch.tensor([1.0])), tile.sample(x, torch.tensor([1.0])), atol=1e-4)


def test_unknown_texture_pattern_is_refused():
    with pytest.raises(ValueError, match="unknown texture pattern 'marble'"):
        Shape("ellipsoid", (0, 0, 0), (1, 1, 1), 0.0, texture=(("organ", 2.0), ("marble", 3.0)))
    assert Shape("ellipsoid", (0, 0, 0), (1, 1, 1), 0.0, texture=("organ", 2.0)).texture == (("organ", 2.0),)


def _kernels(root: Path) -> dict[str, set[str]]:
    return {pid.name: {str(pydicom.dcmread(f, stop_before_pixels=True).ConvolutionKernel)
                       for f in pid.glob("*/*/*.dcm")} for pid in sorted(root.iterdir())}


def test_body_part_kernels_and_explicit_kernel_forces_one(tmp_path):
    cfg = SynthConfig(patients=1, slices=1, size=32, seed=0, body_parts=("C", "L", "N"))
    synth_tree(tmp_path / "auto", cfg, progress=False)
    # chest sharp, abdomen and head standard, as real protocols
    assert _kernels(tmp_path / "auto") == {"C001": {"D45f"}, "L001": {"B40f"}, "N001": {"H40s"}}
    assert [cfg.kernel_for(bp) for bp in BodyPart] == ["sharp", "standard", "standard"]
    for kernel, names in (("smooth", ("B30f",) * 3), ("sharp", ("D45f",) * 3), ("standard", ("B40f", "B40f", "H40s"))):
        forced = SynthConfig(patients=1, slices=1, size=32, seed=0, body_parts=("C", "L", "N"), kernel=kernel)
        synth_tree(tmp_path / kernel, forced, progress=False)
        assert _kernels(tmp_path / kernel) == {"C001": {names[0]}, "L001": {names[1]}, "N001": {names[2]}}


def _noise(res, n: int) -> tuple[float, float]:
    """(std, fraction of the noise power above 0.25 cycles/pixel) of the inserted noise in the water."""
    d = (res.ld - res.fd)[:, n // 2 - 16 : n // 2 + 16, n // 2 - 16 : n // 2 + 16].double()
    p = (torch.fft.fft2(d - d.mean(dim=(1, 2), keepdim=True)).abs() ** 2).mean(0)
    f = torch.fft.fftfreq(32, dtype=torch.float64)
    r = torch.sqrt(f[:, None] ** 2 + f[None, :] ** 2)
    return float(d.std()), float(p[r > 0.25].sum() / p.sum())


def test_standard_kernel_keeps_the_noise_level_with_a_finer_texture():
    """``standard``: the calibrated ``smooth`` noise level, with the finer texture of real B30f noise."""
    from ldct_monai.synth.noise import PROTOCOLS
    from ldct_monai.synth.simulate import scan
    from ldct_monai.synth.tree import reconstruction_window

    n, fov = 96, 260.0
    c = (torch.arange(n) - (n - 1) / 2) * fov / n
    hu = torch.where((c[None, :] ** 2 + c[:, None] ** 2) <= 100.0**2, 0.0, -1000.0)[None].repeat(4, 1, 1)
    out = {}
    for kernel in ("smooth", "standard"):
        window, protocol = reconstruction_window(kernel, n, fov / n, PROTOCOLS[BodyPart.ABDOMEN])
        res = scan(hu, fov / n, 1.0, protocol, fraction=0.25, kernel=window,
                   generator=torch.Generator().manual_seed(0))
        out[kernel] = _noise(res, n)
    assert out["standard"][0] == pytest.approx(out["smooth"][0], rel=0.12)  # same level ...
    assert out["standard"][1] > 2 * out["smooth"][1]  # ... more of it at high frequency


def test_chest_noise_follows_its_sharp_kernel(tmp_path):
    """The sharp chest kernel carries more noise than the same chest reconstructed smooth."""
    base = dict(patients=1, slices=2, size=64, seed=1, body_parts=("C",))
    sharp = synth_tree(tmp_path / "a", SynthConfig(**base), progress=False)["noise"]["C"]
    smooth = synth_tree(tmp_path / "b", SynthConfig(**base, kernel="smooth"), progress=False)["noise"]["C"]
    assert sharp["diff_std_hu"] == pytest.approx(1.6 * smooth["diff_std_hu"], rel=0.2)  # Mayo D45 / B30
