"""A small synthetic LD/FD manifest for the training tests (and the cpu-small measurement script).

Independent of ``ldct_monai.synth`` on purpose: a body ellipse with fat, lesion and bone inserts, per
slice; full dose adds Gaussian noise of ``fd_sigma`` HU smoothed a little (CT noise is correlated),
low dose ``ld_sigma``. Train/val patients contribute one dose each; test patients both (paired on z).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import torch
from scipy.ndimage import gaussian_filter

from ldct_monai.dicom.create import SeriesInfo, make_uid, write_ct_series

SPLITS = {"train": 4, "val": 2, "test": 1}  # patients per split (train/val: half LD, half FD)


# A training config small enough for a few CPU steps in a test (override fields per test).
TINY = dict(patch_size=24, patches_per_slice=2, batch_size=4, ngf=4, n_blocks=1, ndf=4, num_workers=0,
            tensorboard=False, val_every=1000, val_slices=1, log_every=1, checkpoint_every=3, total_steps=20)


@pytest.fixture
def one_thread():
    """Tiny models are dominated by per-op threading overhead: one thread is faster (and CI has 2 cores)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def phantom(size: int, rng: np.random.Generator) -> np.ndarray:
    """Clean HU image: air, body ellipse (40 HU) with a fat rim, random lesions and a bone disc."""
    yy, xx = (np.mgrid[:size, :size] - size / 2) / (size / 2)
    a, b = rng.uniform(0.75, 0.9), rng.uniform(0.6, 0.8)
    img = np.full((size, size), -1000.0)
    body = (xx / a) ** 2 + (yy / b) ** 2 < 1
    inner = (xx / (a - 0.08)) ** 2 + (yy / (b - 0.08)) ** 2 < 1
    img[body] = -100.0  # subcutaneous fat
    img[inner] = 40.0  # soft tissue
    for _ in range(3):
        cx, cy, r = rng.uniform(-0.4, 0.4), rng.uniform(-0.3, 0.3), rng.uniform(0.05, 0.15)
        img[((xx - cx) ** 2 + (yy - cy) ** 2 < r * r) & inner] = rng.choice([-60.0, 90.0, 130.0])
    cx, cy = rng.uniform(-0.2, 0.2), rng.uniform(0.35, 0.45) * b
    img[((xx - cx) ** 2 + (yy - cy) ** 2 < 0.08**2) & inner] = 700.0  # a vertebra-like bone disc
    return img


def noisy(clean: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Correlated Gaussian noise of standard deviation ``sigma`` HU inside the body (air stays cleaner)."""
    n = gaussian_filter(rng.normal(0, 1, clean.shape), 0.7)
    n *= sigma / n.std()
    return clean + np.where(clean > -900, n, 0.2 * n)


def make_manifest(root: Path, size: int = 48, slices: int = 4, seed: int = 0, fd_sigma: float = 12.0,
                  ld_sigma: float = 45.0, splits: dict[str, int] | None = None) -> Path:
    """Write a DICOM tree under ``root/data`` and its manifest under ``root/manifest``; return the manifest folder."""
    rng = np.random.default_rng(seed)
    data, man = root / "data", root / "manifest"
    rows: dict[str, list[dict]] = {k: [] for k in ("train_ld", "train_fd", "val_ld", "val_fd")}
    pairs: list[dict] = []
    patient_split = {}
    k = 0
    for split, n in (splits or SPLITS).items():
        for j in range(n):
            pid = f"L{k:03d}"
            k += 1
            patient_split[pid] = split
            clean = np.stack([phantom(size, rng) for _ in range(slices)])
            doses = ("low", "full") if split == "test" else (("low",) if j % 2 == 0 else ("full",))
            written = {}
            for dose in doses:
                sigma = ld_sigma if dose == "low" else fd_sigma
                vol = np.stack([noisy(c, sigma, rng) for c in clean])
                desc = "Low Dose Images" if dose == "low" else "Full Dose Images"
                info = SeriesInfo(patient_id=pid, study_uid=make_uid(pid, "st"), series_uid=make_uid(pid, dose),
                                  frame_of_reference_uid=make_uid(pid, "for"), series_description=desc,
                                  body_part="ABDOMEN")
                files = write_ct_series(data / pid / desc, vol, info, z_positions=[float(i) for i in range(slices)])
                written[dose] = files
                if split != "test":
                    for i, f in enumerate(files):
                        ds = pydicom.dcmread(f, stop_before_pixels=True)
                        rows[f"{split}_{'ld' if dose == 'low' else 'fd'}"].append({
                            "patient_id": pid, "body_part": "L", "dose": dose, "series_uid": ds.SeriesInstanceUID,
                            "sop_uid": ds.SOPInstanceUID, "path": str(f.relative_to(data)), "z": float(i)})
            if split == "test":
                for i, (fl, ff) in enumerate(zip(written["low"], written["full"], strict=True)):
                    pairs.append({"patient_id": pid, "body_part": "L", "z": float(i), "ld_path": str(fl.relative_to(data)),
                                  "fd_path": str(ff.relative_to(data)), "ld_sop_uid": "", "fd_sop_uid": ""})
    man.mkdir(parents=True, exist_ok=True)
    cols = ["patient_id", "body_part", "dose", "series_uid", "sop_uid", "path", "z"]
    for name, r in rows.items():
        pd.DataFrame(r, columns=cols).to_csv(man / f"{name}.csv", index=False)
    pd.DataFrame(pairs).to_csv(man / "test_pairs.csv", index=False)
    pd.DataFrame(columns=["path", "reason"]).to_csv(man / "skipped.csv", index=False)
    (man / "splits.json").write_text(json.dumps({"data_root": str(data), "seed": seed, "patients": patient_split}))
    return man


def assert_resumes_exactly(kw: dict, tmp_path, split: int) -> None:
    """A whole run of ``kw`` and one stopped after ``split`` steps and resumed export the same generator."""
    from ldct_monai.engine import train
    from ldct_monai.modelio import load_model
    from ldct_monai.train_config import TrainConfig

    whole = train(TrainConfig.from_dict({**kw, "out": str(tmp_path / "whole")}))
    part = TrainConfig.from_dict({**kw, "out": str(tmp_path / "part"), "max_steps": split})
    train(part)
    train(part.replace(max_steps=0, resume=True))
    a, b = load_model(whole).generator.state_dict(), load_model(tmp_path / "part").generator.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
