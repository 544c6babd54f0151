"""Figures: valid non-empty PNGs of the expected layout, drawn from the data."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.image import imread

from ldct_monai.figures import centre_crop_box, comparison_figure, curve_figure, difference_figure, difference_limit
from ldct_monai.metrics import LDCTBENCH_WINDOWS
from ldct_monai.schema import BodyPart

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def slices(size: int = 40):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    fd = np.where((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (0.4 * size) ** 2, 40.0, -1000.0)
    ld = fd + rng.normal(0, 50, fd.shape)
    return ld, fd + rng.normal(0, 10, fd.shape), fd


def read_png(path) -> np.ndarray:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    return imread(path)


def test_comparison_figure_layout(tmp_path):
    ld, den, fd = slices()
    win = LDCTBENCH_WINDOWS[BodyPart.ABDOMEN]
    p3 = comparison_figure({"low-dose": ld, "model": den, "full-dose": fd}, tmp_path / "c3.png", window=win, title="t")
    p5 = comparison_figure(
        {"low-dose": ld, "model": den, "a": den, "b": den, "full-dose": fd}, tmp_path / "c5.png", window=win, title="t"
    )
    a3, a5 = read_png(p3), read_png(p5)
    assert a3.ndim == 3 and a3.shape[0] > 300 and a3.shape[1] > a3.shape[0]  # 2 rows x 3 panels + colour bar
    assert a5.shape[0] == a3.shape[0] and a5.shape[1] > a3.shape[1] * 1.4  # more columns, same rows
    assert a3[..., :3].std() > 0.1  # an image, not a blank canvas
    # the pixels come from the data: another slice gives another picture
    p_other = comparison_figure({"low-dose": fd, "model": fd, "full-dose": fd}, tmp_path / "o.png", window=win, title="t")
    assert not np.array_equal(read_png(p_other), a3)
    with pytest.raises(ValueError):
        comparison_figure({"a": ld, "b": ld[:10]}, tmp_path / "bad.png", window=win)
    assert not (tmp_path / "bad.png").exists()


def test_difference_figure_and_limits(tmp_path):
    ld, den, fd = slices()
    p = difference_figure(ld, den, fd, tmp_path / "d.png", title="t", denoised_label="model")
    a = read_png(p)
    assert a.shape[1] > a.shape[0] and a[..., :3].std() > 0.05
    # the removed-noise panel of an identity "denoiser" is flat: the picture changes
    b = read_png(difference_figure(ld, ld, fd, tmp_path / "d2.png", title="t", limit=200.0))
    assert not np.array_equal(a, b)
    assert difference_limit(np.array([130.0, -20.0])) == 200.0
    assert difference_limit(np.array([7.0])) == 10.0
    assert difference_limit(np.array([0.0, 0.0])) == 1.0
    assert difference_limit(np.array([-450.0])) == 500.0


def test_crop_box_and_curve(tmp_path):
    assert centre_crop_box((100, 80), 0.5) == (25, 75, 20, 60)
    assert centre_crop_box((10, 10), 1.0) == (0, 10, 0, 10)
    p = curve_figure([0, 100, 200], {"full": [30.0, 33.0, 34.0], "LDCTBench": [20.0, 22.0, 23.5]}, tmp_path / "c.png")
    a = read_png(p)
    assert a.shape[1] > a.shape[0] > 200
    with pytest.raises(ValueError, match="2 values for 3"):
        curve_figure([0, 1, 2], {"x": [1.0, 2.0]}, tmp_path / "bad.png")
