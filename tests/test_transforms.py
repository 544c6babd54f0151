"""Transforms: HU loading, window scaling, tissue patches, augmentation invariants, determinism."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import torch
from conftest import REAL_CT, write_series

from ldct_monai.config import HUWindow
from ldct_monai.errors import InputError
from ldct_monai.transforms import (
    Keys,
    LoadCTSlice,
    LoadCTSliced,
    RandTissuePatch,
    RandTissuePatchd,
    augment_transforms,
    load_transforms,
    scale_hu,
    tissue_threshold,
    train_transforms,
)


def test_load_slice_is_modality_lut_of_that_slice():
    path = sorted(REAL_CT.glob("*.dcm"))[0]
    ds = pydicom.dcmread(path)
    expected = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    x = LoadCTSlice()(path)
    assert x.dtype == torch.float32 and tuple(x.shape) == (1, ds.Rows, ds.Columns)
    np.testing.assert_array_equal(x[0].numpy(), expected)  # no transpose, no flip
    d = LoadCTSliced([Keys.FD])({Keys.FD.value: str(path), "other": 1})
    assert d["other"] == 1 and torch.equal(d["fd"], x)


def test_load_slice_refuses_non_dicom(tmp_path):
    bad = tmp_path / "x.dcm"
    bad.write_bytes(b"not dicom at all")
    with pytest.raises(InputError, match="x.dcm"):
        LoadCTSlice()(bad)


def test_scale_maps_window_to_unit_and_clips():
    hu = torch.tensor([[[-3000.0, -1024.0, 1023.5, 3071.0, 9000.0]]])
    out = scale_hu(["ld"])({"ld": hu})["ld"]
    np.testing.assert_allclose(np.asarray(out).ravel(), [-1, -1, 0, 1, 1], atol=1e-6)
    w = HUWindow(-1000, 1000)
    out = scale_hu(["ld"], w)({"ld": torch.tensor([[[0.0, 500.0]]])})["ld"]
    np.testing.assert_allclose(np.asarray(out).ravel(), [0.0, 0.5], atol=1e-6)
    assert tissue_threshold(-500.0) == pytest.approx((-500 + 1024) / 4095 * 2 - 1)


def test_load_transforms_give_plain_tensors_in_range(tmp_path):
    f = write_series(tmp_path / "s", n_slices=1, size=24)[0]
    x = load_transforms(["ld"])({"ld": str(f)})["ld"]
    assert type(x) is torch.Tensor and x.dtype == torch.float32  # plain: the disk cache loads weights_only
    assert x.shape == (1, 24, 24) and -1 <= x.min() and x.max() <= 1
    # water (~40 HU) in the middle, air (~-1000 HU) in the corner
    assert x[0, 12, 12] == pytest.approx((40 + 1024) / 4095 * 2 - 1, abs=0.03)
    assert x[0, 0, 0] == pytest.approx((-1000 + 1024) / 4095 * 2 - 1, abs=0.03)


def _half_tissue(size: int = 32) -> torch.Tensor:
    img = torch.full((1, size, size), -1.0)
    img[:, :, size // 2 :] = 0.0  # right half tissue
    return img


def test_tissue_patches_avoid_air():
    crop = RandTissuePatch(8, num_samples=20, threshold=-0.75, min_fraction=1.0, tries=200)
    crop.set_random_state(0)
    patches = crop(_half_tissue())
    assert len(patches) == 20 and all(p.shape == (1, 8, 8) for p in patches)
    assert all(bool((p > -0.75).all()) for p in patches)  # every patch entirely tissue
    # without the constraint, some patches would include air
    free = RandTissuePatch(8, num_samples=20, min_fraction=0.0)
    free.set_random_state(0)
    assert any(bool((p <= -0.75).any()) for p in free(_half_tissue()))


def test_tissue_patches_of_all_air_and_small_images():
    crop = RandTissuePatch(16, num_samples=3, min_fraction=0.9, tries=4)
    out = crop(torch.full((1, 20, 20), -1.0))  # nothing qualifies: best effort, no endless loop
    assert len(out) == 3 and all(p.shape == (1, 16, 16) for p in out)
    small = crop(torch.zeros((1, 10, 12)))  # smaller than the patch: padded with air (-1)
    assert small[0].shape == (1, 16, 16)
    assert torch.all(small[0][:, 10:, :] == -1) and torch.all(small[0][:, :, 12:] == -1)


def test_dict_patches_share_one_draw_for_all_keys():
    ld = torch.randn(1, 40, 40)
    t = RandTissuePatchd(["ld", "fd"], size=8, num_samples=5, threshold=-10.0, min_fraction=0.0)
    t.set_random_state(1)
    out = t({"ld": ld, "fd": ld + 3.0, "path": "x"})
    assert len(out) == 5
    for item in out:
        assert torch.allclose(item["fd"], item["ld"] + 3.0) and item["path"] == "x"


def _dihedral4(img: torch.Tensor) -> list[torch.Tensor]:
    """Rotations by 0 / 90 degrees, each with or without a left-right flip (what the chain may output)."""
    out = []
    for k in (0, 1):
        r = torch.rot90(img, k, dims=(-2, -1))
        out += [r, torch.flip(r, dims=(-1,))]
    return out


def test_augmentation_is_rot90_and_flip_only_and_uses_all_four():
    img = torch.arange(16 * 16, dtype=torch.float32).reshape(1, 16, 16) / 256 - 0.5
    aug = augment_transforms(["ld"], patch_size=16, patches_per_slice=1, tissue_hu=-5000, min_tissue_fraction=0.0)
    seen = set()
    for seed in range(40):
        aug.set_random_state(seed)
        out = torch.as_tensor(aug({"ld": img})[0]["ld"])
        matches = [i for i, v in enumerate(_dihedral4(img)) if torch.equal(out, v)]
        assert len(matches) == 1  # values never change, only their arrangement
        seen.add(matches[0])
    assert seen == {0, 1, 2, 3}


def test_train_chain_is_deterministic_per_seed(tmp_path):
    f = write_series(tmp_path / "s", n_slices=1, size=48)[0]
    chain = train_transforms(["ld"], patch_size=16, patches_per_slice=4)

    def run(seed):
        chain.set_random_state(seed)
        return torch.stack([torch.as_tensor(d["ld"]) for d in chain({"ld": str(f)})])

    a, b, c = run(7), run(7), run(8)
    assert a.shape == (4, 1, 16, 16) and torch.equal(a, b) and not torch.equal(a, c)
    assert float(a.min()) >= -1 and float(a.max()) <= 1
