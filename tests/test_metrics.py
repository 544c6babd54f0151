"""Metric functions and conventions against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ldct_monai.errors import InputError
from ldct_monai.metrics import (
    LDCTBENCH_WINDOWS,
    METRIC_COLUMNS,
    Window,
    finite_or_none,
    full_range_unit,
    psnr,
    rmse_hu,
    slice_metrics,
    ssim,
)
from ldct_monai.schema import BodyPart, body_part_of


def textured(size: int = 32, seed: int = 0) -> np.ndarray:
    """Soft-tissue-like HU image inside every window: 40 HU +- 15 HU of smooth texture (never clipped)."""
    rng = np.random.default_rng(seed)
    return 40.0 + 15.0 * np.tanh(rng.normal(0, 1, (size, size)))


def test_constant_offset_gives_the_stated_psnr_and_rmse():
    ref = textured()
    d = 10.0
    m = slice_metrics(ref + d, ref, "L")[0]
    assert m["psnr_full"] == pytest.approx(20 * math.log10(4095 / d), abs=1e-4)  # 52.245 dB
    assert m["psnr_ldctbench"] == pytest.approx(20 * math.log10(399 / d), abs=1e-4)  # W - 1 = 399 HU per unit
    assert m["rmse_full"] == pytest.approx(d, abs=1e-4) and m["rmse_ldctbench"] == pytest.approx(d, abs=1e-4)
    # chest window (W 1500) and head window (W 80) under the same offset
    assert slice_metrics(ref + d, ref, BodyPart.CHEST)[0]["psnr_ldctbench"] == pytest.approx(20 * math.log10(1499 / d), abs=1e-4)
    assert slice_metrics(ref + 2.0, ref, "N")[0]["psnr_ldctbench"] == pytest.approx(20 * math.log10(79 / 2.0), abs=1e-4)


def test_no_per_image_normalisation():
    """The same HU error scores the same whatever else the image holds (min-max would change it)."""
    a = textured()
    b = a.copy()
    b[0, 0] = 3000.0  # one bone pixel changes b's min-max range, not its HU
    pa = slice_metrics(a + 5.0, a, "L")[0]
    pb = slice_metrics(b + 5.0, b, "L")[0]
    assert pa["psnr_full"] == pytest.approx(pb["psnr_full"], abs=1e-4)
    assert pa["rmse_full"] == pytest.approx(pb["rmse_full"], abs=1e-4)


def test_windows_clip_and_follow_the_dicom_voi_formula():
    w = LDCTBENCH_WINDOWS[BodyPart.ABDOMEN]  # C 50 / W 400
    assert (w.lower, w.upper) == (-150.0, 249.0)
    np.testing.assert_allclose(w.to_unit(np.array([-1000.0, -150.0, 49.5, 249.0, 3000.0])), [0, 0, 0.5, 1, 1], atol=1e-7)
    head = LDCTBENCH_WINDOWS[BodyPart.HEAD]  # C 40 / W 80: [0, 79] HU
    assert (head.lower, head.upper) == (0.0, 79.0)
    # outside the window everything saturates: 0 HU vs 1000 HU is the largest error there is -> 0 dB
    ref, pred = np.zeros((16, 16)), np.full((16, 16), 1000.0)
    m = slice_metrics(pred, ref, "N")[0]
    assert m["psnr_ldctbench"] == pytest.approx(0.0, abs=1e-6)
    assert m["psnr_full"] == pytest.approx(20 * math.log10(4095 / 1000), abs=1e-4)
    with pytest.raises(ValueError):
        Window(0.0, 1.0)


def test_padding_below_air_is_air_in_both_conventions():
    """Field-of-view padding (-3024 HU in the reference, -1024 HU after a filter) adds no error."""
    ref = textured()
    ref[:, :8] = -3024.0
    pred = ref.copy()
    pred[:, :8] = -1024.0
    for bp in "CLN":  # the chest window reaches down to -1350 HU
        m = slice_metrics(pred, ref, bp)[0]
        assert math.isinf(m["psnr_full"]) and math.isinf(m["psnr_ldctbench"])
        assert m["rmse_full"] == 0.0 and m["rmse_ldctbench"] == 0.0


def test_rmse_ranges():
    ref = np.full((16, 16), 2000.0)
    pred = np.full((16, 16), 3000.0)
    m = slice_metrics(pred, ref, "C")[0]
    assert m["rmse_full"] == pytest.approx(1000.0)  # both inside [-1024, 3071]
    assert m["rmse_ldctbench"] == pytest.approx(0.0)  # both clipped to 1900
    assert rmse_hu(np.full((4, 4), -3024.0), np.full((4, 4), -1000.0), (-1024.0, 3071.0))[0] == pytest.approx(24.0)
    np.testing.assert_allclose(full_range_unit(np.array([-2000.0, -1024.0, 3071.0, 5000.0])), [0, 0, 1, 1])


def test_ssim_hand_values_and_against_skimage():
    # constant images: sigma terms vanish, SSIM = (2ab + C1) / (a^2 + b^2 + C1) with C1 = (0.01 * 1)^2
    a, b = 0.5, 0.25
    got = ssim(np.full((16, 16), a), np.full((16, 16), b))[0]
    assert got == pytest.approx((2 * a * b + 1e-4) / (a * a + b * b + 1e-4), rel=1e-5)
    x = np.random.default_rng(0).random((40, 40)).astype(np.float32)
    assert ssim(x, x)[0] == pytest.approx(1.0, abs=1e-6)
    assert math.isinf(psnr(x, x)[0])
    # MONAI's SSIM with our settings equals skimage's Gaussian SSIM (Wang et al. settings)
    from skimage.metrics import structural_similarity

    y = np.clip(x + np.random.default_rng(1).normal(0, 0.1, x.shape), 0, 1).astype(np.float32)
    ref = structural_similarity(y, x, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    assert ssim(y, x)[0] == pytest.approx(ref, abs=1e-4)
    with pytest.raises(ValueError):
        ssim(np.zeros((8, 8)), np.zeros((8, 8)))


def test_batches_and_body_parts():
    ref = textured()
    preds = np.stack([ref + 1.0, ref + 2.0, ref])
    rows = slice_metrics(preds, ref, "CHEST")
    assert len(rows) == 3 and set(rows[0]) == set(METRIC_COLUMNS)
    assert rows[0]["psnr_full"] - rows[1]["psnr_full"] == pytest.approx(20 * math.log10(2), abs=1e-4)  # 6.02 dB
    assert rows[2]["ssim_full"] == pytest.approx(1.0) and math.isinf(rows[2]["psnr_full"])
    assert [body_part_of(v) for v in ("C", "abdomen", "L", "n", "HEAD")] == [
        BodyPart.CHEST, BodyPart.ABDOMEN, BodyPart.ABDOMEN, BodyPart.HEAD, BodyPart.HEAD
    ]
    with pytest.raises(InputError, match="unknown body part"):
        body_part_of("X")
    with pytest.raises(ValueError):
        psnr(np.zeros((2, 8, 8)), np.zeros((3, 8, 8)))
    assert finite_or_none(float("inf")) is None and finite_or_none(1.5) == 1.5
