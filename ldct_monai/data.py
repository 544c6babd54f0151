"""Datasets and loaders from manifests: two independent (unpaired) patch streams, LD and FD.

Each stream is a manifest split (``train_ld.csv`` / ``train_fd.csv``) turned into:

1. a *slice* dataset of the deterministic transforms (DICOM -> HU -> [-1, 1]) with a cache
   (``--cache none|memory|disk``: MONAI ``Dataset`` / ``CacheDataset`` / ``PersistentDataset``);
2. a :class:`PatchStream` that applies the random transforms (tissue patches, rot90, flip) with a seed
   derived from (run seed, stream, epoch, slice index) -- so a sample never depends on the number of
   loader workers, their scheduling, or whether the run was resumed;
3. a ``DataLoader`` per stream over a :class:`ResumableSampler` (a ``DistributedSampler``: shuffled
   per epoch, sharded across DDP ranks, and able to start mid-epoch for an exact ``--resume``), or,
   with ``--body-part-batches``, a :class:`BodyPartBatchSampler` (one body part per step, the same in
   both streams; sharded and resumable alike).

Every patch carries its slice's body part (the manifest's ``body_part`` column) to the :class:`Batch`.

RAM for ``--cache memory``: one float32 copy of every training slice, 1 MiB per 512 x 512 slice.
The full TCIA LDCT set (~299 exams, ~100k training slices of one dose each) needs ~100 GiB; use
``--cache disk`` (same size on disk, read back at page-cache speed) or ``none`` on smaller machines.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from ldct_monai.errors import InputError
from ldct_monai.manifest import load_split
from ldct_monai.schema import BODY_PARTS, SPLIT_FILES, Dose, body_part_index
from ldct_monai.train_config import TrainConfig
from ldct_monai.transforms import Keys, augment_transforms, load_transforms

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("patient_id", "path")
BODY_PART = "body_part"  # record key of the body-part code
STREAMS = {Keys.LD: ("train_ld", "val_ld", Dose.LOW.value), Keys.FD: ("train_fd", "val_fd", Dose.FULL.value)}


def split_records(manifest_dir: Path, split: str, key: str, expected_dose: str | None = None) -> list[dict]:
    """Rows of one manifest split as ``{key: path, "sop_uid", "patient_id", "body_part"}`` dictionaries.

    ``body_part`` is the manifest's C / L / N code ("" when the manifest has no such column); it rides
    along every transform to the batch, where body-part-conditioned discriminators use it.

    Raises:
        InputError: the split is missing, empty, lacks columns, holds rows of the other dose, or lists files
            that do not exist (checked here, before a training run writes anything).
    """
    df = load_split(manifest_dir, split)
    path = Path(manifest_dir) / f"{split}.csv"
    problems = [f"missing column {c!r}" for c in REQUIRED_COLUMNS if c not in df.columns]
    if not problems and df.empty:
        problems.append("no rows")
    if not problems and expected_dose and "dose" in df.columns:
        wrong = df[df["dose"].astype(str).str.lower() != expected_dose]
        if len(wrong):
            problems.append(f"{len(wrong)} row(s) with dose != {expected_dose!r} (first: {wrong['path'].iloc[0]})")
    if not problems:
        missing = [p for p in df["path"].astype(str) if not os.path.isfile(p)]
        if missing:
            problems.append(f"{len(missing)} of {len(df)} listed file(s) do not exist (first: {missing[0]}); the data "
                            "moved or was deleted since build-manifest: rebuild the manifest")
    if problems:
        raise InputError(f"{path}: " + "; ".join(problems) + ".")
    sop = df["sop_uid"].astype(str) if "sop_uid" in df.columns else [""] * len(df)
    parts = df["body_part"].fillna("").astype(str) if "body_part" in df.columns else [""] * len(df)
    return [{str(key): p, "sop_uid": s, "patient_id": str(pid), BODY_PART: bp}
            for p, s, pid, bp in zip(df["path"], sop, df["patient_id"], parts, strict=True)]


def slice_dataset(records: Sequence[dict], key: str | Sequence[str], config: TrainConfig, cache_dir: Path | None = None,
                  ) -> torch.utils.data.Dataset:
    """The deterministic part of the chain (load + scale) over ``records``, cached as ``config.cache`` says.

    ``key`` may name several keys (a paired record holds an LD and an FD path).
    """
    from monai.data import CacheDataset, Dataset, PersistentDataset

    keys = [key] if isinstance(key, str) else list(key)
    transform = load_transforms(keys, config.hu_window)
    if config.cache == "none":
        return Dataset(list(records), transform=transform)
    if config.cache == "memory":
        # float32 after decoding: 1 MiB per 512x512 slice (the full TCIA set, ~10^5 slices per dose: ~100 GiB)
        log.info("Caching %d %s slices in memory (1 MiB per 512x512 slice in float32).", len(records), "+".join(keys))
        return CacheDataset(list(records), transform=transform, num_workers=max(1, config.num_workers), progress=False,
                            copy_cache=False)
    if cache_dir is None:
        raise InputError("--cache disk needs a cache folder (--cache-dir or the run folder).")
    cache_dir.mkdir(parents=True, exist_ok=True)
    # The hash covers path + SOP Instance UID (in the record), so a replaced file is not served stale.
    return PersistentDataset(list(records), transform=transform, cache_dir=cache_dir)


def _item_seed(*parts: int) -> int:
    """A well-mixed 32-bit seed from integers (blake2b), stable across processes and Python versions."""
    h = hashlib.blake2b(np.asarray(parts, dtype=np.int64).tobytes(), digest_size=4)
    return int.from_bytes(h.digest(), "little")


class PatchStream(torch.utils.data.Dataset):
    """Random augmented patches of one domain; item ``i`` is a list of ``patches_per_slice`` dicts.

    The random transforms are seeded per item from (seed, stream, epoch, i): the same item of the same
    epoch is always the same patches, whichever worker draws it and whether or not the run was resumed.
    Call :meth:`set_epoch` before iterating an epoch (worker processes copy the dataset at that point).
    """

    def __init__(self, slices: torch.utils.data.Dataset, key: str | Sequence[str], config: TrainConfig,
                 stream: int) -> None:
        self.slices = slices
        self.keys = [str(key)] if isinstance(key, str) else [str(k) for k in key]
        self.key = self.keys[0]
        self.seed = int(config.seed)
        self.stream = int(stream)
        self.epoch = 0
        self.augment = augment_transforms(
            self.keys, config.patch_size, config.patches_per_slice, config.hu_window,
            tissue_hu=config.tissue_hu, min_tissue_fraction=config.min_tissue_fraction, tries=config.patch_tries,
        )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.slices)

    def __getitem__(self, index: int) -> list[dict]:
        item = self.slices[index]
        self.augment.set_random_state(seed=_item_seed(self.seed, self.stream, self.epoch, index))
        return self.augment(item)


class ResumableSampler(Sampler[int]):
    """``DistributedSampler`` (per-epoch shuffle, DDP sharding, drop_last) that can start mid-epoch.

    ``set_epoch(e)`` reshuffles; ``set_start(k)`` skips the first ``k`` indices of this rank's share (a
    resumed run skips the slices the finished steps of that epoch used).
    """

    def __init__(self, n: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.inner = DistributedSampler(range(n), num_replicas=world_size, rank=rank, shuffle=True, seed=seed,
                                        drop_last=True)
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        self.inner.set_epoch(epoch)

    def set_start(self, start: int) -> None:
        self.start = int(start)

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(iter(self.inner), self.start, None)

    def __len__(self) -> int:
        return max(0, len(self.inner) - self.start)


class Batch(NamedTuple):
    """One training step's input: unpaired LD and FD patches with the body part of each patch.

    ``ld`` / ``fd``: (B, 1, P, P) float32 in [-1, 1]; ``ld_body_part`` / ``fd_body_part``: (B,) int64
    indices into :data:`ldct_monai.schema.BODY_PARTS` (-1 = unknown).
    """

    ld: torch.Tensor
    fd: torch.Tensor
    ld_body_part: torch.Tensor
    fd_body_part: torch.Tensor


class BodyPartBatchSampler(Sampler[list[int]]):
    """Batch sampler: every step takes its slices from one body part, the same in the LD and FD streams.

    With ``body_part_batches`` the two streams' samplers share a per-epoch schedule of body parts
    (a seeded permutation of the body parts both streams have, repeated round-robin, so each gets an
    equal share of the steps), and each stream draws that step's slices from a shuffled, cycled list of
    its own slices of that body part (a slice drawn twice in one epoch gives the same patches: the
    patch seed is per epoch and slice). A batch-norm discriminator then normalises over patches of one
    anatomy, and each step asks it one question ("full-dose noise of *this* body part?") instead of
    comparing chest noise with head noise. DDP: every rank computes the same chunk of
    ``slices_per_batch * world_size`` slices per step and takes its own share.

    Args:
        parts: body-part index of every slice of the stream (-1 = unknown, a group of its own).
        common: body parts scheduled (those both streams have), in a fixed order.
        slices_per_batch: slices per step and process.
        steps_per_epoch: steps of one epoch (shared by both streams).
        seed: the run seed (the schedule depends on it and the epoch only).
        stream: stream id (0 = LD, 1 = FD): the slice order within a body part depends on it.
    """

    def __init__(self, parts: Sequence[int], common: Sequence[int], slices_per_batch: int, steps_per_epoch: int,
                 seed: int, stream: int, rank: int = 0, world_size: int = 1) -> None:
        parts_arr = np.asarray(parts, dtype=np.int64)
        self.by_part = {int(p): np.flatnonzero(parts_arr == p) for p in common}
        empty = [p for p, idx in self.by_part.items() if not len(idx)]
        if not common or empty:
            raise InputError(f"body-part batches: stream {stream} has no slice of body part(s) {empty or 'any'}.")
        self.common = tuple(int(p) for p in common)
        self.spb, self.steps = int(slices_per_batch), int(steps_per_epoch)
        self.seed, self.stream, self.rank, self.world = int(seed), int(stream), int(rank), int(world_size)
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def set_start(self, start: int) -> None:
        """Skip the first ``start`` steps of the epoch (a resumed run); note: in steps, not slices."""
        self.start = int(start)

    def schedule(self, epoch: int) -> list[int]:
        """Body part of every step of ``epoch`` (identical in both streams' samplers)."""
        order = np.random.default_rng(_item_seed(self.seed, 1_000_003, epoch)).permutation(len(self.common))
        return [self.common[int(order[k % len(order)])] for k in range(self.steps)]

    def __iter__(self) -> Iterator[list[int]]:
        need = self.spb * self.world
        queues: dict[int, list[int]] = {p: [] for p in self.common}
        cycles = dict.fromkeys(self.common, 0)
        for k, part in enumerate(self.schedule(self.epoch)):
            queue = queues[part]
            while len(queue) < need:  # a body part with few slices is reshuffled and cycled
                idx = self.by_part[part]
                rng = np.random.default_rng(_item_seed(self.seed, self.stream, self.epoch, part + 1, cycles[part]))
                queue.extend(int(i) for i in idx[rng.permutation(len(idx))])
                cycles[part] += 1
            chunk, queues[part] = queue[:need], queue[need:]
            if k >= self.start:
                yield chunk[self.rank * self.spb : (self.rank + 1) * self.spb]

    def __len__(self) -> int:
        return max(0, self.steps - self.start)


def collate_patches(key: str):
    """Collate function: lists of patch dicts (one list per slice) -> ((B, 1, P, P) float32, (B,) int64 body part)."""

    def collate(batch: list[list[dict]]) -> tuple[torch.Tensor, torch.Tensor]:
        patches = [d for sample in batch for d in sample]
        images = torch.stack([torch.as_tensor(d[key].as_tensor() if hasattr(d[key], "as_tensor") else d[key])
                              for d in patches]).float()
        parts = torch.tensor([body_part_index(d.get(BODY_PART)) for d in patches], dtype=torch.int64)
        return images, parts

    return collate


class UnpairedBatches:
    """Two independent patch streams (LD, FD) cut into epochs of equal step counts.

    Args:
        config: the training config (patch size, batch, cache, workers, seed).
        ld_records / fd_records: records of the train splits (see :func:`split_records`).
        rank / world_size: DDP coordinates (0 / 1 without DDP).
        cache_dir: folder for ``--cache disk``.
        pin_memory: pin batches for faster host-to-GPU copies.

    Raises:
        InputError: a stream has fewer slices than one step needs on every rank.
    """

    def __init__(self, config: TrainConfig, ld_records: Sequence[dict], fd_records: Sequence[dict], rank: int = 0,
                 world_size: int = 1, cache_dir: Path | None = None, pin_memory: bool = False) -> None:
        self.config = config
        spb = config.slices_per_batch
        need = spb * world_size
        for name, recs in (("train_ld", ld_records), ("train_fd", fd_records)):
            if len(recs) < need:
                raise InputError(f"{name}: {len(recs)} slice(s), but one step needs {spb} per process x "
                                 f"{world_size} process(es) = {need} (lower --batch-size or add data).")
        self.streams: list[PatchStream] = []
        self.samplers: list[ResumableSampler | BodyPartBatchSampler] = []
        self.loaders: list[DataLoader] = []
        self.steps_per_epoch = min(len(ld_records), len(fd_records)) // need  # = DistributedSampler share // spb
        streams = ((Keys.LD, ld_records), (Keys.FD, fd_records))
        parts = [[body_part_index(r.get(BODY_PART)) for r in recs] for _, recs in streams]
        common = sorted(set(parts[0]) & set(parts[1]))
        self.body_part_batches = bool(config.body_part_batches)
        if self.body_part_batches and not common:
            log.warning("Body-part batches: train_ld and train_fd share no body part (a small cohort gives each "
                        "body part's train patients one dose); using mixed batches.")
            self.body_part_batches = False
        if self.body_part_batches:
            unused = sorted(set(parts[0]) ^ set(parts[1]))
            if unused:
                log.warning("Body-part batches: body part(s) %s appear in only one training stream; their slices "
                            "are not used.", ", ".join(BODY_PARTS[p] if p >= 0 else "unknown" for p in unused))
        for stream, (key, recs) in enumerate(streams):
            sub = None if cache_dir is None else cache_dir / str(key)
            ds = PatchStream(slice_dataset(recs, key, config, sub), key, config, stream)
            if self.body_part_batches:
                sampler = BodyPartBatchSampler(parts[stream], common, spb, self.steps_per_epoch, config.seed, stream,
                                               rank, world_size)
            else:
                sampler = ResumableSampler(len(ds), seed=config.seed * 2 + stream, rank=rank, world_size=world_size)
            self.streams.append(ds)
            self.samplers.append(sampler)
            self.loaders.append(self._loader(ds, sampler, str(key), pin_memory))

    def _loader(self, ds: PatchStream, sampler: ResumableSampler | BodyPartBatchSampler, key: str,
                pin_memory: bool) -> DataLoader:
        if isinstance(sampler, BodyPartBatchSampler):
            kwargs = dict(batch_sampler=sampler)
        else:
            kwargs = dict(batch_size=self.config.slices_per_batch, sampler=sampler, drop_last=True)
        kwargs.update(collate_fn=collate_patches(key), pin_memory=pin_memory)
        if self.config.num_workers == 0:
            from monai.data import ThreadDataLoader

            # Prepare the next batch in a background thread while the step runs (torch ops release the GIL).
            return ThreadDataLoader(ds, num_workers=0, buffer_size=1, **kwargs)
        # Workers per stream: the two streams share the budget; each gets at least one.
        workers = max(1, self.config.num_workers // 2)
        return DataLoader(ds, num_workers=workers, persistent_workers=False, prefetch_factor=2, **kwargs)

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        """Yield a :class:`Batch` for each of the steps ``start_step .. steps_per_epoch - 1``."""
        for ds, sampler in zip(self.streams, self.samplers, strict=True):
            ds.set_epoch(epoch)
            sampler.set_epoch(epoch)
            per_step = 1 if isinstance(sampler, BodyPartBatchSampler) else self.config.slices_per_batch
            sampler.set_start(start_step * per_step)
        n = self.steps_per_epoch - start_step
        for (ld, ld_bp), (fd, fd_bp) in itertools.islice(zip(*self.loaders, strict=False), max(0, n)):
            yield Batch(ld, fd, ld_bp, fd_bp)


def pair_records(manifest_dir: Path, split: str) -> list[dict]:
    """Rows of ``train_pairs.csv`` / ``val_pairs.csv`` (``build-manifest --paired``) as
    ``{"ld": path, "fd": path, "patient_id", "body_part"}`` dictionaries.

    Raises:
        InputError: the file is missing (with the command that writes it), empty, or lists missing files.
    """
    path = Path(manifest_dir) / SPLIT_FILES[split]
    if not path.is_file():
        raise InputError(f"{path}: missing; supervised training needs paired splits: build the manifest with "
                         "`ldct-monai build-manifest DATA --out DIR --paired` (patients with both doses).")
    df = load_split(manifest_dir, split)
    problems = [f"missing column {c!r}" for c in ("patient_id", "ld_path", "fd_path") if c not in df.columns]
    if not problems and df.empty:
        problems.append("no rows (no train/val patient has both doses)")
    if not problems:
        missing = [p for col in ("ld_path", "fd_path") for p in df[col].astype(str) if not os.path.isfile(p)]
        if missing:
            problems.append(f"{len(missing)} listed file(s) do not exist (first: {missing[0]}): rebuild the manifest")
    if problems:
        raise InputError(f"{path}: " + "; ".join(problems) + ".")
    parts = df["body_part"].fillna("").astype(str) if "body_part" in df.columns else [""] * len(df)
    return [{str(Keys.LD): ld, str(Keys.FD): fd, "patient_id": str(pid), BODY_PART: bp}
            for ld, fd, pid, bp in zip(df["ld_path"], df["fd_path"], df["patient_id"], parts, strict=True)]


def collate_pairs(batch: list[list[dict]]) -> Batch:
    """Lists of paired patch dicts -> :class:`Batch` (LD and FD of the same place, one body part each)."""
    patches = [d for sample in batch for d in sample]

    def stack(key: str) -> torch.Tensor:
        return torch.stack([torch.as_tensor(d[key].as_tensor() if hasattr(d[key], "as_tensor") else d[key])
                            for d in patches]).float()

    parts = torch.tensor([body_part_index(d.get(BODY_PART)) for d in patches], dtype=torch.int64)
    return Batch(stack(str(Keys.LD)), stack(str(Keys.FD)), parts, parts)


class PairedBatches:
    """One stream of paired LD/FD patches (same crop, rotation and flip for both), cut into epochs.

    The same interface as :class:`UnpairedBatches` (``steps_per_epoch``, ``epoch(epoch, start_step)``), so
    one training loop serves both methods; seeding, sharding and exact resume work the same way.
    """

    def __init__(self, config: TrainConfig, records: Sequence[dict], rank: int = 0, world_size: int = 1,
                 cache_dir: Path | None = None, pin_memory: bool = False) -> None:
        self.config = config
        spb = config.slices_per_batch
        need = spb * world_size
        if len(records) < need:
            raise InputError(f"train_pairs: {len(records)} pair(s), but one step needs {spb} per process x "
                             f"{world_size} process(es) = {need} (lower --batch-size or add data).")
        if config.body_part_batches:
            log.warning("--body-part-batches applies to unpaired training only; supervised batches are mixed.")
        keys = (str(Keys.LD), str(Keys.FD))
        self.stream = PatchStream(slice_dataset(records, keys, config, cache_dir), keys, config, 0)
        self.sampler = ResumableSampler(len(self.stream), seed=config.seed * 2, rank=rank, world_size=world_size)
        self.steps_per_epoch = len(records) // need
        kwargs = dict(batch_size=spb, sampler=self.sampler, drop_last=True, collate_fn=collate_pairs,
                      pin_memory=pin_memory)
        if config.num_workers == 0:
            from monai.data import ThreadDataLoader

            self.loader = ThreadDataLoader(self.stream, num_workers=0, buffer_size=1, **kwargs)
        else:
            self.loader = DataLoader(self.stream, num_workers=config.num_workers, prefetch_factor=2, **kwargs)

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        """Yield a :class:`Batch` for each of the steps ``start_step .. steps_per_epoch - 1``."""
        self.stream.set_epoch(epoch)
        self.sampler.set_epoch(epoch)
        self.sampler.set_start(start_step * self.config.slices_per_batch)
        yield from itertools.islice(iter(self.loader), max(0, self.steps_per_epoch - start_step))


def val_pair_slices(manifest_dir: Path, config: TrainConfig) -> dict[str, list]:
    """Evenly spaced validation pairs: {"ld": [(1, 1, H, W)], "fd": [...], "ld_body_part": [(1,)], "fd_body_part"}.

    An absent or empty ``val_pairs.csv`` gives empty lists (validation is then skipped with a warning).
    """
    try:
        recs = pair_records(manifest_dir, "val_pairs")
    except InputError as err:
        log.warning("No paired validation: %s", err)
        return {"ld": [], "fd": [], f"ld_{BODY_PART}": [], f"fd_{BODY_PART}": []}
    n = min(config.val_slices, len(recs))
    idx = np.linspace(0, len(recs) - 1, n).round().astype(int) if n else []
    load = load_transforms([str(Keys.LD), str(Keys.FD)], config.hu_window)
    out: dict[str, list] = {"ld": [], "fd": [], f"ld_{BODY_PART}": [], f"fd_{BODY_PART}": []}
    for i in idx:
        item = load(recs[int(i)])
        for key in ("ld", "fd"):
            img = torch.as_tensor(item[key]).float()
            h, w = img.shape[-2:]
            out[key].append(img[..., : h - h % 4, : w - w % 4].reshape(1, 1, h - h % 4, w - w % 4))
            out[f"{key}_{BODY_PART}"].append(torch.tensor([body_part_index(recs[int(i)].get(BODY_PART))]))
    return out


def val_slices(manifest_dir: Path, config: TrainConfig) -> dict[str, list]:
    """A fixed, evenly spaced set of validation slices per domain: {"ld": [(1, 1, H, W)], "fd": [...]}, and
    the body part of each as (1,) int64 tensors under "ld_body_part" / "fd_body_part".

    Slices are cropped at the bottom/right to a multiple of the generator stride (4). An empty or
    missing val split gives an empty list (validation is then skipped with a warning by the engine).
    """
    out: dict[str, list[torch.Tensor]] = {}
    for key, (_, val_split, dose) in STREAMS.items():
        try:
            recs = split_records(manifest_dir, val_split, key, dose)
        except InputError as err:
            log.warning("No validation for %s: %s", key, err)
            out[str(key)], out[f"{key}_{BODY_PART}"] = [], []
            continue
        n = min(config.val_slices, len(recs))
        idx = np.linspace(0, len(recs) - 1, n).round().astype(int) if n else []
        load = load_transforms([key], config.hu_window)
        imgs, parts = [], []
        for i in idx:
            x = load(recs[int(i)])[str(key)]
            h, w = x.shape[-2:]
            imgs.append(x[None, :, : h - h % 4, : w - w % 4].contiguous())
            parts.append(torch.tensor([body_part_index(recs[int(i)][BODY_PART])], dtype=torch.int64))
        out[str(key)], out[f"{key}_{BODY_PART}"] = imgs, parts
    return out
