"""Denoise throughput (``ldct-monai bench denoise``) against the model alone and a FLOP floor.

Three figures, all measured in one process on the same slices so machine noise cancels in the ratios:

* end to end: ``denoise_series`` on a synthetic 512x512 DICOM series (scan, read/decode, model,
  pack/write), slices/s;
* model only: the same slices already in memory as HU, through the same ``Denoiser`` call
  (HU -> [-1, 1] -> generator -> HU, host<->device copies included), slices/s; run before and after
  the end-to-end run, the faster of the two is the reference;
* FLOP floor: the generator's convolution FLOPs per slice divided by the FLOP rate of one large
  convolution measured here at the same device and precision: Conv2d(256, 256, 3) on
  ``--batch-size`` x 256 x 128 x 128, the residual-block convolution of the standard ngf=64 generator
  at 512 px (the same reference whatever generator is benchmarked).

The end-to-end row also shows the model's own time inside that run: end to end / that is the overlap
check, immune to machine noise between runs (the model-only ratio is the issue's figure).

Peak memory against series length is measured in child processes (one per length), each running the
whole ``denoise_series`` pipeline; a streaming pipeline shows the same peak for a short and a long series.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ldct_monai.bench import timing

PEAK_CONV_CHANNELS = 256  # ngf=64 x 4 at the residual blocks
PEAK_CONV_SPATIAL = 128  # 512 px / stride 4


def write_bench_series(out_dir: Path, n: int, size: int, seed: int = 0) -> None:
    """A synthetic CT series written one slice at a time (a water cylinder with bone, noise, -3024 HU padding)."""
    import numpy as np

    from ldct_monai.dicom.create import SeriesInfo, make_ct_slice, make_uid, write_dataset

    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    r = np.hypot(yy, xx) / (size / 2)
    base = np.where(r < 0.8, 40.0, -1000.0)
    base[np.hypot(yy - size * 0.15, xx) < size * 0.06] = 900.0
    info = SeriesInfo(patient_id="BENCH", study_uid=make_uid("bench", "study"), series_uid=make_uid("bench", "series", n, size),
                      frame_of_reference_uid=make_uid("bench", "for"), series_description="Low Dose Images", pixel_spacing=(0.7, 0.7),
                      pixel_padding_value=-2000, rescale_intercept=-1024.0)
    for i in range(n):
        hu = base + rng.normal(0, 25, base.shape)
        hu[r > 0.98] = -3024.0  # outside the field of view
        ds = make_ct_slice(hu, info, instance_number=i + 1, position=(-(size - 1) * 0.35, -(size - 1) * 0.35, float(i)), signed=True)
        write_dataset(ds, out_dir / f"{i + 1:04d}.dcm")


def run_throughput(tmp: Path, *, slices: int, size: int, ngf: int, n_blocks: int, model: Path | None, batch_size: int,
                   device: str, precision: str, tile: int | None, workers: int | None = None) -> dict:
    """End to end, model only and FLOP floor on the same synthetic series."""
    import numpy as np

    from ldct_monai.config import HUWindow
    from ldct_monai.denoise import denoise_series
    from ldct_monai.dicom.reader import read_series
    from ldct_monai.inference import Denoiser
    from ldct_monai.modelio import export_model, load_model
    from ldct_monai.networks import ResNetGenerator
    from ldct_monai.runtime import package_versions

    if model is None:
        arch = dict(ngf=ngf, n_blocks=n_blocks)
        model = export_model(tmp / "run" / "model", ResNetGenerator(**arch), arch, hu_window=HUWindow(), name="bench-random-init")
    loaded = load_model(model)
    kw = loaded.card["architecture"]["kwargs"]
    series_dir = tmp / "series"
    write_bench_series(series_dir, slices, size)
    den = Denoiser(loaded, device=device, precision=precision, batch_size=batch_size, tile=tile)
    warm = np.full((batch_size, size, size), 40.0, np.float32)
    den(warm)  # warm-up: allocations, cuDNN autotuning, lazy imports
    timing.sync(den.device)

    vol = read_series(series_dir, warn_skipped=False).read_volume()

    def model_only() -> float:
        return timing.timed(lambda: den(vol), den.device)  # same call, same batches, as in the stream

    model_runs = [model_only()]
    summary = denoise_series(series_dir, tmp / "out", model, device=device, precision=precision, batch_size=batch_size,
                             tile=tile, progress=False, overwrite=True, workers=workers)
    e2e_s = summary["timings"]["denoise_s"]
    model_runs.append(model_only())
    model_s = min(model_runs)  # the best model-only run (before / after): a conservative reference
    del vol

    gen = den.net
    if den.tile is None:
        pad = (-size) % den.stride
        flops = timing.forward_flops(gen, (1, 1, size + pad, size + pad))
    else:  # tiles x tile FLOPs (MONAI's grid: ceil((size - tile) / step) + 1 tiles per axis)
        step = max(1, int(den.tile * (1 - den.overlap)))
        per_axis = 1 if size <= den.tile else int(np.ceil((size - den.tile) / step)) + 1
        flops = timing.forward_flops(gen, (1, 1, den.tile, den.tile)) * per_axis**2
    # the reference: one large convolution, the 3x3 residual-block conv of the standard ngf=64 generator at 512 px
    width, spatial = PEAK_CONV_CHANNELS, PEAK_CONV_SPATIAL
    peak = timing.conv_peak(den.device, precision, channels=width, spatial=spatial, batch=batch_size, repeats=3)
    floor_s = flops / peak
    e2e_rate, model_rate = slices / e2e_s, slices / model_s
    return {
        "slices": slices,
        "size": size,
        "model_desc": f"{loaded.name} ngf={kw.get('ngf', ngf)} n_blocks={kw.get('n_blocks', n_blocks)}",
        "device": str(den.device),
        "device_name": _device_name(den.device),
        "precision": precision,
        "batch_size": batch_size,
        "mode": den.mode,
        "end_to_end": {"seconds": e2e_s, "slices_per_s": e2e_rate, "total_with_scan_s": summary["timings"]["total_s"],
                       "model_s_inside": summary["timings"]["model_s"], "wait_read_s": summary["timings"]["wait_read_s"],
                       "wait_write_s": summary["timings"]["wait_write_s"]},
        "model_only": {"seconds": model_s, "slices_per_s": model_rate, "runs_s": model_runs},
        "flop_floor": {"gflop_per_slice": flops / 1e9, "peak_tflops": peak / 1e12, "s_per_slice": floor_s,
                       "peak_conv": f"Conv2d({width}, {width}, 3) on {batch_size}x{width}x{spatial}^2"},
        "ratio_e2e_to_model": e2e_s / model_s,
        # wall time over the model's own time inside the same run: immune to machine noise between runs
        "ratio_e2e_to_model_in_run": e2e_s / summary["timings"]["model_s"],
        "workers": summary["workers"],
        "ratio_model_to_floor": (model_s / slices) / floor_s,
        "versions": package_versions(),
        "threads": _threads(),
    }


def run_memory_probe(tmp: Path, n: int, *, size: int, ngf: int, batch_size: int, device: str, precision: str, tile: int | None,
                     workers: int | None = None) -> dict:
    """Run ``denoise_series`` on an ``n``-slice series in a child process; its peak RSS (and GPU) memory."""
    import subprocess

    from ldct_monai.errors import LdctError

    series_dir = tmp / f"mem_series_{n}"
    write_bench_series(series_dir, n, size, seed=n)
    args = dict(series=str(series_dir), out=str(tmp / f"mem_out_{n}"), ngf=ngf, batch_size=batch_size, device=device,
                precision=precision, tile=tile, model=str(tmp / f"mem_model_{ngf}"), workers=workers)
    proc = subprocess.run([sys.executable, "-m", "ldct_monai.bench.denoise", json.dumps(args)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise LdctError(f"memory probe with {n} slices failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["volume_f32_mib"] = n * size * size * 4 / 2**20
    return res


def _probe(args: dict) -> dict:
    """Child-process side of :func:`run_memory_probe`."""
    import resource

    import torch

    from ldct_monai.bundle import METADATA
    from ldct_monai.config import HUWindow
    from ldct_monai.denoise import denoise_series
    from ldct_monai.modelio import export_model
    from ldct_monai.networks import ResNetGenerator

    model = Path(args["model"])
    if not (model / METADATA).is_file():  # the first probe exports the bundle, the later ones reuse it
        arch = dict(ngf=args["ngf"], n_blocks=1)
        export_model(model, ResNetGenerator(**arch), arch, hu_window=HUWindow(), name="bench-memory")
    s = denoise_series(args["series"], args["out"], model, device=args["device"], precision=args["precision"],
                       batch_size=args["batch_size"], tile=args["tile"], progress=False, overwrite=True,
                       workers=args.get("workers"))
    gpu = None
    if s["device"].startswith("cuda"):
        gpu = torch.cuda.max_memory_allocated() / 2**20
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: KiB
    child_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # largest I/O worker process, if any
    try:  # resident memory now, after the whole series: grows with length if anything is kept per slice
        rss_end = int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 2**20
    except (OSError, ValueError, IndexError):
        rss_end = None
    return {"slices": s["n_slices"], "peak_rss_mib": rss_kib / 1024, "rss_end_mib": rss_end, "peak_rss_worker_mib": child_kib / 1024 if s["workers"] else None,
            "peak_gpu_mib": gpu, "slices_per_s": s["timings"]["slices_per_s"]}


def _device_name(device) -> str:
    import platform

    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def _threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":  # child process of run_memory_probe
    sys.stdout.write(json.dumps(_probe(json.loads(sys.argv[1]))) + "\n")  # the parent reads this line
