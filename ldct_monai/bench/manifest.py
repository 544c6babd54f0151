"""Header-scan throughput (``ldct-monai bench manifest``) against a bare pydicom loop measured in the same run.

The floor is a bare ``pydicom.dcmread(stop_before_pixels=True)`` loop (:func:`ldct_monai.dicom.scan.read_chunk_floor`)
over the same files with the same number of processes and the same pool; ours is the whole scan (listing,
header decoding, every check). Both run on a warm page cache.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SLICES_PER_SERIES = 50  # TCIA-like: many small series, two per patient


def floor_chunk_cpu(root: str, rels: Sequence[str]) -> list[float]:
    """CPU seconds of :func:`ldct_monai.dicom.scan.read_chunk_floor` in the worker (insensitive to other jobs on the machine)."""
    from ldct_monai.dicom.scan import read_chunk_floor

    t = time.process_time()
    read_chunk_floor(root, rels)
    return [time.process_time() - t]


def ours_chunk_cpu(root: str, rels: Sequence[str]) -> list[float]:
    """CPU seconds of our per-file work (:func:`ldct_monai.dicom.scan.read_chunk`) in the worker."""
    from ldct_monai.dicom.scan import read_chunk

    t = time.process_time()
    read_chunk(root, rels)
    return [time.process_time() - t]


def bench_tree(n_files: int, size: int, cache_dir: Path | None = None) -> Path:
    """A TCIA-style tree of at least ``n_files`` CT slices (C/L/N patients, LD + FD series), cached.

    Written once into a temporary folder and renamed, so an interrupted run never leaves half a tree.
    """
    import numpy as np

    from ldct_monai.dicom.create import SeriesInfo, make_uid, write_ct_series
    from ldct_monai.progress import make_progress

    base = Path(cache_dir) if cache_dir else Path(tempfile.gettempdir())
    root = base / f"ldct-monai-bench-manifest-{n_files}-{size}px"
    if (root / ".complete").is_file():
        return root
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=root.name + ".tmp-", dir=base))
    n_series = math.ceil(n_files / SLICES_PER_SERIES)
    rng = np.random.default_rng(0)
    try:
        with make_progress() as bar:
            task = bar.add_task("Writing bench tree", total=n_series * SLICES_PER_SERIES, unit="files")
            for s in range(n_series):
                patient = f"{'CLN'[(s // 2) % 3]}{s // 6:03d}"
                desc = ("Full Dose Images", "Low Dose Images")[s % 2]
                info = SeriesInfo(
                    patient_id=patient,
                    study_uid=make_uid("bench", patient),
                    series_uid=make_uid("bench", patient, desc),
                    frame_of_reference_uid=make_uid("bench", patient, "for"),
                    series_description=desc,
                    kernel="B30f",
                    tube_current_ma=200.0,
                    ctdi_vol=12.0,
                )
                vol = rng.normal(0, 20, (SLICES_PER_SERIES, size, size))
                series_dir = tmp / patient / "01-01-2020-NA-NA-00001" / f"1.000000-{desc}-{s:05d}"
                write_ct_series(series_dir, vol, info, z_positions=[float(i) for i in range(SLICES_PER_SERIES)],
                                sop_uids=[make_uid("bench", patient, desc, i) for i in range(SLICES_PER_SERIES)])  # fmt: skip
                bar.advance(task, SLICES_PER_SERIES)
        (tmp / ".complete").write_text("ok\n")
        if root.exists():
            shutil.rmtree(root)
        os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def run_bench(files: int = 5000, workers: int = 0, size: int = 16, repeats: int = 3, cache_dir: Path | None = None) -> dict[str, Any]:
    """Best-of-``repeats`` seconds of the floor and of our scan, CPU per file in the workers, parent memory per
    row and build-manifest end to end, on a generated tree of ``files`` slices (see the module docstring).

    Raises:
        InputError: a non-positive argument, or a run that did not read every file.
    """
    import tracemalloc

    from ldct_monai.dicom.scan import default_workers, list_files, map_files, read_chunk_floor, scan_tree
    from ldct_monai.errors import InputError
    from ldct_monai.manifest_builder import ManifestConfig, build_manifest

    if files < 1 or size < 1 or repeats < 1:
        raise InputError(f"--files, --size and --repeats must be positive, found {files}, {size}, {repeats}.")
    workers = workers or default_workers()
    root = bench_tree(files, size, cache_dir)
    rels = list_files(root)
    rels = [r for r in rels if r.endswith(".dcm")]
    for rel in rels:  # warm the page cache
        with open(root / rel, "rb") as f:
            f.read()
    n = len(rels)

    def run_floor() -> float:
        t = time.perf_counter()
        done = sum(map_files(read_chunk_floor, str(root), rels, workers))
        dt = time.perf_counter() - t
        if done != n:
            raise InputError(f"floor read {done} of {n} files.")
        return dt

    def run_ours() -> float:
        t = time.perf_counter()
        headers, skipped, _ = scan_tree(root, workers, progress=False)
        dt = time.perf_counter() - t
        if len(headers) != n:
            raise InputError(f"scan kept {len(headers)} of {n} files (skipped: {skipped[:3]}).")
        return dt

    run_floor(), run_ours()  # start-up (imports, forkserver) out of the timed runs
    floor_t, ours_t = [], []
    for _ in range(repeats):
        floor_t.append(run_floor())
        ours_t.append(run_ours())
    floor_best, ours_best = min(floor_t), min(ours_t)
    # CPU time per file inside the workers: the ratio that other jobs on a shared machine do not skew.
    cpu_floor = min(sum(sum(c) for c in map_files(floor_chunk_cpu, str(root), rels, workers)) for _ in range(repeats))
    cpu_ours = min(sum(sum(c) for c in map_files(ours_chunk_cpu, str(root), rels, workers)) for _ in range(repeats))

    # Parent memory per row: an in-process scan of up to 2,000 files under tracemalloc.
    sample = min(n, 2000)
    sub = Path(tempfile.mkdtemp(prefix="ldct-bench-mem-"))
    try:
        for rel in rels[:sample]:
            (sub / rel).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(root / rel, sub / rel)
        tracemalloc.start()
        headers, _, _ = scan_tree(sub, 1, progress=False)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        del headers
        # End to end: scan + split + write, once.
        t = time.perf_counter()
        build_manifest(root, sub / "manifest", ManifestConfig(workers=workers), progress=False)
        e2e = time.perf_counter() - t
    finally:
        shutil.rmtree(sub, ignore_errors=True)
    return {"files": n, "size": size, "workers": workers, "repeats": repeats, "floor_s": floor_t, "ours_s": ours_t,
            "floor_best_s": floor_best, "ours_best_s": ours_best, "end_to_end_s": e2e, "cpu_floor_s": cpu_floor,
            "cpu_ours_s": cpu_ours, "parent_bytes_per_row": peak / sample, "memory_sample": sample}
