"""Datasets and loaders from manifests: two independent (unpaired) patch streams, LD and FD.

Each stream is a manifest split (``train_ld.csv`` / ``train_fd.csv``) turned into:

1. a *slice* dataset of the deterministic transforms (DICOM -> HU -> [-1, 1]) with a cache
   (``--cache none|memory|disk``: MONAI ``Dataset`` / ``CacheDataset`` / ``PersistentDataset``);
2. a :class:`PatchStream` that applies the random transforms (tissue patches, rot90, flip) with a seed
   derived from (run seed, stream, epoch, slice index) -- so a sample never depends on the number of
   loader workers, their scheduling, or whether the run was resumed;
3. a ``DataLoader`` per stream over a :class:`ResumableSampler` (a ``DistributedSampler``: shuffled
   per epoch, sharded across DDP ranks, and able to start mid-epoch for an exact ``--resume``).

RAM for ``--cache memory``: one float32 copy of every training slice, 1 MiB per 512 x 512 slice.
The full TCIA LDCT set (~299 exams, ~100k training slices of one dose each) needs ~100 GiB; use
``--cache disk`` (same size on disk, read back at page-cache speed) or ``none`` on smaller machines.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from ldct_monai.errors import InputError
from ldct_monai.manifest import load_split
from ldct_monai.train_config import TrainConfig
from ldct_monai.transforms import Keys, augment_transforms, load_transforms

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("patient_id", "path")
STREAMS = {Keys.LD: ("train_ld", "val_ld", "low"), Keys.FD: ("train_fd", "val_fd", "full")}


def split_records(manifest_dir: Path, split: str, key: str, expected_dose: str | None = None) -> list[dict]:
    """Rows of one manifest split as ``{key: path, "sop_uid": ..., "patient_id": ...}`` dictionaries.

    Raises:
        InputError: the split is missing, empty, lacks columns, or holds rows of the other dose.
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
    if problems:
        raise InputError(f"{path}: " + "; ".join(problems) + ".")
    sop = df["sop_uid"].astype(str) if "sop_uid" in df.columns else [""] * len(df)
    return [{str(key): p, "sop_uid": s, "patient_id": str(pid)}
            for p, s, pid in zip(df["path"], sop, df["patient_id"], strict=True)]


def slice_dataset(records: Sequence[dict], key: str, config: TrainConfig, cache_dir: Path | None = None,
                  ) -> torch.utils.data.Dataset:
    """The deterministic part of the chain (load + scale) over ``records``, cached as ``config.cache`` says."""
    from monai.data import CacheDataset, Dataset, PersistentDataset

    transform = load_transforms([key], config.hu_window)
    if config.cache == "none":
        return Dataset(list(records), transform=transform)
    if config.cache == "memory":
        # float32 after decoding: 1 MiB per 512x512 slice (the full TCIA set, ~10^5 slices per dose: ~100 GiB)
        log.info("Caching %d %s slices in memory (1 MiB per 512x512 slice in float32).", len(records), key)
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

    def __init__(self, slices: torch.utils.data.Dataset, key: str, config: TrainConfig, stream: int) -> None:
        self.slices = slices
        self.key = str(key)
        self.seed = int(config.seed)
        self.stream = int(stream)
        self.epoch = 0
        self.augment = augment_transforms(
            [self.key], config.patch_size, config.patches_per_slice, config.hu_window,
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

    @property
    def per_rank(self) -> int:
        """Indices this rank sees in a whole epoch."""
        return len(self.inner)

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(iter(self.inner), self.start, None)

    def __len__(self) -> int:
        return max(0, len(self.inner) - self.start)


def collate_patches(key: str):
    """Collate function: lists of patch dicts (one list per slice) -> a (B, 1, P, P) float32 tensor."""

    def collate(batch: list[list[dict]]) -> torch.Tensor:
        patches = [d[key] for sample in batch for d in sample]
        return torch.stack([p.as_tensor() if hasattr(p, "as_tensor") else torch.as_tensor(p) for p in patches]).float()

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
        self.samplers: list[ResumableSampler] = []
        self.loaders: list[DataLoader] = []
        for stream, (key, recs) in enumerate(((Keys.LD, ld_records), (Keys.FD, fd_records))):
            sub = None if cache_dir is None else cache_dir / str(key)
            ds = PatchStream(slice_dataset(recs, key, config, sub), key, config, stream)
            sampler = ResumableSampler(len(ds), seed=config.seed * 2 + stream, rank=rank, world_size=world_size)
            self.streams.append(ds)
            self.samplers.append(sampler)
            self.loaders.append(self._loader(ds, sampler, str(key), pin_memory))
        self.steps_per_epoch = min(s.per_rank for s in self.samplers) // spb

    def _loader(self, ds: PatchStream, sampler: ResumableSampler, key: str, pin_memory: bool) -> DataLoader:
        kwargs = dict(batch_size=self.config.slices_per_batch, sampler=sampler, drop_last=True,
                      collate_fn=collate_patches(key), pin_memory=pin_memory)
        if self.config.num_workers == 0:
            from monai.data import ThreadDataLoader

            # Prepare the next batch in a background thread while the step runs (torch ops release the GIL).
            return ThreadDataLoader(ds, num_workers=0, buffer_size=1, **kwargs)
        # Workers per stream: the two streams share the budget; each gets at least one.
        workers = max(1, self.config.num_workers // 2)
        return DataLoader(ds, num_workers=workers, persistent_workers=False, prefetch_factor=2, **kwargs)

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(ld, fd)`` batches of shape (B, 1, P, P) for steps ``start_step .. steps_per_epoch - 1``."""
        for ds, sampler in zip(self.streams, self.samplers, strict=True):
            ds.set_epoch(epoch)
            sampler.set_epoch(epoch)
            sampler.set_start(start_step * self.config.slices_per_batch)
        n = self.steps_per_epoch - start_step
        yield from itertools.islice(zip(*self.loaders, strict=False), max(0, n))


def val_slices(manifest_dir: Path, config: TrainConfig) -> dict[str, list[torch.Tensor]]:
    """A fixed, evenly spaced set of validation slices per domain: {"ld": [(1, 1, H, W)], "fd": [...]}.

    Slices are cropped at the bottom/right to a multiple of the generator stride (4). An empty or
    missing val split gives an empty list (validation is then skipped with a warning by the engine).
    """
    out: dict[str, list[torch.Tensor]] = {}
    for key, (_, val_split, dose) in STREAMS.items():
        try:
            recs = split_records(manifest_dir, val_split, key, dose)
        except InputError as err:
            log.warning("No validation for %s: %s", key, err)
            out[str(key)] = []
            continue
        n = min(config.val_slices, len(recs))
        idx = np.linspace(0, len(recs) - 1, n).round().astype(int) if n else []
        load = load_transforms([key], config.hu_window)
        imgs = []
        for i in idx:
            x = load(recs[int(i)])[str(key)]
            h, w = x.shape[-2:]
            imgs.append(x[None, :, : h - h % 4, : w - w % 4].contiguous())
        out[str(key)] = imgs
    return out
