"""Classical baselines: the slice's own noise estimate, Gaussian / NLM / BM3D, paired tuning, ClassicalDenoiser."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from ldct_monai.baselines import (
    ClassicalDenoiser,
    apply_baseline,
    bm3d_denoise,
    describe_method,
    estimate_noise,
    estimate_noise_std,
    nlm_denoise,
    tune_paired,
    windowed_psnr,
)
from ldct_monai.errors import InputError
from ldct_monai.metrics import LDCTBENCH_WINDOWS, Window, psnr
from ldct_monai.schema import BodyPart

ABDOMEN = LDCTBENCH_WINDOWS[BodyPart.ABDOMEN]


def correlated_noise(shape: tuple[int, int], std: float, blur_px: float, seed: int) -> np.ndarray:
    """White noise blurred by a Gaussian of ``blur_px``, rescaled so that its std is exactly ``std``."""
    n = gaussian_filter(np.random.default_rng(seed).normal(0.0, 1.0, shape), blur_px)
    return (n - n.mean()) / n.std() * std


def phantom(size: int = 128) -> np.ndarray:
    """A soft-tissue body (40 HU) in air with fat, liver-like, lung and bone inserts, edges blurred at 1 px."""
    yy, xx = np.mgrid[:size, :size] / size
    img = np.where((yy - 0.5) ** 2 + (xx - 0.5) ** 2 < 0.42**2, 40.0, -1000.0)
    for hu, (cy, cx, r) in zip((-100.0, 90.0, -800.0, 700.0), ((0.3, 0.35, 0.08), (0.62, 0.6, 0.12), (0.5, 0.25, 0.07), (0.35, 0.66, 0.05))):
        img = np.where((yy - cy) ** 2 + (xx - cx) ** 2 < r**2, hu, img)
    return gaussian_filter(img, 1.0)


@pytest.mark.parametrize("blur_px", [0.0, 0.7, 1.0])
def test_noise_estimate_on_correlated_noise_of_known_std(blur_px):
    for seed in range(3):
        est = estimate_noise(phantom() + correlated_noise((128, 128), 30.0, blur_px, seed))
        assert est.region == "soft tissue" and est.n_windows > 50
        assert est.std_hu == pytest.approx(30.0, rel=0.15), seed


def test_wavelet_estimate_misses_correlated_noise():
    """Why skimage's estimate_sigma is not used: it sees only the finest band, where blurred noise has little power."""
    from skimage.restoration import estimate_sigma

    img = phantom() + correlated_noise((128, 128), 30.0, 1.0, seed=2)
    assert estimate_sigma(img) < 0.5 * 30.0  # ~4 HU
    assert estimate_noise_std(img) == pytest.approx(30.0, rel=0.15)


def test_noise_estimate_follows_the_noise_and_ignores_structure():
    clean = phantom()
    low = estimate_noise_std(clean + correlated_noise(clean.shape, 15.0, 0.7, seed=3))
    high = estimate_noise_std(clean + correlated_noise(clean.shape, 45.0, 0.7, seed=3))
    assert high / low == pytest.approx(3.0, rel=0.1)
    assert estimate_noise_std(clean) < 2.0  # edges and inserts are not mistaken for noise


def test_noise_estimate_fallbacks_are_finite_and_named():
    lung = np.full((96, 96), -850.0) + correlated_noise((96, 96), 25.0, 0.7, seed=4)  # no soft tissue at all
    est = estimate_noise(lung)
    assert est.region == "body" and est.std_hu == pytest.approx(25.0, rel=0.15)
    air = np.full((40, 40), -1000.0) + correlated_noise((40, 40), 10.0, 0.7, seed=5)  # nothing but air, tiny
    est = estimate_noise(air)
    assert est.region == "whole slice" and math.isfinite(est.std_hu) and est.std_hu > 0
    assert estimate_noise(np.full((30, 30), 40.0)).std_hu == pytest.approx(0.0, abs=1e-6)  # noiseless: 0, not NaN
    with pytest.raises(InputError, match="at least 27 x 27"):
        estimate_noise(np.zeros((20, 64)))


def _noisy_phantom(seed: int = 6) -> tuple[np.ndarray, np.ndarray]:
    clean = phantom(96)
    return clean, clean + correlated_noise(clean.shape, 30.0, 0.6, seed)


@pytest.mark.parametrize("method", ["nlm", "bm3d"])
def test_nlm_and_bm3d_improve_psnr_over_the_input(method):
    clean, noisy = _noisy_phantom()
    out = apply_baseline(method, noisy, {"nlm": 0.9, "bm3d": 2.0}[method])
    assert out.shape == noisy.shape and out.dtype == np.float32
    gain = windowed_psnr(out, clean, ABDOMEN) - windowed_psnr(noisy, clean, ABDOMEN)
    assert gain > 3.0, gain
    assert windowed_psnr(out, clean, ABDOMEN) == pytest.approx(float(psnr(ABDOMEN.to_unit(out), ABDOMEN.to_unit(clean))[0]), abs=1e-3)


def test_bm3d_works_in_hu_and_zero_strength_is_identity():
    clean, noisy = _noisy_phantom()
    out = bm3d_denoise(noisy, 60.0)
    inside = clean > -50
    assert abs(float(out[inside].mean() - noisy[inside].mean())) < 2.0  # no HU offset from the unit-range mapping
    np.testing.assert_array_equal(bm3d_denoise(noisy, 0.0), np.clip(noisy, -1024, 3071).astype(np.float32))
    np.testing.assert_array_equal(nlm_denoise(noisy, 0.0), np.clip(noisy, -1024, 3071).astype(np.float32))


def test_paired_tuning_finds_the_peak():
    clean, noisy = _noisy_phantom()
    pairs = [(noisy, clean, ABDOMEN), (np.roll(noisy, 7, axis=0), np.roll(clean, 7, axis=0), ABDOMEN)]
    t = tune_paired("gaussian", pairs)
    scores = dict(t.tried)
    assert not t.at_bound and t.psnr_db == max(scores.values()) and scores[t.param] == t.psnr_db
    assert t.psnr_db > t.input_psnr_db + 2.0
    lower, upper = max(p for p in scores if p < t.param), min(p for p in scores if p > t.param)
    assert scores[lower] < t.psnr_db and scores[upper] < t.psnr_db  # bracketed
    assert 6 <= len(t.tried) <= 8
    narrow = Window(40.0, 80.0)  # a narrower window asks for more smoothing: the choice follows the criterion
    assert tune_paired("gaussian", [(a, b, narrow) for a, b, _ in pairs]).param >= t.param


def test_classical_denoiser_records_what_it_did():
    _, noisy = _noisy_phantom()
    d = ClassicalDenoiser("nlm")
    out = d(np.stack([noisy, noisy]))
    assert out.shape == (2, *noisy.shape) and d.batch_size == 1 and d.device == "cpu"
    p = d.parameters()
    assert p["method"] == "nlm" and p["k"] == 0.9 and p["noise_hu"]["median"] == pytest.approx(30.0, rel=0.15)
    assert p["noise_hu"]["regions"] == {"soft tissue": 2} and p["seconds_per_slice"] > 0
    assert "h = 0.9 x sigma_hat" in d.describe() and "scikit-image" in d.describe()
    assert "sigma_psd = 1.5 x sigma_hat" in describe_method("bm3d", 1.5) and "sigma 0.6 px" in describe_method("gaussian", 0.6)
    with pytest.raises(InputError, match="unknown classical method"):
        ClassicalDenoiser("wiener")
    with pytest.raises(InputError, match="finite number >= 0"):
        ClassicalDenoiser("bm3d", -1.0)
