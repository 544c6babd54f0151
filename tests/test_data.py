"""Manifest -> unpaired patch streams: records, caches, seeding, resumable sampling, DDP shards."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from train_fixtures import make_manifest

from ldct_monai.data import (
    PatchStream,
    ResumableSampler,
    UnpairedBatches,
    slice_dataset,
    split_records,
    val_slices,
)
from ldct_monai.errors import InputError
from ldct_monai.train_config import TrainConfig


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return make_manifest(tmp_path_factory.mktemp("data"), size=40, slices=3, seed=0)


def _cfg(manifest, **kw):
    base = dict(manifest=str(manifest), out="unused", patch_size=24, patches_per_slice=2, batch_size=4, ngf=4,
                n_blocks=1, ndf=4, num_workers=0, seed=3)
    return TrainConfig.from_preset("cpu-small", **{**base, **kw})


def _records(manifest):
    return split_records(manifest, "train_ld", "ld", "low"), split_records(manifest, "train_fd", "fd", "full")


def test_records_are_absolute_and_checked(manifest, tmp_path):
    ld, fd = _records(manifest)
    assert len(ld) == 6 and len(fd) == 6  # 2 patients x 3 slices per dose
    assert all(r["ld"].startswith("/") and r["ld"].endswith(".dcm") for r in ld)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "splits.json").write_text((manifest / "splits.json").read_text())
    df = pd.read_csv(manifest / "train_ld.csv")
    df.to_csv(bad / "train_fd.csv", index=False)  # low-dose rows in the full-dose split
    with pytest.raises(InputError, match=r"train_fd.csv: 6 row\(s\) with dose != 'full'"):
        split_records(bad, "train_fd", "fd", "full")
    df.drop(columns=["path"]).to_csv(bad / "train_ld.csv", index=False)
    with pytest.raises(InputError, match="missing column 'path'"):
        split_records(bad, "train_ld", "ld", "low")
    df.iloc[:0].to_csv(bad / "val_ld.csv", index=False)
    with pytest.raises(InputError, match="no rows"):
        split_records(bad, "val_ld", "ld", "low")


def test_patch_items_depend_only_on_seed_epoch_index(manifest):
    cfg = _cfg(manifest)
    ld, _ = _records(manifest)
    ds = PatchStream(slice_dataset(ld, "ld", cfg), "ld", cfg, stream=0)
    ds.set_epoch(1)
    a = [ds[i] for i in (0, 1, 2)]
    b = [ds[i] for i in (2, 1, 0)][::-1]  # other order, same items
    for x, y in zip(a, b, strict=True):
        assert all(torch.equal(torch.as_tensor(p["ld"]), torch.as_tensor(q["ld"])) for p, q in zip(x, y, strict=True))
    ds.set_epoch(2)
    assert not torch.equal(torch.as_tensor(ds[0][0]["ld"]), torch.as_tensor(a[0][0]["ld"]))


def test_resumable_sampler_skips_and_shards():
    full = ResumableSampler(10, seed=1)
    full.set_epoch(4)
    order = list(full)
    assert sorted(order) == list(range(10))
    full.set_start(3)
    assert list(full) == order[3:] and len(full) == 7
    shards = [ResumableSampler(10, seed=1, rank=r, world_size=2) for r in (0, 1)]
    for s in shards:
        s.set_epoch(4)
    a, b = list(shards[0]), list(shards[1])
    assert len(a) == len(b) == 5 and not set(a) & set(b)


def test_unpaired_batches_shapes_epochs_and_exact_resume(manifest):
    cfg = _cfg(manifest)
    batches = UnpairedBatches(cfg, *_records(manifest))
    assert batches.steps_per_epoch == 6 // 2  # 6 slices, 2 slices (4 patches) per step
    e1 = list(batches.epoch(1))
    assert len(e1) == 3
    for ld, fd in e1:
        assert ld.shape == fd.shape == (4, 1, 24, 24) and ld.dtype == torch.float32
        assert -1 <= float(ld.min()) and float(fd.max()) <= 1
    resumed = list(batches.epoch(1, start_step=1))
    assert len(resumed) == 2
    for (a, b), (c, d) in zip(e1[1:], resumed, strict=True):
        assert torch.equal(a, c) and torch.equal(b, d)
    assert not torch.equal(list(batches.epoch(2))[0][0], e1[0][0])  # reshuffled + re-augmented per epoch
    # LD and FD are independent streams: patches of noisier LD differ from FD in texture, not just order
    assert not torch.equal(e1[0][0], e1[0][1])


def test_cache_modes_and_workers_give_identical_batches(manifest, tmp_path):
    recs = _records(manifest)
    ref = list(UnpairedBatches(_cfg(manifest, cache="none"), *recs).epoch(0))
    mem = list(UnpairedBatches(_cfg(manifest, cache="memory"), *recs).epoch(0))
    disk_dir = tmp_path / "cache"
    disk = list(UnpairedBatches(_cfg(manifest, cache="disk"), *recs, cache_dir=disk_dir).epoch(0))
    workers = list(UnpairedBatches(_cfg(manifest, num_workers=2), *recs).epoch(0))
    for other in (mem, disk, workers):
        for (a, b), (c, d) in zip(ref, other, strict=True):
            assert torch.equal(a, c) and torch.equal(b, d)
    cached = list(disk_dir.rglob("*.pt"))
    assert len(cached) == 12  # one file per slice, loadable without unpickling code
    item = torch.load(cached[0], weights_only=True)
    assert type(item["ld" if "ld" in item else "fd"]) is torch.Tensor


def test_too_few_slices_for_a_step_is_a_clear_error(manifest):
    with pytest.raises(InputError, match="one step needs 8 per process"):
        UnpairedBatches(_cfg(manifest, batch_size=16), *_records(manifest))


def test_val_slices_are_fixed_full_slices(manifest):
    val = val_slices(manifest, _cfg(manifest, val_slices=2))
    assert len(val["ld"]) == 2 and len(val["fd"]) == 2
    assert val["ld"][0].shape == (1, 1, 40, 40)
    again = val_slices(manifest, _cfg(manifest, val_slices=2))
    assert torch.equal(val["fd"][1], again["fd"][1])
