"""Manifest -> unpaired patch streams: records, caches, seeding, resumable sampling, DDP shards."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from train_fixtures import make_manifest

from ldct_monai.data import (
    BodyPartBatchSampler,
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
    for ld, fd, ld_bp, fd_bp in e1:
        assert ld.shape == fd.shape == (4, 1, 24, 24) and ld.dtype == torch.float32
        assert ld_bp.shape == fd_bp.shape == (4,) and ld_bp.dtype == torch.int64
        assert -1 <= float(ld.min()) and float(fd.max()) <= 1
    resumed = list(batches.epoch(1, start_step=1))
    assert len(resumed) == 2
    for x, y in zip(e1[1:], resumed, strict=True):
        assert all(torch.equal(a, b) for a, b in zip(x, y, strict=True))
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
        for x, y in zip(ref, other, strict=True):
            assert all(torch.equal(a, b) for a, b in zip(x, y, strict=True))
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


def test_batches_carry_each_patch_body_part(manifest, tmp_path):
    # Relabel the train patients: one LD patient chest, the other head; FD patients abdomen and unknown.
    relabelled = tmp_path / "man"
    relabelled.mkdir()
    for f in manifest.iterdir():
        (relabelled / f.name).write_bytes(f.read_bytes())
    labels = {}
    for split, parts in (("train_ld", ("C", "N")), ("train_fd", ("L", ""))):
        df = pd.read_csv(manifest / f"{split}.csv")
        pids = sorted(df["patient_id"].unique())
        df["body_part"] = df["patient_id"].map(dict(zip(pids, parts, strict=True)))
        df.to_csv(relabelled / f"{split}.csv", index=False)
        labels[split] = df["body_part"].fillna("").tolist()
    cfg = _cfg(relabelled, body_part_batches=False)  # mixed batches: the streams share no body part here
    batches = UnpairedBatches(cfg, *_records(relabelled))
    counts = {"ld": torch.zeros(4, dtype=torch.int64), "fd": torch.zeros(4, dtype=torch.int64)}
    for batch in batches.epoch(0):  # one epoch = every slice once (6 slices, 2 per step, 3 steps)
        for name, parts in (("ld", batch.ld_body_part), ("fd", batch.fd_body_part)):
            assert torch.equal(parts[0::2], parts[1::2])  # the 2 patches of a slice share its body part
            counts[name] += torch.bincount(parts + 1, minlength=4)  # index 0 = unknown (-1)
    # patches_per_slice (2) x slices per body part; order: unknown, C, L, N
    assert counts["ld"].tolist() == [0, 2 * labels["train_ld"].count("C"), 0, 2 * labels["train_ld"].count("N")]
    assert counts["fd"].tolist() == [2 * labels["train_fd"].count(""), 0, 2 * labels["train_fd"].count("L"), 0]
    val = val_slices(relabelled, cfg.replace(val_slices=2))
    assert [int(p) for p in val["ld_body_part"]] == [1, 1]  # the fixture's val patients are abdomen (L = 1)


def test_body_part_sampler_same_part_in_both_streams_balanced_resumable_sharded():
    ld_parts = [0] * 5 + [1] * 3 + [2] * 4 + [-1] * 2  # unknown (-1) only in LD: never scheduled
    fd_parts = [2] * 3 + [0] * 6 + [1] * 2
    common = [0, 1, 2]
    kw = dict(common=common, slices_per_batch=2, steps_per_epoch=9, seed=5)
    ld = BodyPartBatchSampler(ld_parts, stream=0, **kw)
    fd = BodyPartBatchSampler(fd_parts, stream=1, **kw)
    for epoch in (0, 1):
        ld.set_epoch(epoch), fd.set_epoch(epoch)
        steps = list(zip(ld, fd, strict=True))
        assert len(steps) == 9
        seen = []
        for a, b in steps:
            assert len(a) == len(b) == 2
            part = {ld_parts[i] for i in a}
            assert len(part) == 1 and part == {fd_parts[i] for i in b}  # one body part, the same in both streams
            seen.append(part.pop())
        assert sorted(seen.count(p) for p in common) == [3, 3, 3]  # equal shares of the steps
        assert -1 not in seen
    assert ld.schedule(0) != ld.schedule(1)  # reshuffled per epoch
    ld.set_epoch(1)
    full = list(ld)
    ld.set_start(4)
    assert list(ld) == full[4:] and len(ld) == 5
    # DDP: two ranks get different slices of the same body part at each step
    r0, r1 = (BodyPartBatchSampler(fd_parts, stream=1, rank=r, world_size=2, **kw) for r in (0, 1))
    firsts = set()
    for a, b in zip(r0, r1, strict=True):
        assert {fd_parts[i] for i in a + b} == {fd_parts[a[0]]}
        if fd_parts[a[0]] == 0 and 0 not in firsts:  # first draw from 6 shuffled slices: 4 distinct
            firsts.add(0)
            assert not set(a) & set(b)
    assert firsts == {0}
    with pytest.raises(InputError, match="no slice of body part"):
        BodyPartBatchSampler([0, 0, 1], [0, 2], 1, 3, 0, 0)


def test_body_part_batches_end_to_end_and_fallback_without_shared_parts(manifest, tmp_path, caplog):
    relabelled = tmp_path / "man"
    relabelled.mkdir()
    for f in manifest.iterdir():
        (relabelled / f.name).write_bytes(f.read_bytes())
    ld = pd.read_csv(manifest / "train_ld.csv")
    ld["body_part"] = ["C", "N", "C", "N", "C", "N"]
    ld.to_csv(relabelled / "train_ld.csv", index=False)
    fd = pd.read_csv(manifest / "train_fd.csv")
    fd["body_part"] = ["N", "C", "L", "N", "C", "L"]
    fd.to_csv(relabelled / "train_fd.csv", index=False)
    with caplog.at_level("WARNING"):
        batches = UnpairedBatches(_cfg(relabelled, body_part_batches=True), *_records(relabelled))
    assert "L appear in only one training stream" in caplog.text
    for batch in batches.epoch(0):
        parts = torch.cat([batch.ld_body_part, batch.fd_body_part]).unique().tolist()
        assert len(parts) == 1 and parts[0] in (0, 2)  # C or N, never L (no LD slice of it)
    fd["body_part"] = "L"
    fd.to_csv(relabelled / "train_fd.csv", index=False)
    caplog.clear()
    with caplog.at_level("WARNING"):
        batches = UnpairedBatches(_cfg(relabelled, body_part_batches=True), *_records(relabelled))
    assert "share no body part" in caplog.text and "using mixed batches" in caplog.text
    assert not batches.body_part_batches and isinstance(batches.samplers[0], ResumableSampler)
