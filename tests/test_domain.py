"""A model's training domain (kernels, pixel spacing, slice thickness) and the warning outside it."""

from __future__ import annotations

import logging

import pandas as pd
import pytest
from pydicom import Dataset

from ldct_monai.domain import outside_domain, training_domain, warn_if_outside


def _header(kernel="B", manufacturer="Philips", spacing=0.8, thickness=1.0) -> Dataset:
    ds = Dataset()
    ds.ConvolutionKernel, ds.Manufacturer = kernel, manufacturer
    ds.PixelSpacing, ds.SliceThickness = [spacing, spacing], thickness
    return ds


@pytest.fixture
def manifest(tmp_path):
    rows = [
        {"patient_id": "C001", "body_part": "C", "kernel": "D", "manufacturer": "Philips", "pixel_spacing_row": 0.78,
         "slice_thickness": 1.0},
        {"patient_id": "L001", "body_part": "L", "kernel": "B", "manufacturer": "Philips", "pixel_spacing_row": 1.07,
         "slice_thickness": 3.0},
    ]
    pd.DataFrame(rows[:1]).to_csv(tmp_path / "train_ld.csv", index=False)
    pd.DataFrame(rows[1:]).to_csv(tmp_path / "train_fd.csv", index=False)
    return tmp_path


def test_training_domain_from_the_train_split(manifest, tmp_path):
    dom = training_domain(manifest)
    assert dom == {"kernel_classes": ["sharp", "standard"], "kernels": ["B", "D"], "pixel_spacing_mm": [0.78, 1.07],
                   "slice_thickness_mm": [1.0, 3.0], "body_parts": ["C", "L"]}
    assert training_domain(tmp_path / "nothing") is None
    odd = tmp_path / "odd"
    odd.mkdir()
    pd.DataFrame([{"kernel": "B30f", "manufacturer": "ldct-monai synth", "pixel_spacing_row": 0.5, "slice_thickness": 1}]
                 ).to_csv(odd / "train_ld.csv", index=False)
    assert training_domain(odd)["kernel_classes"] == []  # an unclassifiable kernel is no class trained on


def test_outside_domain_names_each_problem(manifest, caplog):
    dom = training_domain(manifest)
    assert outside_domain(dom, _header()) == []
    assert outside_domain(dom, _header(spacing=1.3, thickness=4.4)) == []  # inside the loose tolerances
    probs = outside_domain(dom, _header(kernel="SOFT", manufacturer="GE MEDICAL SYSTEMS", spacing=0.5, thickness=5.0))
    assert len(probs) == 3
    assert "'SOFT' (smooth)" in probs[0] and "0.5 mm" in probs[1] and "5 mm" in probs[2]
    assert outside_domain(None, _header(kernel="SOFT")) == []  # a model without a recorded domain: no opinion
    with caplog.at_level(logging.WARNING, logger="ldct_monai.domain"):
        warn_if_outside(dom, _header(thickness=5.0), "series/dir", "ldct-denoiser-v2")
    assert "series/dir: outside what ldct-denoiser-v2 was trained on: slice thickness 5 mm" in caplog.text


def test_denoise_warns_when_a_series_is_outside_the_shipped_models_domain(tmp_path, caplog):
    """pydicom's CT_small (GE STANDARD, 5 mm slices): the shipped model was trained on 1-3 mm."""
    import shutil

    from pydicom.data import get_testdata_file

    from ldct_monai.denoise import denoise_series

    src = tmp_path / "series"
    src.mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), src / "ct.dcm")
    with caplog.at_level(logging.WARNING, logger="ldct_monai.domain"):
        res = denoise_series(src, tmp_path / "out", None, device="cpu", progress=False)
    assert len(res["outside_training_domain"]) == 1 and "slice thickness 5 mm" in res["outside_training_domain"][0]
    assert f"{src}: outside what" in caplog.text and len(res["files"]) == 1
