"""Low-dose simulation speed and memory (``ldct-monai bench synth``): ``--from-series`` against the pre-issue-11 path.

Issue 11 item 5: simulating one 512 x 512 slice stays within 2x of the time before the self-calibrated
simulator, and memory stays bounded for long series. Both paths run in one process on the same synthetic
series (:func:`ldct_monai.bench.denoise.write_bench_series`: a water cylinder with bone and 25 HU white
noise, 0.7 mm pixels, outside-FOV padding), taking turns repetition by repetition (reference, candidate,
reference, ...), so a burst of load on a shared machine hits both alike; medians are reported, and the
ratio is the median of the per-repeat ratios (each pair ran back to back).

* Reference: the noise step of the pre-issue ``synth --from-series`` (before commit dec6bd7), which is
  still in the library: :func:`ldct_monai.synth.simulate.insert_noise` with the fixed ``smooth`` FBP
  window, the abdomen protocol and dose fraction 0.25, on one chunk of :data:`REFERENCE_CHUNK` slices
  already decoded to HU (the old path simulated 8 slices per call; one slice alone costs more per slice,
  because the interpolation grids of a 512 px geometry are recomputed per call, not cached). Forward
  projection, Yu et al. (2012) noise and FBP only: the old path's reading and writing are left out, so
  the ratio is an upper bound of the true slowdown.
* Candidate: today's :func:`ldct_monai.synth.from_series.simulate_low_dose_series` on the whole
  ``slices``-long series from its folder, as a user runs it: scan, decoding, self-calibration (flat-ROI
  NPS on a few slices, texture window and its correction, level), simulation and DICOM writing; its
  seconds per slice therefore carry the calibration amortised over the series.

Peak memory against series length is measured in child processes (one per length), each running the
whole ``simulate_low_dose_series`` on its own series: the resident high-water mark (``ru_maxrss``), the
resident size after imports (the interpreter and torch, the same for every length) and the peak of
Python/numpy allocations traced by :mod:`tracemalloc` (torch's own CPU buffers are not traced: they are
in the resident figure). A streaming simulator shows about the same peaks for a short and a long series.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

from ldct_monai.bench import timing

REFERENCE_CHUNK = 8  # slices per insert_noise call in the pre-issue from_series (its ``chunk = 8``)
REFERENCE_KERNEL = "smooth"  # the pre-issue default --kernel (a fixed Hann window, B30f-like)
BODY_PART = "L"  # abdomen protocol: dose fraction 0.25, as the Mayo abdomen data
SPACING_MM = 0.7  # pixel spacing of write_bench_series


def run_throughput(tmp: Path, *, slices: int, size: int, views: int | None, repeats: int, seed: int = 0) -> dict:
    """Seconds per slice of the reference and of ``--from-series``, interleaved, medians (see module docstring)."""
    import numpy as np
    import torch

    from ldct_monai.bench.denoise import write_bench_series
    from ldct_monai.dicom.reader import read_series
    from ldct_monai.runtime import package_versions
    from ldct_monai.schema import BodyPart
    from ldct_monai.synth.from_series import simulate_low_dose_series
    from ldct_monai.synth.noise import PROTOCOLS
    from ldct_monai.synth.projector import ParallelGeometry, clear_cache
    from ldct_monai.synth.simulate import insert_noise

    series_dir = tmp / "series"
    write_bench_series(series_dir, slices, size, seed=seed)
    series = read_series(series_dir, warn_skipped=False)
    thickness = float(getattr(series.header(0), "SliceThickness", None) or 1.0)
    chunk = min(REFERENCE_CHUNK, slices)
    decoded = [series.read_slice(i) for i in range(chunk)]
    # as the old path: the scanner saw air where the image is padding
    hu = torch.from_numpy(np.stack([np.where(sl.padding, -1000.0, sl.hu) if sl.padding is not None else sl.hu
                                    for sl in decoded]).astype(np.float32))
    protocol = PROTOCOLS[BodyPart(BODY_PART)]
    gen = torch.Generator().manual_seed(seed)
    n_views = ParallelGeometry.for_image(size, SPACING_MM, views).n_views

    def reference() -> None:
        with torch.inference_mode():
            insert_noise(hu, SPACING_MM, thickness, protocol, fraction=protocol.dose_fraction, kernel=REFERENCE_KERNEL,
                         generator=gen, n_views=n_views)

    summaries: list[dict] = []

    def candidate(i: int) -> None:
        summaries.append(simulate_low_dose_series(series_dir, tmp / "out", body_part=BODY_PART, seed=seed + i,
                                                  n_views=n_views, overwrite=True, progress=False))

    with torch.inference_mode():  # warm-up: lazy imports, first-call allocations (a cheap 8-view scan)
        insert_noise(hu[:1], SPACING_MM, thickness, protocol, fraction=0.25, kernel=REFERENCE_KERNEL, generator=gen, n_views=8)
    ref_s: list[float] = []
    cand_s: list[float] = []
    for i in range(repeats):  # A, B, A, B, ...: load bursts hit both paths alike
        ref_s.append(timing.timed(reference, "cpu") / chunk)
        cand_s.append(timing.timed(lambda i=i: candidate(i), "cpu") / slices)
    clear_cache()
    ref, cand = statistics.median(ref_s), statistics.median(cand_s)
    pairs = [c / r for c, r in zip(cand_s, ref_s, strict=True)]
    last = summaries[-1]
    return {
        "slices": slices,
        "size": size,
        "views": n_views,
        "repeats": repeats,
        "reference": {"path": f"insert_noise, {REFERENCE_KERNEL} window, {chunk} slices per call, in memory",
                      "chunk": chunk, "s_per_slice": ref, "runs_s_per_slice": ref_s},
        "candidate": {"path": f"simulate_low_dose_series on {slices} slices (read, calibrate, simulate, write)",
                      "s_per_slice": cand, "runs_s_per_slice": cand_s, "texture": last["texture"],
                      "rois": last["check"]["rois"], "dose_fraction": last["dose_fraction"]},
        # each repeat's pair ran back to back: the median of their ratios cancels slow drifts of the
        # machine's load, which the ratio of the two medians does not
        "ratio": statistics.median(pairs),
        "ratio_of_medians": cand / ref,
        "ratio_per_repeat": pairs,
        "threads": torch.get_num_threads(),
        "versions": package_versions(),
    }


def run_memory_probe(tmp: Path, n: int, *, size: int, views: int | None, trace: bool = True, mmap_threshold: int = 0) -> dict:
    """Run ``simulate_low_dose_series`` on an ``n``-slice series in a child process; its peak memory.

    ``mmap_threshold`` > 0 fixes glibc's ``M_MMAP_THRESHOLD`` in the child (``MALLOC_MMAP_THRESHOLD_``):
    blocks at least that large are then always mapped and unmapped, instead of glibc raising the
    threshold after the first large frees and serving them from a heap that only grows (0: glibc's
    default, what a user gets).

    Raises:
        LdctError: the child process failed (its last error line is in the message).
    """
    import os
    import subprocess

    from ldct_monai.bench.denoise import write_bench_series
    from ldct_monai.errors import LdctError

    series_dir = tmp / f"mem_series_{n}"
    write_bench_series(series_dir, n, size, seed=n)
    args = dict(series=str(series_dir), out=str(tmp / f"mem_out_{n}"), views=views, trace=trace)
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(mmap_threshold)) if mmap_threshold > 0 else None
    proc = subprocess.run([sys.executable, "-m", "ldct_monai.bench.synth", json.dumps(args)],
                          capture_output=True, text=True, check=False, env=env)
    if proc.returncode != 0:
        raise LdctError(f"memory probe with {n} slices failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["volume_f32_mib"] = n * size * size * 4 / 2**20  # what holding the series as one float32 volume would cost
    return res


def _probe(args: dict) -> dict:
    """Child-process side of :func:`run_memory_probe`."""
    import resource
    import tracemalloc

    import importlib

    from ldct_monai.synth.from_series import simulate_low_dose_series

    # what the simulator imports lazily, imported before the baseline and the trace start: the probe
    # measures the run's data, not module loading
    for mod in ("torch", "scipy.ndimage", "ldct_monai.dicom.reader", "ldct_monai.dicom.writer", "ldct_monai.dicom.create",
                "ldct_monai.io_utils", "ldct_monai.progress", "ldct_monai.synth.nps", "ldct_monai.synth.kernels",
                "ldct_monai.synth.simulate"):
        importlib.import_module(mod)
    base = _rss_now_mib()
    if args["trace"]:
        tracemalloc.start()
    t = time.perf_counter()
    s = simulate_low_dose_series(args["series"], args["out"], body_part=BODY_PART, n_views=args["views"],
                                 overwrite=True, progress=False)
    seconds = time.perf_counter() - t
    traced = tracemalloc.get_traced_memory()[1] / 2**20 if args["trace"] else None
    tracemalloc.stop()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    return {"slices": s["files"], "peak_rss_mib": peak, "rss_base_mib": base, "rss_end_mib": _rss_now_mib(),
            "peak_traced_mib": traced, "s_per_slice": seconds / s["files"]}


def _rss_now_mib() -> float | None:
    import resource

    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 2**20
    except (OSError, ValueError, IndexError):
        return None


if __name__ == "__main__":  # child process of run_memory_probe
    sys.stdout.write(json.dumps(_probe(json.loads(sys.argv[1]))) + "\n")  # the parent reads this line
