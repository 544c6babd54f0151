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
